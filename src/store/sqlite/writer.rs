//! The writer thread: one thread owns the read-write connection and runs every operation that
//! arrives while it is busy in one transaction (group commit: one fsync for many requests). One
//! failing operation does not undo the others: a batch runs without savepoints, and when one of
//! its operations fails the transaction is rolled back and the batch run again with each operation
//! in its own savepoint. Nobody gets an answer before the transaction holding their write has
//! committed. Before each commit it checks that the database file is still the one opened.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Instant;

use rusqlite::Connection;

use crate::store::StoreError;

/// Most operations folded into one transaction.
const MAX_BATCH: usize = 1024;

/// One store operation, run on the writer thread inside the current group transaction: once, or
/// again after its batch was rolled back.
trait Job: Send {
    /// Runs the operation and keeps its result; `false` when it failed.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the transaction is over (`commit`: whether it committed).
    fn finish(self: Box<Self>, commit: Result<(), StoreError>);
}

struct Call<T, F> {
    f: F,
    result: Option<rusqlite::Result<T>>,
    reply: tokio::sync::oneshot::Sender<Result<T, StoreError>>,
    /// When it was queued, until its first run records the wait.
    queued: Option<Instant>,
}

impl<T, F> Job for Call<T, F>
where
    T: Send,
    F: Fn(&Connection) -> rusqlite::Result<T> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        if let Some(queued) = self.queued.take() {
            metrics::histogram!(crate::telemetry::STORE_WAIT).record(queued.elapsed().as_secs_f64());
        }
        let result = (self.f)(conn);
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, commit: Result<(), StoreError>) {
        // Every job of a batch that reaches here has run; one never run (its transaction could
        // not begin) is dropped instead, and its caller's answer is the channel closing.
        if let Some(result) = self.result {
            let _ = self.reply.send(commit.and_then(|()| result.map_err(StoreError::from)));
        }
    }
}

/// The handle to the writer thread; clones share it, and the thread ends with the last one.
#[derive(Clone)]
pub(super) struct Writer(mpsc::Sender<Box<dyn Job>>);

impl Writer {
    /// Starts the writer thread on `conn`, the database at `path`.
    pub(super) fn start(conn: Connection, path: &Path) -> Result<Writer, StoreError> {
        // Checkpoints stay on the writer (SQLite's autocheckpoint, after a commit): a checkpoint
        // running beside a busy writer never catches up, and the WAL would then grow without end.
        let (calls, rx) = mpsc::channel::<Box<dyn Job>>();
        let file = FileIdentity::of(path)?;
        std::thread::Builder::new()
            .name("lbx-sqlite-writer".into())
            .spawn(move || writer(conn, rx, file))
            .map_err(|e| StoreError::failed("cannot start the writer thread", e))?;
        Ok(Writer(calls))
    }

    /// Runs `f` on the writer thread inside the current group transaction and answers once that
    /// transaction has committed. `f` may run twice (its batch rolled back and run again after
    /// another operation failed): only the run that committed answers.
    pub(super) async fn call<T: Send + 'static>(
        &self,
        f: impl Fn(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let call = Call { f, result: None, reply, queued: Some(Instant::now()) };
        self.0.send(Box::new(call)).map_err(|_| StoreError::Closed)?;
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
fn writer(conn: Connection, rx: mpsc::Receiver<Box<dyn Job>>, file: FileIdentity) {
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
        let began = Instant::now();
        metrics::histogram!(crate::telemetry::STORE_BATCH_JOBS).record(batch.len() as f64);
        if !run_batch(&conn, &mut batch) {
            drop(batch); // every caller gets an error: nothing was written
            continue;
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
        for job in batch {
            job.finish(committed.clone());
        }
    }
    // Every handle is gone: leave a small database behind.
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "sqlite: final checkpoint failed");
    }
}

/// Runs `batch` in a transaction left open for the commit; `false` when none could begin.
///
/// First without savepoints: a savepoint has SQLite copy every page an operation touches into a
/// statement journal, a sixth of the writer's work. When an operation fails, its partial writes
/// cannot be told apart from the others', so the transaction is rolled back and the whole batch
/// run again, each operation in its own savepoint: the failed one is undone alone.
fn run_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> bool {
    if !begin(conn, batch.len()) {
        return false;
    }
    if batch.iter_mut().all(|job| job.run(conn)) {
        return true;
    }
    if let Err(e) = conn.execute_batch("ROLLBACK") {
        tracing::error!(error = %e, "sqlite: rolling back a batch failed");
    }
    if !begin(conn, batch.len()) {
        return false;
    }
    for job in batch.iter_mut() {
        if let Err(e) = exec_cached(conn, "SAVEPOINT job") {
            tracing::error!(error = %e, "sqlite: savepoint failed");
        }
        if !job.run(conn) {
            if let Err(e) = exec_cached(conn, "ROLLBACK TO job") {
                tracing::error!(error = %e, "sqlite: rolling back a savepoint failed");
            }
        }
        if let Err(e) = exec_cached(conn, "RELEASE job") {
            tracing::error!(error = %e, "sqlite: releasing a savepoint failed");
        }
    }
    true
}

fn begin(conn: &Connection, jobs: usize) -> bool {
    match exec_cached(conn, "BEGIN IMMEDIATE") {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(error = %e, jobs, "sqlite: cannot begin a transaction");
            false
        }
    }
}
