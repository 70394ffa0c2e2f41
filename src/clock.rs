//! Where "now" comes from. Production reads the system clock; a test can hand a part the
//! [`Clock::tokio`] clock, which follows tokio's (pausable) time, and then drive time with
//! `tokio::time::advance` or paused sleeps instead of waiting for it.

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

    pub fn now_ms(&self) -> i64 {
        match &self.0 {
            Source::System => crate::event::now_ms(),
            Source::Tokio { base, start } => base + start.elapsed().as_millis() as i64,
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
}
