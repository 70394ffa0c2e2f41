//! The writer's WAL writes, gathered: a SQLite VFS that wraps the default one and, for WAL files
//! only, holds the frames a transaction appends in memory until its commit frame is written (or
//! the next sync, read or other file operation), then writes them with one system call.
//!
//! SQLite appends each WAL frame with two `pwrite` calls (its 24-byte header, then the page), so a
//! group commit of 50 pages made 100 system calls before its sync; this was a sixth of the writer
//! thread's time (docs/performance.md, twelfth round). With this VFS a commit makes one.
//!
//! What a commit writes is in the file when SQLite's `xWrite` of the commit frame returns: the
//! frame whose header holds the database size (non-zero only in a transaction's last frame) writes
//! out everything gathered with it. That is before SQLite publishes the commit to readers in the WAL
//! index, and before `COMMIT` returns, so a reader is never sent to a frame not yet written, and a
//! crash of the process after a commit finds it in the file (the promise of `sync = "normal"`);
//! with `sync = "full"` the sync follows, as before. An error writing them fails the commit. A
//! write that does not append to the WAL (a frame or checksum rewritten in place) writes out what is
//! gathered and then goes straight to the file, so the order of writes is kept and nothing written
//! after a commit frame waits in memory. Every other file (the database, its shared memory) is the
//! default VFS's own, untouched.

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The name the VFS is registered under (not as the default: only the writer asks for it).
pub(super) const NAME: &str = "lbx-wal-buffer";
const NAME_C: &CStr = c"lbx-wal-buffer";

/// Gathered bytes written out once they reach this size, without waiting for the commit frame.
const MAX_GATHERED: usize = 4 << 20;

/// The most one call to the default VFS's `xWrite` takes: SQLite's unix VFS writes at most
/// 0x1ffff bytes per call (it masks the length to 17 bits), so gathered bytes go in pieces of
/// 31 pages.
const MAX_WRITE: usize = 31 * 4096;

/// Registers the VFS once per process; the error says why it could not be.
pub(super) fn register() -> Result<&'static str, String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED.get_or_init(|| unsafe { register_once() }).clone().map(|()| NAME)
}

/// The default VFS, whose `xOpen` ours calls; set once by `register_once`, before any open.
static BASE: OnceLock<Base> = OnceLock::new();

struct Base(*mut ffi::sqlite3_vfs);
// SAFETY: a registered VFS is immutable and lives as long as the process; SQLite calls it from any
// thread.
unsafe impl Send for Base {}
unsafe impl Sync for Base {}

/// Where the default VFS's file sits inside ours: after our header, aligned for any field.
const REAL_OFFSET: usize = std::mem::size_of::<Gathering>().next_multiple_of(16);

/// Our file object for a WAL file. SQLite allocates `szOsFile` bytes for it: this header, then the
/// default VFS's own file object at `REAL_OFFSET`. Files that are not WAL files are the default
/// VFS's file object at offset 0, with its own methods: nothing of ours is between SQLite and them.
#[repr(C)]
struct Gathering {
    /// `pMethods` is `WAL_METHODS`.
    base: ffi::sqlite3_file,
    /// The default VFS's file object, at `REAL_OFFSET` in the same allocation.
    real: *mut ffi::sqlite3_file,
    /// What is gathered and not yet written; owned (a `Box` turned into a raw pointer).
    pending: *mut Pending,
}

#[derive(Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The file offset of `bytes[0]`.
    at: i64,
    /// Where the WAL written since its header ends: a write from here on appends to it.
    end: i64,
    /// The last write was the header of a commit frame: its page ends the commit.
    commit_page_next: bool,
}

/// A WAL frame's header: 24 bytes, the database size in pages at bytes 4..8 (non-zero only in a
/// commit frame). SQLite writes it with a call of its own, before the frame's page.
const FRAME_HEADER: usize = 24;

unsafe fn register_once() -> Result<(), String> {
    let base = ffi::sqlite3_vfs_find(std::ptr::null());
    if base.is_null() {
        return Err("SQLite has no default VFS".into());
    }
    if (*base).xOpen.is_none() {
        return Err("SQLite's default VFS cannot open files".into());
    }
    BASE.set(Base(base)).map_err(|_| "the WAL VFS was registered twice".to_string())?;
    // Every method but xOpen is the default VFS's; they read only fields copied with it.
    let mut vfs: ffi::sqlite3_vfs = std::ptr::read(base);
    vfs.szOsFile = c_int::try_from(REAL_OFFSET).map_err(|e| e.to_string())? + (*base).szOsFile;
    vfs.zName = NAME_C.as_ptr();
    vfs.pNext = std::ptr::null_mut();
    vfs.xOpen = Some(open);
    let rc = ffi::sqlite3_vfs_register(Box::leak(Box::new(vfs)), 0);
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite3_vfs_register failed ({rc})"));
    }
    Ok(())
}

