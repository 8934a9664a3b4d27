//! Chat sessions: who owns each, its bounded history (what the model sees), recent response
//! times, and whether a connection is attached. Ended sessions stay resumable for the TTL,
//! then a timer drops them. Every change of a session's row goes to the DB flusher.

mod messages;
mod state;

use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;

pub use messages::{
    AppendUserMessage, DetachSession, EndSession, GetSessionStats, ListSessions, OpenSession,
    RecordReply, SessionOpened, SessionStats, SessionSummary, StateFilter,
};
pub use state::{HistoryLimits, RegistryState, RowChange};

use crate::actors::connections::CloseConnection;
use crate::actors::db_flusher::{DbFlusher, EnqueueSession};
use crate::db::models::SessionRow;
use crate::domain::message::ChatMessage;
use crate::error::AppError;

/// A sweep that frees at least this many sessions (and, before it, their connections)
/// gives the freed memory back to the OS.
const TRIM_AFTER_EVICTIONS: usize = 100;

pub struct SessionRegistry {
    state: RegistryState,
    cleanup_every: Duration,
    flusher: Addr<DbFlusher>,
}

impl SessionRegistry {
    pub fn new(
        limits: HistoryLimits,
        ttl: Duration,
        cleanup_every: Duration,
        flusher: Addr<DbFlusher>,
    ) -> Self {
        SessionRegistry {
            state: RegistryState::new(limits, ttl),
            cleanup_every,
            flusher,
        }
    }

    fn persist(&self, row: SessionRow) {
        // The flusher's buffer is bounded and counts what it drops; a full mailbox must not
        // stall chats, so this never waits.
        self.flusher.do_send(EnqueueSession { row });
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Actor for SessionRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(16_384);
        ctx.run_interval(self.cleanup_every, |act, _| {
            let evicted = act.state.evict_expired(Instant::now());
            if evicted >= TRIM_AFTER_EVICTIONS {
                // Maps keep their peak capacity; after a crowd leaves, give it back too.
                act.state.shrink();
                crate::memory::release_free_memory_in_background();
            }
            let stats = act.state.stats();
            log::info!(
                "event=session_cleanup evicted={evicted} active={} inactive={}",
                stats.active,
                stats.inactive
            );
        });
        log::info!("event=actor_started actor=session_registry");
    }
}

impl Handler<OpenSession> for SessionRegistry {
    type Result = MessageResult<OpenSession>;

    fn handle(&mut self, msg: OpenSession, _: &mut Context<Self>) -> Self::Result {
        let (opened, previous, row) = self.state.open(
            msg.user,
            msg.resume,
            (msg.conn_id, msg.connection),
            now_ms(),
        );
        if let Some(previous) = previous {
            previous.do_send(CloseConnection {
                code: 1008,
                reason: "session resumed by another connection".into(),
                cancel_replies: None,
            });
        }
        self.persist(row);
        MessageResult(opened)
    }
}

impl Handler<DetachSession> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: DetachSession, _: &mut Context<Self>) {
        if let Some(row) = self
            .state
            .detach(&msg.id, msg.conn_id, Instant::now(), now_ms())
        {
            self.persist(row);
        }
    }
}

impl Handler<AppendUserMessage> for SessionRegistry {
    type Result = Result<Vec<ChatMessage>, AppError>;

    fn handle(&mut self, msg: AppendUserMessage, _: &mut Context<Self>) -> Self::Result {
        self.state.append_turn(&msg.id, msg.turn)
    }
}

impl Handler<RecordReply> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: RecordReply, _: &mut Context<Self>) {
        if let Some(row) =
            self.state
                .record_reply(&msg.id, msg.content, msg.tool_calls, msg.latency_ms)
        {
            self.persist(row);
        }
    }
}

impl Handler<EndSession> for SessionRegistry {
    type Result = Result<(), AppError>;

    fn handle(&mut self, msg: EndSession, _: &mut Context<Self>) -> Self::Result {
        let (connection, row) = self
            .state
            .end(&msg.id, now_ms())
            .ok_or_else(|| AppError::NotFound(format!("no session {}", msg.id)))?;
        if let Some(connection) = connection {
            connection.do_send(CloseConnection {
                code: 1008,
                reason: "session ended by an administrator".into(),
                cancel_replies: None,
            });
        }
        self.persist(row);
        Ok(())
    }
}

impl Handler<ListSessions> for SessionRegistry {
    type Result = MessageResult<ListSessions>;

    fn handle(&mut self, msg: ListSessions, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.list(msg.filter, msg.after.as_ref(), msg.limit))
    }
}

impl Handler<GetSessionStats> for SessionRegistry {
    type Result = MessageResult<GetSessionStats>;

    fn handle(&mut self, _: GetSessionStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.stats())
    }
}
