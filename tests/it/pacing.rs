//! Per-route pacing against a real CRM on loopback: `rate_limit`, `concurrency`, a 429 with
//! `Retry-After`, and per-key ordering with `order_by`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn contact_event(id: &str, email: &str) -> Value {
    json!({"event": "contact.subscribed", "id": id, "data": {"contact": {"email": email, "prenom": id}}})
}

/// The arrival times at the CRM by the relay's clock, in order.
fn arrivals(r: &DrivenRelay) -> Vec<i64> {
    r.crm.received().iter().map(|x| x.clock_ms.expect("a driven relay's CRM notes its clock")).collect()
}

fn delivered(r: &DrivenRelay) -> i64 {
    r.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'")
}

// On the driven clock: the gates wait on the relay's clock and the test moves it 50 ms at a time;
// the times checked are those the relay recorded for each request it sent.
#[tokio::test]
async fn a_rate_limited_route_never_exceeds_its_rate() {
    let r = driven_relay(TestConfig { route_extra: "rate_limit = \"3/1s\"".into(), ..TestConfig::default() }).await;
    for i in 0..10 {
        r.accept(&contact_event(&format!("r{i}"), "a@example.com")).await;
    }
    r.drive(50, 60_000, |r| delivered(r) == 10).await;
    let at = r.sent_times();
    assert_eq!(at.len(), 10);
    for w in at.windows(4) {
        // Never a fourth request within a second of the first of three, to the millisecond.
        assert!(w[3] - w[0] >= 1000, "4 requests within {} ms: {at:?}", w[3] - w[0]);
    }
    assert!(at[9] - at[0] >= 3000, "10 at 3/s span three windows");
    assert_eq!(r.crm.count(), 10);
    assert_eq!(r.count("SELECT COUNT(*) FROM attempt_log"), 10, "waiting for the rate is not an attempt");
}

#[tokio::test]
async fn concurrency_bounds_requests_in_flight() {
    let app = spawn_app_with(TestConfig { route_extra: "concurrency = 2".into(), ..TestConfig::default() }).await;
    app.crm.delay(Duration::from_millis(150));
    for i in 0..8 {
        app.post_event(&contact_event(&format!("c{i}"), "a@example.com")).await;
    }
    wait_until(Duration::from_secs(15), "all eight delivered", || async {
        app.deliveries("status=delivered").await.len() == 8
    })
    .await;
    assert_eq!(app.crm.max_in_flight(), 2, "8 workers, but never more than 2 requests at once");
}

#[tokio::test]
async fn a_429_with_retry_after_pushes_the_next_attempt_out_and_never_fails_the_delivery() {
    // A one-step schedule of 50 ms: a plain retry would come at once and a second failure would
    // exhaust it. A 429 waits as asked and does not use up the schedule.
    let r = driven_relay(TestConfig { schedule: vec!["50ms"], ..TestConfig::default() }).await;
    r.crm.retry_after("3");
    r.crm.respond_with(&[429, 429]);
    r.accept(&sample_events()[0]).await;
    assert_eq!(r.round().await, 1, "the first attempt: 429");
    r.advance_ms(2_999);
    assert_eq!(r.round().await, 0, "a millisecond before Retry-After ends, nothing is sent");
    r.advance_ms(1);
    assert_eq!(r.round().await, 1, "the second attempt: 429 again");
    r.advance_ms(2_999);
    assert_eq!(r.round().await, 0);
    r.advance_ms(1);
    assert_eq!(r.round().await, 1, "the third attempt");
    let at = arrivals(&r);
    assert_eq!(at, vec![DRIVEN_START_MS, DRIVEN_START_MS + 3_000, DRIVEN_START_MS + 6_000]);
    assert_eq!(r.crm.received().iter().map(|x| x.status).collect::<Vec<_>>(), vec![429, 429, 200]);
    assert_eq!(delivered(&r), 1);
    assert_eq!(r.count("SELECT attempts FROM deliveries"), 3);
}

#[tokio::test]
async fn order_by_keeps_arrival_order_per_key_while_keys_proceed_in_parallel() {
    let app = spawn_app_with(TestConfig {
        route_extra: "order_by = \"{{lower data.data.contact.email}}\"".into(),
        ..TestConfig::default()
    })
    .await;
    // Random answer times would reorder unordered deliveries; the very first request fails
    // once (that key's head is retried, holding back only its key).
    app.crm.jitter(Duration::from_millis(40));
    app.crm.respond_with(&[503]);
    let mut sent: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for i in 0..50 {
        let email = format!("user{}@example.com", i % 5);
        let id = format!("o{i:02}");
        assert_eq!(app.post_event(&contact_event(&id, &email.to_uppercase())).await.status(), 200);
        sent.entry(email).or_default().push(id);
    }
    wait_until(Duration::from_secs(30), "all fifty delivered", || async {
        app.deliveries("status=delivered&limit=100").await.len() == 50
    })
    .await;
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in app.crm.received().iter().filter(|r| r.status == 200) {
        let body = r.json();
        let email = body["data"]["data"]["contact"]["email"].as_str().unwrap().to_lowercase();
        seen.entry(email).or_default().push(body["data"]["id"].as_str().unwrap().to_string());
    }
    assert_eq!(seen, sent, "each key's events reached the CRM in the order they arrived");
    assert!(app.crm.max_in_flight() > 1, "different keys went out in parallel");
}

