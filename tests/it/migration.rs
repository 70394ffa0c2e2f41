//! Upgrading a store written by an earlier release (`tests/fixtures/store-v6.db`, schema 6, made by
//! lbx-relay 65e425b, and `store-v8.db`, schema 8, made by 9159283, as `tests/fixtures/README.md`
//! tells): every event, delivery, attempt and live dedup key is there after the migration, in the
//! new layout.

use std::time::Duration;

use crate::helpers::store_config;
use lbx_relay::config::StoreBackend;
use lbx_relay::store::roles::*;
use lbx_relay::store::{IngestOutcome, NewEvent, Store};

/// When the fixture's events were received (Unix ms); their dedup window is the default 24 h.
const FX_A: i64 = 1_796_574_732_180;

/// When the schema 8 fixture's events were received (Unix ms).
const FX8_A: i64 = 1_796_612_534_659;

fn open_fixture(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    std::fs::copy(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name), &path).unwrap();
    (dir, path)
}

fn retry_of(key: &str, at: i64) -> NewEvent {
    NewEvent {
        id: format!("{key}-again-{at}"),
        source: "learnybox".into(),
        key: key.into(),
        kind: "contact.subscribed".into(),
        payload: "{}".into(),
        received_at: at,
        email: None,
        dedup_until: at + 86_400_000,
        deliveries: Vec::new(),
        origin: None,
        alias: None,
        contacts: None,
    }
}

#[tokio::test]
async fn a_store_of_the_previous_release_keeps_its_events_deliveries_attempts_and_dedup_keys() {
    let (_dir, path) = open_fixture("store-v6.db");
    let store = Store::open(&store_config(StoreBackend::Sqlite { path: path.clone() })).await.unwrap();

    // fx-a (delivered once) and fx-b (its CRM was down: pending, one failed attempt); fx-c was
    // delivered and purged, only its key is left.
    let events = store.list_events(None, 10, false).await.unwrap();
    let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["fx-a", "fx-b"]);
    let a = store.event_detail(&events[0].id).await.unwrap().unwrap();
    assert_eq!(a.deliveries.len(), 1);
    assert_eq!(a.deliveries[0].status, "delivered");
    assert_eq!(a.attempts.len(), 1);
    assert_eq!(a.attempts[0].status, Some(200));
    assert!(a.event.payload.contains("ada@example.test"));
    let b = store.event_detail(&events[1].id).await.unwrap().unwrap();
    assert_eq!((b.deliveries[0].status.as_str(), b.deliveries[0].attempts), ("pending", 1));
    assert_eq!(b.attempts[0].outcome, "retry");
    assert_eq!(store.pending_per_route().await.unwrap(), [("down".to_string(), 1)]);
    // The attempts written before the upgrade are counted through the new start-time index.
    let counted = store.route_attempts(FX_A - 3_600_000, FX_A - 3_600_000, FX_A - 3_600_000).await.unwrap();
    let by_route: Vec<(u64, u64)> = counted.iter().map(|r| (r.settled, r.failed)).collect();
    assert_eq!(by_route.len(), 2, "{counted:?}");
    let failed = counted.iter().find(|r| r.route == "down").map(|r| (r.settled, r.failed));
    assert_eq!(failed, Some((1, 1)), "{counted:?}");
    let due = store.claim(10, Duration::from_secs(60), vec![], FX_A + 2 * 3_600_000).await.unwrap();
    assert_eq!(due.len(), 1, "the pending delivery is claimed at its retry");
    assert_eq!(due[0].event.key, "fx-b");

    // Learnybox retrying any of the three within the window is a duplicate, whatever layout the key
    // now has (on its event's row, or left alone after a purge); a new key is an event.
    for key in ["fx-a", "fx-b", "fx-c"] {
        assert_eq!(store.ingest(retry_of(key, FX_A + 60_000)).await.unwrap(), IngestOutcome::Duplicate, "{key}");
    }
    assert_eq!(store.ingest(retry_of("fx-d", FX_A + 60_000)).await.unwrap(), IngestOutcome::Stored);
    assert_eq!(store.ingest(retry_of("fx-a", FX_A + 86_400_000)).await.unwrap(), IngestOutcome::Stored);
    drop(store);

    // The new layout: version 9; the keys written before it stay in dedup_keys (no event row is
    // rewritten by the upgrade), the keys of new events are on their rows; attempts are indexed by
    // when they started.
    let c = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 10);
    let index: String =
        c.query_row("SELECT sql FROM sqlite_master WHERE name = 'attempts_started'", [], |r| r.get(0)).unwrap();
    assert!(index.contains("attempts(started_at)"), "{index}");
    let keys = |sql: &str| -> Vec<String> {
        c.prepare(sql).unwrap().query_map([], |r| r.get(0)).unwrap().collect::<Result<_, _>>().unwrap()
    };
    assert_eq!(keys("SELECT event_key FROM dedup_keys ORDER BY event_key"), ["fx-a", "fx-b", "fx-c"]);
    let on_rows = keys("SELECT event_key FROM events WHERE dedup_until IS NOT NULL ORDER BY event_key");
    assert_eq!(on_rows, ["fx-a", "fx-d"], "the two events stored after the upgrade");
}

#[tokio::test]
async fn a_store_reopened_after_the_migration_is_not_migrated_twice() {
    let (_dir, path) = open_fixture("store-v6.db");
    drop(Store::open(&store_config(StoreBackend::Sqlite { path: path.clone() })).await.unwrap());
    let store = Store::open(&store_config(StoreBackend::Sqlite { path: path.clone() })).await.unwrap();
    assert_eq!(store.list_events(None, 10, false).await.unwrap().len(), 2);
    assert_eq!(store.ingest(retry_of("fx-c", FX_A + 60_000)).await.unwrap(), IngestOutcome::Duplicate);
}

