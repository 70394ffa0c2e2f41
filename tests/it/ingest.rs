//! Ingest behaviour a sender and an operator observe: dedup, body limits, unrouted events,
//! quarantine bounds, path tokens, admin authentication and metrics.

use std::time::Duration;

use serde_json::json;

use crate::helpers::*;

#[tokio::test]
async fn a_duplicate_re_encrypted_event_is_acknowledged_and_delivered_once() {
    let app = spawn_app().await;
    let event = &sample_events()[3];
    let first = seal(event, SECRET);
    let second = seal(event, SECRET);
    assert_ne!(first.body, second.body, "a fresh IV each time");
    assert_eq!(app.post_hook(first.body, &[]).await.status(), 200);
    assert_eq!(app.post_hook(second.body, &[]).await.status(), 200);
    wait_until(Duration::from_secs(5), "the delivery done", || async {
        app.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'") == 1
    })
    .await;
    // One event, one delivery, done: nothing is left that could reach the CRM again.
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM deliveries"), 1);
    assert_eq!(app.crm.count(), 1);
}

#[tokio::test]
async fn duplicates_are_caught_by_the_store_after_a_restart() {
    let app = spawn_app().await;
    let event = &sample_events()[5];
    assert_eq!(app.post_event(event).await.status(), 200);
    wait_until(Duration::from_secs(5), "first delivery", || async { app.crm.count() == 1 }).await;
    let (dir, crm) = app.stop().await;
    // A new process has an empty cache; only the store's unique key can know.
    let app = start_in(dir, crm, &TestConfig::default()).await;
    assert_eq!(app.post_event(event).await.status(), 200);
    // The 200 came after the store decided: no second event, no new delivery to send.
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM deliveries"), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'"), 0);
    assert_eq!(app.crm.count(), 1);
}

#[tokio::test]
async fn events_without_an_id_are_deduplicated_by_content() {
    let app = spawn_app().await;
    let event = json!({"event": "contact.subscribed", "data": {"contact": {"email": "a@b.c"}}});
    app.post_event(&event).await;
    app.post_event(&event).await;
    let other = json!({"event": "contact.subscribed", "data": {"contact": {"email": "x@y.z"}}});
    app.post_event(&other).await;
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 2);
}

#[tokio::test]
async fn a_body_over_max_body_is_refused_with_413_and_stores_nothing() {
    let app = spawn_app_with(TestConfig { max_body: "2KiB", ..TestConfig::default() }).await;
    let big = json!({"event": "contact.created", "id": "big", "blob": "x".repeat(4096)});
    let resp = app.post_event(&big).await;
    assert_eq!(resp.status(), 413);
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 0);
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), 0);
    // A chunked body with no Content-Length is measured as it streams.
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(
        (0..8).map(|_| Ok::<_, std::io::Error>(vec![b' '; 1024])),
    ));
    let resp = app.client.post(format!("{}/hooks/learnybox", app.public)).body(body).send().await.unwrap();
    assert_eq!(resp.status(), 413);
}

