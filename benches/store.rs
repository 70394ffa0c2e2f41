//! Criterion benchmark of the SQLite store's share of an event: 64 events ingested at once (one
//! group commit, as 64 connections give), then their 64 deliveries settled as delivered with a
//! typical attempt record — what the writer thread does per event, without HTTP around it.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use lbx_relay::config::{StoreBackend, StoreConfig, SyncMode};
use lbx_relay::store::roles::*;
use lbx_relay::store::{AttemptRecord, Lease, NewDelivery, NewEvent, Next, Settlement, Store};

const BATCH: usize = 64;

fn config(path: std::path::PathBuf, sync: SyncMode) -> StoreConfig {
    StoreConfig {
        backend: StoreBackend::Sqlite { path },
        retention: Duration::from_secs(30 * 86_400),
        pool_size: 4,
        connect_timeout: Duration::from_secs(5),
        statement_timeout: Duration::from_secs(10),
        encryption_key: None,
        previous_encryption_keys: Vec::new(),
        sync,
    }
}

/// An event shaped like the load tool's (~1 KB payload, a contact address, a random key), with one
/// delivery leased at ingest as the hand-off does.
fn event(n: u64, at: i64) -> NewEvent {
    let id = lbx_relay::event::new_id();
    let key = format!("{:032x}", rand::random::<u128>());
    NewEvent {
        origin: None,
        alias: None,
        contacts: None,
        payload: format!(
            r#"{{"event":"contact.subscribed","id":"{key}","data":{{"contact":{{"email":"c{n}@example.test"}}}},"pad":"{}"}}"#,
            "x".repeat(850)
        ),
        email: Some(format!("c{:016x}@example.test", rand::random::<u64>())),
        deliveries: vec![NewDelivery {
            id: lbx_relay::event::new_id(),
            route: "crm".into(),
            order_key: None,
            lease: Some(Lease { token: format!("lease-{id}"), until: at + 60_000 }),
        }],
        id,
        source: "learnybox".into(),
        key,
        kind: "contact.subscribed".into(),
        received_at: at,
        dedup_until: at + 86_400_000,
    }
}

fn settlement(e: &NewEvent, at: i64) -> Settlement {
    let d = &e.deliveries[0];
    Settlement {
        delivery_id: d.id.clone(),
        lease_token: d.lease.as_ref().map(|l| l.token.clone()).unwrap_or_default(),
        attempt: AttemptRecord {
            started_at: at,
            duration_ms: 3,
            status: Some(200),
            error: None,
            detail: Some(format!(
                r#"{{"exchanges":[{{"request":{{"method":"POST","url":"https://api.example.test/v3/contacts","body":"{}"}},"answer":{{"status":200,"body":"{{\"id\":42}}"}}}}]}}"#,
                "y".repeat(300)
            )),
        },
        next: Next::Delivered,
        steps_state: None,
        keyed: false,
        settled_at: at,
    }
}

fn ingest_and_settle(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(BATCH as u64));
    for sync in [SyncMode::Normal, SyncMode::Full] {
        let dir = tempfile::tempdir().unwrap();
        let store = rt.block_on(Store::open(&config(dir.path().join("bench.db"), sync))).unwrap();
        let mut n = 0u64;
        group.bench_function(format!("sqlite sync={sync:?}: ingest then settle, {BATCH} events at once"), |b| {
            b.iter_batched(
                || {
                    let at = 1_800_000_000_000 + n as i64;
                    let events: Vec<NewEvent> = (0..BATCH as u64).map(|i| event(n + i, at)).collect();
                    n += BATCH as u64;
                    events
                },
                |events| {
                    rt.block_on(async {
                        let settles: Vec<Settlement> = events.iter().map(|e| settlement(e, e.received_at)).collect();
                        let ingests = events.into_iter().map(|e| {
                            let s = store.clone();
                            tokio::spawn(async move { s.ingest(e).await.unwrap() })
                        });
                        for t in ingests.collect::<Vec<_>>() {
                            t.await.unwrap();
                        }
                        let settled = settles.into_iter().map(|x| {
                            let s = store.clone();
                            tokio::spawn(async move { assert!(s.settle(x).await.unwrap()) })
                        });
                        for t in settled.collect::<Vec<_>>() {
                            t.await.unwrap();
                        }
                    })
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30).measurement_time(Duration::from_secs(8));
    targets = ingest_and_settle
}
criterion_main!(benches);
