//! The PostgreSQL backend, for several relays on one database: the same operations as SQLite,
//! with claims by `FOR UPDATE SKIP LOCKED` under a lease token, dedup by the `(source, key)`
//! primary key, migrations serialized by an advisory lock, and `LISTEN`/`NOTIFY` to wake idle
//! workers on every replica when new deliveries are committed.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::Row;
use tokio_util::sync::CancellationToken;

use super::{AttemptFact, RetryFilter, COUNT_CAP, DERIVED_STATUS};
use super::{
    AttemptRow, Claimed, DeliveryFilter, DeliveryRow, EventDetail, EventFilter, Forgotten, Gauges, IngestOutcome,
    Matching, NewEvent, NewQuarantined, QuarantineLimits, QuarantineOutcome, Quarantined, Settlement, StoreError,
    StoredEvent,
};
use crate::event::{now_ms, rfc3339};

/// The channel new deliveries are announced on.
const CHANNEL: &str = "lbx_relay_work";
/// Serializes migrations of replicas starting at once.
const MIGRATION_LOCK: i64 = 0x6c62_7872_656c_6179; // "lbxrelay"

const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE events (
    id          TEXT PRIMARY KEY,
    source      TEXT NOT NULL,
    event_key   TEXT NOT NULL,
    kind        TEXT NOT NULL,
    status      TEXT NOT NULL,
    payload     TEXT NOT NULL,
    received_at BIGINT NOT NULL
);
CREATE INDEX events_received_at ON events(received_at);
CREATE TABLE dedup_keys (
    source     TEXT NOT NULL,
    event_key  TEXT NOT NULL,
    event_id   TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (source, event_key)
);
CREATE TABLE deliveries (
    id              TEXT PRIMARY KEY,
    event_id        TEXT NOT NULL,
    route           TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    tries           INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    lease_token     TEXT,
    lease_until     BIGINT,
    last_status     INTEGER,
    last_error      TEXT,
    created_at      BIGINT NOT NULL,
    updated_at      BIGINT NOT NULL
);
CREATE INDEX deliveries_due ON deliveries(next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX deliveries_status ON deliveries(status, id);
CREATE INDEX deliveries_event ON deliveries(event_id);
CREATE TABLE attempts (
    id          BIGSERIAL PRIMARY KEY,
    delivery_id TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    started_at  BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    status      INTEGER,
    error       TEXT,
    outcome     TEXT NOT NULL
);
CREATE INDEX attempts_delivery ON attempts(delivery_id);
CREATE TABLE quarantine (
    id          BIGSERIAL PRIMARY KEY,
    source      TEXT NOT NULL,
    received_at BIGINT NOT NULL,
    headers     TEXT NOT NULL,
    body        BYTEA NOT NULL,
    reason      TEXT NOT NULL
);
"#,
    r#"
ALTER TABLE deliveries ADD COLUMN order_key TEXT, ADD COLUMN seq BIGSERIAL, ADD COLUMN steps_state TEXT;
CREATE INDEX deliveries_order ON deliveries(route, order_key, seq) WHERE order_key IS NOT NULL AND status = 'pending';
CREATE TABLE rate_windows (
    route TEXT PRIMARY KEY,
    slots BIGINT[] NOT NULL
);
CREATE TABLE oauth_tokens (
    key           TEXT PRIMARY KEY,
    refresh_token TEXT NOT NULL,
    updated_at    BIGINT NOT NULL
);
"#,
    // The quarantine's size, kept by a trigger so a bounded insert costs O(1), not a COUNT(*).
    r#"
CREATE TABLE quarantine_totals (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    items BIGINT NOT NULL,
    bytes BIGINT NOT NULL
);
INSERT INTO quarantine_totals
    SELECT 1, COUNT(*), COALESCE(SUM(octet_length(body) + octet_length(headers)), 0) FROM quarantine;
CREATE FUNCTION lbx_quarantine_totals() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE quarantine_totals SET items = items + 1,
            bytes = bytes + octet_length(NEW.body) + octet_length(NEW.headers) WHERE id = 1;
    ELSIF TG_OP = 'DELETE' THEN
        UPDATE quarantine_totals SET items = items - 1,
            bytes = bytes - octet_length(OLD.body) - octet_length(OLD.headers) WHERE id = 1;
    ELSE
        UPDATE quarantine_totals SET bytes = bytes - octet_length(OLD.body) - octet_length(OLD.headers)
            + octet_length(NEW.body) + octet_length(NEW.headers) WHERE id = 1;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER quarantine_totals AFTER INSERT OR DELETE OR UPDATE OF body, headers ON quarantine
    FOR EACH ROW EXECUTE FUNCTION lbx_quarantine_totals();
ALTER TABLE events ADD COLUMN email TEXT;
CREATE INDEX events_email ON events(email) WHERE email IS NOT NULL;
CREATE INDEX events_key ON events(event_key);
ALTER TABLE attempts ADD COLUMN detail TEXT;
"#,
];

