//! What an attempt's outcome means for its event: delivered, retried later,
//! or failed for good; and when the retry is due.

use std::time::{Duration, SystemTime};

use crate::definition::{Backoff, RetryConf};

/// Exponential backoff spreads each wait by up to this fraction either
/// way, so that events that failed together do not retry together.
pub const JITTER: f64 = 0.2;

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
    /// `410 Gone`: the webhook says it is gone for good. The trigger is
    /// paused and the event stays pending, its attempt not spent.
    Gone,
    /// Failed while the trigger's endpoint is down (see
    /// [`is_endpoint_failure`]): the event waits for the endpoint, its
    /// attempt not spent.
    Held,
}

/// Whether an attempt's outcome says the endpoint itself is in trouble: no
/// answer (refused, timed out, TLS), a 5xx or a 429. Another answer, even a
/// 4xx, shows the endpoint is up.
pub fn is_endpoint_failure(status: Option<u16>) -> bool {
    matches!(status, None | Some(429) | Some(500..=599))
}

/// The status that pauses a trigger instead of failing its event.
pub const GONE: u16 = 410;

/// Success is a 2xx status and nothing else: a 3xx is not followed, so it is
/// a failure like any 4xx or 5xx, and no response at all is a failure too.
pub fn is_success(status: Option<u16>) -> bool {
    matches!(status, Some(200..=299))
}

/// Classifies an attempt. `tries_before` is how many attempts the event had
/// before this one; an event gets `num_retries + 1` attempts in all.
/// `Retry-After` changes the delay, never the number of attempts. `random`
/// is uniform in [0, 1): the jitter of exponential backoff.
pub fn classify(
    status: Option<u16>,
    retry_after: Option<Duration>,
    tries_before: i32,
    conf: &RetryConf,
    random: f64,
) -> Verdict {
    if is_success(status) {
        return Verdict::Delivered;
    }
    if status == Some(GONE) {
        return Verdict::Gone;
    }
    if tries_before.saturating_add(1) > conf.num_retries {
        return Verdict::Failed;
    }
    Verdict::Retry(retry_after.unwrap_or_else(|| delay(conf, tries_before.saturating_add(1), random)))
}

/// The wait before retry `n` (1-based): `interval_sec` with fixed backoff;
/// with exponential backoff `min(max_interval_sec, interval_sec * 2^(n-1))`
/// spread by +/-[`JITTER`] (`random` uniform in [0, 1)).
pub fn delay(conf: &RetryConf, n: i32, random: f64) -> Duration {
    let interval = conf.interval_sec.max(0) as f64;
    match conf.backoff {
        Backoff::Fixed => Duration::from_secs_f64(interval),
        Backoff::Exponential => {
            let grown = interval * 2f64.powi((n.max(1) - 1).min(62));
            let capped = grown.min(conf.max_interval_sec.max(1) as f64);
            let spread = 1.0 + JITTER * (2.0 * random.clamp(0.0, 1.0) - 1.0);
            Duration::from_secs_f64(capped * spread)
        }
    }
}

/// A uniform random number in [0, 1) from the operating system, for
/// [`classify`]'s jitter; 0.5 (no spread) if it cannot be had.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    match getrandom::getrandom(&mut bytes) {
        Ok(()) => (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64,
        Err(_) => 0.5,
    }
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

    const CONF: RetryConf = RetryConf {
        num_retries: 2,
        interval_sec: 10,
        timeout_sec: 60,
        backoff: Backoff::Fixed,
        max_interval_sec: 3600,
    };

    fn classify(status: Option<u16>, retry_after: Option<Duration>, tries_before: i32, conf: &RetryConf) -> Verdict {
        super::classify(status, retry_after, tries_before, conf, 0.5)
    }

    #[test]
    fn fixed_backoff_waits_the_interval_every_time() {
        for n in 1..10 {
            for r in [0.0, 0.5, 0.999] {
                assert_eq!(delay(&CONF, n, r), Duration::from_secs(10));
            }
        }
    }

    #[test]
    fn exponential_backoff_doubles_up_to_the_cap_with_jitter() {
        let conf =
            RetryConf { backoff: Backoff::Exponential, interval_sec: 2, max_interval_sec: 60, num_retries: 20, ..CONF };
        let secs = |n, r| delay(&conf, n, r).as_secs_f64();
        assert_eq!([1, 2, 3, 4, 5, 6, 7, 30].map(|n| secs(n, 0.5)), [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0, 60.0]);
        // +/-20% at the extremes of the random number.
        assert!((secs(3, 0.0) - 6.4).abs() < 1e-9);
        assert!((secs(3, 0.999_999) - 9.6).abs() < 1e-4);
        assert!((secs(30, 0.0) - 48.0).abs() < 1e-9);
        // No overflow for absurd attempt numbers.
        assert_eq!(secs(i32::MAX, 0.5), 60.0);
        // A random number out of range is clamped, not trusted.
        assert!((secs(1, 7.0) - 2.4).abs() < 1e-9);
        // Retry-After still wins.
        assert_eq!(
            super::classify(Some(503), Some(Duration::from_secs(3)), 4, &conf, 0.0),
            Verdict::Retry(Duration::from_secs(3))
        );
        assert_eq!(super::classify(Some(503), None, 4, &conf, 0.5), Verdict::Retry(Duration::from_secs(32)));
    }

    #[test]
    fn random_units_are_in_range_and_vary() {
        let xs: Vec<f64> = (0..100).map(|_| random_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        assert!(xs.iter().any(|x| *x != xs[0]));
    }

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
    fn endpoint_failures_are_silence_5xx_and_429() {
        for s in [None, Some(429), Some(500), Some(502), Some(503), Some(599)] {
            assert!(is_endpoint_failure(s), "{s:?}");
        }
        for s in [Some(200), Some(204), Some(301), Some(400), Some(404), Some(410), Some(422), Some(600)] {
            assert!(!is_endpoint_failure(s), "{s:?}");
        }
    }

    #[test]
    fn gone_pauses_on_any_attempt_and_other_statuses_are_retried() {
        for tries in [0, 1, 2, 5] {
            assert_eq!(classify(Some(410), None, tries, &CONF), Verdict::Gone);
        }
        for s in [301, 400, 401, 403, 404, 409, 422, 429, 500, 502, 503] {
            assert_eq!(classify(Some(s), None, 0, &CONF), Verdict::Retry(Duration::from_secs(10)), "{s}");
        }
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
