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
    /// The transaction holding the write could not begin (the writer logged why).
    #[error("commit failed: the transaction could not begin (see the log)")]
    NotBegun,
    /// The database stayed busy for longer than the operation waits.
    #[error("{0}")]
    Busy(String),
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

pub mod roles;
pub use roles::{ConsoleStore, ErasureStore, IngestStore, QuarantineStore, QueueStore, UpkeepStore};

/// Column names, bound into each sealed value.
const PAYLOAD: &str = "events.payload";
const STEPS: &str = "deliveries.steps_state";
const ERROR: &str = "attempts.error";
const QBODY: &str = "quarantine.body";
const QHEADERS: &str = "quarantine.headers";
const REFRESH: &str = "oauth_tokens.refresh_token";
const DETAIL: &str = "attempts.detail";

/// Copies into `attempts` the delivered attempt kept on each delivery row of `rows` (a table,
/// subquery or CTE with the columns of `deliveries`) that holds one, before those deliveries are
/// sent again: their rows will hold the next one. Paired with [`DELIVERED_ATTEMPT_MOVED`] in the
/// update that sends them again.
pub(crate) fn keep_delivered_attempts(rows: &str) -> String {
    format!(
        "INSERT INTO attempts (delivery_id, attempt, started_at, duration_ms, status, error, outcome, detail)
         SELECT id, attempts, ok_started_at, ok_duration_ms, last_status, last_error, 'delivered', ok_detail
         FROM {rows} WHERE ok_started_at IS NOT NULL"
    )
}

/// The `SET` part that empties a delivery's own delivered attempt once it is in `attempts`.
pub(crate) const DELIVERED_ATTEMPT_MOVED: &str = "ok_started_at = NULL, ok_duration_ms = NULL, ok_detail = NULL";

/// How a SQLite query filtered on status `status` reads the deliveries (schema 10): the pending
/// ones through `deliveries_due` and the failed ones through `deliveries_failed`, partial indexes
/// that SQLite uses only for a query naming its status as a literal, not through a parameter.
/// Returns what to put after the table (`INDEXED BY deliveries_failed`: the dead letters in id
/// order) and the literal term to put before the query's own `status = ?N` filter (`column` is the
/// status column as the query names it: `status`, `d.status`). A list of pending deliveries is
/// left to the planner: reading the table in id order or sorting the queue, whichever it judges
/// cheaper, as before.
pub(crate) fn sqlite_by_status(column: &str, status: Option<&str>) -> (&'static str, String) {
    match status {
        Some("pending") => ("", format!("{column} = 'pending' AND ")),
        Some("failed") => (" INDEXED BY deliveries_failed", format!("{column} = 'failed' AND ")),
        _ => ("", String::new()),
    }
}

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

    /// The rate windows this store keeps for every replica (PostgreSQL); `None` for SQLite,
    /// whose single process keeps them itself.
    pub fn shared_rate_windows(&self) -> Option<SharedRateWindows> {
        match &self.backend {
            Backend::Postgres(pg) => Some(SharedRateWindows(pg.clone())),
            Backend::Sqlite(_) => None,
        }
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