/// Pool and timeout settings from `[store]`.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub pool_size: usize,
    pub connect_timeout: Duration,
    pub statement_timeout: Duration,
}

#[derive(Clone)]
pub struct PgStore {
    pool: Pool,
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
        write!(f, "PgStore(pool of {})", self.pool.status().max_size)
    }
}

impl From<tokio_postgres::Error> for StoreError {
    fn from(e: tokio_postgres::Error) -> Self {
        // The Display of a db error carries its message; never the connection string.
        match e.as_db_error() {
            Some(db) => StoreError::Database(format!("{}: {}", db.code().code(), db.message())),
            None => {
                // "error performing TLS handshake" alone does not say that the certificate was refused.
                let mut text = e.to_string();
                let mut cur = std::error::Error::source(&e);
                while let Some(inner) = cur {
                    text.push_str(": ");
                    text.push_str(&inner.to_string());
                    cur = inner.source();
                }
                StoreError::Database(text)
            }
        }
    }
}

impl From<deadpool_postgres::PoolError> for StoreError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => StoreError::Database(format!("no database connection: {other}")),
        }
    }
}

fn opt_i32(v: Option<u16>) -> Option<i32> {
    v.map(i32::from)
}

fn status_of(v: Option<i32>) -> Option<u16> {
    v.and_then(|s| u16::try_from(s).ok())
}

