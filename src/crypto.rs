//! AES-256-CBC envelopes: turning a Learnybox request body into plaintext JSON (auto-detecting where
//! the ciphertext and IV travel and how the secret becomes a key), and the reverse, for `encrypt`,
//! `send-test` and tests. Every failure is one [`DecryptError`]; callers never tell the sender which.

use std::sync::atomic::{AtomicU32, Ordering};

use aes::cipher::{block_padding::Pkcs7, BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

type Aes256CbcDec = cbc::Decryptor<aes::Aes256>;
type Aes256CbcEnc = cbc::Encryptor<aes::Aes256>;

/// Fields that may carry the ciphertext, in the order tried.
pub const CIPHERTEXT_FIELDS: &[&str] = &["data", "payload", "encrypted", "value", "content", "ciphertext", "message"];
/// Fields that may carry the IV.
pub const IV_FIELDS: &[&str] = &["iv", "IV", "nonce"];

const B64_STANDARD: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);
const B64_URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Where the ciphertext and IV travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Variant {
    /// `{"data": base64(ct), "iv": base64(iv)}` (any of the known field names).
    JsonDataIv,
    /// The same with hex strings.
    JsonDataIvHex,
    /// `{"data": base64(iv ‖ ct)}`.
    IvPrefixed,
    /// `{"payload": base64(base64(ct) "::" iv)}`.
    PhpDoubleColon,
    /// `{"data": base64(JSON {iv, value, mac})}` as Laravel's encrypter writes it.
    Laravel,
    /// The body is a JSON string holding base64(iv ‖ ct).
    BodyString,
    /// The body itself is base64(iv ‖ ct).
    BodyBase64,
    /// `{"data": base64(ct)}` with the IV in an `X-*-Iv` header.
    IvHeader,
    /// Plain JSON (only with `allow_plaintext = true`).
    Plaintext,
}

const ALL_VARIANTS: &[Variant] = &[
    Variant::JsonDataIv,
    Variant::JsonDataIvHex,
    Variant::IvPrefixed,
    Variant::PhpDoubleColon,
    Variant::Laravel,
    Variant::BodyString,
    Variant::BodyBase64,
    Variant::IvHeader,
    Variant::Plaintext,
];

impl Variant {
    pub fn name(self) -> &'static str {
        match self {
            Variant::JsonDataIv => "json-data-iv",
            Variant::JsonDataIvHex => "json-data-iv-hex",
            Variant::IvPrefixed => "iv-prefixed",
            Variant::PhpDoubleColon => "php-double-colon",
            Variant::Laravel => "laravel",
            Variant::BodyString => "body-string",
            Variant::BodyBase64 => "body-base64",
            Variant::IvHeader => "iv-header",
            Variant::Plaintext => "plaintext",
        }
    }

    pub fn from_name(name: &str) -> Option<Variant> {
        ALL_VARIANTS.iter().copied().find(|v| v.name() == name)
    }

    pub fn names() -> Vec<&'static str> {
        ALL_VARIANTS.iter().map(|v| v.name()).collect()
    }

    /// Every variant a sender encrypts with (all but plaintext).
    pub fn encrypted() -> Vec<Variant> {
        ALL_VARIANTS.iter().copied().filter(|v| *v != Variant::Plaintext).collect()
    }

    fn index(self) -> u32 {
        ALL_VARIANTS.iter().position(|v| *v == self).unwrap_or(0) as u32
    }
}

/// How the configured secret became the 32-byte AES key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyForm {
    /// The secret's bytes, NUL-padded or cut to 32 (what PHP's openssl_encrypt does).
    Raw,
    /// 64 hex characters decoded.
    Hex,
    /// Base64 decoding to exactly 32 bytes.
    Base64,
    /// SHA-256 of the secret.
    Sha256,
}

