//! The sessions themselves and every rule about them, with no actix types beyond the
//! connection handle they hold: tested directly.
//!
//! In cluster mode the state also tracks what changed since each session was last written to
//! the shared store (`track_changes`): which sessions are dirty, and for each, the history
//! messages appended and dropped since, so a write carries only the difference.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;

use super::messages::{SessionOpened, SessionStats, SessionSummary, StateFilter};
use super::store::{HistoryWrite, SessionWrite, StoredSession};
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
    sync: SyncMarks,
}

/// What the shared store lacks of a session's history since its last write: the newest
/// `appended` messages, and `dropped` messages it still has at the front. `full` asks for the
/// whole session instead (the store never had it, or what it has is unknown).
#[derive(Default)]
struct SyncMarks {
    appended: usize,
    dropped: usize,
    full: bool,
}

impl Session {
    fn new(user: UserId, started_at_ms: i64, attachment: Option<Attachment>) -> Session {
        Session {
            user,
            system: None,
            history: VecDeque::new(),
            history_bytes: 0,
            open_calls: Vec::new(),
            response_ms: VecDeque::new(),
            messages: 0,
            started_at_ms,
            ended_at_ms: None,
            ended_at: None,
            attachment,
            sync: SyncMarks {
                full: true,
                ..SyncMarks::default()
            },
        }
    }

    fn push(&mut self, message: ChatMessage, limits: &HistoryLimits) {
        self.history_bytes += message.content.len();
        self.history.push_back(message);
        self.sync.appended += 1;
        // Oldest first out; the newest message always stays, even if alone it is over the cap.
        while self.history.len() > limits.max_messages
            || (self.history_bytes > limits.max_bytes && self.history.len() > 1)
        {
            if !self.pop_oldest() {
                break;
            }
        }
        // Tool results whose call was dropped would be refused upstream: they go with it.
        while self.history.len() > 1 && self.history[0].role == ChatRole::Tool {
            self.pop_oldest();
        }
    }

