//! Hand-off of freshly stored deliveries straight to this process's workers: ingest leases them
//! in the transaction that stores them and, once it has committed, passes them over in memory, so
//! no claim query has to find them again. Only while the worker pool runs, only as many as it has
//! room for; everything else waits in the store for a claim as before. A crash loses nothing: a
//! handed-off delivery is a leased row, taken again by a claim when its lease expires.

use std::sync::Mutex;

use tokio::sync::mpsc;

use crate::store::Claimed;

/// A place in the pool's hand-off queue, reserved before the store commits.
pub type Place = mpsc::OwnedPermit<Claimed>;

#[derive(Default)]
pub struct Handoff {
    open: Mutex<Option<mpsc::Sender<Claimed>>>,
}

impl Handoff {
    /// Opens the queue (the worker pool calls this when it starts); at most `capacity` waiting.
    pub fn open(&self, capacity: usize) -> mpsc::Receiver<Claimed> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        *self.open.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
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
        let Some(tx) = self.open.lock().unwrap_or_else(|p| p.into_inner()).clone() else { return Vec::new() };
        let mut places = Vec::with_capacity(n);
        for _ in 0..n {
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
    fn no_place_is_given_while_the_pool_is_closed_or_full() {
        let handoff = Handoff::default();
        assert!(handoff.reserve(3).is_empty(), "closed: every delivery waits for a claim");
        let rx = handoff.open(2);
        let places = handoff.reserve(3);
        assert_eq!(places.len(), 2, "never more than the pool has room for");
        assert!(handoff.reserve(1).is_empty());
        drop(places);
        assert_eq!(handoff.reserve(1).len(), 1, "a place given back can be taken again");
        handoff.close();
        assert!(handoff.reserve(1).is_empty());
        drop(rx);
    }
}
