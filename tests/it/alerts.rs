//! `[alerts]` against a loopback receiver: dead letters grouped and rate-limited, a route's
//! failure rate and its recovery, a silent source and its return, the quarantine, `alert-test`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::{web, HttpResponse};
use serde_json::{json, Value};

use crate::helpers::*;

#[derive(Default)]
struct Receiver {
    got: Mutex<Vec<Value>>,
}

async fn receive(state: web::Data<Receiver>, body: web::Json<Value>) -> HttpResponse {
    state.got.lock().unwrap().push(body.into_inner());
    HttpResponse::Ok().finish()
}

fn receiver() -> (String, Arc<Receiver>) {
    let state = Arc::new(Receiver::default());
    let url = serve_loopback(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), state.clone(), receive);
    (url, state)
}

fn texts(r: &Receiver) -> Vec<String> {
    r.got.lock().unwrap().iter().map(|v| v["text"].as_str().unwrap_or_default().to_string()).collect()
}

fn alerts_table(url: &str, extra: &str) -> String {
    format!("\n[alerts]\nurl = \"{url}/hook\"\ncheck_every = \"100ms\"\nrepeat_after = \"1h\"\n{extra}\n")
}

/// `[alerts]` goes after the routes table, where TOML puts a new table.
fn with_alerts(url: &str, extra: &str) -> TestConfig {
    TestConfig { steps: None, route_extra: alerts_table(url, extra), ..TestConfig::default() }
}

async fn metric(app: &TestApp, name: &str) -> f64 {
    let text = app.client.get(format!("{}/metrics", app.admin)).send().await.unwrap().text().await.unwrap();
    text.lines().filter(|l| l.starts_with(name)).filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).sum()
}

#[tokio::test]
async fn dead_letters_are_grouped_into_one_alert_and_not_repeated_within_repeat_after() {
    let (url, got) = receiver();
    let app = spawn_app_with(TestConfig { schedule: vec![], ..with_alerts(&url, "failure_rate = 0") }).await;
    app.crm.always(422);
    for i in 0..3 {
        app.post_event(&json!({"event": "contact.created", "id": format!("dl-{i}")})).await;
    }
    wait_until(Duration::from_secs(10), "an alert", || async { !got.got.lock().unwrap().is_empty() }).await;
    wait_until(Duration::from_secs(10), "three dead letters", || async {
        app.deliveries("status=failed").await.len() == 3
    })
    .await;
    // More failures while the alert is fresh: counted as suppressed, not sent.
    for i in 3..5 {
        app.post_event(&json!({"event": "contact.created", "id": format!("dl-{i}")})).await;
    }
    wait_until(Duration::from_secs(10), "the later ones suppressed", || async {
        metric(&app, "lbx_alerts_suppressed_total").await >= 1.0
    })
    .await;
    let all = texts(&got);
    let dead: Vec<&String> = all.iter().filter(|t| t.contains("failed for good")).collect();
    assert_eq!(dead.len(), 1, "one grouped alert, no flood: {all:?}");
    assert!(dead[0].contains("route crm") && dead[0].contains("HTTP 422"), "{}", dead[0]);
    let ids: Vec<String> =
        app.deliveries("status=failed").await.iter().map(|d| d["id"].as_str().unwrap().to_string()).collect();
    assert!(ids.iter().any(|id| dead[0].contains(&format!("Latest: delivery {id}"))), "names one: {}", dead[0]);
}

