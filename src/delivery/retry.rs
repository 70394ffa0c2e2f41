//! Classifying one attempt (delivered / retry / failed) and computing when the next try is due:
//! the route's schedule with ±10 % jitter, pushed out by a longer `Retry-After`.

use std::time::Duration;

/// What one attempt's result means for its delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Worth trying again; `retry_after` is the server's request, if any.
    Retry {
        reason: String,
        retry_after: Option<Duration>,
    },
    /// Trying again cannot help (a 4xx other than 408/425/429, a render error, an unknown route).
    Fail {
        reason: String,
    },
}

/// The answer classes SPEC.md names: 2xx delivered; 408, 425, 429 and 5xx retried; other
/// statuses failed at once.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 425 | 429 | 500..=599 => Verdict::Retry { reason: format!("HTTP {status}"), retry_after },
        _ => Verdict::Fail { reason: format!("HTTP {status}") },
    }
}

/// Longest `Retry-After` honoured; a server asking for more gets this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(6 * 3600);

/// The delay before the next try after `tries` failed tries (1 after the first failure), or `None`
/// when the schedule is exhausted.
pub fn next_delay(schedule: &[Duration], tries: u32, retry_after: Option<Duration>) -> Option<Duration> {
    let base = *schedule.get((tries as usize).checked_sub(1)?)?;
    let jitter = rand::random::<f64>() * 0.2 - 0.1;
    let jittered = base.mul_f64(1.0 + jitter);
    Some(match retry_after {
        Some(ra) if ra > jittered => ra.min(MAX_RETRY_AFTER),
        _ => jittered,
    })
}

/// Parses `Retry-After` as seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_classified_as_the_spec_says() {
        assert_eq!(classify_status(204, None), Verdict::Delivered);
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert!(matches!(classify_status(s, None), Verdict::Retry { .. }), "{s}");
        }
        for s in [301, 400, 401, 403, 404, 409, 422] {
            assert!(matches!(classify_status(s, None), Verdict::Fail { .. }), "{s}");
        }
    }

    #[test]
    fn delays_follow_the_schedule_within_ten_percent() {
        let schedule = [Duration::from_secs(60), Duration::from_secs(300)];
        for _ in 0..100 {
            let d = next_delay(&schedule, 1, None).unwrap();
            assert!(d >= Duration::from_secs(54) && d <= Duration::from_secs(66), "{d:?}");
            let d = next_delay(&schedule, 2, None).unwrap();
            assert!(d >= Duration::from_secs(270) && d <= Duration::from_secs(330), "{d:?}");
        }
        assert_eq!(next_delay(&schedule, 3, None), None);
        assert_eq!(next_delay(&[], 1, None), None);
    }

    #[test]
    fn a_longer_retry_after_wins_and_a_shorter_one_does_not() {
        let schedule = [Duration::from_secs(60)];
        assert_eq!(next_delay(&schedule, 1, Some(Duration::from_secs(600))), Some(Duration::from_secs(600)));
        assert!(next_delay(&schedule, 1, Some(Duration::from_secs(1))).unwrap() >= Duration::from_secs(54));
        assert_eq!(next_delay(&schedule, 1, Some(Duration::from_secs(999_999))), Some(MAX_RETRY_AFTER));
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        assert_eq!(parse_retry_after("3"), Some(Duration::from_secs(3)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let d = parse_retry_after(&httpdate::fmt_http_date(later)).unwrap();
        assert!(d > Duration::from_secs(100) && d <= Duration::from_secs(120), "{d:?}");
        assert_eq!(parse_retry_after("soon"), None);
    }
}
