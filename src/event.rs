//! `Event`: what one decrypted webhook becomes, parsed once at the edge — its type and its id
//! (from configured JSON pointers, else a hash of the canonical plaintext), and the data itself.

use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The event type used when no configured pointer names one.
pub const UNKNOWN_KIND: &str = "unknown";

#[derive(Debug, Clone)]
pub struct Event {
    /// This relay's id for the stored event (UUIDv7, time-ordered).
    pub id: String,
    pub source: String,
    /// The event type, an opaque string (`transaction.created`, …).
    pub kind: String,
    /// The sender's event id, or `sha256:<hex>` of the canonical plaintext; the dedup key.
    pub key: String,
    /// Unix milliseconds.
    pub received_at: i64,
    /// The whole decrypted JSON object.
    pub data: Value,
}

impl Event {
    /// Builds an event from a decrypted object. `envelope` is the outer JSON object of the request,
    /// consulted for the type and id when the plaintext does not carry them.
    pub fn from_plaintext(
        source: &str,
        plaintext: Map<String, Value>,
        envelope: Option<&Map<String, Value>>,
        event_field: &[String],
        id_field: &[String],
        received_at: i64,
    ) -> Event {
        let data = Value::Object(plaintext);
        // The envelope is consulted only when the plaintext lacks the field (no copy otherwise).
        let lookup = |pointers: &[String]| {
            first_scalar(&data, pointers).or_else(|| envelope.and_then(|o| first_scalar_in(o, pointers)))
        };
        let kind = lookup(event_field).unwrap_or_else(|| UNKNOWN_KIND.to_string());
        let key = lookup(id_field).unwrap_or_else(|| content_key(&data));
        Event { id: new_id(), source: source.to_string(), kind, key, received_at, data }
    }

    /// The canonical JSON text that is stored.
    pub fn payload(&self) -> String {
        // Serialized straight into a string: `Value`'s `Display` writes through a formatter.
        serde_json::to_string(&self.data).unwrap_or_else(|_| self.data.to_string())
    }
}

/// The first pointer that resolves to a non-empty string or a number.
fn first_scalar(value: &Value, pointers: &[String]) -> Option<String> {
    pointers.iter().find_map(|p| scalar(value.pointer(p)?))
}

/// The same on an object, without wrapping it in a `Value`.
fn first_scalar_in(map: &Map<String, Value>, pointers: &[String]) -> Option<String> {
    pointers.iter().find_map(|p| {
        let rest = p.strip_prefix('/')?;
        let (head, tail) = rest.split_once('/').map_or((rest, None), |(h, t)| (h, Some(t)));
        let head = head.replace("~1", "/").replace("~0", "~");
        let v = map.get(&head)?;
        match tail {
            None => scalar(v),
            Some(t) => scalar(v.pointer(&format!("/{t}"))?),
        }
    })
}

/// A non-empty string (trimmed) or a number, as text: what an id or a type can be.
pub fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `sha256:<hex>` of the canonical JSON (object keys sorted: serde_json's map is a BTreeMap).
pub fn content_key(data: &Value) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data.to_string().as_bytes())))
}

/// The event's own time (Unix ms) from the first of `pointers` that holds one: RFC 3339
/// (`2026-11-27T09:00:13+01:00`), `YYYY-MM-DD HH:MM:SS` (UTC), or Unix seconds or milliseconds.
pub fn timestamp_ms(data: &Value, pointers: &[String]) -> Option<i64> {
    pointers.iter().find_map(|p| match data.pointer(p)? {
        Value::String(s) => parse_time(s.trim()),
        Value::Number(n) => {
            let n = n.as_f64()?;
            Some(if n > 1e12 { n as i64 } else { (n * 1000.0) as i64 })
        }
        _ => None,
    })
}

