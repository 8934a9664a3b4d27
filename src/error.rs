//! One error type for everything a client can be told, grouped by what the client should do
//! next. Each variant maps to exactly one CONTRACT.md code and HTTP status; the same code is
//! used in WebSocket `error` frames. Internal causes are logged, never serialized.

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{HttpResponse, ResponseError};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The stable, machine-readable error codes of CONTRACT.md.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    UnsupportedModel,
    PreconditionFailed,
    TooLarge,
    RateLimited,
    QuotaExceeded,
    UpstreamRateLimited,
    UpstreamTimeout,
    UpstreamError,
    Unavailable,
    AlreadyRunning,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 16] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::UnsupportedModel,
        ErrorCode::PreconditionFailed,
        ErrorCode::TooLarge,
        ErrorCode::RateLimited,
        ErrorCode::QuotaExceeded,
        ErrorCode::UpstreamRateLimited,
        ErrorCode::UpstreamTimeout,
        ErrorCode::UpstreamError,
        ErrorCode::Unavailable,
        ErrorCode::AlreadyRunning,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::UnsupportedModel => "unsupported_model",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::UpstreamRateLimited => "upstream_rate_limited",
            ErrorCode::UpstreamTimeout => "upstream_timeout",
            ErrorCode::UpstreamError => "upstream_error",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::AlreadyRunning => "already_running",
            ErrorCode::Internal => "internal",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::BadRequest | ErrorCode::UnsupportedModel => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RateLimited | ErrorCode::QuotaExceeded | ErrorCode::UpstreamRateLimited => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::UpstreamError => StatusCode::BAD_GATEWAY,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::AlreadyRunning => StatusCode::CONFLICT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// A known path asked with a method it does not serve; `allow` lists those it does.
    #[error("{message}")]
    MethodNotAllowed { message: String, allow: String },
    #[error("{0}")]
    UnsupportedModel(String),
    #[error("{0}")]
    PreconditionFailed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: Duration,
    },
    #[error("{message}")]
    QuotaExceeded {
        message: String,
        retry_after: Duration,
    },
    #[error("{message}")]
    UpstreamRateLimited {
        message: String,
        retry_after: Option<Duration>,
    },
    #[error("{0}")]
    UpstreamTimeout(String),
    #[error("{0}")]
    UpstreamError(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{message}")]
    AlreadyRunning { message: String, run_id: String },
    /// The cause is for the log only; the client sees a fixed text.
    #[error("internal error: {0}")]
    Internal(String),
}

/// The JSON body of every HTTP error: `{"error":{"code","message"}}` (plus `run_id` for
/// `already_running`).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: ErrorCode,
    /// Safe, human-readable text; never an internal cause.
    pub message: String,
    /// Only on `already_running`: the run that holds the collector lease.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub run_id: Option<String>,
}

const INTERNAL_MESSAGE: &str = "internal error; the server log has the details";

impl AppError {
    pub fn internal(cause: impl std::fmt::Display) -> AppError {
        AppError::Internal(cause.to_string())
    }

    pub fn unavailable_mailbox(actor: &str, err: actix::MailboxError) -> AppError {
        log::warn!("event=mailbox_error actor={actor} error={err}");
        AppError::Unavailable(format!("{actor} is not accepting work; try again"))
    }

    pub fn code(&self) -> ErrorCode {
        match self {
            AppError::BadRequest(_) => ErrorCode::BadRequest,
            AppError::Unauthorized(_) => ErrorCode::Unauthorized,
            AppError::Forbidden(_) => ErrorCode::Forbidden,
            AppError::NotFound(_) => ErrorCode::NotFound,
            AppError::MethodNotAllowed { .. } => ErrorCode::MethodNotAllowed,
            AppError::UnsupportedModel(_) => ErrorCode::UnsupportedModel,
            AppError::PreconditionFailed(_) => ErrorCode::PreconditionFailed,
            AppError::TooLarge(_) => ErrorCode::TooLarge,
            AppError::RateLimited { .. } => ErrorCode::RateLimited,
            AppError::QuotaExceeded { .. } => ErrorCode::QuotaExceeded,
            AppError::UpstreamRateLimited { .. } => ErrorCode::UpstreamRateLimited,
            AppError::UpstreamTimeout(_) => ErrorCode::UpstreamTimeout,
            AppError::UpstreamError(_) => ErrorCode::UpstreamError,
            AppError::Unavailable(_) => ErrorCode::Unavailable,
            AppError::AlreadyRunning { .. } => ErrorCode::AlreadyRunning,
            AppError::Internal(_) => ErrorCode::Internal,
        }
    }

    /// How long the client should wait before trying again, where waiting helps.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            AppError::RateLimited { retry_after, .. }
            | AppError::QuotaExceeded { retry_after, .. } => Some(*retry_after),
            AppError::UpstreamRateLimited { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// The text a client may see: internal causes are replaced by a fixed message.
    pub fn client_message(&self) -> String {
        match self {
            AppError::Internal(_) => INTERNAL_MESSAGE.to_string(),
            other => other.to_string(),
        }
    }

    pub fn body(&self) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.client_message(),
                run_id: match self {
                    AppError::AlreadyRunning { run_id, .. } => Some(run_id.clone()),
                    _ => None,
                },
            },
        }
    }
}

