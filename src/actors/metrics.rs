//! Consumes one request record per admitted chat and counts refusals at admission.

use std::collections::BTreeMap;

use actix::prelude::*;
use serde::Serialize;

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
}

/// One admitted chat, whatever its end. Produced exactly once per admitted chat.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct RecordRequest {
    pub id: uuid::Uuid,
    pub user: UserId,
    pub session: Option<SessionId>,
    pub model: std::sync::Arc<str>,
    pub started_at_ms: i64,
    pub latency_ms: u64,
    pub tokens_in: u64,
    pub tokens_out: u64,
    /// Token counts were estimated by chatgate rather than reported by the upstream.
    pub estimated: bool,
    pub outcome: Outcome,
}

/// A chat refused before admission (rate limit, quota, bad model…): not usage, only counted.
#[derive(Message, Clone, Copy, Debug)]
#[rtype(result = "()")]
pub struct RecordRejection {
    pub code: ErrorCode,
}

#[derive(Message)]
#[rtype(result = "MetricsSnapshot")]
pub struct GetMetricsSnapshot;

#[derive(Clone, Debug, Default, Serialize)]
pub struct MetricsSnapshot {
    pub requests: u64,
    pub rejected: BTreeMap<ErrorCode, u64>,
    pub per_model: BTreeMap<String, u64>,
}

#[derive(Default)]
pub struct MetricsAggregator {
    snapshot: MetricsSnapshot,
}

impl Actor for MetricsAggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        log::info!("event=actor_started actor=metrics_aggregator");
    }
}

impl Handler<RecordRequest> for MetricsAggregator {
    type Result = ();

    fn handle(&mut self, record: RecordRequest, _: &mut Context<Self>) {
        log::debug!(
            "event=request_done user={} session={} model={} ms={} tokens_in={} tokens_out={} outcome={}",
            record.user,
            record.session.as_ref().map(SessionId::as_str).unwrap_or("-"),
            record.model,
            record.latency_ms,
            record.tokens_in,
            record.tokens_out,
            record.outcome.as_str()
        );
        self.snapshot.requests += 1;
        *self
            .snapshot
            .per_model
            .entry(record.model.to_string())
            .or_default() += 1;
    }
}

impl Handler<RecordRejection> for MetricsAggregator {
    type Result = ();

    fn handle(&mut self, msg: RecordRejection, _: &mut Context<Self>) {
        *self.snapshot.rejected.entry(msg.code).or_default() += 1;
    }
}

impl Handler<GetMetricsSnapshot> for MetricsAggregator {
    type Result = MessageResult<GetMetricsSnapshot>;

    fn handle(&mut self, _: GetMetricsSnapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.snapshot.clone())
    }
}
