//! Classifying one attempt (delivered / retry / failed) and computing when the next try is due:
//! the route's schedule with ±10 % jitter, pushed out by a longer `Retry-After`.

use std::time::Duration;

use super::attempt::{AttemptResult, Verdict};
use crate::config::{RetryOn, StepConfig, Success};

/// The answer classes SPEC.md names: 2xx delivered; 408, 425, 429 and 5xx retried; other
/// statuses failed at once.
pub fn classify_status(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        200..=299 => Verdict::Delivered,
        408 | 425 | 429 | 500..=599 => Verdict::Retry { reason: format!("HTTP {status}"), retry_after },
        _ => Verdict::Fail { reason: format!("HTTP {status}") },
    }
}

/// `retry_on`: turns a failing answer that matches one of the route's rules (status, and body text
/// when the rule names one) into a retry on the schedule. Other verdicts are left as they are.
pub fn apply_retry_on(rules: &[RetryOn], status: Option<u16>, body: Option<&str>, verdict: Verdict) -> Verdict {
    let (Verdict::Fail { reason }, Some(status)) = (&verdict, status) else { return verdict };
    let hit = rules
        .iter()
        .any(|r| r.status == status && r.body.as_deref().is_none_or(|needle| body.is_some_and(|b| b.contains(needle))));
    if hit {
        Verdict::Retry { reason: format!("{reason} (retry_on)"), retry_after: None }
    } else {
        verdict
    }
}

/// Applies a step's answer rules to its result, in this order: `throttle_on` (a "slow down"
/// answer: retried after the vendor's reset or `throttle_pause`, pausing the route, using up no
/// try), `accept` (an answer to branch on: returns true), `success` (checked in the answer, not
/// assumed from the status), then `retry_on`. A result without an answer is left as it is.
pub fn judge(step: &StepConfig, throttle_pause: Duration, r: &mut AttemptResult) -> bool {
    let Some(status) = r.status else { return false };
    if step.throttle_on.iter().any(|m| m.matches(status, r.body.as_deref())) {
        let wait = r.requested_wait.unwrap_or(throttle_pause).min(MAX_RETRY_AFTER);
        r.verdict = Verdict::Retry { reason: format!("HTTP {status} (throttle_on)"), retry_after: Some(wait) };
        let pause = humantime::format_duration(Duration::from_secs(wait.as_secs()));
        r.error = Some(match r.error.take() {
            Some(e) => format!("throttled (throttle_on), the route waits {pause}: {e}"),
            None => format!("throttled (throttle_on), the route waits {pause}: HTTP {status}"),
        });
        r.throttled = true;
        r.pause = Some(wait);
        return false;
    }
    if step.accept.iter().any(|m| m.matches(status, r.body.as_deref())) {
        return true;
    }
    if let Some(success) = &step.success {
        let listed =
            if success.status.is_empty() { (200..300).contains(&status) } else { success.status.contains(&status) };
        let problem = if listed {
            success_problem(success, status, r.body.as_deref(), r.location.as_deref())
        } else if (200..300).contains(&status) {
            Some(format!("success.status: HTTP {status} is not one of {:?}", success.status))
        } else {
            None
        };
        match problem {
            None if listed => {
                r.verdict = Verdict::Delivered;
                r.error = None;
            }
            None => {}
            Some(why) => {
                let snippet: String = r.body.as_deref().unwrap_or_default().trim().chars().take(200).collect();
                let error = if snippet.is_empty() { why.clone() } else { format!("{why}; the answer: {snippet}") };
                r.verdict = Verdict::Fail { reason: why };
                r.error = Some(error);
            }
        }
    }
    let verdict = std::mem::replace(&mut r.verdict, Verdict::Delivered);
    r.verdict = apply_retry_on(&step.retry_on, r.status, r.body.as_deref(), verdict);
    false
}

