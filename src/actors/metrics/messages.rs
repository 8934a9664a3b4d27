use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use super::state::{MetricsParts, MetricsSnapshot};
use crate::db::models::RequestRow;
use crate::domain::{SessionId, UserId};
use crate::error::ErrorCode;

/// How an admitted request ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Cancelled,
    Error(ErrorCode),
}

impl Outcome {
    pub fn as_str(&self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Cancelled => "cancelled",
            Outcome::Error(code) => code.as_str(),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Outcome::Error(_))
    }
}

/// One admitted chat, whatever its end. Produced exactly once per admitted chat.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct RecordRequest {
    pub id: uuid::Uuid,
    pub user: UserId,
    pub session: Option<SessionId>,
    pub model: Arc<str>,
    pub started_at_ms: i64,
    pub latency_ms: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Token counts were estimated by chatgate rather than reported by the upstream.
    pub estimated: bool,
    pub outcome: Outcome,
}

/// A chat refused at admission (rate limit, quota, bad model…): not usage, only counted.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct RecordRejection {
    pub code: ErrorCode,
}

/// The windows, refusals and the `recent_limit` newest requests.
#[derive(Message)]
#[rtype(result = "MetricsSnapshot")]
pub struct GetMetricsSnapshot {
    pub recent_limit: usize,
}

/// This instance's mergeable numbers (raw windows, since-start counters, refusals) and its
/// `recent_limit` newest requests: what the cluster views add up.
#[derive(Message)]
#[rtype(result = "MetricsParts")]
pub struct GetMetricsParts {
    pub recent_limit: usize,
}

/// The stored form of a request record; written here so the database layer needs nothing
/// from the actors.
impl RequestRow {
    pub fn from_record(record: &RecordRequest) -> RequestRow {
        RequestRow {
            id: record.id.to_string(),
            user_id: record.user.to_string(),
            session_id: record.session.as_ref().map(ToString::to_string),
            model: record.model.to_string(),
            started_at: record.started_at_ms,
            latency_ms: record.latency_ms as i64,
            tokens_in: record.tokens_in as i64,
            tokens_out: record.tokens_out as i64,
            estimated: record.estimated,
            outcome: record.outcome.as_str().to_string(),
        }
    }
}