impl PgStore {
    /// Connects, applies migrations (under an advisory lock) and returns the store.
    pub async fn open(url: &SecretString, opts: &PgOptions) -> Result<PgStore, StoreError> {
        let (mut config, tls) = super::pg_tls::connect_settings(url.expose_secret())?;
        config.connect_timeout(opts.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("lbx-relay");
        }
        let statement_timeout = opts.statement_timeout.as_millis();
        let existing = config.get_options().unwrap_or("").to_string();
        config.options(format!("{existing} -c statement_timeout={statement_timeout}").trim());
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig { recycling_method: RecyclingMethod::Fast },
        );
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(opts.connect_timeout))
            .create_timeout(Some(opts.connect_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .build()
            .map_err(|e| StoreError::Database(format!("cannot build the connection pool: {e}")))?;
        let (batches, rx) = tokio::sync::mpsc::unbounded_channel();
        let store = PgStore { pool, config: std::sync::Arc::new(config), tls, announce: Default::default(), batches };
        store.migrate().await?;
        tokio::spawn(announcer(store.pool.clone(), store.announce.clone()));
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..BATCHERS {
            tokio::spawn(batcher(store.pool.clone(), rx.clone(), store.announce.clone()));
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
            return Err(StoreError::Database(format!(
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
    ) -> Result<Vec<Claimed>, StoreError> {
        let client = self.pool.get().await?;
        let now = now_ms();
        let token = crate::event::new_id();
        let until = now + lease.as_millis() as i64;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "UPDATE deliveries SET lease_token = $1, lease_until = $2
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
                 RETURNING id, event_id, route, tries, attempts, steps_state, order_key IS NOT NULL",
                    )
                    .await?,
                &[&token, &until, &now, &(limit as i64), &skip_routes],
            )
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let event_ids: Vec<String> = rows.iter().map(|r| r.try_get::<_, String>(1)).collect::<Result<_, _>>()?;
        let events = client
            .query(
                &client.prepare_cached("SELECT id, source, event_key, kind, status, payload, received_at FROM events WHERE id = ANY($1)").await?,
                &[&event_ids],
            )
            .await?;
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

    pub async fn save_steps_state(
        &self,
        delivery_id: String,
        lease_token: String,
        state: String,
    ) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached("UPDATE deliveries SET steps_state = $1 WHERE id = $2 AND lease_token = $3")
                    .await?,
                &[&state, &delivery_id, &lease_token],
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn extend_lease(&self, delivery_id: String, lease_token: String, until: i64) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached("UPDATE deliveries SET lease_until = $1 WHERE id = $2 AND lease_token = $3")
                    .await?,
                &[&until, &delivery_id, &lease_token],
            )
            .await?;
        Ok(n == 1)
    }

    pub async fn defer(&self, delivery_id: String, lease_token: String, at: i64) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE deliveries SET next_attempt_at = $1, lease_token = NULL, lease_until = NULL
                 WHERE id = $2 AND lease_token = $3",
                    )
                    .await?,
                &[&at, &delivery_id, &lease_token],
            )
            .await?;
        Ok(n == 1)
    }

    /// The shared sliding window of `route`, reserved under a row lock so replicas never hand out
    /// more than the rate between them.
    pub async fn reserve_rate_slot(
        &self,
        route: &str,
        rate: crate::config::RateLimit,
        now: i64,
        max_wait: i64,
    ) -> Result<Result<i64, i64>, StoreError> {
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
        let reserved = crate::delivery::limits::reserve(&mut sent, rate, now, max_wait);
        if reserved.is_ok() {
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
        let client = self.pool.get().await?;
        let row = client
            .query_opt(&client.prepare_cached("SELECT refresh_token FROM oauth_tokens WHERE key = $1").await?, &[&key])
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn save_oauth_refresh_token(&self, key: String, token: String) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client
            .execute(
                &client.prepare_cached("INSERT INTO oauth_tokens (key, refresh_token, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (key) DO UPDATE SET refresh_token = excluded.refresh_token, updated_at = excluded.updated_at").await?,
                &[&key, &token, &now_ms()],
            )
            .await?;
        Ok(())
    }

    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &client.prepare_cached("SELECT MIN(GREATEST(next_attempt_at, COALESCE(lease_until, 0))) FROM deliveries WHERE status = 'pending'").await?,
                &[],
            )
            .await?;
        Ok(row.try_get(0)?)
    }

    pub async fn list_deliveries(&self, f: DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT id, event_id, route, status, attempts, last_status, last_error, next_attempt_at
                 FROM deliveries
                 WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR route = $2)
                   AND ($3::text IS NULL OR id > $3)
                 ORDER BY id LIMIT $4",
                    )
                    .await?,
                &[&f.status, &f.route, &f.after, &(f.limit as i64)],
            )
            .await?;
        rows.iter().map(delivery_from_row).collect()
    }

    pub async fn retry_one(&self, id: String) -> Result<bool, StoreError> {
        let client = self.pool.get().await?;
        let now = now_ms();
        let n = client
            .execute(
                &client
                    .prepare_cached(
                        "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = $1, updated_at = $1,
                    steps_state = CASE WHEN status = 'delivered' THEN NULL ELSE steps_state END
                 WHERE id = $2",
                    )
                    .await?,
                &[&now, &id],
            )
            .await?;
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
        Ok(n > 0)
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
    ) -> Result<(Vec<StoredEvent>, Matching), StoreError> {
        let client = self.pool.get().await?;
        let like = f.kind.as_deref().map(glob_to_like);
        let filter = format!(
            "($1::text IS NULL OR e.kind LIKE $1 ESCAPE '\\') AND ($2::text IS NULL OR ({DERIVED_STATUS}) = $2)
             AND ($3::text IS NULL OR EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.route = $3))
             AND ($4::text[] IS NULL OR e.email = ANY($4))
             AND ($5::text IS NULL OR e.event_key = $5)
             AND ($6::bigint IS NULL OR e.received_at >= $6) AND ($7::bigint IS NULL OR e.received_at < $7)"
        );
        let counted: i64 = client
            .query_one(
                &format!("SELECT COUNT(*) FROM (SELECT 1 FROM events e WHERE {filter} LIMIT {}) AS m", COUNT_CAP + 1),
                &[&like, &f.status, &f.route, &emails, &f.key, &f.since, &f.until],
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
                &[&like, &f.status, &f.route, &emails, &f.key, &f.since, &f.until, &f.after, &(f.limit as i64)],
            )
            .await?;
        let events = rows.iter().map(event_from_row).collect::<Result<Vec<_>, _>>()?;
        let counted = counted as u64;
        Ok((events, Matching { total: counted.min(COUNT_CAP), exact: counted <= COUNT_CAP }))
    }

    pub async fn attempt_facts(&self, since: i64, limit: u32) -> Result<Vec<AttemptFact>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT d.route, a.started_at, a.duration_ms, a.outcome, a.status, a.error, e.received_at
                 FROM attempts a JOIN deliveries d ON d.id = a.delivery_id JOIN events e ON e.id = d.event_id
                 WHERE a.started_at >= $1 ORDER BY a.id DESC LIMIT $2",
                    )
                    .await?,
                &[&since, &(limit as i64)],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptFact {
                    route: r.try_get(0)?,
                    started_at: r.try_get(1)?,
                    duration_ms: r.try_get(2)?,
                    outcome: r.try_get(3)?,
                    status: status_of(r.try_get(4)?),
                    error: r.try_get(5)?,
                    received_at: r.try_get(6)?,
                })
            })
            .collect()
    }

    pub async fn pending_per_route(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached("SELECT route, COUNT(*) FROM deliveries WHERE status = 'pending' GROUP BY route")
                    .await?,
                &[],
            )
            .await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    pub async fn retry_matching(&self, f: RetryFilter, dry_run: bool) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let like = f.kind.as_deref().map(glob_to_like);
        let filter = "($2::text IS NULL OR status = $2) AND ($3::text IS NULL OR route = $3)
             AND (($4::text IS NULL AND $5::bigint IS NULL AND $6::bigint IS NULL) OR event_id IN (SELECT e.id FROM events e
                  WHERE ($4::text IS NULL OR e.kind LIKE $4 ESCAPE '\\') AND ($5::bigint IS NULL OR e.received_at >= $5)
                    AND ($6::bigint IS NULL OR e.received_at < $6)))";
        let now = now_ms();
        let args: [&(dyn tokio_postgres::types::ToSql + Sync); 6] =
            [&now, &f.status, &f.route, &like, &f.since, &f.until];
        let n = if dry_run {
            let row = client
                .query_one(&format!("SELECT COUNT(*) FROM deliveries WHERE $1::bigint IS NOT NULL AND {filter}"), &args)
                .await?;
            row.try_get::<_, i64>(0)? as u64
        } else {
            let n = client
                .execute(
                    &format!(
                        "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = $1, updated_at = $1,
                            steps_state = CASE WHEN status = 'delivered' THEN NULL ELSE steps_state END
                         WHERE {filter}"
                    ),
                    &args,
                )
                .await?;
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
                        "SELECT id, source, event_key, kind, status, payload, received_at FROM events WHERE id = $1",
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
                 FROM attempts WHERE delivery_id = ANY($1) ORDER BY id",
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
                    started_at: rfc3339(r.try_get(2)?),
                    duration_ms: r.try_get(3)?,
                    status: status_of(r.try_get(4)?),
                    error: r.try_get(5)?,
                    outcome: r.try_get(6)?,
                    detail: r.try_get(7)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(EventDetail { event: event_from_row(&row)?, deliveries, attempts }))
    }

    pub async fn list_quarantine(&self, after: Option<i64>, limit: u32) -> Result<Vec<Quarantined>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT id, source, received_at, headers, body, reason FROM quarantine
                 WHERE ($1::bigint IS NULL OR id > $1) ORDER BY id LIMIT $2",
                    )
                    .await?,
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

    pub async fn purge(&self, before: i64) -> Result<u64, StoreError> {
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
        tx.execute(&tx.prepare_cached("DELETE FROM dedup_keys WHERE expires_at <= $1").await?, &[&now_ms()]).await?;
        tx.commit().await?;
        Ok(n)
    }

    pub async fn forget_contact(&self, email: String, index: Vec<String>) -> Result<Forgotten, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let ids: Vec<String> = tx
            .query(
                &tx.prepare_cached("SELECT id FROM events WHERE email = ANY($2) OR strpos(lower(payload), $1) > 0")
                    .await?,
                &[&email, &index],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let attempts = tx
            .execute(
                &tx.prepare_cached(
                    "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ANY($1))",
                )
                .await?,
                &[&ids],
            )
            .await?;
        let deliveries =
            tx.execute(&tx.prepare_cached("DELETE FROM deliveries WHERE event_id = ANY($1)").await?, &[&ids]).await?;
        let events = tx.execute(&tx.prepare_cached("DELETE FROM events WHERE id = ANY($1)").await?, &[&ids]).await?;
        tx.commit().await?;
        Ok(Forgotten { events, deliveries, attempts, quarantined: 0 })
    }

    pub async fn gauges(&self) -> Result<Gauges, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                &client
                    .prepare_cached(
                        "SELECT (SELECT COUNT(*) FROM deliveries WHERE status = 'pending'),
                        (SELECT items FROM quarantine_totals WHERE id = 1),
                        (SELECT bytes FROM quarantine_totals WHERE id = 1),
                        (SELECT MIN(created_at) FROM deliveries WHERE status = 'pending'),
                        (SELECT COUNT(*) FROM deliveries WHERE status = 'failed')",
                    )
                    .await?,
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

    pub async fn last_event_per_source(&self, sources: Vec<String>) -> Result<Vec<(String, i64)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &client
                    .prepare_cached(
                        "SELECT s, (SELECT MAX(received_at) FROM events WHERE source = s) FROM unnest($1::text[]) AS s",
                    )
                    .await?,
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

    pub async fn ping(&self, _probe_bytes: usize) -> Result<(), StoreError> {
        self.pool.get().await?.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    /// Calls `wake` whenever any replica commits new or retried deliveries, until `stop`.
    /// Reconnects with a backoff when the listening connection drops.
    pub async fn listen(&self, wake: impl Fn() + Send + 'static, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            match self.config.connect(self.tls.clone()).await {
                Ok((client, mut connection)) => {
                    backoff = Duration::from_millis(100);
                    let mut messages =
                        futures_util::stream::poll_fn(move |cx| connection.poll_message(cx).map(|m| m.map(|r| r.ok())));
                    // The connection must be polled for LISTEN to be sent and answered.
                    let sql = format!("LISTEN {CHANNEL}");
                    let listen = client.batch_execute(&sql);
                    tokio::pin!(listen);
                    let mut listening = false;
                    loop {
                        tokio::select! {
                            r = &mut listen, if !listening => {
                                if let Err(e) = r {
                                    tracing::warn!(error = %StoreError::from(e), "postgres: LISTEN failed");
                                    break;
                                }
                                listening = true;
                                wake(); // work may have arrived while we were not listening
                            }
                            m = messages.next() => match m {
                                Some(Some(tokio_postgres::AsyncMessage::Notification(_))) => wake(),
                                Some(Some(_)) => {}
                                // An error ends the connection: polling it again would only repeat it.
                                Some(None) | None => break,
                            },
                            _ = stop.cancelled() => return,
                        }
                    }
                    tracing::warn!("postgres: the notification connection closed; reconnecting");
                }
                Err(e) => {
                    tracing::warn!(error = %StoreError::from(e), "postgres: cannot open the notification connection");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.cancelled() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

/// Group-commit tasks per process: while one commits, the next batch gathers.
const BATCHERS: usize = 2;
/// Most jobs folded into one transaction.
const MAX_BATCH: usize = 512;

type Reply<T> = tokio::sync::oneshot::Sender<Result<T, StoreError>>;

/// An ingest or a settlement waiting for the next group transaction.
enum Queued {
    Ingest(NewEvent, Reply<IngestOutcome>),
    Settle(Settlement, Reply<bool>),
}

/// Takes whatever ingests and settlements are queued and writes them in one transaction with a
/// handful of set-based statements; everybody is answered after the commit.
async fn batcher(
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
                tracing::error!(error = %e, ingests = evs.len(), settles = sts.len(), "postgres: batch not committed");
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
    let now = now_ms();

    // Ingest. Keys are taken in a fixed order so concurrent batches cannot deadlock, and a key
    // repeated within the batch counts once.
    let mut outcomes = vec![IngestOutcome::Duplicate; evs.len()];
    let mut order: Vec<usize> = (0..evs.len()).collect();
    order.sort_by(|&a, &b| (&evs[a].source, &evs[a].key).cmp(&(&evs[b].source, &evs[b].key)));
    order.dedup_by(|a, b| evs[*a].source == evs[*b].source && evs[*a].key == evs[*b].key);
    if !order.is_empty() {
        let col = |f: fn(&NewEvent) -> &str| order.iter().map(|&i| f(evs[i])).collect::<Vec<&str>>();
        let (sources, keys, ids) = (col(|e| &e.source), col(|e| &e.key), col(|e| &e.id));
        let expires: Vec<i64> = order.iter().map(|&i| evs[i].dedup_until).collect();
        let received: Vec<i64> = order.iter().map(|&i| evs[i].received_at).collect();
        // A live key is a duplicate; an expired one (as of the event's arrival) is taken over.
        let claimed: std::collections::HashSet<String> = tx
            .query(
                &tx.prepare_cached(
                    "WITH input AS (
                    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::bigint[])
                        AS t(source, event_key, event_id, expires_at, received_at))
                 INSERT INTO dedup_keys (source, event_key, event_id, expires_at)
                 SELECT source, event_key, event_id, expires_at FROM input
                 ON CONFLICT (source, event_key) DO UPDATE
                    SET event_id = excluded.event_id, expires_at = excluded.expires_at
                    WHERE dedup_keys.expires_at <= (SELECT i.received_at FROM input i
                        WHERE i.source = excluded.source AND i.event_key = excluded.event_key)
                 RETURNING event_id",
                )
                .await?,
                &[&sources, &keys, &ids, &expires, &received],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        let stored: Vec<usize> = order.iter().copied().filter(|&i| claimed.contains(&evs[i].id)).collect();
        let col = |f: fn(&NewEvent) -> &str| stored.iter().map(|&i| f(evs[i])).collect::<Vec<&str>>();
        let statuses: Vec<&str> =
            stored.iter().map(|&i| if evs[i].deliveries.is_empty() { "unrouted" } else { "routed" }).collect();
        let received: Vec<i64> = stored.iter().map(|&i| evs[i].received_at).collect();
        tx.execute(
            &tx.prepare_cached("INSERT INTO events (id, source, event_key, kind, status, payload, received_at, email)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::bigint[], $8::text[])").await?,
            &[
                &col(|e| &e.id),
                &col(|e| &e.source),
                &col(|e| &e.key),
                &col(|e| &e.kind),
                &statuses,
                &col(|e| &e.payload),
                &received,
                &stored.iter().map(|&i| evs[i].email.as_deref()).collect::<Vec<Option<&str>>>(),
            ],
        )
        .await?;
        let (mut d_ids, mut d_events, mut d_routes, mut d_at, mut d_keys) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut d_tokens, mut d_until) = (Vec::new(), Vec::new());
        for &i in &stored {
            outcomes[i] = IngestOutcome::Stored;
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
        if !d_ids.is_empty() {
            // WITH ORDINALITY keeps arrival order in `seq`, which per-key ordering relies on.
            tx.execute(
                &tx.prepare_cached("INSERT INTO deliveries (id, event_id, route, status, next_attempt_at, created_at, updated_at, order_key,
                    lease_token, lease_until)
                 SELECT id, event_id, route, 'pending',
                    GREATEST(at, COALESCE((SELECT h.next_attempt_at FROM deliveries h
                        WHERE h.route = d.route AND h.order_key = d.order_key AND h.status = 'pending'
                        ORDER BY h.seq LIMIT 1), at)),
                    at, at, order_key, lease_token, lease_until
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::text[], $6::text[], $7::bigint[])
                    WITH ORDINALITY AS d(id, event_id, route, at, order_key, lease_token, lease_until, n)
                 ORDER BY n").await?,
                &[&d_ids, &d_events, &d_routes, &d_at, &d_keys, &d_tokens, &d_until],
            )
            .await?;
        }
    }

    // Settle.
    let mut kept = vec![false; sts.len()];
    if !sts.is_empty() {
        let ids: Vec<&str> = sts.iter().map(|s| s.delivery_id.as_str()).collect();
        let tokens: Vec<&str> = sts.iter().map(|s| s.lease_token.as_str()).collect();
        let statuses: Vec<&str> = sts.iter().map(|s| s.next.columns().0).collect();
        let next_at: Vec<Option<i64>> = sts.iter().map(|s| s.next.columns().1).collect();
        let steps_used: Vec<i32> = sts.iter().map(|s| s.next.columns().2).collect();
        let states: Vec<Option<&str>> = sts.iter().map(|s| s.steps_state.as_deref()).collect();
        let last_status: Vec<Option<i32>> = sts.iter().map(|s| opt_i32(s.attempt.status)).collect();
        let last_error: Vec<Option<&str>> = sts.iter().map(|s| s.attempt.error.as_deref()).collect();
        let updated: HashMap<String, i32> = tx
            .query(
                &tx.prepare_cached("UPDATE deliveries d SET status = u.status, next_attempt_at = u.next_at, attempts = d.attempts + 1,
                    tries = d.tries + u.used, lease_token = NULL, lease_until = NULL,
                    last_status = u.last_status, last_error = u.last_error, updated_at = $7, steps_state = u.state
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[], $5::int[], $6::text[], $8::int[], $9::text[])
                    AS u(id, token, status, next_at, last_status, last_error, used, state)
                 WHERE d.id = u.id AND d.lease_token = u.token
                 RETURNING d.id, d.attempts").await?,
                &[&ids, &tokens, &statuses, &next_at, &last_status, &last_error, &now, &steps_used, &states],
            )
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, tokio_postgres::Error>>()?;
        // A keyed head that waits for a retry parks the deliveries queued behind it until then, so
        // claims do not scan a blocked backlog (see the SQLite store).
        let waiting: Vec<&str> = sts
            .iter()
            .filter(|s| s.keyed && updated.contains_key(&s.delivery_id) && s.next.columns().0 == "pending")
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
        let attempt_no: Vec<i32> = sts.iter().map(|s| updated.get(&s.delivery_id).copied().unwrap_or(0)).collect();
        let labels: Vec<&str> = sts
            .iter()
            .map(|s| if updated.contains_key(&s.delivery_id) { s.next.label() } else { "lease_lost" })
            .collect();
        let started: Vec<i64> = sts.iter().map(|s| s.attempt.started_at).collect();
        let details: Vec<Option<&str>> = sts.iter().map(|s| s.attempt.detail.as_deref()).collect();
        let durations: Vec<i64> = sts.iter().map(|s| s.attempt.duration_ms).collect();
        tx.execute(
            &tx.prepare_cached(
                "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status, error, outcome, detail)
             SELECT * FROM unnest($1::text[], $2::int[], $3::bigint[], $4::bigint[], $5::int[], $6::text[], $7::text[],
                                  $8::text[])",
            )
            .await?,
            &[&ids, &attempt_no, &started, &durations, &last_status, &last_error, &labels, &details],
        )
        .await?;
        for (k, s) in kept.iter_mut().zip(sts) {
            *k = updated.contains_key(&s.delivery_id);
        }
    }
    tx.commit().await?;
    Ok((outcomes, kept))
}

/// Tells the other replicas about new work with one NOTIFY per burst. NOTIFY inside the ingest
/// transaction would serialize every commit on PostgreSQL's notification-queue lock; here commits
/// stay parallel and a burst of ingests costs one notification. Stops with the pool.
async fn announcer(pool: Pool, announce: std::sync::Arc<tokio::sync::Notify>) {
    /// Bursts closer than this share one notification.
    const COALESCE: Duration = Duration::from_millis(5);
    loop {
        announce.notified().await;
        if pool.is_closed() {
            return;
        }
        tokio::time::sleep(COALESCE).await;
        match pool.get().await {
            Ok(client) => {
                if let Err(e) = client.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await {
                    tracing::debug!(error = %StoreError::from(e), "postgres: NOTIFY failed; replicas fall back to polling");
                }
            }
            Err(e) => tracing::debug!(error = %StoreError::from(e), "postgres: NOTIFY skipped"),
        }
    }
}

/// A shell-style glob (`*`, `?`) as a LIKE pattern with `\` as the escape.
fn glob_to_like(glob: &str) -> String {
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

fn delivery_from_row(r: &Row) -> Result<DeliveryRow, StoreError> {
    Ok(DeliveryRow {
        id: r.try_get(0)?,
        event_id: r.try_get(1)?,
        route: r.try_get(2)?,
        status: r.try_get(3)?,
        attempts: r.try_get::<_, i32>(4)? as u32,
        last_status: status_of(r.try_get(5)?),
        last_error: r.try_get(6)?,
        next_attempt_at: r.try_get::<_, Option<i64>>(7)?.map(rfc3339),
    })
}
