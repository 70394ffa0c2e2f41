//! The writer thread: one thread owns the read-write connection and runs every operation that
//! arrives while it is busy in one transaction (group commit: one fsync for many requests). Each
//! operation runs in its own savepoint, so one failing operation does not undo the others, and
//! nobody gets an answer before the transaction holding their write has committed. Before each
//! commit it checks that the database file is still the one opened.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rusqlite::Connection;

use crate::store::StoreError;

/// Most operations folded into one transaction.
const MAX_BATCH: usize = 1024;

type Finisher = Box<dyn FnOnce(Result<(), StoreError>) + Send>;
/// One store operation, run on the writer thread inside the current group transaction.
type WriterCall = Box<dyn FnOnce(&Connection) -> (bool, Finisher) + Send>;

/// The handle to the writer thread; clones share it, and the thread ends with the last one.
#[derive(Clone)]
pub(super) struct Writer(mpsc::Sender<WriterCall>);

impl Writer {
    /// Starts the writer thread on `conn`, the database at `path`.
    pub(super) fn start(conn: Connection, path: &Path) -> Result<Writer, StoreError> {
        // Checkpoints stay on the writer (SQLite's autocheckpoint, after a commit): a checkpoint
        // running beside a busy writer never catches up, and the WAL would then grow without end.
        let (calls, rx) = mpsc::channel::<WriterCall>();
        let file = FileIdentity::of(path)?;
        std::thread::Builder::new()
            .name("lbx-sqlite-writer".into())
            .spawn(move || writer(conn, rx, file))
            .map_err(|e| StoreError::failed("cannot start the writer thread", e))?;
        Ok(Writer(calls))
    }

    /// Runs `f` on the writer thread inside the current group transaction and answers once that
    /// transaction has committed.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let queued = std::time::Instant::now();
        let call: WriterCall = Box::new(move |conn| {
            metrics::histogram!(crate::telemetry::STORE_WAIT).record(queued.elapsed().as_secs_f64());
            let result = f(conn);
            let ok = result.is_ok();
            let finish: Finisher = Box::new(move |commit| {
                let _ = reply.send(commit.and_then(|()| result.map_err(StoreError::from)));
            });
            (ok, finish)
        });
        self.0.send(call).map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::NotBegun)?
    }
}

fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Which file the database is (device and inode), to notice it being deleted or replaced under a
/// running relay: SQLite would go on writing to the unlinked file, and everything acknowledged
/// from then on would be gone at the next start.
struct FileIdentity {
    path: PathBuf,
    id: (u64, u64),
}

impl FileIdentity {
    fn of(path: &Path) -> Result<FileIdentity, StoreError> {
        let id = Self::read(path).map_err(|e| StoreError::failed(format!("cannot read {}", path.display()), e))?;
        Ok(FileIdentity { path: path.to_path_buf(), id })
    }

    fn read(path: &Path) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path)?;
        Ok((m.dev(), m.ino()))
    }

    /// `Err` with the reason once the file at the path is no longer the one opened.
    fn check(&self) -> Result<(), StoreError> {
        match Self::read(&self.path) {
            Ok(id) if id == self.id => Ok(()),
            found => Err(StoreError::Lost(format!(
                "the database file {} was {} while the relay ran; nothing more is acknowledged. Restart \
                 the relay (it opens the file at that path)",
                self.path.display(),
                if found.is_ok() { "replaced" } else { "deleted" }
            ))),
        }
    }
}

/// The writer thread: take what is queued, run it in one transaction, commit, then answer.
fn writer(conn: Connection, rx: mpsc::Receiver<WriterCall>, file: FileIdentity) {
    let mut lost: Option<StoreError> = None;
    while let Ok(first) = rx.recv() {
        let mut batch = Vec::with_capacity(64);
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let began = std::time::Instant::now();
        metrics::histogram!(crate::telemetry::STORE_BATCH_JOBS).record(batch.len() as f64);
        if let Err(e) = exec_cached(&conn, "BEGIN IMMEDIATE") {
            tracing::error!(error = %e, jobs = batch.len(), "sqlite: cannot begin a transaction");
            drop(batch); // every caller gets an error: nothing was written
            continue;
        }
        let mut finishers = Vec::with_capacity(batch.len());
        for job in batch {
            if let Err(e) = exec_cached(&conn, "SAVEPOINT job") {
                tracing::error!(error = %e, "sqlite: savepoint failed");
            }
            let (ok, finish) = job(&conn);
            if !ok {
                if let Err(e) = exec_cached(&conn, "ROLLBACK TO job") {
                    tracing::error!(error = %e, "sqlite: rolling back a savepoint failed");
                }
            }
            if let Err(e) = exec_cached(&conn, "RELEASE job") {
                tracing::error!(error = %e, "sqlite: releasing a savepoint failed");
            }
            finishers.push(finish);
        }
        // Checked before every commit (one stat): once the file is gone, no write is acknowledged.
        if lost.is_none() {
            if let Err(e) = file.check() {
                tracing::error!(error = %crate::telemetry::Chain(&e), "sqlite: the database file is gone");
                lost = Some(e);
            }
        }
        let committed = match &lost {
            Some(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e.clone())
            }
            None => exec_cached(&conn, "COMMIT").map_err(|e| {
                tracing::error!(error = %e, "sqlite: commit failed");
                let _ = conn.execute_batch("ROLLBACK");
                StoreError::Commit(crate::store::Cause::new(e))
            }),
        };
        metrics::histogram!(crate::telemetry::STORE_BATCH).record(began.elapsed().as_secs_f64());
        for finish in finishers {
            finish(committed.clone());
        }
    }
    // Every handle is gone: leave a small database behind.
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "sqlite: final checkpoint failed");
    }
}