/// Which part of `success` a listed answer fails, if any: `body` for an answer that is not a
/// redirect, `location` for a redirect.
fn success_problem(success: &Success, status: u16, body: Option<&str>, location: Option<&str>) -> Option<String> {
    if (300..400).contains(&status) {
        let want = success.location.as_deref()?;
        let host = location
            .and_then(|l| reqwest::Url::parse(l.trim()).ok())
            .and_then(|u| u.host_str().map(str::to_ascii_lowercase));
        return match host {
            Some(h) if h == want || h.ends_with(&format!(".{want}")) => None,
            Some(h) => Some(format!("success.location: HTTP {status} redirects to {h}, not to {want}")),
            None => Some(format!(
                "success.location: HTTP {status} without an absolute Location (expected a redirect to {want})"
            )),
        };
    }
    let want = success.body.as_deref()?;
    if body.is_some_and(|b| b.contains(want)) {
        None
    } else {
        Some(format!("success.body: HTTP {status} answer does not contain {want:?}"))
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

/// The delay after a 429: what the CRM asked for, or else the schedule step the delivery is at
/// (its last step once exhausted; 60 s without a schedule), with jitter. Throttling does not use up
/// a step, so it never makes a delivery fail.
pub fn throttle_delay(schedule: &[Duration], tries: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(ra) = retry_after {
        return ra.min(MAX_RETRY_AFTER);
    }
    let base = schedule.get(tries as usize).or(schedule.last()).copied().unwrap_or(Duration::from_secs(60));
    base.mul_f64(1.0 + rand::random::<f64>() * 0.2 - 0.1)
}

/// Reset headers read after `Retry-After`: the IETF draft's, the common `X-` one, Brevo's
/// (`x-sib-ratelimit-reset`, seconds) and Systeme.io's (`X-RateLimit-Refill`, seconds).
const RESET_HEADERS: &[&str] = &["ratelimit-reset", "x-ratelimit-reset", "x-sib-ratelimit-reset", "x-ratelimit-refill"];

/// How long the CRM asks us to wait, from its answer's headers: `Retry-After` (seconds or an HTTP
/// date), else a rate-limit reset header (`RESET_HEADERS`: seconds to wait, or a Unix time in
/// seconds when it is that large). Dates are read against `now_ms` (the relay's clock). Whatever
/// the header says (huge, negative, not a number, not UTF-8), the answer is at most
/// [`MAX_RETRY_AFTER`] and reading it never panics.
pub fn requested_wait(headers: &reqwest::header::HeaderMap, now_ms: i64) -> Option<Duration> {
    if !speaks_of_limits(headers) {
        return None;
    }
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let wait = match get("retry-after").and_then(|v| parse_retry_after(v, now_ms)) {
        Some(d) => Some(d),
        None => RESET_HEADERS
            .iter()
            .find_map(|n| get(n).and_then(|v| parse_reset(v, now_ms)))
            .or_else(|| hubspot_wait(&get)),
    };
    wait.map(|d| d.min(MAX_RETRY_AFTER))
}

/// HubSpot sends no reset time: `X-HubSpot-RateLimit-Remaining: 0` means wait out the interval
/// (`X-HubSpot-RateLimit-Interval-Milliseconds`, 10 s by default); `…-Daily-Remaining: 0` means
/// the daily allowance is spent until midnight in the account's time zone, which the relay cannot
/// know: it looks again in an hour.
fn hubspot_wait<'a>(get: &dyn Fn(&str) -> Option<&'a str>) -> Option<Duration> {
    let zero = |name: &str| get(name).is_some_and(|v| v.trim() == "0");
    if zero("x-hubspot-ratelimit-daily-remaining") {
        return Some(Duration::from_secs(3600));
    }
    if zero("x-hubspot-ratelimit-remaining") {
        let ms = get("x-hubspot-ratelimit-interval-milliseconds").and_then(|v| v.trim().parse::<u64>().ok());
        return Some(Duration::from_millis(ms.unwrap_or(10_000)).min(MAX_RETRY_AFTER));
    }
    None
}

/// Whether an answer has a header the waits and quotas are read from: each of their names is
/// `retry-after` or holds `ratelimit`. Most answers have none, and then no name is looked up.
fn speaks_of_limits(headers: &reqwest::header::HeaderMap) -> bool {
    headers.keys().any(|k| {
        let k = k.as_str().as_bytes(); // header names are lower-case
        k == b"retry-after" || k.windows(9).any(|w| w == b"ratelimit")
    })
}

/// Whether the answer says the quota is used up (`X-RateLimit-Remaining: 0` or `RateLimit-Remaining: 0`).
pub fn quota_exhausted(headers: &reqwest::header::HeaderMap) -> bool {
    speaks_of_limits(headers)
        && QUOTA_HEADERS.iter().any(|n| headers.get(*n).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() == "0"))
}

/// The headers whose `0` says the quota is used up.
const QUOTA_HEADERS: &[&str] = &[
    "ratelimit-remaining",
    "x-ratelimit-remaining",
    "x-sib-ratelimit-remaining",
    "x-hubspot-ratelimit-remaining",
    "x-hubspot-ratelimit-daily-remaining",
];

