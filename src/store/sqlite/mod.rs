//! The embedded SQLite backend: opening and migrating the file, and every query. Writes go to the
//! group-commit writer thread (`writer`), reads to a pool of read-only WAL connections (`readers`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};

use super::{AttemptOutcome, DeliveryStatus, RetryFilter, COUNT_CAP, DERIVED_STATUS};
use super::{
    AttemptRow, Claimed, ContactCandidate, DeliveryFilter, DeliveryRow, EventDetail, EventFilter, Forgotten, Gauges,
    IngestOutcome, Matching, NewEvent, NewQuarantined, QuarantineLimits, QuarantineOutcome, Quarantined, Retried,
    Settlement, StoreError, StoredEvent, TypeSeen,
};
use crate::store::Counts;
use readers::Readers;
use writer::Writer;

mod readers;
mod wal_buffer;
mod writer;

#[derive(Clone)]
pub struct SqliteStore {
    writer: Writer,
    path: PathBuf,
    /// Read-only WAL connections for the console's reads, so they never wait for (nor delay)
    /// the writer's group commits.
    readers: Readers,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SqliteStore({})", self.path.display())
    }
}

/// Bytes the WAL file is cut back to once it is reset: four times what the autocheckpoint (1,000
/// pages) lets it reach in steady operation, so only a burst's growth is ever truncated.
const WAL_SIZE_LIMIT: i64 = 16 * 1024 * 1024;

/// The schema, one step per file, applied in order once each (the files of both backends sit
/// side by side in `src/store/migrations/`, so their schemas can be compared).
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/sqlite/001_events_deliveries_attempts.sql"),
    include_str!("../migrations/sqlite/002_ordering_steps_oauth.sql"),
    include_str!("../migrations/sqlite/003_quarantine_totals_contact_index_attempt_detail.sql"),
    include_str!("../migrations/sqlite/004_field_coverage.sql"),
    include_str!("../migrations/sqlite/005_reconcile.sql"),
    include_str!("../migrations/sqlite/006_contacts_index.sql"),
    include_str!("../migrations/sqlite/007_dedup_on_the_event_row.sql"),
    include_str!("../migrations/sqlite/008_attempts_by_start.sql"),
    include_str!("../migrations/sqlite/009_delivered_attempt_on_the_delivery.sql"),
    include_str!("../migrations/sqlite/010_partial_status_indexes.sql"),
];

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let version: usize = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
        tx.execute_batch(sql)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", i + 1))?;
    }
    if version > MIGRATIONS.len() {
        return Err(StoreError::Invalid(format!(
            "the database schema (version {version}) is newer than this lbx-relay understands ({})",
            MIGRATIONS.len()
        )));
    }
    tx.commit()?;
    Ok(())
}

/// The purge's attempts, found from the purged events (through `deliveries_event`): joined the
/// other way round, SQLite read every row of `deliveries` on the writer each hour.
const PURGE_ATTEMPTS: &str =
    "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id IN (SELECT id FROM purge_ids))";

/// Leases up to `?4` deliveries due at `?3` to token `?1` until `?2`, the earliest first, skipping
/// the routes listed in `?5` (JSON) and any delivery queued behind a pending one of its order key.
const CLAIM: &str = "UPDATE deliveries SET lease_token = ?1, lease_until = ?2
     WHERE id IN (
        SELECT id FROM deliveries d
        WHERE status = 'pending' AND next_attempt_at <= ?3
          AND (lease_until IS NULL OR lease_until <= ?3)
          AND route NOT IN (SELECT value FROM json_each(?5))
          AND (order_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM deliveries h
                WHERE h.route = d.route AND h.order_key = d.order_key
                  AND h.status = 'pending' AND h.rowid < d.rowid))
        ORDER BY next_attempt_at, id LIMIT ?4)
     RETURNING id, event_id, route, tries, attempts, steps_state, order_key IS NOT NULL";

/// The console's deliveries, by id, of status `?1`, route `?2`, after id `?3`, `?4` at most.
fn list_deliveries_sql(status: Option<&str>) -> String {
    let (index, term) = crate::store::sqlite_by_status("status", status);
    format!(
        "SELECT id, event_id, route, status, attempts, last_status, last_error, next_attempt_at
         FROM deliveries{index}
         WHERE {term}(?1 IS NULL OR status = ?1) AND (?2 IS NULL OR route = ?2) AND (?3 IS NULL OR id > ?3)
         ORDER BY id LIMIT ?4"
    )
}

