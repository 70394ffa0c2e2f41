//! What reconciliation with Learnybox's API keeps: each API item's latest verdict (received by
//! webhook, recovered, still missing and why), each run with its cursor so an interrupted run
//! resumes, and the scan of a source's received events that items are matched against.

use rusqlite::{params, OptionalExtension};
use serde::Serialize;

use super::{Backend, Store, StoreError, PAYLOAD};

/// What became of one API item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ItemOutcome {
    /// An event for it came by webhook.
    Received,
    /// No webhook brought it: reconciliation created its event.
    Recovered,
    /// Neither: a mapping or template problem (the reason says which); never delivered.
    Missing,
}

impl ItemOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ItemOutcome::Received => "received",
            ItemOutcome::Recovered => "recovered",
            ItemOutcome::Missing => "missing",
        }
    }

    pub fn parse(text: &str) -> Option<ItemOutcome> {
        [ItemOutcome::Received, ItemOutcome::Recovered, ItemOutcome::Missing].into_iter().find(|o| o.as_str() == text)
    }
}

/// One API item's verdict, kept per (source, list, item id) and replaced by later runs.
#[derive(Debug, Clone)]
pub struct ItemVerdict {
    pub source: String,
    pub list: String,
    pub item_id: String,
    /// `YYYY-MM-DD` (UTC) of the item's own date.
    pub day: String,
    /// The item's date, Unix ms.
    pub item_at: i64,
    pub outcome: ItemOutcome,
    pub reason: Option<String>,
    /// The stored event that stands for it (webhook or recovered).
    pub event_id: Option<String>,
    pub checked_at: i64,
}

/// Where a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    Running,
    /// Stopped by a shutdown; the next start resumes it from its cursor.
    Interrupted,
    /// Every list read to its end.
    Done,
    /// The page budget ran out before a list's end: the rest was not checked.
    Partial,
    /// The API could not be read (the error says why).
    Failed,
}

impl RunState {
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Interrupted => "interrupted",
            RunState::Done => "done",
            RunState::Partial => "partial",
            RunState::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> RunState {
        match text {
            "running" => RunState::Running,
            "interrupted" => RunState::Interrupted,
            "done" => RunState::Done,
            "partial" => RunState::Partial,
            _ => RunState::Failed,
        }
    }
}

/// One reconciliation run of one source.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: String,
    pub source: String,
    /// `schedule` or `cli` or `api`.
    pub trigger: String,
    pub started_at: i64,
    /// Last sign of life (a run whose heartbeat is old was left by a crash and is taken over).
    pub heartbeat: i64,
    pub finished_at: Option<i64>,
    /// The window of item dates checked, Unix ms.
    pub since: i64,
    pub until: i64,
    pub state: RunState,
    pub error: Option<String>,
    pub listed: u64,
    pub received: u64,
    pub recovered: u64,
    pub missing: u64,
    /// Where to go on: `{"list": i, "offset": n}`.
    #[serde(skip)]
    pub cursor: Option<String>,
}

/// What asking to start a run gave.
#[derive(Debug, Clone)]
pub enum Begun {
    Started(Run),
    /// An interrupted (or abandoned) run of the source, to go on with from its cursor.
    Resumed(Run),
    /// Another run of the source is under way.
    Busy(Run),
}

/// Items of one day, source, outcome and reason.
#[derive(Debug, Clone)]
pub struct DayCount {
    pub source: String,
    pub day: String,
    pub outcome: ItemOutcome,
    pub reason: Option<String>,
    pub count: u64,
}

/// A received event as reconciliation matches it.
#[derive(Debug, Clone)]
pub struct SeenEvent {
    pub id: String,
    pub kind: String,
    pub payload: String,
    /// `reconcile` for recovered events, `None` for webhooks.
    pub origin: Option<String>,
    pub received_at: i64,
}

/// A count read from the database (never negative).
pub(super) fn n(v: i64) -> u64 {
    v.max(0) as u64
}

