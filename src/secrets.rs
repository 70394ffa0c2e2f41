//! What counts as a secret and how it is kept out of sight: the [`Masker`] replaces every known
//! secret value (everything a config took from `${VAR}`, keys, tokens, credential headers) with
//! `***` in error texts before they are logged, stored or answered; [`is_credential_header`]
//! names the request headers that are never kept; [`parse_key`] reads a configured 32-byte key
//! (the store's encryption keys), so the configuration and the store check it alike.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use zeroize::Zeroizing;

/// Shorter values are not masked: they would blot out ordinary words and numbers.
pub const MIN_MASKED_LEN: usize = 6;

/// The known secret values of one configuration.
#[derive(Clone, Default)]
pub struct Masker {
    /// Longest first, so a secret containing another is masked whole; each with its searcher,
    /// built once (a `str::contains` builds one on every call, for every text of every attempt).
    values: Vec<(String, memchr::memmem::Finder<'static>)>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} values)", self.values.len())
    }
}

impl Masker {
    pub fn new(values: impl IntoIterator<Item = String>) -> Masker {
        let mut values: Vec<String> = values.into_iter().filter(|v| v.trim().len() >= MIN_MASKED_LEN).collect();
        // As they may appear in a URL or a form body, too.
        let encoded: Vec<String> = values
            .iter()
            .map(|v| percent_encoding::utf8_percent_encode(v, percent_encoding::NON_ALPHANUMERIC).to_string())
            .collect();
        values.extend(encoded);
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        let values = values
            .into_iter()
            .map(|v| {
                let finder = memchr::memmem::Finder::new(v.as_bytes()).into_owned();
                (v, finder)
            })
            .collect();
        Masker { values }
    }

    /// `text` with every known secret replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        self.mask_owned(text.to_string())
    }

    /// The same, on a text the caller gives up: no copy when it holds no secret.
    pub fn mask_owned(&self, mut text: String) -> String {
        for (v, finder) in &self.values {
            if finder.find(text.as_bytes()).is_some() {
                text = text.replace(v.as_str(), "***");
            }
        }
        text
    }
}

/// Whether an environment variable's name says it holds a secret (`BREVO_API_KEY`,
/// `LBX_ADMIN_TOKEN`, `SLACK_WEBHOOK_URL`, …); its value is then masked wherever it shows.
/// Others (`HUBSPOT_API_VERSION`, `BREVO_LIST_ID`) stay readable.
pub fn is_secret_name(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    [
        "KEY",
        "TOKEN",
        "SECRET",
        "PASSWORD",
        "PASSWD",
        "PASS",
        "AUTH",
        "CREDENTIAL",
        "WEBHOOK",
        "HOOK_URL",
        "DSN",
        "STORE_URL",
    ]
    .iter()
    .any(|word| name.contains(word))
}

/// Whether a request header may carry a credential: the standard ones and anything named like a
/// key, token, secret, password or session.
pub fn is_credential_header(name: &str) -> bool {
    // Compared in place, in any ASCII case: called for every header of every answer recorded.
    let name = name.as_bytes();
    let holds = |word: &str| name.windows(word.len()).any(|w| w.eq_ignore_ascii_case(word.as_bytes()));
    ["authorization", "cookie", "proxy-authorization", "set-cookie"]
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
        || ["key", "token", "secret", "password", "passwd", "auth", "session", "credential"].iter().any(|w| holds(w))
}

/// Why a configured store key is not usable (the key itself is never part of the message).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("is neither 64 hex characters nor base64")]
    NotEncoded,
    #[error("decodes to {0} bytes, not 32 (make one with: openssl rand -base64 32)")]
    WrongLength(usize),
}

/// A 32-byte key from its configured text: base64 or 64 hex characters.
pub fn parse_key(text: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(text).map_err(|_| KeyError::NotEncoded)?
    } else {
        STANDARD.decode(text).map_err(|_| KeyError::NotEncoded)?
    };
    if bytes.len() != 32 {
        return Err(KeyError::WrongLength(bytes.len()));
    }
    Ok(Zeroizing::new(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_secrets_are_masked_plain_and_url_encoded_and_short_values_are_left() {
        let m = Masker::new(["s3cr3t+key/value".to_string(), "abc".to_string()]);
        assert_eq!(m.mask("token s3cr3t+key/value echoed"), "token *** echoed");
        assert_eq!(m.mask("GET /x?k=s3cr3t%2Bkey%2Fvalue"), "GET /x?k=***");
        assert_eq!(m.mask("abc stays"), "abc stays");
        // At the very start and end of a text, and more than once.
        assert_eq!(m.mask("s3cr3t+key/value|s3cr3t+key/value"), "***|***");
        // A secret that holds another is masked whole, not as the shorter one plus its tail.
        let m = Masker::new(["abcdef".to_string(), "abcdefghij".to_string()]);
        assert_eq!(m.mask("key abcdefghij, then abcdef"), "key ***, then ***");
        assert_eq!(m.mask("abcde"), "abcde");
    }

    #[test]
    fn credential_headers_are_recognised() {
        for h in [
            "Authorization",
            "X-Api-Key",
            "api-key",
            "X-Auth-Token",
            "Cookie",
            "x-client-secret",
            "SET-COOKIE",
            "Proxy-Authorization",
            "X-SESSION-ID",
            "PaSsWd",
            "é-key",
        ] {
            assert!(is_credential_header(h), "{h}");
        }
        for h in [
            "Content-Type",
            "X-Learnybox-Signature",
            "X-Learnybox-Iv",
            "User-Agent",
            "",
            "ke",
            "Keep-Alive",
            "cookies-",
        ] {
            assert!(!is_credential_header(h), "{h}");
        }
    }
}
