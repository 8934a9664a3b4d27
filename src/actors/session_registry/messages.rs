//! The registry's protocol: what connections, the pipeline and admins ask of it.

use std::sync::Arc;

use actix::prelude::*;
use serde::Serialize;

use crate::actors::connections::CloseConnection;
use crate::domain::message::{ChatMessage, ToolCall, Turn};
use crate::domain::{SessionId, UserId};
use crate::error::AppError;

/// Opens a session for a new connection, or resumes `resume` (of the same user). In cluster
/// mode a session last held on another instance is taken over from there.
#[derive(Message)]
#[rtype(result = "SessionOpened")]
pub struct OpenSession {
    pub user: UserId,
    pub resume: Option<SessionId>,
    pub conn_id: u64,
    pub connection: Recipient<CloseConnection>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionOpened {
    pub id: SessionId,
    pub resumed: bool,
    /// Cluster mode: the instance that held the session before this one claimed it.
    pub previous_instance: Option<String>,
}

/// The connection went away; the session becomes inactive (resumable).
#[derive(Message)]
#[rtype(result = "()")]
pub struct DetachSession {
    pub id: SessionId,
    pub conn_id: u64,
}

/// Adds the chat's turn (system prompt, tool results, user message) and returns the history
/// the model should see.
#[derive(Message)]
#[rtype(result = "Result<Vec<ChatMessage>, AppError>")]
pub struct AppendUserMessage {
    pub id: SessionId,
    pub turn: Turn,
}

/// A reply finished normally: it joins the history and its response time is counted.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RecordReply {
    pub id: SessionId,
    pub content: Arc<str>,
    pub tool_calls: Vec<ToolCall>,
    pub latency_ms: u64,
}

/// Ends a session now (admin); its connection is closed with 1008. In cluster mode a session
/// held by another instance is ended by that instance, asked over the cluster bus.
#[derive(Message)]
#[rtype(result = "Result<(), AppError>")]
pub struct EndSession {
    pub id: SessionId,
}

/// Answers once every change made so far is written to the shared store (cluster mode; at
/// once otherwise, or when it is unreachable, or after `within`): at shutdown, so sessions
/// detached by it are resumable elsewhere straight away.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WriteSessionsNow {
    pub within: std::time::Duration,
}

/// This instance's sessions, by state (what its own metrics report).
#[derive(Message)]
#[rtype(result = "SessionStats")]
pub struct GetSessionStats;

/// Every instance's sessions, by state: from the shared store in cluster mode (active = held
/// by a live instance), else, or while it is unreachable, this instance's.
#[derive(Message)]
#[rtype(result = "SessionStats")]
pub struct CountSessions;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateFilter {
    Active,
    Inactive,
    All,
}

/// A page of sessions (every instance's in cluster mode), newest first, strictly after `after` = (started_at_ms, id) of the last
/// item of the previous page, so pages stay stable while sessions come and go.
#[derive(Message)]
#[rtype(result = "Vec<SessionSummary>")]
pub struct ListSessions {
    pub filter: StateFilter,
    pub after: Option<(i64, String)>,
    pub limit: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SessionSummary {
    pub id: String,
    pub user: String,
    pub active: bool,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub messages: i64,
    pub avg_response_ms: Option<i64>,
}

/// Also read back from other instances' snapshots (cluster views), hence `Deserialize`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
pub struct SessionStats {
    pub active: usize,
    pub inactive: usize,
    pub total: usize,
}
