//! What the console's dead-letter view and route health read: deliveries with their event's
//! type, contact and times, filtered by route, type, error text and time window; and per route the
//! deliveries of a period by state (delivered, failed, pending, in retry) — health per delivery,
//! not per attempt.

use std::collections::BTreeMap;

use rusqlite::params;
use serde::Serialize;

use super::reconcile::n;
use super::{Backend, Store, StoreError, ERROR, PAYLOAD};

/// Which deliveries to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct TriageFilter {
    /// `failed` when absent.
    pub status: Option<String>,
    pub route: Option<String>,
    /// A glob on the event type (`contact.*`); a bare word is a prefix (`contact`).
    pub kind: Option<String>,
    /// Text the last error contains, any case.
    pub error: Option<String>,
    /// The event received at or after / before (Unix ms), as the bulk replay filters.
    pub since: Option<i64>,
    pub until: Option<i64>,
    /// Cursor: the id of the last delivery of the previous page.
    pub after: Option<String>,
    pub limit: u32,
}

/// One delivery as the dead-letter view shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TriageRow {
    pub id: String,
    pub event_id: String,
    pub route: String,
    pub status: super::DeliveryStatus,
    /// The event type.
    #[serde(rename = "type")]
    pub kind: String,
    pub learnybox_id: String,
    pub contact: Option<String>,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<String>,
    /// When it was last attempted (or changed).
    #[serde(serialize_with = "crate::event::shown_as_rfc3339::serialize")]
    pub last_attempt_at: i64,
    #[serde(serialize_with = "crate::event::shown_as_rfc3339::option::serialize")]
    pub next_attempt_at: Option<i64>,
    #[serde(serialize_with = "crate::event::shown_as_rfc3339::serialize")]
    pub received_at: i64,
}

/// Deliveries of one route created in a period, by state.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DeliveryCounts {
    pub delivered: u64,
    pub failed: u64,
    /// Pending, not attempted yet.
    pub pending: u64,
    /// Pending after at least one attempt: waiting for its next one.
    pub retrying: u64,
}

/// Deliveries counted per route.
pub type PerRoute = BTreeMap<String, DeliveryCounts>;

/// One route's attempts, counted by the database (see `Store::route_attempts`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouteAttempts {
    pub route: String,
    pub settled_1h: u64,
    pub delivered_1h: u64,
    pub settled_24h: u64,
    pub delivered_24h: u64,
    pub attempts_24h: u64,
    /// Since the `since` of the query (the alert's window).
    pub settled: u64,
    pub failed: u64,
    pub last_success: Option<i64>,
    pub last_failure: Option<i64>,
}

/// Rows scanned at most for one page when the error filter leaves most of them out.
const SCAN_CAP: usize = 20_000;

/// Attempts of one route that started in one time bucket with one outcome and, for delivered
/// ones, one latency (see `Store::attempt_histogram`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptCount {
    pub route: String,
    /// The bucket: `(started_at - since) / step`.
    pub bucket: i64,
    pub outcome: super::AttemptOutcome,
    /// For delivered attempts: from the event's arrival to the attempt's end, ms (at least 0).
    pub latency_ms: Option<i64>,
    pub count: u64,
}

type RawRow = (
    String,
    String,
    String,
    super::DeliveryStatus,
    String,
    String,
    String,
    u32,
    Option<u16>,
    Option<String>,
    i64,
    Option<i64>,
    i64,
);

/// A glob as given, or a bare word as a prefix.
fn kind_glob(kind: &str) -> String {
    if kind.contains(['*', '?', '[']) {
        kind.to_string()
    } else {
        format!("{kind}*")
    }
}

