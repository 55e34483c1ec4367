//! How the worker reads receivers' answers and spaces its retries: pure functions.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::config::{Format, NotifyConfig};

/// Longest pause a receiver's `Retry-After` can impose.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How long a robot that reports "too fast" is left alone.
pub(super) fn robot_throttle() -> chrono::Duration {
    chrono::Duration::seconds(60)
}

/// `t + d`, or the end of time rather than a panic: every number that reaches here comes from
/// configuration or from a receiver.
pub(super) fn later(t: DateTime<Utc>, d: chrono::Duration) -> DateTime<Utc> {
    t.checked_add_signed(d).unwrap_or(DateTime::<Utc>::MAX_UTC)
}

/// Exponential backoff with full jitter: uniform in [0, min(cap, initial · 2^(n-1))].
pub(super) fn backoff(cfg: &NotifyConfig, attempt: i32) -> chrono::Duration {
    let exp = cfg
        .retry_initial_secs
        .saturating_mul(1u64 << attempt.saturating_sub(1).clamp(0, 30))
        .min(cfg.retry_max_interval_secs);
    let ms = exp.saturating_mul(1000) as f64 * unit_random();
    // `as` saturates; the bound is far below chrono's range.
    chrono::Duration::milliseconds((ms as i64).min(MAX_BACKOFF_MS))
}

/// A backoff longer than a year would outlive any `max_retry_hours` worth having.
const MAX_BACKOFF_MS: i64 = 366 * 24 * 3600 * 1000;

/// A uniform number in [0, 1) from the operating system's randomness.
fn unit_random() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

/// `Retry-After` as seconds or as an HTTP date, clamped to [0, a day]. Any number of digits is
/// read without overflow: `10000000000000000` seconds once panicked in chrono and stopped every
/// delivery loop.
pub(super) fn parse_retry_after(v: &str, now: DateTime<Utc>) -> Option<chrono::Duration> {
    let v = v.trim();
    let max = MAX_RETRY_AFTER.as_secs();
    let wait = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // Too many digits for a u64 is still "longer than the clamp".
        let s = v.parse::<u64>().unwrap_or(u64::MAX).min(max);
        chrono::Duration::seconds(s as i64)
    } else {
        // Both ends lie in chrono's range of dates, whose differences always fit.
        let at = DateTime::parse_from_rfc2822(v).ok()?.with_timezone(&Utc);
        at.signed_duration_since(now)
    };
    Some(wait.clamp(
        chrono::Duration::zero(),
        chrono::Duration::seconds(max as i64),
    ))
}

/// Chat robots answer 200 with an error code in the body; `(message, rate_limited)`.
pub(super) fn robot_error(format: Format, body: &[u8]) -> Option<(String, bool)> {
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    let (code, msg) = match format {
        Format::DingTalk | Format::WeCom => (v.get("errcode")?.as_i64()?, v.get("errmsg")),
        Format::Feishu => (
            v.get("code").or_else(|| v.get("StatusCode"))?.as_i64()?,
            v.get("msg").or_else(|| v.get("StatusMessage")),
        ),
        Format::Generic | Format::Slack => return None,
    };
    if code == 0 {
        return None;
    }
    // DingTalk 130101 "send too fast", WeCom 45009 "api freq out of limit", Feishu 11232.
    let throttled = matches!(code, 130101 | 45009 | 11232);
    let msg = msg.and_then(|m| m.as_str()).unwrap_or("");
    Some((format!("robot error {code}: {msg}"), throttled))
}

/// The error and its causes, without the URL (which may hold a robot's token).
pub(super) fn error_chain(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut s = e.to_string();
    let mut cur = std::error::Error::source(&e);
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn retry_after_as_seconds_or_date() {
        let now = Utc.with_ymd_and_hms(2015, 10, 21, 7, 28, 0).unwrap();
        assert_eq!(parse_retry_after("120", now), Some(secs(120)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(chrono::Duration::zero())
        );
        assert_eq!(parse_retry_after("99999999", now), Some(secs(24 * 3600)));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn retry_after_from_a_hostile_receiver_is_clamped_not_a_panic() {
        let now = Utc::now();
        let day = Some(secs(24 * 3600));
        for v in [
            "10000000000000000",
            "9223372036854775807",
            "18446744073709551615",
            "999999999999999999999999999999",
            " 10000000000000000 ",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Fri, 31 Dec 99999 23:59:59 GMT",
        ] {
            let got = parse_retry_after(v, now);
            assert!(got.is_none() || got == day, "{v}: {got:?}");
        }
        assert_eq!(parse_retry_after("10000000000000000", now), day);
        for v in ["-5", "1e9", "", "0x10", "Mon, 01 Jan 0001 00:00:00 GMT"] {
            let got = parse_retry_after(v, now);
            assert!(
                got.is_none() || got == Some(chrono::Duration::zero()),
                "{v}: {got:?}"
            );
        }
    }

    #[test]
    fn extreme_configuration_saturates() {
        let cfg = NotifyConfig {
            retry_initial_secs: u64::MAX / 2,
            retry_max_interval_secs: u64::MAX,
            ..NotifyConfig::default()
        };
        for attempt in [i32::MIN, -1, 0, 1, 2, 64, i32::MAX] {
            let d = backoff(&cfg, attempt);
            assert!(d >= chrono::Duration::zero(), "{attempt}: {d}");
            let _ = later(Utc::now(), d);
        }
        assert_eq!(
            later(Utc::now(), chrono::Duration::MAX),
            DateTime::<Utc>::MAX_UTC
        );
    }

    fn secs(s: i64) -> chrono::Duration {
        chrono::Duration::seconds(s)
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let cfg = NotifyConfig::default();
        for attempt in 1..40 {
            let cap = (5u64 << (attempt - 1).min(30)).clamp(1, 3600) as i64;
            let d = backoff(&cfg, attempt);
            assert!(
                d >= chrono::Duration::zero() && d <= secs(cap),
                "{attempt}: {d}"
            );
        }
        // Full jitter starts at zero: a fifth of the first retries come within a second.
        let soon = (0..200).filter(|_| backoff(&cfg, 1) < secs(1)).count();
        assert!(soon > 0, "no first retry within a second in 200 draws");
        let draws: std::collections::HashSet<i64> = (0..20)
            .map(|_| backoff(&cfg, 12).num_milliseconds())
            .collect();
        assert!(draws.len() > 10, "no jitter: {draws:?}");
    }

    #[test]
    fn robot_body_errors() {
        assert_eq!(
            robot_error(Format::DingTalk, br#"{"errcode":0,"errmsg":"ok"}"#),
            None
        );
        assert_eq!(
            robot_error(
                Format::DingTalk,
                br#"{"errcode":130101,"errmsg":"send too fast"}"#
            ),
            Some(("robot error 130101: send too fast".into(), true))
        );
        assert_eq!(
            robot_error(Format::Feishu, br#"{"code":19021,"msg":"sign match fail"}"#),
            Some(("robot error 19021: sign match fail".into(), false))
        );
        assert_eq!(robot_error(Format::Slack, b"ok"), None);
    }
}
