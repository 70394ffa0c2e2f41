//! The PostgreSQL backend, for several relays on one database: the same operations as SQLite,
//! with claims by `FOR UPDATE SKIP LOCKED` under a lease token, dedup by the `(source, key)`
//! primary key, migrations serialized by an advisory lock, and `LISTEN`/`NOTIFY` to wake idle
//! workers on every replica when new deliveries are committed. `batch` is the group commit of
//! ingests and settlements, `notify` the wake-ups between replicas.

mod batch;
mod notify;

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use super::{AttemptOutcome, DeliveryStatus, RetryFilter, COUNT_CAP, DERIVED_STATUS};
use super::{
    AttemptRow, Claimed, ContactCandidate, DeliveryFilter, DeliveryRow, EventDetail, EventFilter, Forgotten, Gauges,
    IngestOutcome, Matching, NewEvent, NewQuarantined, QuarantineLimits, QuarantineOutcome, Quarantined, Retried,
    Settlement, StoreError, StoredEvent, TypeSeen,
};
use crate::store::Counts;
use batch::{batcher, Queued, BATCHERS};
use notify::announcer;

/// The channel new deliveries are announced on.
const CHANNEL: &str = "lbx_relay_work";
/// Serializes migrations of replicas starting at once.
const MIGRATION_LOCK: i64 = 0x6c62_7872_656c_6179; // "lbxrelay"

/// The schema, one step per file, applied in order once each (the files of both backends sit
/// side by side in `src/store/migrations/`, so their schemas can be compared).
const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/postgres/001_events_deliveries_attempts.sql"),
    include_str!("../migrations/postgres/002_ordering_steps_oauth.sql"),
    include_str!("../migrations/postgres/003_quarantine_totals_contact_index_attempt_detail.sql"),
    include_str!("../migrations/postgres/004_field_coverage.sql"),
    include_str!("../migrations/postgres/005_reconcile.sql"),
    include_str!("../migrations/postgres/006_contacts_index.sql"),
    include_str!("../migrations/postgres/007_queue_autovacuum.sql"),
    include_str!("../migrations/postgres/008_attempts_by_start.sql"),
    include_str!("../migrations/postgres/009_delivered_attempt_on_the_delivery.sql"),
    include_str!("../migrations/postgres/010_fewer_queue_index_writes.sql"),
    include_str!("../migrations/postgres/011_keys_in_byte_order.sql"),
];

/// A claim: up to `$4` due deliveries, oldest first, leased to `$1` until `$2` (keyed ones only at
/// the head of their key, routes in `$5` skipped). Runs on the `hot` pool.
const CLAIM: &str = "UPDATE deliveries SET lease_token = $1, lease_until = $2
     WHERE id IN (
        SELECT id FROM deliveries d
        WHERE status = 'pending' AND next_attempt_at <= $3
          AND (lease_until IS NULL OR lease_until <= $3)
          AND route <> ALL($5)
          AND (order_key IS NULL OR NOT EXISTS (
                SELECT 1 FROM deliveries h
                WHERE h.route = d.route AND h.order_key = d.order_key
                  AND h.status = 'pending' AND h.seq < d.seq))
        ORDER BY next_attempt_at, id LIMIT $4
        FOR UPDATE SKIP LOCKED)
     RETURNING id, event_id, route, tries, attempts, steps_state, order_key IS NOT NULL";

/// The events of claimed deliveries.
const CLAIMED_EVENTS: &str =
    "SELECT id, source, event_key, kind, status, payload, received_at FROM events WHERE id = ANY($1)";

/// The console's list of deliveries (the dead letters: `status = 'failed'`), a page at a time.
const LIST_DELIVERIES: &str = "SELECT id, event_id, route, status, attempts, last_status, last_error, next_attempt_at
     FROM deliveries
     WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR route = $2) AND ($3::text IS NULL OR id > $3)
     ORDER BY id LIMIT $4";

/// Pool and timeout settings from `[store]`.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
}

#[derive(Clone)]
pub struct PgStore {
    pub(super) pool: Pool,
    /// Connections for the statements every event runs: the group commits and the claims. Their
    /// plans are made once per connection (`plan_cache_mode = force_generic_plan`): planning them
    /// at every execution cost the server a fifth of its time per event. Each finds its rows by
    /// key or by the due index; `enable_seqscan = off` keeps it so in a plan made on a young store
    /// (a few rows, no statistics yet), where PostgreSQL would otherwise settle by scanning the
    /// whole table for as long as the connection lives (a unit test shows both).
    hot: Pool,
    /// Set when work was committed that other replicas have not been told about yet.
    announce: std::sync::Arc<tokio::sync::Notify>,
    /// Ingests and settlements waiting to share a transaction.
    batches: tokio::sync::mpsc::UnboundedSender<Queued>,
    config: std::sync::Arc<tokio_postgres::Config>,
    /// The TLS connector the URL's `sslmode` asks for (also used by the LISTEN connection).
    tls: tokio_postgres_rustls::MakeRustlsConnect,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PgStore(pools of {} and {})", self.pool.status().max_size, self.hot.status().max_size)
    }
}

/// Connections of the `hot` pool: one per group-commit task, one for claims.
const HOT_CONNECTIONS: usize = BATCHERS + 1;

/// A pool of at most `size` connections made with `config`; waiting for, making or checking one
/// gives up after `connect_timeout`.
fn connection_pool(
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    size: usize,
    connect_timeout: Duration,
) -> Result<Pool, StoreError> {
    let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
    Pool::builder(manager)
        .max_size(size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(connect_timeout))
        .create_timeout(Some(connect_timeout))
        .recycle_timeout(Some(connect_timeout))
        .build()
        .map_err(|e| StoreError::failed("cannot build the connection pool", e))
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The error and its causes carry the server's message or the TLS refusal (why the
        // handshake failed); never the connection string.
        let code = e.as_db_error().map(|db| db.code().code().to_string());
        StoreError::Database { code, cause: crate::store::Cause::new(e) }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::failed("no database connection", other),
        }
    }
}

fn opt_i32(v: Option<u16>) -> Option<i32> {
    v.map(i32::from)
}

fn status_of(v: Option<i32>) -> Option<u16> {
    v.and_then(|s| u16::try_from(s).ok())
}

