//! The fast path of deduplication: a bounded moka cache of (source, event id) pairs seen within
//! their source's `dedup_window`, in front of the store's dedup key (which alone is authoritative
//! across restarts and replicas). Whether a key is still live is read against the "now" the
//! caller passes (the relay's clock); the cache's own expiry only bounds its memory.

use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

/// Entries kept at most; older ones fall back to the store's check.
const CAPACITY: u64 = 50_000;

/// An accepted key: live until `until` (Unix ms), dropped from memory after `window`.
#[derive(Clone, Copy)]
struct Live {
    until: i64,
    window: Duration,
}

struct WindowExpiry;

impl Expiry<(String, String), Live> for WindowExpiry {
    fn expire_after_create(&self, _key: &(String, String), live: &Live, _at: Instant) -> Option<Duration> {
        // Capped, so no configured window can overflow the cache's own time arithmetic.
        Some(live.window.min(Duration::from_secs(400 * 24 * 3600)))
    }
}

pub struct Dedup {
    seen: Cache<(String, String), Live>,
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
    /// Whether this process has accepted (source, key) within its window, at `now` (Unix ms).
    pub fn seen(&self, source: &str, key: &str, now: i64) -> bool {
        self.seen.get(&(source.to_string(), key.to_string())).is_some_and(|live| live.until > now)
    }

    /// Records (source, key) as accepted at `now` (Unix ms) for `window`.
    pub fn remember(&self, source: &str, key: &str, window: Duration, now: i64) {
        let until = now.saturating_add(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
        self.seen.insert((source.to_string(), key.to_string()), Live { until, window });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_remembered_per_source_until_their_window_ends() {
        let d = Dedup::default();
        let now = 1_700_000_000_000;
        d.remember("a", "1", Duration::from_secs(60), now);
        d.remember("a", "2", Duration::from_millis(1), now);
        assert!(d.seen("a", "1", now));
        assert!(d.seen("a", "2", now));
        assert!(!d.seen("b", "1", now), "per source");
        assert!(!d.seen("a", "2", now + 1), "its window ended");
        assert!(d.seen("a", "1", now + 59_999));
        assert!(!d.seen("a", "1", now + 60_000));
        d.remember("a", "3", Duration::MAX, now);
        assert!(d.seen("a", "3", i64::MAX - 1), "a huge window does not overflow");
    }
}
