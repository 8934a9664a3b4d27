//! What a failed upstream attempt means: the error the client would see, and whether (and
//! when) another attempt may follow. Pure, so the policy is tested without a network.

use std::time::{Duration, SystemTime};

use actix_web::http::header::{HeaderMap, HttpDate};

use crate::domain::Backoff;
use crate::error::AppError;

/// Exponential backoff stops growing here; a longer pause would rarely fit a reply deadline.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// What a client is told to wait after an upstream 429 that gave no hint: every HTTP 429
/// carries a `Retry-After`.
const RATE_LIMITED_HINT: Duration = Duration::from_secs(1);

/// Whether a failed attempt may be tried again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    No,
    /// Transient (connect error, 5xx, 429 without a hint): back off exponentially.
    Backoff,
    /// The upstream said when (`Retry-After`).
    After(Duration),
}

#[derive(Debug)]
pub struct AttemptFailure {
    pub error: AppError,
    pub retry: Retry,
    /// For the log line: what went wrong, never shown to clients.
    pub reason: String,
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub max_retry_after: Duration,
}

impl RetryPolicy {
    /// The pause before the next attempt after attempt number `failed` (1-based) failed, or
    /// `None` to give up. `jitter` is uniform in [0, 1): backoff uses half to all of its step
    /// so retries of many replies spread out; a `Retry-After` is waited out plus up to 10 %.
    pub fn delay(&self, failed: u32, retry: Retry, jitter: f64) -> Option<Duration> {
        if failed >= self.max_attempts {
            return None;
        }
        let jitter = jitter.clamp(0.0, 1.0);
        match retry {
            Retry::No => None,
            Retry::Backoff => Backoff {
                base: self.base,
                cap: MAX_BACKOFF,
                max_retries: self.max_attempts.saturating_sub(1),
            }
            .delay_with_jitter(failed.saturating_sub(1), jitter),
            Retry::After(wait) if wait > self.max_retry_after => None,
            Retry::After(wait) => Some(wait + wait.mul_f64(jitter / 10.0)),
        }
    }
}

/// The upstream's wait hint: `retry-after-ms` (OpenAI's finer one) or `Retry-After` in
/// seconds or as an HTTP date.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(ms) = text("retry-after-ms").and_then(parse_non_negative) {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    let value = text("retry-after")?.trim();
    if let Some(secs) = parse_non_negative(value) {
        return Some(Duration::from_secs_f64(secs));
    }
    let date: SystemTime = value.parse::<HttpDate>().ok()?.into();
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Bounded so a hostile header cannot overflow `Duration`.
fn parse_non_negative(value: &str) -> Option<f64> {
    value
        .trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0 && *v < 1e9)
}

/// A non-2xx answer. `body` is the start of the error body, used only to recognise an
/// unknown model (OpenAI, vLLM, Ollama and others each word it differently).
pub fn classify_status(
    status: u16,
    body: &str,
    retry_after: Option<Duration>,
    upstream_model: &str,
) -> AttemptFailure {
    let reason = format!("http_status={status}");
    let (error, retry) = match status {
        429 => (
            AppError::UpstreamRateLimited {
                message: "the model's upstream is rate limiting chatgate; try again later".into(),
                retry_after: Some(retry_after.unwrap_or(RATE_LIMITED_HINT)),
            },
            retry_after.map_or(Retry::Backoff, Retry::After),
        ),
        500..=599 => (
            AppError::UpstreamError(format!("the model's upstream failed (HTTP {status})")),
            Retry::Backoff,
        ),
        400 | 404 if names_unknown_model(body) => (
            AppError::UnsupportedModel(format!(
                "the upstream does not serve model {upstream_model:?}"
            )),
            Retry::No,
        ),
        401 | 403 => (
            AppError::UpstreamError(format!(
                "the model's upstream refused chatgate's credentials (HTTP {status})"
            )),
            Retry::No,
        ),
        _ => (
            AppError::UpstreamError(format!(
                "the model's upstream rejected the request (HTTP {status})"
            )),
            Retry::No,
        ),
    };
    AttemptFailure {
        error,
        retry,
        reason,
    }
}

