//! Group commit on PostgreSQL: ingests and settlements queued by every task of this process are
//! written by a few batcher tasks, each batch in one transaction of set-based statements.

use std::collections::HashMap;

use deadpool_postgres::Pool;

use super::opt_i32;
use crate::store::{AttemptOutcome, DeliveryStatus, IngestOutcome, NewEvent, Settlement, StoreError};

/// The settle of a batch: each delivery whose lease token still matches gets its attempt's outcome.
/// The attempt that delivers is kept on the delivery's row (`ok_*`, see migration 9).
pub(super) const SETTLE: &str = "UPDATE deliveries d SET status = u.status, next_attempt_at = u.next_at,
        attempts = d.attempts + 1, tries = d.tries + u.used, lease_token = NULL, lease_until = NULL,
        last_status = u.last_status, last_error = u.last_error, updated_at = u.settled_at, steps_state = u.state,
        ok_started_at = u.ok_at, ok_duration_ms = u.ok_ms, ok_detail = u.ok_detail
     FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::int[], $6::text[], $8::int[], $9::text[], $7::bigint[],
                 $10::bigint[], $11::bigint[], $12::text[])
        AS u(id, token, status, next_at, last_status, last_error, used, state, settled_at, ok_at, ok_ms, ok_detail)
     WHERE d.id = u.id AND d.lease_token = u.token
     RETURNING d.id, d.attempts";

/// The ingest of a batch in one statement, one round trip: take the dedup keys (a live key is a
/// duplicate; an expired one, as of the event's arrival, is taken over), then store the events
/// whose key was taken and their deliveries. The sub-statements share one snapshot, as the three
/// statements this replaced did for what they read.
pub(super) const INGEST: &str = "WITH input AS (
        SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[], $6::text[],
            $7::text[], $8::text[], $9::text[], $10::text[], $11::text[])
            AS t(source, event_key, event_id, expires_at, received_at, kind, status, payload, email,
                origin, contacts)),
     claimed AS (
        INSERT INTO dedup_keys (source, event_key, event_id, expires_at)
        SELECT source, event_key, event_id, expires_at FROM input
        ON CONFLICT (source, event_key) DO UPDATE
           SET event_id = excluded.event_id, expires_at = excluded.expires_at
           WHERE dedup_keys.expires_at <= (SELECT i.received_at FROM input i
               WHERE i.source = excluded.source AND i.event_key = excluded.event_key)
        RETURNING event_id),
     stored AS (
        INSERT INTO events (id, source, event_key, kind, status, payload, received_at, email, origin,
            contacts)
        SELECT event_id, source, event_key, kind, status, payload, received_at, email, origin, contacts
        FROM input WHERE event_id IN (SELECT event_id FROM claimed)
        RETURNING id),
     queued AS (
        INSERT INTO deliveries (id, event_id, route, status, next_attempt_at, created_at, updated_at,
            order_key, lease_token, lease_until)
        SELECT id, event_id, route, 'pending',
           GREATEST(at, COALESCE((SELECT h.next_attempt_at FROM deliveries h
               WHERE h.route = d.route AND h.order_key = d.order_key AND h.status = 'pending'
               ORDER BY h.seq LIMIT 1), at)),
           at, at, order_key, lease_token, lease_until
        FROM unnest($12::text[], $13::text[], $14::text[], $15::bigint[], $16::text[], $17::text[],
            $18::bigint[])
           WITH ORDINALITY AS d(id, event_id, route, at, order_key, lease_token, lease_until, n)
        WHERE d.event_id IN (SELECT event_id FROM claimed)
        ORDER BY n
        RETURNING 1)
     SELECT event_id FROM claimed";

/// Group-commit tasks per process: while one commits, the next batch gathers.
pub(super) const BATCHERS: usize = 2;
/// Most ingests and settlements folded into one transaction.
const MAX_BATCH: usize = 512;

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, StoreError>>;

/// An ingest or a settlement waiting for the next group transaction.
pub(super) enum Queued {
    Ingest(NewEvent, Reply<IngestOutcome>),
    Settle(Settlement, Reply<bool>),
}