/// Seconds as a duration, capped at [`MAX_RETRY_AFTER`]; `None` for what is not a finite,
/// non-negative number.
fn capped_secs(secs: f64) -> Option<Duration> {
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some(Duration::try_from_secs_f64(secs).unwrap_or(MAX_RETRY_AFTER).min(MAX_RETRY_AFTER))
}

fn parse_reset(value: &str, now_ms: i64) -> Option<Duration> {
    let n: f64 = value.trim().parse().ok()?;
    // Values past ~2001 in Unix seconds are a point in time, not a delay.
    if n.is_finite() && n > 1e9 {
        capped_secs((n - now_ms as f64 / 1000.0).max(0.0))
    } else {
        capped_secs(n)
    }
}

/// Parses `Retry-After` as seconds or an HTTP date (read against `now_ms`), capped at
/// [`MAX_RETRY_AFTER`].
pub fn parse_retry_after(value: &str, now_ms: i64) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Any number of digits: more than fit in a u64 is still "a very long time".
        return Some(v.parse::<u64>().map_or(MAX_RETRY_AFTER, Duration::from_secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    let at_ms = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis();
    let wait_ms = at_ms.saturating_sub(u128::try_from(now_ms).unwrap_or(0));
    Some(Duration::from_millis(u64::try_from(wait_ms).unwrap_or(u64::MAX)).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_header_read_for_a_wait_or_a_quota_is_noticed_and_near_misses_are_not() {
        let hubspot = ["x-hubspot-ratelimit-interval-milliseconds", "x-hubspot-ratelimit-daily-remaining"];
        let read = RESET_HEADERS.iter().chain(QUOTA_HEADERS).chain(&hubspot).chain(&["retry-after"]);
        for name in read {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert("content-type", "application/json".parse().unwrap());
            h.insert(reqwest::header::HeaderName::from_static(name), "0".parse().unwrap());
            assert!(speaks_of_limits(&h), "{name}");
        }
        for name in ["content-type", "x-rate-limit-remaining", "retry", "retry-after-ms", "ratelimi"] {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::HeaderName::from_static(name), "0".parse().unwrap());
            assert!(!speaks_of_limits(&h), "{name}");
            assert_eq!(requested_wait(&h, 0), None);
            assert!(!quota_exhausted(&h));
        }
    }

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
    fn reset_headers_read_as_delays_or_unix_times() {
        let now_ms = 1_700_000_000_000;
        let mut h = reqwest::header::HeaderMap::new();
        assert_eq!(requested_wait(&h, now_ms), None);
        h.insert("x-ratelimit-reset", "7".parse().unwrap());
        assert_eq!(requested_wait(&h, now_ms), Some(Duration::from_secs(7)));
        h.insert("x-ratelimit-reset", "1700000030".parse().unwrap());
        assert_eq!(requested_wait(&h, now_ms), Some(Duration::from_secs(30)), "a Unix time, read on the relay's clock");
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(requested_wait(&h, now_ms), Some(Duration::from_secs(3)), "Retry-After wins");
        assert!(!quota_exhausted(&h));
        h.insert("x-ratelimit-remaining", "0".parse().unwrap());
        assert!(quota_exhausted(&h));
    }

    #[test]
    fn vendor_reset_headers_say_when_to_come_back() {
        for name in ["x-sib-ratelimit-reset", "X-RateLimit-Refill"] {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap(), "12".parse().unwrap());
            assert_eq!(requested_wait(&h, 0), Some(Duration::from_secs(12)), "{name}");
        }
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-sib-ratelimit-remaining", "0".parse().unwrap());
        assert!(quota_exhausted(&h));
    }

    #[test]
    fn retry_on_turns_matching_failures_into_retries_and_leaves_the_rest() {
        let fail = || Verdict::Fail { reason: "HTTP 403".into() };
        let rules =
            [RetryOn { status: 404, body: None }, RetryOn { status: 403, body: Some("REQUEST_LIMIT_EXCEEDED".into()) }];
        let limit = r#"[{"errorCode":"REQUEST_LIMIT_EXCEEDED"}]"#;
        assert!(matches!(apply_retry_on(&rules, Some(403), Some(limit), fail()), Verdict::Retry { .. }));
        assert_eq!(apply_retry_on(&rules, Some(403), Some("INSUFFICIENT_ACCESS"), fail()), fail());
        assert_eq!(apply_retry_on(&rules, Some(403), None, fail()), fail());
        assert!(matches!(apply_retry_on(&rules, Some(404), None, fail()), Verdict::Retry { .. }));
        assert_eq!(apply_retry_on(&rules, Some(400), None, fail()), fail());
        assert_eq!(apply_retry_on(&rules, Some(404), None, Verdict::Delivered), Verdict::Delivered);
    }

    #[test]
    fn retry_after_reads_seconds_and_http_dates() {
        let now_ms = 1_700_000_000_000;
        assert_eq!(parse_retry_after("3", now_ms), Some(Duration::from_secs(3)));
        let later = std::time::UNIX_EPOCH + Duration::from_millis(now_ms as u64) + Duration::from_secs(120);
        assert_eq!(parse_retry_after(&httpdate::fmt_http_date(later), now_ms), Some(Duration::from_secs(120)));
        let earlier = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after(&httpdate::fmt_http_date(earlier), now_ms), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now_ms), None);
    }

    #[test]
    fn hubspot_rate_limit_headers_say_how_long_to_wait() {
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("x-hubspot-ratelimit-remaining", "0".parse().unwrap());
        h.insert("x-hubspot-ratelimit-interval-milliseconds", "10000".parse().unwrap());
        assert_eq!(requested_wait(&h, 0), Some(Duration::from_secs(10)));
        assert!(quota_exhausted(&h));
        h.insert("x-hubspot-ratelimit-remaining", "7".parse().unwrap());
        assert_eq!(requested_wait(&h, 0), None, "quota left: no wait");
        assert!(!quota_exhausted(&h));
        h.insert("x-hubspot-ratelimit-daily-remaining", "0".parse().unwrap());
        assert_eq!(requested_wait(&h, 0), Some(Duration::from_secs(3600)), "the daily allowance is spent");
        h.insert("retry-after", "2".parse().unwrap());
        assert_eq!(requested_wait(&h, 0), Some(Duration::from_secs(2)), "Retry-After wins");
    }

    #[test]
    fn hostile_header_values_are_capped_or_ignored_never_a_panic() {
        let now_ms = 1_700_000_000_000;
        let six_hours = Some(MAX_RETRY_AFTER);
        let cases: &[(&str, &str, Option<Duration>)] = &[
            ("x-ratelimit-reset", "1e20", six_hours),
            ("x-ratelimit-reset", "1e308", six_hours),
            ("x-ratelimit-reset", "1.7976931348623157e308", six_hours),
            ("x-ratelimit-reset", "inf", None),
            ("x-ratelimit-reset", "NaN", None),
            ("x-ratelimit-reset", "-5", None),
            ("x-ratelimit-reset", "31536000", six_hours),
            ("x-ratelimit-reset", "0.5", Some(Duration::from_millis(500))),
            ("x-ratelimit-reset", "1e-320", Some(Duration::ZERO)),
            ("ratelimit-reset", "99999999999999999999999999", six_hours),
            ("retry-after", "18446744073709551615", six_hours),
            ("retry-after", "99999999999999999999999999999999", six_hours),
            ("retry-after", "31536000", six_hours),
            ("retry-after", "-1", None),
            ("retry-after", "", None),
            ("retry-after", "Fri, 31 Dec 9999 23:59:59 GMT", six_hours),
            ("retry-after", "Thu, 01 Jan 1970 00:00:00 GMT", Some(Duration::ZERO)),
        ];
        for (name, value, want) in cases {
            let mut h = reqwest::header::HeaderMap::new();
            h.insert(*name, value.parse().unwrap());
            assert_eq!(requested_wait(&h, now_ms), *want, "{name}: {value}");
            for now in [i64::MIN, -1, 0, i64::MAX] {
                assert!(requested_wait(&h, now).is_none_or(|d| d <= MAX_RETRY_AFTER), "{name}: {value} at {now}");
            }
        }
        let mut h = reqwest::header::HeaderMap::new();
        h.insert("retry-after", reqwest::header::HeaderValue::from_bytes(b"\xff\xfe").unwrap());
        assert_eq!(requested_wait(&h, now_ms), None, "not UTF-8");
    }

    proptest::proptest! {
        #[test]
        fn any_header_value_gives_at_most_six_hours(value in "\\PC{0,40}", now_ms in proptest::num::i64::ANY) {
            for name in ["retry-after", "x-ratelimit-reset", "ratelimit-reset", "x-sib-ratelimit-reset"] {
                let Ok(v) = reqwest::header::HeaderValue::from_str(&value) else { continue };
                let mut h = reqwest::header::HeaderMap::new();
                h.insert(name, v);
                proptest::prop_assert!(requested_wait(&h, now_ms).is_none_or(|d| d <= MAX_RETRY_AFTER));
            }
        }
    }
}