// On the driven clock, like the single-step one. A delivery whose rate window fills between steps
// is handed back; the requests it already sent are kept and recorded with its next attempt, so all
// nine are read back with the times the relay sent them.
#[tokio::test]
async fn a_multi_step_route_counts_every_request_against_its_rate() {
    let steps = ["one", "two", "three"]
        .iter()
        .map(|n| format!("[[routes.steps]]\nname = \"{n}\"\nurl = \"{{crm}}/{n}\"\ntemplate = \"crm.json.hbs\"\n"))
        .collect::<String>();
    let r = driven_relay(TestConfig {
        route_extra: "rate_limit = \"2/1s\"".into(),
        steps: Some(steps),
        ..TestConfig::default()
    })
    .await;
    for i in 0..3 {
        r.accept(&contact_event(&format!("m{i}"), "a@example.com")).await;
    }
    r.drive(50, 60_000, |r| delivered(r) == 3).await;
    assert_eq!(r.crm.count(), 9, "each step once");
    let at = r.sent_times();
    assert_eq!(at.len(), 9, "every request the CRM received is in an attempt's record: {at:?}");
    for w in at.windows(3) {
        assert!(w[2] - w[0] >= 1000, "3 requests within {} ms: {at:?}", w[2] - w[0]);
    }
    assert_eq!(r.count("SELECT COUNT(*) FROM attempt_log"), 3, "handing back between steps is not an attempt");
    let handed_back = r.count("SELECT COUNT(*) FROM deliveries WHERE steps_state LIKE '%lbx-sent%'");
    assert_eq!(handed_back, 0, "once recorded, the kept requests leave the delivery's state");
}

// A delivery handed back between steps keeps the requests it sent for its next attempt's record,
// with the configuration's secrets masked there too (here the source key, put in a URL).
#[tokio::test]
async fn requests_sent_before_a_hand_back_are_kept_masked_and_recorded_once() {
    let steps = ["one", "two", "three"]
        .iter()
        .map(|n| {
            format!("[[routes.steps]]\nname = \"{n}\"\nurl = \"{{crm}}/{n}?k={SECRET}\"\ntemplate = \"crm.json.hbs\"\n")
        })
        .collect::<String>();
    let r = driven_relay(TestConfig {
        route_extra: "rate_limit = \"1/2s\"".into(),
        steps: Some(steps),
        ..TestConfig::default()
    })
    .await;
    r.accept(&contact_event("h1", "a@example.com")).await;
    let state = || {
        let conn = rusqlite::Connection::open(r.dir.path().join("relay.db")).unwrap();
        conn.query_row("SELECT COALESCE(steps_state, '') FROM deliveries", [], |row| row.get::<_, String>(0)).unwrap()
    };
    assert_eq!(r.round().await, 1);
    assert_eq!(r.crm.count(), 1, "step one sent, then the window is full: handed back");
    let kept = state();
    assert!(kept.contains("lbx-sent") && kept.contains("/one?k=***"), "{kept}");
    assert!(!kept.contains(SECRET), "the source key is masked in what is kept: {kept}");
    r.advance_ms(2_000);
    assert_eq!(r.round().await, 1);
    assert_eq!(r.crm.count(), 2, "step two, handed back again");
    r.advance_ms(2_000);
    assert_eq!(r.round().await, 1);
    assert_eq!(r.crm.count(), 3);
    assert_eq!(delivered(&r), 1);
    assert_eq!(r.count("SELECT COUNT(*) FROM attempt_log"), 1, "one attempt, holding all three requests");
    let detail: String = rusqlite::Connection::open(r.dir.path().join("relay.db"))
        .unwrap()
        .query_row("SELECT detail FROM attempt_log", [], |row| row.get(0))
        .unwrap();
    let sent: Vec<serde_json::Value> = serde_json::from_str(&detail).unwrap();
    let steps: Vec<&str> = sent.iter().map(|x| x["step"].as_str().unwrap()).collect();
    assert_eq!(steps, ["one", "two", "three"], "each request once, in order");
    assert!(!detail.contains(SECRET));
    assert!(!state().contains("lbx-sent"), "nothing kept once recorded");
    assert_eq!(r.sent_times(), vec![DRIVEN_START_MS, DRIVEN_START_MS + 2_000, DRIVEN_START_MS + 4_000]);
}