unsafe extern "C" fn open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let Some(Base(base)) = BASE.get() else { return ffi::SQLITE_CANTOPEN };
    let Some(base_open) = (**base).xOpen else { return ffi::SQLITE_CANTOPEN };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        return base_open(*base, name, file, flags, out_flags);
    }
    let real = file.cast::<u8>().add(REAL_OFFSET).cast::<ffi::sqlite3_file>();
    let shim = file.cast::<Gathering>();
    (*shim).base.pMethods = std::ptr::null();
    (*shim).real = real;
    (*shim).pending = std::ptr::null_mut();
    let rc = base_open(*base, name, real, flags, out_flags);
    if rc != ffi::SQLITE_OK {
        // SQLite closes only files whose pMethods is set: ours stays unset, so close theirs here.
        if let Some(close) = (*real).pMethods.as_ref().and_then(|m| m.xClose) {
            close(real);
        }
        return rc;
    }
    (*shim).pending = Box::into_raw(Box::default());
    (*shim).base.pMethods = &WAL_METHODS;
    ffi::SQLITE_OK
}

static WAL_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

/// The default VFS's file object and its methods.
unsafe fn real(file: *mut ffi::sqlite3_file) -> (*mut ffi::sqlite3_file, &'static ffi::sqlite3_io_methods) {
    let real = (*file.cast::<Gathering>()).real;
    (real, &*(*real).pMethods)
}

/// What is gathered for a WAL file of ours. Each caller takes it anew and drops it before `flush`,
/// which takes it too.
unsafe fn pending<'a>(file: *mut ffi::sqlite3_file) -> &'a mut Pending {
    &mut *(*file.cast::<Gathering>()).pending
}

/// Writes out what is gathered (in one call); SQLite's error code if that failed.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    let pending = pending(file);
    if pending.bytes.is_empty() {
        return ffi::SQLITE_OK;
    }
    let (real, methods) = real(file);
    let Some(write) = methods.xWrite else { return ffi::SQLITE_IOERR_WRITE };
    let mut rc = ffi::SQLITE_OK;
    let mut at = pending.at;
    for chunk in pending.bytes.chunks(MAX_WRITE) {
        // At most MAX_WRITE: the cast cannot truncate.
        rc = write(real, chunk.as_ptr().cast(), chunk.len() as c_int, at);
        if rc != ffi::SQLITE_OK {
            break;
        }
        at += chunk.len() as i64;
    }
    // Written or not, these bytes are done with: on an error SQLite abandons the transaction
    // (its commit fails) and writes its frames again from where the WAL last ended.
    pending.bytes.clear();
    rc
}