impl KeyForm {
    pub fn name(self) -> &'static str {
        match self {
            KeyForm::Raw => "raw",
            KeyForm::Hex => "hex64",
            KeyForm::Base64 => "base64",
            KeyForm::Sha256 => "sha256",
        }
    }

    pub fn from_name(name: &str) -> Option<KeyForm> {
        [KeyForm::Raw, KeyForm::Hex, KeyForm::Base64, KeyForm::Sha256]
            .into_iter()
            .find(|k| k.name() == name || (name == "raw32" && *k == KeyForm::Raw))
    }

    /// Derives the AES key from `secret`, or `None` when the secret does not have this form.
    pub fn derive(self, secret: &[u8]) -> Option<[u8; 32]> {
        let mut key = [0u8; 32];
        match self {
            KeyForm::Raw => {
                let n = secret.len().min(32);
                key[..n].copy_from_slice(&secret[..n]);
            }
            KeyForm::Hex => {
                if secret.len() != 64 {
                    return None;
                }
                hex::decode_to_slice(secret, &mut key).ok()?;
            }
            KeyForm::Base64 => {
                let decoded = Zeroizing::new(B64_STANDARD.decode(secret).or_else(|_| B64_URL.decode(secret)).ok()?);
                if decoded.len() != 32 {
                    return None;
                }
                key.copy_from_slice(&decoded);
            }
            KeyForm::Sha256 => key.copy_from_slice(&Sha256::digest(secret)),
        }
        Some(key)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EnvelopeMode {
    Auto,
    Fixed(Variant),
}

/// Why a body could not be opened. Logged and counted, never shown to the sender.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    #[error("empty body")]
    Empty,
    #[error("no ciphertext found in any known envelope")]
    NoEnvelope,
    #[error("the Laravel MAC did not match under any key")]
    BadMac,
    #[error("no key opened any of {candidates} candidate envelope(s) into a JSON object")]
    NoKey { candidates: usize },
}

impl DecryptError {
    /// A short label for metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            DecryptError::Empty => "empty",
            DecryptError::NoEnvelope => "no_envelope",
            DecryptError::BadMac => "bad_mac",
            DecryptError::NoKey { .. } => "no_key",
        }
    }
}

struct DerivedKey {
    form: KeyForm,
    secret_index: usize,
    key: Zeroizing<[u8; 32]>,
    /// Keys a Laravel MAC may have been made with: PHP's hash_hmac takes the whole secret string
    /// while openssl_encrypt uses its first 32 bytes.
    mac_keys: Vec<Zeroizing<Vec<u8>>>,
}

/// Every AES key the configured secrets can stand for, in the order tried.
pub struct Keyring {
    keys: Vec<DerivedKey>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Keyring({} keys)", self.keys.len())
    }
}

