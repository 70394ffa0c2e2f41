//! The PostgreSQL backend, for several relays on one database: the same operations as SQLite,
//! with claims by `FOR UPDATE SKIP LOCKED` under a lease token, dedup by the `(source, key)`
//! primary key, migrations serialized by an advisory lock, and `LISTEN`/`NOTIFY` to wake idle
//! workers on every replica when new deliveries are committed.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use futures_util::StreamExt;
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::{NoTls, Row};
use tokio_util::sync::CancellationToken;

use super::{
    AttemptRow, Claimed, DeliveryFilter, DeliveryRow, EventDetail, Gauges, IngestOutcome, NewEvent, NewQuarantined,
    Next, QuarantineOutcome, Quarantined, Settlement, StoreError, StoredEvent,
};
use crate::event::{now_ms, rfc3339};

/// The channel new deliveries are announced on.
const CHANNEL: &str = "lbx_relay_work";
/// Serializes migrations of replicas starting at once.
const MIGRATION_LOCK: i64 = 0x6c62_7872_656c_6179; // "lbxrelay"

const MIGRATIONS: &[&str] = &[r#"
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
"#];

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
    config: std::sync::Arc<tokio_postgres::Config>,
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
            None => StoreError::Database(e.to_string()),
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
        let mut config: tokio_postgres::Config = url
            .expose_secret()
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Database(format!("invalid postgres URL: {e}")))?;
        config.connect_timeout(opts.connect_timeout);
        if config.get_application_name().is_none() {
            config.application_name("lbx-relay");
        }
        let statement_timeout = opts.statement_timeout.as_millis();
        let existing = config.get_options().unwrap_or("").to_string();
        config.options(format!("{existing} -c statement_timeout={statement_timeout}").trim());
        let manager =
            Manager::from_config(config.clone(), NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(opts.pool_size.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(opts.connect_timeout))
            .create_timeout(Some(opts.connect_timeout))
            .recycle_timeout(Some(opts.connect_timeout))
            .build()
            .map_err(|e| StoreError::Database(format!("cannot build the connection pool: {e}")))?;
        let store = PgStore { pool, config: std::sync::Arc::new(config) };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await?;
        tx.batch_execute("CREATE TABLE IF NOT EXISTS lbx_schema_version (version INTEGER NOT NULL)").await?;
        let version: i32 = match tx.query_opt("SELECT version FROM lbx_schema_version", &[]).await? {
            Some(row) => row.get(0),
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

    pub async fn ingest(&self, ev: NewEvent) -> Result<IngestOutcome, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let claimed = tx
            .query_opt(
                "INSERT INTO dedup_keys (source, event_key, event_id, expires_at) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (source, event_key) DO UPDATE
                    SET event_id = excluded.event_id, expires_at = excluded.expires_at
                    WHERE dedup_keys.expires_at <= $5
                 RETURNING 1",
                &[&ev.source, &ev.key, &ev.id, &ev.dedup_until, &ev.received_at],
            )
            .await?;
        if claimed.is_none() {
            tx.rollback().await?;
            return Ok(IngestOutcome::Duplicate);
        }
        let status = if ev.deliveries.is_empty() { "unrouted" } else { "routed" };
        tx.execute(
            "INSERT INTO events (id, source, event_key, kind, status, payload, received_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
            &[&ev.id, &ev.source, &ev.key, &ev.kind, &status, &ev.payload, &ev.received_at],
        )
        .await?;
        if !ev.deliveries.is_empty() {
            let ids: Vec<&str> = ev.deliveries.iter().map(|(id, _)| id.as_str()).collect();
            let routes: Vec<&str> = ev.deliveries.iter().map(|(_, r)| r.as_str()).collect();
            tx.execute(
                "INSERT INTO deliveries (id, event_id, route, status, next_attempt_at, created_at, updated_at)
                 SELECT d.id, $2, d.route, 'pending', $3, $3, $3 FROM unnest($1::text[], $4::text[]) AS d(id, route)",
                &[&ids, &ev.id, &ev.received_at, &routes],
            )
            .await?;
            tx.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
        }
        tx.commit().await?;
        Ok(IngestOutcome::Stored)
    }

    pub async fn quarantine(&self, item: NewQuarantined, max_items: u64) -> Result<QuarantineOutcome, StoreError> {
        let client = self.pool.get().await?;
        let n = client
            .execute(
                "INSERT INTO quarantine (source, received_at, headers, body, reason)
                 SELECT $1, $2, $3, $4, $5 WHERE (SELECT COUNT(*) FROM quarantine) < $6",
                &[&item.source, &item.received_at, &item.headers, &item.body, &item.reason, &(max_items as i64)],
            )
            .await?;
        Ok(if n == 1 { QuarantineOutcome::Stored } else { QuarantineOutcome::Full })
    }

    pub async fn claim(&self, limit: usize, lease: Duration) -> Result<Vec<Claimed>, StoreError> {
        let client = self.pool.get().await?;
        let now = now_ms();
        let token = crate::event::new_id();
        let until = now + lease.as_millis() as i64;
        let rows = client
            .query(
                "UPDATE deliveries SET lease_token = $1, lease_until = $2
                 WHERE id IN (
                    SELECT id FROM deliveries
                    WHERE status = 'pending' AND next_attempt_at <= $3
                      AND (lease_until IS NULL OR lease_until <= $3)
                    ORDER BY next_attempt_at, id LIMIT $4
                    FOR UPDATE SKIP LOCKED)
                 RETURNING id, event_id, route, tries, attempts",
                &[&token, &until, &now, &(limit as i64)],
            )
            .await?;
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let event_ids: Vec<String> = rows.iter().map(|r| r.get::<_, String>(1)).collect();
        let events = client
            .query(
                "SELECT id, source, event_key, kind, status, payload, received_at FROM events WHERE id = ANY($1)",
                &[&event_ids],
            )
            .await?;
        let events: std::collections::HashMap<String, StoredEvent> =
            events.iter().map(event_from_row).map(|e| (e.id.clone(), e)).collect();
        Ok(rows
            .iter()
            .filter_map(|r| {
                let event = events.get(&r.get::<_, String>(1))?.clone();
                Some(Claimed {
                    delivery_id: r.get(0),
                    route: r.get(2),
                    lease_token: token.clone(),
                    tries: r.get::<_, i32>(3) as u32,
                    attempts: r.get::<_, i32>(4) as u32,
                    event,
                })
            })
            .collect())
    }

    pub async fn settle(&self, s: Settlement) -> Result<bool, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let now = now_ms();
        let (status, next_at) = match s.next {
            Next::Delivered => ("delivered", None),
            Next::RetryAt(at) => ("pending", Some(at)),
            Next::Failed => ("failed", None),
        };
        let changed = tx
            .execute(
                "UPDATE deliveries SET status = $1, next_attempt_at = $2, attempts = attempts + 1,
                    tries = tries + 1, lease_token = NULL, lease_until = NULL,
                    last_status = $3, last_error = $4, updated_at = $5
                 WHERE id = $6 AND lease_token = $7",
                &[
                    &status,
                    &next_at,
                    &opt_i32(s.attempt.status),
                    &s.attempt.error,
                    &now,
                    &s.delivery_id,
                    &s.lease_token,
                ],
            )
            .await?;
        let outcome = if changed == 1 { s.next.label() } else { "lease_lost" };
        tx.execute(
            "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status, error, outcome)
             VALUES ($1, COALESCE((SELECT attempts FROM deliveries WHERE id = $1), 0), $2, $3, $4, $5, $6)",
            &[
                &s.delivery_id,
                &s.attempt.started_at,
                &s.attempt.duration_ms,
                &opt_i32(s.attempt.status),
                &s.attempt.error,
                &outcome,
            ],
        )
        .await?;
        tx.commit().await?;
        Ok(changed == 1)
    }

    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT MIN(GREATEST(next_attempt_at, COALESCE(lease_until, 0))) FROM deliveries WHERE status = 'pending'",
                &[],
            )
            .await?;
        Ok(row.get(0))
    }

    pub async fn list_deliveries(&self, f: DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, event_id, route, status, attempts, last_status, last_error, next_attempt_at
                 FROM deliveries
                 WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR route = $2)
                   AND ($3::text IS NULL OR id > $3)
                 ORDER BY id LIMIT $4",
                &[&f.status, &f.route, &f.after, &(f.limit as i64)],
            )
            .await?;
        Ok(rows.iter().map(delivery_from_row).collect())
    }

    pub async fn retry(
        &self,
        id: Option<String>,
        status: Option<String>,
        route: Option<String>,
    ) -> Result<u64, StoreError> {
        let client = self.pool.get().await?;
        let now = now_ms();
        let n = client
            .execute(
                "UPDATE deliveries SET status = 'pending', tries = 0, next_attempt_at = $1, updated_at = $1
                 WHERE ($2::text IS NULL OR id = $2) AND ($3::text IS NULL OR status = $3)
                   AND ($4::text IS NULL OR route = $4)",
                &[&now, &id, &status, &route],
            )
            .await?;
        if n > 0 {
            client.execute("SELECT pg_notify($1, '')", &[&CHANNEL]).await?;
        }
        Ok(n)
    }

    pub async fn list_events(&self, after: Option<String>, limit: u32) -> Result<Vec<StoredEvent>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, source, event_key, kind, status, payload, received_at FROM events
                 WHERE ($1::text IS NULL OR id > $1) ORDER BY id LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await?;
        Ok(rows.iter().map(event_from_row).collect())
    }

    pub async fn event_detail(&self, id: &str) -> Result<Option<EventDetail>, StoreError> {
        let client = self.pool.get().await?;
        let Some(row) = client
            .query_opt(
                "SELECT id, source, event_key, kind, status, payload, received_at FROM events WHERE id = $1",
                &[&id],
            )
            .await?
        else {
            return Ok(None);
        };
        let deliveries: Vec<DeliveryRow> = client
            .query(
                "SELECT id, event_id, route, status, attempts, last_status, last_error, next_attempt_at
                 FROM deliveries WHERE event_id = $1 ORDER BY id",
                &[&id],
            )
            .await?
            .iter()
            .map(delivery_from_row)
            .collect();
        let ids: Vec<&str> = deliveries.iter().map(|d| d.id.as_str()).collect();
        let attempts = client
            .query(
                "SELECT delivery_id, attempt, started_at, duration_ms, status, error, outcome
                 FROM attempts WHERE delivery_id = ANY($1) ORDER BY id",
                &[&ids],
            )
            .await?
            .iter()
            .map(|r| AttemptRow {
                delivery_id: r.get(0),
                attempt: r.get::<_, i32>(1) as u32,
                started_at: rfc3339(r.get(2)),
                duration_ms: r.get(3),
                status: status_of(r.get(4)),
                error: r.get(5),
                outcome: r.get(6),
            })
            .collect();
        Ok(Some(EventDetail { event: event_from_row(&row), deliveries, attempts }))
    }

    pub async fn list_quarantine(&self, after: Option<i64>, limit: u32) -> Result<Vec<Quarantined>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                "SELECT id, source, received_at, headers, body, reason FROM quarantine
                 WHERE ($1::bigint IS NULL OR id > $1) ORDER BY id LIMIT $2",
                &[&after, &(limit as i64)],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Quarantined {
                id: r.get(0),
                source: r.get(1),
                received_at: r.get(2),
                headers: r.get(3),
                body: r.get(4),
                reason: r.get(5),
            })
            .collect())
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
                "SELECT e.id FROM events e WHERE e.received_at < $1
                   AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status <> 'delivered')
                 LIMIT 10000",
                &[&before],
            )
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        tx.execute(
            "DELETE FROM attempts WHERE delivery_id IN (SELECT id FROM deliveries WHERE event_id = ANY($1))",
            &[&ids],
        )
        .await?;
        tx.execute("DELETE FROM deliveries WHERE event_id = ANY($1)", &[&ids]).await?;
        let n = tx.execute("DELETE FROM events WHERE id = ANY($1)", &[&ids]).await?;
        tx.execute("DELETE FROM dedup_keys WHERE expires_at <= $1", &[&now_ms()]).await?;
        tx.commit().await?;
        Ok(n)
    }

    pub async fn gauges(&self) -> Result<Gauges, StoreError> {
        let client = self.pool.get().await?;
        let row = client
            .query_one(
                "SELECT (SELECT COUNT(*) FROM deliveries WHERE status = 'pending'),
                        (SELECT COUNT(*) FROM quarantine),
                        (SELECT MIN(created_at) FROM deliveries WHERE status = 'pending')",
                &[],
            )
            .await?;
        Ok(Gauges { queue_depth: row.get(0), quarantined: row.get(1), oldest_pending_at: row.get(2) })
    }

    pub async fn last_event_per_source(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client.query("SELECT source, MAX(received_at) FROM events GROUP BY source", &[]).await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn ping(&self) -> Result<(), StoreError> {
        self.pool.get().await?.query_one("SELECT 1", &[]).await?;
        Ok(())
    }

    /// Calls `wake` whenever any replica commits new or retried deliveries, until `stop`.
    /// Reconnects with a backoff when the listening connection drops.
    pub async fn listen(&self, wake: impl Fn() + Send + 'static, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        while !stop.is_cancelled() {
            match self.config.connect(NoTls).await {
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
                                Some(_) => {}
                                None => break,
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

fn event_from_row(r: &Row) -> StoredEvent {
    StoredEvent {
        id: r.get(0),
        source: r.get(1),
        key: r.get(2),
        kind: r.get(3),
        status: r.get(4),
        payload: r.get(5),
        received_at: r.get(6),
    }
}

fn delivery_from_row(r: &Row) -> DeliveryRow {
    DeliveryRow {
        id: r.get(0),
        event_id: r.get(1),
        route: r.get(2),
        status: r.get(3),
        attempts: r.get::<_, i32>(4) as u32,
        last_status: status_of(r.get(5)),
        last_error: r.get(6),
        next_attempt_at: r.get::<_, Option<i64>>(7).map(rfc3339),
    }
}