/// One statement that sends the deliveries matching `filter` (a `WHERE` clause on `deliveries`,
/// `$1` being now) again and moves the delivered attempt each kept on its row into `attempts`
/// (see migration 9), answering how many it sent again. The rows are locked and read as they are
/// when locked, so an attempt settled meanwhile is moved, not lost.
fn send_again(filter: &str) -> String {
    format!(
        "WITH sent AS (
            UPDATE deliveries d SET status = 'pending', tries = 0, next_attempt_at = $1, updated_at = $1,
                steps_state = CASE WHEN o.status = 'delivered' THEN NULL ELSE o.steps_state END,
                {moved}
            FROM (SELECT id, status, steps_state, attempts, ok_started_at, ok_duration_ms, last_status, last_error,
                         ok_detail
                  FROM deliveries WHERE {filter} FOR UPDATE) o
            WHERE d.id = o.id
            RETURNING o.*),
         kept AS ({kept})
         SELECT COUNT(*) FROM sent",
        moved = crate::store::DELIVERED_ATTEMPT_MOVED,
        kept = crate::store::keep_delivered_attempts("sent")
    )
}

impl PgStore {
    /// One statement on a pooled connection (prepared once per connection); the rows it changed.
    async fn execute(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        Ok(client.execute(&client.prepare_cached(sql).await?, params).await?)
    }

