//! What upkeep runs: the retention purge, gauges, silence, field coverage, readiness and key
//! checks.

use crate::store::*;

/// What upkeep runs: the retention purge, gauges, silence, field coverage, readiness and key
/// checks.
pub trait UpkeepStore {
    /// Deletes fully delivered events received before `before` (Unix ms), and dedup keys expired
    /// at `now`; returns how many events.
    fn purge(&self, before: i64, now: i64) -> impl std::future::Future<Output = Result<u64, StoreError>> + Send;

    fn gauges(&self) -> impl std::future::Future<Output = Result<Gauges, StoreError>> + Send;

    /// The newest event time of each of `sources`, for those that have one.
    fn last_event_per_source(
        &self,
        sources: Vec<String>,
    ) -> impl std::future::Future<Output = Result<Vec<(String, i64)>, StoreError>> + Send;

    /// Field coverage kept by earlier runs.
    fn load_coverage(
        &self,
    ) -> impl std::future::Future<Output = Result<Vec<(String, String, Counts)>, StoreError>> + Send;

    /// Keeps the field coverage counts (whole numbers per route and path).
    fn save_coverage(
        &self,
        rows: Vec<(String, String, Counts)>,
    ) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// Checks that the store commits now; SQLite writes `probe_bytes` to do so (a full disk
    /// refuses an event-sized write before a tiny one).
    fn ping(&self, probe_bytes: usize, now: i64) -> impl std::future::Future<Output = Result<(), StoreError>> + Send;

    /// With `encryption_key` set: the newest sealed value of each sealed column (event payloads,
    /// attempt errors, quarantined headers, refresh tokens), opened with the configured keys. Each
    /// that does not open is a problem, said at start and by `/readyz`: a key removed while values
    /// sealed with it remain (put it back in `previous_encryption_keys`).
    fn key_check(&self) -> impl std::future::Future<Output = Result<Vec<String>, StoreError>> + Send;
}

impl UpkeepStore for Store {
    async fn purge(&self, before: i64, now: i64) -> Result<u64, StoreError> {
        dispatch!(self, s => s.purge(before, now).await)
    }

    async fn gauges(&self) -> Result<Gauges, StoreError> {
        dispatch!(self, s => s.gauges().await)
    }

    async fn last_event_per_source(&self, sources: Vec<String>) -> Result<Vec<(String, i64)>, StoreError> {
        dispatch!(self, s => s.last_event_per_source(sources).await)
    }

    async fn load_coverage(&self) -> Result<Vec<(String, String, Counts)>, StoreError> {
        dispatch!(self, s => s.load_coverage().await)
    }

    async fn save_coverage(&self, rows: Vec<(String, String, Counts)>) -> Result<(), StoreError> {
        dispatch!(self, s => s.save_coverage(rows).await)
    }

    async fn ping(&self, probe_bytes: usize, now: i64) -> Result<(), StoreError> {
        dispatch!(self, s => s.ping(probe_bytes, now).await)
    }

    async fn key_check(&self) -> Result<Vec<String>, StoreError> {
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
}