#[tokio::test]
async fn an_event_no_route_matches_is_stored_as_unrouted() {
    let app = spawn_app_with(TestConfig { events: r#"["transaction.*"]"#, ..TestConfig::default() }).await;
    assert_eq!(app.post_event(&json!({"event": "contact.deleted", "id": "u1"})).await.status(), 200);
    assert_eq!(app.count("SELECT COUNT(*) FROM events WHERE status = 'unrouted'"), 1);
    assert_eq!(app.count("SELECT COUNT(*) FROM deliveries"), 0);
}

#[tokio::test]
async fn a_full_quarantine_answers_like_any_body_keeps_what_it_holds_and_counts_the_drop() {
    let app = spawn_app_with(TestConfig { quarantine_max: 2, ..TestConfig::default() }).await;
    assert_eq!(app.post_hook("garbage 1", &[]).await.status(), 200);
    assert_eq!(app.post_hook("garbage 2", &[]).await.status(), 200);
    // No status oracle: a sender cannot tell a dropped body from a decrypted one.
    assert_eq!(app.post_hook("garbage 3", &[]).await.status(), 200);
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), 2);
    let metrics = app.client.get(format!("{}/metrics", app.admin)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.lines().any(|l| l.starts_with("lbx_events_received_total")
            && l.contains(r#"outcome="quarantine_full""#)
            && l.contains("learnybox")),
        "{metrics}"
    );
    // Good events still go through.
    assert_eq!(app.post_event(&sample_events()[0]).await.status(), 200);
}

#[tokio::test]
async fn quarantined_bodies_keep_their_headers_but_not_credentials() {
    let app = spawn_app().await;
    let headers = vec![
        ("X-Learnybox-Signature".to_string(), "abc".to_string()),
        ("Authorization".to_string(), "Bearer leaked".to_string()),
        ("X-Api-Key".to_string(), "leaked-api-key".to_string()),
        ("X-Auth-Token".to_string(), "leaked-token".to_string()),
        ("Cookie".to_string(), "session=leaked".to_string()),
    ];
    app.post_hook("not encrypted at all", &headers).await;
    let conn = rusqlite::Connection::open(app.db_path()).unwrap();
    let (h, body): (String, Vec<u8>) =
        conn.query_row("SELECT headers, body FROM quarantine", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
    assert!(h.contains("x-learnybox-signature"), "{h}");
    assert!(!h.contains("leaked"), "{h}");
    assert_eq!(body, b"not encrypted at all");
}

#[tokio::test]
async fn unknown_sources_are_404() {
    let app = spawn_app().await;
    let resp = app.client.post(format!("{}/hooks/nope", app.public)).body("{}").send().await.unwrap();
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn the_admin_api_needs_the_bearer_token() {
    let app = spawn_app().await;
    let url = format!("{}/api/deliveries", app.admin);
    assert_eq!(app.client.get(&url).send().await.unwrap().status(), 401);
    assert_eq!(app.client.get(&url).bearer_auth("wrong").send().await.unwrap().status(), 401);
    assert_eq!(app.client.post(format!("{}/api/deliveries/x/retry", app.admin)).send().await.unwrap().status(), 401);
    assert_eq!(app.admin_get("/api/deliveries").await.status(), 200);
    assert_eq!(app.admin_get("/api/deliveries?status=bogus").await.status(), 400);
    // Health and readiness need no token.
    assert_eq!(app.client.get(format!("{}/readyz", app.admin)).send().await.unwrap().status(), 200);
    assert_eq!(app.client.get(format!("{}/healthz", app.public)).send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn metrics_expose_the_documented_series() {
    let app = spawn_app().await;
    app.post_event(&sample_events()[1]).await;
    // The attempt is counted before it is settled: once settled, every series is there.
    wait_until(Duration::from_secs(5), "delivery settled", || async {
        app.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'") == 1
    })
    .await;
    let text = app.client.get(format!("{}/metrics", app.admin)).send().await.unwrap().text().await.unwrap();
    for series in [
        "lbx_events_received_total{source=\"learnybox\",outcome=\"accepted\"}",
        "lbx_deliveries_total{route=\"crm\",outcome=\"delivered\"}",
        "lbx_delivery_duration_seconds_bucket",
        "lbx_queue_depth",
        "lbx_store_batch_seconds_bucket{le=\"0.001\"}",
        "lbx_store_batch_jobs_bucket{le=\"1\"}",
        "lbx_store_wait_seconds_count",
    ] {
        assert!(text.contains(series), "missing {series} in:\n{text}");
    }
}

#[tokio::test]
async fn a_store_that_cannot_commit_answers_503_and_recovers() {
    let app = spawn_app().await;
    // Another process holds the database's write lock longer than the relay waits for it.
    let blocker = rusqlite::Connection::open(app.db_path()).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let resp = app.post_event(&sample_events()[8]).await;
    assert_eq!(resp.status(), 503, "never 200 without a commit");
    blocker.execute_batch("ROLLBACK").unwrap();
    drop(blocker);
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 0);
    // Learnybox's retry of the same event then succeeds.
    assert_eq!(app.post_event(&sample_events()[8]).await.status(), 200);
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1);
}

#[tokio::test]
async fn a_path_token_hides_the_hook_from_senders_who_do_not_know_it() {
    let app = spawn_app_with(TestConfig { path_token: Some("s3cret-path"), ..TestConfig::default() }).await;
    let sealed = seal(&sample_events()[9], SECRET);
    let post = |path: String, body: String| {
        let client = app.client.clone();
        async move { client.post(path).body(body).send().await.unwrap().status() }
    };
    assert_eq!(post(format!("{}/hooks/learnybox", app.public), "garbage".into()).await, 404);
    assert_eq!(post(format!("{}/hooks/learnybox/wrong", app.public), "garbage".into()).await, 404);
    assert_eq!(app.count("SELECT COUNT(*) FROM quarantine"), 0, "nothing reached the decryptor");
    assert_eq!(post(format!("{}/hooks/learnybox/s3cret-path", app.public), sealed.body).await, 200);
    assert_eq!(app.count("SELECT COUNT(*) FROM events"), 1);
}
