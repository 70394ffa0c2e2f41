//! New deliveries handed straight from ingest to idle workers: delivered once each whether they
//! were handed over or left for a claim (every worker busy), at most a pool's worth claimed ahead
//! of the workers, and nothing is left leased when the relay stops.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::*;

fn contact_event(n: usize) -> Value {
    json!({"event": "contact.subscribed", "id": format!("handoff-{n}"),
           "data": {"contact": {"email": format!("c{n}@example.org"), "prenom": "Zoë", "nom": "Lefèvre"}}})
}

/// Posts `n` contact events, each acknowledged, to a relay whose CRM answers after `delay`.
async fn post_contacts(app: &TestApp, n: usize, delay: Duration) {
    app.crm.delay(delay);
    for n in 0..n {
        assert_eq!(app.post_event(&contact_event(n)).await.status(), 200);
    }
}

fn ids_received(crm: &FakeCrm) -> Vec<String> {
    crm.received().iter().map(|r| r.json()["id"].as_str().unwrap_or_default().to_string()).collect()
}

#[tokio::test]
async fn every_event_is_delivered_once_whether_it_was_handed_over_or_claimed() {
    let app = spawn_app().await;
    // The CRM is slow, so the 8 workers fill up: later events wait in the store for a claim.
    post_contacts(&app, 60, Duration::from_millis(150)).await;
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
async fn while_every_worker_is_busy_a_pools_worth_is_claimed_ahead_and_no_more() {
    let app = spawn_app().await;
    post_contacts(&app, 20, Duration::from_millis(1500)).await;
    // The 8 workers are at the CRM; the 12 other deliveries were left in the store. The pool
    // claims some of them ahead (leased, waiting for a worker), so the wait for a claim's commit
    // never leaves a worker idle, but never more than a pool's worth: the rest stay claimable by
    // other replicas.
    let leased = "SELECT COUNT(*) FROM deliveries WHERE status = 'pending' AND lease_token IS NOT NULL";
    wait_until(Duration::from_secs(10), "8 at the CRM and more claimed ahead", || async {
        app.crm.max_in_flight() == 8 && app.count(leased) > 8
    })
    .await;
    let mut most = 0;
    wait_until(Duration::from_secs(20), "20 deliveries", || {
        most = most.max(app.count(leased));
        std::future::ready(app.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'") == 20)
    })
    .await;
    assert!(most <= 16, "never more than a pool's worth claimed ahead: {most} leased at once");
    let ids = ids_received(&app.crm);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 20);
    assert_eq!(ids.len(), 20, "none sent twice: {ids:?}");
    assert!(app.crm.max_in_flight() <= 8, "never more than `workers` requests at once");
    app.stop().await;
}

#[tokio::test]
async fn nothing_is_left_leased_after_a_graceful_stop_and_a_restart_sends_the_rest_at_once() {
    let cfg = TestConfig::default();
    let app = spawn_app_with(TestConfig::default()).await;
    post_contacts(&app, 20, Duration::from_millis(1500)).await;
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

/// A delivery passed over (leased at `now`) that then waits for a worker: how a busy relay's
/// ingest hands over deliveries whose place was reserved before its group commit.
async fn leased_delivery(r: &DrivenRelay) -> lbx_relay::store::Claimed {
    use lbx_relay::store::QueueStore;
    r.accept(&contact_event(1)).await;
    let lease = r.relay.delivery.lease();
    let mut claimed = r.relay.store.claim(1, lease, vec![], r.clock.now_ms()).await.unwrap();
    assert_eq!(claimed.len(), 1);
    claimed.remove(0)
}

/// Starts the worker pool of a driven relay; cancel the token and await the task to stop it
/// (in-flight attempts finish first).
fn start_pool(r: &DrivenRelay) -> (tokio_util::sync::CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = tokio_util::sync::CancellationToken::new();
    let pool = tokio::spawn(lbx_relay::delivery::worker::run(r.relay.delivery.clone(), stop.clone()));
    (stop, pool)
}

/// Passes `claimed` to the running pool as ingest does after a commit, once a place is free.
async fn hand_over(r: &DrivenRelay, claimed: lbx_relay::store::Claimed, lease_until: i64) {
    let mut places = Vec::new();
    wait_until(Duration::from_secs(10), "a place in the pool", || {
        places = lbx_relay::delivery::Producer::new(r.relay.delivery.clone()).reserve(1);
        std::future::ready(!places.is_empty())
    })
    .await;
    places.remove(0).send(lbx_relay::delivery::handoff::Handover { claimed, lease_until });
}

#[tokio::test]
async fn a_delivery_that_waited_for_a_worker_has_its_lease_renewed_so_no_second_worker_sends_it() {
    let r = driven_relay(TestConfig::default()).await;
    let claimed = leased_delivery(&r).await;
    let lease_ms = r.relay.delivery.lease().as_millis() as i64;
    let until = r.clock.now_ms() + lease_ms;
    // It waited for a worker for most of its lease.
    r.advance_ms(lease_ms * 9 / 10);
    r.crm.delay(Duration::from_millis(500));
    let (stop, pool) = start_pool(&r);
    hand_over(&r, claimed, until).await;
    wait_until(Duration::from_secs(10), "the attempt at the CRM", || async { r.crm.max_in_flight() == 1 }).await;
    // Past the lease it was handed over with, while its attempt runs: another worker (or
    // replica) looks for due deliveries.
    r.advance_ms(lease_ms / 2);
    assert_eq!(r.round().await, 0, "the renewed lease keeps every other worker off the delivery");
    stop.cancel();
    pool.await.unwrap();
    assert_eq!(r.crm.count(), 1, "sent once");
    assert_eq!(r.count("SELECT COUNT(*) FROM deliveries WHERE status = 'delivered'"), 1);
}

#[tokio::test]
async fn a_delivery_whose_lease_ran_out_while_it_waited_for_a_worker_is_left_to_its_new_holder() {
    use lbx_relay::store::QueueStore;
    let r = driven_relay(TestConfig::default()).await;
    let claimed = leased_delivery(&r).await;
    let lease = r.relay.delivery.lease();
    let until = r.clock.now_ms() + lease.as_millis() as i64;
    r.advance_ms(lease.as_millis() as i64 + 1);
    // Another worker claimed it once the lease had run out.
    let theirs = r.relay.store.claim(1, lease, vec![], r.clock.now_ms()).await.unwrap();
    assert_eq!(theirs.len(), 1);
    let (stop, pool) = start_pool(&r);
    hand_over(&r, claimed, until).await;
    // Taken and given up: every one of the pool's 8 workers (TestConfig) is idle again, and
    // nothing waits in the hand-off queue.
    wait_until(Duration::from_secs(10), "the hand-over dealt with", || {
        std::future::ready(lbx_relay::delivery::Producer::new(r.relay.delivery.clone()).reserve(8).len() == 8)
    })
    .await;
    stop.cancel();
    pool.await.unwrap();
    assert_eq!(r.crm.count(), 0, "not sent under a lease that another worker holds");
    assert_eq!(
        r.count("SELECT COUNT(*) FROM deliveries WHERE status = 'pending' AND lease_token IS NOT NULL"),
        1,
        "still leased to the worker that claimed it"
    );
}