impl Keyring {
    pub fn new(secrets: &[SecretString]) -> Keyring {
        let mut keys: Vec<DerivedKey> = Vec::new();
        for (secret_index, secret) in secrets.iter().enumerate() {
            let bytes = secret.expose_secret().trim().as_bytes();
            for form in [KeyForm::Raw, KeyForm::Hex, KeyForm::Base64, KeyForm::Sha256] {
                let Some(key) = form.derive(bytes) else { continue };
                if keys.iter().any(|k| *k.key == key) {
                    continue;
                }
                let mut mac_keys = vec![Zeroizing::new(key.to_vec())];
                if bytes != key.as_slice() {
                    mac_keys.push(Zeroizing::new(bytes.to_vec()));
                }
                keys.push(DerivedKey { form, secret_index, key: Zeroizing::new(key), mac_keys });
            }
        }
        Keyring { keys }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// Remembers the variant and key that last opened a body from one source, to try them first.
#[derive(Debug, Default)]
pub struct Hint(AtomicU32);

impl Hint {
    fn get(&self) -> Option<(Variant, usize)> {
        let v = self.0.load(Ordering::Relaxed);
        if v == 0 {
            return None;
        }
        let variant = *ALL_VARIANTS.get(((v >> 16) - 1) as usize)?;
        Some((variant, (v & 0xffff) as usize))
    }

    fn set(&self, variant: Variant, key: usize) {
        let packed = ((variant.index() + 1) << 16) | (key as u32 & 0xffff);
        self.0.store(packed, Ordering::Relaxed);
    }
}

/// What the HTTP layer hands over.
pub struct Sealed<'a> {
    pub body: &'a [u8],
    /// The value of an `X-*-Iv` header, if the request had one.
    pub iv_header: Option<&'a str>,
}

/// A successfully opened body.
#[derive(Debug)]
pub struct Opened {
    pub plaintext: Map<String, Value>,
    /// The outer JSON object of the envelope, when the body was one (may name the event type).
    pub envelope: Option<Map<String, Value>>,
    pub variant: Variant,
    /// `None` for plaintext bodies.
    pub key_form: Option<KeyForm>,
    pub secret_index: Option<usize>,
}

struct Candidate {
    variant: Variant,
    ct: Vec<u8>,
    iv: [u8; 16],
    mac: Option<LaravelMac>,
}

struct LaravelMac {
    iv_b64: String,
    value_b64: String,
    mac_hex: String,
}

pub struct OpenOptions {
    pub mode: EnvelopeMode,
    pub allow_plaintext: bool,
}

/// Opens `sealed` with any key of `keys`, trying what `hint` remembers first.
pub fn open(sealed: &Sealed<'_>, keys: &Keyring, opts: &OpenOptions, hint: &Hint) -> Result<Opened, DecryptError> {
    let body = trim_ascii(sealed.body);
    if body.is_empty() {
        return Err(DecryptError::Empty);
    }
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    // The candidates of one variant (`want`), or of all, in the order they are tried.
    let collect = |want: Option<Variant>| {
        let mut out = Vec::new();
        match &parsed {
            Some(Value::Object(map)) => object_candidates(map, sealed.iv_header, want, &mut out),
            Some(Value::String(s)) => blob_candidates(s, Variant::BodyString, want, &mut out),
            Some(_) => {}
            None => {
                if let Ok(text) = std::str::from_utf8(body) {
                    blob_candidates(text, Variant::BodyBase64, want, &mut out);
                }
            }
        }
        out
    };
    let envelope_of = |parsed: Option<Value>| match parsed {
        Some(Value::Object(map)) => Some(map),
        _ => None,
    };

    // What opened this source's last body opens this one, most of the time: only the candidate
    // of that variant is made (the rest, decoded and copied for nothing, is most of the work).
    // If it fails, everything is tried below, this one again included.
    if let Some((variant, ki)) = hint.get().filter(|(v, _)| !matches!(opts.mode, EnvelopeMode::Fixed(m) if m != *v)) {
        if let (Some(k), Some(c)) = (keys.keys.get(ki), collect(Some(variant)).first()) {
            let mac_ok = c.mac.as_ref().is_none_or(|mac| laravel_mac_ok(mac, k));
            if let Some(plaintext) = mac_ok.then(|| decrypt_object(&c.ct, &c.iv, &k.key)).flatten() {
                let (key_form, secret_index) = (Some(k.form), Some(k.secret_index));
                return Ok(Opened { plaintext, envelope: envelope_of(parsed), variant, key_form, secret_index });
            }
        }
    }

    let mut candidates = collect(None);
    let envelope = envelope_of(parsed);
    if let EnvelopeMode::Fixed(v) = opts.mode {
        candidates.retain(|c| c.variant == v);
    }
    let plaintext_allowed =
        opts.allow_plaintext && matches!(opts.mode, EnvelopeMode::Auto | EnvelopeMode::Fixed(Variant::Plaintext));

    if candidates.is_empty() {
        return match envelope {
            Some(map) if plaintext_allowed => Ok(Opened {
                plaintext: map,
                envelope: None,
                variant: Variant::Plaintext,
                key_form: None,
                secret_index: None,
            }),
            _ => Err(DecryptError::NoEnvelope),
        };
    }

    let mut mac_failed = false;
    let mut try_one = |c: &Candidate, k: &DerivedKey| -> Option<Map<String, Value>> {
        if let Some(mac) = &c.mac {
            if !laravel_mac_ok(mac, k) {
                mac_failed = true;
                return None;
            }
        }
        decrypt_object(&c.ct, &c.iv, &k.key)
    };
    let found = hint
        .get()
        .and_then(|(variant, ki)| {
            let k = keys.keys.get(ki)?;
            let c = candidates.iter().find(|c| c.variant == variant)?;
            try_one(c, k).map(|pt| (pt, c.variant, ki))
        })
        .or_else(|| {
            candidates.iter().find_map(|c| {
                keys.keys.iter().enumerate().find_map(|(ki, k)| try_one(c, k).map(|pt| (pt, c.variant, ki)))
            })
        });
    match found {
        Some((plaintext, variant, ki)) => {
            hint.set(variant, ki);
            let k = &keys.keys[ki];
            Ok(Opened { plaintext, envelope, variant, key_form: Some(k.form), secret_index: Some(k.secret_index) })
        }
        None if mac_failed => Err(DecryptError::BadMac),
        None => match envelope {
            // A plain JSON body that merely has a `data` string field still counts as plaintext.
            Some(map) if plaintext_allowed => Ok(Opened {
                plaintext: map,
                envelope: None,
                variant: Variant::Plaintext,
                key_form: None,
                secret_index: None,
            }),
            _ => Err(DecryptError::NoKey { candidates: candidates.len() }),
        },
    }
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(start, |e| e + 1);
    &b[start..end]
}

fn decode_b64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    B64_STANDARD.decode(s).or_else(|_| B64_URL.decode(s)).ok()
}