/// `Retry-After` is whole seconds and at least 1, rounded up so a client that obeys it is
/// never refused again for waiting too little.
pub fn retry_after_header_secs(retry_after: Duration) -> u64 {
    let millis = retry_after.as_millis() as u64;
    millis.div_ceil(1000).max(1)
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        self.code().status()
    }

    fn error_response(&self) -> HttpResponse {
        if let AppError::Internal(cause) = self {
            log::error!("event=internal_error cause={cause:?}");
        }
        let mut builder = HttpResponse::build(self.status_code());
        if let Some(retry_after) = self.retry_after() {
            builder.insert_header((
                header::RETRY_AFTER,
                retry_after_header_secs(retry_after).to_string(),
            ));
        }
        if let AppError::MethodNotAllowed { allow, .. } = self {
            builder.insert_header((header::ALLOW, allow.as_str()));
        }
        builder.json(self.body())
    }
}

impl From<actix::MailboxError> for AppError {
    fn from(err: actix::MailboxError) -> AppError {
        AppError::unavailable_mailbox("actor", err)
    }
}

/// Refusals any admin route can answer with.
#[derive(utoipa::IntoResponses)]
pub enum AdminRefusals {
    /// `unauthorized`: no token, or an invalid or expired one.
    #[response(status = 401)]
    Unauthorized(ErrorBody),
    /// `forbidden`: the token's role is not `admin`.
    #[response(status = 403)]
    Forbidden(ErrorBody),
    /// `rate_limited`: this admin's request budget (`CHATGATE_ADMIN_RATE_LIMIT` per window) is
    /// spent, or too many failed token attempts came from this address.
    #[response(
        status = 429,
        headers(("Retry-After" = u64, description = "Seconds to wait, at least 1"))
    )]
    RateLimited(ErrorBody),
    /// `internal`: the server log has the details.
    #[response(status = 500)]
    Internal(ErrorBody),
    /// `unavailable`: the database or an internal actor is not answering; try again.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    fn sample(code: ErrorCode) -> AppError {
        let msg = "m".to_string();
        match code {
            ErrorCode::BadRequest => AppError::BadRequest(msg),
            ErrorCode::Unauthorized => AppError::Unauthorized(msg),
            ErrorCode::Forbidden => AppError::Forbidden(msg),
            ErrorCode::NotFound => AppError::NotFound(msg),
            ErrorCode::MethodNotAllowed => AppError::MethodNotAllowed {
                message: msg,
                allow: "GET".into(),
            },
            ErrorCode::UnsupportedModel => AppError::UnsupportedModel(msg),
            ErrorCode::PreconditionFailed => AppError::PreconditionFailed(msg),
            ErrorCode::TooLarge => AppError::TooLarge(msg),
            ErrorCode::RateLimited => AppError::RateLimited {
                message: msg,
                retry_after: Duration::from_millis(1500),
            },
            ErrorCode::QuotaExceeded => AppError::QuotaExceeded {
                message: msg,
                retry_after: Duration::from_secs(3600),
            },
            ErrorCode::UpstreamRateLimited => AppError::UpstreamRateLimited {
                message: msg,
                retry_after: None,
            },
            ErrorCode::UpstreamTimeout => AppError::UpstreamTimeout(msg),
            ErrorCode::UpstreamError => AppError::UpstreamError(msg),
            ErrorCode::Unavailable => AppError::Unavailable(msg),
            ErrorCode::AlreadyRunning => AppError::AlreadyRunning {
                message: msg,
                run_id: "r1".into(),
            },
            ErrorCode::Internal => AppError::Internal("db exploded: password=hunter2".into()),
        }
    }

    #[actix_web::test]
    async fn every_variant_maps_to_its_contract_status_and_body() {
        let expected: [(ErrorCode, u16); 16] = [
            (ErrorCode::BadRequest, 400),
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::NotFound, 404),
            (ErrorCode::MethodNotAllowed, 405),
            (ErrorCode::UnsupportedModel, 400),
            (ErrorCode::PreconditionFailed, 412),
            (ErrorCode::TooLarge, 413),
            (ErrorCode::RateLimited, 429),
            (ErrorCode::QuotaExceeded, 429),
            (ErrorCode::UpstreamRateLimited, 429),
            (ErrorCode::UpstreamTimeout, 504),
            (ErrorCode::UpstreamError, 502),
            (ErrorCode::Unavailable, 503),
            (ErrorCode::AlreadyRunning, 409),
            (ErrorCode::Internal, 500),
        ];
        for (code, status) in expected {
            let err = sample(code);
            let response = err.error_response();
            assert_eq!(response.status().as_u16(), status, "{code}");
            let bytes = to_bytes(response.into_body()).await.expect("body");
            let json: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
            assert_eq!(json["error"]["code"], code.as_str(), "{code}");
            assert!(json["error"]["message"].is_string());
        }
    }

    #[actix_web::test]
    async fn internal_cause_never_reaches_the_client() {
        let response = sample(ErrorCode::Internal).error_response();
        let bytes = to_bytes(response.into_body()).await.expect("body");
        let text = String::from_utf8_lossy(&bytes);
        assert!(!text.contains("hunter2"), "{text}");
    }

    #[test]
    fn rate_limited_carries_retry_after_rounded_up_to_whole_seconds() {
        let response = sample(ErrorCode::RateLimited).error_response();
        let header = response.headers().get(header::RETRY_AFTER).expect("header");
        assert_eq!(header.to_str().expect("ascii"), "2");
        assert_eq!(retry_after_header_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_header_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_header_secs(Duration::from_secs(3)), 3);
    }

    #[test]
    fn already_running_body_names_the_run() {
        let body = sample(ErrorCode::AlreadyRunning).body();
        assert_eq!(body.error.run_id.as_deref(), Some("r1"));
    }

    #[test]
    fn code_serializes_as_snake_case() {
        for code in ErrorCode::ALL {
            let json = serde_json::to_string(&code).expect("serialize");
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}
