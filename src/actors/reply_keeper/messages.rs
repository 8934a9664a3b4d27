//! The keeper's protocol: what chat sockets and admin handlers ask of it.

use actix::prelude::*;
use tokio::sync::oneshot;

use super::frames::{ReplyEnd, ReplyFrames, ReplyStream};
use super::state::{KeeperStats, ReplySummary};
use crate::domain::{CancelReason, ChatId, SessionId, UserId};

/// Socket `conn_id` holds `session`. `listing`: it resumed the session and wants the kept
/// replies for its `session` frame (answered once a socket it took the session from has
/// handed its replies over); otherwise the answer is empty and need not be awaited.
#[derive(Message)]
#[rtype(result = "Vec<ReplySummary>")]
pub struct AttachSocket {
    pub session: SessionId,
    pub conn_id: u64,
    pub listing: bool,
    /// Cluster mode: the instance that had the session before (it may keep replies of it,
    /// which it exports when asked).
    pub previous_instance: Option<String>,
}

/// A running reply a socket hands over as it goes.
pub struct DetachedReply {
    pub id: ChatId,
    pub frames: ReplyFrames,
    pub events: ReplyStream,
    /// `None` once the client cancelled it (its end is on the way).
    pub cancel: Option<oneshot::Sender<CancelReason>>,
    /// The instance that streams it, when that is another one (its frames come through
    /// Redis).
    pub owner: Option<String>,
}

/// Socket `conn_id` is gone without a `cancel`: its running replies go on for the grace.
#[derive(Message)]
#[rtype(result = "()")]
pub struct DetachSocket {
    pub session: SessionId,
    pub conn_id: u64,
    pub user: UserId,
    pub replies: Vec<DetachedReply>,
}

/// A reply ended while its socket held it: its frames stay resumable for the grace (the
/// client may not have received its last frames).
#[derive(Message)]
#[rtype(result = "()")]
pub struct KeepEndedReply {
    pub session: SessionId,
    pub id: ChatId,
    pub user: UserId,
    pub frames: ReplyFrames,
    pub end: ReplyEnd,
}

/// A socket of `session` asks for reply `id` from after `after_seq`.
#[derive(Message)]
#[rtype(result = "ResumeAnswer")]
pub struct ResumeReply {
    pub session: SessionId,
    pub id: ChatId,
    pub after_seq: u64,
}

pub enum ResumeAnswer {
    /// Unknown, no longer kept, or missing a delta after `after_seq`.
    NotFound,
    /// The deltas after `after_seq`, then the reply's last frames.
    Ended {
        deltas: Vec<(u64, String)>,
        end: ReplyEnd,
    },
    /// The reply runs: the socket takes it over and sends `frames`' deltas after `after_seq`
    /// before the stream's next event.
    Running(DetachedReply),
}

/// An admin ended a session or disabled a user: their replies stop now, and any their
/// sockets hand over from now on are stopped too.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub enum StopReplies {
    Session(SessionId),
    User(UserId),
}

#[derive(Message)]
#[rtype(result = "KeeperStats")]
pub struct GetKeeperStats;
