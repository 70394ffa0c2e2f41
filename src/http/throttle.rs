//! `AuthThrottle`: repeated wrong admin tokens are answered more and more slowly, so guessing the
//! token from the network costs time; a right token is never delayed.

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

#[derive(Debug, Default)]
pub struct AuthThrottle {
    state: Mutex<Option<(Instant, u32)>>,
}

impl AuthThrottle {
    /// Counts one wrong token at `now` and returns how long to wait before answering it.
    pub fn failed(&self, now: Instant) -> Duration {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let count = match *state {
            Some((start, n)) if now.duration_since(start) < WINDOW => n + 1,
            _ => 1,
        };
        let start = state.map(|(s, _)| s).filter(|s| now.duration_since(*s) < WINDOW).unwrap_or(now);
        *state = Some((start, count));
        STEP.saturating_mul(count.saturating_sub(FREE)).min(MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_tokens_are_answered_slower_and_slower_then_forgiven_after_the_window() {
        let t = AuthThrottle::default();
        let now = Instant::now();
        let delays: Vec<Duration> = (0..6).map(|_| t.failed(now)).collect();
        assert_eq!(delays[..3], [Duration::ZERO; 3]);
        assert_eq!(delays[3..], [STEP, STEP * 2, STEP * 3]);
        for _ in 0..100 {
            t.failed(now);
        }
        assert_eq!(t.failed(now), MAX);
        assert_eq!(t.failed(now + WINDOW + Duration::from_secs(1)), Duration::ZERO);
    }
}
