//! The fast path of deduplication: a bounded moka cache of (source, event id) pairs seen within
//! their source's `dedup_window`, in front of the store's dedup key (which alone is authoritative
//! across restarts and replicas). Whether a key is still live is read against the "now" the
//! caller passes (the relay's clock); the cache's own expiry only bounds its memory.

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
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

impl Expiry<u128, Live> for WindowExpiry {
    fn expire_after_create(&self, _key: &u128, live: &Live, _at: Instant) -> Option<Duration> {
        // Capped, so no configured window can overflow the cache's own time arithmetic.
        Some(live.window.min(Duration::from_secs(400 * 24 * 3600)))
    }
}

/// Entries are keyed by a 128-bit digest of (source, key) from two independently seeded SipHash
/// hashers, so a lookup copies no string; two pairs would share an entry with a chance of about
/// one in 10^34 per lookup (at the cache's 50,000 entries), and then the store's check would not be
/// reached for the second: a risk far below the disk's own error rate.
pub struct Dedup {
    seen: Cache<u128, Live>,
    hashers: [RandomState; 2],
}

impl std::fmt::Debug for Dedup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Dedup({} entries)", self.seen.entry_count())
    }
}

impl Default for Dedup {
    fn default() -> Self {
        Dedup {
            seen: Cache::builder().max_capacity(CAPACITY).expire_after(WindowExpiry).build(),
            hashers: [RandomState::new(), RandomState::new()],
        }
    }
}

impl Dedup {
    /// Whether this process has accepted (source, key) within its window, at `now` (Unix ms).
    pub fn seen(&self, source: &str, key: &str, now: i64) -> bool {
        self.seen.get(&self.digest(source, key)).is_some_and(|live| live.until > now)
    }

    /// (source, key) as the cache's key. `str`'s hash ends each string with a marker, so
    /// ("ab", "c") and ("a", "bc") differ.
    fn digest(&self, source: &str, key: &str) -> u128 {
        let [hi, lo] = self.hashers.each_ref().map(|h| {
            let mut h = h.build_hasher();
            source.hash(&mut h);
            key.hash(&mut h);
            h.finish()
        });
        (u128::from(hi) << 64) | u128::from(lo)
    }

    /// Records (source, key) as accepted at `now` (Unix ms) for `window`.
    pub fn remember(&self, source: &str, key: &str, window: Duration, now: i64) {
        let until = now.saturating_add(i64::try_from(window.as_millis()).unwrap_or(i64::MAX));
        self.seen.insert(self.digest(source, key), Live { until, window });
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
        assert!(!d.seen("", "a1", now) && !d.seen("a1", "", now), "where the source ends is part of the key");
        d.remember("a", "3", Duration::MAX, now);
        assert!(d.seen("a", "3", i64::MAX - 1), "a huge window does not overflow");
    }
}
