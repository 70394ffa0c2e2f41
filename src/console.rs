//! The operator console's numbers, computed from the recorded attempts: each route's health
//! (`GET /api/routes`) and delivered / failed / retried counts with latency percentiles per time
//! bucket (`GET /api/stats/series`). The same for SQLite and PostgreSQL.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::event::rfc3339;
use crate::store::{AttemptFact, AttemptOutcome, Store, StoreError};

/// Attempts read for one answer at most (newest first); older ones are left out.
pub const MAX_ATTEMPTS_READ: u32 = 200_000;
const HOUR_MS: i64 = 3_600_000;

#[derive(Debug, Serialize, PartialEq)]
pub struct RouteHealth {
    pub route: String,
    /// Delivered attempts / settled attempts (delivered, retried, failed); `None` without any.
    pub success_rate_1h: Option<f64>,
    pub success_rate_24h: Option<f64>,
    pub attempts_24h: u64,
    pub last_success: Option<String>,
    pub last_failure: Option<String>,
    pub last_failure_error: Option<String>,
    pub queue_depth: i64,
}

/// Every configured route's health at `now` (Unix ms), from the last 7 days of attempts.
pub async fn route_health(store: &Store, routes: &[String], now: i64) -> Result<Vec<RouteHealth>, StoreError> {
    let facts = store.attempt_facts(now - 7 * 24 * HOUR_MS, MAX_ATTEMPTS_READ).await?;
    let pending: BTreeMap<String, i64> = store.pending_per_route().await?.into_iter().collect();
    Ok(routes
        .iter()
        .map(|route| {
            let mine: Vec<&AttemptFact> = facts.iter().filter(|f| &f.route == route).collect();
            let rate = |since: i64| {
                let settled: Vec<&&AttemptFact> =
                    mine.iter().filter(|f| f.started_at >= since && f.outcome.is_settled()).collect();
                let ok = settled.iter().filter(|f| f.outcome == AttemptOutcome::Delivered).count();
                (!settled.is_empty()).then(|| ok as f64 / settled.len() as f64)
            };
            // Facts are newest first.
            let success = mine.iter().find(|f| f.outcome == AttemptOutcome::Delivered);
            let failure = mine.iter().find(|f| f.outcome.is_failure());
            RouteHealth {
                route: route.clone(),
                success_rate_1h: rate(now - HOUR_MS),
                success_rate_24h: rate(now - 24 * HOUR_MS),
                attempts_24h: mine.iter().filter(|f| f.started_at >= now - 24 * HOUR_MS).count() as u64,
                last_success: success.map(|f| rfc3339(f.started_at)),
                last_failure: failure.map(|f| rfc3339(f.started_at)),
                last_failure_error: failure
                    .and_then(|f| f.error.clone().or_else(|| f.status.map(|s| format!("HTTP {s}")))),
                queue_depth: pending.get(route).copied().unwrap_or(0),
            }
        })
        .collect())
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Bucket {
    pub start: String,
    pub delivered: u64,
    pub failed: u64,
    pub retried: u64,
    /// From the event's arrival to its delivery, for the deliveries that ended in this bucket.
    pub latency_p50_ms: Option<i64>,
    pub latency_p95_ms: Option<i64>,
}

/// Per route, one bucket of `step` ms from `since` to `now`.
pub async fn series(
    store: &Store,
    routes: &[String],
    since: i64,
    step: i64,
    now: i64,
) -> Result<BTreeMap<String, Vec<Bucket>>, StoreError> {
    let facts = store.attempt_facts(since, MAX_ATTEMPTS_READ).await?;
    let buckets = ((now - since) / step + 1).clamp(1, 10_000) as usize;
    let mut out = BTreeMap::new();
    for route in routes {
        let mut latencies: Vec<Vec<i64>> = vec![Vec::new(); buckets];
        let mut rows: Vec<Bucket> = (0..buckets)
            .map(|i| Bucket {
                start: rfc3339(since + i as i64 * step),
                delivered: 0,
                failed: 0,
                retried: 0,
                latency_p50_ms: None,
                latency_p95_ms: None,
            })
            .collect();
        for f in facts.iter().filter(|f| &f.route == route) {
            let i = ((f.started_at - since) / step) as usize;
            let Some(b) = rows.get_mut(i) else { continue };
            match f.outcome {
                AttemptOutcome::Delivered => {
                    b.delivered += 1;
                    latencies[i].push((f.started_at + f.duration_ms - f.received_at).max(0));
                }
                AttemptOutcome::Failed => b.failed += 1,
                AttemptOutcome::Retry | AttemptOutcome::Throttled => b.retried += 1,
                AttemptOutcome::LeaseLost | AttemptOutcome::Other => {}
            }
        }
        for (b, mut l) in rows.iter_mut().zip(latencies) {
            l.sort_unstable();
            b.latency_p50_ms = percentile(&l, 50);
            b.latency_p95_ms = percentile(&l, 95);
        }
        out.insert(route.clone(), rows);
    }
    Ok(out)
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: usize) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted.get(rank - 1).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<i64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 95), Some(95));
        assert_eq!(percentile(&[7], 95), Some(7));
        assert_eq!(percentile(&[], 50), None);
    }
}
