//! `AuthThrottle`: wrong admin tokens, counted per client address: after a few in a minute each
//! further one is answered more slowly, and past a budget the address is refused (429) without its
//! token even being compared, so guessing from the network costs time whatever the number of
//! connections; a right token from another address is never delayed.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Wrong tokens within this window count together.
const WINDOW: Duration = Duration::from_secs(60);
/// Wrong tokens answered at once before the delay starts.
const FREE: u32 = 3;
/// Added per wrong token beyond `FREE`.
const STEP: Duration = Duration::from_millis(250);
/// The longest delay.
const MAX: Duration = Duration::from_secs(5);
/// Wrong tokens an address may send per window; beyond, it is refused until the window ends.
pub const BUDGET: u32 = 20;
/// Addresses remembered at most (the oldest windows are dropped first past this).
const ADDRESSES: usize = 10_000;

#[derive(Debug, Default)]
pub struct AuthThrottle {
    state: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Wrong tokens not yet said in a log line (one line a minute at most).
    unsaid: Mutex<(Option<Instant>, u64)>,
}

impl AuthThrottle {
    /// `Err(wait)` when `ip` has used up its budget of wrong tokens for the window.
    pub fn check(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.get(&ip) {
            Some((start, n)) if now.duration_since(*start) < WINDOW && *n >= BUDGET => {
                Err(WINDOW - now.duration_since(*start))
            }
            _ => Ok(()),
        }
    }

    /// Counts one wrong token from `ip` at `now` and returns how long to wait before answering.
    pub fn failed(&self, ip: IpAddr, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.len() >= ADDRESSES {
            state.retain(|_, (start, _)| now.duration_since(*start) < WINDOW);
            if state.len() >= ADDRESSES {
                // A flood of addresses: forget the oldest windows rather than grow.
                let mut starts: Vec<Instant> = state.values().map(|(s, _)| *s).collect();
                starts.sort();
                let cut = starts[starts.len() / 2];
                state.retain(|_, (start, _)| *start > cut);
            }
        }
        let entry = state.entry(ip).or_insert((now, 0));
        if now.duration_since(entry.0) >= WINDOW {
            *entry = (now, 0);
        }
        entry.1 += 1;
        STEP.saturating_mul(entry.1.saturating_sub(FREE)).min(MAX)
    }

    /// Whether to write the warning line now; `Some(n)`: the wrong tokens since the last line.
    pub fn should_say(&self, now: Instant) -> Option<u64> {
        let mut unsaid = self.unsaid.lock().unwrap_or_else(|e| e.into_inner());
        unsaid.1 += 1;
        if unsaid.0.is_some_and(|last| now.duration_since(last) < WINDOW) {
            return None;
        }
        unsaid.0 = Some(now);
        Some(std::mem::take(&mut unsaid.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_tokens_are_answered_slower_then_refused_per_address_and_forgiven_after_the_window() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let delays: Vec<Duration> = (0..6).map(|_| t.failed(a, now)).collect();
        assert_eq!(delays[..3], [Duration::ZERO; 3]);
        assert_eq!(delays[3..], [STEP, STEP * 2, STEP * 3]);
        assert_eq!(t.failed(b, now), Duration::ZERO, "another address has its own count");
        for _ in 0..100 {
            t.failed(a, now);
        }
        assert_eq!(t.failed(a, now), MAX);
        assert!(t.check(a, now).is_err(), "past the budget: refused");
        assert!(t.check(b, now).is_ok());
        let later = now + WINDOW + Duration::from_secs(1);
        assert!(t.check(a, later).is_ok());
        assert_eq!(t.failed(a, later), Duration::ZERO);
    }

    #[test]
    fn the_warning_is_said_once_a_minute_with_the_count() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        assert_eq!(t.should_say(now), Some(1));
        for _ in 0..50 {
            assert_eq!(t.should_say(now + Duration::from_secs(1)), None);
        }
        assert_eq!(t.should_say(now + WINDOW), Some(51), "the 50 held back and this one");
    }
}
