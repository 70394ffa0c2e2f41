//! Upgrading a store written by the previous release (`tests/fixtures/store-v6.db`, schema 6, made
//! by lbx-relay 65e425b as `tests/fixtures/README.md` tells): every event, delivery, attempt and
//! live dedup key is there after the migration, in the new layout.

use std::time::Duration;

use crate::helpers::store_config;
use lbx_relay::config::StoreBackend;
use lbx_relay::store::roles::*;
use lbx_relay::store::{IngestOutcome, NewEvent, Store};

/// When the fixture's events were received (Unix ms); their dedup window is the default 24 h.
const FX_A: i64 = 1_796_574_732_180;

fn open_copy() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.db");
    std::fs::copy(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/store-v6.db"), &path).unwrap();
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
    let (_dir, path) = open_copy();
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

    // The new layout: version 8; the keys written before it stay in dedup_keys (no event row is
    // rewritten by the upgrade), the keys of new events are on their rows; attempts are indexed by
    // when they started.
    let c = rusqlite::Connection::open(&path).unwrap();
    let version: i64 = c.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 8);
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
    let (_dir, path) = open_copy();
    drop(Store::open(&store_config(StoreBackend::Sqlite { path: path.clone() })).await.unwrap());
    let store = Store::open(&store_config(StoreBackend::Sqlite { path: path.clone() })).await.unwrap();
    assert_eq!(store.list_events(None, 10, false).await.unwrap().len(), 2);
    assert_eq!(store.ingest(retry_of("fx-c", FX_A + 60_000)).await.unwrap(), IngestOutcome::Duplicate);
}