fn decode_iv(s: &str) -> Option<[u8; 16]> {
    let s = s.trim();
    let bytes =
        if s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit()) { hex::decode(s).ok()? } else { decode_b64(s)? };
    bytes.try_into().ok()
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len() % 2 == 0 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Whether candidates of `variant` are made when those of `want` are asked for (`None`: all).
fn wanted(want: Option<Variant>, variant: Variant) -> bool {
    want.is_none_or(|w| w == variant)
}

fn object_candidates(
    map: &Map<String, Value>,
    iv_header: Option<&str>,
    want: Option<Variant>,
    out: &mut Vec<Candidate>,
) {
    let iv_field = IV_FIELDS.iter().find_map(|f| map.get(*f).and_then(Value::as_str)).and_then(decode_iv);
    let iv_header = iv_header.and_then(decode_iv);
    let blobs = [Variant::Laravel, Variant::PhpDoubleColon, Variant::IvPrefixed].into_iter().any(|v| wanted(want, v));
    for field in CIPHERTEXT_FIELDS {
        let Some(s) = map.get(*field).and_then(Value::as_str) else { continue };
        let s = s.trim();
        let mut decoded = decode_b64(s);
        if let Some(iv) = iv_field.or(iv_header) {
            let variant_b64 = if iv_field.is_some() { Variant::JsonDataIv } else { Variant::IvHeader };
            let variant_hex = if iv_field.is_some() { Variant::JsonDataIvHex } else { Variant::IvHeader };
            if wanted(want, variant_hex) && is_hex(s) {
                if let Ok(ct) = hex::decode(s) {
                    out.push(Candidate { variant: variant_hex, ct, iv, mac: None });
                }
            }
            if wanted(want, variant_b64) {
                // Copied only when the blob readings below need it too.
                if let Some(ct) = if blobs { decoded.clone() } else { decoded.take() } {
                    out.push(Candidate { variant: variant_b64, ct, iv, mac: None });
                }
            }
        }
        if let Some(blob) = decoded.filter(|_| blobs) {
            decoded_blob_candidates(blob, Variant::IvPrefixed, want, out);
        }
    }
}

/// Candidates hidden in one base64 string: Laravel JSON, `base64(ct)::iv`, or `iv ‖ ct`.
fn blob_candidates(text: &str, iv_prefixed_variant: Variant, want: Option<Variant>, out: &mut Vec<Candidate>) {
    if [Variant::Laravel, Variant::PhpDoubleColon, iv_prefixed_variant].into_iter().any(|v| wanted(want, v)) {
        if let Some(blob) = decode_b64(text) {
            decoded_blob_candidates(blob, iv_prefixed_variant, want, out);
        }
    }
}

