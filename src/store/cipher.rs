//! Encryption at rest (`[store] encryption_key`): AES-256-GCM over the stored values that can
//! hold personal data or credentials — event payloads, steps' answers, attempt errors,
//! quarantined bodies and headers, OAuth refresh tokens. Each value is sealed as
//! `lbxenc1:<key id>:<base64(nonce ‖ ciphertext)>`, bound to its column (associated data), so a
//! value cannot be moved to another column. Keys rotate: new values use `encryption_key`, values
//! under a key listed in `previous_encryption_keys` still open; values written before encryption
//! was turned on are read as they are. The contact index keeps a keyed hash, never the address.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::StoreError;
use crate::secrets::{parse_key, KeyError};

const PREFIX: &str = "lbxenc1:";

/// One key: its id (what values name) and what it does.
struct Key {
    id: String,
    aead: Aes256Gcm,
    /// For the contact index.
    hmac_key: Zeroizing<Vec<u8>>,
}

/// The keys of a store: the current one seals, every one opens.
pub struct Cipher {
    current: Key,
    previous: Vec<Key>,
}

impl std::fmt::Debug for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Cipher(key {}, {} previous)", self.current.id, self.previous.len())
    }
}

impl Key {
    fn new(secret: &SecretString) -> Result<Key, KeyError> {
        let bytes = parse_key(secret.expose_secret())?;
        let id = hex::encode(&Sha256::digest(&*bytes)[..4]);
        let aead = Aes256Gcm::new_from_slice(&bytes).map_err(|_| KeyError::WrongLength(bytes.len()))?;
        let mut hmac_key =
            Zeroizing::new(Sha256::digest([b"lbx-relay contact index".as_slice(), &bytes].concat()).to_vec());
        hmac_key.truncate(32);
        Ok(Key { id, aead, hmac_key })
    }
}

impl Cipher {
    pub fn new(current: &SecretString, previous: &[SecretString]) -> Result<Cipher, KeyError> {
        Ok(Cipher { current: Key::new(current)?, previous: previous.iter().map(Key::new).collect::<Result<_, _>>()? })
    }

    /// Seals `plain` for the column `column`.
    pub fn seal(&self, column: &str, plain: &[u8]) -> String {
        let nonce: [u8; 12] = rand::random();
        let sealed = self
            .current
            .aead
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: column.as_bytes() })
            .expect("AES-GCM encryption of an in-memory buffer does not fail");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", self.current.id, STANDARD.encode(out))
    }

    /// Opens a value of `column`; a value that is not sealed is returned as it is.
    pub fn open(&self, column: &str, stored: &[u8]) -> Result<Vec<u8>, StoreError> {
        let Some(rest) = stored.strip_prefix(PREFIX.as_bytes()) else { return Ok(stored.to_vec()) };
        let text = std::str::from_utf8(rest).map_err(|_| undecryptable(column, "not text"))?;
        let (id, data) = text.split_once(':').ok_or_else(|| undecryptable(column, "malformed"))?;
        let key = std::iter::once(&self.current).chain(&self.previous).find(|k| k.id == id).ok_or_else(|| {
            StoreError::Invalid(format!(
                "a stored {column} is sealed with key {id}, which is not configured: add it to \
                 [store] previous_encryption_keys"
            ))
        })?;
        let raw = STANDARD.decode(data).map_err(|_| undecryptable(column, "malformed"))?;
        if raw.len() < 12 {
            return Err(undecryptable(column, "too short"));
        }
        let (nonce, sealed) = raw.split_at(12);
        key.aead
            .decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad: column.as_bytes() })
            .map_err(|_| undecryptable(column, "authentication failed (altered, or another column's value)"))
    }

    pub fn seal_text(&self, column: &str, plain: &str) -> String {
        self.seal(column, plain.as_bytes())
    }

    pub fn open_text(&self, column: &str, stored: String) -> Result<String, StoreError> {
        if !stored.starts_with(PREFIX) {
            return Ok(stored);
        }
        String::from_utf8(self.open(column, stored.as_bytes())?).map_err(|_| undecryptable(column, "not UTF-8"))
    }

    /// What `deliveries.order_key` holds for an ordering key: a keyed hash under the current key
    /// (equal keys stay equal, so ordering holds; the value, usually an e-mail, is not kept).
    pub fn order_value(&self, key: &str) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.current.hmac_key).expect("HMAC takes any key length");
        m.update(b"order_key\0");
        m.update(key.as_bytes());
        format!("o:{}", hex::encode(m.finalize().into_bytes()))
    }

    /// What the contact index holds for `email` under the current key, then under each previous
    /// one (so erasure finds rows written before a rotation).
    pub fn index_values(&self, email: &str) -> Vec<String> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .map(|k| {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&k.hmac_key).expect("HMAC takes any key length");
                m.update(email.to_lowercase().as_bytes());
                format!("h:{}", hex::encode(m.finalize().into_bytes()))
            })
            .collect()
    }
}

fn undecryptable(column: &str, why: &str) -> StoreError {
    StoreError::Invalid(format!("a stored {column} cannot be decrypted: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretString {
        STANDARD.encode([b; 32]).into()
    }

    #[test]
    fn values_round_trip_are_bound_to_their_column_and_rotate() {
        let a = Cipher::new(&key(1), &[]).unwrap();
        let sealed = a.seal_text("events.payload", "{\"email\":\"ada@example.org\"}");
        assert!(sealed.starts_with("lbxenc1:") && !sealed.contains("ada"));
        assert_eq!(a.open_text("events.payload", sealed.clone()).unwrap(), "{\"email\":\"ada@example.org\"}");
        assert!(a.open_text("attempts.error", sealed.clone()).is_err(), "bound to its column");
        assert_eq!(a.open_text("events.payload", "plain".into()).unwrap(), "plain", "older rows read as they are");
        // Rotated: B seals, A still opens; without A the error says what to do.
        let b = Cipher::new(&key(2), &[key(1)]).unwrap();
        assert_eq!(b.open_text("events.payload", sealed.clone()).unwrap(), "{\"email\":\"ada@example.org\"}");
        let only_b = Cipher::new(&key(2), &[]).unwrap();
        let err = only_b.open_text("events.payload", sealed).unwrap_err().to_string();
        assert!(err.contains("previous_encryption_keys"), "{err}");
        assert_eq!(b.index_values("Ada@Example.org")[1], a.index_values("ada@example.org")[0]);
    }

    #[test]
    fn keys_must_be_32_bytes_in_base64_or_hex() {
        assert!(parse_key(&"ab".repeat(32)).is_ok());
        assert!(parse_key(&STANDARD.encode([7u8; 32])).is_ok());
        assert!(parse_key("correct horse battery staple").is_err());
        assert_eq!(parse_key(&STANDARD.encode([7u8; 16])).unwrap_err(), KeyError::WrongLength(16));
        assert!(parse_key(&STANDARD.encode([7u8; 16])).unwrap_err().to_string().contains("16 bytes, not 32"));
    }
}
