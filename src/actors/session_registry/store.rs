//! The shared session store of cluster mode: what every instance can see of a session (its
//! owner, times, counts, bounded history) and which instance holds its socket (the presence).
//!
//! The registry actor is the only door to it. Its own state stays the working copy: the
//! instance that holds a session's socket is the only writer of that session, changes it in
//! memory and writes the differences behind (`save`); another instance reads a session only to
//! resume it (`claim`). Every write checks that the writer is still the session's last
//! claimant, so an instance that lost a session (taken over while it did not answer) can
//! never overwrite it.
//!
//! Two implementations side by side: [`RedisSessionStore`](super::store_redis) (production)
//! and [`LocalSessionStore`](super::store_local) (the same rules in process memory, shared by
//! registries of one test process). One behaviour suite runs against both (`store_tests`).

use futures_util::future::LocalBoxFuture;

use super::messages::{SessionStats, SessionSummary, StateFilter};
use crate::cluster::RedisUnavailable;
use crate::domain::message::{ChatMessage, RawJson};
use crate::domain::{SessionId, UserId};

/// A session as the store has it, enough to resume it on another instance.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredSession {
    pub user: UserId,
    pub started_at_ms: i64,
    pub messages: i64,
    pub system: Option<ChatMessage>,
    pub history: Vec<ChatMessage>,
    pub open_calls: Vec<String>,
    pub response_ms: Vec<u64>,
}

/// How a write changes the stored history.
#[derive(Clone, Debug, PartialEq)]
pub enum HistoryWrite {
    /// Replaces it (the store may not have it, or not all of it).
    Full(Vec<ChatMessage>),
    /// Drops the oldest `drop_front`, then appends `push`.
    Append {
        drop_front: usize,
        push: Vec<ChatMessage>,
    },
}

/// One session's changes since its last write, written by the instance that holds it.
#[derive(Clone, Debug, PartialEq)]
pub struct SessionWrite {
    pub id: SessionId,
    pub user: UserId,
    pub started_at_ms: i64,
    pub ended_at_ms: Option<i64>,
    pub messages: i64,
    /// A connection of the writing instance holds it (the presence); `false` clears it.
    pub attached: bool,
    pub system: Option<ChatMessage>,
    pub open_calls: Vec<String>,
    pub response_ms: Vec<u64>,
    pub history: HistoryWrite,
}

/// What became of one write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Saved {
    Saved,
    /// The store does not have the session (expired, or lost with Redis): write it whole.
    Missing,
    /// Another instance claimed it since, or an admin ended it: this instance's copy is stale
    /// and must go.
    Lost,
}

/// The answer to a resume.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    /// The store has no such session of this user (never written, expired, another user's).
    Missing,
    /// An admin ended it: it is not resumable.
    Ended,
    /// A connection on the live instance `instance` holds it: ask it to let go first (or claim
    /// with `force`).
    Held { instance: String },
    /// Now held by the claiming instance. `previous_writer` wrote it last: when that is the
    /// claimant itself, its own copy is at least as new as `session`.
    Claimed {
        previous_writer: String,
        session: StoredSession,
    },
}

/// The answer to ending a session.
#[derive(Clone, Debug, PartialEq)]
pub enum Ending {
    /// No such session (never written, expired, or already ended).
    Missing,
    /// A connection on the live instance `instance` holds it: that instance ends it.
    Held { instance: String },
    /// Ended here and now; what it was, for its database row.
    Ended(SessionSummary),
}

pub type StoreFuture<T> = LocalBoxFuture<'static, Result<T, RedisUnavailable>>;

/// The shared session store (see the module doc). Every call may fail with
/// [`RedisUnavailable`]; the registry then keeps to its own sessions.
pub trait SessionStore: 'static {
    /// This instance's id, as the store records writers and holders.
    fn instance(&self) -> &str;

    /// Whether calls are worth making now (a call while it is down fails at once anyway).
    fn is_up(&self) -> bool;

    /// Takes `id` for `user` on this instance unless a live other instance holds it (or
    /// anyway, with `force`: the holder was asked and did not let go in time, or is gone).
    fn claim(&self, id: SessionId, user: UserId, force: bool) -> StoreFuture<Claim>;

    /// Writes `writes` in one round trip; one [`Saved`] per write, in order. `attached_here`
    /// is how many sessions this instance holds, for the cluster's count of active ones.
    fn save(&self, writes: Vec<SessionWrite>, attached_here: usize) -> StoreFuture<Vec<Saved>>;

    /// Ends `id` unless a live other instance holds it (or anyway, with `force`). An ended
    /// session cannot be claimed and its holder's next write finds it [`Saved::Lost`].
    fn end(&self, id: SessionId, force: bool) -> StoreFuture<Ending>;

    /// A page of every instance's sessions, newest first, like the registry's own list.
    fn list(
        &self,
        filter: StateFilter,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> StoreFuture<Vec<SessionSummary>>;

    /// Every instance's sessions counted; active = held by a live instance.
    fn stats(&self) -> StoreFuture<SessionStats>;

    /// Drops the index entries of sessions that expired; returns how many.
    fn prune(&self) -> StoreFuture<usize>;
}

/// A message as the store keeps it: the JSON sent upstream.
pub fn encode_message(message: &ChatMessage) -> String {
    // A message is its raw JSON; encoding it cannot fail.
    serde_json::to_string(message).unwrap_or_default()
}

/// A stored message read back; `None` for anything that is not one (never written by us).
pub fn decode_message(text: &str) -> Option<ChatMessage> {
    let raw: RawJson = serde_json::from_str(text).ok()?;
    ChatMessage::parse(raw).ok()
}

/// The average of a session's kept response times, as its summary shows it.
pub fn average_ms(response_ms: &[u64]) -> Option<i64> {
    let n = response_ms.len() as u64;
    (n > 0).then(|| (response_ms.iter().sum::<u64>() / n) as i64)
}

/// Whether a summary passes `filter`.
pub fn wanted(filter: StateFilter, active: bool) -> bool {
    match filter {
        StateFilter::All => true,
        StateFilter::Active => active,
        StateFilter::Inactive => !active,
    }
}

/// Whether (started, id) sorts strictly after the cursor in newest-first order.
pub fn after_cursor(started_at_ms: i64, id: &str, after: Option<&(i64, String)>) -> bool {
    after.is_none_or(|(started, last)| (started_at_ms, id) < (*started, last.as_str()))
}
