//! The durable queue: events, their deliveries and attempts, dedup keys and the quarantine.
//! `Store` is chosen once from `[store] url`; each backend writes its own SQL behind the same
//! operations: ingest's (ingest, quarantine), the queue's (claim, lease, defer, settle), the
//! console's queries (lists, details, triage), upkeep's (purge, gauges, coverage), erasure's.

pub mod cipher;
pub mod model;
pub mod pg_tls;
pub mod postgres;
pub mod reconcile;
pub mod sqlite;
pub mod triage;

use std::time::Duration;

pub use model::*;

use crate::config::{StoreBackend, StoreConfig};
use crate::email::Email;

/// Why a store call failed. The driver's (or the file system's) error is kept as the source, so
/// a log line or answer shows the whole chain with [`crate::telemetry::Chain`] and `{:#}`.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// A database call failed (with PostgreSQL's SQLSTATE when the server gave one).
    #[error("database error{}", code.as_ref().map(|c| format!(" {c}")).unwrap_or_default())]
    Database {
        code: Option<String>,
        #[source]
        cause: Cause,
    },
    /// Something the store was doing failed (opening its file, building its pool, its TLS).
    #[error("{doing}")]
    Failed {
        doing: String,
        #[source]
        cause: Cause,
    },
    /// A refusal that has no underlying error (an invalid URL, an undecryptable value).
    #[error("{0}")]
    Invalid(String),
    #[error("the store is shut down")]
    Closed,
    #[error("commit failed")]
    Commit(#[source] Cause),
    /// The store can no longer keep what it acknowledges (its file was deleted): not ready.
    #[error("{0}")]
    Lost(String),
    #[error("store.encryption_key")]
    Key(#[source] crate::secrets::KeyError),
}

impl StoreError {
    /// `doing` failed because of `cause`.
    pub fn failed(doing: impl Into<String>, cause: impl std::error::Error + Send + Sync + 'static) -> StoreError {
        StoreError::Failed { doing: doing.into(), cause: Cause::new(cause) }
    }
}

/// The underlying error of a [`StoreError`], shared so that one failed batch can answer every
/// caller in it.
#[derive(Debug, Clone)]
pub struct Cause(std::sync::Arc<dyn std::error::Error + Send + Sync>);

impl Cause {
    pub fn new(e: impl std::error::Error + Send + Sync + 'static) -> Cause {
        Cause(std::sync::Arc::new(e))
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        StoreError::Database { code: None, cause: Cause::new(e) }
    }
}

/// Whether the last event write failed: a store can commit a one-row heartbeat while a full disk
/// refuses every event, so after a failure `/readyz` probes with an event-sized write until one
/// succeeds (or an event is stored again).
#[derive(Debug, Default)]
pub struct WriteHealth {
    last_failure: std::sync::Mutex<Option<String>>,
}

impl WriteHealth {
    /// The size of the write `/readyz` probes with after a failed event write.
    pub const PROBE_BYTES: usize = 64 * 1024;

    pub fn failed(&self, error: &StoreError) {
        *self.last_failure.lock().unwrap_or_else(|e| e.into_inner()) = Some(crate::telemetry::Chain(error).to_string());
    }

    pub fn succeeded(&self) {
        let mut last = self.last_failure.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some() {
            *last = None;
        }
    }

    /// The error of the last event write, when no write succeeded after it.
    pub fn failing(&self) -> Option<String> {
        self.last_failure.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Routes' rate windows kept in a store shared by replicas, so a limit holds for all of them.
#[derive(Clone, Debug)]
pub struct SharedRateWindows(postgres::PgStore);

impl SharedRateWindows {
    /// Reserves a send time for `route` (see [`crate::rate_window::reserve`]) under a row lock.
    pub async fn reserve(
        &self,
        route: &str,
        rate: crate::config::RateLimit,
        now: i64,
        max_wait: i64,
    ) -> Result<crate::rate_window::Reservation, StoreError> {
        self.0.reserve_rate_slot(route, rate, now, max_wait).await
    }
}

/// The derived status of an event from its deliveries, as SQL on the `events e` row.
pub(crate) const DERIVED_STATUS: &str = "CASE WHEN e.status = 'unrouted' THEN 'unrouted' \
     WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status = 'failed') THEN 'failed' \
     WHEN EXISTS (SELECT 1 FROM deliveries d WHERE d.event_id = e.id AND d.status = 'pending') THEN 'pending' \
     ELSE 'delivered' END";

/// The longest run of ASCII characters of the address, which SQL `lower()` folds the same way on
/// every backend: the coarse filter a payload must pass before the whole-address check.
fn ascii_needle(email: &Email) -> String {
    email.as_str().split(|c: char| !c.is_ascii()).max_by_key(|run| run.len()).unwrap_or_default().to_string()
}

/// The backend chosen at start.
#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// The store: a backend, and the cipher that seals personal data at rest when a key is set.
#[derive(Clone, Debug)]
pub struct Store {
    backend: Backend,
    cipher: Option<std::sync::Arc<cipher::Cipher>>,
}

/// What stands for a value that does not open (see `Store::read_text`).
fn unreadable(column: &str, e: &StoreError) -> String {
    let why = format!("cannot be opened with the configured keys: {e}");
    if column == PAYLOAD {
        serde_json::json!({ UNREADABLE: why }).to_string()
    } else {
        format!("(unreadable: {why})")
    }
}

/// The key of the object that stands for a payload that does not open.
pub const UNREADABLE: &str = "lbx_unreadable";

/// Forwards a call to the backend in use.
macro_rules! dispatch {
    ($self:ident, $s:ident => $call:expr) => {
        match &$self.backend {
            Backend::Sqlite($s) => $call,
            Backend::Postgres($s) => $call,
        }
    };
}

/// Column names, bound into each sealed value.
const PAYLOAD: &str = "events.payload";
const STEPS: &str = "deliveries.steps_state";
const ERROR: &str = "attempts.error";
const QBODY: &str = "quarantine.body";
const QHEADERS: &str = "quarantine.headers";
const REFRESH: &str = "oauth_tokens.refresh_token";
const DETAIL: &str = "attempts.detail";

impl Store {
    pub async fn open(config: &StoreConfig) -> Result<Store, StoreError> {
        let cipher = match &config.encryption_key {
            Some(key) => Some(std::sync::Arc::new(
                cipher::Cipher::new(key, &config.previous_encryption_keys).map_err(StoreError::Key)?,
            )),
            None => None,
        };
        let backend = match &config.backend {
            StoreBackend::Sqlite { path } => Backend::Sqlite(sqlite::SqliteStore::open_with(path, config.sync)?),
            StoreBackend::Postgres { url } => {
                let opts = postgres::PgOptions {
                    pool_size: config.pool_size,
                    connect_timeout: config.connect_timeout,
                    statement_timeout: config.statement_timeout,
                };
                Backend::Postgres(postgres::PgStore::open(url, &opts).await?)
            }
        };
        Ok(Store { backend, cipher })
    }

    /// A store over an already open backend, without encryption (tests and tools).
    pub fn from_backend(backend: Backend) -> Store {
        Store { backend, cipher: None }
    }

    fn seal(&self, column: &str, value: String) -> String {
        match &self.cipher {
            Some(c) => c.seal_text(column, &value),
            None => value,
        }
    }

    fn open_text(&self, column: &str, value: String) -> Result<String, StoreError> {
        match &self.cipher {
            Some(c) => c.open_text(column, value),
            None => Ok(value),
        }
    }

    fn open_opt(&self, column: &str, value: Option<String>) -> Result<Option<String>, StoreError> {
        value.map(|v| self.open_text(column, v)).transpose()
    }

    /// Opens a value for a listing: one that does not open (its key was removed) is shown as
    /// unreadable instead of failing the whole answer. A payload becomes
    /// `{"lbx_unreadable": "why"}`, so what parses it still can.
    fn read_text(&self, column: &str, value: String) -> String {
        match self.open_text(column, value) {
            Ok(v) => v,
            Err(e) => {
                static SAID: crate::telemetry::LogLimiter =
                    crate::telemetry::LogLimiter::every(std::time::Duration::from_secs(60));
                if SAID.should_log(crate::clock::monotonic_ms()) {
                    tracing::error!(column, error = %e, "a stored value cannot be opened with the configured keys; shown as unreadable");
                }
                unreadable(column, &e)
            }
        }
    }

    fn read_opt(&self, column: &str, value: Option<String>) -> Option<String> {
        value.map(|v| self.read_text(column, v))
    }

    /// Stores the event and its deliveries in one transaction unless its dedup key is live.
    pub async fn ingest(&self, mut event: NewEvent) -> Result<IngestOutcome, StoreError> {
        if let Some(c) = &self.cipher {
            // Every address the payload names is indexed (erasure cannot read sealed payloads),
            // and an ordering key (usually the e-mail) is kept as a keyed hash, never in clear.
            let main = event.email.clone();
            let others: Vec<String> = serde_json::from_str::<serde_json::Value>(&event.payload)
                .map(|v| crate::email::Email::all_in_json(&v))
                .unwrap_or_default()
                .into_iter()
                .filter(|e| main.as_deref() != Some(e.as_str()))
                .filter_map(|e| c.index_values(e.as_str()).into_iter().next())
                .collect();
            event.contacts = (!others.is_empty()).then(|| others.join(" "));
            event.payload = c.seal_text(PAYLOAD, &event.payload);
            event.email = event.email.and_then(|e| c.index_values(&e).into_iter().next());
            for d in &mut event.deliveries {
                d.order_key = d.order_key.take().map(|k| c.order_value(&k));
            }
        }
        dispatch!(self, s => s.ingest(event).await)
    }

    /// Keeps an undecryptable body unless that would cross a bound (then `Full`, nothing written).
    pub async fn quarantine(
        &self,
        mut item: NewQuarantined,
        limits: QuarantineLimits,
    ) -> Result<QuarantineOutcome, StoreError> {
        if let Some(c) = &self.cipher {
            item.body = c.seal(QBODY, &item.body).into_bytes();
            item.headers = c.seal_text(QHEADERS, &item.headers);
        }
        dispatch!(self, s => s.quarantine(item, limits).await)
    }

    /// Leases up to `limit` deliveries due at `now` (Unix ms) for `lease`, none of `skip_routes`
    /// (paused by their rate limit or concurrency), and of ordered routes only the oldest pending
    /// delivery per key. `now` is passed in, so a test moves time instead of waiting for it.
    pub async fn claim(
        &self,
        limit: usize,
        lease: Duration,
        skip_routes: Vec<String>,
        now: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        let mut claimed = dispatch!(self, s => s.claim(limit, lease, skip_routes, now).await)?;
        if self.cipher.is_some() {
            let mut readable = Vec::with_capacity(claimed.len());
            for mut c in claimed {
                let opened = self
                    .open_text(PAYLOAD, std::mem::take(&mut c.event.payload))
                    .and_then(|p| Ok((p, self.open_opt(STEPS, c.steps_state.take())?)));
                match opened {
                    Ok((payload, steps)) => {
                        c.event.payload = payload;
                        c.steps_state = steps;
                        readable.push(c);
                    }
                    // One unreadable event does not hold up the others: it becomes a dead letter
                    // that says why, and a replay once the key is back in place delivers it.
                    Err(e) => {
                        let error = format!("the stored event cannot be opened with the configured keys: {e}");
                        tracing::error!(delivery = %c.delivery_id, %error, "delivery failed");
                        self.settle(Settlement {
                            delivery_id: c.delivery_id.clone(),
                            lease_token: c.lease_token.clone(),
                            attempt: AttemptRecord {
                                started_at: now,
                                duration_ms: 0,
                                status: None,
                                error: Some(error),
                                detail: None,
                            },
                            next: Next::Failed,
                            steps_state: None,
                            keyed: c.keyed,
                            settled_at: now,
                        })
                        .await?;
                    }
                }
            }
            claimed = readable;
        }
        Ok(claimed)
    }

    /// Keeps the answers of a multi-step delivery's finished steps as soon as each step is done,
    /// so a crash mid-attempt does not repeat them. `false` when the lease was lost.
    pub async fn save_steps_state(
        &self,
        delivery_id: &str,
        lease_token: &str,
        state: String,
    ) -> Result<bool, StoreError> {
        let state = self.seal(STEPS, state);
        dispatch!(self, s => s.save_steps_state(delivery_id.to_string(), lease_token.to_string(), state).await)
    }

    /// Keeps a claimed delivery reserved until `until` (Unix ms) while its attempt runs; `false`
    /// when the lease was lost.
    pub async fn extend_lease(&self, delivery_id: &str, lease_token: &str, until: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.extend_lease(delivery_id.to_string(), lease_token.to_string(), until).await)
    }

    /// Gives a claimed delivery back, due at `at` (Unix ms), without counting an attempt.
    pub async fn defer(&self, delivery_id: String, lease_token: String, at: i64) -> Result<bool, StoreError> {
        dispatch!(self, s => s.defer(delivery_id, lease_token, at).await)
    }

    /// Records an attempt and the delivery's next state; `false` when the lease was lost.
    pub async fn settle(&self, mut settlement: Settlement) -> Result<bool, StoreError> {
        if let Some(c) = &self.cipher {
            settlement.steps_state = settlement.steps_state.map(|v| c.seal_text(STEPS, &v));
            // A CRM's error text can quote the contact.
            settlement.attempt.error = settlement.attempt.error.map(|v| c.seal_text(ERROR, &v));
            settlement.attempt.detail = settlement.attempt.detail.map(|v| c.seal_text(DETAIL, &v));
        }
        dispatch!(self, s => s.settle(settlement).await)
    }

    /// When the next pending delivery becomes due (Unix ms), if any.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        dispatch!(self, s => s.next_due().await)
    }

    /// The newest refresh token stored for an OAuth app (`OAuthConfig::cache_key`).
    pub async fn oauth_refresh_token(&self, key: &str) -> Result<Option<String>, StoreError> {
        let token = dispatch!(self, s => s.oauth_refresh_token(key.to_string()).await)?;
        self.open_opt(REFRESH, token)
    }

    /// Keeps a rotated refresh token, so a restart does not fall back to a revoked one.
    pub async fn save_oauth_refresh_token(&self, key: &str, token: &str, now: i64) -> Result<(), StoreError> {
        let token = self.seal(REFRESH, token.to_string());
        dispatch!(self, s => s.save_oauth_refresh_token(key.to_string(), token, now).await)
    }

    pub async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Vec<DeliveryRow>, StoreError> {
        let mut rows = dispatch!(self, s => s.list_deliveries(filter).await)?;
        for r in &mut rows {
            r.last_error = self.read_opt(ERROR, r.last_error.take());
        }
        Ok(rows)
    }

    /// Makes one delivery due at `now` with a fresh schedule, whatever its status: failed
    /// (replay), pending (send now) or delivered (send again, every step anew); `false` when it
    /// does not exist.
    /// The route of delivery `id`, if it exists.
    pub async fn delivery_route(&self, id: &str) -> Result<Option<String>, StoreError> {
        dispatch!(self, s => s.delivery_route(id.to_string()).await)
    }

    pub async fn retry_delivery(&self, id: &str, now: i64) -> Result<Retried, StoreError> {
        dispatch!(self, s => s.retry_one(id.to_string(), now).await)
    }

    /// Attempts started at or after `since` (Unix ms), newest first, at most `limit`.
    pub async fn attempt_facts(&self, since: i64, limit: u32) -> Result<Vec<AttemptFact>, StoreError> {
        let mut facts = dispatch!(self, s => s.attempt_facts(since, limit).await)?;
        for f in &mut facts {
            f.error = self.read_opt(ERROR, f.error.take());
        }
        Ok(facts)
    }

    /// Pending deliveries per route.
    pub async fn pending_per_route(&self) -> Result<Vec<(String, i64)>, StoreError> {
        dispatch!(self, s => s.pending_per_route().await)
    }

    /// Makes every delivery `filter` matches due at `now` with a fresh schedule (delivered ones
    /// send every step again); with `dry_run` only counts them. Returns how many.
    pub async fn retry_matching(&self, filter: RetryFilter, dry_run: bool, now: i64) -> Result<u64, StoreError> {
        dispatch!(self, s => s.retry_matching(filter, dry_run, now).await)
    }

    /// Stored events matching `filter`, each with its derived status, and how many match.
    pub async fn find_events(&self, mut filter: EventFilter) -> Result<(Vec<StoredEvent>, Matching), StoreError> {
        let emails = filter.email.take().map(|e| match &self.cipher {
            Some(c) => c.index_values(&e),
            None => vec![e.to_lowercase()],
        });
        // A LIKE pattern's wildcards in the text are taken literally.
        filter.text = filter
            .text
            .take()
            .map(|t| t.trim().to_lowercase().replace('\\', "\\\\").replace('%', "\\%").replace('_', "\\_"));
        let sealed = self.cipher.is_some();
        let (mut events, matching) = dispatch!(self, s => s.find_events(filter.clone(), emails.clone(), sealed).await)?;
        for e in &mut events {
            e.payload = self.read_text(PAYLOAD, std::mem::take(&mut e.payload));
        }
        Ok((events, matching))
    }

    /// Stored events, oldest first (or newest first), after the cursor `after` in that order.
    pub async fn list_events(
        &self,
        after: Option<String>,
        limit: u32,
        newest_first: bool,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let mut events = dispatch!(self, s => s.list_events(after, limit, newest_first).await)?;
        for e in &mut events {
            e.payload = self.read_text(PAYLOAD, std::mem::take(&mut e.payload));
        }
        Ok(events)
    }

    pub async fn event_detail(&self, id: &str) -> Result<Option<EventDetail>, StoreError> {
        let Some(mut d) = dispatch!(self, s => s.event_detail(id).await)? else { return Ok(None) };
        d.event.payload = self.read_text(PAYLOAD, std::mem::take(&mut d.event.payload));
        for r in &mut d.deliveries {
            r.last_error = self.read_opt(ERROR, r.last_error.take());
        }
        for a in &mut d.attempts {
            a.error = self.read_opt(ERROR, a.error.take());
            a.detail = self.open_opt(DETAIL, a.detail.take()).unwrap_or(None);
        }
        Ok(Some(d))
    }

    pub async fn list_quarantine(&self, after: Option<i64>, limit: u32) -> Result<Vec<Quarantined>, StoreError> {
        let mut items = dispatch!(self, s => s.list_quarantine(after, limit).await)?;
        if let Some(c) = &self.cipher {
            for q in &mut items {
                // A body is what a sender sent: one that looks sealed but does not open (planted
                // before encryption was turned on) is kept as it came, not mistaken for ours.
                if let Ok(body) = c.open(QBODY, &q.body) {
                    q.body = body;
                }
                q.headers = self.read_text(QHEADERS, std::mem::take(&mut q.headers));
            }
        }
        Ok(items)
    }

    pub async fn delete_quarantined(&self, id: i64) -> Result<(), StoreError> {
        dispatch!(self, s => s.delete_quarantined(id).await)
    }

    pub async fn update_quarantine_reason(&self, id: i64, reason: String) -> Result<(), StoreError> {
        dispatch!(self, s => s.update_quarantine_reason(id, reason).await)
    }

    /// Every stored event that names `email` as a whole address (never a substring): by the
    /// contact index (a keyed hash under every configured key when encrypted), or, in a payload
    /// the store can read, as any string value. Oldest first.
    pub async fn contact_events(&self, email: &Email) -> Result<Vec<ContactEvent>, StoreError> {
        let index = match &self.cipher {
            Some(c) => c.index_values(email.as_str()),
            None => vec![email.as_str().to_string()],
        };
        let candidates = dispatch!(self, s => s.contact_candidates(ascii_needle(email), index).await)?;
        let mut found = Vec::new();
        for c in candidates {
            let names = c.indexed || {
                let payload = self.read_text(PAYLOAD, c.payload);
                email.is_in_payload(&payload)
            };
            if names {
                found.push(ContactEvent {
                    id: c.id,
                    learnybox_id: c.key,
                    kind: c.kind,
                    received_at: c.received_at,
                    deliveries: c.deliveries,
                    attempts: c.attempts,
                });
            }
        }
        Ok(found)
    }

    /// After an erasure: SQLite moves its WAL into the file and truncates it, so no copy of the
    /// erased rows stays in the WAL (deleted content is zeroed in the file: `secure_delete`).
    /// PostgreSQL: the rows are gone from every query at once; their dead versions stay in the
    /// table's pages until VACUUM reuses them (docs/security.md).
    pub async fn scrub(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Sqlite(s) => s.truncate_wal().await,
            Backend::Postgres(_) => Ok(()),
        }
    }

    /// Deletes these events with their deliveries and attempts.
    pub async fn delete_events(&self, ids: Vec<String>) -> Result<Forgotten, StoreError> {
        if ids.is_empty() {
            return Ok(Forgotten::default());
        }
        dispatch!(self, s => s.delete_events(ids).await)
    }

    /// Field coverage kept by earlier runs.
    pub async fn load_coverage(&self) -> Result<Vec<(String, String, Counts)>, StoreError> {
        dispatch!(self, s => s.load_coverage().await)
    }

    /// Keeps the field coverage counts (whole numbers per route and path).
    pub async fn save_coverage(&self, rows: Vec<(String, String, Counts)>) -> Result<(), StoreError> {
        dispatch!(self, s => s.save_coverage(rows).await)
    }

    /// The event types stored, per source (within retention), with their newest payload.
    pub async fn event_types(&self) -> Result<Vec<TypeSeen>, StoreError> {
        let mut types = dispatch!(self, s => s.event_types().await)?;
        for t in &mut types {
            t.recent_payload = self.read_opt(PAYLOAD, t.recent_payload.take());
        }
        Ok(types)
    }

    /// Deletes fully delivered events received before `before` (Unix ms), and dedup keys expired
    /// at `now`; returns how many events.
    pub async fn purge(&self, before: i64, now: i64) -> Result<u64, StoreError> {
        dispatch!(self, s => s.purge(before, now).await)
    }

    pub async fn gauges(&self) -> Result<Gauges, StoreError> {
        dispatch!(self, s => s.gauges().await)
    }

    /// The newest event time of each of `sources`, for those that have one.
    pub async fn last_event_per_source(&self, sources: Vec<String>) -> Result<Vec<(String, i64)>, StoreError> {
        dispatch!(self, s => s.last_event_per_source(sources).await)
    }

    /// The rate windows this store keeps for every replica (PostgreSQL); `None` for SQLite,
    /// whose single process keeps them itself.
    pub fn shared_rate_windows(&self) -> Option<SharedRateWindows> {
        match &self.backend {
            Backend::Postgres(pg) => Some(SharedRateWindows(pg.clone())),
            Backend::Sqlite(_) => None,
        }
    }

    /// With `encryption_key` set: the newest sealed value of each sealed column (event payloads,
    /// attempt errors, quarantined headers, refresh tokens), opened with the configured keys. Each
    /// that does not open is a problem, said at start and by `/readyz`: a key removed while values
    /// sealed with it remain (put it back in `previous_encryption_keys`).
    pub async fn key_check(&self) -> Result<Vec<String>, StoreError> {
        if self.cipher.is_none() {
            return Ok(Vec::new());
        }
        let mut problems = Vec::new();
        for (table, column, order, aad) in [
            ("events", "payload", "received_at DESC", PAYLOAD),
            ("attempts", "error", "id DESC", ERROR),
            ("quarantine", "headers", "id DESC", QHEADERS),
            ("oauth_tokens", "refresh_token", "key", REFRESH),
        ] {
            let sql = format!("SELECT {column} FROM {table} WHERE {column} LIKE 'lbxenc1:%' ORDER BY {order} LIMIT 1");
            let newest: Option<String> = match &self.backend {
                Backend::Sqlite(s) => {
                    s.read(move |c| {
                        use rusqlite::OptionalExtension;
                        c.query_row(&sql, [], |r| r.get(0)).optional()
                    })
                    .await?
                }
                Backend::Postgres(pg) => {
                    let client = pg.pool.get().await?;
                    client.query_opt(&sql, &[]).await?.map(|r| r.try_get(0)).transpose()?
                }
            };
            if let Some(value) = newest {
                if let Err(e) = self.open_text(aad, value) {
                    problems.push(format!("{aad}: {e}"));
                }
            }
        }
        Ok(problems)
    }

    /// Checks that the store commits now; SQLite writes `probe_bytes` to do so (a full disk
    /// refuses an event-sized write before a tiny one).
    pub async fn ping(&self, probe_bytes: usize, now: i64) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping(probe_bytes, now).await)
    }

    /// Calls `wake` when another process commits work (PostgreSQL LISTEN/NOTIFY), until `stop`.
    /// A single SQLite process wakes its workers directly, so there it just waits for `stop`.
    pub async fn watch_for_work(&self, wake: impl Fn() + Send + 'static, stop: tokio_util::sync::CancellationToken) {
        match &self.backend {
            Backend::Sqlite(_) => stop.cancelled().await,
            Backend::Postgres(pg) => pg.listen(wake, stop).await,
        }
    }
}