#[tokio::test]
async fn a_failing_route_alerts_once_and_says_when_it_recovered() {
    let (url, got) = receiver();
    let app = spawn_app_with(TestConfig {
        schedule: vec!["50ms", "50ms", "50ms"],
        ..with_alerts(&url, "failure_rate = 0.5\nmin_attempts = 3\nwindow = \"2s\"\nformat = \"json\"")
    })
    .await;
    app.crm.always(503);
    app.post_event(&json!({"event": "contact.created", "id": "fr-1"})).await;
    wait_until(Duration::from_secs(10), "firing", || async {
        got.got.lock().unwrap().iter().any(|v| v["kind"] == "failure_rate" && v["state"] == "firing")
    })
    .await;
    app.crm.always(200);
    for i in 0..4 {
        app.post_event(&json!({"event": "contact.created", "id": format!("ok-{i}")})).await;
    }
    wait_until(Duration::from_secs(15), "resolved", || async {
        got.got.lock().unwrap().iter().any(|v| v["kind"] == "failure_rate" && v["state"] == "resolved")
    })
    .await;
    let firing =
        got.got.lock().unwrap().iter().filter(|v| v["kind"] == "failure_rate" && v["state"] == "firing").count();
    assert_eq!(firing, 1);
    let first = got.got.lock().unwrap()[0].clone();
    assert_eq!(first["source"], "lbx-relay");
    assert!(first["text"].as_str().unwrap().contains("route crm"), "{first}");
}

#[tokio::test]
async fn a_silent_source_and_the_quarantine_raise_alerts_and_the_source_recovers() {
    let (url, got) = receiver();
    // The relay's clock moves only when told: once the body arrives the source stays "heard" for
    // as long as the test needs, so a slow check cannot find it silent again before it reports the
    // recovery (on the wall clock that window was only alert_after = 300 ms).
    let clock = lbx_relay::clock::Clock::manual(DRIVEN_START_MS);
    let cfg = TestConfig {
        source_extra: "alert_after = \"300ms\"",
        clock: Some(clock.clone()),
        ..with_alerts(&url, "failure_rate = 0")
    };
    let app = spawn_app_with(cfg).await;
    clock.advance(Duration::from_millis(301));
    wait_until(Duration::from_secs(10), "silent", || async {
        texts(&got).iter().any(|t| t.contains("no webhook from source learnybox"))
    })
    .await;
    app.post_hook("junk that does not decrypt", &[]).await;
    wait_until(Duration::from_secs(10), "quarantine and recovery", || async {
        let t = texts(&got);
        t.iter().any(|t| t.contains("quarantined")) && t.iter().any(|t| t.contains("webhooks are arriving again"))
    })
    .await;
}

#[tokio::test]
async fn alert_test_sends_one_notification() {
    let (url, got) = receiver();
    let dir = tempfile::tempdir().unwrap();
    write_process_config(dir.path(), &with_alerts(&url, ""), "http://127.0.0.1:9");
    let path = dir.path().join("routes.toml").display().to_string();
    let (code, out, err) =
        tokio::task::spawn_blocking(move || run_cli(&["alert-test", "-c", &path], None, &[])).await.unwrap();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("test alert sent"));
    assert!(texts(&got)[0].contains("alert-test"));
}

#[tokio::test]
async fn a_field_real_events_lack_is_counted_kept_across_a_restart_and_alerted() {
    let (url, got) = receiver();
    let cfg = TestConfig { schedule: vec![], ..with_alerts(&url, "failure_rate = 0\nfield_absent_after = 5") };
    let app = spawn_app_with(cfg.clone()).await;
    // Learnybox's real events name the first name `first_name`; the template reads `prenom`.
    for i in 0..5 {
        let e = json!({"event": "contact.subscribed", "id": format!("real-{i}"),
                       "data": {"contact": {"email": format!("p{i}@example.org"), "first_name": "Zoé", "nom": "L"}}});
        app.post_event(&e).await;
    }
    wait_until(Duration::from_secs(10), "the field-absent alert", || async {
        texts(&got).iter().any(|t| t.contains("data.data.contact.prenom absent in 5 of the last 5 events"))
    })
    .await;
    let alert = texts(&got).into_iter().find(|t| t.contains("prenom absent")).unwrap();
    assert!(alert.contains("route crm") && alert.contains("first_name"), "names what the real events carry: {alert}");
    assert!(!texts(&got).iter().any(|t| t.contains("contact.nom absent")), "a field they have is not alerted");

    let fields = |v: &Value| v["routes"][0]["fields"].as_array().cloned().unwrap_or_default();
    let v: Value = app.admin_get("/api/routes").await.json().await.unwrap();
    let prenom = fields(&v).into_iter().find(|f| f["path"] == "data.data.contact.prenom").unwrap();
    assert_eq!(
        (&prenom["present"], &prenom["absent"], &prenom["absent_streak"], &prenom["in_samples"]),
        (&json!(0), &json!(5), &json!(5), &json!(true)),
        "{prenom}"
    );
    let nom = fields(&v).into_iter().find(|f| f["path"] == "data.data.contact.nom").unwrap();
    assert_eq!(nom["present"], 5);

    // Kept in the store: a restart keeps the counts.
    let (dir, crm) = app.stop().await;
    let kept = count_in(
        &dir.path().join("relay.db"),
        "SELECT absent FROM field_coverage WHERE path = 'data.data.contact.prenom'",
    );
    assert_eq!(kept, 5, "saved at shutdown");
    let app = start_in(dir, crm, &cfg).await;
    wait_until(Duration::from_secs(10), "the counts restored", || async {
        let v: Value = app.admin_get("/api/routes").await.json().await.unwrap();
        fields(&v).iter().any(|f| f["path"] == "data.data.contact.prenom" && f["absent"] == 5)
    })
    .await;
}