unsafe extern "C" fn write(file: *mut ffi::sqlite3_file, data: *const c_void, amount: c_int, offset: i64) -> c_int {
    let Ok(len) = usize::try_from(amount) else { return ffi::SQLITE_IOERR_WRITE };
    // SQLite never writes nothing nor from nowhere; a slice must not be made of either.
    if len == 0 {
        return ffi::SQLITE_OK;
    }
    if data.is_null() {
        return ffi::SQLITE_IOERR_WRITE;
    }
    let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
    let (appends, ends_commit, gathered_end) = {
        let pending = pending(file);
        if offset == 0 {
            // The WAL's header: a new or reset WAL, written again from its start.
            pending.end = 0;
            pending.commit_page_next = false;
        }
        let appends = offset >= pending.end;
        let ends_commit = appends && std::mem::take(&mut pending.commit_page_next);
        if appends && len == FRAME_HEADER {
            pending.commit_page_next = bytes[4..8] != [0; 4];
        }
        let gathered_end = (!pending.bytes.is_empty()).then(|| pending.at + pending.bytes.len() as i64);
        (appends, ends_commit, gathered_end)
    };
    if !appends || gathered_end.is_some_and(|end| end != offset) {
        let rc = flush(file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
    }
    if !appends {
        // Rewritten in place: straight to the file.
        let (real, methods) = real(file);
        return match methods.xWrite {
            Some(write) => write(real, data, amount, offset),
            None => ffi::SQLITE_IOERR_WRITE,
        };
    }
    let full = {
        let pending = pending(file);
        if pending.bytes.is_empty() {
            pending.at = offset;
        }
        pending.bytes.extend_from_slice(bytes);
        pending.end = offset + len as i64;
        pending.bytes.len() >= MAX_GATHERED
    };
    if full || ends_commit {
        return flush(file);
    }
    ffi::SQLITE_OK
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let flushed = flush(file);
    let shim = file.cast::<Gathering>();
    drop(Box::from_raw((*shim).pending));
    (*shim).pending = std::ptr::null_mut();
    let (real, methods) = real(file);
    let closed = methods.xClose.map_or(ffi::SQLITE_OK, |close| close(real));
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

/// Forwards a method to the default VFS's file, after writing out what is gathered.
macro_rules! flushed_then {
    ($name:ident ( $($arg:ident : $ty:ty),* ) => $method:ident, $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> c_int {
            let rc = flush(file);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            let (real, methods) = real(file);
            match methods.$method {
                Some(f) => f(real $(, $arg)*),
                None => $missing,
            }
        }
    };
}

/// Forwards a method to the default VFS's file as it is (it neither reads nor writes the file).
macro_rules! forwarded {
    ($name:ident ( $($arg:ident : $ty:ty),* ) -> $ret:ty => $method:ident, $missing:expr) => {
        unsafe extern "C" fn $name(file: *mut ffi::sqlite3_file $(, $arg: $ty)*) -> $ret {
            let (real, methods) = real(file);
            match methods.$method {
                Some(f) => f(real $(, $arg)*),
                None => $missing,
            }
        }
    };
}

flushed_then!(read(data: *mut c_void, amount: c_int, offset: i64) => xRead, ffi::SQLITE_IOERR_READ);
flushed_then!(truncate(size: i64) => xTruncate, ffi::SQLITE_IOERR_TRUNCATE);
flushed_then!(sync(flags: c_int) => xSync, ffi::SQLITE_IOERR_FSYNC);
flushed_then!(file_size(size: *mut i64) => xFileSize, ffi::SQLITE_IOERR_FSTAT);
flushed_then!(file_control(op: c_int, arg: *mut c_void) => xFileControl, ffi::SQLITE_NOTFOUND);
flushed_then!(fetch(offset: i64, amount: c_int, out: *mut *mut c_void) => xFetch, {
    *out = std::ptr::null_mut();
    ffi::SQLITE_OK
});
forwarded!(lock(level: c_int) -> c_int => xLock, ffi::SQLITE_OK);
forwarded!(unlock(level: c_int) -> c_int => xUnlock, ffi::SQLITE_OK);
forwarded!(check_reserved_lock(out: *mut c_int) -> c_int => xCheckReservedLock, ffi::SQLITE_OK);
forwarded!(sector_size() -> c_int => xSectorSize, 4096);
forwarded!(device_characteristics() -> c_int => xDeviceCharacteristics, 0);
forwarded!(shm_map(region: c_int, size: c_int, extend: c_int, out: *mut *mut c_void) -> c_int => xShmMap, ffi::SQLITE_IOERR_SHMMAP);
forwarded!(shm_lock(offset: c_int, n: c_int, flags: c_int) -> c_int => xShmLock, ffi::SQLITE_IOERR_SHMLOCK);
forwarded!(shm_unmap(delete: c_int) -> c_int => xShmUnmap, ffi::SQLITE_OK);
forwarded!(unfetch(offset: i64, page: *mut c_void) -> c_int => xUnfetch, ffi::SQLITE_OK);

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    let (real, methods) = real(file);
    if let Some(f) = methods.xShmBarrier {
        f(real);
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::{Connection, OpenFlags};
    use std::path::Path;

    /// The write system calls this thread has made, from /proc (Linux).
    fn writes_so_far() -> Option<u64> {
        let io = std::fs::read_to_string("/proc/thread-self/io").ok()?;
        io.lines().find_map(|l| l.strip_prefix("syscw: ")).and_then(|n| n.trim().parse().ok())
    }

    fn open(path: &Path, vfs: Option<&str>, synchronous: &str) -> Connection {
        let conn = match vfs {
            Some(vfs) => Connection::open_with_flags_and_vfs(path, OpenFlags::default(), vfs).unwrap(),
            None => Connection::open(path).unwrap(),
        };
        conn.execute_batch(&format!(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; PRAGMA wal_autocheckpoint = 0;"
        ))
        .unwrap();
        conn
    }

    /// What a crash of the process would leave: the database and WAL files as the kernel has them
    /// (nothing held in the process's memory), copied aside and opened on the default VFS.
    fn left_by_a_crash(path: &Path, dir: &Path) -> Connection {
        let copy = dir.join(format!("crash-{}.db", rand::random::<u64>()));
        std::fs::copy(path, &copy).unwrap();
        std::fs::copy(format!("{}-wal", path.display()), format!("{}-wal", copy.display())).unwrap();
        let conn = Connection::open(&copy).unwrap();
        let check: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
        assert_eq!(check, "ok");
        conn
    }

    fn rows_of(conn: &Connection, round: i64) -> (i64, i64) {
        conn.query_row("SELECT count(*), coalesce(sum(length(body)), 0) FROM t WHERE round = ?1", [round], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap()
    }

    /// A commit of many pages; the write calls it took.
    fn commit_many_pages(conn: &Connection, round: i64) -> u64 {
        let before = writes_so_far().unwrap_or(0);
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        let mut insert = conn.prepare_cached("INSERT INTO t (round, body) VALUES (?1, ?2)").unwrap();
        for i in 0..200 {
            insert.execute(rusqlite::params![round, format!("{round}-{i}-{}", "x".repeat(2000))]).unwrap();
        }
        drop(insert);
        conn.execute_batch("COMMIT").unwrap();
        writes_so_far().unwrap_or(0) - before
    }

    #[test]
    fn a_gathered_commit_is_in_the_file_when_it_returns_for_readers_and_a_crash_in_far_fewer_calls() {
        super::register().unwrap();
        for synchronous in ["FULL", "NORMAL"] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("store.db");
            let writer = open(&path, Some(super::NAME), synchronous);
            writer.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, round INTEGER, body TEXT)").unwrap();
            let reader = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
            let mut gathered = Vec::new();
            for round in 0..5 {
                gathered.push(commit_many_pages(&writer, round));
                // Seen, as written, by a reader on the default VFS and in the files as they are.
                for conn in [&reader, &left_by_a_crash(&path, dir.path())] {
                    let (rows, bytes) = rows_of(conn, round);
                    assert_eq!(rows, 200, "{synchronous}, round {round}");
                    assert!(bytes > 200 * 2000);
                }
            }
            // Pages rewritten inside one transaction (a spilled cache) rewrite frames and their
            // checksums in place, some after the commit frame: all in the file when COMMIT returns.
            writer.execute_batch("PRAGMA cache_size = 2; BEGIN; UPDATE t SET body = body || 'y'; COMMIT;").unwrap();
            let crashed = left_by_a_crash(&path, dir.path());
            let ys: i64 = crashed.query_row("SELECT count(*) FROM t WHERE body LIKE '%y'", [], |r| r.get(0)).unwrap();
            assert_eq!(ys, 1000, "{synchronous}");
            // A checkpoint reads the WAL back through the VFS; the WAL is then written again from
            // its start (a new header).
            let (_, _, done): (i64, i64, i64) = writer
                .query_row("PRAGMA wal_checkpoint(RESTART)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap();
            assert!(done > 0);
            commit_many_pages(&writer, 5);
            assert_eq!(rows_of(&left_by_a_crash(&path, dir.path()), 5).0, 200, "{synchronous}, after a reset");
            drop(reader);
            drop(writer);
            let reopened = Connection::open(&path).unwrap();
            let check: String = reopened.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
            assert_eq!(check, "ok");
            let (rows, ys): (i64, i64) = reopened
                .query_row("SELECT count(*), sum(body LIKE '%y') FROM t", [], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            assert_eq!((rows, ys), (1200, 1000), "{synchronous}");

            // The same commit on the default VFS makes at least two writes per page; gathered, a few.
            if writes_so_far().is_some() {
                let plain_path = dir.path().join("plain.db");
                let plain = open(&plain_path, None, synchronous);
                plain.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, round INTEGER, body TEXT)").unwrap();
                let direct = commit_many_pages(&plain, 0);
                assert!(direct >= 200, "{synchronous}: the default VFS made {direct} writes for ~200 pages");
                assert!(gathered.iter().all(|&n| n <= 10), "{synchronous}: gathered commits made {gathered:?} writes");
            }
        }
    }
}
