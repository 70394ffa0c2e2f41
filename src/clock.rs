//! Where "now" comes from. Production reads the system clock; a test can hand a part the
//! [`Clock::tokio`] clock, which follows tokio's (pausable) time, and then drive time with
//! `tokio::time::advance` or paused sleeps instead of waiting for it, or a [`Clock::manual`] one
//! that moves only when told (for a whole relay, whose sockets cannot run on paused time).

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
    Manual(std::sync::Arc<std::sync::atomic::AtomicI64>),
}

impl Default for Clock {
    fn default() -> Self {
        Clock::system()
    }
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
        Clock(Source::Manual(std::sync::Arc::new(start.into())))
    }

    /// Moves a manual clock (and its clones) forward; other clocks are not moved by hand.
    pub fn advance(&self, by: std::time::Duration) {
        if let Source::Manual(now) = &self.0 {
            now.fetch_add(by.as_millis() as i64, std::sync::atomic::Ordering::SeqCst);
        }
    }

    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Source::System => crate::event::now_ms(),
            Source::Tokio { base, start } => base + start.elapsed().as_millis() as i64,
            Source::Manual(now) => now.load(std::sync::atomic::Ordering::SeqCst),
        }
    }
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