/// Laravel's envelope (`{"iv", "value", "mac"}`) as a candidate, when its iv and value decode.
fn laravel_candidate(envelope: &serde_json::Map<String, Value>) -> Option<Candidate> {
    let iv_b64 = envelope.get("iv")?.as_str()?;
    let value_b64 = envelope.get("value")?.as_str()?;
    let (iv, ct) = (decode_iv(iv_b64)?, decode_b64(value_b64)?);
    let mac = envelope.get("mac").and_then(Value::as_str).filter(|s| !s.is_empty()).map(|mac_hex| LaravelMac {
        iv_b64: iv_b64.to_string(),
        value_b64: value_b64.to_string(),
        mac_hex: mac_hex.to_string(),
    });
    Some(Candidate { variant: Variant::Laravel, ct, iv, mac })
}

/// The same, on the string already decoded (decoded once for every reading of a field).
fn decoded_blob_candidates(
    blob: Vec<u8>,
    iv_prefixed_variant: Variant,
    want: Option<Variant>,
    out: &mut Vec<Candidate>,
) {
    // A JSON object is read as Laravel's envelope only.
    let object = (blob.first() == Some(&b'{'))
        .then(|| serde_json::from_slice::<serde_json::Map<String, Value>>(&blob).ok())
        .flatten();
    if let Some(envelope) = object {
        if wanted(want, Variant::Laravel) {
            out.extend(laravel_candidate(&envelope));
        }
        return;
    }
    let double_colon =
        if wanted(want, Variant::PhpDoubleColon) { blob.windows(2).position(|w| w == b"::") } else { None };
    if let Some(pos) = double_colon {
        let (left, right) = (&blob[..pos], &blob[pos + 2..]);
        let iv: Option<[u8; 16]> =
            right.try_into().ok().or_else(|| std::str::from_utf8(right).ok().and_then(decode_iv));
        if let (Some(iv), Some(ct)) = (iv, std::str::from_utf8(left).ok().and_then(decode_b64)) {
            out.push(Candidate { variant: Variant::PhpDoubleColon, ct, iv, mac: None });
        }
    }
    if blob.len() >= 32 && blob.len() % 16 == 0 && wanted(want, iv_prefixed_variant) {
        let mut iv = [0u8; 16];
        iv.copy_from_slice(&blob[..16]);
        let mut ct = blob;
        ct.drain(..16);
        out.push(Candidate { variant: iv_prefixed_variant, ct, iv, mac: None });
    }
}

fn laravel_mac_ok(mac: &LaravelMac, key: &DerivedKey) -> bool {
    let Ok(expected) = hex::decode(mac.mac_hex.trim()) else { return false };
    key.mac_keys.iter().any(|mk| {
        let Ok(mut m) = Hmac::<Sha256>::new_from_slice(mk) else { return false };
        m.update(mac.iv_b64.as_bytes());
        m.update(mac.value_b64.as_bytes());
        m.verify_slice(&expected).is_ok()
    })
}

fn decrypt_object(ct: &[u8], iv: &[u8; 16], key: &[u8; 32]) -> Option<Map<String, Value>> {
    if ct.is_empty() || ct.len() % 16 != 0 {
        return None;
    }
    let pt = Zeroizing::new(Aes256CbcDec::new(key.into(), iv.into()).decrypt_padded_vec_mut::<Pkcs7>(ct).ok()?);
    let text = std::str::from_utf8(&pt).ok()?;
    let json_text = php_unserialize_string(text).unwrap_or(text);
    match serde_json::from_str::<Value>(json_text).ok()? {
        Value::Object(m) => Some(m),
        _ => None,
    }
}

/// Laravel's encrypter serializes values with PHP's `serialize()`: `s:LEN:"…";`.
fn php_unserialize_string(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("s:")?;
    let (len, rest) = rest.split_once(':')?;
    let len: usize = len.parse().ok()?;
    let inner = rest.strip_prefix('"')?.strip_suffix("\";")?;
    (inner.len() == len).then_some(inner)
}

