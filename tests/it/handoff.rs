//! New deliveries handed straight from ingest to idle workers: delivered once each whether they
//! were handed over or left for a claim (every worker busy), and nothing is left leased when the
//! relay stops.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn contact_event(n: usize) -> Value {
    json!({"event": "contact.subscribed", "id": format!("handoff-{n}"),
           "data": {"contact": {"email": format!("c{n}@example.org"), "prenom": "Zoë", "nom": "Lefèvre"}}})
}

fn ids_received(crm: &FakeCrm) -> Vec<String> {
    crm.received().iter().map(|r| r.json()["id"].as_str().unwrap_or_default().to_string()).collect()
}

#[tokio::test]
async fn every_event_is_delivered_once_whether_it_was_handed_over_or_claimed() {
    let app = spawn_app().await;
    // The CRM is slow, so the 8 workers fill up: later events wait in the store for a claim.
    app.crm.delay(Duration::from_millis(150));
    for n in 0..60 {
        assert_eq!(app.post_event(&contact_event(n)).await.status(), 200);
    }
    wait_until(Duration::from_secs(20), "60 deliveries", || async {
        app.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'") == 60
    })
    .await;
    let ids = ids_received(&app.crm);
    assert_eq!(ids.len(), 60, "one request per event, none sent twice: {ids:?}");
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 60);
    assert!(app.crm.max_in_flight() <= 8, "never more than `workers` requests at once");
    app.stop().await;
}

#[tokio::test]
async fn nothing_is_left_leased_after_a_graceful_stop_and_a_restart_sends_the_rest_at_once() {
    let cfg = TestConfig::default();
    let app = spawn_app_with(TestConfig::default()).await;
    app.crm.delay(Duration::from_millis(1500));
    for n in 0..20 {
        assert_eq!(app.post_event(&contact_event(n)).await.status(), 200);
    }
    // 8 requests at the CRM (every worker busy); the others wait in the store.
    wait_until(Duration::from_secs(10), "8 requests at the CRM", || async { app.crm.max_in_flight() == 8 }).await;
    let db = app.db_path();
    let (dir, crm) = app.stop().await;
    assert_eq!(
        count_in(&db, "SELECT COUNT(*) FROM deliveries WHERE lease_token IS NOT NULL"),
        0,
        "nothing stays leased after a graceful stop: a restart sends at once, not after the lease"
    );
    assert_eq!(count_in(&db, "SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'"), 8);

    crm.delay(Duration::ZERO);
    let app = start_in(dir, crm, &cfg).await;
    wait_until(Duration::from_secs(10), "all 20 delivered after the restart", || async {
        app.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'") == 20
    })
    .await;
    let ids = ids_received(&app.crm);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 20);
    assert_eq!(ids.len(), 20, "none sent twice: {ids:?}");
    app.stop().await;
}