/// The statement that copies into dedup_keys the keys of the events listed in the temporary table
/// `ids` that are about to be deleted, those matching `keep` (a condition on `e.dedup_until`), so a
/// key is honoured for its whole window without its event.
fn keep_keys_of(ids: &str, keep: &str) -> String {
    format!(
        "INSERT INTO dedup_keys (source, event_key, event_id, expires_at)
         SELECT e.source, e.event_key, e.id, e.dedup_until FROM events e
         WHERE e.id IN (SELECT id FROM {ids}) AND {keep}
         ON CONFLICT (source, event_key) DO UPDATE SET event_id = excluded.event_id, expires_at = excluded.expires_at
         WHERE excluded.expires_at > dedup_keys.expires_at;"
    )
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, applies migrations and starts the writer;
    /// `synchronous = FULL`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_with(path, crate::config::SyncMode::Full)
    }

    /// The same, with `[store] sync`.
    pub fn open_with(path: &Path, sync: crate::config::SyncMode) -> Result<SqliteStore, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::failed(format!("cannot create {}", dir.display()), e))?;
        }
        // The writer's WAL writes are gathered until each commit frame (see wal_buffer).
        let vfs = wal_buffer::register()
            .inspect_err(|e| tracing::warn!(error = %e, "sqlite: WAL writes are not gathered"))
            .ok();
        let opened = match vfs {
            Some(vfs) => Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), vfs),
            None => Connection::open(path),
        };
        let mut conn = opened.map_err(|e| StoreError::failed(format!("cannot open {}", path.display()), e))?;
        // The file holds contacts and CRM answers: its owner only. SQLite gives its -wal and -shm
        // files the database file's mode; those left by an earlier run are narrowed too.
        {
            use std::os::unix::fs::PermissionsExt;
            for suffix in ["", "-wal", "-shm"] {
                let file = PathBuf::from(format!("{}{suffix}", path.display()));
                if std::fs::metadata(&file).is_ok_and(|m| m.permissions().mode() & 0o077 != 0) {
                    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).map_err(|e| {
                        StoreError::failed(format!("cannot make {} private (chmod 600)", file.display()), e)
                    })?;
                }
            }
        }
        conn.busy_timeout(Duration::from_secs(5))?;
        let corrupt = |detail: String| {
            StoreError::Invalid(format!(
                "{} is damaged ({detail}); the relay will not serve from it. Restore it from a backup, or move \
                 it aside (with its -wal file) to start on a new one",
                path.display()
            ))
        };
        let mode: String =
            conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).map_err(|e| corrupt(e.to_string()))?;
        // A damaged file would otherwise start and fail every claim with "malformed" forever.
        let problems: Vec<String> = conn
            .prepare("PRAGMA quick_check(5)")
            .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect())
            .map_err(|e| corrupt(e.to_string()))?;
        if problems.first().is_none_or(|p| p != "ok") {
            return Err(corrupt(format!("integrity check: {}", problems.join("; "))));
        }
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Invalid(format!("could not switch {} to WAL mode", path.display())));
        }
        // FULL (the default): an acknowledged event survives power loss, not only a process crash;
        // NORMAL in WAL survives a crash of the relay. secure_delete: what is deleted (an erased
        // contact) is overwritten, not left in free pages. journal_size_limit: a WAL grown by a
        // burst (or by a long console read holding back the checkpoint) is cut back to this size
        // when it is next reset, instead of keeping its peak size on disk until shutdown.
        let synchronous = match sync {
            crate::config::SyncMode::Full => "FULL",
            crate::config::SyncMode::Normal => "NORMAL",
        };
        conn.execute_batch(&format!(
            "PRAGMA synchronous = {synchronous}; PRAGMA temp_store = MEMORY; PRAGMA secure_delete = ON;
             PRAGMA journal_size_limit = {WAL_SIZE_LIMIT};"
        ))?;
        conn.set_prepared_statement_cache_capacity(64);
        migrate(&mut conn)?;
        // Checkpoints stay on the writer (SQLite's autocheckpoint, after a commit): a checkpoint
        // running beside a busy writer never catches up, and the WAL would then grow without end.
        let writer = Writer::start(conn, path)?;
        Ok(SqliteStore { writer, path: path.to_path_buf(), readers: Readers::new(path) })
    }

    /// Runs a read-only `f` on one of the read connections, off the writer.
    pub(in crate::store) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.readers.read(f).await
    }

    /// Runs `f` on the writer thread inside the current group transaction and answers once that
    /// transaction has committed. `f` may run twice: see `writer`.
    pub(in crate::store) async fn call<T: Send + 'static>(
        &self,
        f: impl Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.writer.call(f).await
    }

    /// Moves the WAL into the database file and empties it (`wal_checkpoint(TRUNCATE)`), from a
    /// connection of its own between the writer's transactions: after an erasure, the erased
    /// rows' old versions leave the WAL (and `secure_delete` has zeroed them in the file).
    pub async fn truncate_wal(&self) -> Result<(), StoreError> {
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = Connection::open(&path)?;
            conn.busy_timeout(Duration::from_secs(10))?;
            for _ in 0..20 {
                let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
                if busy == 0 {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(StoreError::Busy("the WAL could not be checkpointed: the database stayed busy".into()))
        })
        .await
        .map_err(|e| StoreError::failed("the checkpoint task", e))?
    }

    pub async fn ingest(&self, ev: NewEvent) -> Result<IngestOutcome, StoreError> {
        self.call(move |c| {
            // A key is live on the event row that claimed it (the single writer makes check-then-
            // insert safe), or in dedup_keys: written before schema 7, or its event purged or
            // erased inside its window.
            let mut live = c.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM events WHERE event_key = ?2 AND source = ?1 AND dedup_until > ?3)
                     OR EXISTS (SELECT 1 FROM dedup_keys WHERE source = ?1 AND event_key = ?2 AND expires_at > ?3)",
            )?;
            for key in std::iter::once(&ev.key).chain(&ev.alias) {
                if live.query_row(params![ev.source, key, ev.received_at], |r| r.get::<_, bool>(0))? {
                    return Ok(IngestOutcome::Duplicate);
                }
            }
            let status = if ev.deliveries.is_empty() { "unrouted" } else { "routed" };
            c.prepare_cached(
                "INSERT INTO events (id, source, event_key, kind, status, payload, received_at, email, origin, contacts,
                    dedup_until)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?
            .execute(params![
                ev.id,
                ev.source,
                ev.key,
                ev.kind,
                status,
                ev.payload,
                ev.received_at,
                ev.email,
                ev.origin,
                ev.contacts,
                ev.dedup_until
            ])?;
            let mut insert = c.prepare_cached(
                "INSERT INTO deliveries (id, event_id, route, status, next_attempt_at, created_at, updated_at, order_key,
                    lease_token, lease_until)
                 VALUES (?1, ?2, ?3, 'pending', ?4, ?6, ?6, ?5, ?7, ?8)",
            )?;
            for d in &ev.deliveries {
                // Queued behind a keyed head that waits for a retry: due no earlier than it.
                let due = match &d.order_key {
                    Some(key) => c
                        .prepare_cached(
                            "SELECT next_attempt_at FROM deliveries
                             WHERE route = ?1 AND order_key = ?2 AND status = 'pending' ORDER BY rowid LIMIT 1",
                        )?
                        .query_row(params![d.route, key], |r| r.get::<_, i64>(0))
                        .optional()?
                        .map_or(ev.received_at, |at| at.max(ev.received_at)),
                    None => ev.received_at,
                };
                let (token, until) = d.lease.as_ref().map(|l| (&l.token, l.until)).unzip();
                insert.execute(params![d.id, ev.id, d.route, due, d.order_key, ev.received_at, token, until])?;
            }
            Ok(IngestOutcome::Stored)
        })
        .await
    }

    pub async fn quarantine(
        &self,
        item: NewQuarantined,
        limits: QuarantineLimits,
    ) -> Result<QuarantineOutcome, StoreError> {
        self.call(move |c| {
            let size = item.size() as i64;
            let n = c
                .prepare_cached(
                    "INSERT INTO quarantine (source, received_at, headers, body, reason)
                     SELECT ?1, ?2, ?3, ?4, ?5 FROM quarantine_totals
                     WHERE id = 1 AND items < ?6 AND bytes + ?7 <= ?8",
                )?
                .execute(params![
                    item.source,
                    item.received_at,
                    item.headers,
                    item.body,
                    item.reason,
                    limits.max_items as i64,
                    size,
                    limits.max_bytes as i64
                ])?;
            Ok(if n == 1 { QuarantineOutcome::Stored } else { QuarantineOutcome::Full })
        })
        .await
    }

    pub async fn claim(
        &self,
        limit: usize,
        lease: Duration,
        skip_routes: Vec<String>,
        now: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let token = crate::event::new_id();
        let leased = token.clone();
        let rows = self
            .call(move |c| {
                let skip = serde_json::to_string(&skip_routes).unwrap_or_else(|_| "[]".into());
                let until = now + lease.as_millis() as i64;
                c.prepare_cached(CLAIM)?
                    .query_map(params![leased, until, now, limit as i64, skip], |r| {
                        Ok(ClaimedRow {
                            delivery_id: r.get(0)?,
                            event_id: r.get(1)?,
                            route: r.get(2)?,
                            tries: r.get(3)?,
                            attempts: r.get(4)?,
                            steps_state: r.get(5)?,
                            keyed: r.get(6)?,
                        })
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()
            })
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        // The events were committed before the claim: they are read off the writer, so a claim
        // holds up the ingest group commits only for its update.
        self.read(move |c| {
            let mut get_event = c.prepare_cached(
                "SELECT id, source, event_key, kind, status, payload, received_at FROM events WHERE id = ?1",
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                // An event erased (or purged) since the claim took its delivery: both went in one
                // transaction, so there is nothing left to send.
                let Some(event) = get_event.query_row([&row.event_id], event_from_row).optional()? else { continue };
                out.push(Claimed {
                    delivery_id: row.delivery_id,
                    route: row.route,
                    lease_token: token.clone(),
                    tries: row.tries,
                    attempts: row.attempts,
                    event,
                    steps_state: row.steps_state,
                    keyed: row.keyed,
                    data: None,
                });
            }
            Ok(out)
        })
        .await
    }

    pub async fn settle(&self, s: Settlement) -> Result<bool, StoreError> {
        self.call(move |c| {
            let now = s.settled_at;
            let (status, next_at, try_used) = s.next.columns();
            // The attempt that delivers is kept on the row itself (see migration 9): one update.
            let on_row = s.kept_on_row();
            let (ok_at, ok_ms, ok_detail) = if on_row {
                (Some(s.attempt.started_at), Some(s.attempt.duration_ms), s.attempt.detail.as_deref())
            } else {
                (None, None, None)
            };
            let changed = c
                .prepare_cached(
                    "UPDATE deliveries SET status = ?1, next_attempt_at = ?2, attempts = attempts + 1,
                        tries = tries + ?8, lease_token = NULL, lease_until = NULL,
                        last_status = ?3, last_error = ?4, updated_at = ?5, steps_state = ?9,
                        ok_started_at = ?10, ok_duration_ms = ?11, ok_detail = ?12
                     WHERE id = ?6 AND lease_token = ?7",
                )?
                .execute(params![
                    status.as_str(),
                    next_at,
                    s.attempt.status,
                    s.attempt.error,
                    now,
                    s.delivery_id,
                    s.lease_token,
                    try_used,
                    s.steps_state,
                    ok_at,
                    ok_ms,
                    ok_detail
                ])?;
            if changed == 1 && on_row {
                return Ok(true);
            }
            // A keyed head that waits for a retry parks the deliveries queued behind it until then:
            // claims then skip them through the due index instead of scanning a blocked backlog.
            if let (1, Some(at), true) = (changed, next_at.filter(|_| status == DeliveryStatus::Pending), s.keyed) {
                let key: Option<(String, Option<String>, i64)> = c
                    .prepare_cached("SELECT route, order_key, rowid FROM deliveries WHERE id = ?1")?
                    .query_row([&s.delivery_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                if let Some((route, Some(order_key), rowid)) = key {
                    c.prepare_cached(
                        "UPDATE deliveries SET next_attempt_at = ?1
                         WHERE route = ?2 AND order_key = ?3 AND status = 'pending' AND rowid > ?4
                           AND next_attempt_at < ?1",
                    )?
                    .execute(params![at, route, order_key, rowid])?;
                }
            }
            let outcome = if changed == 1 { s.next.outcome() } else { AttemptOutcome::LeaseLost }.as_str();
            c.prepare_cached(
                "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status, error, outcome, detail)
                 VALUES (?1, (SELECT attempts FROM deliveries WHERE id = ?1), ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![
                s.delivery_id,
                s.attempt.started_at,
                s.attempt.duration_ms,
                s.attempt.status,
                s.attempt.error,
                outcome,
                s.attempt.detail
            ])?;
            Ok(changed == 1)
        })
        .await
    }

    /// Sets `set` (its value is `?1`) on delivery `id` if `lease_token` still holds its lease;
    /// `false` when the lease was lost.
    async fn under_lease(
        &self,
        set: &'static str,
        value: rusqlite::types::Value,
        id: String,
        lease_token: String,
    ) -> Result<bool, StoreError> {
        self.call(move |c| {
            let sql = format!("UPDATE deliveries SET {set} WHERE id = ?2 AND lease_token = ?3");
            Ok(c.prepare_cached(&sql)?.execute(params![value, id, lease_token])? == 1)
        })
        .await
    }

    pub async fn save_steps_state(
        &self,
        delivery_id: String,
        lease_token: String,
        state: String,
    ) -> Result<bool, StoreError> {
        self.under_lease("steps_state = ?1", state.into(), delivery_id, lease_token).await
    }

    pub async fn extend_lease(&self, delivery_id: String, lease_token: String, until: i64) -> Result<bool, StoreError> {
        self.under_lease("lease_until = ?1", until.into(), delivery_id, lease_token).await
    }

    pub async fn defer(&self, delivery_id: String, lease_token: String, at: i64) -> Result<bool, StoreError> {
        let set = "next_attempt_at = ?1, lease_token = NULL, lease_until = NULL";
        self.under_lease(set, at.into(), delivery_id, lease_token).await
    }

    pub async fn oauth_refresh_token(&self, key: String) -> Result<Option<String>, StoreError> {
        self.call(move |c| {
            c.prepare_cached("SELECT refresh_token FROM oauth_tokens WHERE key = ?1")?
                .query_row([&key], |r| r.get(0))
                .optional()
        })
        .await
    }

    pub async fn save_oauth_refresh_token(&self, key: String, token: String, now: i64) -> Result<(), StoreError> {
        self.call(move |c| {
            c.prepare_cached(
                "INSERT INTO oauth_tokens (key, refresh_token, updated_at) VALUES (?1, ?2, ?3)
                 ON CONFLICT (key) DO UPDATE SET refresh_token = excluded.refresh_token, updated_at = excluded.updated_at",
            )?
            .execute(params![key, token, now])?;
            Ok(())
        })
        .await
    }

    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.call(|c| {
            c.query_row(
                "SELECT MIN(CASE WHEN lease_until > next_attempt_at THEN lease_until ELSE next_attempt_at END)
                 FROM deliveries WHERE status = 'pending'",
                [],
                |r| r.get(0),
            )
        })
        .await
    }

    pub async fn list_deliveries(&self, f: DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        let sql = list_deliveries_sql(f.status.as_deref());
        self.read(move |c| {
            let mut stmt = c.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params![f.status, f.route, f.after, f.limit], delivery_from_row)?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(rows)
        })
        .await
    }

    pub async fn delivery_route(&self, id: String) -> Result<Option<String>, StoreError> {
        self.read(move |c| {
            c.prepare_cached("SELECT route FROM deliveries WHERE id = ?1")?.query_row([id], |r| r.get(0)).optional()
        })
        .await
    }

    pub async fn retry_one(&self, id: String, now: i64) -> Result<Retried, StoreError> {
        self.call(move |c| {
            let filter = "id = ?2 AND (lease_until IS NULL OR lease_until <= ?1)";
            let kept = crate::store::keep_delivered_attempts(&format!("(SELECT * FROM deliveries WHERE {filter})"));
            c.prepare_cached(&kept)?.execute(params![now, id])?;
            let n = c
                .prepare_cached(&format!(
                    "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = ?1, updated_at = ?1,
                        steps_state = CASE WHEN status = 'delivered' THEN NULL ELSE steps_state END, {}
                     WHERE {filter}",
                    crate::store::DELIVERED_ATTEMPT_MOVED
                ))?
                .execute(params![now, id])?;
            if n == 0 {
                let exists: i64 = c
                    .prepare_cached("SELECT COUNT(*) FROM deliveries WHERE id = ?1")?
                    .query_row([&id], |r| r.get(0))?;
                return Ok(if exists > 0 { Retried::InFlight } else { Retried::Missing });
            }
            if n > 0 {
                // Retrying a keyed head now releases what was parked behind its old retry time.
                c.prepare_cached(
                    "UPDATE deliveries SET next_attempt_at = ?1
                     WHERE route = (SELECT route FROM deliveries WHERE id = ?2)
                       AND order_key = (SELECT order_key FROM deliveries WHERE id = ?2)
                       AND status = 'pending' AND next_attempt_at > ?1",
                )?
                .execute(params![now, id])?;
            }
            Ok(Retried::Yes)
        })
        .await
    }

    pub async fn retry_matching(&self, f: RetryFilter, dry_run: bool, now: i64) -> Result<u64, StoreError> {
        let (_, indexed) = crate::store::sqlite_by_status("status", f.status.as_deref());
        self.call(move |c| {
            // One in flight (leased) is left to its attempt: its settlement would overwrite the retry.
            let filter = &format!("{indexed}(lease_until IS NULL OR lease_until <= ?1) AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR route = ?3)
                 AND ((?4 IS NULL AND ?5 IS NULL AND ?6 IS NULL) OR event_id IN (SELECT e.id FROM events e
                      WHERE (?4 IS NULL OR e.kind GLOB ?4) AND (?5 IS NULL OR e.received_at >= ?5)
                        AND (?6 IS NULL OR e.received_at < ?6)))");
            let n = if dry_run {
                c.prepare_cached(&format!("SELECT COUNT(*) FROM deliveries WHERE ?1 IS NOT NULL AND {filter}"))?
                    .query_row(params![now, f.status, f.route, f.kind, f.since, f.until], |r| r.get::<_, i64>(0))?
                    as usize
            } else {
                let args = params![now, f.status, f.route, f.kind, f.since, f.until];
                let kept = crate::store::keep_delivered_attempts(&format!("(SELECT * FROM deliveries WHERE {filter})"));
                c.prepare_cached(&kept)?.execute(args)?;
                c.prepare_cached(&format!(
                    "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = ?1, updated_at = ?1,
                        steps_state = CASE WHEN status = 'delivered' THEN NULL ELSE steps_state END, {}
                     WHERE {filter}",
                    crate::store::DELIVERED_ATTEMPT_MOVED
                ))?
                .execute(args)?
            };
            Ok(n as u64)
        })
        .await
    }

    pub async fn pending_per_route(&self) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(|c| {
            c.prepare_cached("SELECT route, COUNT(*) FROM deliveries WHERE status = 'pending' GROUP BY route")?
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect()
        })
        .await
    }

    pub async fn queue_depth(&self) -> Result<i64, StoreError> {
        self.read(|c| c.query_row("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'", [], |r| r.get(0))).await
    }

    /// Commits a one-row write: fails while writes fail (disk full, file deleted), not only when
    /// the file cannot be read.
    pub async fn ping(&self, probe_bytes: usize, now: i64) -> Result<(), StoreError> {
        self.call(move |c| {
            c.prepare_cached(
                "INSERT INTO heartbeat (id, at, probe) VALUES (1, ?1, zeroblob(?2))
                 ON CONFLICT (id) DO UPDATE SET at = excluded.at, probe = excluded.probe",
            )?
            .execute(params![now, probe_bytes as i64])
            .map(|_| ())
        })
        .await
    }

    /// The stored event with `id` (used by tests and the API).
    pub async fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            c.query_row(
                "SELECT id, source, event_key, kind, status, payload, received_at FROM events WHERE id = ?1",
                [id],
                event_from_row,
            )
            .optional()
        })
        .await
    }
    pub async fn list_events(
        &self,
        after: Option<String>,
        limit: u32,
        newest_first: bool,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(if newest_first {
                "SELECT id, source, event_key, kind, status, payload, received_at FROM events
                 WHERE (?1 IS NULL OR id < ?1) ORDER BY id DESC LIMIT ?2"
            } else {
                "SELECT id, source, event_key, kind, status, payload, received_at FROM events
                 WHERE (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2"
            })?
            .query_map(params![after, limit], event_from_row)?
            .collect()
        })
        .await
    }

    pub async fn find_events(
        &self,
        f: EventFilter,
        emails: Option<Vec<String>>,
        sealed: bool,
    ) -> Result<(Vec<StoredEvent>, Matching), StoreError> {
        self.read(move |c| {
            let text_filter = if sealed {
                "(?10 IS NULL OR lower(e.kind) LIKE ?10 || '%' ESCAPE '\\')".to_string()
            } else {
                let names: Vec<String> = crate::store::NAME_FIELDS
                    .iter()
                    .map(|f| {
                        format!(
                            "lower(CASE WHEN json_valid(e.payload) THEN json_extract(e.payload, '$.data.contact.{f}') END)
                             LIKE ?10 || '%' ESCAPE '\\'"
                        )
                    })
                    .collect();
                format!(
                    "(?10 IS NULL OR lower(e.kind) LIKE ?10 || '%' ESCAPE '\\' OR e.email LIKE ?10 || '%' ESCAPE '\\'
                      OR {})",
                    names.join(" OR ")
                )
            };
            let emails = emails.map(|e| serde_json::to_string(&e).unwrap_or_else(|_| "[]".into()));
            let filter = format!(
                "(?1 IS NULL OR e.kind GLOB ?1) AND (?2 IS NULL OR ({DERIVED_STATUS}) = ?2)
                 AND (?3 IS NULL OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.route = ?3))
                 AND (?4 IS NULL OR e.email IN (SELECT value FROM json_each(?4)))
                 AND (?5 IS NULL OR e.event_key = ?5)
                 AND (?6 IS NULL OR e.received_at >= ?6) AND (?7 IS NULL OR e.received_at < ?7)
                 AND {text_filter}"
            );
            let counted: i64 = c
                .prepare_cached(&format!(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM events e WHERE {filter} AND ?8 IS NULL AND ?9 IS NULL LIMIT {})",
                    COUNT_CAP + 1
                ))?
                .query_row(
                    params![f.kind, f.status, f.route, emails, f.key, f.since, f.until, None::<String>, None::<u32>, f.text],
                    |r| r.get(0),
                )?;
            let (cmp, order) = if f.newest_first { ("<", "DESC") } else { (">", "ASC") };
            let sql = format!(
                "SELECT e.id, e.source, e.event_key, e.kind, {DERIVED_STATUS}, e.payload, e.received_at FROM events e
                 WHERE {filter} AND (?8 IS NULL OR e.id {cmp} ?8) ORDER BY e.id {order} LIMIT ?9"
            );
            let events = c
                .prepare_cached(&sql)?
                .query_map(
                    params![f.kind, f.status, f.route, emails, f.key, f.since, f.until, f.after, f.limit, f.text],
                    event_from_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let counted = counted as u64;
            Ok((events, Matching { total: counted.min(COUNT_CAP), exact: counted <= COUNT_CAP }))
        })
        .await
    }

    /// An event with its deliveries and every attempt of each.
    pub async fn event_detail(&self, id: &str) -> Result<Option<EventDetail>, StoreError> {
        let id = id.to_string();
        self.read(move |c| {
            let Some((event, origin)) = c
                .query_row(
                    "SELECT id, source, event_key, kind, status, payload, received_at, origin FROM events WHERE id = ?1",
                    [&id],
                    |r| Ok((event_from_row(r)?, r.get::<_, Option<String>>(7)?)),
                )
                .optional()?
            else {
                return Ok(None);
            };
            let deliveries: Vec<DeliveryRow> = c
                .prepare_cached(
                    "SELECT id, event_id, route, status, attempts, last_status, last_error, next_attempt_at
                     FROM deliveries WHERE event_id = ?1 ORDER BY id",
                )?
                .query_map([&id], delivery_from_row)?
                .collect::<rusqlite::Result<_>>()?;
            let mut attempts = Vec::new();
            let mut stmt = c.prepare_cached(
                "SELECT delivery_id, attempt, started_at, duration_ms, status, error, outcome, detail
                 FROM attempt_log WHERE delivery_id = ?1 ORDER BY id IS NULL, id",
            )?;
            for d in &deliveries {
                let rows = stmt.query_map([&d.id], |r| {
                    Ok(AttemptRow {
                        delivery_id: r.get(0)?,
                        attempt: r.get(1)?,
                        started_at: r.get(2)?,
                        duration_ms: r.get(3)?,
                        status: r.get(4)?,
                        error: r.get(5)?,
                        outcome: r.get(6)?,
                        detail: r.get(7)?,
                    })
                })?;
                for a in rows {
                    attempts.push(a?);
                }
            }
            Ok(Some(EventDetail { event, origin, deliveries, attempts }))
        })
        .await
    }

    pub async fn list_quarantine(&self, after: Option<i64>, limit: u32) -> Result<Vec<Quarantined>, StoreError> {
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, source, received_at, headers, body, reason FROM quarantine
                 WHERE (?1 IS NULL OR id > ?1) ORDER BY id LIMIT ?2",
            )?
            .query_map(params![after, limit], |r| {
                Ok(Quarantined {
                    id: r.get(0)?,
                    source: r.get(1)?,
                    received_at: r.get(2)?,
                    headers: r.get(3)?,
                    body: r.get(4)?,
                    reason: r.get(5)?,
                })
            })?
            .collect()
        })
        .await
    }

    pub async fn delete_quarantined(&self, id: i64) -> Result<(), StoreError> {
        self.call(move |c| c.execute("DELETE FROM quarantine WHERE id = ?1", [id]).map(|_| ())).await
    }

    pub async fn update_quarantine_reason(&self, id: i64, reason: String) -> Result<(), StoreError> {
        self.call(move |c| {
            c.execute("UPDATE quarantine SET reason = ?2 WHERE id = ?1", params![id, reason]).map(|_| ())
        })
        .await
    }

    /// Deletes events older than `before` whose deliveries are all delivered (or that had none),
    /// with their deliveries and attempts, and dedup keys that have expired; a purged event's key
    /// that is still live moves to dedup_keys.
    pub async fn purge(&self, before: i64, now: i64) -> Result<u64, StoreError> {
        self.call(move |c| {
            c.execute_batch(&format!(
                "CREATE TEMP TABLE IF NOT EXISTS purge_ids (id TEXT PRIMARY KEY);
                 DELETE FROM purge_ids;
                 INSERT INTO purge_ids SELECT e.id FROM events e WHERE e.received_at < {before}
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status <> 'delivered');
                 {keep}
                 {PURGE_ATTEMPTS};
                 DELETE FROM deliveries WHERE event_id IN (SELECT id FROM purge_ids);
                 DELETE FROM dedup_keys WHERE expires_at <= {now};",
                keep = keep_keys_of("purge_ids", &format!("e.dedup_until > {now}"))
            ))?;
            let n = c.execute("DELETE FROM events WHERE id IN (SELECT id FROM purge_ids)", [])?;
            c.execute_batch("DELETE FROM purge_ids;")?;
            Ok(n as u64)
        })
        .await
    }

    /// Events that may name a contact: its contact index value, or `needle` (lower-case ASCII)
    /// anywhere in the payload. The caller decides which really do.
    pub async fn contact_candidates(
        &self,
        needle: String,
        index: Vec<String>,
    ) -> Result<Vec<ContactCandidate>, StoreError> {
        let index = serde_json::to_string(&index).unwrap_or_else(|_| "[]".into());
        self.read(move |c| {
            let mut stmt = c.prepare(
                "SELECT e.id, e.kind, e.received_at, e.payload, e.event_key,
                        e.email IN (SELECT value FROM json_each(?2)) OR EXISTS (SELECT 1 FROM json_each(?2) j
                            WHERE instr(' ' || e.contacts || ' ', ' ' || j.value || ' ') > 0),
                        (SELECT COUNT(*) FROM deliveries d WHERE d.event_id = e.id),
                        (SELECT COUNT(*) FROM attempts a JOIN deliveries d ON a.delivery_id = d.id
                          WHERE d.event_id = e.id)
                        + (SELECT COUNT(*) FROM deliveries d WHERE d.event_id = e.id AND d.ok_started_at IS NOT NULL)
                 FROM events e
                 WHERE e.email IN (SELECT value FROM json_each(?2)) OR instr(lower(e.payload), ?1) > 0
                    OR (e.contacts IS NOT NULL AND EXISTS (SELECT 1 FROM json_each(?2) j
                        WHERE instr(' ' || e.contacts || ' ', ' ' || j.value || ' ') > 0))
                 ORDER BY e.received_at, e.id",
            )?;
            let rows = stmt.query_map(rusqlite::params![needle, index], |r| {
                Ok(ContactCandidate {
                    id: r.get(0)?,
                    kind: r.get(1)?,
                    received_at: r.get(2)?,
                    payload: r.get(3)?,
                    key: r.get(4)?,
                    indexed: r.get::<_, Option<bool>>(5)?.unwrap_or(false),
                    deliveries: r.get::<_, i64>(6)? as u64,
                    attempts: r.get::<_, i64>(7)? as u64,
                })
            })?;
            rows.collect()
        })
        .await
    }

    /// Deletes these events with their deliveries and attempts, in one transaction.
    pub async fn delete_events(&self, ids: Vec<String>) -> Result<Forgotten, StoreError> {
        let ids = serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into());
        self.call(move |c| {
            c.execute_batch(
                "CREATE TEMP TABLE IF NOT EXISTS forget_ids (id TEXT PRIMARY KEY); DELETE FROM forget_ids;",
            )?;
            c.execute("INSERT OR IGNORE INTO forget_ids SELECT value FROM json_each(?1)", [&ids])?;
            // A Learnybox retry of an erased event must not bring the contact back: its key stays.
            c.execute_batch(&keep_keys_of("forget_ids", "e.dedup_until IS NOT NULL"))?;
            let attempts = c.execute(
                "DELETE FROM attempts WHERE delivery_id IN
                    (SELECT id FROM deliveries WHERE event_id IN (SELECT id FROM forget_ids))",
                [],
            )? as u64;
            // A delivery's row also holds the attempt that delivered it (migration 9).
            let (deliveries, on_rows) = c
                .prepare(
                    "DELETE FROM deliveries WHERE event_id IN (SELECT id FROM forget_ids)
                     RETURNING ok_started_at IS NOT NULL",
                )?
                .query_map([], |r| r.get::<_, bool>(0))?
                .try_fold((0u64, 0u64), |(n, on_row), kept| {
                    Ok::<_, rusqlite::Error>((n + 1, on_row + u64::from(kept?)))
                })?;
            let events = c.execute("DELETE FROM events WHERE id IN (SELECT id FROM forget_ids)", [])? as u64;
            c.execute_batch("DELETE FROM forget_ids;")?;
            Ok(Forgotten { events, deliveries, attempts: attempts + on_rows, quarantined: 0 })
        })
        .await
    }

    /// Numbers for the gauges: (quarantined bodies, oldest due pending delivery's due time).
    pub async fn gauges(&self) -> Result<Gauges, StoreError> {
        self.read(|c| {
            let queue_depth =
                c.query_row("SELECT COUNT(*) FROM deliveries WHERE status = 'pending'", [], |r| r.get(0))?;
            let (quarantined, quarantined_bytes) =
                c.query_row("SELECT items, bytes FROM quarantine_totals WHERE id = 1", [], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })?;
            let failed = c.query_row("SELECT COUNT(*) FROM deliveries WHERE status = 'failed'", [], |r| r.get(0))?;
            let oldest_pending_at =
                c.query_row("SELECT MIN(created_at) FROM deliveries WHERE status = 'pending'", [], |r| r.get(0))?;
            Ok(Gauges { queue_depth, quarantined, quarantined_bytes, failed, oldest_pending_at })
        })
        .await
    }

    /// The newest event time of each of `sources` (for the silence alert after a restart). One
    /// streaming aggregate per source: a GROUP BY would build a temporary tree over every event.
    pub async fn load_coverage(&self) -> Result<Vec<(String, String, Counts)>, StoreError> {
        self.read(|c| {
            let mut stmt =
                c.prepare("SELECT route, path, present, empty, absent, absent_streak FROM field_coverage")?;
            let rows = stmt.query_map([], |r| {
                let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                Ok((r.get(0)?, r.get(1)?, Counts { present: n(2)?, empty: n(3)?, absent: n(4)?, absent_streak: n(5)? }))
            })?;
            rows.collect()
        })
        .await
    }

    pub async fn save_coverage(&self, rows: Vec<(String, String, Counts)>) -> Result<(), StoreError> {
        self.call(move |c| {
            let mut stmt = c.prepare_cached(
                "INSERT INTO field_coverage (route, path, present, empty, absent, absent_streak)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (route, path) DO UPDATE SET present = excluded.present, empty = excluded.empty,
                    absent = excluded.absent, absent_streak = excluded.absent_streak",
            )?;
            for (route, path, n) in &rows {
                let v = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
                stmt.execute(params![route, path, v(n.present), v(n.empty), v(n.absent), v(n.absent_streak)])?;
            }
            Ok(())
        })
        .await
    }

    /// Every (source, type) stored, with its count, first and last arrival, the routes its
    /// deliveries went to, and the payload of its newest event.
    pub async fn event_types(&self) -> Result<Vec<TypeSeen>, StoreError> {
        self.read(|c| {
            let mut stmt = c.prepare(
                "SELECT source, kind, COUNT(*), MIN(received_at), MAX(received_at) FROM events
                 GROUP BY source, kind ORDER BY source, kind",
            )?;
            let mut types: Vec<TypeSeen> = stmt
                .query_map([], |r| {
                    Ok(TypeSeen {
                        source: r.get(0)?,
                        kind: r.get(1)?,
                        count: r.get::<_, i64>(2)? as u64,
                        first_seen: r.get(3)?,
                        last_seen: r.get(4)?,
                        routes: Vec::new(),
                        recent_payload: None,
                    })
                })?
                .collect::<rusqlite::Result<_>>()?;
            let mut routes = c.prepare(
                "SELECT DISTINCT d.route FROM deliveries d JOIN events e ON d.event_id = e.id
                 WHERE e.source = ?1 AND e.kind = ?2 ORDER BY d.route",
            )?;
            let mut recent = c.prepare(
                "SELECT payload FROM events WHERE source = ?1 AND kind = ?2 ORDER BY received_at DESC LIMIT 1",
            )?;
            for t in &mut types {
                t.routes = routes.query_map([&t.source, &t.kind], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
                t.recent_payload = recent.query_row([&t.source, &t.kind], |r| r.get(0)).optional()?;
            }
            Ok(types)
        })
        .await
    }

    pub async fn last_event_per_source(&self, sources: Vec<String>) -> Result<Vec<(String, i64)>, StoreError> {
        self.read(move |c| {
            let mut stmt = c.prepare_cached("SELECT MAX(received_at) FROM events WHERE source = ?1")?;
            let mut out = Vec::new();
            for source in sources {
                if let Some(at) = stmt.query_row([&source], |r| r.get::<_, Option<i64>>(0))? {
                    out.push((source, at));
                }
            }
            Ok(out)
        })
        .await
    }
}

