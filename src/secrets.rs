//! What counts as a secret and how it is kept out of sight: the [`Masker`] replaces every known
//! secret value (everything a config took from `${VAR}`, keys, tokens, credential headers) with
//! `***` in error texts before they are logged, stored or answered; [`is_credential_header`]
//! names the request headers that are never kept.

use secrecy::ExposeSecret;

use crate::config::Config;

/// Shorter values are not masked: they would blot out ordinary words and numbers.
pub const MIN_MASKED_LEN: usize = 6;

/// The known secret values of one configuration.
#[derive(Clone, Default)]
pub struct Masker {
    /// Longest first, so a secret containing another is masked whole.
    values: Vec<String>,
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
        Masker { values }
    }

    /// Every secret of `config` plus `interpolated` (the values secret-named `${VAR}`s gave it).
    pub fn for_config(config: &Config, interpolated: Vec<String>) -> Masker {
        let mut values = interpolated;
        let mut add = |s: &secrecy::SecretString| values.push(s.expose_secret().to_string());
        if let Some(t) = &config.server.admin_token {
            add(t);
        }
        for source in config.sources.values() {
            source.secret_keys.iter().for_each(&mut add);
            if let Some(t) = &source.path_token {
                add(t);
            }
            if let Some(api) = &source.api {
                add(&api.key);
            }
        }
        for route in &config.routes {
            if let Some(o) = &route.oauth {
                add(&o.client_secret);
                if let Some(t) = &o.refresh_token {
                    add(t);
                }
            }
            for step in &route.steps {
                for h in step.headers.iter().filter(|h| is_credential_header(&h.name)) {
                    let value = h.value.expose_secret();
                    // `Bearer abc…`, `Basic …`: the credential is the last word.
                    add(&value.rsplit(' ').next().unwrap_or(value).to_string().into());
                }
            }
        }
        Masker::new(values)
    }

    /// `text` with every known secret replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.values {
            if out.contains(v.as_str()) {
                out = out.replace(v.as_str(), "***");
            }
        }
        out
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
    let name = name.to_ascii_lowercase();
    matches!(name.as_str(), "authorization" | "cookie" | "proxy-authorization" | "set-cookie")
        || ["key", "token", "secret", "password", "passwd", "auth", "session", "credential"]
            .iter()
            .any(|word| name.contains(word))
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
    }

    #[test]
    fn credential_headers_are_recognised() {
        for h in ["Authorization", "X-Api-Key", "api-key", "X-Auth-Token", "Cookie", "x-client-secret"] {
            assert!(is_credential_header(h), "{h}");
        }
        for h in ["Content-Type", "X-Learnybox-Signature", "X-Learnybox-Iv", "User-Agent"] {
            assert!(!is_credential_header(h), "{h}");
        }
    }
}
