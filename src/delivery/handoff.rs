//! Hand-off of freshly stored deliveries straight to this process's workers: ingest leases them
//! in the transaction that stores them and, once it has committed, passes them over in memory, so
//! no claim query has to find them again. Only while the worker pool runs, and only as many as it
//! has idle workers for: when every worker is busy, new deliveries wait in the store and claims
//! take them in due order, so a backlog (and its retries) is never overtaken by newer events. A
//! crash loses nothing: a handed-off delivery is a leased row, claimed again when its lease ends.

use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Semaphore};

use crate::store::Claimed;

/// A place in the pool's hand-off queue, reserved before the store commits.
pub type Place = mpsc::OwnedPermit<Claimed>;

#[derive(Default)]
pub struct Handoff {
    open: Mutex<Option<Open>>,
}

struct Open {
    tx: mpsc::Sender<Claimed>,
    /// The pool's worker slots: a place is given only for a worker that is idle now.
    idle: Arc<Semaphore>,
}

impl Handoff {
    /// Opens the queue (the worker pool calls this when it starts, with its worker slots).
    pub fn open(&self, workers: Arc<Semaphore>) -> mpsc::Receiver<Claimed> {
        let (tx, rx) = mpsc::channel(workers.available_permits().max(1));
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(Open { tx, idle: workers });
        rx
    }

    /// Closes it: from now on every delivery waits for a claim.
    pub fn close(&self) {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Up to `n` places, fewer (or none) when the pool is not running or has no room.
    pub fn reserve(&self, n: usize) -> Vec<Place> {
        if n == 0 {
            return Vec::new();
        }
        let (tx, idle) = match &*self.open.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(open) => (open.tx.clone(), open.idle.available_permits()),
            None => return Vec::new(),
        };
        // Workers idle now, less the deliveries already handed over and not yet taken.
        let waiting = tx.max_capacity() - tx.capacity();
        let room = idle.saturating_sub(waiting).min(n);
        let mut places = Vec::with_capacity(room);
        for _ in 0..room {
            match tx.clone().try_reserve_owned() {
                Ok(place) => places.push(place),
                Err(_) => break,
            }
        }
        places
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_are_given_only_for_idle_workers_and_only_while_the_pool_runs() {
        let handoff = Handoff::default();
        assert!(handoff.reserve(3).is_empty(), "closed: every delivery waits for a claim");
        let workers = Arc::new(Semaphore::new(2));
        let rx = handoff.open(workers.clone());
        let places = handoff.reserve(3);
        assert_eq!(places.len(), 2, "never more than the idle workers");
        assert!(handoff.reserve(1).is_empty());
        drop(places);
        let busy = workers.clone().try_acquire_owned().unwrap();
        assert_eq!(handoff.reserve(2).len(), 1, "one worker busy: one place");
        let _busy_too = workers.clone().try_acquire_owned().unwrap();
        assert!(handoff.reserve(1).is_empty(), "every worker busy: new deliveries wait for a claim, in order");
        drop(busy);
        handoff.close();
        assert!(handoff.reserve(1).is_empty());
        drop(rx);
    }
}