impl rusqlite::types::FromSql for DeliveryStatus {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let text = v.as_str()?;
        DeliveryStatus::parse(text)
            .ok_or_else(|| rusqlite::types::FromSqlError::Other(format!("unknown delivery status {text:?}").into()))
    }
}

impl rusqlite::types::FromSql for AttemptOutcome {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Ok(AttemptOutcome::parse(v.as_str()?))
    }
}

fn delivery_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<DeliveryRow> {
    Ok(DeliveryRow {
        id: r.get(0)?,
        event_id: r.get(1)?,
        route: r.get(2)?,
        status: r.get(3)?,
        attempts: r.get(4)?,
        last_status: r.get(5)?,
        last_error: r.get(6)?,
        next_attempt_at: r.get(7)?,
    })
}

/// A delivery the claim leased, before its event is read.
struct ClaimedRow {
    delivery_id: String,
    event_id: String,
    route: String,
    tries: u32,
    attempts: u32,
    steps_state: Option<String>,
    keyed: bool,
}

fn event_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        id: r.get(0)?,
        source: r.get(1)?,
        key: r.get(2)?,
        kind: r.get(3)?,
        status: r.get(4)?,
        payload: r.get(5)?,
        received_at: r.get(6)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::NewEvent;

    fn event(id: &str, key: &str, at: i64, routes: &[&str]) -> NewEvent {
        NewEvent {
            origin: None,
            alias: None,
            contacts: None,
            id: id.into(),
            source: "s".into(),
            key: key.into(),
            kind: "k".into(),
            payload: "{}".into(),
            received_at: at,
            email: None,
            dedup_until: at + 1000,
            deliveries: routes
                .iter()
                .map(|r| crate::store::NewDelivery {
                    id: format!("{id}-{r}"),
                    route: r.to_string(),
                    order_key: None,
                    lease: None,
                })
                .collect(),
        }
    }

    /// A writer operation that waits until `release` is sent, the first time it runs: a batch run
    /// again after another operation failed does not wait a second time.
    fn held_once() -> (std::sync::mpsc::Sender<()>, impl Fn(&Connection) -> rusqlite::Result<bool> + Send + 'static) {
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = std::sync::Mutex::new(Some(held));
        (release, move |_: &Connection| Ok(held.lock().unwrap().take().is_none_or(|h| h.recv().is_ok())))
    }

    /// Holds the writer inside a transaction until `release` is sent.
    fn hold_writer(
        s: &SqliteStore,
    ) -> (std::sync::mpsc::Sender<()>, impl std::future::Future<Output = Result<bool, StoreError>> + '_) {
        let (release, held) = held_once();
        (release, s.call(held))
    }

    #[tokio::test]
    async fn a_failing_operation_does_not_undo_the_others_in_its_batch() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        // The writer is held until all three are queued, so they run as one batch: two events
        // whose deliveries share an id (the second fails after writing its event row) and a good
        // one.
        let clashing = |id: &str, key: &str| {
            let mut e = event(id, key, 0, &["r"]);
            e.deliveries[0].id = "same-delivery".into();
            e
        };
        let (release, hold) = hold_writer(&s);
        let (held_ok, a, b, c, ()) = tokio::join!(
            hold,
            s.ingest(clashing("x1", "k1")),
            s.ingest(clashing("x2", "k2")),
            s.ingest(event("other", "k3", 0, &["r"])),
            async { release.send(()).unwrap() }
        );
        assert!(held_ok.unwrap());
        assert!(a.is_ok() != b.is_ok(), "exactly one of the clashing writes fails: {a:?} {b:?}");
        assert_eq!(a.or(b).unwrap(), IngestOutcome::Stored);
        assert_eq!(c.unwrap(), IngestOutcome::Stored);
        assert_eq!(s.queue_depth().await.unwrap(), 2);
        let keys: Vec<String> = s.list_events(None, 10, false).await.unwrap().into_iter().map(|e| e.key).collect();
        assert_eq!(keys.len(), 2, "the failed one left no event row: {keys:?}");
        assert!(keys.contains(&"k3".to_string()));
    }

    #[tokio::test]
    async fn a_batch_run_again_after_a_failure_answers_what_it_committed() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        // One batch: an event, a retry of it (a duplicate only because the first is in the same
        // transaction), an operation that writes then fails, and the event's key again. The batch
        // runs a first time, fails at the third operation, is rolled back and runs again: every
        // answer must come from that second run, the one that committed.
        let (release, hold) = hold_writer(&s);
        let half_written = s.call(|c| {
            c.execute(
                "INSERT INTO quarantine (source, received_at, headers, body, reason) VALUES ('s', 0, '{}', x'00', 'r')",
                [],
            )?;
            c.execute("INSERT INTO no_such_table VALUES (1)", []).map(|_| ())
        });
        let retry = || {
            let mut e = event("second", "k1", 0, &["r"]);
            e.deliveries[0].id = "second-d".into();
            e
        };
        let (held_ok, first, second, failed, third, ()) = tokio::join!(
            hold,
            s.ingest(event("first", "k1", 0, &["r"])),
            s.ingest(retry()),
            half_written,
            s.ingest(event("third", "k1", 0, &["r"])),
            async { release.send(()).unwrap() }
        );
        assert!(held_ok.unwrap());
        assert_eq!(first.unwrap(), IngestOutcome::Stored);
        assert_eq!(second.unwrap(), IngestOutcome::Duplicate);
        assert!(failed.is_err());
        assert_eq!(third.unwrap(), IngestOutcome::Duplicate);
        let stored: Vec<String> = s.list_events(None, 10, false).await.unwrap().into_iter().map(|e| e.id).collect();
        assert_eq!(stored, ["first"], "one event row, from the committed run");
        let quarantined: i64 =
            s.call(|c| c.query_row("SELECT count(*) FROM quarantine", [], |r| r.get(0))).await.unwrap();
        assert_eq!(quarantined, 0, "the failed operation's first write was undone with it");
        assert_eq!(s.queue_depth().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn store_sync_sets_what_sqlite_does_before_an_acknowledgement() {
        let dir = tempfile::tempdir().unwrap();
        for (mode, expected) in [(crate::config::SyncMode::Full, 2), (crate::config::SyncMode::Normal, 1)] {
            let s = SqliteStore::open_with(&dir.path().join(format!("{expected}.db")), mode).unwrap();
            let got: i64 = s.call(|c| c.query_row("PRAGMA synchronous", [], |r| r.get(0))).await.unwrap();
            assert_eq!(got, expected, "{mode:?}");
            let deleting: i64 = s.call(|c| c.query_row("PRAGMA secure_delete", [], |r| r.get(0))).await.unwrap();
            assert_eq!(deleting, 1, "erased rows are overwritten");
        }
    }

    #[test]
    fn the_bundled_sqlite_is_built_with_the_flags_of_cargo_config() {
        // .cargo/config.toml passes LIBSQLITE3_FLAGS (fdatasync, no allocation statistics, a page
        // cache per connection) to the build of the bundled SQLite; SQLite lists two of them.
        let conn = Connection::open_in_memory().unwrap();
        let options: Vec<String> = conn
            .prepare("PRAGMA compile_options")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert!(options.iter().any(|o| o == "DEFAULT_MEMSTATUS=0"), "{options:?}");
        assert!(!options.iter().any(|o| o == "ENABLE_MEMORY_MANAGEMENT"), "{options:?}");
    }

    /// The plan SQLite makes for `sql` (its parameters NULL), one line per step.
    fn plan_of(c: &Connection, sql: &str) -> rusqlite::Result<Vec<String>> {
        let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
        let nulls = rusqlite::params_from_iter(std::iter::repeat_n(rusqlite::types::Null, stmt.parameter_count()));
        let plan = stmt.query_map(nulls, |r| r.get(3))?.collect();
        plan
    }

    #[tokio::test]
    async fn pending_and_failed_deliveries_are_found_by_their_partial_indexes_among_many_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        // 50,000 delivered deliveries, three pending (two due at 50) and two failed. The queue and
        // the dead letters are read through their partial indexes, not by reading every delivery.
        s.call(|c| {
            c.execute_batch(
                "INSERT INTO events (id, source, event_key, kind, status, payload, received_at)
                     VALUES ('e', 's', 'k', 'k', 'routed', '{}', 0);
                 WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 50000)
                 INSERT INTO deliveries (id, event_id, route, status, created_at, updated_at)
                     SELECT printf('d%06d', i), 'e', 'r', 'delivered', 0, 0 FROM n;
                 INSERT INTO deliveries (id, event_id, route, status, next_attempt_at, created_at, updated_at) VALUES
                     ('p1', 'e', 'r', 'pending', 10, 1, 0), ('p2', 'e', 'r', 'pending', 20, 2, 0),
                     ('p3', 'e', 'r', 'pending', 99999, 3, 0),
                     ('f1', 'e', 'r', 'failed', NULL, 0, 0), ('f2', 'e', 'r', 'failed', NULL, 0, 0);",
            )
        })
        .await
        .unwrap();

        let statements = [
            ("claim", CLAIM.to_string(), "deliveries_due"),
            ("dead letters", list_deliveries_sql(Some("failed")), "deliveries_failed"),
            ("failed triage", crate::store::triage::sqlite_chunk_sql("failed"), "deliveries_failed"),
        ];
        for (name, sql, index) in statements {
            let plan = s.call(move |c| plan_of(c, &sql)).await.unwrap();
            assert!(plan.iter().any(|p| p.contains(index)), "{name} does not use {index}: {plan:?}");
            let scans: Vec<&String> = plan
                .iter()
                .filter(|p| p.starts_with("SCAN") && !p.contains(index) && !p.contains("VIRTUAL TABLE"))
                .collect();
            assert!(scans.is_empty(), "{name} reads a table whole: {plan:?}");
        }

        // And they answer what the store holds.
        let g = s.gauges().await.unwrap();
        assert_eq!((g.queue_depth, g.failed, g.oldest_pending_at), (3, 2, Some(1)));
        assert_eq!(s.next_due().await.unwrap(), Some(10));
        for (status, ids) in [("failed", vec!["f1", "f2"]), ("pending", vec!["p1", "p2", "p3"])] {
            let f = DeliveryFilter { status: Some(status.into()), route: None, after: None, limit: 10 };
            let listed: Vec<String> = s.list_deliveries(f).await.unwrap().into_iter().map(|d| d.id).collect();
            assert_eq!(listed, ids, "{status}");
        }
        let claimed: Vec<String> = s
            .claim(10, Duration::from_secs(60), vec![], 50)
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.delivery_id)
            .collect();
        assert_eq!(claimed, ["p1", "p2"]);
    }

    #[tokio::test]
    async fn the_purge_finds_attempts_from_the_purged_events_not_by_reading_every_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        let plan: Vec<String> = s
            .call(|c| {
                c.execute_batch("CREATE TEMP TABLE IF NOT EXISTS purge_ids (id TEXT PRIMARY KEY);")?;
                c.prepare(&format!("EXPLAIN QUERY PLAN {PURGE_ATTEMPTS}"))?.query_map([], |r| r.get(3))?.collect()
            })
            .await
            .unwrap();
        assert!(plan.iter().any(|p| p.starts_with("SEARCH deliveries USING")), "{plan:?}");
        assert!(!plan.iter().any(|p| p.starts_with("SCAN")), "{plan:?}");
    }

    #[tokio::test]
    async fn a_wal_grown_past_its_limit_is_cut_back_once_readers_let_it_reset() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let s = SqliteStore::open(&path).unwrap();
        s.ingest(event("e0", "k0", 0, &["r"])).await.unwrap();
        let wal = dir.path().join("t.db-wal");
        let wal_size = || std::fs::metadata(&wal).unwrap().len();
        // A reader inside a transaction holds back every checkpoint: the WAL can only grow.
        let reader = Connection::open(&path).unwrap();
        reader.execute_batch("BEGIN; SELECT COUNT(*) FROM events;").unwrap();
        let big = "x".repeat(200_000);
        let mut n = 0;
        while wal_size() <= WAL_SIZE_LIMIT as u64 + 4_000_000 {
            n += 1;
            let mut e = event(&format!("e{n}"), &format!("k{n}"), 0, &["r"]);
            e.payload = format!("{{\"pad\": \"{big}\"}}");
            s.ingest(e).await.unwrap();
        }
        let grown = wal_size();
        reader.execute_batch("COMMIT").unwrap();
        drop(reader);
        // The next commits checkpoint the whole WAL, then start it again from the top, cut back.
        for m in 0..3000 {
            s.ingest(event(&format!("f{m}"), &format!("j{m}"), 0, &["r"])).await.unwrap();
            if wal_size() <= WAL_SIZE_LIMIT as u64 {
                break;
            }
        }
        assert!(wal_size() <= WAL_SIZE_LIMIT as u64, "the WAL grew to {grown} B and stayed at {} B", wal_size());
        assert_eq!(s.event(&format!("e{n}")).await.unwrap().map(|e| e.id), Some(format!("e{n}")), "nothing lost");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn console_reads_are_answered_while_the_writer_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let s = SqliteStore::open(&dir.path().join("t.db")).unwrap();
        s.ingest(event("e1", "k1", 0, &["r"])).await.unwrap();
        // The writer is held inside a transaction until the test lets it go.
        let (release, held) = held_once();
        let writer = {
            let s = s.clone();
            tokio::spawn(async move { s.call(held).await })
        };
        // Reads go to their own connections: answered now, with the last committed state.
        assert_eq!(s.queue_depth().await.unwrap(), 1);
        let (events, _) =
            s.find_events(crate::store::EventFilter { limit: 10, ..Default::default() }, None, false).await.unwrap();
        assert_eq!(events.len(), 1);
        assert!(!writer.is_finished(), "the writer was still held while the reads were answered");
        release.send(()).unwrap();
        assert!(writer.await.unwrap().unwrap());
    }

    #[tokio::test]
    async fn migrations_are_applied_once_and_reopening_keeps_the_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        {
            let s = SqliteStore::open(&path).unwrap();
            s.ingest(event("e1", "k1", 0, &["r"])).await.unwrap();
        }
        let s = SqliteStore::open(&path).unwrap();
        assert_eq!(s.queue_depth().await.unwrap(), 1);
    }
}
