//! Hand-off of freshly stored deliveries straight to this process's workers: ingest leases them
//! in the transaction that stores them and, once it has committed, passes them over in memory, so
//! no claim query has to find them again. Only while the worker pool runs, and only as many as it
//! has idle workers for: when every worker is busy, new deliveries wait in the store and claims
//! take them in due order, so a backlog (and its retries) is never overtaken by newer events. A
//! crash loses nothing: a handed-off delivery is a leased row, claimed again when its lease ends.
//!
//! A place reserved by an ingest whose transaction has not committed yet does not hold a worker:
//! the group commit takes milliseconds (tens on PostgreSQL), and counting those places against the
//! idle workers sent most deliveries of a busy relay to the store, each found again by a claim of
//! its own (#24). So a delivery may wait a little in the hand-off queue for a worker; the queue
//! holds at most twice the pool, and a delivery that waited long enough for its lease to run low
//! has its lease renewed before its attempt (`Handover::renew_first`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Semaphore};

use crate::store::Claimed;

/// A delivery passed over after its event committed, with the end of its lease (Unix ms).
pub struct Handover {
    pub claimed: Claimed,
    pub lease_until: i64,
}

impl Handover {
    /// Whether the lease must be renewed before the attempt: less than two thirds of it is left
    /// (`lease_ms` long), as when every worker stayed busy while the delivery waited in the queue.
    /// An attempt renews its lease every third of it, so a fresh one needs nothing.
    pub fn renew_first(&self, now: i64, lease_ms: i64) -> bool {
        self.lease_until.saturating_sub(now) < lease_ms.saturating_mul(2) / 3
    }
}

/// A place in the pool's hand-off queue, reserved before the store commits.
pub struct Place {
    permit: Option<mpsc::OwnedPermit<Handover>>,
    /// The places reserved and not yet used or given up.
    reserved: Arc<AtomicUsize>,
}

impl Place {
    /// Passes the delivery over (its event has committed).
    pub fn send(mut self, handover: Handover) {
        if let Some(permit) = self.permit.take() {
            permit.send(handover);
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.reserved.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Default)]
pub struct Handoff {
    open: Mutex<Option<Open>>,
}

struct Open {
    tx: mpsc::Sender<Handover>,
    /// The pool's worker slots: a place is given only while a worker is idle.
    idle: Arc<Semaphore>,
    reserved: Arc<AtomicUsize>,
    /// Deliveries the pool claimed ahead from the store and that wait for a worker: older than
    /// anything ingest would pass over now, so they take the idle workers first.
    claimed_ahead: Arc<AtomicUsize>,
}

impl Handoff {
    /// Opens the queue (the worker pool calls this when it starts, with its worker slots).
    pub fn open(&self, workers: Arc<Semaphore>) -> mpsc::Receiver<Handover> {
        let (tx, rx) = mpsc::channel(workers.available_permits().max(1) * 2);
        let open = Open { tx, idle: workers, reserved: Arc::default(), claimed_ahead: Arc::default() };
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(open);
        rx
    }

    /// Says how many deliveries the pool has claimed ahead and not started yet: the idle workers
    /// are theirs before any new delivery's.
    pub fn claimed_ahead(&self, n: usize) {
        if let Some(open) = &*self.open.lock().unwrap_or_else(|p| p.into_inner()) {
            open.claimed_ahead.store(n, Ordering::Relaxed);
        }
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
        let (tx, idle, reserved, ahead) = match &*self.open.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(open) => (
                open.tx.clone(),
                open.idle.available_permits(),
                open.reserved.clone(),
                open.claimed_ahead.load(Ordering::Relaxed),
            ),
            None => return Vec::new(),
        };
        // Workers idle now, less the deliveries already passed over or claimed ahead and not yet
        // taken; the places still waiting for their commit are bounded only by the queue's size.
        let outstanding = tx.max_capacity() - tx.capacity();
        let waiting = outstanding.saturating_sub(reserved.load(Ordering::Relaxed)) + ahead;
        let room = idle.saturating_sub(waiting).min(n);
        let mut places = Vec::with_capacity(room);
        for _ in 0..room {
            match tx.clone().try_reserve_owned() {
                Ok(permit) => {
                    reserved.fetch_add(1, Ordering::Relaxed);
                    places.push(Place { permit: Some(permit), reserved: reserved.clone() });
                }
                Err(_) => break,
            }
        }
        places
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handover(n: usize) -> Handover {
        let claimed = Claimed {
            delivery_id: format!("d{n}"),
            route: "crm".into(),
            lease_token: "t".into(),
            tries: 0,
            attempts: 0,
            event: crate::store::StoredEvent {
                id: format!("e{n}"),
                source: "learnybox".into(),
                key: format!("k{n}"),
                kind: "contact.subscribed".into(),
                status: "routed".into(),
                payload: String::new(),
                received_at: 0,
            },
            steps_state: None,
            keyed: false,
            data: None,
        };
        Handover { claimed, lease_until: 30_000 }
    }

    #[test]
    fn places_are_given_only_for_idle_workers_and_only_while_the_pool_runs() {
        let handoff = Handoff::default();
        assert!(handoff.reserve(3).is_empty(), "closed: every delivery waits for a claim");
        let workers = Arc::new(Semaphore::new(2));
        let mut rx = handoff.open(workers.clone());
        let first = handoff.reserve(3);
        assert_eq!(first.len(), 2, "never more at once than the idle workers");
        // Those two wait for their commit: they hold no worker yet.
        let second = handoff.reserve(3);
        assert_eq!(second.len(), 2, "places waiting for a commit do not count against the idle workers");
        assert!(handoff.reserve(1).is_empty(), "the queue holds at most twice the pool");
        drop(second);
        for (n, place) in first.into_iter().enumerate() {
            place.send(handover(n));
        }
        assert!(handoff.reserve(1).is_empty(), "two passed over and not yet taken: both idle workers are spoken for");
        let taken: Vec<_> = (0..2).map(|_| rx.try_recv().expect("passed over")).collect();
        assert_eq!(taken[1].claimed.delivery_id, "d1");
        let busy = workers.clone().try_acquire_owned().unwrap();
        assert_eq!(handoff.reserve(2).len(), 1, "one worker busy: one place");
        let _busy_too = workers.clone().try_acquire_owned().unwrap();
        assert!(handoff.reserve(1).is_empty(), "every worker busy: new deliveries wait for a claim, in order");
        drop(busy);
        // One worker idle again, but the pool claimed one delivery ahead from the store: it is
        // older than anything new, so it takes that worker.
        handoff.claimed_ahead(1);
        assert!(handoff.reserve(1).is_empty(), "the idle worker is the delivery claimed ahead's");
        handoff.claimed_ahead(0);
        assert_eq!(handoff.reserve(2).len(), 1);
        handoff.close();
        assert!(handoff.reserve(1).is_empty());
        drop(rx);
    }

    #[test]
    fn a_lease_is_renewed_first_once_a_third_of_it_has_gone() {
        let h = Handover { lease_until: 30_000, ..handover(0) };
        assert!(!h.renew_first(0, 30_000), "fresh");
        assert!(!h.renew_first(9_999, 30_000));
        assert!(h.renew_first(10_001, 30_000), "a third gone");
        assert!(h.renew_first(40_000, 30_000), "expired");
        assert!(h.renew_first(i64::MAX, i64::MAX), "no overflow");
        assert!(!Handover { lease_until: i64::MAX, ..handover(0) }.renew_first(i64::MIN, 1));
    }
}
