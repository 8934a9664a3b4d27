//! The sessions themselves and every rule about them, with no actix types beyond the
//! connection handle they hold: tested directly.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;

use super::messages::{SessionOpened, SessionStats, SessionSummary, StateFilter};
use crate::actors::connections::CloseConnection;
use crate::db::models::SessionRow;
use crate::domain::message::{ChatMessage, ChatRole, ToolCall, Turn};
use crate::domain::{SessionId, UserId};
use crate::error::AppError;

/// How many response times a session keeps for its average.
const RESPONSE_WINDOW: usize = 100;

#[derive(Clone, Debug)]
pub struct HistoryLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
}

struct Attachment {
    conn_id: u64,
    connection: Recipient<CloseConnection>,
}

struct Session {
    user: UserId,
    /// Heads the history the model sees; outside the bound, so never dropped by it.
    system: Option<ChatMessage>,
    history: VecDeque<ChatMessage>,
    history_bytes: usize,
    /// Ids of the last reply's tool calls not yet answered by `tool_results`.
    open_calls: Vec<String>,
    response_ms: VecDeque<u64>,
    messages: i64,
    started_at_ms: i64,
    ended_at_ms: Option<i64>,
    ended_at: Option<Instant>,
    attachment: Option<Attachment>,
}

impl Session {
    fn push(&mut self, message: ChatMessage, limits: &HistoryLimits) {
        self.history_bytes += message.content.len();
        self.history.push_back(message);
        // Oldest first out; the newest message always stays, even if alone it is over the cap.
        while self.history.len() > limits.max_messages
            || (self.history_bytes > limits.max_bytes && self.history.len() > 1)
        {
            match self.history.pop_front() {
                Some(old) => self.history_bytes -= old.content.len(),
                None => break,
            }
        }
        // Tool results whose call was dropped would be refused upstream: they go with it.
        while self.history.len() > 1 && self.history[0].role == ChatRole::Tool {
            if let Some(old) = self.history.pop_front() {
                self.history_bytes -= old.content.len();
            }
        }
    }

    /// Tool results must answer calls of the previous reply: an upstream refuses others.
    fn check_tool_results(&self, turn: &Turn) -> Result<(), AppError> {
        for (call_id, _) in &turn.tool_results {
            if !self.open_calls.contains(call_id) {
                let open = if self.open_calls.is_empty() {
                    "it has no unanswered tool calls".to_string()
                } else {
                    format!("its unanswered calls are {}", self.open_calls.join(", "))
                };
                return Err(AppError::BadRequest(format!(
                    "tool_results names call {call_id:?}, which is not a tool call of this \
                     session's previous reply ({open})"
                )));
            }
        }
        Ok(())
    }

    fn snapshot(&self) -> Vec<ChatMessage> {
        self.system
            .iter()
            .chain(self.history.iter())
            .cloned()
            .collect()
    }

    fn avg_response_ms(&self) -> Option<i64> {
        let n = self.response_ms.len() as u64;
        (n > 0).then(|| (self.response_ms.iter().sum::<u64>() / n) as i64)
    }
}

pub struct RegistryState {
    sessions: HashMap<SessionId, Session>,
    limits: HistoryLimits,
    ttl: Duration,
    active: usize,
}

/// A session row to persist, produced by each state change.
pub type RowChange = SessionRow;

impl RegistryState {
    pub fn new(limits: HistoryLimits, ttl: Duration) -> RegistryState {
        RegistryState {
            sessions: HashMap::new(),
            limits,
            ttl,
            active: 0,
        }
    }

    fn row(id: &SessionId, s: &Session) -> SessionRow {
        SessionRow {
            id: id.to_string(),
            user_id: s.user.to_string(),
            started_at: s.started_at_ms,
            ended_at: s.ended_at_ms,
            messages: s.messages,
            avg_response_ms: s.avg_response_ms(),
        }
    }

    /// Opens a new session, or resumes `resume` when it exists and belongs to `user`. A
    /// resumed session that is still attached is taken over: the old connection is returned
    /// so the caller can close it.
    pub fn open(
        &mut self,
        user: UserId,
        resume: Option<SessionId>,
        attachment: (u64, Recipient<CloseConnection>),
        now_ms: i64,
    ) -> (SessionOpened, Option<Recipient<CloseConnection>>, RowChange) {
        let (conn_id, connection) = attachment;
        if let Some(id) = resume {
            if let Some(session) = self.sessions.get_mut(&id).filter(|s| s.user == user) {
                let previous = session.attachment.replace(Attachment {
                    conn_id,
                    connection,
                });
                if previous.is_none() {
                    self.active += 1;
                }
                session.ended_at = None;
                session.ended_at_ms = None;
                let row = Self::row(&id, session);
                return (
                    SessionOpened { id, resumed: true },
                    previous.map(|a| a.connection),
                    row,
                );
            }
        }
        let id = SessionId::new_random();
        let session = Session {
            user,
            system: None,
            history: VecDeque::new(),
            history_bytes: 0,
            open_calls: Vec::new(),
            response_ms: VecDeque::new(),
            messages: 0,
            started_at_ms: now_ms,
            ended_at_ms: None,
            ended_at: None,
            attachment: Some(Attachment {
                conn_id,
                connection,
            }),
        };
        let row = Self::row(&id, &session);
        self.sessions.insert(id.clone(), session);
        self.active += 1;
        (SessionOpened { id, resumed: false }, None, row)
    }

