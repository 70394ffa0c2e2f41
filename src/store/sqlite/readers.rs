//! The read side: a pool of read-only WAL connections, so the console's reads never wait for
//! (nor delay) the writer's group commits.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::Connection;

use crate::store::StoreError;

/// Read connections kept open at most (more are opened while needed, then closed).
const READERS: usize = 4;

/// A read-only connection to the database at `path` (WAL: it reads the last committed state).
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(|e| StoreError::failed(format!("cannot open {} for reading", path.display()), e))?;
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.execute_batch("PRAGMA query_only = ON; PRAGMA temp_store = MEMORY;")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

#[derive(Clone)]
pub(super) struct Readers {
    path: PathBuf,
    pool: Arc<Mutex<Vec<Connection>>>,
}

impl Readers {
    pub(super) fn new(path: &Path) -> Readers {
        Readers { path: path.to_path_buf(), pool: Arc::default() }
    }

    /// Runs a read-only `f` on one of the read connections, off the writer.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (pool, path) = (self.pool.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let pooled = pool.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let conn = match pooled {
                Some(c) => c,
                None => open_reader(&path)?,
            };
            let out = f(&conn);
            let mut pool = pool.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < READERS {
                pool.push(conn);
            }
            Ok(out?)
        })
        .await
        .map_err(|e| StoreError::failed("a read task", e))?
    }
}
