//! The operator console's numbers, computed from the recorded attempts: each route's health
//! (`GET /api/routes`) and delivered / failed / retried counts with latency percentiles per time
//! bucket (`GET /api/stats/series`). The same for SQLite and PostgreSQL.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::event::rfc3339;
use crate::store::ConsoleStore;
use crate::store::{AttemptOutcome, Store, StoreError};

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

/// Every configured route's health at `now` (Unix ms), from the last 7 days of attempts, counted
/// by the database (no attempt list is read).
pub async fn route_health(store: &Store, routes: &[String], now: i64) -> Result<Vec<RouteHealth>, StoreError> {
    let since = now - 7 * 24 * HOUR_MS;
    let counts: BTreeMap<String, crate::store::triage::RouteAttempts> = store
        .route_attempts(since, now - HOUR_MS, now - 24 * HOUR_MS)
        .await?
        .into_iter()
        .map(|r| (r.route.clone(), r))
        .collect();
    let pending: BTreeMap<String, i64> = store.pending_per_route().await?.into_iter().collect();
    let mut out = Vec::with_capacity(routes.len());
    for route in routes {
        let c = counts.get(route).cloned().unwrap_or_default();
        let rate = |ok: u64, settled: u64| (settled > 0).then(|| ok as f64 / settled as f64);
        let last_failure_error = match c.last_failure {
            Some(_) => store.last_failure_error(route, since).await?,
            None => None,
        };
        out.push(RouteHealth {
            route: route.clone(),
            success_rate_1h: rate(c.delivered_1h, c.settled_1h),
            success_rate_24h: rate(c.delivered_24h, c.settled_24h),
            attempts_24h: c.attempts_24h,
            last_success: c.last_success.map(rfc3339),
            last_failure: c.last_failure.map(rfc3339),
            last_failure_error,
            queue_depth: pending.get(route).copied().unwrap_or(0),
        });
    }
    Ok(out)
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

/// Per route, one bucket of `step` ms from `since` to `now`, from every attempt of the window
/// (counted by the database, see `Store::attempt_histogram`).
pub async fn series(
    store: &Store,
    routes: &[String],
    since: i64,
    step: i64,
    now: i64,
) -> Result<BTreeMap<String, Vec<Bucket>>, StoreError> {
    let step = step.max(1);
    let buckets = ((now - since) / step + 1).clamp(1, 10_000) as usize;
    let until = since.saturating_add(step.saturating_mul(buckets as i64));
    // Per route and bucket: (latency, how many delivered attempts took it).
    let mut latencies: BTreeMap<(&str, usize), Vec<(i64, u64)>> = BTreeMap::new();
    let mut out: BTreeMap<String, Vec<Bucket>> = routes
        .iter()
        .map(|route| {
            let rows = (0..buckets)
                .map(|i| Bucket {
                    start: rfc3339(since + i as i64 * step),
                    delivered: 0,
                    failed: 0,
                    retried: 0,
                    latency_p50_ms: None,
                    latency_p95_ms: None,
                })
                .collect();
            (route.clone(), rows)
        })
        .collect();
    let counts = store.attempt_histogram(since, until, step).await?;
    for c in &counts {
        let Some(rows) = out.get_mut(&c.route) else { continue }; // a route no longer configured
        let Some(b) = usize::try_from(c.bucket).ok().and_then(|i| rows.get_mut(i)) else { continue };
        match c.outcome {
            AttemptOutcome::Delivered => {
                b.delivered += c.count;
                let at = (c.route.as_str(), c.bucket as usize);
                latencies.entry(at).or_default().push((c.latency_ms.unwrap_or(0), c.count));
            }
            AttemptOutcome::Failed => b.failed += c.count,
            AttemptOutcome::Retry | AttemptOutcome::Throttled => b.retried += c.count,
            AttemptOutcome::LeaseLost | AttemptOutcome::Other => {}
        }
    }
    for ((route, i), mut l) in latencies {
        l.sort_unstable();
        if let Some(b) = out.get_mut(route).and_then(|rows| rows.get_mut(i)) {
            b.latency_p50_ms = percentile(&l, 50);
            b.latency_p95_ms = percentile(&l, 95);
        }
    }
    Ok(out)
}

/// The nearest-rank percentile of sorted values, each given with how many times it occurs.
fn percentile(sorted: &[(i64, u64)], p: u64) -> Option<i64> {
    let total: u64 = sorted.iter().map(|(_, n)| n).sum();
    if total == 0 {
        return None;
    }
    let rank = (p * total).div_ceil(100).max(1);
    let mut seen = 0;
    sorted
        .iter()
        .find(|(_, n)| {
            seen += n;
            seen >= rank
        })
        .map(|(v, _)| *v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<(i64, u64)> = (1..=100).map(|v| (v, 1)).collect();
        assert_eq!(percentile(&v, 50), Some(50));
        assert_eq!(percentile(&v, 95), Some(95));
        assert_eq!(percentile(&[(7, 1)], 95), Some(7));
        assert_eq!(percentile(&[], 50), None);
        assert_eq!(percentile(&[(3, 0)], 50), None, "no value at all");
        // 19 values of 10 then one of 900: the 95th of 20 is the 19th.
        assert_eq!(percentile(&[(10, 19), (900, 1)], 95), Some(10));
        assert_eq!(percentile(&[(10, 18), (900, 2)], 95), Some(900));
    }

    proptest::proptest! {
        /// Counted values give the percentile of the same values listed one by one.
        #[test]
        fn counted_values_give_the_percentile_of_the_values_listed(
            mut counted in proptest::collection::vec((0i64..5_000, 1u64..50), 1..40),
            p in 1u64..=100,
        ) {
            counted.sort_unstable();
            let mut listed: Vec<i64> =
                counted.iter().flat_map(|&(v, n)| std::iter::repeat_n(v, n as usize)).collect();
            listed.sort_unstable();
            let rank = (p as usize * listed.len()).div_ceil(100).max(1);
            proptest::prop_assert_eq!(percentile(&counted, p), Some(listed[rank - 1]));
        }
    }
}

/// An event type as it arrives, for `GET /api/types` and `lbx-relay types`.
#[derive(Debug, Serialize)]
pub struct TypeReport {
    pub source: String,
    pub event: String,
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
    /// The routes its deliveries went to (empty: it matched none and was stored `unrouted`).
    pub routes_matched: Vec<String>,
    /// The routes whose `events` match it in the configuration in force now.
    pub routes_now: Vec<String>,
    /// Its newest payload with personal values masked (e-mails, names, phones, addresses).
    pub recent_payload: Option<serde_json::Value>,
}

/// Every event type stored, per source, with the routes it met and one recent payload masked.
pub async fn types(store: &Store, config: &crate::config::Config) -> Result<Vec<TypeReport>, StoreError> {
    Ok(store
        .event_types()
        .await?
        .into_iter()
        .map(|t| {
            let routes_now = config
                .routes
                .iter()
                .filter(|r| crate::routing::matches_any(&r.events, &t.kind))
                .map(|r| r.name.clone())
                .collect();
            let recent_payload = t.recent_payload.as_deref().map(|p| {
                let mut v = serde_json::from_str(p).unwrap_or(serde_json::Value::Null);
                mask_personal(&mut v, "");
                v
            });
            TypeReport {
                source: t.source,
                event: t.kind,
                count: t.count,
                first_seen: rfc3339(t.first_seen),
                last_seen: rfc3339(t.last_seen),
                routes_matched: t.routes,
                routes_now,
                recent_payload,
            }
        })
        .collect())
}

/// Keys whose values are personal wherever they are.
const PERSONAL_KEYS: &[&str] = &[
    "email",
    "mail",
    "e-mail",
    "e_mail",
    "prenom",
    "firstname",
    "first_name",
    "fname",
    "nom",
    "lastname",
    "last_name",
    "lname",
    "surname",
    "fullname",
    "full_name",
    "telephone",
    "phone",
    "tel",
    "mobile",
    "portable",
    "address",
    "adresse",
    "street",
    "rue",
    "city",
    "ville",
    "zip",
    "postal_code",
    "code_postal",
    "birthday",
    "birthdate",
    "date_naissance",
    "ip",
    "ip_address",
];
/// Objects whose `name` is a person's name (a product's `name` is not masked).
const PERSON_OBJECTS: &[&str] = &["contact", "user", "customer", "buyer", "client", "member", "student", "person"];

/// Masks personal values in place: strings under [`PERSONAL_KEYS`] (and `name` in a person-like
/// object) keep their first character (`C***`; e-mails `ca***@example.fr`), and any other string
/// that holds an e-mail address has it masked too.
pub fn mask_personal(value: &mut serde_json::Value, parent: &str) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            for (key, v) in map.iter_mut() {
                let k = key.to_ascii_lowercase();
                let personal = PERSONAL_KEYS.contains(&k.as_str())
                    || (k == "name" && PERSON_OBJECTS.iter().any(|p| parent.to_ascii_lowercase().contains(p)));
                match v {
                    Value::String(s) if personal => *s = mask_text(s),
                    Value::Number(_) if personal => *v = Value::String("***".into()),
                    _ => mask_personal(v, key),
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| mask_personal(v, parent)),
        // Any word holding an '@' (an address in free text too).
        Value::String(s) if s.contains('@') => *s = crate::telemetry::mask_emails_in(s),
        _ => {}
    }
}

