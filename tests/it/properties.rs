//! Property-based tests (proptest): envelope detection opens whatever a PHP sender seals, with
//! any key form and any JSON object, and never panics on arbitrary bytes; config parsing never
//! panics on arbitrary text and reports problems instead.

use lbx_relay::config::Config;
use lbx_relay::crypto::{self, EnvelopeMode, Hint, KeyForm, Keyring, OpenOptions, Sealed, Variant};
use proptest::prelude::*;
use secrecy::SecretString;
use serde_json::{Map, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| Value::Number(n.into())),
        ".{0,24}".prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

fn json_object() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map("[a-z_]{1,10}", json_value(), 1..6).prop_map(|m| m.into_iter().collect())
}

fn auto() -> OpenOptions {
    OpenOptions { mode: EnvelopeMode::Auto, allow_plaintext: false }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn every_sealed_object_opens_to_itself_in_every_envelope(
        object in json_object(),
        variant in prop::sample::select(Variant::encrypted()),
        iv in any::<[u8; 16]>(),
        secret in "[A-Za-z0-9]{32}",
    ) {
        let plaintext = Value::Object(object.clone()).to_string();
        let sealed = crypto::seal(plaintext.as_bytes(), &secret, variant, KeyForm::Raw, iv).unwrap();
        let keys = Keyring::new(&[SecretString::from(secret)]);
        let header = sealed.headers.first().map(|(_, v)| v.as_str());
        let opened = crypto::open(&Sealed { body: sealed.body.as_bytes(), iv_header: header }, &keys, &auto(), &Hint::default());
        let opened = opened.unwrap();
        prop_assert_eq!(opened.plaintext, object);
        prop_assert_eq!(opened.variant, variant);
    }

    #[test]
    fn arbitrary_bodies_are_refused_or_opened_never_a_panic(body in prop::collection::vec(any::<u8>(), 0..512)) {
        let keys = Keyring::new(&[SecretString::from("fCRUwnAmjwESpfv8YsPwFaCIQe0nXLkY".to_string())]);
        let _ = crypto::open(&Sealed { body: &body, iv_header: None }, &keys, &auto(), &Hint::default());
    }

    #[test]
    fn a_wrong_key_never_opens_a_body(object in json_object(), variant in prop::sample::select(Variant::encrypted()), iv in any::<[u8; 16]>()) {
        let plaintext = Value::Object(object).to_string();
        let sealed = crypto::seal(plaintext.as_bytes(), "fCRUwnAmjwESpfv8YsPwFaCIQe0nXLkY", variant, KeyForm::Raw, iv).unwrap();
        let keys = Keyring::new(&[SecretString::from("AnotherKeyAnotherKeyAnotherKey12".to_string())]);
        let header = sealed.headers.first().map(|(_, v)| v.as_str());
        let opened = crypto::open(&Sealed { body: sealed.body.as_bytes(), iv_header: header }, &keys, &auto(), &Hint::default());
        prop_assert!(opened.is_err());
    }

    #[test]
    fn arbitrary_config_text_is_parsed_or_refused_never_a_panic(text in "\\PC{0,400}") {
        let path = std::path::Path::new("/nonexistent/routes.toml");
        let _ = Config::from_toml(&text, path, &|_| None);
    }

    #[test]
    fn configs_with_arbitrary_values_report_problems_instead_of_panicking(
        max_body in "[0-9A-Za-z ]{0,8}",
        workers in any::<i64>(),
        schedule in prop::collection::vec("[0-9a-z]{0,5}", 0..4),
        rate in "[0-9/a-z]{0,8}",
        url in "[ -~]{0,40}",
        events in prop::collection::vec("[ -~]{0,10}", 0..3),
    ) {
        let text = format!(
            "[server]\nmax_body = {max_body:?}\n[delivery]\nworkers = {workers}\n[retry]\nschedule = {schedule:?}\n\
             [sources.s]\nsecret_keys = [\"k\"]\n[[routes]]\nname = \"r\"\nevents = {events:?}\nurl = {url:?}\n\
             template = \"t.json.hbs\"\nrate_limit = {rate:?}\n"
        );
        let path = std::path::Path::new("/nonexistent/routes.toml");
        if let Err(e) = Config::from_toml(&text, path, &|_| None) {
            prop_assert!(!e.to_string().is_empty());
        }
    }
}