/// Settles `c` as delivered with an answer of `status`.
async fn deliver(store: &Store, c: lbx_relay::store::Claimed, status: u16, at: i64) -> bool {
    store
        .settle(lbx_relay::store::Settlement {
            keyed: c.keyed,
            steps_state: None,
            delivery_id: c.delivery_id,
            lease_token: c.lease_token,
            attempt: lbx_relay::store::AttemptRecord {
                started_at: at,
                duration_ms: 4,
                status: Some(status),
                error: None,
                detail: Some(format!("answered {status}")),
            },
            next: lbx_relay::store::Next::Delivered,
            settled_at: at + 4,
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_store_of_schema_8_keeps_its_delivered_attempts_and_records_new_ones_on_the_delivery_row() {
    let (_dir, path) = open_fixture("store-v8.db");
    let store = Store::open(&store_config(StoreBackend::Sqlite { path: path.clone() })).await.unwrap();
    let events = store.list_events(None, 10, false).await.unwrap();
    let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
    assert_eq!(keys, ["fx-a", "fx-b"]);
    // fx-a's delivered attempt, written as a row of attempts by schema 8, is shown with its detail.
    let a = store.event_detail(&events[0].id).await.unwrap().unwrap();
    let shown: Vec<(u32, &str, Option<u16>)> =
        a.attempts.iter().map(|x| (x.attempt, x.outcome.as_str(), x.status)).collect();
    assert_eq!(shown, [(1, "delivered", Some(200))]);
    assert!(a.attempts[0].detail.as_deref().is_some_and(|d| d.contains("crm-1")), "{:?}", a.attempts[0].detail);
    let since = FX8_A - 3_600_000;
    let health = store.route_attempts(since, since, since).await.unwrap();
    let per_route: Vec<(&str, u64, u64)> = health.iter().map(|r| (r.route.as_str(), r.settled, r.failed)).collect();
    assert_eq!(per_route.len(), 2, "{per_route:?}");
    assert!(per_route.contains(&("ok", 1, 0)) && per_route.contains(&("down", 1, 1)), "{per_route:?}");

    // The queue's index, rebuilt by the upgrade for the pending deliveries alone, finds fx-b's.
    let pending = store
        .list_deliveries(lbx_relay::store::DeliveryFilter {
            status: Some("pending".into()),
            limit: 10,
            ..lbx_relay::store::DeliveryFilter::default()
        })
        .await
        .unwrap();
    let pending: Vec<&str> = pending.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(pending, [events[1].id.as_str()]);

    // fx-b's CRM is back: its delivering attempt goes on the delivery's row, after its failure.
    let later = FX8_A + 2 * 3_600_000;
    let due = store.claim(10, Duration::from_secs(60), vec![], later).await.unwrap();
    assert_eq!(due.len(), 1);
    assert!(deliver(&store, due.into_iter().next().unwrap(), 201, later).await);
    let b = store.event_detail(&events[1].id).await.unwrap().unwrap();
    let shown: Vec<(u32, &str, Option<u16>)> =
        b.attempts.iter().map(|x| (x.attempt, x.outcome.as_str(), x.status)).collect();
    assert_eq!(shown, [(1, "retry", None), (2, "delivered", Some(201))]);
    // fx-a sent again: its old attempt stays, the new one follows it.
    assert_eq!(store.retry_delivery(&a.deliveries[0].id, later).await.unwrap(), lbx_relay::store::Retried::Yes);
    let again = store.claim(10, Duration::from_secs(60), vec![], later).await.unwrap();
    assert!(deliver(&store, again.into_iter().next().unwrap(), 202, later).await);
    let a = store.event_detail(&events[0].id).await.unwrap().unwrap();
    let shown: Vec<(u32, &str, Option<u16>)> =
        a.attempts.iter().map(|x| (x.attempt, x.outcome.as_str(), x.status)).collect();
    assert_eq!(shown, [(1, "delivered", Some(200)), (2, "delivered", Some(202))]);
    for key in ["fx-a", "fx-b", "fx-c"] {
        assert_eq!(store.ingest(retry_of(key, FX8_A + 60_000)).await.unwrap(), IngestOutcome::Duplicate, "{key}");
    }
    drop(store);

    // The layout: the attempts written by schema 8 are where they were; the two new delivering
    // attempts are on their deliveries' rows, not in attempts.
    let c = rusqlite::Connection::open(&path).unwrap();
    let n = |sql: &str| -> i64 { c.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(n("PRAGMA user_version"), 10);
    assert_eq!(n("SELECT COUNT(*) FROM attempts"), 2, "fx-a's first and fx-b's failure");
    assert_eq!(n("SELECT COUNT(*) FROM deliveries WHERE ok_started_at IS NOT NULL"), 2);
    // Schema 10: the queue's index holds the pending deliveries only (none is left).
    let due: String =
        c.query_row("SELECT sql FROM sqlite_master WHERE name = 'deliveries_due'", [], |r| r.get(0)).unwrap();
    assert!(due.ends_with("WHERE status = 'pending'"), "{due}");
    assert_eq!(n("SELECT COUNT(*) FROM deliveries INDEXED BY deliveries_due WHERE status = 'pending'"), 0);
    assert_eq!(n("SELECT COUNT(*) FROM deliveries"), 2);
}