impl Store {
    /// A page of deliveries matching `f`, newest first, and the cursor of the next page.
    pub async fn triage(&self, f: TriageFilter) -> Result<(Vec<TriageRow>, Option<String>), StoreError> {
        let want = f.limit.clamp(1, 1000) as usize;
        let needle = f.error.as_deref().map(|e| e.trim().to_lowercase()).filter(|e| !e.is_empty());
        let mut out = Vec::new();
        let mut after = f.after.clone();
        let mut scanned = 0;
        loop {
            let chunk = if needle.is_some() { 500 } else { want as u32 + 1 };
            let rows = self.triage_chunk(&f, after.clone(), chunk).await?;
            let full = rows.len() == chunk as usize;
            scanned += rows.len();
            for raw in rows {
                after = Some(raw.0.clone());
                let row = self.triage_row(raw)?;
                let keep = match &needle {
                    Some(n) => row.last_error.as_deref().is_some_and(|e| e.to_lowercase().contains(n)),
                    None => true,
                };
                if keep {
                    if out.len() == want {
                        // One more exists: the page ends at the last one kept.
                        let next = out.last().map(|r: &TriageRow| r.id.clone());
                        return Ok((out, next));
                    }
                    out.push(row);
                }
            }
            if !full || scanned >= SCAN_CAP {
                // Past the scan cap, the cursor lets the caller go on.
                let next = (full && scanned >= SCAN_CAP).then(|| after.clone()).flatten();
                return Ok((out, next));
            }
        }
    }

    fn triage_row(&self, raw: RawRow) -> Result<TriageRow, StoreError> {
        let (
            id,
            event_id,
            route,
            status,
            kind,
            key,
            payload,
            attempts,
            last_status,
            last_error,
            updated,
            next,
            received,
        ) = raw;
        let payload = self.read_text(PAYLOAD, payload);
        let data: serde_json::Value = serde_json::from_str(&payload).unwrap_or_default();
        Ok(TriageRow {
            id,
            event_id,
            route,
            status,
            kind,
            learnybox_id: key,
            contact: crate::email::contact_in(&data).map(str::to_string),
            attempts,
            last_status,
            last_error: self.read_opt(ERROR, last_error),
            last_attempt_at: updated,
            next_attempt_at: next,
            received_at: received,
        })
    }

