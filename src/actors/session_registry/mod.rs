//! Chat sessions: who owns each, its bounded history (what the model sees), recent response
//! times, and whether a connection is attached. Ended sessions stay resumable for the TTL,
//! then a timer drops them. Every change of a session's row goes to the DB flusher.
//!
//! In cluster mode (`shared_through`) the sessions are also in a shared store (Redis), so a
//! session resumes on any instance: see `shared` for how the two are kept in step.

mod messages;
mod shared;
mod state;
mod store;
mod store_local;
mod store_redis;

use std::rc::Rc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;

pub use messages::{
    AppendUserMessage, CountSessions, DetachSession, EndSession, GetSessionStats, ListSessions,
    OpenSession, RecordReply, SessionOpened, SessionStats, SessionSummary, StateFilter,
    WriteSessionsNow,
};
pub use state::{HistoryLimits, RegistryState, RowChange};
pub use store::{
    Claim, Ending, HistoryWrite, Saved, SessionStore, SessionWrite, StoreFuture, StoredSession,
};
pub use store_local::{LocalCluster, LocalSessionStore};
pub use store_redis::RedisSessionStore;

use crate::actors::cluster_bus::{AskInstance, RemoteCommand};
use crate::actors::connections::CloseConnection;
use crate::actors::db_flusher::{DbFlusher, EnqueueSession};
use crate::actors::membership::RedisRejoined;
use crate::cluster::protocol::Answer;
use crate::db::models::SessionRow;
use crate::domain::message::ChatMessage;
use crate::domain::SessionId;
use crate::error::AppError;
use shared::Shared;

/// A sweep that frees at least this many sessions (and, before it, their connections)
/// gives the freed memory back to the OS.
const TRIM_AFTER_EVICTIONS: usize = 100;

pub struct SessionRegistry {
    state: RegistryState,
    cleanup_every: Duration,
    flusher: Addr<DbFlusher>,
    /// Cluster mode: the shared store and the way to other instances.
    shared: Option<Shared>,
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
            shared: None,
        }
    }

    /// Cluster mode: sessions are also kept in `store`, and `bus` reaches the instance that
    /// holds one (to take it over or end it).
    pub fn shared_through(
        mut self,
        store: Rc<dyn SessionStore>,
        bus: Option<Recipient<AskInstance>>,
        ttl: Duration,
    ) -> Self {
        self.state.track_changes();
        self.shared = Some(Shared::new(store, bus, ttl));
        self
    }

    fn persist(&self, row: SessionRow) {
        // The flusher's buffer is bounded and counts what it drops; a full mailbox must not
        // stall chats, so this never waits.
        self.flusher.do_send(EnqueueSession { row });
    }

    /// Opens (or resumes from this instance's own copy) and persists; closes a connection
    /// it takes the session from.
    fn open_here(&mut self, msg: OpenSession, resume: Option<SessionId>) -> SessionOpened {
        let (opened, previous, row) =
            self.state
                .open(msg.user, resume, (msg.conn_id, msg.connection), now_ms());
        if let Some(previous) = previous {
            previous.do_send(CloseConnection {
                code: 1008,
                reason: "session resumed by another connection".into(),
                cancel_replies: None,
            });
        }
        self.persist(row);
        opened
    }

    /// Ends a session this instance has; closes its connection with 1008.
    fn end_here(&mut self, id: &SessionId) -> Result<(), AppError> {
        let (connection, row) = self
            .state
            .end(id, now_ms())
            .ok_or_else(|| AppError::NotFound(format!("no session {id}")))?;
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

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Actor for SessionRegistry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(16_384);
        ctx.run_interval(self.cleanup_every, |act, ctx| {
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
            act.prune_shared(ctx);
        });
        if let Some(shared) = &self.shared {
            ctx.run_interval(shared.refresh_every(), |act, ctx| act.refresh_shared(ctx));
        }
        log::info!(
            "event=actor_started actor=session_registry shared={}",
            self.shared.is_some()
        );
    }
}

impl Handler<OpenSession> for SessionRegistry {
    type Result = ResponseActFuture<Self, SessionOpened>;

