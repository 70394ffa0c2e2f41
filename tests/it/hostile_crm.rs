//! A CRM (or its token server) cannot break an attempt or hold a route for ever: absurd reset and
//! `Retry-After` values are capped at 6 h and the request is sent once (SQLite and PostgreSQL), a
//! pause is lifted by a manual retry or a reload, and a token answer is read no further than 64 KiB.

use lbx_relay::store::roles::*;
use lbx_relay::store::DeliveryFilter;

use crate::helpers::*;

/// (pending, delivered, failed) deliveries, read through the store (either backend).
async fn statuses(r: &DrivenRelay) -> (usize, usize, usize) {
    let rows = r.relay.store.list_deliveries(DeliveryFilter { limit: 100, ..DeliveryFilter::default() }).await.unwrap();
    let n = |s: &str| rows.iter().filter(|d| d.status == s).count();
    (n("pending"), n("delivered"), n("failed"))
}

const SIX_HOURS_MS: i64 = 6 * 3600 * 1000;

async fn a_200_with_an_absurd_reset_header_is_delivered_once(store_url: Option<String>) {
    let r = driven_relay(TestConfig { schedule: vec!["1m"], store_url, ..TestConfig::default() }).await;
    r.crm.answer_header("X-RateLimit-Reset", "1e20");
    r.crm.answer_header("X-RateLimit-Remaining", "0");
    r.accept(&sample_events()[0]).await;
    assert_eq!(r.round().await, 1);
    assert_eq!(statuses(&r).await, (0, 1, 0), "delivered, not left pending by a panic");
    // Long past any lease: nothing is sent again.
    r.advance_ms(SIX_HOURS_MS + 60_000);
    assert_eq!(r.round().await, 0);
    assert_eq!(r.crm.count(), 1, "the CRM got the request once");
    let detail = r.relay.store.event_detail(&first_event_id(&r).await).await.unwrap().unwrap();
    assert_eq!(detail.attempts.len(), 1, "one attempt recorded");
    assert_eq!(detail.attempts[0].status, Some(200));
}

async fn first_event_id(r: &DrivenRelay) -> String {
    let rows = r.relay.store.list_deliveries(DeliveryFilter { limit: 1, ..DeliveryFilter::default() }).await.unwrap();
    rows[0].event_id.clone()
}

async fn a_429_asking_for_a_year_pauses_the_route_six_hours(store_url: Option<String>) {
    let r = driven_relay(TestConfig { schedule: vec!["1m"], store_url, ..TestConfig::default() }).await;
    r.crm.respond_with(&[429]);
    r.crm.retry_after("99999999999999999999999");
    r.accept(&sample_events()[0]).await;
    assert_eq!(r.round().await, 1);
    r.advance_ms(SIX_HOURS_MS - 1);
    assert_eq!(r.round().await, 0, "paused for the capped time");
    r.advance_ms(1);
    assert_eq!(r.round().await, 1, "sent again after 6 h, not after a year");
    assert_eq!(statuses(&r).await, (0, 1, 0));
    assert_eq!(r.crm.count(), 2);
}

#[tokio::test]
async fn a_200_with_an_absurd_reset_header_is_delivered_once_on_sqlite() {
    a_200_with_an_absurd_reset_header_is_delivered_once(None).await;
}

#[tokio::test]
async fn a_200_with_an_absurd_reset_header_is_delivered_once_on_postgres() {
    let Some(schema) = pg_schema("a_200_with_an_absurd_reset_header_is_delivered_once_on_postgres").await else {
        return;
    };
    a_200_with_an_absurd_reset_header_is_delivered_once(Some(schema.url())).await;
    schema.drop().await;
}

#[tokio::test]
async fn a_429_asking_for_a_year_pauses_the_route_six_hours_on_sqlite() {
    a_429_asking_for_a_year_pauses_the_route_six_hours(None).await;
}

#[tokio::test]
async fn a_429_asking_for_a_year_pauses_the_route_six_hours_on_postgres() {
    let Some(schema) = pg_schema("a_429_asking_for_a_year_pauses_the_route_six_hours_on_postgres").await else {
        return;
    };
    a_429_asking_for_a_year_pauses_the_route_six_hours(Some(schema.url())).await;
    schema.drop().await;
}

#[tokio::test]
async fn a_pause_is_lifted_by_a_manual_retry_of_its_route_and_by_a_reload() {
    let app = spawn_app_with(TestConfig { schedule: vec!["1m"], ..TestConfig::default() }).await;
    app.crm.respond_with(&[429, 429]);
    app.crm.retry_after("21600");
    app.post_event(&sample_events()[0]).await;
    let paused = || async {
        let v: serde_json::Value = app.admin_get("/api/routes").await.json().await.unwrap();
        v["routes"][0]["paused_until"].is_string()
    };
    crate::helpers::wait_until(std::time::Duration::from_secs(10), "the route paused", &paused).await;
    // The operator retries its delivery: it goes now, the pause does not hold it.
    let id = app.deliveries("status=pending").await[0]["id"].as_str().unwrap().to_string();
    assert_eq!(app.admin_post(&format!("/api/deliveries/{id}/retry")).await.status(), 200);
    crate::helpers::wait_until(std::time::Duration::from_secs(10), "sent again at once", || async {
        app.crm.count() == 2
    })
    .await;
    // Paused again by the second 429; a reload lifts it.
    crate::helpers::wait_until(std::time::Duration::from_secs(10), "paused again", &paused).await;
    assert_eq!(app.admin_post("/api/reload").await.status(), 200);
    assert!(!paused().await, "a reload lifts the pause");
}

#[tokio::test]
async fn a_token_server_answering_megabytes_is_read_no_further_than_64_kib() {
    use actix_web::HttpResponse;
    async fn huge() -> HttpResponse {
        // A valid token answer, padded past 64 KiB: read whole, it would work; bounded, it cannot.
        let pad = "A".repeat(2 * 1024 * 1024);
        HttpResponse::Ok()
            .content_type("application/json")
            .body(format!(r#"{{"pad":"{pad}","access_token":"tok","expires_in":3600}}"#))
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let token_url = serve_loopback(listener, std::sync::Arc::new(()), huge);
    let r = driven_relay(TestConfig {
        schedule: vec!["1m"],
        route_extra: format!(
            "auth = {{ type = \"oauth2\", token_url = \"{token_url}/token\", client_id = \"id\", client_secret = \"s\" }}"
        ),
        ..TestConfig::default()
    })
    .await;
    r.accept(&sample_events()[0]).await;
    r.round().await;
    assert_eq!(r.crm.count(), 0, "no token was taken from a cut answer");
    let rows = r.relay.store.list_deliveries(DeliveryFilter { limit: 1, ..DeliveryFilter::default() }).await.unwrap();
    assert!(rows[0].last_error.as_deref().unwrap_or_default().contains("oauth"), "{rows:?}");
}