    async fn triage_chunk(
        &self,
        f: &TriageFilter,
        after: Option<String>,
        limit: u32,
    ) -> Result<Vec<RawRow>, StoreError> {
        let status = f.status.clone().unwrap_or_else(|| "failed".into());
        let (route, since, until) = (f.route.clone(), f.since, f.until);
        let glob = f.kind.as_deref().map(kind_glob);
        match &self.backend {
            Backend::Sqlite(s) => {
                let sql = sqlite_chunk_sql(&status);
                s.read(move |c| {
                    c.prepare_cached(&sql)?
                        .query_map(params![status, route, glob, since, until, after, limit], |r| RawRow::try_from(r))?
                        .collect()
                })
                .await
            }
            Backend::Postgres(pg) => {
                let client = pg.pool.get().await?;
                let like = glob.as_deref().map(super::postgres::glob_to_like);
                let rows = client
                    .query(
                        "SELECT d.id, d.event_id, d.route, d.status, e.kind, e.event_key, e.payload, d.attempts,
                            d.last_status, d.last_error, d.updated_at, d.next_attempt_at, e.received_at
                         FROM deliveries d JOIN events e ON e.id = d.event_id
                         WHERE d.status = $1 AND ($2::text IS NULL OR d.route = $2)
                           AND ($3::text IS NULL OR e.kind LIKE $3 ESCAPE '\\')
                           AND ($4::bigint IS NULL OR e.received_at >= $4) AND ($5::bigint IS NULL OR e.received_at < $5)
                           AND ($6::text IS NULL OR d.id < $6)
                         ORDER BY d.id DESC LIMIT $7",
                        &[&status, &route, &like, &since, &until, &after, &i64::from(limit)],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok((
                            r.try_get(0)?,
                            r.try_get(1)?,
                            r.try_get(2)?,
                            r.try_get(3)?,
                            r.try_get(4)?,
                            r.try_get(5)?,
                            r.try_get(6)?,
                            r.try_get::<_, i32>(7)?.max(0) as u32,
                            r.try_get::<_, Option<i32>>(8)?.and_then(|s| u16::try_from(s).ok()),
                            r.try_get(9)?,
                            r.try_get(10)?,
                            r.try_get(11)?,
                            r.try_get(12)?,
                        ))
                    })
                    .collect::<Result<_, tokio_postgres::Error>>()
                    .map_err(StoreError::from)
            }
        }
    }

    /// Per route, counts of every attempt started since `since` (Unix ms), computed by the
    /// database: settled and delivered ones since `t1` and `t24`, all since `t24`, settled and
    /// failed ones since `since`, the last success and failure. Reads the window's attempts only
    /// (through their start-time index), never the whole table.
    pub async fn route_attempts(&self, since: i64, t1: i64, t24: i64) -> Result<Vec<RouteAttempts>, StoreError> {
        // Settled: delivered, retry, failed. Failed: retry, failed (AttemptOutcome).
        // Attempts with a row of their own, and those kept on their delivery's row (migration 9),
        // each through its start-time index and no wider than the counts need.
        let sql = "SELECT a.route,
                SUM(CASE WHEN a.started_at >= $2 AND a.outcome IN ('delivered','retry','failed') THEN 1 ELSE 0 END),
                SUM(CASE WHEN a.started_at >= $2 AND a.outcome = 'delivered' THEN 1 ELSE 0 END),
                SUM(CASE WHEN a.started_at >= $3 AND a.outcome IN ('delivered','retry','failed') THEN 1 ELSE 0 END),
                SUM(CASE WHEN a.started_at >= $3 AND a.outcome = 'delivered' THEN 1 ELSE 0 END),
                SUM(CASE WHEN a.started_at >= $3 THEN 1 ELSE 0 END),
                SUM(CASE WHEN a.outcome IN ('delivered','retry','failed') THEN 1 ELSE 0 END),
                SUM(CASE WHEN a.outcome IN ('retry','failed') THEN 1 ELSE 0 END),
                MAX(CASE WHEN a.outcome = 'delivered' THEN a.started_at END),
                MAX(CASE WHEN a.outcome IN ('retry','failed') THEN a.started_at END)
             FROM (SELECT d.route, a.started_at, a.outcome
                   FROM attempts a JOIN deliveries d ON d.id = a.delivery_id WHERE a.started_at >= $1
                   UNION ALL
                   SELECT route, ok_started_at, 'delivered' FROM deliveries WHERE ok_started_at >= $1) a
             GROUP BY a.route";
        type Row = (String, i64, i64, i64, i64, i64, i64, i64, Option<i64>, Option<i64>);
        let rows: Vec<Row> = match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| {
                    c.prepare_cached(&sql.replace('$', "?"))?
                        .query_map(params![since, t1, t24], |r| Row::try_from(r))?
                        .collect()
                })
                .await?
            }
            Backend::Postgres(pg) => {
                let client = pg.pool.get().await?;
                client
                    .query(sql, &[&since, &t1, &t24])
                    .await?
                    .iter()
                    .map(|r| {
                        Ok((
                            r.try_get(0)?,
                            r.try_get(1)?,
                            r.try_get(2)?,
                            r.try_get(3)?,
                            r.try_get(4)?,
                            r.try_get(5)?,
                            r.try_get(6)?,
                            r.try_get(7)?,
                            r.try_get(8)?,
                            r.try_get(9)?,
                        ))
                    })
                    .collect::<Result<_, tokio_postgres::Error>>()?
            }
        };
        Ok(rows
            .into_iter()
            .map(|(route, s1, ok1, s24, ok24, all24, settled, failed, last_ok, last_ko)| RouteAttempts {
                route,
                settled_1h: n(s1),
                delivered_1h: n(ok1),
                settled_24h: n(s24),
                delivered_24h: n(ok24),
                attempts_24h: n(all24),
                settled: n(settled),
                failed: n(failed),
                last_success: last_ok,
                last_failure: last_ko,
            })
            .collect())
    }

    /// Every attempt started in `[since, until)` (Unix ms), counted per route, bucket of `step`
    /// ms, outcome and — for delivered ones — latency from the event's arrival to the attempt's
    /// end: as exact as reading each attempt, without moving them out of the store one by one.
    /// PostgreSQL counts them (a hash aggregate); SQLite's only grouping is a sort, which took
    /// twice as long as reading the window's rows narrow and counting them on the reader's thread.
    pub async fn attempt_histogram(&self, since: i64, until: i64, step: i64) -> Result<Vec<AttemptCount>, StoreError> {
        let step = step.max(1);
        match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| {
                    let mut stmt = c.prepare_cached(
                        "SELECT d.route, a.started_at, a.duration_ms, a.outcome, e.received_at
                         FROM attempts a JOIN deliveries d ON d.id = a.delivery_id JOIN events e ON e.id = d.event_id
                         WHERE a.started_at >= ?1 AND a.started_at < ?2
                         UNION ALL
                         SELECT d.route, d.ok_started_at, d.ok_duration_ms, 'delivered', e.received_at
                         FROM deliveries d JOIN events e ON e.id = d.event_id
                         WHERE d.ok_started_at >= ?1 AND d.ok_started_at < ?2",
                    )?;
                    type Key = (i64, super::AttemptOutcome, Option<i64>);
                    let mut by_route: BTreeMap<String, std::collections::HashMap<Key, u64>> = BTreeMap::new();
                    let mut rows = stmt.query(params![since, until])?;
                    while let Some(r) = rows.next()? {
                        let route = r.get_ref(0)?.as_str()?;
                        let (started_at, duration_ms, received_at): (i64, i64, i64) = (r.get(1)?, r.get(2)?, r.get(4)?);
                        let outcome: super::AttemptOutcome = r.get(3)?;
                        let latency = (outcome == super::AttemptOutcome::Delivered)
                            .then(|| started_at.saturating_add(duration_ms).saturating_sub(received_at).max(0));
                        let key = ((started_at - since) / step, outcome, latency);
                        match by_route.get_mut(route) {
                            Some(counts) => *counts.entry(key).or_default() += 1,
                            None => {
                                by_route.insert(route.to_string(), [(key, 1)].into());
                            }
                        }
                    }
                    Ok(by_route
                        .into_iter()
                        .flat_map(|(route, counts)| {
                            counts.into_iter().map(move |((bucket, outcome, latency_ms), count)| AttemptCount {
                                route: route.clone(),
                                bucket,
                                outcome,
                                latency_ms,
                                count,
                            })
                        })
                        .collect())
                })
                .await
            }
            Backend::Postgres(pg) => {
                let client = pg.pool.get().await?;
                let rows = client
                    .query(
                        "SELECT a.route, (a.started_at - $1) / $3, a.outcome,
                            CASE WHEN a.outcome = 'delivered' THEN GREATEST(a.started_at + a.duration_ms - a.received_at, 0) END,
                            COUNT(*)
                         FROM (SELECT d.route, a.started_at, a.duration_ms, a.outcome, e.received_at
                               FROM attempts a JOIN deliveries d ON d.id = a.delivery_id JOIN events e ON e.id = d.event_id
                               WHERE a.started_at >= $1 AND a.started_at < $2
                               UNION ALL
                               SELECT d.route, d.ok_started_at, d.ok_duration_ms, 'delivered', e.received_at
                               FROM deliveries d JOIN events e ON e.id = d.event_id
                               WHERE d.ok_started_at >= $1 AND d.ok_started_at < $2) a
                         GROUP BY 1, 2, 3, 4",
                        &[&since, &until, &step],
                    )
                    .await?;
                rows.iter()
                    .map(|r| {
                        Ok(AttemptCount {
                            route: r.try_get(0)?,
                            bucket: r.try_get(1)?,
                            outcome: super::AttemptOutcome::parse(r.try_get(2)?),
                            latency_ms: r.try_get(3)?,
                            count: n(r.try_get(4)?),
                        })
                    })
                    .collect::<Result<_, tokio_postgres::Error>>()
                    .map_err(StoreError::from)
            }
        }
    }

    /// The newest failed attempt of `route` since `since`: its error (or `HTTP status`).
    pub async fn last_failure_error(&self, route: &str, since: i64) -> Result<Option<String>, StoreError> {
        let route = route.to_string();
        let sql = "SELECT a.error, a.status FROM attempts a JOIN deliveries d ON d.id = a.delivery_id
                   WHERE d.route = $1 AND a.started_at >= $2 AND a.outcome IN ('retry','failed')
                   ORDER BY a.started_at DESC, a.id DESC LIMIT 1";
        let row: Option<(Option<String>, Option<i64>)> = match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| {
                    use rusqlite::OptionalExtension;
                    c.prepare_cached(&sql.replace('$', "?"))?
                        .query_row(params![route, since], |r| Ok((r.get(0)?, r.get(1)?)))
                        .optional()
                })
                .await?
            }
            Backend::Postgres(pg) => {
                let client = pg.pool.get().await?;
                client
                    .query_opt(sql, &[&route, &since])
                    .await?
                    .map(|r| {
                        Ok::<_, tokio_postgres::Error>((r.try_get(0)?, r.try_get::<_, Option<i32>>(1)?.map(i64::from)))
                    })
                    .transpose()?
            }
        };
        Ok(row.and_then(|(error, status)| self.read_opt(ERROR, error).or_else(|| status.map(|s| format!("HTTP {s}")))))
    }

    /// The event a delivery belongs to (for a link to one delivery).
    pub async fn delivery_event(&self, id: &str) -> Result<Option<String>, StoreError> {
        let id = id.to_string();
        match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| {
                    use rusqlite::OptionalExtension;
                    c.prepare_cached("SELECT event_id FROM deliveries WHERE id = ?1")?
                        .query_row([id], |r| r.get(0))
                        .optional()
                })
                .await
            }
            Backend::Postgres(pg) => {
                let client = pg.pool.get().await?;
                Ok(client.query_opt("SELECT event_id FROM deliveries WHERE id = $1", &[&id]).await?.map(|r| r.get(0)))
            }
        }
    }

    /// Per route, the deliveries created since `t1` and since `t24` (Unix ms, `t24 <= t1`) by
    /// state, in one read of the table.
    pub async fn delivery_counts(&self, t1: i64, t24: i64) -> Result<(PerRoute, PerRoute), StoreError> {
        let sql = "SELECT route, status, attempts > 0, created_at >= $2, COUNT(*) FROM deliveries
                   WHERE created_at >= $1 GROUP BY route, status, attempts > 0, created_at >= $2";
        let rows: Vec<(String, String, bool, bool, i64)> = match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| {
                    c.prepare_cached(&sql.replace('$', "?"))?
                        .query_map([t24, t1], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                        .collect()
                })
                .await?
            }
            Backend::Postgres(pg) => {
                let client = pg.pool.get().await?;
                client
                    .query(sql, &[&t24, &t1])
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?)))
                    .collect::<Result<_, tokio_postgres::Error>>()?
            }
        };
        let (mut last_hour, mut last_day) = (PerRoute::new(), PerRoute::new());
        let add = |c: &mut DeliveryCounts, status: &str, tried: bool, n: u64| match (status, tried) {
            ("delivered", _) => c.delivered += n,
            ("failed", _) => c.failed += n,
            ("pending", true) => c.retrying += n,
            _ => c.pending += n,
        };
        for (route, status, tried, recent, n) in rows {
            let n = n.max(0) as u64;
            if recent {
                add(last_hour.entry(route.clone()).or_default(), &status, tried, n);
            }
            add(last_day.entry(route).or_default(), &status, tried, n);
        }
        Ok((last_hour, last_day))
    }
}