    /// The rows of one query on a pooled connection.
    async fn query(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Vec<Row>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client.query(&client.prepare_cached(sql).await?, params).await?)
    }

    /// The row of a query that gives at most one.
    async fn query_opt(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Option<Row>, StoreError> {
        let client = self.pool.get().await?;
        Ok(client.query_opt(&client.prepare_cached(sql).await?, params).await?)
    }

    /// The row of a query that gives exactly one.
    async fn query_one(&self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<Row, StoreError> {
        let client = self.pool.get().await?;
        Ok(client.query_one(&client.prepare_cached(sql).await?, params).await?)
    }

    /// Connects, applies migrations (under an advisory lock) and returns the store.
    pub async fn open(url: &SecretString, opts: &PgOptions) -> Result<PgStore, StoreError> {
        let (mut config, tls) = super::pg_tls::connect_settings(url.expose_secret())?;
        config.connect_timeout(opts.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("lbx-relay");
        }
        let statement_timeout = opts.statement_timeout.as_millis();
        let existing = config.get_options().unwrap_or("").to_string();
        // Every setting is given first, so the URL's `options` may override it.
        let with_options = |settings: &str| {
            let mut c = config.clone();
            c.options(format!("{settings} {existing} -c statement_timeout={statement_timeout}").trim());
            c
        };
        // Statements are prepared once per connection. With PostgreSQL's default plan cache, a
        // connection that prepared them while the tables were small keeps a generic plan that
        // scans the whole table (seen: the settle of every batch read all of `deliveries`, and
        // ingest fell from 4,800/s to 3,200/s between 20,000 and 60,000 events): the console's
        // and housekeeping's statements are planned at each execution for the data there is.
        let main = with_options("-c plan_cache_mode=force_custom_plan");
        let pool = connection_pool(
            main.clone(),
            tls.clone(),
            opts.pool_size.saturating_sub(HOT_CONNECTIONS).max(2),
            opts.connect_timeout,
        )?;
        // The statements of every event (see `PgStore::hot`) are planned once per connection, by
        // their indexes.
        let hot = connection_pool(
            with_options("-c plan_cache_mode=force_generic_plan -c enable_seqscan=off"),
            tls.clone(),
            HOT_CONNECTIONS,
            opts.connect_timeout,
        )?;
        let (batches, rx) = tokio::sync::mpsc::unbounded_channel();
        let store =
            PgStore { pool, hot, config: std::sync::Arc::new(main), tls, announce: Default::default(), batches };
        store.migrate().await?;
        tokio::spawn(announcer(store.pool.clone(), store.announce.clone()));
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..BATCHERS {
            tokio::spawn(batcher(store.hot.clone(), rx.clone(), store.announce.clone()));
        }
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS lbx_schema_version (version INTEGER NOT NULL)").await?;
        let version: i32 = match tx.query_opt("SELECT version FROM lbx_schema_version", &[]).await? {
            Some(row) => row.try_get(0)?,
            None => {
                tx.execute("INSERT INTO lbx_schema_version (version) VALUES (0)", &[]).await?;
                0
            }
        };
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::Invalid(format!(
                "the database schema (version {version}) is newer than this lbx-relay understands ({})",
                MIGRATIONS.len()
            )));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.batch_execute(sql).await?;
            tx.execute("UPDATE lbx_schema_version SET version = $1", &[&(i as i32 + 1)]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Queued for the next group transaction; answered once it has committed.
    pub async fn ingest(&self, ev: NewEvent) -> Result<IngestOutcome, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.batches.send(Queued::Ingest(ev, reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    pub async fn quarantine(
        &self,
        item: NewQuarantined,
        limits: QuarantineLimits,
    ) -> Result<QuarantineOutcome, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "INSERT INTO quarantine (source, received_at, headers, body, reason)
                 SELECT $1, $2, $3, $4, $5 FROM quarantine_totals
                 WHERE id = 1 AND items < $6 AND bytes + $7 <= $8",
                    )
                    .await?,
                &[
                    &item.source,
                    &item.received_at,
                    &item.headers,
                    &item.body,
                    &item.reason,
                    &(limits.max_items as i64),
                    &(item.size() as i64),
                    &(limits.max_bytes as i64),
                ],
            )
            .await?;
        Ok(if n == 1 { QuarantineOutcome::Stored } else { QuarantineOutcome::Full })
    }

    pub async fn claim(
        &self,
        limit: usize,
        lease: Duration,
        skip_routes: Vec<String>,
        now: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let client = self.hot.get().await?;
        let token = crate::event::new_id();
        let until = now + lease.as_millis() as i64;
        let rows = client
            .query(&client.prepare_cached(CLAIM).await?, &[&token, &until, &now, &(limit as i64), &skip_routes])
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let event_ids: Vec<String> = rows.iter().map(|r| r.try_get::<_, String>(1)).collect::<Result<_, _>>()?;
        let events = client.query(&client.prepare_cached(CLAIMED_EVENTS).await?, &[&event_ids]).await?;
        let events: std::collections::HashMap<String, StoredEvent> =
            events.iter().map(event_from_row).map(|e| e.map(|e| (e.id.clone(), e))).collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            let Some(event) = events.get(&r.try_get::<_, String>(1)?).cloned() else { continue };
            out.push(Claimed {
                delivery_id: r.try_get(0)?,
                route: r.try_get(2)?,
                lease_token: token.clone(),
                tries: r.try_get::<_, i32>(3)? as u32,
                attempts: r.try_get::<_, i32>(4)? as u32,
                event,
                steps_state: r.try_get(5)?,
                keyed: r.try_get(6)?,
                data: None,
            });
        }
        Ok(out)
    }

    /// Queued for the next group transaction; `false` when the lease was lost.
    pub async fn settle(&self, settlement: Settlement) -> Result<bool, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.batches.send(Queued::Settle(settlement, reply)).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Sets `set` (its value is `$1`) on delivery `id` if `lease_token` still holds its lease;
    /// `false` when the lease was lost.
    async fn under_lease(
        &self,
        set: &str,
        value: &(dyn ToSql + Sync),
        id: &str,
        lease_token: &str,
    ) -> Result<bool, StoreError> {
        let sql = format!("UPDATE deliveries SET {set} WHERE id = $2 AND lease_token = $3");
        Ok(self.execute(&sql, &[value, &id, &lease_token]).await? == 1)
    }

    pub async fn save_steps_state(
        &self,
        delivery_id: String,
        lease_token: String,
        state: String,
    ) -> Result<bool, StoreError> {
        self.under_lease("steps_state = $1", &state, &delivery_id, &lease_token).await
    }

    pub async fn extend_lease(&self, delivery_id: String, lease_token: String, until: i64) -> Result<bool, StoreError> {
        self.under_lease("lease_until = $1", &until, &delivery_id, &lease_token).await
    }

    pub async fn defer(&self, delivery_id: String, lease_token: String, at: i64) -> Result<bool, StoreError> {
        let set = "next_attempt_at = $1, lease_token = NULL, lease_until = NULL";
        self.under_lease(set, &at, &delivery_id, &lease_token).await
    }

    /// The shared sliding window of `route`, reserved under a row lock so replicas never hand out
    /// more than the rate between them.
    pub async fn reserve_rate_slot(
        &self,
        route: &str,
        rate: crate::config::RateLimit,
        now: i64,
        max_wait: i64,
    ) -> Result<crate::rate_window::Reservation, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute(
            &tx.prepare_cached("INSERT INTO rate_windows (route, slots) VALUES ($1, '{}') ON CONFLICT DO NOTHING")
                .await?,
            &[&route],
        )
        .await?;
        let row = tx
            .query_one(
                &tx.prepare_cached("SELECT slots FROM rate_windows WHERE route = $1 FOR UPDATE").await?,
                &[&route],
            )
            .await?;
        let mut sent: std::collections::VecDeque<i64> = row.try_get::<_, Vec<i64>>(0)?.into();
        // A window kept under a larger count than the route has now keeps only its newest slots.
        while sent.len() > rate.count as usize {
            sent.pop_front();
        }
        let reserved = crate::rate_window::reserve(&mut sent, rate, now, max_wait);
        if let crate::rate_window::Reservation::At(_) = reserved {
            let slots: Vec<i64> = sent.into();
            tx.execute(
                &tx.prepare_cached("UPDATE rate_windows SET slots = $2 WHERE route = $1").await?,
                &[&route, &slots],
            )
            .await?;
        }
        tx.commit().await?;
        Ok(reserved)
    }

    pub async fn oauth_refresh_token(&self, key: String) -> Result<Option<String>, StoreError> {
        let row = self.query_opt("SELECT refresh_token FROM oauth_tokens WHERE key = $1", &[&key]).await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn save_oauth_refresh_token(&self, key: String, token: String, now: i64) -> Result<(), StoreError> {
        self.execute("INSERT INTO oauth_tokens (key, refresh_token, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET refresh_token = excluded.refresh_token, updated_at = excluded.updated_at", &[&key, &token, &now]).await?;
        Ok(())
    }

    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let row = self.query_one("SELECT MIN(GREATEST(next_attempt_at, COALESCE(lease_until, 0))) FROM deliveries WHERE status = 'pending'", &[]).await?;
        Ok(row.try_get(0)?)
    }

    pub async fn list_deliveries(&self, f: DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        let rows = self.query(LIST_DELIVERIES, &[&f.status, &f.route, &f.after, &(f.limit as i64)]).await?;
        rows.iter().map(delivery_from_row).collect()
    }

    pub async fn delivery_route(&self, id: String) -> Result<Option<String>, StoreError> {
        let row = self.query_opt("SELECT route FROM deliveries WHERE id = $1", &[&id]).await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn retry_one(&self, id: String, now: i64) -> Result<Retried, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .query_one(
                &client.prepare_cached(&send_again("id = $2 AND (lease_until IS NULL OR lease_until <= $1)")).await?,
                &[&now, &id],
            )
            .await?
            .try_get::<_, i64>(0)? as u64;
        if n > 0 {
            // Retrying a keyed head now releases what was parked behind its old retry time.
            client
                .execute(
                    &client
                        .prepare_cached(
                            "UPDATE deliveries SET next_attempt_at = $1
                     WHERE route = (SELECT route FROM deliveries WHERE id = $2)
                       AND order_key = (SELECT order_key FROM deliveries WHERE id = $2)
                       AND status = 'pending' AND next_attempt_at > $1",
                        )
                        .await?,
                    &[&now, &id],
                )
                .await?;
            self.announce.notify_one();
        }
        if n == 0 {
            let exists = client
                .query_opt(&client.prepare_cached("SELECT 1 FROM deliveries WHERE id = $1").await?, &[&id])
                .await?
                .is_some();
            return Ok(if exists { Retried::InFlight } else { Retried::Missing });
        }
        Ok(Retried::Yes)
    }

    pub async fn list_events(
        &self,
        after: Option<String>,
        limit: u32,
        newest_first: bool,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let client = self.pool.get().await?;
        let sql = if newest_first {
            "SELECT id, source, event_key, kind, status, payload, received_at FROM events
             WHERE ($1::text IS NULL OR id < $1) ORDER BY id DESC LIMIT $2"
        } else {
            "SELECT id, source, event_key, kind, status, payload, received_at FROM events
             WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2"
        };
        let rows = client.query(sql, &[&after, &(limit as i64)]).await?;
        rows.iter().map(event_from_row).collect()
    }

    pub async fn find_events(
        &self,
        f: EventFilter,
        emails: Option<Vec<String>>,
        sealed: bool,
    ) -> Result<(Vec<StoredEvent>, Matching), StoreError> {
        let client = self.pool.get().await?;
        let like = f.kind.as_deref().map(glob_to_like);
        let text_filter = if sealed {
            "($10::text IS NULL OR lower(e.kind) LIKE $10 || '%')".to_string()
        } else {
            let names: Vec<String> = crate::store::NAME_FIELDS
                .iter()
                .map(|f| format!("lower(e.payload::jsonb #>> '{{data,contact,{f}}}') LIKE $10 || '%'"))
                .collect();
            format!(
                "($10::text IS NULL OR lower(e.kind) LIKE $10 || '%' OR e.email LIKE $10 || '%' OR {})",
                names.join(" OR ")
            )
        };
        let filter = format!(
            "($1::text IS NULL OR e.kind LIKE $1 ESCAPE '\\') AND ($2::text IS NULL OR ({DERIVED_STATUS}) = $2)
             AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.route = $3))
             AND ($4::text[] IS NULL OR e.email = ANY($4))
             AND ($5::text IS NULL OR e.event_key = $5)
             AND ($6::bigint IS NULL OR e.received_at >= $6) AND ($7::bigint IS NULL OR e.received_at < $7)
             AND {text_filter}"
        );
        let (no_after, no_limit): (Option<String>, Option<i64>) = (None, None);
        let counted: i64 = client
            .query_one(
                &format!(
                    "SELECT COUNT(*) FROM (SELECT 1 FROM events e WHERE {filter} AND $8::text IS NULL AND $9::bigint IS NULL
                     LIMIT {}) AS m",
                    COUNT_CAP + 1
                ),
                &[&like, &f.status, &f.route, &emails, &f.key, &f.since, &f.until, &no_after, &no_limit, &f.text],
            )
            .await?
            .try_get(0)?;
        let (cmp, order) = if f.newest_first { ("<", "DESC") } else { (">", "ASC") };
        let sql = format!(
            "SELECT e.id, e.source, e.event_key, e.kind, {DERIVED_STATUS}, e.payload, e.received_at FROM events e
             WHERE {filter} AND ($8::text IS NULL OR e.id {cmp} $8) ORDER BY e.id {order} LIMIT $9"
        );
        let rows = client
            .query(
                &sql,
                &[
                    &like,
                    &f.status,
                    &f.route,
                    &emails,
                    &f.key,
                    &f.since,
                    &f.until,
                    &f.after,
                    &(f.limit as i64),
                    &f.text,
                ],
            )
            .await?;
        let events = rows.iter().map(event_from_row).collect::<Result<Vec<_>, _>>()?;
        let counted = counted as u64;
        Ok((events, Matching { total: counted.min(COUNT_CAP), exact: counted <= COUNT_CAP }))
    }

    pub async fn pending_per_route(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows =
            self.query("SELECT route, COUNT(*) FROM deliveries WHERE status = 'pending' GROUP BY route", &[]).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    pub async fn retry_matching(&self, f: RetryFilter, dry_run: bool, now: i64) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let like = f.kind.as_deref().map(glob_to_like);
        let filter = "(lease_until IS NULL OR lease_until <= $1) AND ($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR route = $3)
             AND (($4::text IS NULL AND $5::bigint IS NULL AND $6::bigint IS NULL) OR event_id IN (SELECT e.id FROM events e
                  WHERE ($4::text IS NULL OR e.kind LIKE $4 ESCAPE '\\') AND ($5::bigint IS NULL OR e.received_at >= $5)
                    AND ($6::bigint IS NULL OR e.received_at < $6)))";
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&now, &f.status, &f.route, &like, &f.since, &f.until];
        let n = if dry_run {
            let row = client
                .query_one(&format!("SELECT COUNT(*) FROM deliveries WHERE $1::bigint IS NOT NULL AND {filter}"), &args)
                .await?;
            row.try_get::<_, i64>(0)? as u64
        } else {
            let n = client.query_one(&send_again(filter), &args).await?.try_get::<_, i64>(0)? as u64;
            if n > 0 {
                self.announce.notify_one();
            }
            n
        };
        Ok(n)
    }

    pub async fn event_detail(&self, id: &str) -> Result<Option<EventDetail>, StoreError> {
        let client = self.pool.get().await?;
        let Some(row) = client
            .query_opt(
                &client
                    .prepare_cached(
                        "SELECT id, source, event_key, kind, status, payload, received_at, origin FROM events WHERE id = $1",
                    )
                    .await?,
                &[&id],
            )
            .await?
        else {
            return Ok(None);
        };
        let deliveries: Vec<DeliveryRow> = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT id, event_id, route, status, attempts, last_status, last_error, next_attempt_at
                 FROM deliveries WHERE event_id = $1 ORDER BY id",
                    )
                    .await?,
                &[&id],
            )
            .await?
            .iter()
            .map(delivery_from_row)
            .collect::<Result<_, _>>()?;
        let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
        let attempts = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT delivery_id, attempt, started_at, duration_ms, status, error, outcome, detail
                 FROM attempt_log WHERE delivery_id = ANY($1) ORDER BY id IS NULL, id, started_at",
                    )
                    .await?,
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| {
                Ok(AttemptRow {
                    delivery_id: r.try_get(0)?,
                    attempt: r.try_get::<_, i32>(1)? as u32,
                    started_at: r.try_get(2)?,
                    duration_ms: r.try_get(3)?,
                    status: status_of(r.try_get(4)?),
                    error: r.try_get(5)?,
                    outcome: r.try_get(6)?,
                    detail: r.try_get(7)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(EventDetail { event: event_from_row(&row)?, origin: row.try_get(7)?, deliveries, attempts }))
    }

    pub async fn list_quarantine(&self, after: Option<i64>, limit: u32) -> Result<Vec<Quarantined>, StoreError> {
        let rows = self
            .query(
                "SELECT id, source, received_at, headers, body, reason FROM quarantine
                 WHERE ($1::bigint IS NULL OR id > $1) ORDER BY id LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(Quarantined {
                    id: r.try_get(0)?,
                    source: r.try_get(1)?,
                    received_at: r.try_get(2)?,
                    headers: r.try_get(3)?,
                    body: r.try_get(4)?,
                    reason: r.try_get(5)?,
                })
            })
            .collect()
    }

    pub async fn delete_quarantined(&self, id: i64) -> Result<(), StoreError> {
        self.pool.get().await?.execute("DELETE FROM quarantine WHERE id = $1", &[&id]).await?;
        Ok(())
    }

    pub async fn update_quarantine_reason(&self, id: i64, reason: String) -> Result<(), StoreError> {
        self.pool.get().await?.execute("UPDATE quarantine SET reason = $2 WHERE id = $1", &[&id, &reason]).await?;
        Ok(())
    }

    pub async fn purge(&self, before: i64, now: i64) -> Result<u64, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let ids: Vec<String> = tx
            .query(
                &tx.prepare_cached(
                    "SELECT e.id FROM events e WHERE e.received_at < $1
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status <> 'delivered')
                 LIMIT 10000",
                )
                .await?,
                &[&before],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        tx.execute(
            &tx.prepare_cached(
                "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ANY($1))",
            )
            .await?,
            &[&ids],
        )
        .await?;
        tx.execute(&tx.prepare_cached("DELETE FROM deliveries WHERE event_id = ANY($1)").await?, &[&ids]).await?;
        let n = tx.execute(&tx.prepare_cached("DELETE FROM events WHERE id = ANY($1)").await?, &[&ids]).await?;
        tx.execute(&tx.prepare_cached("DELETE FROM dedup_keys WHERE expires_at <= $1").await?, &[&now]).await?;
        tx.commit().await?;
        Ok(n)
    }

    pub async fn contact_candidates(
        &self,
        needle: String,
        index: Vec<String>,
    ) -> Result<Vec<ContactCandidate>, StoreError> {
        let rows = self.query("SELECT e.id, e.kind, e.received_at, e.payload, e.event_key,
                            COALESCE(e.email = ANY($2), false) OR COALESCE(string_to_array(e.contacts, ' ') && $2, false),
                            (SELECT COUNT(*) FROM deliveries d WHERE d.event_id = e.id),
                            (SELECT COUNT(*) FROM attempts a JOIN deliveries d ON a.delivery_id = d.id
                              WHERE d.event_id = e.id)
                            + (SELECT COUNT(*) FROM deliveries d WHERE d.event_id = e.id AND d.ok_started_at IS NOT NULL)
                         FROM events e
                         WHERE e.email = ANY($2) OR strpos(lower(e.payload), $1) > 0
                            OR string_to_array(e.contacts, ' ') && $2
                         ORDER BY e.received_at, e.id", &[&needle, &index]).await?;
        rows.iter()
            .map(|r| {
                Ok(ContactCandidate {
                    id: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    received_at: r.try_get(2)?,
                    payload: r.try_get(3)?,
                    key: r.try_get(4)?,
                    indexed: r.try_get(5)?,
                    deliveries: r.try_get::<_, i64>(6)? as u64,
                    attempts: r.try_get::<_, i64>(7)? as u64,
                })
            })
            .collect()
    }

    pub async fn delete_events(&self, ids: Vec<String>) -> Result<Forgotten, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let attempts = tx
            .execute(
                &tx.prepare_cached(
                    "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ANY($1))",
                )
                .await?,
                &[&ids],
            )
            .await?;
        // A delivery's row also holds the attempt that delivered it (migration 9).
        let gone = tx
            .query_one(
                &tx.prepare_cached(
                    "WITH gone AS (DELETE FROM deliveries WHERE event_id = ANY($1) RETURNING ok_started_at)
                     SELECT COUNT(*), COUNT(ok_started_at) FROM gone",
                )
                .await?,
                &[&ids],
            )
            .await?;
        let (deliveries, on_rows) = (gone.try_get::<_, i64>(0)? as u64, gone.try_get::<_, i64>(1)? as u64);
        let events = tx.execute(&tx.prepare_cached("DELETE FROM events WHERE id = ANY($1)").await?, &[&ids]).await?;
        tx.commit().await?;
        Ok(Forgotten { events, deliveries, attempts: attempts + on_rows, quarantined: 0 })
    }

    pub async fn gauges(&self) -> Result<Gauges, StoreError> {
        let row = self
            .query_one(
                "SELECT (SELECT COUNT(*) FROM deliveries WHERE status = 'pending'),
                        (SELECT items FROM quarantine_totals WHERE id = 1),
                        (SELECT bytes FROM quarantine_totals WHERE id = 1),
                        (SELECT MIN(created_at) FROM deliveries WHERE status = 'pending'),
                        (SELECT COUNT(*) FROM deliveries WHERE status = 'failed')",
                &[],
            )
            .await?;
        Ok(Gauges {
            queue_depth: row.try_get(0)?,
            quarantined: row.try_get(1)?,
            quarantined_bytes: row.try_get(2)?,
            oldest_pending_at: row.try_get(3)?,
            failed: row.try_get(4)?,
        })
    }

    pub async fn load_coverage(&self) -> Result<Vec<(String, String, Counts)>, StoreError> {
        let client = self.pool.get().await?;
        let rows =
            client.query("SELECT route, path, present, empty, absent, absent_streak FROM field_coverage", &[]).await?;
        rows.iter()
            .map(|r| {
                let n = |i: usize| r.try_get::<_, i64>(i).map(|v| v.max(0) as u64);
                Ok((
                    r.try_get(0)?,
                    r.try_get(1)?,
                    Counts { present: n(2)?, empty: n(3)?, absent: n(4)?, absent_streak: n(5)? },
                ))
            })
            .collect()
    }

    /// The counts are this replica's view: with several replicas each keeps its own rows' latest
    /// numbers (the last writer wins), which is what the alert needs (a streak on one replica).
    pub async fn save_coverage(&self, rows: Vec<(String, String, Counts)>) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let stmt = tx
            .prepare_cached(
                "INSERT INTO field_coverage (route, path, present, empty, absent, absent_streak)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (route, path) DO UPDATE SET present = excluded.present, empty = excluded.empty,
                    absent = excluded.absent, absent_streak = excluded.absent_streak",
            )
            .await?;
        for (route, path, n) in &rows {
            let v = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
            tx.execute(&stmt, &[route, path, &v(n.present), &v(n.empty), &v(n.absent), &v(n.absent_streak)]).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn event_types(&self) -> Result<Vec<TypeSeen>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT source, kind, COUNT(*), MIN(received_at), MAX(received_at),
                    ARRAY(SELECT DISTINCT d.route FROM deliveries d JOIN events x ON d.event_id = x.id
                          WHERE x.source = e.source AND x.kind = e.kind ORDER BY d.route),
                    (SELECT payload FROM events y WHERE y.source = e.source AND y.kind = e.kind
                     ORDER BY received_at DESC LIMIT 1)
                 FROM events e GROUP BY source, kind ORDER BY source, kind",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(TypeSeen {
                    source: r.try_get(0)?,
                    kind: r.try_get(1)?,
                    count: r.try_get::<_, i64>(2)? as u64,
                    first_seen: r.try_get(3)?,
                    last_seen: r.try_get(4)?,
                    routes: r.try_get(5)?,
                    recent_payload: r.try_get(6)?,
                })
            })
            .collect()
    }

    pub async fn last_event_per_source(&self, sources: Vec<String>) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = self
            .query(
                "SELECT s, (SELECT MAX(received_at) FROM events WHERE source = s) FROM unnest($1::text[]) AS s",
                &[&sources],
            )
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for r in &rows {
            if let Some(at) = r.try_get::<_, Option<i64>>(1)? {
                out.push((r.try_get(0)?, at));
            }
        }
        Ok(out)
    }

    pub async fn ping(&self, _probe_bytes: usize, _now: i64) -> Result<(), StoreError> {
        self.pool.get().await?.query_one("SELECT 1", &[]).await?;
        Ok(())
    }
}

