//! What an attempt's outcome means for its event: delivered, retried later,
//! or failed for good; and when the retry is due.

use std::time::{Duration, SystemTime};

use crate::definition::RetryConf;

/// The longest delay a `Retry-After` header may ask for. Longer values are
/// cut to this so that a confused webhook cannot park events for years.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A 2xx: the event is delivered.
    Delivered,
    /// Failed, and attempts remain: try again after this delay.
    Retry(Duration),
    /// Failed on the last attempt: the event is marked error.
    Failed,
}

/// Success is a 2xx status and nothing else: a 3xx is not followed, so it is
/// a failure like any 4xx or 5xx, and no response at all is a failure too.
pub fn is_success(status: Option<u16>) -> bool {
    matches!(status, Some(200..=299))
}

/// Classifies an attempt. `tries_before` is how many attempts the event had
/// before this one; an event gets `num_retries + 1` attempts in all.
/// `Retry-After` changes the delay, never the number of attempts.
pub fn classify(status: Option<u16>, retry_after: Option<Duration>, tries_before: i32, conf: &RetryConf) -> Verdict {
    if is_success(status) {
        return Verdict::Delivered;
    }
    if tries_before.saturating_add(1) > conf.num_retries {
        return Verdict::Failed;
    }
    let interval = Duration::from_secs(conf.interval_sec.max(0) as u64);
    Verdict::Retry(retry_after.unwrap_or(interval))
}

/// Parses a `Retry-After` value: delay-seconds or an HTTP date. Negative,
/// malformed or past values give `None` (the configured interval applies),
/// except that a date in the past means "now". Values above
/// [`MAX_RETRY_AFTER`] are cut to it.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        let secs: u64 = v.parse().unwrap_or(u64::MAX);
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO).min(MAX_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONF: RetryConf = RetryConf { num_retries: 2, interval_sec: 10, timeout_sec: 60 };

    #[test]
    fn only_2xx_is_success() {
        for s in [200, 201, 204, 299] {
            assert!(is_success(Some(s)));
        }
        for s in [100, 199, 300, 301, 302, 304, 307, 400, 404, 429, 500, 503] {
            assert!(!is_success(Some(s)), "{s}");
        }
        assert!(!is_success(None));
    }

    #[test]
    fn attempts_are_num_retries_plus_one() {
        assert_eq!(classify(Some(500), None, 0, &CONF), Verdict::Retry(Duration::from_secs(10)));
        assert_eq!(classify(Some(500), None, 1, &CONF), Verdict::Retry(Duration::from_secs(10)));
        assert_eq!(classify(Some(500), None, 2, &CONF), Verdict::Failed);
        assert_eq!(classify(None, None, 2, &CONF), Verdict::Failed);
        assert_eq!(classify(Some(200), None, 2, &CONF), Verdict::Delivered);
        let no_retries = RetryConf { num_retries: 0, ..CONF };
        assert_eq!(classify(Some(503), Some(Duration::from_secs(1)), 0, &no_retries), Verdict::Failed);
    }

    #[test]
    fn retry_after_changes_the_delay_not_the_count() {
        assert_eq!(classify(Some(429), Some(Duration::from_secs(3)), 0, &CONF), Verdict::Retry(Duration::from_secs(3)));
        assert_eq!(classify(Some(429), Some(Duration::from_secs(3)), 2, &CONF), Verdict::Failed);
    }

    #[test]
    fn retry_after_forms() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:47 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO),
            "a past date means now"
        );
        assert_eq!(parse_retry_after("99999999999999999999999", now), Some(MAX_RETRY_AFTER), "huge values are capped");
        let far = httpdate::fmt_http_date(now + Duration::from_secs(100 * 365 * 86400));
        assert_eq!(parse_retry_after(&far, now), Some(MAX_RETRY_AFTER));
        for garbage in ["-5", "1.5", "soon", "", "12abc"] {
            assert_eq!(parse_retry_after(garbage, now), None, "{garbage:?}");
        }
    }
}