    /// Marks the session inactive if `conn_id` is still the one attached (a takeover may have
    /// replaced it already).
    pub fn detach(
        &mut self,
        id: &SessionId,
        conn_id: u64,
        now: Instant,
        now_ms: i64,
    ) -> Option<RowChange> {
        let session = self.sessions.get_mut(id)?;
        if session.attachment.as_ref().map(|a| a.conn_id) != Some(conn_id) {
            return None;
        }
        session.attachment = None;
        session.ended_at = Some(now);
        session.ended_at_ms = Some(now_ms);
        self.active -= 1;
        Some(Self::row(id, session))
    }

    pub fn append_turn(
        &mut self,
        id: &SessionId,
        turn: Turn,
    ) -> Result<Vec<ChatMessage>, AppError> {
        let limits = self.limits.clone();
        let session = self
            .sessions
            .get_mut(id)
            .ok_or_else(|| AppError::NotFound("the session has ended".into()))?;
        session.check_tool_results(&turn)?;
        if let Some(system) = turn.system {
            session.system = Some(system);
        }
        for (call_id, result) in turn.tool_results {
            session.open_calls.retain(|open| *open != call_id);
            session.push(result, &limits);
        }
        if let Some(user) = turn.user {
            session.push(user, &limits);
            session.messages += 1;
        }
        Ok(session.snapshot())
    }

    pub fn record_reply(
        &mut self,
        id: &SessionId,
        content: Arc<str>,
        tool_calls: Vec<ToolCall>,
        latency_ms: u64,
    ) -> Option<RowChange> {
        let limits = self.limits.clone();
        let session = self.sessions.get_mut(id)?;
        session.open_calls = tool_calls.iter().map(|call| call.id.clone()).collect();
        session.push(
            ChatMessage::assistant_with_calls(&content, &tool_calls),
            &limits,
        );
        session.messages += 1;
        if session.response_ms.len() == RESPONSE_WINDOW {
            session.response_ms.pop_front();
        }
        session.response_ms.push_back(latency_ms);
        Some(Self::row(id, session))
    }

    /// Ends a session at once (admin). Returns its connection to close, and the final row.
    pub fn end(
        &mut self,
        id: &SessionId,
        now_ms: i64,
    ) -> Option<(Option<Recipient<CloseConnection>>, RowChange)> {
        let mut session = self.sessions.remove(id)?;
        let attachment = session.attachment.take();
        if attachment.is_some() {
            self.active -= 1;
        }
        session.ended_at_ms.get_or_insert(now_ms);
        let row = Self::row(id, &session);
        Some((attachment.map(|a| a.connection), row))
    }

    /// Drops sessions that ended more than the TTL ago; returns how many.
    pub fn evict_expired(&mut self, now: Instant) -> usize {
        let before = self.sessions.len();
        let ttl = self.ttl;
        self.sessions.retain(|_, s| {
            s.ended_at
                .is_none_or(|ended| now.duration_since(ended) < ttl)
        });
        before - self.sessions.len()
    }

    /// A page of sessions, newest first (by start, then id), after the cursor `after`. Runs
    /// on the thread that hosts the core actors, so it keeps only the page in a bounded heap:
    /// O(n log limit) and `limit` entries of memory, not a sort of every session.
    pub fn list(
        &self,
        filter: StateFilter,
        after: Option<&(i64, String)>,
        limit: usize,
    ) -> Vec<SessionSummary> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if limit == 0 {
            return Vec::new();
        }
        // A min-heap of the newest `limit` so far: its top is the oldest kept.
        // The id sorts like its text, so the tuple sorts by (start, id).
        let mut page: BinaryHeap<Reverse<(i64, &SessionId)>> = BinaryHeap::with_capacity(limit + 1);
        for (id, s) in &self.sessions {
            let wanted = match filter {
                StateFilter::All => true,
                StateFilter::Active => s.attachment.is_some(),
                StateFilter::Inactive => s.attachment.is_none(),
            };
            let key = (s.started_at_ms, id);
            // Newest first: the next page holds what sorts after the cursor.
            let after_cursor = after
                .is_none_or(|(started, last)| (key.0, id.as_str()) < (*started, last.as_str()));
            if !wanted || !after_cursor {
                continue;
            }
            if page.len() < limit {
                page.push(Reverse(key));
            } else if page.peek().is_some_and(|Reverse(oldest)| key > *oldest) {
                page.pop();
                page.push(Reverse(key));
            }
        }
        // Ascending by Reverse is newest first.
        page.into_sorted_vec()
            .into_iter()
            .filter_map(|Reverse((_, id))| {
                let s = self.sessions.get(id)?;
                Some(SessionSummary {
                    id: id.to_string(),
                    user: s.user.to_string(),
                    active: s.attachment.is_some(),
                    started_at_ms: s.started_at_ms,
                    ended_at_ms: s.ended_at_ms,
                    messages: s.messages,
                    avg_response_ms: s.avg_response_ms(),
                })
            })
            .collect()
    }

    /// Releases capacity the session map no longer needs.
    pub fn shrink(&mut self) {
        self.sessions.shrink_to_fit();
    }

    pub fn stats(&self) -> SessionStats {
        SessionStats {
            active: self.active,
            inactive: self.sessions.len() - self.active,
            total: self.sessions.len(),
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
