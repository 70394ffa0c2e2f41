//! The sliding window of a route's `rate_limit`, with reservations: pure logic, used by the
//! in-process gate (`delivery::limits`) and by the PostgreSQL store, which keeps one window per
//! route for all replicas.

use std::collections::VecDeque;

use crate::config::RateLimit;

/// The answer to "may one more request go out?".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// Yes, at this time (Unix ms, now or soon): the place is recorded.
    At(i64),
    /// Not within `max_wait`: the first free place is at this time. Nothing is recorded.
    Full(i64),
}

/// `sent` holds the send times (Unix ms) handed out so far, oldest first, at most `rate.count`.
/// Finds the earliest time at which one more request keeps every window of `rate.window` at
/// `rate.count` or fewer, and records it — unless that is more than `max_wait` away.
pub fn reserve(sent: &mut VecDeque<i64>, rate: RateLimit, now: i64, max_wait: i64) -> Reservation {
    let full = sent.len() >= rate.count as usize;
    let slot = match sent.front() {
        Some(oldest) if full => (*oldest + rate.window.as_millis() as i64).max(now),
        _ => now,
    };
    if slot - now > max_wait {
        return Reservation::Full(slot);
    }
    if full {
        sent.pop_front();
    }
    sent.push_back(slot);
    Reservation::At(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_window_never_holds_more_than_count_and_reservations_stay_within_max_wait() {
        use Reservation::{At, Full};
        let rate = RateLimit { count: 3, window: Duration::from_secs(1) };
        let mut sent = VecDeque::new();
        let got: Vec<Reservation> = (0..8).map(|_| reserve(&mut sent, rate, 10_000, 1000)).collect();
        assert_eq!(got[..3], [At(10_000), At(10_000), At(10_000)]);
        assert_eq!(got[3..6], [At(11_000), At(11_000), At(11_000)], "the next window, reserved");
        assert_eq!(got[6..], [Full(12_000), Full(12_000)], "two windows away: handed back");
        assert_eq!(sent.len(), 3);
        // Later, the window has room again.
        assert_eq!(reserve(&mut sent, rate, 12_500, 1000), At(12_500));
    }
}