/// A shell-style glob (`*`, `?`) as a LIKE pattern with `\` as the escape.
pub(super) fn glob_to_like(glob: &str) -> String {
    let mut out = String::with_capacity(glob.len() + 4);
    for c in glob.chars() {
        match c {
            '*' => out.push('%'),
            '?' => out.push('_'),
            '%' | '_' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out
}

fn event_from_row(r: &Row) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        id: r.try_get(0)?,
        source: r.try_get(1)?,
        key: r.try_get(2)?,
        kind: r.try_get(3)?,
        status: r.try_get(4)?,
        payload: r.try_get(5)?,
        received_at: r.try_get(6)?,
    })
}

impl<'a> tokio_postgres::types::FromSql<'a> for DeliveryStatus {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let text = <&str as tokio_postgres::types::FromSql>::from_sql(ty, raw)?;
        DeliveryStatus::parse(text).ok_or_else(|| format!("unknown delivery status {text:?}").into())
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::FromSql>::accepts(ty)
    }
}

impl<'a> tokio_postgres::types::FromSql<'a> for AttemptOutcome {
    fn from_sql(
        ty: &tokio_postgres::types::Type,
        raw: &'a [u8],
    ) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(AttemptOutcome::parse(<&str as tokio_postgres::types::FromSql>::from_sql(ty, raw)?))
    }

    fn accepts(ty: &tokio_postgres::types::Type) -> bool {
        <&str as tokio_postgres::types::FromSql>::accepts(ty)
    }
}

