//! E-mail addresses: the one definition of `local@domain` the relay accepts (erasure, search),
//! and whole-address matching in stored text and JSON, never a substring.

use std::fmt;

/// A syntactically valid address, lower-cased (addresses are compared without regard to case).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Email(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EmailError {
    #[error("an e-mail address is local@domain; this has no '@'")]
    NoAt,
    #[error("an e-mail address has exactly one '@'")]
    SeveralAt,
    #[error("the part before '@' is empty")]
    EmptyLocal,
    #[error("the part after '@' is empty")]
    EmptyDomain,
    #[error("the address is longer than 254 characters")]
    TooLong,
    #[error("the part before '@' has a character an address cannot have ({0:?})")]
    BadLocal(char),
    #[error("the part after '@' is not a domain name")]
    BadDomain,
}

/// Characters of the local part (RFC 5322 `atext` and the dot), and any non-ASCII letter.
fn local_char(c: char) -> bool {
    c.is_alphanumeric() || "!#$%&'*+/=?^_`{|}~.-".contains(c)
}

/// Characters of a domain label.
fn domain_char(c: char) -> bool {
    c.is_alphanumeric() || c == '-'
}

impl Email {
    /// Parses `text` (surrounding spaces ignored) as `local@domain`: one `@`, a non-empty local
    /// part of address characters, and a domain of non-empty labels of letters, digits and `-`.
    pub fn parse(text: &str) -> Result<Email, EmailError> {
        let text = text.trim();
        Self::check(text)?;
        Ok(Email(text.to_lowercase()))
    }