fn names_unknown_model(body: &str) -> bool {
    let body = body.to_lowercase();
    body.contains("model_not_found")
        || (body.contains("model")
            && [
                "not found",
                "does not exist",
                "unknown model",
                "no such model",
            ]
            .iter()
            .any(|phrase| body.contains(phrase)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use actix_web::http::header::{HeaderName, HeaderValue};

    fn policy() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            base: Duration::from_millis(100),
            max_retry_after: Duration::from_secs(5),
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_attempt_limit() {
        let p = policy();
        assert_eq!(
            p.delay(1, Retry::Backoff, 0.0),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            p.delay(2, Retry::Backoff, 0.999_999).map(|d| d.as_millis()),
            Some(199)
        );
        assert_eq!(
            p.delay(3, Retry::Backoff, 0.5),
            Some(Duration::from_millis(300))
        );
        assert_eq!(p.delay(4, Retry::Backoff, 0.0), None);
        assert_eq!(p.delay(1, Retry::No, 0.0), None);
    }

    #[test]
    fn backoff_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            base: Duration::from_secs(5),
            ..policy()
        };
        assert_eq!(
            p.delay(9, Retry::Backoff, 0.999),
            Some(MAX_BACKOFF.mul_f64(0.9995))
        );
    }

    #[test]
    fn retry_after_is_honoured_up_to_the_cap() {
        let p = policy();
        assert_eq!(
            p.delay(1, Retry::After(Duration::from_secs(1)), 0.0),
            Some(Duration::from_secs(1))
        );
        let jittered = p
            .delay(1, Retry::After(Duration::from_secs(1)), 0.5)
            .expect("retry");
        assert!(jittered >= Duration::from_secs(1) && jittered <= Duration::from_millis(1100));
        assert_eq!(p.delay(1, Retry::After(Duration::from_secs(6)), 0.0), None);
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                HeaderName::from_static(name),
                HeaderValue::from_static(value),
            );
        }
        map
    }

    #[test]
    fn retry_after_reads_seconds_dates_and_milliseconds() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(
            retry_after(&headers(&[("retry-after", "2")]), now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(
            retry_after(
                &headers(&[("retry-after", "1"), ("retry-after-ms", "250")]),
                now
            ),
            Some(Duration::from_millis(250))
        );
        let date: String = HttpDate::from(now + Duration::from_secs(30)).to_string();
        let mut map = HeaderMap::new();
        map.insert(
            HeaderName::from_static("retry-after"),
            HeaderValue::from_str(&date).expect("ascii"),
        );
        assert_eq!(retry_after(&map, now), Some(Duration::from_secs(30)));
        for bad in ["soon", "-1", "NaN", "1e300"] {
            let mut map = HeaderMap::new();
            map.insert(
                HeaderName::from_static("retry-after"),
                HeaderValue::from_static(bad),
            );
            assert_eq!(retry_after(&map, now), None, "{bad}");
        }
        assert_eq!(retry_after(&HeaderMap::new(), now), None);
    }

    #[test]
    fn statuses_map_to_contract_codes_and_retry_classes() {
        let cases: [(u16, &str, ErrorCode, Retry); 7] = [
            (429, "", ErrorCode::UpstreamRateLimited, Retry::Backoff),
            (500, "", ErrorCode::UpstreamError, Retry::Backoff),
            (503, "", ErrorCode::UpstreamError, Retry::Backoff),
            (
                404,
                r#"{"error":{"message":"The model `x` does not exist","code":"model_not_found"}}"#,
                ErrorCode::UnsupportedModel,
                Retry::No,
            ),
            (
                400,
                r#"{"error":{"message":"model \"x\" not found, try pulling it first"}}"#,
                ErrorCode::UnsupportedModel,
                Retry::No,
            ),
            (
                400,
                r#"{"error":"bad temperature"}"#,
                ErrorCode::UpstreamError,
                Retry::No,
            ),
            (
                401,
                "invalid api key sk-123",
                ErrorCode::UpstreamError,
                Retry::No,
            ),
        ];
        for (status, body, code, retry) in cases {
            let failure = classify_status(status, body, None, "x");
            if code == ErrorCode::UpstreamRateLimited {
                assert_eq!(failure.error.retry_after(), Some(RATE_LIMITED_HINT));
            }
            assert_eq!(failure.error.code(), code, "{status} {body}");
            assert_eq!(failure.retry, retry, "{status} {body}");
            assert!(!failure.error.client_message().contains("sk-123"));
        }
        let limited = classify_status(429, "", Some(Duration::from_secs(1)), "x");
        assert_eq!(limited.retry, Retry::After(Duration::from_secs(1)));
        assert_eq!(limited.error.retry_after(), Some(Duration::from_secs(1)));
    }
}