fn mask_text(s: &str) -> String {
    if s.contains('@') {
        return crate::telemetry::mask_email(s);
    }
    match s.chars().next() {
        Some(c) => format!("{c}***"),
        None => String::new(),
    }
}

#[cfg(test)]
mod type_tests {
    use super::*;

    #[test]
    fn personal_values_are_masked_and_the_shape_is_kept() {
        let mut v = serde_json::json!({"event": "course.completed", "data": {
            "contact": {"email": "Camille.Durand@example.fr", "prenom": "Camille", "name": "Camille Durand",
                        "telephone": "+33 6 12 34 56 78", "id": 1000},
            "course": {"name": "Vendre en ligne", "id": 7},
            "note": "write to zoe@example.com", "cc": "jj@example.org"}});
        mask_personal(&mut v, "");
        let c = &v["data"]["contact"];
        assert_eq!(c["email"], "Ca***@example.fr");
        assert_eq!(
            (c["prenom"].as_str(), c["name"].as_str(), c["telephone"].as_str()),
            (Some("C***"), Some("C***"), Some("+***"))
        );
        assert_eq!(c["id"], 1000, "ids stay: they show the shape");
        assert_eq!(v["data"]["course"]["name"], "Vendre en ligne", "a course name is not personal");
        assert_eq!(v["data"]["cc"], "jj***@example.org");
        assert_eq!(v["data"]["note"], "write to zo***@example.com");
        assert_eq!(v["event"], "course.completed");
    }
}

