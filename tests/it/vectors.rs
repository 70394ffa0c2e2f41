//! The shared PHP vectors: each decrypts to its plaintext, end to end through the relay, and each
//! negative is refused with the very answer an accepted event gets.

use std::time::Duration;

use lbx_relay::crypto::{self, EnvelopeMode, Hint, Keyring, OpenOptions, Sealed};
use secrecy::SecretString;
use serde_json::Value;

use crate::helpers::*;

fn vectors() -> Value {
    serde_json::from_str(include_str!("../vectors/envelopes.json")).unwrap()
}

fn headers_of(v: &Value) -> Vec<(String, String)> {
    v["headers"]
        .as_object()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string())).collect())
        .unwrap_or_default()
}

const AUTO: OpenOptions = OpenOptions { mode: EnvelopeMode::Auto, allow_plaintext: false };

#[test]
fn every_php_vector_decrypts_to_its_plaintext_and_names_its_variant() {
    let all = vectors();
    let list = all["vectors"].as_array().unwrap();
    assert!(list.len() >= 40, "the shared vectors are all here");
    for v in list {
        let name = v["name"].as_str().unwrap();
        let keys = Keyring::new(&[SecretString::from(v["secret"].as_str().unwrap().to_string())]);
        let headers = headers_of(v);
        let iv = headers.iter().find(|(k, _)| k.to_ascii_lowercase().ends_with("-iv")).map(|(_, v)| v.as_str());
        let opened = crypto::open(
            &Sealed { body: v["body"].as_str().unwrap().as_bytes(), iv_header: iv },
            &keys,
            &AUTO,
            &Hint::default(),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(Value::Object(opened.plaintext), v["plaintext"], "{name}");
        assert_eq!(opened.variant.name(), v["envelope"].as_str().unwrap(), "{name}");
    }
}

#[test]
fn every_negative_is_refused_without_a_panic() {
    let all = vectors();
    for n in all["negatives"].as_array().unwrap() {
        let name = n["name"].as_str().unwrap();
        let keys = Keyring::new(&[SecretString::from(n["secret"].as_str().unwrap().to_string())]);
        let r = crypto::open(
            &Sealed { body: n["body"].as_str().unwrap().as_bytes(), iv_header: None },
            &keys,
            &AUTO,
            &Hint::default(),
        );
        assert!(r.is_err(), "{name} was accepted");
    }
}

#[tokio::test]
async fn every_vector_is_delivered_end_to_end_with_its_exact_plaintext() {
    let all = vectors();
    let list = all["vectors"].as_array().unwrap().clone();
    // One source per vector: each keeps its own secret and its own dedup scope.
    let sources: Vec<(String, String)> =
        list.iter().enumerate().map(|(i, v)| (format!("v{i}"), v["secret"].as_str().unwrap().to_string())).collect();
    let app = spawn_app_with(TestConfig { sources, ..TestConfig::default() }).await;
    for (i, v) in list.iter().enumerate() {
        let mut req = app
            .client
            .post(format!("{}/hooks/v{i}", app.public))
            .header("Content-Type", "application/json")
            .body(v["body"].as_str().unwrap().to_string());
        for (k, val) in headers_of(v) {
            req = req.header(k, val);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{}", v["name"]);
    }
    wait_until(Duration::from_secs(20), "every vector delivered", || async { app.crm.count() >= list.len() }).await;
    let received = app.crm.received();
    assert_eq!(received.len(), list.len(), "each vector delivered exactly once");
    for (i, v) in list.iter().enumerate() {
        let name = v["name"].as_str().unwrap();
        let got = received
            .iter()
            .map(|r| r.json())
            .find(|b| b["source"] == format!("v{i}"))
            .unwrap_or_else(|| panic!("{name} not delivered"));
        assert_eq!(got["data"], v["plaintext"], "{name}");
        // Hostile strings (quotes, apostrophes, non-Latin scripts) come out exact.
        assert_eq!(got["prenom"], v["plaintext"]["data"]["contact"]["prenom"], "{name}");
        assert_eq!(got["nom"], v["plaintext"]["data"]["contact"]["nom"], "{name}");
        assert_eq!(got["event"], v["plaintext"]["event"], "{name}");
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), 0);
}

#[tokio::test]
async fn negatives_are_quarantined_and_answered_exactly_like_an_accepted_event() {
    let app = spawn_app().await;
    let accepted = app.post_event(&sample_events()[0]).await;
    let accepted_status = accepted.status();
    let accepted_body = accepted.text().await.unwrap();
    assert_eq!(accepted_status, 200);

    let all = vectors();
    let negatives = all["negatives"].as_array().unwrap();
    for n in negatives {
        let resp = app.post_hook(n["body"].as_str().unwrap(), &[]).await;
        assert_eq!(resp.status(), accepted_status, "{}", n["name"]);
        assert_eq!(resp.text().await.unwrap(), accepted_body, "{}", n["name"]);
    }
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), negatives.len() as i64);
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1, "no negative became an event");
    wait_until(Duration::from_secs(5), "the accepted event delivered", || async {
        app.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'") == 1
    })
    .await;
    // Its delivery is the only one there is: nothing from the negatives can reach the CRM.
    assert_eq!(app.count("SELECT COUNT(*) FROM deliveries"), 1);
    assert_eq!(app.crm.count(), 1, "nothing from the negatives reached the CRM");
}
