//! The store contract, run against both backends: the embedded SQLite file and PostgreSQL
//! (when `LBX_TEST_POSTGRES_URL` is set; each test in its own schema).

use std::collections::HashSet;
use std::time::Duration;

use crate::helpers::now_ms;
use lbx_relay::config::StoreBackend;
use lbx_relay::email::Email;
use lbx_relay::rate_window::Reservation;
use lbx_relay::store::roles::*;
use lbx_relay::store::{
    AttemptRecord, Claimed, DeliveryFilter, Forgotten, IngestOutcome, NewDelivery, NewEvent, NewQuarantined, Next,
    QuarantineLimits, QuarantineOutcome, Retried, RetryFilter, Settlement, Store,
};
use secrecy::SecretString;

use crate::helpers::*;

fn event(id: &str, key: &str, at: i64, routes: &[&str]) -> NewEvent {
    NewEvent {
        origin: None,
        alias: None,
        contacts: None,
        id: id.into(),
        source: "s".into(),
        key: key.into(),
        kind: "contact.created".into(),
        payload: r#"{"a":1}"#.into(),
        received_at: at,
        email: None,
        dedup_until: at + 1000,
        deliveries: routes
            .iter()
            .map(|r| NewDelivery { id: format!("{id}-{r}"), route: r.to_string(), order_key: None, lease: None })
            .collect(),
    }
}

fn keyed(id: &str, route: &str, key: &str) -> NewEvent {
    let mut e = event(id, id, now_ms() - 10, &[]);
    e.deliveries = vec![NewDelivery {
        id: format!("{id}-{route}"),
        route: route.into(),
        order_key: Some(key.into()),
        lease: None,
    }];
    e
}

/// Settles a claimed delivery with one attempt answered `status`.
async fn finish(s: &Store, c: Claimed, status: u16, next: Next) -> bool {
    settle_with(s, c, attempt(status), next).await
}

/// Settles a claimed delivery with `attempt`.
async fn settle_with(s: &Store, c: Claimed, attempt: AttemptRecord, next: Next) -> bool {
    let settlement = Settlement {
        keyed: c.keyed,
        steps_state: None,
        delivery_id: c.delivery_id,
        lease_token: c.lease_token,
        attempt,
        next,
        settled_at: now_ms(),
    };
    s.settle(settlement).await.unwrap()
}

fn attempt(status: u16) -> AttemptRecord {
    AttemptRecord { started_at: now_ms(), duration_ms: 3, status: Some(status), error: None, detail: None }
}

/// Erases `email` as `lbx-relay forget` does in the store: its events, then their deletion.
async fn forget(s: &Store, email: &Email) -> Result<Forgotten, lbx_relay::store::StoreError> {
    let ids = s.contact_events(email).await?.into_iter().map(|e| e.id).collect();
    s.delete_events(ids).await
}

/// Generates one test per backend for each contract function.
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod sqlite_backend {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::tempdir().unwrap();
                    let store = Store::open(&store_config(StoreBackend::Sqlite { path: dir.path().join("c.db") })).await.unwrap();
                    super::$name(store).await;
                }
            )*
        }
        mod postgres_backend {
            use super::*;
            $(
                #[tokio::test]
                async fn $name() {
                    let Some(schema) = pg_schema(stringify!($name)).await else { return };
                    let store = Store::open(&store_config(StoreBackend::Postgres { url: SecretString::from(schema.url()) })).await.unwrap();
                    super::$name(store).await;
                    schema.drop().await;
                }
            )*
        }
    };
}

contract!(
    the_series_counts_outcomes_and_latency_percentiles_per_route_and_bucket,
    route_health_counts_deliveries_per_period_and_attempts_per_window,
    dedup_keys_hold_within_their_window_only,
    a_key_outlives_its_purged_or_erased_event_for_its_whole_window,
    an_alias_is_checked_against_live_keys_only,
    an_expired_lease_returns_the_delivery_and_the_old_holder_cannot_settle,
    concurrent_claimers_never_get_the_same_delivery,
    retries_make_deliveries_due_again,
    the_quarantine_is_bounded,
    purge_keeps_what_is_not_delivered,
    an_event_is_listed_with_its_deliveries_and_attempts,
    only_the_oldest_pending_delivery_of_a_key_is_claimable,
    paced_routes_are_skipped_and_deferrals_cost_no_attempt,
    finished_steps_survive_a_lost_lease,
    a_waiting_head_parks_its_key_until_its_retry,
    forgetting_a_contact_removes_its_events_deliveries_and_attempts,
    erasure_takes_whole_addresses_only,
    event_types_are_counted_with_their_routes_and_newest_payload,
    field_coverage_is_kept_and_replaced_whole,
    the_delivering_attempt_is_shown_and_counted_and_kept_when_sent_again,
);

async fn field_coverage_is_kept_and_replaced_whole(s: Store) {
    use lbx_relay::coverage::Counts;
    assert!(s.load_coverage().await.unwrap().is_empty());
    let c = |present, absent| Counts { present, empty: 1, absent, absent_streak: absent };
    s.save_coverage(vec![("r".into(), "data.a".into(), c(1, 2)), ("r".into(), "data.b".into(), c(3, 0))])
        .await
        .unwrap();
    s.save_coverage(vec![("r".into(), "data.a".into(), c(4, 5))]).await.unwrap();
    let mut rows = s.load_coverage().await.unwrap();
    rows.sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(rows, vec![("r".into(), "data.a".into(), c(4, 5)), ("r".into(), "data.b".into(), c(3, 0))]);
}

