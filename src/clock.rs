//! Where "now" comes from, and the only place that reads the system time: every part is handed a
//! [`Clock`] (or a "now" read from one) by whoever wires it. Production reads the system clock; a
//! test can hand a part the [`Clock::tokio`] clock, which follows tokio's (pausable) time, and then
//! drive time with `tokio::time::advance` or paused sleeps instead of waiting for it, or a
//! [`Clock::manual`] one that moves only when told (for a whole relay, whose sockets cannot run on
//! paused time).

/// Unix milliseconds, from the system or from tokio's clock.
#[derive(Clone, Debug)]
pub struct Clock(Source);

#[derive(Clone, Debug)]
enum Source {
    System,
    /// `base` Unix ms at tokio instant `start`; moves with tokio's time (paused in tests).
    Tokio {
        base: i64,
        start: tokio::time::Instant,
    },
    /// Moves only with [`Clock::advance`]; clones share it.
    Manual(std::sync::Arc<Manual>),
}

#[derive(Debug)]
struct Manual {
    now: std::sync::atomic::AtomicI64,
    /// Wakes [`Clock::sleep_until`] when the clock is moved.
    moved: tokio::sync::Notify,
}

impl Clock {
    pub fn system() -> Clock {
        Clock(Source::System)
    }

    /// A clock that reads `base` now and advances with tokio's time (for paused-time tests).
    pub fn tokio(base: i64) -> Clock {
        Clock(Source::Tokio { base, start: tokio::time::Instant::now() })
    }

    /// A clock that reads `start` until [`Clock::advance`] moves it.
    pub fn manual(start: i64) -> Clock {
        Clock(Source::Manual(std::sync::Arc::new(Manual { now: start.into(), moved: tokio::sync::Notify::new() })))
    }

    /// Moves a manual clock (and its clones) forward; other clocks are not moved by hand.
    pub fn advance(&self, by: std::time::Duration) {
        if let Source::Manual(m) = &self.0 {
            m.now.fetch_add(by.as_millis() as i64, std::sync::atomic::Ordering::SeqCst);
            m.moved.notify_waiters();
        }
    }

    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Source::System => {
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
            }
            Source::Tokio { base, start } => base + start.elapsed().as_millis() as i64,
            Source::Manual(m) => m.now.load(std::sync::atomic::Ordering::SeqCst),
        }
    }

    /// Waits until this clock reads `at` (Unix ms) or later: on tokio's timer for the system and
    /// tokio clocks, and, for a manual clock, until a test has moved it that far.
    pub async fn sleep_until(&self, at: i64) {
        match &self.0 {
            Source::System | Source::Tokio { .. } => {
                let wait = at - self.now_ms();
                if wait > 0 {
                    tokio::time::sleep(std::time::Duration::from_millis(wait as u64)).await;
                }
            }
            Source::Manual(m) => loop {
                let moved = m.moved.notified();
                if self.now_ms() >= at {
                    return;
                }
                moved.await;
            },
        }
    }
}

/// Milliseconds since the process first asked, from the monotonic clock: for spacing out repeated
/// log lines where no part's clock is at hand; never a time of day, never stored.
pub fn monotonic_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed().as_millis() as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn the_tokio_clock_moves_only_with_tokio_time() {
        let clock = Clock::tokio(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        tokio::time::advance(Duration::from_millis(250)).await;
        assert_eq!(clock.now_ms(), 1_250);
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert_eq!(clock.now_ms(), 1_000 + 250 + 3_600_000);
    }

    #[tokio::test]
    async fn sleeping_on_a_manual_clock_ends_when_it_is_moved_far_enough() {
        let clock = Clock::manual(1_000);
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(3_000).await }
        });
        clock.advance(Duration::from_millis(1_000));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "2 000 is not 3 000 yet");
        clock.advance(Duration::from_millis(1_000));
        sleeper.await.unwrap();
        clock.sleep_until(0).await; // a time already past returns at once
    }

    #[test]
    fn a_manual_clock_moves_only_when_advanced_and_its_clones_move_with_it() {
        let clock = Clock::manual(5_000);
        let seen_by_a_part = clock.clone();
        assert_eq!(seen_by_a_part.now_ms(), 5_000);
        clock.advance(Duration::from_secs(90));
        assert_eq!(seen_by_a_part.now_ms(), 95_000);
        let system = Clock::system();
        let before = system.now_ms();
        system.advance(Duration::from_secs(3600));
        assert!(system.now_ms() < before + 3_600_000, "the system clock is not moved by hand");
    }
}
