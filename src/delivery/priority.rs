//! The CPU priority of the delivery threads (`[delivery] nice`): lower than the public listener's
//! and the store writer's, so that when the cores are busy the acknowledgements Learnybox waits
//! for come first, and deliveries (already stored, so nothing is lost) catch up as soon as the
//! burst has passed.
//!
//! The delivery workers run on the async runtime's threads, which also run the relay's other
//! background work (housekeeping, alerts, reconciliation); the listeners' threads and the SQLite
//! writer's are started from the thread that serves (`serve`'s main thread), which keeps the
//! relay's own priority. A thread is lowered the first time it runs a delivery, to `nice` steps
//! below the serving thread (at most 19, the lowest). Linux only: elsewhere every thread keeps
//! the process's priority.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The nice value of the delivery threads, fixed once per process by [`lower_deliveries`].
static TARGET: OnceLock<i32> = OnceLock::new();

thread_local! {
    /// This thread has been put at [`TARGET`] (or tried to and failed).
    static LOWERED: Cell<bool> = const { Cell::new(false) };
}

/// The lowest priority a nice value can say.
const LOWEST: i32 = 19;

/// Puts the delivery threads `nice` steps below the calling thread's priority (capped at the
/// lowest, 19), for the rest of the process; called from the thread that serves. Returns the
/// nice value the delivery threads will run at (`None` when this platform cannot say, or when an
/// earlier call already fixed it to something else).
pub fn lower_deliveries(nice: u8) -> Option<i32> {
    let own = own_nice()?;
    let target = (own + i32::from(nice)).min(LOWEST);
    (*TARGET.get_or_init(|| target) == target).then_some(target)
}

/// Puts the calling thread at the delivery threads' priority, once per thread (a no-op before
/// [`lower_deliveries`] or with `nice = 0`). Called where each delivery starts.
pub fn enter() {
    // Not fixed (a delivery run outside `serve`): nothing to do.
    let Some(&target) = TARGET.get() else { return };
    if LOWERED.with(|l| l.replace(true)) {
        return;
    }
    if own_nice().is_some_and(|own| own >= target) {
        return;
    }
    if let Err(e) = set_own_nice(target) {
        static SAID: AtomicBool = AtomicBool::new(false);
        if !SAID.swap(true, Ordering::Relaxed) {
            tracing::warn!(error = %e, nice = target, "could not lower the delivery threads' CPU priority; they keep the listener's");
        }
    }
}

/// The calling thread's nice value (on Linux each thread has its own).
#[cfg(target_os = "linux")]
fn own_nice() -> Option<i32> {
    rustix::process::getpriority_process(Some(rustix::thread::gettid())).ok()
}

#[cfg(not(target_os = "linux"))]
fn own_nice() -> Option<i32> {
    None
}

#[cfg(target_os = "linux")]
fn set_own_nice(nice: i32) -> std::io::Result<()> {
    Ok(rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice)?)
}

#[cfg(not(target_os = "linux"))]
fn set_own_nice(_: i32) -> std::io::Result<()> {
    Ok(())
}