fn big(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

const RUN_COLUMNS: &str =
    "id, source, trigger, started_at, heartbeat, finished_at, since, until, state, error, listed, \
                           received, recovered, missing, cursor";

fn run_from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Run> {
    Ok(Run {
        id: r.get(0)?,
        source: r.get(1)?,
        trigger: r.get(2)?,
        started_at: r.get(3)?,
        heartbeat: r.get(4)?,
        finished_at: r.get(5)?,
        since: r.get(6)?,
        until: r.get(7)?,
        state: RunState::parse(&r.get::<_, String>(8)?),
        error: r.get(9)?,
        listed: n(r.get(10)?),
        received: n(r.get(11)?),
        recovered: n(r.get(12)?),
        missing: n(r.get(13)?),
        cursor: r.get(14)?,
    })
}

fn run_from_pg(r: &tokio_postgres::Row) -> Result<Run, tokio_postgres::Error> {
    Ok(Run {
        id: r.try_get(0)?,
        source: r.try_get(1)?,
        trigger: r.try_get(2)?,
        started_at: r.try_get(3)?,
        heartbeat: r.try_get(4)?,
        finished_at: r.try_get(5)?,
        since: r.try_get(6)?,
        until: r.try_get(7)?,
        state: RunState::parse(&r.try_get::<_, String>(8)?),
        error: r.try_get(9)?,
        listed: n(r.try_get(10)?),
        received: n(r.try_get(11)?),
        recovered: n(r.try_get(12)?),
        missing: n(r.try_get(13)?),
        cursor: r.try_get(14)?,
    })
}

impl Store {
    /// Starts a run of `run.source`, or resumes its interrupted one (or one whose heartbeat is
    /// older than `stale_before`, left by a crash), or reports the run under way.
    pub async fn reconcile_begin(&self, run: Run, stale_before: i64) -> Result<Begun, StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => {
                s.call(move |c| {
                    let active = c
                        .query_row(
                            &format!(
                                "SELECT {RUN_COLUMNS} FROM reconcile_runs
                                 WHERE source = ?1 AND state IN ('running', 'interrupted')"
                            ),
                            [&run.source],
                            run_from_sqlite,
                        )
                        .optional()?;
                    match active {
                        Some(mut old) if old.state == RunState::Interrupted || old.heartbeat < stale_before => {
                            c.execute(
                                "UPDATE reconcile_runs SET state = 'running', heartbeat = ?2 WHERE id = ?1",
                                params![old.id, run.heartbeat],
                            )?;
                            old.state = RunState::Running;
                            old.heartbeat = run.heartbeat;
                            Ok(Begun::Resumed(old))
                        }
                        Some(old) => Ok(Begun::Busy(old)),
                        None => {
                            c.execute(
                                &format!(
                                    "INSERT INTO reconcile_runs ({RUN_COLUMNS})
                                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)"
                                ),
                                params![
                                    run.id,
                                    run.source,
                                    run.trigger,
                                    run.started_at,
                                    run.heartbeat,
                                    run.finished_at,
                                    run.since,
                                    run.until,
                                    run.state.as_str(),
                                    run.error,
                                    big(run.listed),
                                    big(run.received),
                                    big(run.recovered),
                                    big(run.missing),
                                    run.cursor
                                ],
                            )?;
                            Ok(Begun::Started(run.clone()))
                        }
                    }
                })
                .await
            }
            Backend::Postgres(pg) => {
                let mut client = pg.pool.get().await?;
                let tx = client.transaction().await?;
                let active = tx
                    .query_opt(
                        &format!(
                            "SELECT {RUN_COLUMNS} FROM reconcile_runs
                             WHERE source = $1 AND state IN ('running', 'interrupted') FOR UPDATE"
                        ),
                        &[&run.source],
                    )
                    .await?
                    .map(|r| run_from_pg(&r))
                    .transpose()?;
                let begun = match active {
                    Some(mut old) if old.state == RunState::Interrupted || old.heartbeat < stale_before => {
                        tx.execute(
                            "UPDATE reconcile_runs SET state = 'running', heartbeat = $2 WHERE id = $1",
                            &[&old.id, &run.heartbeat],
                        )
                        .await?;
                        old.state = RunState::Running;
                        old.heartbeat = run.heartbeat;
                        Begun::Resumed(old)
                    }
                    Some(old) => Begun::Busy(old),
                    None => {
                        // Two replicas starting at once: the unique index lets one in; the
                        // other's insert does nothing and it reports the winner's run.
                        let inserted = tx
                            .execute(
                                &format!(
                                    "INSERT INTO reconcile_runs ({RUN_COLUMNS})
                                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15)
                                     ON CONFLICT DO NOTHING"
                                ),
                                &[
                                    &run.id,
                                    &run.source,
                                    &run.trigger,
                                    &run.started_at,
                                    &run.heartbeat,
                                    &run.finished_at,
                                    &run.since,
                                    &run.until,
                                    &run.state.as_str(),
                                    &run.error,
                                    &big(run.listed),
                                    &big(run.received),
                                    &big(run.recovered),
                                    &big(run.missing),
                                    &run.cursor,
                                ],
                            )
                            .await?;
                        if inserted == 1 {
                            Begun::Started(run)
                        } else {
                            Begun::Busy(run)
                        }
                    }
                };
                tx.commit().await?;
                Ok(begun)
            }
        }
    }

    /// Writes a run's progress (counts, cursor, heartbeat, state); `false` if the run is gone.
    pub async fn reconcile_progress(&self, run: &Run) -> Result<bool, StoreError> {
        let run = run.clone();
        let sql = "UPDATE reconcile_runs SET heartbeat = $2, finished_at = $3, state = $4, error = $5, listed = $6,
                    received = $7, recovered = $8, missing = $9, cursor = $10 WHERE id = $1";
        match &self.backend {
            Backend::Sqlite(s) => {
                s.call(move |c| {
                    Ok(c.prepare_cached(&sql.replace('$', "?"))?.execute(params![
                        run.id,
                        run.heartbeat,
                        run.finished_at,
                        run.state.as_str(),
                        run.error,
                        big(run.listed),
                        big(run.received),
                        big(run.recovered),
                        big(run.missing),
                        run.cursor
                    ])? == 1)
                })
                .await
            }
            Backend::Postgres(pg) => {
                let client = pg.pool.get().await?;
                let n = client
                    .execute(
                        sql,
                        &[
                            &run.id,
                            &run.heartbeat,
                            &run.finished_at,
                            &run.state.as_str(),
                            &run.error,
                            &big(run.listed),
                            &big(run.received),
                            &big(run.recovered),
                            &big(run.missing),
                            &run.cursor,
                        ],
                    )
                    .await?;
                Ok(n == 1)
            }
        }
    }

    /// Keeps each item's verdict (a later run replaces an earlier one's).
    pub async fn reconcile_save_items(&self, items: Vec<ItemVerdict>) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        let sql =
            "INSERT INTO reconcile_items (source, list, item_id, day, item_at, outcome, reason, event_id, checked_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                   ON CONFLICT (source, list, item_id) DO UPDATE SET day = excluded.day, item_at = excluded.item_at,
                      outcome = excluded.outcome, reason = excluded.reason, event_id = excluded.event_id,
                      checked_at = excluded.checked_at";
        match &self.backend {
            Backend::Sqlite(s) => {
                s.call(move |c| {
                    let mut stmt = c.prepare_cached(&sql.replace('$', "?"))?;
                    for i in &items {
                        stmt.execute(params![
                            i.source,
                            i.list,
                            i.item_id,
                            i.day,
                            i.item_at,
                            i.outcome.as_str(),
                            i.reason,
                            i.event_id,
                            i.checked_at
                        ])?;
                    }
                    Ok(())
                })
                .await
            }
            Backend::Postgres(pg) => {
                let mut client = pg.pool.get().await?;
                let tx = client.transaction().await?;
                let stmt = tx.prepare_cached(sql).await?;
                for i in &items {
                    tx.execute(
                        &stmt,
                        &[
                            &i.source,
                            &i.list,
                            &i.item_id,
                            &i.day,
                            &i.item_at,
                            &i.outcome.as_str(),
                            &i.reason,
                            &i.event_id,
                            &i.checked_at,
                        ],
                    )
                    .await?;
                }
                tx.commit().await?;
                Ok(())
            }
        }
    }

    /// The latest runs, newest first.
    pub async fn reconcile_runs(&self, limit: u32) -> Result<Vec<Run>, StoreError> {
        let sql = format!("SELECT {RUN_COLUMNS} FROM reconcile_runs ORDER BY started_at DESC, id DESC LIMIT {limit}");
        match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| c.prepare_cached(&sql)?.query_map([], run_from_sqlite)?.collect()).await
            }
            Backend::Postgres(pg) => {
                let client = pg.pool.get().await?;
                Ok(client.query(&sql, &[]).await?.iter().map(run_from_pg).collect::<Result<_, _>>()?)
            }
        }
    }

    /// Item counts per source, day, outcome and reason, for days from `since_day` (`YYYY-MM-DD`).
    pub async fn reconcile_days(&self, since_day: String) -> Result<Vec<DayCount>, StoreError> {
        let sql = "SELECT source, day, outcome, reason, COUNT(*) FROM reconcile_items WHERE day >= $1
                   GROUP BY source, day, outcome, reason ORDER BY source, day";
        let rows: Vec<(String, String, String, Option<String>, i64)> = match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| {
                    c.prepare_cached(&sql.replace('$', "?"))?
                        .query_map([since_day], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))?
                        .collect()
                })
                .await?
            }
            Backend::Postgres(pg) => {
                let client = pg.pool.get().await?;
                client
                    .query(sql, &[&since_day])
                    .await?
                    .iter()
                    .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?, r.try_get(3)?, r.try_get(4)?)))
                    .collect::<Result<_, tokio_postgres::Error>>()?
            }
        };
        Ok(rows
            .into_iter()
            .filter_map(|(source, day, outcome, reason, count)| {
                Some(DayCount { source, day, outcome: ItemOutcome::parse(&outcome)?, reason, count: n(count) })
            })
            .collect())
    }

    /// Up to `limit` events of `source` received at or after `since`, in arrival order, after the
    /// `(received_at, id)` cursor `after`.
    pub async fn events_since(
        &self,
        source: &str,
        since: i64,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> Result<Vec<SeenEvent>, StoreError> {
        let (at, id) = after.unwrap_or((since, String::new()));
        let source = source.to_string();
        let sql = "SELECT id, kind, payload, origin, received_at FROM events
                   WHERE source = $1 AND received_at >= $2 AND (received_at > $3 OR (received_at = $3 AND id > $4))
                   ORDER BY received_at, id LIMIT $5";
        let mut seen: Vec<SeenEvent> = match &self.backend {
            Backend::Sqlite(s) => {
                s.read(move |c| {
                    c.prepare_cached(&sql.replace('$', "?"))?
                        .query_map(params![source, since, at, id, limit], |r| {
                            Ok(SeenEvent {
                                id: r.get(0)?,
                                kind: r.get(1)?,
                                payload: r.get(2)?,
                                origin: r.get(3)?,
                                received_at: r.get(4)?,
                            })
                        })?
                        .collect()
                })
                .await?
            }
            Backend::Postgres(pg) => {
                let client = pg.pool.get().await?;
                client
                    .query(sql, &[&source, &since, &at, &id, &i64::from(limit)])
                    .await?
                    .iter()
                    .map(|r| {
                        Ok(SeenEvent {
                            id: r.try_get(0)?,
                            kind: r.try_get(1)?,
                            payload: r.try_get(2)?,
                            origin: r.try_get(3)?,
                            received_at: r.try_get(4)?,
                        })
                    })
                    .collect::<Result<_, tokio_postgres::Error>>()?
            }
        };
        for e in &mut seen {
            e.payload = self.read_text(PAYLOAD, std::mem::take(&mut e.payload));
        }
        Ok(seen)
    }

    /// Drops item verdicts checked before `before` and finished runs started before it.
    pub async fn reconcile_purge(&self, before: i64) -> Result<(), StoreError> {
        let items = "DELETE FROM reconcile_items WHERE checked_at < $1";
        let runs = "DELETE FROM reconcile_runs WHERE started_at < $1 AND state NOT IN ('running', 'interrupted')";
        match &self.backend {
            Backend::Sqlite(s) => {
                s.call(move |c| {
                    c.execute(&items.replace('$', "?"), [before])?;
                    c.execute(&runs.replace('$', "?"), [before])?;
                    Ok(())
                })
                .await
            }
            Backend::Postgres(pg) => {
                let client = pg.pool.get().await?;
                client.execute(items, &[&before]).await?;
                client.execute(runs, &[&before]).await?;
                Ok(())
            }
        }
    }
}