#[tokio::test]
async fn a_crm_error_reaches_the_chat_escaped_and_with_addresses_masked() {
    let (url, got) = receiver();
    let app = spawn_app_with(TestConfig { schedule: vec![], ..with_alerts(&url, "failure_rate = 0") }).await;
    app.crm.respond_full(
        400,
        &[],
        r#"{"message":"contact camille.durand@example.fr refused <!channel> <https://evil.example|click here> & more"}"#,
    );
    app.post_event(&json!({"event": "contact.created", "id": "esc-1"})).await;
    wait_until(Duration::from_secs(10), "the dead-letter alert", || async {
        texts(&got).iter().any(|t| t.contains("failed for good"))
    })
    .await;
    let text = texts(&got).into_iter().find(|t| t.contains("failed for good")).unwrap();
    assert!(!text.contains("<!channel>") && text.contains("&lt;!channel&gt;"), "no mention reaches Slack: {text}");
    assert!(!text.contains("<https://evil.example|"), "no link is made from a CRM's text: {text}");
    assert!(text.contains("&amp; more"), "{text}");
    assert!(!text.contains("camille.durand@example.fr") && text.contains("ca***@example.fr"), "{text}");
}

#[tokio::test]
async fn alerts_speak_french_when_asked_and_link_to_the_matching_dashboard_view() {
    let (url, got) = receiver();
    // JSON: the text as written (Slack's format escapes `&` as `&amp;`, which Slack shows as `&`).
    let extra =
        "failure_rate = 0\nformat = \"json\"\nlang = \"fr\"\ndashboard_url = \"https://relay.example.com:9090/\"";
    let app = spawn_app_with(TestConfig { schedule: vec![], ..with_alerts(&url, extra) }).await;
    app.crm.always(422);
    app.post_event(&json!({"event": "contact.created", "id": "fr-1"})).await;
    wait_until(Duration::from_secs(10), "an alert", || async { !got.got.lock().unwrap().is_empty() }).await;
    let text = texts(&got).join("\n");
    assert!(text.contains("1 livraison(s) vers la route crm ont échoué définitivement"), "{text}");
    assert!(text.contains("https://relay.example.com:9090/#/deliveries?status=failed&route=crm"), "{text}");
    assert!(!text.contains("POST /api/"), "a link, not an API path: {text}");
    app.stop().await;
}

#[test]
fn a_wrong_alert_language_or_dashboard_url_is_refused() {
    for (extra, expected) in [
        ("lang = \"de\"", "alerts.lang"),
        ("dashboard_url = \"relay.example.com\"", "alerts.dashboard_url"),
        ("dashboard_url = \"https://relay.example.com/#/x\"", "alerts.dashboard_url"),
        ("langue = \"fr\"", "unknown field `langue`"),
    ] {
        let text =
            format!("[sources.s]\nsecret_keys = [\"k\"]\n[alerts]\nurl = \"https://hooks.example.com/x\"\n{extra}\n");
        let err = lbx_relay::config::Config::from_toml(&text, std::path::Path::new("routes.toml"), &|_| None)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains(expected), "{extra} → {err}");
    }
}
