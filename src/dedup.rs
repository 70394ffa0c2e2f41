//! The fast path of deduplication: a bounded moka cache of (source, event id) pairs seen within
//! their source's `dedup_window`, in front of the store's unique key (which alone is authoritative
//! across restarts and replicas).

use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

/// Entries kept at most; older ones fall back to the store's check.
const CAPACITY: u64 = 50_000;

struct WindowExpiry;

impl Expiry<(String, String), Duration> for WindowExpiry {
    fn expire_after_create(&self, _key: &(String, String), window: &Duration, _at: Instant) -> Option<Duration> {
        Some(*window)
    }
}

pub struct Dedup {
    seen: Cache<(String, String), Duration>,
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dedup({} entries)", self.seen.entry_count())
    }
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup { seen: Cache::builder().max_capacity(CAPACITY).expire_after(WindowExpiry).build() }
    }
}

impl Dedup {
    /// Whether this process has already accepted (source, key) within its window.
    pub fn seen(&self, source: &str, key: &str) -> bool {
        self.seen.contains_key(&(source.to_string(), key.to_string()))
    }

    /// Records (source, key) as accepted for `window`.
    pub fn remember(&self, source: &str, key: &str, window: Duration) {
        self.seen.insert((source.to_string(), key.to_string()), window);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_remembered_per_source_until_their_window_ends() {
        let d = Dedup::default();
        d.remember("a", "1", Duration::from_secs(60));
        d.remember("a", "2", Duration::from_millis(1));
        assert!(d.seen("a", "1"));
        assert!(!d.seen("b", "1"));
        std::thread::sleep(Duration::from_millis(20));
        d.seen.run_pending_tasks();
        assert!(!d.seen("a", "2"));
    }
}