/// Takes whatever ingests and settlements are queued and writes them in one transaction with a
/// handful of set-based statements; everybody is answered after the commit.
pub(super) async fn batcher(
    pool: Pool,
    rx: std::sync::Arc<tokio::sync::Mutex<tokio::sync::mpsc::UnboundedReceiver<Queued>>>,
    announce: std::sync::Arc<tokio::sync::Notify>,
) {
    loop {
        let mut jobs = Vec::new();
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            jobs.push(first);
            while jobs.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                }
            }
        }
        let mut ingests = Vec::new();
        let mut settles = Vec::new();
        for job in jobs {
            match job {
                Queued::Ingest(ev, reply) => ingests.push((ev, reply)),
                Queued::Settle(s, reply) => settles.push((s, reply)),
            }
        }
        let evs: Vec<&NewEvent> = ingests.iter().map(|(e, _)| e).collect();
        let sts: Vec<&Settlement> = settles.iter().map(|(s, _)| s).collect();
        match write_batch(&pool, &evs, &sts).await {
            Ok((ingested, settled)) => {
                // Deliveries handed to this process's workers (leased) need nobody else: tell the
                // replicas only about those left for a claim.
                let unleased = |e: &NewEvent| e.deliveries.iter().any(|d| d.lease.is_none());
                if ingested.iter().zip(&evs).any(|(o, e)| *o == IngestOutcome::Stored && unleased(e)) {
                    announce.notify_one();
                }
                for ((_, reply), outcome) in ingests.into_iter().zip(ingested) {
                    let _ = reply.send(Ok(outcome));
                }
                for ((_, reply), kept) in settles.into_iter().zip(settled) {
                    let _ = reply.send(Ok(kept));
                }
            }
            Err(e) => {
                tracing::error!(error = %crate::telemetry::Chain(&e), ingests = evs.len(), settles = sts.len(), "postgres: batch not committed");
                for (_, reply) in ingests {
                    let _ = reply.send(Err(e.clone()));
                }
                for (_, reply) in settles {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// One transaction for a batch; returns each ingest's outcome and whether each settlement held
/// its lease, in input order.
async fn write_batch(
    pool: &Pool,
    evs: &[&NewEvent],
    sts: &[&Settlement],
) -> Result<(Vec<IngestOutcome>, Vec<bool>), StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;

    // Ingest. Keys are taken in a fixed order so concurrent batches cannot deadlock, and a key
    // repeated within the batch counts once.
    let mut outcomes = vec![IngestOutcome::Duplicate; evs.len()];
    let mut order: Vec<usize> = (0..evs.len()).collect();
    order.sort_by(|&a, &b| (&evs[a].source, &evs[a].key).cmp(&(&evs[b].source, &evs[b].key)));
    order.dedup_by(|a, b| evs[*a].source == evs[*b].source && evs[*a].key == evs[*b].key);
    // An event whose alias key is live is a duplicate (a webhook for a recovered transaction).
    let aliased: Vec<usize> = order.iter().copied().filter(|&i| evs[i].alias.is_some()).collect();
    if !aliased.is_empty() {
        let sources: Vec<&str> = aliased.iter().map(|&i| evs[i].source.as_str()).collect();
        let aliases: Vec<&str> = aliased.iter().map(|&i| evs[i].alias.as_deref().unwrap_or_default()).collect();
        let received: Vec<i64> = aliased.iter().map(|&i| evs[i].received_at).collect();
        let live: Vec<i64> = tx
            .query(
                &tx.prepare_cached(
                    "SELECT t.n FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY
                        AS t(source, event_key, received_at, n)
                     WHERE EXISTS (SELECT 1 FROM dedup_keys k WHERE k.source = t.source
                        AND k.event_key = t.event_key AND k.expires_at > t.received_at)",
                )
                .await?,
                &[&sources, &aliases, &received],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let duplicates: std::collections::HashSet<usize> =
            live.iter().filter_map(|n| usize::try_from(n - 1).ok()).filter_map(|k| aliased.get(k).copied()).collect();
        order.retain(|i| !duplicates.contains(i));
    }
    if !order.is_empty() {
        // One statement, one round trip (see INGEST).
        let col = |f: fn(&NewEvent) -> &str| order.iter().map(|&i| f(evs[i])).collect::<Vec<&str>>();
        let opt = |f: fn(&NewEvent) -> Option<&str>| order.iter().map(|&i| f(evs[i])).collect::<Vec<Option<&str>>>();
        let expires: Vec<i64> = order.iter().map(|&i| evs[i].dedup_until).collect();
        let received: Vec<i64> = order.iter().map(|&i| evs[i].received_at).collect();
        let statuses: Vec<&str> =
            order.iter().map(|&i| if evs[i].deliveries.is_empty() { "unrouted" } else { "routed" }).collect();
        let (mut d_ids, mut d_events, mut d_routes, mut d_at, mut d_keys) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut d_tokens, mut d_until) = (Vec::new(), Vec::new());
        for &i in &order {
            for d in &evs[i].deliveries {
                d_ids.push(d.id.as_str());
                d_events.push(evs[i].id.as_str());
                d_routes.push(d.route.as_str());
                d_at.push(evs[i].received_at);
                d_keys.push(d.order_key.as_deref());
                d_tokens.push(d.lease.as_ref().map(|l| l.token.as_str()));
                d_until.push(d.lease.as_ref().map(|l| l.until));
            }
        }
        let claimed: std::collections::HashSet<String> = tx
            .query(
                &tx.prepare_cached(INGEST).await?,
                &[
                    &col(|e| &e.source),
                    &col(|e| &e.key),
                    &col(|e| &e.id),
                    &expires,
                    &received,
                    &col(|e| &e.kind),
                    &statuses,
                    &col(|e| &e.payload),
                    &opt(|e| e.email.as_deref()),
                    &opt(|e| e.origin),
                    &opt(|e| e.contacts.as_deref()),
                    &d_ids,
                    &d_events,
                    &d_routes,
                    &d_at,
                    &d_keys,
                    &d_tokens,
                    &d_until,
                ],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        for &i in &order {
            if claimed.contains(&evs[i].id) {
                outcomes[i] = IngestOutcome::Stored;
            }
        }
    }

    // Settle.
    let mut kept = vec![false; sts.len()];
    if !sts.is_empty() {
        let ids: Vec<&str> = sts.iter().map(|s| s.delivery_id.as_str()).collect();
        let tokens: Vec<&str> = sts.iter().map(|s| s.lease_token.as_str()).collect();
        let statuses: Vec<&str> = sts.iter().map(|s| s.next.columns().0.as_str()).collect();
        let next_at: Vec<Option<i64>> = sts.iter().map(|s| s.next.columns().1).collect();
        let steps_used: Vec<i32> = sts.iter().map(|s| s.next.columns().2).collect();
        let states: Vec<Option<&str>> = sts.iter().map(|s| s.steps_state.as_deref()).collect();
        let last_status: Vec<Option<i32>> = sts.iter().map(|s| opt_i32(s.attempt.status)).collect();
        let last_error: Vec<Option<&str>> = sts.iter().map(|s| s.attempt.error.as_deref()).collect();
        let settled_at: Vec<i64> = sts.iter().map(|s| s.settled_at).collect();
        let on_row: Vec<bool> = sts.iter().map(|s| s.kept_on_row()).collect();
        let ok_at: Vec<Option<i64>> =
            sts.iter().zip(&on_row).map(|(s, &r)| r.then_some(s.attempt.started_at)).collect();
        let ok_ms: Vec<Option<i64>> =
            sts.iter().zip(&on_row).map(|(s, &r)| r.then_some(s.attempt.duration_ms)).collect();
        let ok_detail: Vec<Option<&str>> =
            sts.iter().zip(&on_row).map(|(s, &r)| s.attempt.detail.as_deref().filter(|_| r)).collect();
        let updated: HashMap<String, i32> = tx
            .query(
                &tx.prepare_cached(SETTLE).await?,
                &[
                    &ids,
                    &tokens,
                    &statuses,
                    &next_at,
                    &last_status,
                    &last_error,
                    &settled_at,
                    &steps_used,
                    &states,
                    &ok_at,
                    &ok_ms,
                    &ok_detail,
                ],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        // A keyed head that waits for a retry parks the deliveries queued behind it until then, so
        // claims do not scan a blocked backlog (see the SQLite store).
        let waiting: Vec<&str> = sts
            .iter()
            .filter(|s| {
                s.keyed && updated.contains_key(&s.delivery_id) && s.next.columns().0 == DeliveryStatus::Pending
            })
            .map(|s| s.delivery_id.as_str())
            .collect();
        if !waiting.is_empty() {
            tx.execute(
                &tx.prepare_cached(
                    "UPDATE deliveries f SET next_attempt_at = h.next_attempt_at
                 FROM deliveries h
                 WHERE h.id = ANY($1) AND h.order_key IS NOT NULL
                   AND f.route = h.route AND f.order_key = h.order_key AND f.status = 'pending'
                   AND f.seq > h.seq AND f.next_attempt_at < h.next_attempt_at",
                )
                .await?,
                &[&waiting],
            )
            .await?;
        }
        // Every attempt but those now kept on their delivery's row gets a row of its own.
        let own_row: Vec<(&Settlement, Option<i32>)> = sts
            .iter()
            .zip(&on_row)
            .filter_map(|(s, &kept_on_row)| {
                let n = updated.get(&s.delivery_id).copied();
                (!(kept_on_row && n.is_some())).then_some((*s, n))
            })
            .collect();
        let ids: Vec<&str> = own_row.iter().map(|(s, _)| s.delivery_id.as_str()).collect();
        let attempt_no: Vec<i32> = own_row.iter().map(|(_, n)| n.unwrap_or(0)).collect();
        let labels: Vec<&str> = own_row
            .iter()
            .map(|(s, n)| if n.is_some() { s.next.outcome() } else { AttemptOutcome::LeaseLost }.as_str())
            .collect();
        let last_status: Vec<Option<i32>> = own_row.iter().map(|(s, _)| opt_i32(s.attempt.status)).collect();
        let last_error: Vec<Option<&str>> = own_row.iter().map(|(s, _)| s.attempt.error.as_deref()).collect();
        let started: Vec<i64> = own_row.iter().map(|(s, _)| s.attempt.started_at).collect();
        let details: Vec<Option<&str>> = own_row.iter().map(|(s, _)| s.attempt.detail.as_deref()).collect();
        let durations: Vec<i64> = own_row.iter().map(|(s, _)| s.attempt.duration_ms).collect();
        if !own_row.is_empty() {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status, error, outcome, detail)
                     SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::int[], $6::text[],
                                          $7::text[], $8::text[])",
                )
                .await?;
            tx.execute(
                &insert,
                &[&ids, &attempt_no, &started, &durations, &last_status, &last_error, &labels, &details],
            )
            .await?;
        }
        for (k, s) in kept.iter_mut().zip(sts) {
            *k = updated.contains_key(&s.delivery_id);
        }
    }
    tx.commit().await?;
    Ok((outcomes, kept))
}