/// Field coverage of `route` on real events, for `GET /api/routes`: per field it reads, how many
/// of the events it took had it present, empty or absent, its current absent streak, and whether
/// the bundled samples of its event types have it.
pub fn field_coverage(
    rt: &crate::compiled::Compiled,
    route: &str,
    coverage: &crate::coverage::Coverage,
) -> Vec<serde_json::Value> {
    let Some(fields) = rt.fields.get(route) else { return Vec::new() };
    let counts = coverage.of_route(route);
    let in_samples = rt.fields_in_samples.get_or_init(|| fields_in_samples(rt)).get(route);
    fields
        .iter()
        .map(|f| {
            let c = counts.get(&f.path).cloned().unwrap_or_default();
            serde_json::json!({
                "path": f.path, "alternatives": f.alternatives, "present": c.present, "empty": c.empty,
                "absent": c.absent, "absent_streak": c.absent_streak,
                "in_samples": in_samples.is_some_and(|s| s.contains(&f.path)),
            })
        })
        .collect()
}

/// Route → the fields (by first path) that some bundled sample of its event types has, non-blank.
fn fields_in_samples(rt: &crate::compiled::Compiled) -> BTreeMap<String, std::collections::BTreeSet<String>> {
    let samples = crate::preflight::sample_events(&rt.config.dir).unwrap_or_default();
    let events: Vec<crate::event::Event> =
        samples.into_iter().filter_map(|(_, s)| rt.event_from_json(s, 0).ok()).collect();
    rt.fields
        .iter()
        .map(|(route, fields)| {
            let globs = rt.config.route(route).map(|r| r.events.clone()).unwrap_or_default();
            let mine: Vec<&serde_json::Value> =
                events.iter().filter(|e| crate::routing::matches_any(&globs, &e.kind)).map(|e| &e.data).collect();
            let present = fields
                .iter()
                .filter(|f| {
                    mine.iter().any(|data| {
                        std::iter::once(&f.path).chain(&f.alternatives).any(|p| {
                            crate::fields::resolve(data, p)
                                .is_some_and(|v| !v.as_str().is_some_and(|s| s.trim().is_empty()))
                        })
                    })
                })
                .map(|f| f.path.clone())
                .collect();
            (route.clone(), present)
        })
        .collect()
}