async fn event_types_are_counted_with_their_routes_and_newest_payload(s: Store) {
    let mut a = event("a", "k-a", 1_000, &["crm"]);
    a.payload = r#"{"n":1}"#.into();
    let mut b = event("b", "k-b", 2_000, &["crm", "sheet"]);
    b.payload = r#"{"n":2}"#.into();
    let mut c = event("c", "k-c", 1_500, &[]);
    c.kind = "course.completed".into();
    for e in [a, b, c] {
        s.ingest(e).await.unwrap();
    }
    let types = s.event_types().await.unwrap();
    assert_eq!(types.len(), 2, "{types:?}");
    let contact = types.iter().find(|t| t.kind == "contact.created").unwrap();
    assert_eq!((contact.count, contact.first_seen, contact.last_seen), (2, 1_000, 2_000));
    assert_eq!(contact.routes, ["crm", "sheet"]);
    assert_eq!(contact.recent_payload.as_deref(), Some(r#"{"n":2}"#));
    let course = types.iter().find(|t| t.kind == "course.completed").unwrap();
    assert_eq!((course.count, course.routes.len()), (1, 0));
}

async fn forgetting_a_contact_removes_its_events_deliveries_and_attempts(s: Store) {
    let mut indexed = event("indexed", "k1", now_ms(), &["a", "b"]);
    indexed.email = Some("ada@example.org".into());
    let mut in_payload = event("in-payload", "k2", now_ms(), &["a"]);
    in_payload.payload = r#"{"data":{"buyer":{"mail":"Ada@Example.org"}}}"#.into();
    let other = event("other", "k3", now_ms(), &["a"]);
    for e in [indexed, in_payload, other] {
        s.ingest(e).await.unwrap();
    }
    for c in s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap() {
        // One delivered: its attempt is kept on its delivery's row, and counted all the same.
        match c.delivery_id.as_str() {
            "indexed-a" => finish(&s, c, 200, Next::Delivered).await,
            _ => finish(&s, c, 500, Next::RetryAt(now_ms() + 60_000)).await,
        };
    }
    let ada = Email::parse("ADA@example.org").unwrap();
    let found = s.contact_events(&ada).await.unwrap();
    assert_eq!(found.iter().map(|e| e.attempts).sum::<u64>(), 3, "the preview counts every attempt");
    let gone = forget(&s, &ada).await.unwrap();
    assert_eq!(gone, Forgotten { events: 2, deliveries: 3, attempts: 3, quarantined: 0 });
    assert!(s.event_detail("indexed").await.unwrap().is_none());
    assert!(s.event_detail("in-payload").await.unwrap().is_none());
    assert_eq!(s.event_detail("other").await.unwrap().unwrap().deliveries.len(), 1);
    assert_eq!(forget(&s, &ada).await.unwrap(), Forgotten::default(), "nothing twice");
}

async fn erasure_takes_whole_addresses_only(s: Store) {
    let with = |id: &str, email: Option<&str>, payload: &str| {
        let mut e = event(id, id, now_ms(), &["a"]);
        e.email = email.map(str::to_string);
        e.payload = payload.into();
        e
    };
    let contact = |email: &str| format!(r#"{{"data":{{"contact":{{"email":"{email}"}}}}}}"#);
    for e in [
        with("ann", Some("ann@example.org"), &contact("Ann@Example.org")),
        with("ann-elsewhere", None, r#"{"data":{"buyer":{"email":"ANN@EXAMPLE.ORG"}}}"#),
        with("ann-in-text", None, r#"{"note":"write to Ann <ann@example.org>."}"#),
        with("joann", Some("joann@example.org"), &contact("joann@example.org")),
        with("marie-ann", Some("marie-ann@example.org"), &contact("marie-ann@example.org")),
        with("ann-other-domain", Some("ann@example.org.evil.net"), &contact("ann@example.org.evil.net")),
        with("ann-org-ic", None, r#"{"email":"ann@example.organic"}"#),
    ] {
        s.ingest(e).await.unwrap();
    }
    let ann = Email::parse("ann@example.org").unwrap();
    let found: Vec<String> = s.contact_events(&ann).await.unwrap().into_iter().map(|e| e.id).collect();
    let mut sorted = found.clone();
    sorted.sort();
    assert_eq!(sorted, ["ann", "ann-elsewhere", "ann-in-text"]);
    assert!(s.contact_events(&ann).await.unwrap().iter().all(|e| e.deliveries == 1 && e.attempts == 0));
    let gone = forget(&s, &ann).await.unwrap();
    assert_eq!(gone, Forgotten { events: 3, deliveries: 3, attempts: 0, quarantined: 0 });
    for id in ["joann", "marie-ann", "ann-other-domain", "ann-org-ic"] {
        assert!(s.event_detail(id).await.unwrap().is_some(), "{id} was erased with ann@example.org");
    }
    // The neighbours are each found by their own address.
    let joann = Email::parse("JoAnn@example.org").unwrap();
    assert_eq!(s.contact_events(&joann).await.unwrap().len(), 1);
}

async fn dedup_keys_hold_within_their_window_only(s: Store) {
    assert_eq!(s.ingest(event("e1", "k", 0, &["r"])).await.unwrap(), IngestOutcome::Stored);
    assert_eq!(s.ingest(event("e2", "k", 999, &["r"])).await.unwrap(), IngestOutcome::Duplicate);
    assert_eq!(s.ingest(event("e3", "k", 1000, &["r"])).await.unwrap(), IngestOutcome::Stored);
    assert_eq!(s.list_events(None, 10, false).await.unwrap().len(), 2);
}

async fn a_key_outlives_its_purged_or_erased_event_for_its_whole_window(s: Store) {
    let t = now_ms() - 10_000;
    let in_window = |id: &str, key: &str| {
        let mut e = event(id, key, t, &["a"]);
        e.dedup_until = t + 60_000;
        e.email = Some("ada@example.org".into());
        e
    };
    // One event delivered, then purged (older than the retention, inside its dedup window)…
    s.ingest(in_window("purged", "k-purged")).await.unwrap();
    for c in s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap() {
        finish(&s, c, 200, Next::Delivered).await;
    }
    assert_eq!(s.purge(now_ms(), now_ms()).await.unwrap(), 1);
    // …and one whose contact is forgotten.
    s.ingest(in_window("erased", "k-erased")).await.unwrap();
    assert_eq!(forget(&s, &Email::parse("ada@example.org").unwrap()).await.unwrap().events, 1);
    assert!(s.list_events(None, 10, false).await.unwrap().is_empty());
    // Learnybox retries both within the window: still duplicates, the contact does not come back.
    for key in ["k-purged", "k-erased"] {
        let retry = event(&format!("{key}-retry"), key, t + 59_999, &["a"]);
        assert_eq!(s.ingest(retry).await.unwrap(), IngestOutcome::Duplicate, "{key}");
    }
    // A purge inside the window keeps the keys; after it they are new events again.
    s.purge(t, t + 30_000).await.unwrap();
    assert_eq!(s.ingest(event("late", "k-purged", t + 59_999, &[])).await.unwrap(), IngestOutcome::Duplicate);
    assert_eq!(s.ingest(event("new", "k-purged", t + 60_000, &[])).await.unwrap(), IngestOutcome::Stored);
    s.purge(t, t + 60_000).await.unwrap();
    assert_eq!(s.ingest(event("new-2", "k-erased", t + 60_000, &[])).await.unwrap(), IngestOutcome::Stored);
}

async fn route_health_counts_deliveries_per_period_and_attempts_per_window(s: Store) {
    const MIN: i64 = 60_000;
    let now = now_ms();
    // (id, route, received minutes ago, what came of its one attempt; None: not attempted yet).
    let plan: [(&str, &str, i64, Option<Next>); 7] = [
        ("h1", "a", 30, Some(Next::Delivered)),
        ("h2", "a", 30, Some(Next::Failed)),
        ("d1", "a", 5 * 60, Some(Next::Delivered)),
        ("d2", "a", 5 * 60, None),
        ("old", "a", 30 * 60, Some(Next::Delivered)),
        ("b1", "b", 10, Some(Next::RetryAt(i64::MAX / 2))),
        ("edge", "b", 60, Some(Next::Delivered)), // exactly an hour ago: in the hour
    ];
    let mut attempts = std::collections::HashMap::new();
    for (id, route, ago, next) in plan {
        let at = now - ago * MIN;
        s.ingest(event(id, id, at, &[route])).await.unwrap();
        attempts.insert(format!("{id}-{route}"), (at + 100, next));
    }
    for c in s.claim(100, Duration::from_secs(60), vec![], now).await.unwrap() {
        let (started_at, next) = attempts.remove(&c.delivery_id).unwrap();
        let attempt = AttemptRecord { started_at, duration_ms: 5, status: Some(200), error: None, detail: None };
        if let Some(next) = next {
            assert!(settle_with(&s, c, attempt, next).await);
        }
    }
    let (hour, day) = s.delivery_counts(now - 60 * MIN, now - 24 * 60 * MIN).await.unwrap();
    let counts = |v: &lbx_relay::store::triage::PerRoute| -> Vec<(String, [u64; 4])> {
        v.iter().map(|(r, c)| (r.clone(), [c.delivered, c.failed, c.pending, c.retrying])).collect()
    };
    assert_eq!(counts(&hour), [("a".to_string(), [1, 1, 0, 0]), ("b".to_string(), [1, 0, 0, 1])]);
    assert_eq!(counts(&day), [("a".to_string(), [2, 1, 1, 0]), ("b".to_string(), [1, 0, 0, 1])]);
    // Attempts by start time: the 15-minute window an alert reads holds b1's only.
    let window = s.route_attempts(now - 15 * MIN, now - 15 * MIN, now - 15 * MIN).await.unwrap();
    let seen: Vec<(&str, u64, u64)> = window.iter().map(|r| (r.route.as_str(), r.settled, r.failed)).collect();
    assert_eq!(seen, [("b", 1, 1)]);
    let week = s.route_attempts(now - 7 * 24 * 60 * MIN, now - 60 * MIN, now - 24 * 60 * MIN).await.unwrap();
    let a = week.iter().find(|r| r.route == "a").unwrap();
    assert_eq!((a.settled, a.failed, a.settled_1h, a.settled_24h, a.attempts_24h), (4, 1, 2, 3, 3));
    assert_eq!(a.last_success, Some(now - 30 * MIN + 100));
}

async fn the_series_counts_outcomes_and_latency_percentiles_per_route_and_bucket(s: Store) {
    let since = now_ms() - 100_000;
    let step = 10_000;
    let end = since + 5 * step;
    // (route, received_at, attempt started_at, duration, what came of it); the latency of a
    // delivery is started_at + duration - received_at.
    let mut plan: Vec<(&str, i64, i64, i64, Next)> = Vec::new();
    // Route a, bucket 0: twenty deliveries, latencies 10, 20, …, 200 ms, recorded out of order.
    for i in [7, 1, 19, 3, 12, 5, 16, 9, 0, 14, 2, 18, 6, 11, 4, 17, 8, 13, 10, 15] {
        let started = since + 100 + i;
        plan.push(("a", started - 10 * (i + 1) + 3, started, 3, Next::Delivered));
    }
    // Route a, bucket 2: a failure, a retry, a throttle, and a delivery whose event "arrived"
    // after the attempt ended (a clock step): its latency counts as 0.
    let b2 = since + 2 * step;
    plan.push(("a", b2 - 50, b2, 5, Next::Failed));
    plan.push(("a", b2 - 50, b2 + 1, 5, Next::RetryAt(i64::MAX / 2)));
    plan.push(("a", b2 - 50, b2 + 2, 5, Next::ThrottledUntil(i64::MAX / 2)));
    plan.push(("a", b2 + 500, b2 + 3, 5, Next::Delivered));
    // Route b, the last millisecond of bucket 1: latencies 5, 7 and 1000.
    let b1_end = since + 2 * step - 1;
    for latency in [1000, 5, 7] {
        plan.push(("b", b1_end - latency, b1_end, 0, Next::Delivered));
    }
    // Before the window, and after its last bucket: not counted. A route no longer configured
    // ("gone") is left out.
    plan.push(("a", since - 5_000, since - 1, 1, Next::Delivered));
    plan.push(("b", end - 5_000, end, 1, Next::Failed));
    plan.push(("gone", since, since + 10, 1, Next::Delivered));

    let mut attempts = std::collections::HashMap::new();
    for (n, (route, received, started, duration, next)) in plan.into_iter().enumerate() {
        let id = format!("series-{n}");
        s.ingest(event(&id, &id, received, &[route])).await.unwrap();
        attempts.insert(format!("{id}-{route}"), (started, duration, next));
    }
    let claimed = s.claim(100, Duration::from_secs(60), vec![], now_ms()).await.unwrap();
    assert_eq!(claimed.len(), attempts.len());
    for c in claimed {
        let (started_at, duration_ms, next) = attempts[&c.delivery_id];
        let attempt = AttemptRecord { started_at, duration_ms, status: Some(200), error: None, detail: None };
        assert!(settle_with(&s, c, attempt, next).await);
    }

    let routes = vec!["a".to_string(), "b".to_string(), "idle".to_string()];
    let series = lbx_relay::console::series(&s, &routes, since, step, end - 1).await.unwrap();
    /// Delivered, failed, retried, latency p50 and p95 of one bucket.
    type Seen = (u64, u64, u64, Option<i64>, Option<i64>);
    let seen = |route: &str| -> Vec<Seen> {
        series[route].iter().map(|b| (b.delivered, b.failed, b.retried, b.latency_p50_ms, b.latency_p95_ms)).collect()
    };
    let none = (0, 0, 0, None, None);
    // Nearest rank of 20 values: the 10th (100 ms) and the 19th (190 ms); of 3: the 2nd and 3rd.
    assert_eq!(seen("a"), vec![(20, 0, 0, Some(100), Some(190)), none, (1, 1, 2, Some(0), Some(0)), none, none]);
    assert_eq!(seen("b"), vec![none, (3, 0, 0, Some(7), Some(1000)), none, none, none]);
    assert_eq!(seen("idle"), vec![none; 5], "a route without attempts has its empty buckets");
    assert_eq!(series.len(), 3, "only the routes asked for");
    assert_eq!(series["a"][1].start, lbx_relay::event::rfc3339(since + step));
}

async fn an_alias_is_checked_against_live_keys_only(s: Store) {
    s.ingest(event("recovered", "api:T1", 0, &[])).await.unwrap();
    let with_alias = |id: &str, key: &str, alias: &str, at: i64| {
        let mut e = event(id, key, at, &[]);
        e.alias = Some(alias.into());
        e
    };
    assert_eq!(s.ingest(with_alias("hook", "hook-1", "api:T1", 500)).await.unwrap(), IngestOutcome::Duplicate);
    assert_eq!(
        s.ingest(with_alias("hook-near", "hook-2", "api:T", 500)).await.unwrap(),
        IngestOutcome::Stored,
        "a prefix of a key is another key"
    );
    assert_eq!(s.ingest(with_alias("hook-late", "hook-3", "api:T1", 1000)).await.unwrap(), IngestOutcome::Stored);
    // An alias is checked, never claimed: its own key stays free.
    assert_eq!(s.ingest(event("api", "api:T2", 1000, &[])).await.unwrap(), IngestOutcome::Stored);
    assert_eq!(s.ingest(with_alias("x", "hook-4", "api:T2", 1500)).await.unwrap(), IngestOutcome::Duplicate);
    assert_eq!(s.ingest(event("other-source", "api:T2", 1500, &[])).await.unwrap(), IngestOutcome::Duplicate);
    let mut elsewhere = event("elsewhere", "api:T2", 1500, &[]);
    elsewhere.source = "other".into();
    assert_eq!(s.ingest(elsewhere).await.unwrap(), IngestOutcome::Stored, "keys are per source");
}

async fn an_expired_lease_returns_the_delivery_and_the_old_holder_cannot_settle(s: Store) {
    s.ingest(event("e1", "k1", now_ms() - 10, &["r"])).await.unwrap();
    let first = s.claim(10, Duration::from_millis(100), vec![], now_ms()).await.unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].event.payload, r#"{"a":1}"#);
    assert!(
        s.claim(10, Duration::from_millis(100), vec![], now_ms()).await.unwrap().is_empty(),
        "leased: not claimable"
    );
    // 150 ms later (time is passed in, not waited for), the lease has run out.
    let second = s.claim(10, Duration::from_secs(30), vec![], now_ms() + 150).await.unwrap();
    assert_eq!(second.len(), 1, "the expired lease put it back");
    let stale = Settlement {
        keyed: false,
        steps_state: None,
        delivery_id: first[0].delivery_id.clone(),
        lease_token: first[0].lease_token.clone(),
        attempt: attempt(200),
        next: Next::Delivered,
        settled_at: now_ms() + 150,
    };
    assert!(!s.settle(stale).await.unwrap(), "the old holder lost its lease");
    let current = Settlement {
        keyed: false,
        steps_state: None,
        delivery_id: second[0].delivery_id.clone(),
        lease_token: second[0].lease_token.clone(),
        attempt: attempt(503),
        next: Next::RetryAt(now_ms() + 60_000),
        settled_at: now_ms() + 150,
    };
    assert!(s.settle(current).await.unwrap());
    let rows = s.list_deliveries(DeliveryFilter { limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(rows[0].status, "pending");
    assert_eq!(rows[0].attempts, 1);
    assert_eq!(rows[0].last_status, Some(503));
    assert!(s.claim(10, Duration::from_secs(1), vec![], now_ms()).await.unwrap().is_empty(), "not due yet");
    assert!(s.next_due().await.unwrap().unwrap() > now_ms() + 50_000);
}

async fn concurrent_claimers_never_get_the_same_delivery(s: Store) {
    let at = now_ms() - 10;
    for i in 0..200 {
        s.ingest(event(&format!("e{i:03}"), &format!("k{i}"), at, &["a", "b"])).await.unwrap();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let s = s.clone();
        tasks.spawn(async move {
            let mut mine = Vec::new();
            loop {
                let batch = s.claim(7, Duration::from_secs(60), vec![], now_ms()).await.unwrap();
                if batch.is_empty() {
                    break mine;
                }
                mine.extend(batch.into_iter().map(|c| c.delivery_id));
            }
        });
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    while let Some(mine) = tasks.join_next().await {
        for id in mine.unwrap() {
            total += 1;
            assert!(seen.insert(id.clone()), "{id} claimed twice");
        }
    }
    assert_eq!(total, 400);
}

async fn retries_make_deliveries_due_again(s: Store) {
    s.ingest(event("e1", "k1", now_ms() - 10, &["a", "b"])).await.unwrap();
    for c in s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap() {
        let next = Next::Failed;
        finish(&s, c, 422, next).await;
    }
    let failed = DeliveryFilter { status: Some("failed".into()), limit: 10, ..Default::default() };
    assert_eq!(s.list_deliveries(failed.clone()).await.unwrap().len(), 2);
    assert_eq!(s.retry_delivery("e1-a", now_ms()).await.unwrap(), Retried::Yes);
    assert_eq!(s.retry_delivery("nope", now_ms()).await.unwrap(), Retried::Missing);
    assert_eq!(
        s.retry_matching(
            RetryFilter { status: Some("failed".into()), route: Some("b".into()), ..Default::default() },
            false,
            now_ms()
        )
        .await
        .unwrap(),
        1
    );
    assert!(s.list_deliveries(failed).await.unwrap().is_empty());
    let claimed = s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap();
    assert_eq!(claimed.len(), 2);
    assert!(claimed.iter().all(|c| c.tries == 0 && c.attempts == 1), "fresh schedule, history kept");
    assert_eq!(s.gauges().await.unwrap().queue_depth, 2);
    // One held by an attempt is left to it: its settlement would overwrite the retry.
    assert_eq!(s.retry_delivery(&claimed[0].delivery_id, now_ms()).await.unwrap(), Retried::InFlight);
    assert_eq!(
        s.retry_matching(RetryFilter { status: Some("pending".into()), ..Default::default() }, false, now_ms())
            .await
            .unwrap(),
        0,
        "bulk retries skip them too"
    );
}

async fn the_quarantine_is_bounded(s: Store) {
    let item = |n: u8| NewQuarantined {
        source: "s".into(),
        received_at: now_ms(),
        headers: "{}".into(),
        body: vec![n, 0, 255],
        reason: "no key".into(),
    };
    let two = QuarantineLimits { max_items: 2, max_bytes: 1 << 20 };
    assert_eq!(s.quarantine(item(1), two).await.unwrap(), QuarantineOutcome::Stored);
    assert_eq!(s.quarantine(item(2), two).await.unwrap(), QuarantineOutcome::Stored);
    assert_eq!(s.quarantine(item(3), two).await.unwrap(), QuarantineOutcome::Full);
    // Each item is 3 body bytes + 2 header bytes: 10 held, an 11-byte bound takes no third.
    assert_eq!(s.gauges().await.unwrap().quarantined_bytes, 10);
    let bytes = QuarantineLimits { max_items: 100, max_bytes: 11 };
    assert_eq!(s.quarantine(item(3), bytes).await.unwrap(), QuarantineOutcome::Full);
    let listed = s.list_quarantine(None, 10).await.unwrap();
    assert_eq!(listed.len(), 2);
    assert_eq!(listed[0].body, vec![1, 0, 255]);
    s.delete_quarantined(listed[0].id).await.unwrap();
    s.update_quarantine_reason(listed[1].id, "bad mac".into()).await.unwrap();
    let listed = s.list_quarantine(None, 10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].reason, "bad mac");
    assert_eq!(s.gauges().await.unwrap().quarantined, 1);
    assert_eq!(s.gauges().await.unwrap().quarantined_bytes, 5, "deletes give their bytes back");
    assert_eq!(s.quarantine(item(3), bytes).await.unwrap(), QuarantineOutcome::Stored);
}

async fn purge_keeps_what_is_not_delivered(s: Store) {
    let old = now_ms() - 10_000;
    s.ingest(event("done", "k1", old, &["a"])).await.unwrap();
    s.ingest(event("open", "k2", old, &["a"])).await.unwrap();
    s.ingest(event("none", "k3", old, &[])).await.unwrap();
    for c in s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap() {
        let next = if c.event.id == "done" { Next::Delivered } else { Next::RetryAt(now_ms() + 60_000) };
        finish(&s, c, 200, next).await;
    }
    assert_eq!(s.purge(now_ms() - 5_000, now_ms()).await.unwrap(), 2, "the delivered one and the unrouted one");
    let left: Vec<String> = s.list_events(None, 10, false).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(left, vec!["open".to_string()]);
    assert!(s.event_detail("done").await.unwrap().is_none());
}

async fn only_the_oldest_pending_delivery_of_a_key_is_claimable(s: Store) {
    for (id, key) in [("a1", "alice"), ("b1", "bob"), ("a2", "alice"), ("a3", "alice"), ("b2", "bob")] {
        s.ingest(keyed(id, "crm", key)).await.unwrap();
    }
    s.ingest(event("free", "free", now_ms() - 10, &["crm"])).await.unwrap();
    let ids = |v: &[lbx_relay::store::Claimed]| v.iter().map(|c| c.event.id.clone()).collect::<HashSet<_>>();
    let first = s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap();
    assert_eq!(ids(&first), ["a1", "b1", "free"].map(String::from).into(), "one head per key, unkeyed free");
    assert!(
        s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap().is_empty(),
        "heads in flight block their keys"
    );
    // a1 delivered → a2 is next; b1 retried later → bob stays blocked; nothing else moves.
    for c in first {
        let next = match c.event.id.as_str() {
            "b1" => Next::RetryAt(now_ms() + 60_000),
            _ => Next::Delivered,
        };
        finish(&s, c, 200, next).await;
    }
    let second = s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap();
    assert_eq!(ids(&second), ["a2"].map(String::from).into(), "a failing head blocks only its own key");
    // A dead-lettered head no longer blocks: a3 follows once a2 failed for good.
    let c = second.into_iter().next().unwrap();
    finish(&s, c, 422, Next::Failed).await;
    let third = s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap();
    assert_eq!(ids(&third), ["a3"].map(String::from).into());
}

async fn paced_routes_are_skipped_and_deferrals_cost_no_attempt(s: Store) {
    s.ingest(event("e1", "k1", now_ms() - 10, &["slow", "fast"])).await.unwrap();
    let claimed = s.claim(10, Duration::from_secs(60), vec!["slow".into()], now_ms()).await.unwrap();
    assert_eq!(claimed.iter().map(|c| c.route.as_str()).collect::<Vec<_>>(), vec!["fast"]);
    let c = s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap().remove(0);
    assert_eq!(c.route, "slow");
    assert!(s.defer(c.delivery_id.clone(), c.lease_token.clone(), now_ms() - 1).await.unwrap());
    assert!(!s.defer(c.delivery_id.clone(), c.lease_token, now_ms()).await.unwrap(), "the lease is gone");
    let again = s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap().remove(0);
    assert_eq!((again.attempts, again.tries), (0, 0), "a deferral is not an attempt");
    // A throttled attempt is recorded but keeps the schedule position.
    finish(&s, again, 429, Next::ThrottledUntil(now_ms() - 1)).await;
    let third = s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap().remove(0);
    assert_eq!((third.attempts, third.tries), (1, 0));
}

async fn a_waiting_head_parks_its_key_until_its_retry(s: Store) {
    s.ingest(keyed("a1", "crm", "alice")).await.unwrap();
    s.ingest(keyed("a2", "crm", "alice")).await.unwrap();
    let head = s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap().remove(0);
    assert_eq!(head.event.id, "a1");
    assert!(head.keyed, "a claim says the delivery has an ordering key");
    let retry_at = now_ms() + 60_000;
    let head_id = head.delivery_id.clone();
    finish(&s, head, 503, Next::RetryAt(retry_at)).await;
    // Nothing of alice's is due before the head's retry: no claim has a blocked backlog to scan.
    assert_eq!(s.next_due().await.unwrap(), Some(retry_at), "a2 parked behind a1");
    s.ingest(keyed("a3", "crm", "alice")).await.unwrap();
    assert_eq!(s.next_due().await.unwrap(), Some(retry_at), "a3, arriving meanwhile, parked too");
    s.ingest(keyed("b1", "crm", "bob")).await.unwrap();
    let other = s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap();
    assert_eq!(other.iter().map(|c| c.event.id.as_str()).collect::<Vec<_>>(), vec!["b1"]);
    // Replaying the head now releases its key: a1 goes, then a2 once a1 is delivered.
    assert_eq!(s.retry_delivery(&head_id, now_ms()).await.unwrap(), Retried::Yes);
    let again = s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap().remove(0);
    assert_eq!(again.event.id, "a1");
    finish(&s, again, 200, Next::Delivered).await;
    let next = s.claim(10, Duration::from_secs(60), vec![], now_ms()).await.unwrap();
    assert_eq!(next.iter().map(|c| c.event.id.as_str()).collect::<Vec<_>>(), vec!["a2"]);
}

async fn finished_steps_survive_a_lost_lease(s: Store) {
    s.ingest(event("e1", "k1", now_ms() - 10, &["pipedrive"])).await.unwrap();
    let first = s.claim(1, Duration::from_millis(50), vec![], now_ms()).await.unwrap().remove(0);
    assert_eq!(first.steps_state, None);
    let state = r#"{"search":{"status":200,"body":{"data":{"items":[]}}}}"#.to_string();
    assert!(s.save_steps_state(&first.delivery_id, &first.lease_token, state.clone()).await.unwrap());
    // The worker dies; once the lease ends another one resumes with the recorded answers.
    let second = s.claim(1, Duration::from_secs(60), vec![], now_ms() + 80).await.unwrap().remove(0);
    assert_eq!(second.steps_state.as_deref(), Some(state.as_str()));
    assert!(
        !s.save_steps_state(&first.delivery_id, &first.lease_token, "{}".into()).await.unwrap(),
        "the old holder cannot overwrite them"
    );
}

fn with_detail(status: u16, detail: &str) -> AttemptRecord {
    AttemptRecord { detail: Some(detail.into()), ..attempt(status) }
}

/// Each attempt of an event as the console lists it: (delivery, number, outcome, status, detail).
async fn attempts_of(s: &Store, event: &str) -> Vec<(String, u32, String, Option<u16>, Option<String>)> {
    let d = s.event_detail(event).await.unwrap().unwrap();
    let mut out: Vec<_> = d
        .attempts
        .into_iter()
        .map(|a| (a.delivery_id, a.attempt, a.outcome.as_str().into(), a.status, a.detail))
        .collect();
    out.sort_by(|x, y| x.0.cmp(&y.0)); // by delivery (a stable sort); each delivery's own order is the store's
    out
}

/// The attempt that delivers is stored with its delivery (one row update at settle): the console
/// still shows it with its detail, the health and the series still count it, and sending the
/// delivery again (one retry, a bulk retry) keeps it beside the next ones.
async fn the_delivering_attempt_is_shown_and_counted_and_kept_when_sent_again(s: Store) {
    let t0 = now_ms() - 10;
    s.ingest(event("e1", "k1", t0, &["a", "b"])).await.unwrap();
    let lease = Duration::from_secs(60);
    let mut claimed = s.claim(10, lease, vec![], now_ms()).await.unwrap();
    claimed.sort_by(|x, y| x.route.cmp(&y.route));
    let (b, a) = (claimed.pop().unwrap(), claimed.pop().unwrap());
    assert!(settle_with(&s, a, with_detail(500, "a first"), Next::RetryAt(now_ms())).await);
    assert!(settle_with(&s, b, with_detail(201, "b first"), Next::Delivered).await);
    let row = |d: &str, n: u32, outcome: &str, status: u16, detail: &str| {
        (d.to_string(), n, outcome.to_string(), Some(status), Some(detail.to_string()))
    };
    assert_eq!(
        attempts_of(&s, "e1").await,
        [row("e1-a", 1, "retry", 500, "a first"), row("e1-b", 1, "delivered", 201, "b first")]
    );

    let a = s.claim(10, lease, vec![], now_ms()).await.unwrap().remove(0);
    assert!(settle_with(&s, a, with_detail(200, "a second"), Next::Delivered).await);
    let shown = attempts_of(&s, "e1").await;
    assert_eq!(
        shown,
        [
            row("e1-a", 1, "retry", 500, "a first"),
            row("e1-a", 2, "delivered", 200, "a second"),
            row("e1-b", 1, "delivered", 201, "b first")
        ]
    );
    let since = t0 - 60_000;
    let health = s.route_attempts(since, since, since).await.unwrap();
    let counts = |route: &str| {
        let r = health.iter().find(|r| r.route == route).unwrap_or_else(|| panic!("{route}: {health:?}"));
        (r.settled, r.delivered_1h, r.failed, r.attempts_24h, r.last_success.is_some())
    };
    assert_eq!((counts("a"), counts("b")), ((2, 1, 1, 2, true), (1, 1, 0, 1, true)));
    let series = s.attempt_histogram(since, now_ms() + 1, 3_600_000).await.unwrap();
    let delivered: u64 = series.iter().filter(|c| c.outcome.as_str() == "delivered").map(|c| c.count).sum();
    assert_eq!(delivered, 2, "{series:?}");
    assert!(series.iter().filter(|c| c.outcome.as_str() == "delivered").all(|c| c.latency_ms.is_some()));

    // Sent again: the delivered attempt stays listed, and the next one is listed after it.
    assert_eq!(s.retry_delivery("e1-b", now_ms()).await.unwrap(), Retried::Yes);
    assert_eq!(attempts_of(&s, "e1").await[2], row("e1-b", 1, "delivered", 201, "b first"));
    let b = s.claim(10, lease, vec![], now_ms()).await.unwrap().remove(0);
    assert_eq!(b.attempts, 1);
    assert!(settle_with(&s, b, with_detail(202, "b again"), Next::Delivered).await);
    let retried = RetryFilter { status: Some("delivered".into()), route: Some("a".into()), ..Default::default() };
    assert_eq!(s.retry_matching(retried, false, now_ms()).await.unwrap(), 1);
    let a = s.claim(10, lease, vec![], now_ms()).await.unwrap().remove(0);
    assert!(settle_with(&s, a, with_detail(422, "a third"), Next::Failed).await);
    assert_eq!(
        attempts_of(&s, "e1").await,
        [
            row("e1-a", 1, "retry", 500, "a first"),
            row("e1-a", 2, "delivered", 200, "a second"),
            row("e1-a", 3, "failed", 422, "a third"),
            row("e1-b", 1, "delivered", 201, "b first"),
            row("e1-b", 2, "delivered", 202, "b again")
        ]
    );
    let health = s.route_attempts(since, since, since).await.unwrap();
    let b = health.iter().find(|r| r.route == "b").unwrap();
    assert_eq!((b.settled, b.delivered_1h, b.failed), (2, 2, 0));
    let a = health.iter().find(|r| r.route == "a").unwrap();
    assert_eq!((a.settled, a.delivered_1h, a.failed), (3, 1, 2));
    // Erasure counts every attempt it removes, wherever it was kept.
    let forgotten = s.delete_events(vec!["e1".into()]).await.unwrap();
    assert_eq!((forgotten.events, forgotten.deliveries, forgotten.attempts), (1, 2, 5));
}

async fn an_event_is_listed_with_its_deliveries_and_attempts(s: Store) {
    s.ingest(event("e1", "k1", now_ms() - 10, &["a"])).await.unwrap();
    s.ingest(event("e2", "k2", now_ms() - 10, &[])).await.unwrap();
    let c = s.claim(1, Duration::from_secs(60), vec![], now_ms()).await.unwrap().remove(0);
    finish(&s, c, 201, Next::Delivered).await;
    let d = s.event_detail("e1").await.unwrap().unwrap();
    assert_eq!(d.event.status, "routed");
    assert_eq!(d.deliveries[0].status, "delivered");
    assert_eq!(d.attempts.len(), 1);
    assert_eq!(d.attempts[0].status, Some(201));
    assert_eq!(d.attempts[0].outcome, "delivered");
    assert_eq!(s.event_detail("e2").await.unwrap().unwrap().event.status, "unrouted");
    let page = s.list_events(Some("e1".into()), 10, false).await.unwrap();
    assert_eq!(page.len(), 1);
    let newest: Vec<String> = s.list_events(None, 10, true).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(newest, vec!["e2".to_string(), "e1".to_string()]);
    let older: Vec<String> =
        s.list_events(Some("e2".into()), 10, true).await.unwrap().into_iter().map(|e| e.id).collect();
    assert_eq!(older, vec!["e1".to_string()]);
    let last = s.last_event_per_source(vec!["s".into(), "other".into()]).await.unwrap();
    assert_eq!(last.len(), 1);
    assert_eq!(last[0].0, "s");
    s.ping(0, now_ms()).await.unwrap();
}

/// Two PostgreSQL store handles stand for two replicas: the rate window they reserve from is one.
/// (A SQLite store has no shared windows: its one process keeps them.)
#[tokio::test]
async fn replicas_share_one_rate_window_on_postgres() {
    let Some(schema) = pg_schema("replicas_share_one_rate_window_on_postgres").await else { return };
    let cfg = store_config(StoreBackend::Postgres { url: SecretString::from(schema.url()) });
    let (a, b) = (Store::open(&cfg).await.unwrap(), Store::open(&cfg).await.unwrap());
    let (a, b) = (a.shared_rate_windows().unwrap(), b.shared_rate_windows().unwrap());
    let rate = lbx_relay::config::RateLimit { count: 3, window: Duration::from_secs(1) };
    let now = 1_000_000;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..10 {
        let s = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.spawn(async move { s.reserve("hubspot", rate, now, 1000).await.unwrap() });
    }
    let mut slots = Vec::new();
    let mut refused = 0;
    while let Some(r) = tasks.join_next().await {
        match r.unwrap() {
            Reservation::At(at) => slots.push(at),
            Reservation::Full(free_at) => {
                assert_eq!(free_at, now + 2000);
                refused += 1;
            }
        }
    }
    slots.sort();
    assert_eq!(slots, vec![now, now, now, now + 1000, now + 1000, now + 1000], "3 per second between both");
    assert_eq!(refused, 4);
    // Another route has its own window.
    assert_eq!(b.reserve("slack", rate, now, 1000).await.unwrap(), Reservation::At(now));
    schema.drop().await;
}

/// A certificate authority and a server certificate for `localhost` signed by it.
fn test_pki() -> (String, rustls::ServerConfig) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap().signed_by(&key, &ca, &ca_key).unwrap();
    let server =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
    (ca.pem(), server)
}

/// A PostgreSQL front that, like a managed database, speaks only TLS: it answers the client's
/// SSLRequest, terminates TLS and forwards to the test server; plaintext clients are cut off.
/// Returns its port and how many TLS sessions it carried.
async fn tls_only_postgres(
    server: rustls::ServerConfig,
    upstream: String,
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sessions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let counted = sessions.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (acceptor, counted, upstream) = (acceptor.clone(), counted.clone(), upstream.clone());
            tokio::spawn(async move {
                let mut head = [0u8; 8];
                if sock.read_exact(&mut head).await.is_err() || head != [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
                    return; // not an SSLRequest: refused
                }
                sock.write_all(b"S").await.unwrap();
                let Ok(mut tls) = acceptor.accept(sock).await else { return };
                counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut pg = tokio::net::TcpStream::connect(upstream).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut pg).await;
            });
        }
    });
    (port, sessions)
}

#[tokio::test]
async fn postgres_over_tls_verifies_the_server_with_verify_full_and_encrypts_with_require() {
    let Some(schema) = pg_schema("postgres_over_tls").await else { return };
    let base = reqwest::Url::parse(&schema.url()).unwrap();
    let upstream = format!("{}:{}", base.host_str().unwrap(), base.port().unwrap_or(5432));
    let (ca_pem, server) = test_pki();
    let (port, sessions) = tls_only_postgres(server, upstream).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let (other_ca, _) = test_pki();
    let other_file = dir.path().join("other.pem");
    std::fs::write(&other_file, other_ca).unwrap();
    let url = |params: &str| {
        let mut u = base.clone();
        u.set_host(Some("localhost")).unwrap();
        u.set_port(Some(port)).unwrap();
        format!("{u}&{params}")
    };
    let open = |u: String| async move {
        Store::open(&store_config(StoreBackend::Postgres { url: SecretString::from(u) })).await
    };

    let store = open(url(&format!("sslmode=verify-full&sslrootcert={}", ca_file.display()))).await.unwrap();
    store.ingest(event("over-tls", "k1", now_ms(), &["a"])).await.unwrap();
    assert_eq!(schema.count("SELECT COUNT(*) FROM events").await, 1);
    assert!(sessions.load(std::sync::atomic::Ordering::SeqCst) >= 1, "the connections went through TLS");

    let wrong = open(url(&format!("sslmode=verify-full&sslrootcert={}", other_file.display()))).await;
    let err = wrong.expect_err("a server certificate from another CA is refused");
    // The driver's error is kept as the source: the chain says why the handshake failed.
    let err = lbx_relay::telemetry::Chain(&err).to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    let encrypted_only = open(url("sslmode=require")).await.unwrap();
    encrypted_only.ping(0, now_ms()).await.unwrap();

    assert!(open(url("sslmode=disable")).await.is_err(), "plaintext is refused by a TLS-only server");
    assert!(open(url("sslmode=sometimes")).await.unwrap_err().to_string().contains("unknown sslmode"));
    schema.drop().await;
}

/// What an operator with database access sees, and what the relay reads back, with a key set.
async fn encrypted_values_are_unreadable_in_the_database_and_read_back_after_a_rotation(
    backend: impl Fn() -> StoreBackend,
    raw: impl AsyncFn(&str) -> String,
) {
    let key_a = "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFBQUE=";
    let key_b = "QkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkI=";
    let with = |current: &str, previous: &[&str]| {
        let mut cfg = store_config(backend());
        cfg.encryption_key = Some(SecretString::from(current.to_string()));
        cfg.previous_encryption_keys = previous.iter().map(|k| SecretString::from(k.to_string())).collect();
        cfg
    };
    let a = Store::open(&with(key_a, &[])).await.unwrap();
    let mut e = event("sealed", "k1", now_ms(), &["r"]);
    e.payload = r#"{"contact":{"email":"grace.hopper@example.org"}}"#.into();
    e.email = Some("grace.hopper@example.org".into());
    a.ingest(e).await.unwrap();
    a.quarantine(
        NewQuarantined {
            source: "s".into(),
            received_at: now_ms(),
            headers: r#"{"x-note":"grace.hopper@example.org"}"#.into(),
            body: b"grace.hopper@example.org in clear".to_vec(),
            reason: "no key".into(),
        },
        QuarantineLimits { max_items: 10, max_bytes: 1 << 20 },
    )
    .await
    .unwrap();
    a.save_oauth_refresh_token("app", "refresh-token-value", now_ms()).await.unwrap();
    let c = a.claim(1, Duration::from_secs(60), vec![], now_ms()).await.unwrap().remove(0);
    assert!(c.event.payload.contains("grace.hopper@example.org"), "the relay reads it back");
    let mut attempt = attempt(500);
    attempt.error = Some("HTTP 500: grace.hopper@example.org exists".into());
    let settled = a
        .settle(Settlement {
            keyed: c.keyed,
            steps_state: Some(r#"{"search":{"body":{"email":"grace.hopper@example.org"}}}"#.into()),
            delivery_id: c.delivery_id.clone(),
            lease_token: c.lease_token.clone(),
            attempt,
            next: Next::RetryAt(now_ms() + 60_000),
            settled_at: now_ms(),
        })
        .await
        .unwrap();
    assert!(settled);
    // Delivered at its retry: the answer's detail, which names the contact, is kept on the
    // delivery's row, sealed like any attempt's.
    let c = a.claim(1, Duration::from_secs(60), vec![], now_ms() + 61_000).await.unwrap().remove(0);
    let delivered = with_detail(201, r#"[{"response":{"body":"created grace.hopper@example.org"}}]"#);
    assert!(settle_with(&a, c, delivered, Next::Delivered).await);

    let dump = raw("grace.hopper").await;
    assert_eq!(dump, "", "no stored column holds the address in clear");
    let dump = raw("refresh-token-value").await;
    assert_eq!(dump, "", "nor the refresh token");

    // Rotated to B with A kept for reading: everything opens; without A, a clear error.
    let b = Store::open(&with(key_b, &[key_a])).await.unwrap();
    let detail = b.event_detail("sealed").await.unwrap().unwrap();
    assert!(detail.event.payload.contains("grace.hopper"));
    assert_eq!(detail.attempts[0].error.as_deref(), Some("HTTP 500: grace.hopper@example.org exists"));
    assert_eq!(detail.attempts[1].status, Some(201));
    assert!(detail.attempts[1].detail.as_deref().is_some_and(|d| d.contains("created grace.hopper")));
    assert_eq!(b.oauth_refresh_token("app").await.unwrap().as_deref(), Some("refresh-token-value"));
    assert_eq!(b.list_quarantine(None, 10).await.unwrap()[0].body, b"grace.hopper@example.org in clear");
    // Without A: the row is listed as unreadable (never a failed answer), and the key check says why.
    let only_b = Store::open(&with(key_b, &[])).await.unwrap();
    let unreadable = only_b.event_detail("sealed").await.unwrap().unwrap();
    assert!(unreadable.event.payload.contains("lbx_unreadable"), "{}", unreadable.event.payload);
    assert!(unreadable.event.payload.contains("previous_encryption_keys"), "{}", unreadable.event.payload);
    let problems = only_b.key_check().await.unwrap().join("\n");
    assert!(problems.contains("events.payload") && problems.contains("previous_encryption_keys"), "{problems}");
    assert!(b.key_check().await.unwrap().is_empty(), "with A kept, every sealed value opens");
    // Erasure finds the contact through the keyed index, under the old key too.
    let grace = Email::parse("Grace.Hopper@example.org").unwrap();
    assert_eq!(forget(&b, &grace).await.unwrap().events, 1);
}

#[tokio::test]
async fn encryption_at_rest_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("enc.db");
    let p = path.clone();
    encrypted_values_are_unreadable_in_the_database_and_read_back_after_a_rotation(
        || StoreBackend::Sqlite { path: p.clone() },
        async |needle: &str| {
            let conn = rusqlite::Connection::open(&path).unwrap();
            let mut found = Vec::new();
            for (table, cols) in [
                ("events", "payload || coalesce(email, '')"),
                ("deliveries", "coalesce(last_error, '') || coalesce(steps_state, '') || coalesce(ok_detail, '')"),
                ("attempts", "coalesce(error, '') || coalesce(detail, '')"),
                ("quarantine", "CAST(body AS TEXT) || headers"),
                ("oauth_tokens", "refresh_token"),
            ] {
                let n: i64 = conn
                    .query_row(&format!("SELECT COUNT(*) FROM {table} WHERE instr({cols}, ?1) > 0"), [needle], |r| {
                        r.get(0)
                    })
                    .unwrap();
                if n > 0 {
                    found.push(table);
                }
            }
            found.join(",")
        },
    )
    .await;
}

#[tokio::test]
async fn encryption_at_rest_on_postgres() {
    let Some(schema) = pg_schema("encryption_at_rest_on_postgres").await else { return };
    let url = schema.url();
    let schema_ref = &schema;
    encrypted_values_are_unreadable_in_the_database_and_read_back_after_a_rotation(
        || StoreBackend::Postgres { url: SecretString::from(url.clone()) },
        async move |needle: &str| {
            let mut found = Vec::new();
            for (table, cols) in [
                ("events", "payload || coalesce(email, '')"),
                ("deliveries", "coalesce(last_error, '') || coalesce(steps_state, '') || coalesce(ok_detail, '')"),
                ("attempts", "coalesce(error, '') || coalesce(detail, '')"),
                ("quarantine", "convert_from(body, 'UTF8') || headers"),
                ("oauth_tokens", "refresh_token"),
            ] {
                let sql = format!("SELECT COUNT(*) FROM {}.{table} WHERE strpos({cols}, $1) > 0", schema_ref.name);
                let n: i64 = schema_ref.client.query_one(&sql, &[&needle]).await.unwrap().get(0);
                if n > 0 {
                    found.push(table);
                }
            }
            found.join(",")
        },
    )
    .await;
    schema.drop().await;
}

#[tokio::test]
async fn a_store_error_keeps_the_underlying_error_as_its_source() {
    // The database path sits under a plain file: its directory cannot be created.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, "x").unwrap();
    let err = Store::open(&store_config(StoreBackend::Sqlite { path: file.join("relay.db") })).await.unwrap_err();
    assert_eq!(err.to_string(), format!("cannot create {}", file.display()), "its own message, once");
    let cause = std::error::Error::source(&err).expect("the I/O error is kept as the source");
    assert!(cause.to_string().contains("os error"), "the file system's own error: {cause}");
    assert_eq!(
        lbx_relay::telemetry::Chain(&err).to_string(),
        format!("cannot create {}: {cause}", file.display()),
        "the chain shows each cause once"
    );
}
