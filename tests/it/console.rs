//! The operator console's API: finding events by type, status, route, contact, Learnybox id and
//! time, with exact counts and cursor paging, on SQLite and on PostgreSQL.

use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

async fn events(app: &TestApp, query: &str) -> Value {
    let resp = app.admin_get(&format!("/api/events?{query}")).await;
    assert_eq!(resp.status(), 200, "{query}");
    resp.json().await.unwrap()
}

fn ids(v: &Value) -> Vec<String> {
    v["items"].as_array().unwrap().iter().map(|i| i["learnybox_id"].as_str().unwrap().to_string()).collect()
}

/// One delivered, one failed, one pending and one unrouted event, then every filter.
async fn events_are_found_by_every_filter(cfg: TestConfig) {
    let app =
        spawn_app_with(TestConfig { events: r#"["contact.*", "transaction.*"]"#, schedule: vec!["1h"], ..cfg }).await;
    let event = |id: &str, kind: &str, email: &str| json!({"event": kind, "id": id, "data": {"contact": {"email": email, "prenom": "X"}}});
    app.post_event(&event("lb-1", "contact.created", "ada@example.org")).await;
    wait_until(Duration::from_secs(10), "lb-1 delivered", || async { app.crm.count() == 1 }).await;
    app.crm.respond_with(&[422]);
    app.post_event(&event("lb-2", "transaction.created", "ADA@Example.org")).await;
    wait_until(Duration::from_secs(10), "lb-2 failed", || async { app.crm.count() == 2 }).await;
    app.crm.respond_with(&[500]);
    app.post_event(&event("lb-3", "transaction.refunded", "bob@example.org")).await;
    wait_until(Duration::from_secs(10), "lb-3 attempted", || async { app.crm.count() == 3 }).await;
    app.post_event(&event("lb-4", "user.deleted", "carol@example.org")).await;
    wait_until(Duration::from_secs(10), "settled", || async {
        events(&app, "status=pending").await["total"] == 1 && events(&app, "status=failed").await["total"] == 1
    })
    .await;

    let all = events(&app, "").await;
    assert_eq!(ids(&all), ["lb-1", "lb-2", "lb-3", "lb-4"]);
    assert_eq!((all["total"].clone(), all["total_exact"].clone()), (json!(4), json!(true)));
    let first = &all["items"][0];
    assert_eq!(first["type"], "contact.created");
    assert_eq!(first["email"], "ada@example.org");
    assert_eq!(first["status"], "delivered");
    assert!(first["received_at"].as_str().unwrap().ends_with('Z'));

    assert_eq!(ids(&events(&app, "email=Ada%40EXAMPLE.org").await), ["lb-1", "lb-2"], "any case");
    assert_eq!(ids(&events(&app, "type=transaction.*").await), ["lb-2", "lb-3"]);
    assert_eq!(ids(&events(&app, "status=delivered").await), ["lb-1"]);
    assert_eq!(ids(&events(&app, "status=failed").await), ["lb-2"]);
    assert_eq!(ids(&events(&app, "status=pending").await), ["lb-3"]);
    assert_eq!(ids(&events(&app, "status=unrouted").await), ["lb-4"]);
    assert_eq!(ids(&events(&app, "id=lb-3").await), ["lb-3"]);
    assert_eq!(ids(&events(&app, "route=crm&order=desc").await), ["lb-3", "lb-2", "lb-1"]);
    assert_eq!(events(&app, "since=2999-01-01T00:00:00Z").await["total"], 0);
    assert_eq!(events(&app, "until=2999-01-01T00:00:00Z&type=user.*").await["total"], 1);

    let page1 = events(&app, "limit=3").await;
    assert_eq!(ids(&page1), ["lb-1", "lb-2", "lb-3"]);
    let next = page1["next"].as_str().unwrap();
    let page2 = events(&app, &format!("limit=3&after={next}")).await;
    assert_eq!(ids(&page2), ["lb-4"]);
    assert_eq!(page2["total"], 4, "the count ignores the cursor");

    assert_eq!(app.admin_get("/api/events?status=lost").await.status(), 400);
    assert_eq!(app.admin_get("/api/events?since=yesterday").await.status(), 400);

    // Bulk replay by filter: the count first, then the replay, which goes out now.
    let retry = |body: Value| {
        let req = app.client.post(format!("{}/api/deliveries/retry", app.admin)).bearer_auth(ADMIN_TOKEN).json(&body);
        async move { req.send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(retry(json!({"status": "any", "type": "transaction.*", "dry_run": true})).await["would_retry"], 2);
    assert_eq!(
        retry(json!({"status": "any", "type": "contact.*", "until": "2000-01-01T00:00:00Z", "dry_run": true})).await
            ["would_retry"],
        0
    );
    assert_eq!(retry(json!({"status": "failed", "dry_run": true})).await["would_retry"], 1);
    assert_eq!(events(&app, "status=failed").await["total"], 1, "a dry run changes nothing");
    app.crm.always(200);
    assert_eq!(retry(json!({"status": "any", "type": "transaction.*"})).await["retried"], 2);
    wait_until(Duration::from_secs(10), "both transactions delivered", || async {
        events(&app, "status=delivered&type=transaction.*").await["total"] == 2
    })
    .await;
}

#[tokio::test]
async fn events_are_found_by_every_filter_on_sqlite() {
    events_are_found_by_every_filter(TestConfig::default()).await;
}

#[tokio::test]
async fn events_are_found_by_every_filter_on_postgres() {
    let Some(schema) = pg_schema("events_are_found_by_every_filter_on_postgres").await else { return };
    events_are_found_by_every_filter(TestConfig { store_url: Some(schema.url()), ..TestConfig::default() }).await;
    schema.drop().await;
}

#[tokio::test]
async fn with_encryption_at_rest_events_are_still_found_by_contact() {
    let app = spawn_app_with(TestConfig {
        store_extra: "encryption_key = \"QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=\"".into(),
        ..TestConfig::default()
    })
    .await;
    let e = json!({"event": "contact.created", "id": "enc-lb", "data": {"contact": {"email": "Hedy@Example.org"}}});
    app.post_event(&e).await;
    let found = events(&app, "email=hedy%40example.org").await;
    assert_eq!(ids(&found), ["enc-lb"]);
    assert_eq!(found["items"][0]["email"], "Hedy@Example.org", "shown from the decrypted payload");
}

/// Three deliveries of which one fails before succeeding and one fails for good, then the health
/// and the series of the route.
async fn route_health_and_series_follow_the_attempts(cfg: TestConfig) {
    let app = spawn_app_with(TestConfig { schedule: vec!["50ms"], ..cfg }).await;
    app.crm.respond_with(&[503]);
    app.post_event(&json!({"event": "contact.created", "id": "h-1"})).await;
    wait_until(Duration::from_secs(10), "h-1 delivered on its retry", || async { app.crm.count() == 2 }).await;
    app.post_event(&json!({"event": "contact.created", "id": "h-2"})).await;
    wait_until(Duration::from_secs(10), "h-2 delivered", || async { app.crm.count() == 3 }).await;
    app.crm.respond_with(&[422]);
    app.post_event(&json!({"event": "contact.created", "id": "h-3"})).await;
    wait_until(Duration::from_secs(10), "h-3 failed", || async { events(&app, "status=failed").await["total"] == 1 })
        .await;

    let health: Value = app.admin_get("/api/routes").await.json().await.unwrap();
    let crm = &health["routes"][0];
    assert_eq!(crm["route"], "crm");
    assert_eq!(crm["attempts_24h"], 4);
    assert_eq!(crm["success_rate_1h"], 0.5, "2 of 4 attempts delivered: {crm}");
    assert_eq!(crm["queue_depth"], 0);
    assert!(crm["last_success"].as_str().unwrap().ends_with('Z'));
    assert!(crm["last_failure_error"].as_str().unwrap().contains("HTTP 422"), "{crm}");

    let series: Value = app.admin_get("/api/stats/series?since=1h&step=10m").await.json().await.unwrap();
    let buckets = series["routes"]["crm"].as_array().unwrap();
    let total = |k: &str| buckets.iter().map(|b| b[k].as_u64().unwrap()).sum::<u64>();
    assert_eq!((total("delivered"), total("failed"), total("retried")), (2, 1, 1), "{series}");
    let last = buckets.iter().rev().find(|b| b["delivered"].as_u64() > Some(0)).unwrap();
    assert!(last["latency_p95_ms"].as_i64().unwrap() >= last["latency_p50_ms"].as_i64().unwrap());
    assert_eq!(app.admin_get("/api/stats/series?step=1s").await.status(), 400);
}

#[tokio::test]
async fn route_health_and_series_follow_the_attempts_on_sqlite() {
    route_health_and_series_follow_the_attempts(TestConfig::default()).await;
}

#[tokio::test]
async fn route_health_and_series_follow_the_attempts_on_postgres() {
    let Some(schema) = pg_schema("route_health_and_series").await else { return };
    route_health_and_series_follow_the_attempts(TestConfig { store_url: Some(schema.url()), ..TestConfig::default() })
        .await;
    schema.drop().await;
}

#[tokio::test]
async fn an_event_shows_each_attempt_with_the_request_as_sent_and_the_crm_answer() {
    let app = spawn_app_with(TestConfig { schedule: vec!["50ms"], ..TestConfig::default() }).await;
    app.crm.respond_with(&[503]);
    let e = json!({"event": "contact.created", "id": "detail-1", "data": {"contact": {"email": "ida@example.org"}}});
    app.post_event(&e).await;
    wait_until(Duration::from_secs(10), "delivered on the retry", || async {
        events(&app, "status=delivered").await["total"] == 1
    })
    .await;
    let id = events(&app, "id=detail-1").await["items"][0]["id"].as_str().unwrap().to_string();
    let detail: Value = app.admin_get(&format!("/api/events/{id}")).await.json().await.unwrap();
    assert_eq!(detail["data"]["data"]["contact"]["email"], "ida@example.org");
    let log = detail["deliveries"][0]["attempt_log"].as_array().unwrap();
    assert_eq!(log.len(), 2);
    let first = &log[0]["exchanges"][0];
    assert_eq!(first["request"]["method"], "POST");
    assert!(first["request"]["url"].as_str().unwrap().ends_with("/contacts"), "{first}");
    assert_eq!(first["request"]["headers"]["api-key"], "***", "the credential is masked: {first}");
    assert!(first["request"]["body"].as_str().unwrap().contains("ida@example.org"));
    assert_eq!(first["response"]["status"], 503);
    assert_eq!(first["response"]["body"], r#"{"status":503}"#);
    assert_eq!(first["response"]["headers"]["content-type"], "application/json");
    assert_eq!(log[1]["exchanges"][0]["response"]["status"], 200);
    assert_eq!(log[0]["outcome"], "retry");
    assert!(log[0]["started_at"].as_str().unwrap().ends_with('Z') && log[0]["duration_ms"].is_number());
    let stored = app.count("SELECT MAX(length(detail)) FROM attempt_log");
    assert!(stored < 4 * 8 * 1024, "bounded: {stored}");
}