/// A time as text (RFC 3339, or `YYYY-MM-DD HH:MM:SS` in UTC) in Unix ms.
pub fn parse_time(s: &str) -> Option<i64> {
    use time::format_description::well_known::Rfc3339;
    let at = time::OffsetDateTime::parse(s, &Rfc3339).ok().or_else(|| {
        let plain = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
        time::PrimitiveDateTime::parse(s, &plain).ok().map(|t| t.assume_utc())
    })?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

/// A new time-ordered id for events and deliveries.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Unix milliseconds as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// Serde: a time kept as Unix ms, written as RFC 3339 where it is shown (the API's JSON).
pub mod shown_as_rfc3339 {
    pub fn serialize<S: serde::Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339(*ms))
    }

    /// The same for a time that may be absent (`null`).
    pub mod option {
        pub fn serialize<S: serde::Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => s.serialize_str(&super::super::rfc3339(*ms)),
                None => s.serialize_none(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn obj(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap()
    }

    #[test]
    fn type_and_id_come_from_the_first_pointer_that_exists() {
        let e = Event::from_plaintext(
            "lbx",
            obj(json!({"type": "contact.created", "event_id": 42})),
            None,
            &fields(&["/event", "/type"]),
            &fields(&["/id", "/event_id"]),
            0,
        );
        assert_eq!(e.kind, "contact.created");
        assert_eq!(e.key, "42");
    }

    #[test]
    fn the_envelope_names_the_type_when_the_plaintext_does_not() {
        let e = Event::from_plaintext(
            "lbx",
            obj(json!({"contact": {}})),
            Some(&obj(json!({"event": "user.created", "data": "…"}))),
            &fields(&["/event"]),
            &fields(&["/id"]),
            0,
        );
        assert_eq!(e.kind, "user.created");
    }

    #[test]
    fn without_an_id_the_key_is_a_hash_independent_of_key_order() {
        let a = Event::from_plaintext("s", obj(json!({"a": 1, "b": {"c": 2, "d": 3}})), None, &[], &[], 0);
        let b = Event::from_plaintext("s", obj(json!({"b": {"d": 3, "c": 2}, "a": 1})), None, &[], &[], 0);
        assert_eq!(a.key, b.key);
        assert!(a.key.starts_with("sha256:"));
        assert_eq!(a.kind, UNKNOWN_KIND);
        assert_ne!(a.id, b.id);
    }

    #[test]
    fn event_timestamps_are_read_in_the_forms_senders_use() {
        let p = fields(&["/created_at", "/timestamp"]);
        let at = |v: Value| timestamp_ms(&v, &p);
        assert_eq!(at(serde_json::json!({"created_at": "2026-11-27T09:00:13+01:00"})), Some(1_795_766_413_000));
        assert_eq!(at(serde_json::json!({"created_at": "2026-11-27T08:00:13Z"})), Some(1_795_766_413_000));
        assert_eq!(at(serde_json::json!({"created_at": "2026-11-27 08:00:13"})), Some(1_795_766_413_000));
        assert_eq!(at(serde_json::json!({"timestamp": 1_795_766_413})), Some(1_795_766_413_000));
        assert_eq!(at(serde_json::json!({"timestamp": 1_795_766_413_000_i64})), Some(1_795_766_413_000));
        assert_eq!(at(serde_json::json!({"created_at": "yesterday"})), None);
        assert_eq!(at(serde_json::json!({})), None);
    }

    #[test]
    fn numeric_ids_beyond_2_pow_53_and_amounts_keep_every_digit() {
        let parse = |text: &str| {
            let data: Map<String, Value> = serde_json::from_str(text).unwrap();
            Event::from_plaintext("s", data, None, &[], &fields(&["/id"]), 0)
        };
        let a = parse(r#"{"id": 12345678901234567890123, "amount": 19.999999999999999999}"#);
        let b = parse(r#"{"id": 12345678901234567890124, "amount": 19.999999999999999999}"#);
        assert_eq!(a.key, "12345678901234567890123");
        assert_eq!(b.key, "12345678901234567890124");
        assert!(a.payload().contains("19.999999999999999999"), "{}", a.payload());
    }
}