    /// Whether `text` (already trimmed) is an address by [`Email::parse`], without a copy.
    fn check(text: &str) -> Result<(), EmailError> {
        if text.chars().count() > 254 {
            return Err(EmailError::TooLong);
        }
        let mut parts = text.split('@');
        let (Some(local), Some(domain)) = (parts.next(), parts.next()) else { return Err(EmailError::NoAt) };
        if parts.next().is_some() {
            return Err(EmailError::SeveralAt);
        }
        if local.is_empty() {
            return Err(EmailError::EmptyLocal);
        }
        if domain.is_empty() {
            return Err(EmailError::EmptyDomain);
        }
        if let Some(c) = local.chars().find(|c| !local_char(*c)) {
            return Err(EmailError::BadLocal(c));
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return Err(EmailError::BadLocal('.'));
        }
        let labels_ok = domain
            .split('.')
            .all(|l| !l.is_empty() && l.chars().all(domain_char) && !l.starts_with('-') && !l.ends_with('-'));
        if !labels_ok {
            return Err(EmailError::BadDomain);
        }
        Ok(())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `text` holds this address as a whole address, compared without regard to case:
    /// `ann@example.org` is in `"Ann <ann@example.org>"` but not in `joann@example.org`,
    /// `marie-ann@example.org` or `ann@example.org.evil.net`.
    pub fn is_in_text(&self, text: &str) -> bool {
        let lower = text.to_lowercase();
        let needle = self.0.as_str();
        let mut from = 0;
        while let Some(pos) = lower[from..].find(needle) {
            let start = from + pos;
            let end = start + needle.len();
            let before_ok = lower[..start].chars().next_back().is_none_or(|c| !local_char(c));
            let after = &lower[end..];
            let mut rest = after.chars();
            let after_ok = match rest.next() {
                None => true,
                Some(c) if domain_char(c) => false,
                // A dot ends a sentence unless a label follows it.
                Some('.') => rest.next().is_none_or(|c| !domain_char(c)),
                Some(_) => true,
            };
            if before_ok && after_ok {
                return true;
            }
            from = start + needle.chars().next().map_or(1, char::len_utf8);
        }
        false
    }

    /// Whether any string (value or key) anywhere in `value` holds this address as a whole address.
    pub fn is_in_json(&self, value: &serde_json::Value) -> bool {
        use serde_json::Value;
        match value {
            Value::String(s) => self.is_in_text(s),
            Value::Array(items) => items.iter().any(|v| self.is_in_json(v)),
            Value::Object(map) => map.iter().any(|(k, v)| self.is_in_text(k) || self.is_in_json(v)),
            Value::Null | Value::Bool(_) | Value::Number(_) => false,
        }
    }

    /// Every address written anywhere in `value` (string values and keys, alone or inside text
    /// like `Ann <ann@example.org>`), lower-cased, each once.
    pub fn all_in_json(value: &serde_json::Value) -> Vec<Email> {
        fn walk(v: &serde_json::Value, out: &mut Vec<Email>) {
            use serde_json::Value;
            match v {
                Value::String(s) => from_text(s, out),
                Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
                Value::Object(map) => map.iter().for_each(|(k, v)| {
                    from_text(k, out);
                    walk(v, out)
                }),
                _ => {}
            }
        }
        fn from_text(text: &str, out: &mut Vec<Email>) {
            if !text.contains('@') {
                return;
            }
            for word in text.split(|c: char| !(local_char(c) || c == '@')) {
                if let Ok(e) = Email::parse(word.trim_end_matches('.')) {
                    if !out.contains(&e) {
                        out.push(e);
                    }
                }
            }
        }
        let mut out = Vec::new();
        walk(value, &mut out);
        out
    }

    /// Whether a stored payload names this address: parsed as JSON when it is JSON (so escapes
    /// are read as the characters they stand for), else as text.
    pub fn is_in_payload(&self, payload: &str) -> bool {
        match serde_json::from_str::<serde_json::Value>(payload) {
            Ok(v) => self.is_in_json(&v),
            Err(_) => self.is_in_text(payload),
        }
    }
}

/// Where a contact's e-mail usually sits in a Learnybox event's data: `/data/contact/email`,
/// `/contact/email`, `/data/email`, `/email`, as keys (read for every event: a JSON pointer
/// would be parsed, and its keys copied, at each read).
const CONTACT_PATHS: &[&[&str]] =
    &[&["data", "contact", "email"], &["contact", "email"], &["data", "email"], &["email"]];

/// The contact's address in an event's data, where Learnybox events usually carry it, when it
/// is an address by [`Email::parse`] (as written, not lower-cased).
pub fn contact_in(data: &serde_json::Value) -> Option<&str> {
    CONTACT_PATHS
        .iter()
        .find_map(|path| path.iter().try_fold(data, |v, key| v.get(key)).and_then(|v| v.as_str()))
        .filter(|e| Email::check(e.trim()).is_ok())
}

impl fmt::Display for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Masked, so a `Debug` of a value holding an address does not print it.
impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Email({})", crate::telemetry::mask_email(&self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contact_is_read_where_learnybox_events_carry_it() {
        use serde_json::json;
        let nested =
            json!({"data": {"contact": {"email": " Ann@Example.org "}, "email": "b@example.org"}, "email": "c@x.fr"});
        assert_eq!(contact_in(&nested), Some(" Ann@Example.org "), "as written, the first place first");
        assert_eq!(contact_in(&json!({"contact": {"email": "d@example.org"}})), Some("d@example.org"));
        assert_eq!(contact_in(&json!({"data": {"email": "e@example.org"}})), Some("e@example.org"));
        assert_eq!(contact_in(&json!({"email": "f@example.org"})), Some("f@example.org"));
        assert_eq!(
            contact_in(&json!({"data": {"contact": {"email": 42}}, "email": "g@example.org"})),
            Some("g@example.org")
        );
        assert_eq!(
            contact_in(&json!({"data": {"contact": {"email": "not an address"}}, "email": "h@example.org"})),
            None
        );
        assert_eq!(contact_in(&json!({"data": [{"contact": {"email": "i@example.org"}}]})), None);
        assert_eq!(contact_in(&json!({"Email": "j@example.org", "emails": "k@example.org"})), None);
        assert_eq!(contact_in(&json!("l@example.org")), None);
    }

    #[test]
    fn only_local_at_domain_is_an_address() {
        assert_eq!(Email::parse("  Ann@Example.ORG ").unwrap().as_str(), "ann@example.org");
        assert_eq!(
            Email::parse("o'brien+news@mail.example.co.uk").unwrap().as_str(),
            "o'brien+news@mail.example.co.uk"
        );
        assert_eq!(Email::parse("élodie@exemple.fr").unwrap().as_str(), "élodie@exemple.fr");
        assert_eq!(Email::parse("root@localhost").unwrap().as_str(), "root@localhost");
        assert_eq!(Email::parse("@example.net"), Err(EmailError::EmptyLocal));
        assert_eq!(Email::parse("ann@"), Err(EmailError::EmptyDomain));
        assert_eq!(Email::parse("ann"), Err(EmailError::NoAt));
        assert_eq!(Email::parse(""), Err(EmailError::NoAt));
        assert_eq!(Email::parse("a@b@c"), Err(EmailError::SeveralAt));
        assert_eq!(Email::parse("a b@example.org"), Err(EmailError::BadLocal(' ')));
        assert_eq!(Email::parse("a%@example.org").unwrap().as_str(), "a%@example.org");
        assert_eq!(Email::parse("ann@example..org"), Err(EmailError::BadDomain));
        assert_eq!(Email::parse("ann@.example.org"), Err(EmailError::BadDomain));
        assert_eq!(Email::parse("ann@-example.org"), Err(EmailError::BadDomain));
        assert_eq!(Email::parse("ann@exa_mple.org"), Err(EmailError::BadDomain));
        assert_eq!(Email::parse(".ann@example.org"), Err(EmailError::BadLocal('.')));
        assert_eq!(Email::parse("a..nn@example.org"), Err(EmailError::BadLocal('.')));
        assert_eq!(Email::parse("ann@example.org%"), Err(EmailError::BadDomain));
        assert_eq!(Email::parse(&format!("{}@example.org", "a".repeat(300))), Err(EmailError::TooLong));
    }

    #[test]
    fn a_substring_is_not_the_address() {
        let ann = Email::parse("ann@example.org").unwrap();
        for yes in [
            "ann@example.org",
            "ANN@EXAMPLE.ORG",
            "Ann <ann@example.org>",
            "mailto:ann@example.org",
            "write to ann@example.org.",
            "ann@example.org, bob@example.org",
            "\"ann@example.org\"",
            "x joann@example.org and ann@example.org",
        ] {
            assert!(ann.is_in_text(yes), "{yes}");
        }
        for no in [
            "joann@example.org",
            "marie-ann@example.org",
            "marie.ann@example.org",
            "ann@example.org.evil.net",
            "ann@example.organic",
            "ann@example.org-x.net",
            "ann+x@example.org",
            "@example.org",
            "ann",
        ] {
            assert!(!ann.is_in_text(no), "{no}");
        }
    }

    #[test]
    fn json_is_searched_by_value_with_escapes_read() {
        let ann = Email::parse("ann@example.org").unwrap();
        assert!(ann.is_in_payload(r#"{"data":{"buyer":{"email":"Ann@Example.org"}}}"#));
        assert!(ann.is_in_payload(r#"{"list":[{"to":"ann\u0040example.org"}]}"#));
        assert!(ann.is_in_payload(r#"{"ann@example.org": true}"#));
        assert!(!ann.is_in_payload(r#"{"data":{"contact":{"email":"joann@example.org"}}}"#));
        assert!(ann.is_in_payload("not json: ann@example.org"));
        assert!(!format!("{ann:?}").contains("ann@example.org"));
    }
}