    fn handle(&mut self, msg: OpenSession, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(id) = msg.resume.clone() {
            // A session attached here is taken over here: this instance holds it, so its copy
            // is the newest and no other instance need be asked.
            if self.shares_now() && !self.state.is_attached_here(&id, &msg.user) {
                return self.open_shared(id, msg);
            }
        }
        let resume = msg.resume.clone();
        let opened = self.open_here(msg, resume);
        self.flush(ctx);
        Box::pin(fut::ready(opened))
    }
}

impl Handler<DetachSession> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: DetachSession, ctx: &mut Context<Self>) {
        if let Some(row) = self
            .state
            .detach(&msg.id, msg.conn_id, Instant::now(), now_ms())
        {
            self.persist(row);
            // Soon, so a resume elsewhere finds it detached with all of its history.
            self.flush(ctx);
        }
    }
}

impl Handler<AppendUserMessage> for SessionRegistry {
    type Result = Result<Vec<ChatMessage>, AppError>;

    fn handle(&mut self, msg: AppendUserMessage, _: &mut Context<Self>) -> Self::Result {
        // Not written yet: it goes with the reply's write (one round trip per chat), or with
        // the detach if the chat fails.
        self.state.append_turn(&msg.id, msg.turn)
    }
}

impl Handler<RecordReply> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, msg: RecordReply, ctx: &mut Context<Self>) {
        if let Some(row) =
            self.state
                .record_reply(&msg.id, msg.content, msg.tool_calls, msg.latency_ms)
        {
            self.persist(row);
            self.flush(ctx);
        }
    }
}

impl Handler<EndSession> for SessionRegistry {
    type Result = ResponseActFuture<Self, Result<(), AppError>>;

    fn handle(&mut self, msg: EndSession, _: &mut Context<Self>) -> Self::Result {
        if self.shares_now() && !self.state.is_attached(&msg.id) {
            return self.end_shared(msg.id);
        }
        let ended = self.end_here(&msg.id);
        if ended.is_ok() {
            return self.end_in_store(msg.id, ended);
        }
        Box::pin(fut::ready(ended))
    }
}

impl Handler<ListSessions> for SessionRegistry {
    type Result = ResponseActFuture<Self, Vec<SessionSummary>>;

    fn handle(&mut self, msg: ListSessions, _: &mut Context<Self>) -> Self::Result {
        if self.shares_now() {
            return self.list_shared(msg);
        }
        Box::pin(fut::ready(self.state.list(
            msg.filter,
            msg.after.as_ref(),
            msg.limit,
        )))
    }
}

impl Handler<GetSessionStats> for SessionRegistry {
    type Result = MessageResult<GetSessionStats>;

    fn handle(&mut self, _: GetSessionStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.stats())
    }
}

impl Handler<WriteSessionsNow> for SessionRegistry {
    type Result = ResponseActFuture<Self, ()>;

    fn handle(&mut self, msg: WriteSessionsNow, ctx: &mut Context<Self>) -> Self::Result {
        self.write_now(msg.within, ctx)
    }
}

impl Handler<CountSessions> for SessionRegistry {
    type Result = ResponseActFuture<Self, SessionStats>;

    fn handle(&mut self, _: CountSessions, _: &mut Context<Self>) -> Self::Result {
        if self.shares_now() {
            return self.count_shared();
        }
        Box::pin(fut::ready(self.state.stats()))
    }
}

impl Handler<RemoteCommand> for SessionRegistry {
    type Result = ResponseActFuture<Self, Answer>;

    fn handle(&mut self, msg: RemoteCommand, ctx: &mut Context<Self>) -> Self::Result {
        self.on_remote_command(msg.0, ctx)
    }
}

impl Handler<RedisRejoined> for SessionRegistry {
    type Result = ();

    fn handle(&mut self, _: RedisRejoined, ctx: &mut Context<Self>) {
        if self.shared.is_some() {
            // Sessions opened or changed during the outage become resumable elsewhere.
            self.state.rewrite_for_rejoin();
            log::info!(
                "event=sessions_rejoin attached={}",
                self.state.stats().active
            );
            self.flush(ctx);
        }
    }
}

#[cfg(test)]
#[path = "store_tests.rs"]
mod store_tests;

#[cfg(test)]
#[path = "actor_tests.rs"]
mod actor_tests;