    fn pop_oldest(&mut self) -> bool {
        let before = self.history.len();
        let Some(old) = self.history.pop_front() else {
            return false;
        };
        self.history_bytes -= old.content.len();
        // The store has the oldest `before - appended` messages; past those, the message
        // dropped is one it never got.
        if before > self.sync.appended {
            self.sync.dropped += 1;
        } else {
            self.sync.appended -= 1;
        }
        true
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
    /// Sessions changed since their last write to the shared store; `None` without one.
    dirty: Option<HashSet<SessionId>>,
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
            dirty: None,
        }
    }

    /// From now on, remembers what changed for [`take_writes`](Self::take_writes).
    pub fn track_changes(&mut self) {
        self.dirty.get_or_insert_with(HashSet::new);
    }

    fn touched(&mut self, id: &SessionId) {
        if let Some(dirty) = &mut self.dirty {
            if !dirty.contains(id) {
                dirty.insert(id.clone());
            }
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
        let mut attachment = Attachment {
            conn_id,
            connection,
        };
        if let Some(id) = resume.filter(|id| self.sessions.get(id).is_some_and(|s| s.user == user))
        {
            match self.attach(id, attachment) {
                Ok(opened) => return opened,
                Err(back) => attachment = back,
            }
        }
        let id = SessionId::new_random();
        let session = Session::new(user, now_ms, Some(attachment));
        let row = Self::row(&id, &session);
        self.sessions.insert(id.clone(), session);
        self.active += 1;
        self.touched(&id);
        (
            SessionOpened {
                id,
                resumed: false,
                previous_instance: None,
            },
            None,
            row,
        )
    }

    /// Attaches `attachment` to the existing session `id` (see [`open`](Self::open)); hands
    /// the attachment back if there is no such session.
    #[allow(clippy::type_complexity)]
    fn attach(
        &mut self,
        id: SessionId,
        attachment: Attachment,
    ) -> Result<(SessionOpened, Option<Recipient<CloseConnection>>, RowChange), Attachment> {
        let Some(session) = self.sessions.get_mut(&id) else {
            return Err(attachment);
        };
        let previous = session.attachment.replace(attachment);
        if previous.is_none() {
            self.active += 1;
        }
        session.ended_at = None;
        session.ended_at_ms = None;
        let row = Self::row(&id, session);
        self.touched(&id);
        Ok((
            SessionOpened {
                id,
                resumed: true,
                previous_instance: None,
            },
            previous.map(|a| a.connection),
            row,
        ))
    }

    /// Resumes a session as the shared store has it (last written by another instance),
    /// replacing any copy of it here. The store has all of it: nothing is left to write.
    pub fn adopt(
        &mut self,
        id: SessionId,
        stored: StoredSession,
        attachment: (u64, Recipient<CloseConnection>),
    ) -> (SessionOpened, Option<Recipient<CloseConnection>>, RowChange) {
        let mut session = Session::new(stored.user, stored.started_at_ms, None);
        session.system = stored.system;
        session.history_bytes = stored.history.iter().map(|m| m.content.len()).sum();
        session.history = stored.history.into();
        session.open_calls = stored.open_calls;
        session.response_ms = stored.response_ms.into_iter().collect();
        while session.response_ms.len() > RESPONSE_WINDOW {
            session.response_ms.pop_front();
        }
        session.messages = stored.messages;
        session.sync = SyncMarks::default();
        let (conn_id, connection) = attachment;
        session.attachment = Some(Attachment {
            conn_id,
            connection,
        });
        let row = Self::row(&id, &session);
        // A copy here still attached would be a connection of this instance: taken over.
        let previous = self
            .sessions
            .insert(id.clone(), session)
            .and_then(|p| p.attachment);
        if previous.is_none() {
            self.active += 1;
        }
        // The store has it as attached here already (the claim said so): only the count of
        // sessions attached here changes, which the next write carries.
        self.touched(&id);
        (
            SessionOpened {
                id,
                resumed: true,
                previous_instance: None,
            },
            previous.map(|a| a.connection),
            row,
        )
    }

    /// Whether `id` is attached to a connection of this instance for `user`.
    pub fn is_attached_here(&self, id: &SessionId, user: &UserId) -> bool {
        self.sessions
            .get(id)
            .is_some_and(|s| s.user == *user && s.attachment.is_some())
    }

    /// Whether `id` is attached to a connection of this instance.
    pub fn is_attached(&self, id: &SessionId) -> bool {
        self.sessions
            .get(id)
            .is_some_and(|s| s.attachment.is_some())
    }

    /// Whether this instance has a copy of `id` (attached or not).
    pub fn knows(&self, id: &SessionId) -> bool {
        self.sessions.contains_key(id)
    }

    /// Lets go of a session another instance takes over: it stays resumable, here as a copy
    /// and in the store, but no connection of this instance holds it any more. Returns the
    /// connection to close.
    pub fn let_go(
        &mut self,
        id: &SessionId,
        now: Instant,
        now_ms: i64,
    ) -> Option<Recipient<CloseConnection>> {
        let session = self.sessions.get_mut(id)?;
        let attachment = session.attachment.take()?;
        session.ended_at = Some(now);
        session.ended_at_ms = Some(now_ms);
        self.active -= 1;
        self.touched(id);
        Some(attachment.connection)
    }

    /// Drops this instance's copy of `id`, which the store says another instance now owns
    /// (or an admin ended); returns the connection still attached to it, if any.
    pub fn forget(&mut self, id: &SessionId) -> Option<Recipient<CloseConnection>> {
        let session = self.sessions.remove(id)?;
        if let Some(dirty) = &mut self.dirty {
            dirty.remove(id);
        }
        let attachment = session.attachment?;
        self.active -= 1;
        Some(attachment.connection)
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
        let row = Self::row(id, session);
        self.touched(id);
        Some(row)
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
        let snapshot = session.snapshot();
        self.touched(id);
        Ok(snapshot)
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
        let row = Self::row(id, session);
        self.touched(id);
        Some(row)
    }

    /// Ends a session at once (admin). Returns its connection to close, and the final row.
    pub fn end(
        &mut self,
        id: &SessionId,
        now_ms: i64,
    ) -> Option<(Option<Recipient<CloseConnection>>, RowChange)> {
        let mut session = self.sessions.remove(id)?;
        if let Some(dirty) = &mut self.dirty {
            dirty.remove(id);
        }
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
        let dirty = &mut self.dirty;
        self.sessions.retain(|id, s| {
            let keep = s
                .ended_at
                .is_none_or(|ended| now.duration_since(ended) < ttl);
            if !keep {
                if let Some(dirty) = dirty.as_mut() {
                    dirty.remove(id);
                }
            }
            keep
        });
        before - self.sessions.len()
    }

    /// Up to `max` writes for the shared store, one per dirty session not in `skip`, each
    /// with what changed since the last one; those sessions count as written from here.
    pub fn take_writes(&mut self, max: usize, skip: &HashSet<SessionId>) -> Vec<SessionWrite> {
        let Some(dirty) = &mut self.dirty else {
            return Vec::new();
        };
        let ids: Vec<SessionId> = dirty
            .iter()
            .filter(|id| !skip.contains(*id))
            .take(max)
            .cloned()
            .collect();
        let mut writes = Vec::with_capacity(ids.len());
        for id in ids {
            dirty.remove(&id);
            let Some(session) = self.sessions.get_mut(&id) else {
                continue;
            };
            let marks = std::mem::take(&mut session.sync);
            let history = if marks.full {
                HistoryWrite::Full(session.history.iter().cloned().collect())
            } else {
                let from = session.history.len() - marks.appended;
                HistoryWrite::Append {
                    drop_front: marks.dropped,
                    push: session.history.range(from..).cloned().collect(),
                }
            };
            writes.push(SessionWrite {
                user: session.user.clone(),
                started_at_ms: session.started_at_ms,
                ended_at_ms: session.ended_at_ms,
                messages: session.messages,
                attached: session.attachment.is_some(),
                system: session.system.clone(),
                open_calls: session.open_calls.clone(),
                response_ms: session.response_ms.iter().copied().collect(),
                history,
                id,
            });
        }
        writes
    }

    /// Whether any session not in `skip` waits to be written.
    pub fn has_writes(&self, skip: &HashSet<SessionId>) -> bool {
        self.dirty
            .as_ref()
            .is_some_and(|dirty| dirty.iter().any(|id| !skip.contains(id)))
    }

    /// The store may not have what was last written for `id` (it failed, or the store lost
    /// it): the next write carries the whole session.
    pub fn rewrite_whole(&mut self, id: &SessionId) {
        if let Some(session) = self.sessions.get_mut(id) {
            session.sync = SyncMarks {
                full: true,
                ..SyncMarks::default()
            };
            self.touched(id);
        }
    }

    /// After the store was unreachable: every attached session is written whole again (its
    /// presence and anything changed meanwhile), as is every other session changed meanwhile.
    pub fn rewrite_for_rejoin(&mut self) {
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(id, s)| {
                s.attachment.is_some()
                    || self.dirty.as_ref().is_some_and(|dirty| dirty.contains(*id))
            })
            .map(|(id, _)| id.clone())
            .collect();
        for id in ids {
            self.rewrite_whole(&id);
        }
    }

    /// Marks every attached session to be written, which renews its expiry in the store.
    pub fn touch_attached(&mut self) {
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.attachment.is_some())
            .map(|(id, _)| id.clone())
            .collect();
        for id in &ids {
            self.touched(id);
        }
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