/// One page of the triage list on SQLite: deliveries of status `?1` (route `?2`, event type glob
/// `?3`, received from `?4` until `?5`, ids below `?6`), newest first, `?7` at most.
pub(super) fn sqlite_chunk_sql(status: &str) -> String {
    let (index, term) = super::sqlite_by_status("d.status", Some(status));
    format!(
        "SELECT d.id, d.event_id, d.route, d.status, e.kind, e.event_key, e.payload, d.attempts,
            d.last_status, d.last_error, d.updated_at, d.next_attempt_at, e.received_at
         FROM deliveries d{index} JOIN events e ON e.id = d.event_id
         WHERE {term}d.status = ?1 AND (?2 IS NULL OR d.route = ?2) AND (?3 IS NULL OR e.kind GLOB ?3)
           AND (?4 IS NULL OR e.received_at >= ?4) AND (?5 IS NULL OR e.received_at < ?5)
           AND (?6 IS NULL OR d.id < ?6)
         ORDER BY d.id DESC LIMIT ?7"
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_bare_word_is_a_type_prefix_and_a_glob_is_kept() {
        assert_eq!(super::kind_glob("contact"), "contact*");
        assert_eq!(super::kind_glob("contact.*"), "contact.*");
        assert_eq!(super::kind_glob("transaction.created"), "transaction.created*");
    }
}