// ---- sealing (the sender's side) ----------------------------------------------------------------

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the secret does not have the {0} key form")]
    KeyForm(&'static str),
    #[error("envelope {0} cannot be produced by encrypt")]
    Unsupported(&'static str),
}

/// A body as a PHP sender would produce it, plus any headers it sends with it.
pub struct SealedBody {
    pub body: String,
    pub headers: Vec<(String, String)>,
}

/// Encrypts `plaintext` under `secret` the way a PHP sender using `variant` would.
pub fn seal(
    plaintext: &[u8],
    secret: &str,
    variant: Variant,
    form: KeyForm,
    iv: [u8; 16],
) -> Result<SealedBody, SealError> {
    let key = Zeroizing::new(form.derive(secret.as_bytes()).ok_or(SealError::KeyForm(form.name()))?);
    let ct = Aes256CbcEnc::new((&*key).into(), (&iv).into()).encrypt_padded_vec_mut::<Pkcs7>(plaintext);
    let iv_ct = || {
        let mut v = iv.to_vec();
        v.extend_from_slice(&ct);
        STANDARD.encode(v)
    };
    let json = |v: Value| v.to_string();
    let mut headers = Vec::new();
    let body = match variant {
        Variant::JsonDataIv => json(serde_json::json!({"data": STANDARD.encode(&ct), "iv": STANDARD.encode(iv)})),
        Variant::JsonDataIvHex => json(serde_json::json!({"data": hex::encode(&ct), "iv": hex::encode(iv)})),
        Variant::IvPrefixed => json(serde_json::json!({ "data": iv_ct() })),
        Variant::PhpDoubleColon => {
            let mut inner = STANDARD.encode(&ct).into_bytes();
            inner.extend_from_slice(b"::");
            inner.extend_from_slice(&iv);
            json(serde_json::json!({ "payload": STANDARD.encode(inner) }))
        }
        Variant::Laravel => {
            let iv_b64 = STANDARD.encode(iv);
            let value_b64 = STANDARD.encode(&ct);
            let mut m =
                Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(|_| SealError::KeyForm(form.name()))?;
            m.update(iv_b64.as_bytes());
            m.update(value_b64.as_bytes());
            let mac = hex::encode(m.finalize().into_bytes());
            let inner = json(serde_json::json!({"iv": iv_b64, "value": value_b64, "mac": mac}));
            json(serde_json::json!({ "data": STANDARD.encode(inner) }))
        }
        Variant::BodyString => json(Value::String(iv_ct())),
        Variant::BodyBase64 => iv_ct(),
        Variant::IvHeader => {
            headers.push(("X-Learnybox-Iv".to_string(), STANDARD.encode(iv)));
            json(serde_json::json!({ "data": STANDARD.encode(&ct) }))
        }
        Variant::Plaintext => return Err(SealError::Unsupported("plaintext")),
    };
    Ok(SealedBody { body, headers })
}

/// A fresh random IV.
pub fn random_iv() -> [u8; 16] {
    rand::random()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keyring(secret: &str) -> Keyring {
        Keyring::new(&[SecretString::from(secret.to_string())])
    }

    const AUTO: OpenOptions = OpenOptions { mode: EnvelopeMode::Auto, allow_plaintext: false };

    #[test]
    fn every_sealable_variant_round_trips_with_every_key_form() {
        let secrets = [
            ("raw", "fCRUwnAmjwESpfv8YsPwFaCIQe0nXLkY".to_string()),
            ("hex64", "ab".repeat(32)),
            ("base64", STANDARD.encode([7u8; 32])),
            ("sha256", "a passphrase of any length".to_string()),
        ];
        for (form, secret) in &secrets {
            for v in Variant::encrypted() {
                let sealed =
                    seal(br#"{"event":"x","n":1}"#, secret, v, KeyForm::from_name(form).unwrap(), random_iv()).unwrap();
                let iv_header = sealed.headers.first().map(|(_, v)| v.as_str());
                let opened = open(
                    &Sealed { body: sealed.body.as_bytes(), iv_header },
                    &keyring(secret),
                    &AUTO,
                    &Hint::default(),
                )
                .unwrap_or_else(|e| panic!("{} / {form}: {e}", v.name()));
                assert_eq!(opened.plaintext["n"], 1);
                assert_eq!(opened.variant, v, "{form}");
            }
        }
    }

    #[test]
    fn the_remembered_variant_is_tried_first_and_still_falls_back() {
        let secret = "0123456789abcdef0123456789abcdef";
        let hint = Hint::default();
        let a = seal(br#"{"a":1}"#, secret, Variant::PhpDoubleColon, KeyForm::Raw, random_iv()).unwrap();
        open(&Sealed { body: a.body.as_bytes(), iv_header: None }, &keyring(secret), &AUTO, &hint).unwrap();
        assert_eq!(hint.get().map(|h| h.0), Some(Variant::PhpDoubleColon));
        let b = seal(br#"{"b":1}"#, secret, Variant::JsonDataIv, KeyForm::Raw, random_iv()).unwrap();
        let opened =
            open(&Sealed { body: b.body.as_bytes(), iv_header: None }, &keyring(secret), &AUTO, &hint).unwrap();
        assert_eq!(opened.variant, Variant::JsonDataIv);
    }

    /// What `open` gave, as text: the same for the same outcome.
    fn outcome(body: &SealedBody, ring: &Keyring, opts: &OpenOptions, hint: &Hint) -> String {
        let iv_header = body.headers.first().map(|(_, v)| v.as_str());
        match open(&Sealed { body: body.body.as_bytes(), iv_header }, ring, opts, hint) {
            Ok(o) => {
                format!("{:?} {:?} {:?} {:?} {:?}", o.plaintext, o.envelope, o.variant, o.key_form, o.secret_index)
            }
            Err(e) => format!("error {e:?}"),
        }
    }

    #[test]
    fn a_remembered_variant_opens_a_body_as_trying_them_all_would() {
        // Two secrets (the second a hex key), so a remembered key can be the wrong one too.
        let (a, b) = ("fCRUwnAmjwESpfv8YsPwFaCIQe0nXLkY", "ab".repeat(32));
        let ring = Keyring::new(&[SecretString::from(a.to_string()), SecretString::from(b.clone())]);
        let bodies: Vec<(Variant, SealedBody)> = Variant::encrypted()
            .into_iter()
            .flat_map(|v| {
                let one = seal(br#"{"event":"x","n":1}"#, a, v, KeyForm::Raw, random_iv()).unwrap();
                let two = seal(br#"{"event":"y","n":2}"#, &b, v, KeyForm::Hex, random_iv()).unwrap();
                [(v, one), (v, two)]
            })
            .collect();
        let mut tampered = seal(br#"{"n":3}"#, a, Variant::Laravel, KeyForm::Raw, random_iv()).unwrap();
        let inner = String::from_utf8(STANDARD.decode(tampered.body.split('"').nth(3).unwrap()).unwrap()).unwrap();
        let forged = inner.replace("\"mac\":\"", "\"mac\":\"00");
        assert_ne!(inner, forged);
        tampered.body = format!("{{\"data\":\"{}\"}}", STANDARD.encode(forged));
        let fixed = OpenOptions { mode: EnvelopeMode::Fixed(Variant::JsonDataIv), allow_plaintext: false };
        for opts in [&AUTO, &fixed] {
            for (primed_by, primer) in &bodies {
                for (v, body) in bodies.iter().map(|(v, b)| (v, b)).chain([(&Variant::Laravel, &tampered)]) {
                    let hint = Hint::default();
                    let _ = outcome(primer, &ring, &AUTO, &hint);
                    assert_eq!(hint.get().map(|h| h.0), Some(*primed_by));
                    let fresh = outcome(body, &ring, opts, &Hint::default());
                    let remembered = outcome(body, &ring, opts, &hint);
                    assert_eq!(remembered, fresh, "{} after {}", v.name(), primed_by.name());
                }
            }
        }
        assert_eq!(outcome(&tampered, &ring, &AUTO, &Hint::default()), "error BadMac");
    }

    #[test]
    fn a_second_secret_opens_bodies_after_rotation() {
        let old = "old-secret-old-secret-old-secret";
        let new = "new-secret-new-secret-new-secret";
        let ring = Keyring::new(&[SecretString::from(new.to_string()), SecretString::from(old.to_string())]);
        let body = seal(br#"{"a":1}"#, old, Variant::JsonDataIv, KeyForm::Raw, random_iv()).unwrap();
        let opened =
            open(&Sealed { body: body.body.as_bytes(), iv_header: None }, &ring, &AUTO, &Hint::default()).unwrap();
        assert_eq!(opened.secret_index, Some(1));
    }

    #[test]
    fn plaintext_is_refused_unless_allowed() {
        let ring = keyring("whatever-whatever-whatever-what");
        let body = br#"{"event":"contact.created","id":"1"}"#;
        let sealed = Sealed { body, iv_header: None };
        assert!(open(&sealed, &ring, &AUTO, &Hint::default()).is_err());
        let allow = OpenOptions { mode: EnvelopeMode::Auto, allow_plaintext: true };
        assert_eq!(open(&sealed, &ring, &allow, &Hint::default()).unwrap().variant, Variant::Plaintext);
    }

    #[test]
    fn a_fixed_envelope_ignores_other_variants() {
        let secret = "0123456789abcdef0123456789abcdef";
        let body = seal(br#"{"a":1}"#, secret, Variant::JsonDataIv, KeyForm::Raw, random_iv()).unwrap();
        let fixed = OpenOptions { mode: EnvelopeMode::Fixed(Variant::Laravel), allow_plaintext: false };
        let r =
            open(&Sealed { body: body.body.as_bytes(), iv_header: None }, &keyring(secret), &fixed, &Hint::default());
        assert!(r.is_err());
    }

    #[test]
    fn php_serialized_plaintext_is_unwrapped() {
        assert_eq!(php_unserialize_string(r#"s:7:"{"a":1}";"#), Some(r#"{"a":1}"#));
        assert_eq!(php_unserialize_string(r#"s:9:"{"a":1}";"#), None);
    }

    /// Mutated and random bodies (bit flips, truncations, splices of valid envelopes, random bytes
    /// and random JSON shapes) are refused or opened, never a panic. Seeded: the same inputs each run.
    #[test]
    fn mangled_bodies_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x6c62_7872);
        let secret = "fCRUwnAmjwESpfv8YsPwFaCIQe0nXLkY";
        let keys = keyring(secret);
        let lenient = OpenOptions { mode: EnvelopeMode::Auto, allow_plaintext: true };
        let valid: Vec<String> = Variant::encrypted()
            .into_iter()
            .map(|v| seal(br#"{"event":"x","id":"1"}"#, secret, v, KeyForm::Raw, random_iv()).unwrap().body)
            .collect();
        let shapes = [
            r#"{"data":"%","iv":"%"}"#,
            r#"{"payload":"%","IV":"%"}"#,
            r#"{"iv":"%","value":"%","mac":"%"}"#,
            r#""%""#,
            "%::%",
            r#"{"data":{"iv":"%"},"iv":[1,2]}"#,
        ];
        for round in 0..4000 {
            let body: Vec<u8> = match round % 4 {
                0 => {
                    let mut b = valid[rng.gen_range(0..valid.len())].clone().into_bytes();
                    for _ in 0..rng.gen_range(1..4) {
                        let i = rng.gen_range(0..b.len());
                        b[i] ^= 1 << rng.gen_range(0..8);
                    }
                    b
                }
                1 => {
                    let b = valid[rng.gen_range(0..valid.len())].as_bytes();
                    b[..rng.gen_range(0..b.len())].to_vec()
                }
                2 => (0..rng.gen_range(0..300)).map(|_| rng.gen::<u8>()).collect(),
                _ => {
                    let shape = shapes[rng.gen_range(0..shapes.len())];
                    let fill: String = (0..rng.gen_range(0..64))
                        .map(|_| rng.sample(rand::distributions::Alphanumeric) as char)
                        .collect();
                    shape.replace('%', &fill).into_bytes()
                }
            };
            let iv: Option<String> = (round % 7 == 0).then(|| "A".repeat(rng.gen_range(0..40)));
            for opts in [&AUTO, &lenient] {
                let _ = open(&Sealed { body: &body, iv_header: iv.as_deref() }, &keys, opts, &Hint::default());
            }
        }
    }

    #[test]
    fn keyring_debug_shows_no_key_material() {
        assert_eq!(format!("{:?}", keyring("s3cr3t")), "Keyring(2 keys)");
    }
}
