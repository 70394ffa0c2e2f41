//! A CRM's answer headers cannot break an attempt: absurd reset and `Retry-After` values are
//! capped at 6 h, and the request is sent once, on SQLite and on PostgreSQL.

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