fn delivery_from_row(r: &Row) -> Result<DeliveryRow, StoreError> {
    Ok(DeliveryRow {
        id: r.try_get(0)?,
        event_id: r.try_get(1)?,
        route: r.try_get(2)?,
        status: r.try_get(3)?,
        attempts: r.try_get::<_, i32>(4)? as u32,
        last_status: status_of(r.try_get(5)?),
        last_error: r.try_get(6)?,
        next_attempt_at: r.try_get(7)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on a schema of its own in the test database, the admin connection and the schema's
    /// name; `None` (said on stderr) without `LBX_TEST_POSTGRES_URL`.
    async fn scratch_store(what: &str) -> Option<(PgStore, tokio_postgres::Client, String)> {
        let (admin, schema, url) = scratch_schema(what).await?;
        Some((open_on(&url).await, admin, schema))
    }

    /// An empty schema of its own in the test database: the admin connection (its search path
    /// set to the schema), the schema's name and a store URL for it; `None` as above.
    async fn scratch_schema(what: &str) -> Option<(tokio_postgres::Client, String, SecretString)> {
        let Some(base) = std::env::var("LBX_TEST_POSTGRES_URL").ok().filter(|v| !v.trim().is_empty()) else {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "skipped {what}: LBX_TEST_POSTGRES_URL is not set");
            return None;
        };
        let schema = format!("lbx_unit_{}", crate::event::new_id().replace('-', ""));
        let (admin, conn) = tokio_postgres::connect(&base, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        admin.batch_execute(&format!("CREATE SCHEMA {schema}; SET search_path = {schema}")).await.unwrap();
        let sep = if base.contains('?') { '&' } else { '?' };
        let url = SecretString::from(format!("{base}{sep}options=-c%20search_path%3D{schema}"));
        Some((admin, schema, url))
    }

    /// A scratch schema (as above) holding the first `version` migrations, recorded as that
    /// version, and then `rows`: a store as an older release left it.
    async fn scratch_schema_at(
        what: &str,
        version: usize,
        rows: &str,
    ) -> Option<(tokio_postgres::Client, String, SecretString)> {
        let (admin, schema, url) = scratch_schema(what).await?;
        for sql in &MIGRATIONS[..version] {
            admin.batch_execute(sql).await.unwrap();
        }
        admin
            .batch_execute(&format!(
                "CREATE TABLE lbx_schema_version (version INTEGER NOT NULL);
                 INSERT INTO lbx_schema_version VALUES ({version}); {rows}"
            ))
            .await
            .unwrap();
        Some((admin, schema, url))
    }

    /// Opens the store on a scratch schema (which migrates it) and reads the schema version it
    /// then records.
    async fn upgraded(admin: &tokio_postgres::Client, url: &SecretString) -> (PgStore, i32) {
        let store = open_on(url).await;
        let version = admin.query_one("SELECT version FROM lbx_schema_version", &[]).await.unwrap().get(0);
        (store, version)
    }

    /// Closes the store's connections and drops its scratch schema.
    async fn discard(store: PgStore, admin: &tokio_postgres::Client, schema: &str) {
        drop(store);
        admin.batch_execute(&format!("DROP SCHEMA {schema} CASCADE")).await.unwrap();
    }

    /// The plan PostgreSQL would run `sql` with, as `EXPLAIN` prints it.
    async fn plan_of(client: &tokio_postgres::Client, sql: &str) -> String {
        let rows = client.simple_query(&format!("EXPLAIN {sql}")).await.unwrap();
        let lines: Vec<String> = rows
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .collect();
        lines.join("\n")
    }

    async fn open_on(url: &SecretString) -> PgStore {
        let opts = PgOptions {
            pool_size: 1,
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(10),
        };
        PgStore::open(url, &opts).await.unwrap()
    }

    /// A database at schema 8 with a delivered event (its attempt a row of `attempts`, as that
    /// schema wrote it) upgrades to 9 without losing it, and then keeps new delivering attempts on
    /// the delivery's row, moving one into `attempts` when the delivery is sent again.
    #[tokio::test]
    async fn a_schema_8_database_keeps_its_attempts_and_then_keeps_new_ones_on_the_row() {
        let Some((admin, schema, url)) = scratch_schema_at(
            "a postgres upgrade test",
            8,
            "INSERT INTO events (id, source, event_key, kind, status, payload, received_at)
                     VALUES ('e1', 's', 'k1', 'contact.created', 'routed', '{}', 1000);
                 INSERT INTO deliveries (id, event_id, route, status, attempts, created_at, updated_at, last_status)
                     VALUES ('d1', 'e1', 'crm', 'delivered', 1, 1000, 1010, 200);
                 INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status, outcome, detail)
                     VALUES ('d1', 1, 1005, 5, 200, 'delivered', 'written by schema 8');",
        )
        .await
        else {
            return;
        };
        let (store, version) = upgraded(&admin, &url).await;
        assert_eq!(version as usize, MIGRATIONS.len());
        let shown = |d: EventDetail| -> Vec<(u32, Option<String>)> {
            d.attempts.into_iter().map(|a| (a.attempt, a.detail)).collect()
        };
        assert_eq!(shown(store.event_detail("e1").await.unwrap().unwrap()), [(1, Some("written by schema 8".into()))]);

        let send_again_and_deliver = |detail: &'static str| {
            let store = &store;
            async move {
                assert_eq!(store.retry_one("d1".into(), 3000).await.unwrap(), Retried::Yes);
                let c = store.claim(1, Duration::from_secs(60), vec![], 3000).await.unwrap().remove(0);
                let settled = store
                    .settle(Settlement {
                        delivery_id: c.delivery_id,
                        lease_token: c.lease_token,
                        attempt: crate::store::AttemptRecord {
                            started_at: 3000,
                            duration_ms: 4,
                            status: Some(201),
                            error: None,
                            detail: Some(detail.into()),
                        },
                        next: crate::store::Next::Delivered,
                        steps_state: None,
                        keyed: false,
                        settled_at: 3004,
                    })
                    .await
                    .unwrap();
                assert!(settled);
            }
        };
        send_again_and_deliver("second").await;
        send_again_and_deliver("third").await;
        let expected = [(1, Some("written by schema 8".into())), (2, Some("second".into())), (3, Some("third".into()))];
        assert_eq!(shown(store.event_detail("e1").await.unwrap().unwrap()), expected);
        let rows: i64 = admin.query_one("SELECT COUNT(*) FROM attempts", &[]).await.unwrap().get(0);
        let on_row: Option<String> = admin.query_one("SELECT ok_detail FROM deliveries", &[]).await.unwrap().get(0);
        assert_eq!((rows, on_row.as_deref()), (2, Some("third")), "the first two in attempts, the last on the row");
        discard(store, &admin, &schema).await;
    }

    /// A database at schema 10 upgrades to 11 without losing a row: its keys are then compared
    /// byte by byte ("C"), its dedup keys still hold, and the console still finds its events by
    /// Learnybox id and by address.
    #[tokio::test]
    async fn a_schema_10_database_keeps_its_rows_and_then_compares_its_keys_byte_by_byte() {
        let Some((admin, schema, url)) = scratch_schema_at(
            "a postgres upgrade test",
            10,
            "INSERT INTO events (id, source, event_key, kind, status, payload, received_at, email)
                     VALUES ('e1', 's', 'K1', 'contact.created', 'routed', '{}', 1000, 'ana@example.org');
                 INSERT INTO dedup_keys (source, event_key, event_id, expires_at) VALUES ('s', 'K1', 'e1', 999999);
                 INSERT INTO deliveries (id, event_id, route, status, attempts, created_at, updated_at, last_status,
                     ok_started_at, ok_duration_ms, ok_detail)
                     VALUES ('d1', 'e1', 'Crm', 'delivered', 2, 1000, 1010, 200, 1005, 5, 'on the row');
                 INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status, outcome, detail)
                     VALUES ('d1', 1, 1001, 3, 503, 'retry', 'in attempts');",
        )
        .await
        else {
            return;
        };
        let (store, version) = upgraded(&admin, &url).await;
        assert_eq!(version, 11);
        let collations: Vec<(String, String, Option<String>)> = admin
            .query(
                "SELECT table_name::text, column_name::text, collation_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND data_type = 'text' AND table_name IN ('events', 'dedup_keys', 'deliveries', 'attempts')
                   AND column_name IN ('id', 'source', 'event_key', 'email', 'event_id', 'route', 'order_key', 'delivery_id')
                 ORDER BY 1, 2",
                &[],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2)))
            .collect();
        assert_eq!(collations.len(), 12, "{collations:?}");
        assert!(collations.iter().all(|(_, _, c)| c.as_deref() == Some("C")), "{collations:?}");

        let detail = store.event_detail("e1").await.unwrap().unwrap();
        let attempts: Vec<(u32, Option<String>)> = detail.attempts.into_iter().map(|a| (a.attempt, a.detail)).collect();
        assert_eq!(attempts, [(1, Some("in attempts".into())), (2, Some("on the row".into()))]);
        let by = |key: Option<&str>, email: Option<&str>| {
            let store = &store;
            let f = EventFilter {
                kind: None,
                status: None,
                route: None,
                email: email.map(str::to_string),
                key: key.map(str::to_string),
                text: None,
                since: None,
                until: None,
                after: None,
                limit: 10,
                newest_first: true,
            };
            let emails = email.map(|e| vec![e.to_string()]);
            async move { store.find_events(f, emails, false).await.unwrap().0.into_iter().map(|e| e.id).collect::<Vec<_>>() }
        };
        assert_eq!(by(Some("K1"), None).await, ["e1"]);
        assert!(by(Some("k1"), None).await.is_empty(), "an id differing in case is another id");
        assert_eq!(by(None, Some("ana@example.org")).await, ["e1"]);

        let event = |id: &str, key: &str| NewEvent {
            id: id.into(),
            source: "s".into(),
            key: key.into(),
            kind: "contact.created".into(),
            payload: "{}".into(),
            received_at: 2000,
            email: None,
            dedup_until: 999999,
            deliveries: vec![crate::store::NewDelivery {
                id: format!("d-{id}"),
                route: "Crm".into(),
                order_key: None,
                lease: None,
            }],
            origin: None,
            alias: None,
            contacts: None,
        };
        assert_eq!(store.ingest(event("e2", "K1")).await.unwrap(), IngestOutcome::Duplicate);
        assert_eq!(store.ingest(event("e3", "k1")).await.unwrap(), IngestOutcome::Stored);
        let pending = store.pending_per_route().await.unwrap();
        assert_eq!(pending, [("Crm".to_string(), 1)]);
        discard(store, &admin, &schema).await;
    }

    /// The queue table is vacuumed once 1 % of it is dead, not at PostgreSQL's default fifth.
    #[tokio::test]
    async fn the_queue_table_is_vacuumed_early() {
        let Some((store, admin, schema)) = scratch_store("a postgres autovacuum test").await else { return };
        let client = store.pool.get().await.unwrap();
        let options: Vec<String> = client
            .query_one("SELECT reloptions FROM pg_class WHERE oid = 'deliveries'::regclass", &[])
            .await
            .unwrap()
            .get(0);
        assert!(options.contains(&"autovacuum_vacuum_scale_factor=0.01".to_string()), "{options:?}");
        assert!(options.contains(&"autovacuum_vacuum_threshold=1000".to_string()), "{options:?}");
        // Room on each page for a claim's lease to be rewritten in place (migration 10).
        assert!(options.contains(&"fillfactor=80".to_string()), "{options:?}");
        drop(client);
        discard(store, &admin, &schema).await;
    }

    /// Failed deliveries (the gauge, the dead-letter list) are found through an index of their
    /// own once the table holds many delivered ones, since the index of every delivery by status
    /// is gone (migration 10); pending ones through the due index.
    #[tokio::test]
    async fn failed_and_pending_deliveries_are_found_by_index_among_many_delivered() {
        let Some((store, admin, schema)) = scratch_store("a postgres index test").await else { return };
        let client = store.pool.get().await.unwrap();
        client
            .batch_execute(
                "INSERT INTO deliveries (id, event_id, route, status, next_attempt_at, created_at, updated_at)
                 SELECT 'd' || n, 'e' || n, 'crm', CASE WHEN n % 5000 = 0 THEN 'failed' WHEN n % 4999 = 0
                     THEN 'pending' ELSE 'delivered' END, n, 0, 0 FROM generate_series(1, 50000) n;
                 ANALYZE deliveries",
            )
            .await
            .unwrap();
        // The dead-letter list as the store runs it: a named statement, executed often enough for
        // PostgreSQL to weigh a generic plan (which could not use a partial index) against it.
        client
            .batch_execute(&format!(
                "PREPARE list (text, text, text, bigint) AS {LIST_DELIVERIES}; {}",
                "EXECUTE list ('failed', NULL, NULL, 50);".repeat(8)
            ))
            .await
            .unwrap();
        for (sql, index) in [
            ("SELECT COUNT(*) FROM deliveries WHERE status = 'failed'", "deliveries_failed"),
            ("EXECUTE list ('failed', NULL, NULL, 50)", "deliveries_failed"),
            ("SELECT MIN(created_at) FROM deliveries WHERE status = 'pending'", "deliveries_due"),
        ] {
            let plan = plan_of(&client, sql).await;
            assert!(plan.contains(index), "{sql}:\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{sql}:\n{plan}");
        }
        let gauges = store.gauges().await.unwrap();
        assert_eq!((gauges.failed, gauges.queue_depth), (10, 10));
        let failed = DeliveryFilter { status: Some("failed".into()), route: None, after: None, limit: 50 };
        let listed = store.list_deliveries(failed).await.unwrap();
        assert_eq!(listed.iter().map(|d| d.id.as_str()).collect::<Vec<_>>()[..2], ["d10000", "d15000"]);
        assert_eq!(listed.len(), 10);
        drop(client);
        discard(store, &admin, &schema).await;
    }

    /// The statements of every event (settle, claim, ingest) run on connections that plan each
    /// once: prepared and run on a store that has just started (a few rows, no statistics), they
    /// still find rows by their indexes once the tables have grown and before any `ANALYZE`
    /// (without `enable_seqscan = off` the settle's plan is a hash join over a scan of the whole
    /// table). The console's connections still plan at each execution.
    #[tokio::test]
    async fn the_statements_of_every_event_planned_on_a_young_store_use_their_indexes_once_it_has_grown() {
        let Some((store, admin, schema)) = scratch_store("a postgres plan test").await else { return };
        let main = store.pool.get().await.unwrap();
        let mode: String = main.query_one("SHOW plan_cache_mode", &[]).await.unwrap().get(0);
        assert_eq!(mode, "force_custom_plan");
        drop(main);
        let client = store.hot.get().await.unwrap();
        let mode: String = client.query_one("SHOW plan_cache_mode", &[]).await.unwrap().get(0);
        assert_eq!(mode, "force_generic_plan");
        let settle = "ARRAY['d1', 'd2'], ARRAY['t', 't'], ARRAY['delivered', 'delivered'], ARRAY[NULL, NULL]::bigint[],
            ARRAY[200, 200], ARRAY[NULL, NULL]::text[], ARRAY[0, 0]::bigint[], ARRAY[0, 0], ARRAY[NULL, NULL]::text[],
            ARRAY[0, 0]::bigint[], ARRAY[3, 3]::bigint[], ARRAY[NULL, NULL]::text[]";
        let claim = "'t2', 10, 5, 8, ARRAY[]::text[]";
        let ingest = "ARRAY['bench'], ARRAY['k1'], ARRAY['e1'], ARRAY[9]::bigint[], ARRAY[0]::bigint[],
            ARRAY['contact.subscribed'], ARRAY['routed'], ARRAY['{}'], ARRAY[NULL]::text[], ARRAY[NULL]::text[],
            ARRAY[NULL]::text[], ARRAY['d1'], ARRAY['e1'], ARRAY['crm'], ARRAY[0]::bigint[], ARRAY[NULL]::text[],
            ARRAY[NULL]::text[], ARRAY[NULL]::bigint[]";
        // Deliveries `from..=to`, each with its event, as ingest leaves them (leased, pending).
        let add = |from: u32, to: u32| {
            let client = &client;
            async move {
                client
                    .batch_execute(&format!(
                        "INSERT INTO deliveries (id, event_id, route, status, next_attempt_at, created_at, updated_at,
                             lease_token)
                         SELECT 'd' || n, 'e' || n, 'crm', 'pending', n, 0, 0, 't' FROM generate_series({from}, {to}) n;
                         INSERT INTO events (id, source, event_key, kind, status, payload, received_at)
                         SELECT 'e' || n, 'bench', 'k' || n, 'contact.subscribed', 'routed', '{{}}', n
                         FROM generate_series({from}, {to}) n"
                    ))
                    .await
                    .unwrap()
            }
        };
        // A store that has just started: a few rows, no statistics taken yet.
        add(2, 200).await;
        client
            .batch_execute(&format!(
                "PREPARE settle (text[], text[], text[], bigint[], int[], text[], bigint[], int[], text[], bigint[],
                    bigint[], text[]) AS {};
                 PREPARE claim AS {CLAIM};
                 PREPARE ingest AS {};
                 EXECUTE ingest ({ingest}); {}",
                batch::SETTLE,
                batch::INGEST,
                format!("EXECUTE settle ({settle}); EXECUTE claim ({claim});").repeat(8)
            ))
            .await
            .unwrap();
        add(201, 20000).await;
        for (statement, index) in [
            (format!("EXECUTE settle ({settle})"), "deliveries_pkey"),
            (format!("EXECUTE claim ({claim})"), "deliveries_due"),
            (format!("EXECUTE ingest ({ingest})"), "deliveries_order"),
        ] {
            let plan = plan_of(&client, &statement).await;
            assert!(plan.contains(&format!("Index Scan using {index}")), "{statement}:\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{statement}:\n{plan}");
        }
        drop(client);
        discard(store, &admin, &schema).await;
    }
}
