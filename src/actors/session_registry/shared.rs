//! Cluster mode of the registry: keeping the shared store in step with this instance's
//! sessions, and the cases where another instance is involved.
//!
//! - Writes go behind. A change marks its session dirty; a reply, an open or a detach starts a
//!   write of every dirty session in one pipelined round trip (one at a time: changes made
//!   meanwhile go with the next). Appending the user's message starts none, so a chat costs
//!   at most one round trip, shared with every other chat written with it, and never waits
//!   for it.
//! - Resuming a session not attached here claims it in the store. If a live other instance
//!   holds it, that instance is asked to let go (it closes its socket with 1008 and writes
//!   what it had), then the claim is forced. A holder that does not answer in time is taken
//!   over anyway; its next write finds the session lost and closes its socket.
//! - Ending one held elsewhere asks the holder; one nobody holds is ended in the store.
//! - While the store is unreachable everything stays local; changes stay dirty and are
//!   written whole when it answers again (`RedisRejoined`).

use std::collections::HashSet;
use std::rc::Rc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use super::store::{Claim, Ending, Saved, SessionStore};
use super::{
    now_ms, ListSessions, OpenSession, SessionOpened, SessionRegistry, SessionStats, SessionSummary,
};
use crate::actors::cluster_bus::AskInstance;
use crate::actors::connections::CloseConnection;
use crate::cluster::protocol::{Answer, Command};
use crate::cluster::RedisUnavailable;
use crate::db::models::SessionRow;
use crate::domain::SessionId;
use crate::error::AppError;

/// Sessions written per round trip; more wait for the next one, right after.
const WRITES_PER_ROUND_TRIP: usize = 256;
/// How long a holder asked to let go waits for its write before answering anyway: inside the
/// bus's answer timeout, so the asking instance gets an answer rather than a timeout.
const LET_GO_WRITE_WAIT: Duration = Duration::from_millis(600);

pub(super) struct Shared {
    store: Rc<dyn SessionStore>,
    bus: Option<Recipient<AskInstance>>,
    ttl: Duration,
    /// A write is on its way; changes wait for the next.
    writing: bool,
    /// Something asked for a write while one was on its way.
    write_again: bool,
    /// Told once the next write has landed (or failed): holders letting go wait on it.
    waiting: Vec<oneshot::Sender<()>>,
    /// Sessions being claimed: not written until the claim's answer is in, so a write cannot
    /// undo what the claim set.
    claiming: HashSet<SessionId>,
}

impl Shared {
    pub(super) fn new(
        store: Rc<dyn SessionStore>,
        bus: Option<Recipient<AskInstance>>,
        ttl: Duration,
    ) -> Shared {
        Shared {
            store,
            bus,
            ttl,
            writing: false,
            write_again: false,
            waiting: Vec::new(),
            claiming: HashSet::new(),
        }
    }

    /// How often attached sessions are written again so their keys do not expire while the
    /// socket stays open without chats.
    pub(super) fn refresh_every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_secs(1))
    }

    fn release_waiting(&mut self) {
        for waiter in self.waiting.drain(..) {
            let _ = waiter.send(());
        }
    }
}

/// What ending a session elsewhere came to.
enum EndedElsewhere {
    /// The holder ended it.
    ByHolder,
    /// The store answered.
    Store(Ending),
    /// The holder did not answer in time.
    HolderSilent(String),
}

impl SessionRegistry {
    /// The shared store, if there is one and it answers now.
    fn store_if_up(&self) -> Option<Rc<dyn SessionStore>> {
        self.shared
            .as_ref()
            .filter(|s| s.store.is_up())
            .map(|s| s.store.clone())
    }

    pub(super) fn shares_now(&self) -> bool {
        self.store_if_up().is_some()
    }

    /// Writes every dirty session (see the module doc).
    pub(super) fn flush(&mut self, ctx: &mut Context<Self>) {
        let attached_here = self.state.stats().active;
        let Some(shared) = &mut self.shared else {
            return;
        };
        if shared.writing {
            shared.write_again = true;
            return;
        }
        if !shared.store.is_up() {
            // Kept dirty: written when the store answers again.
            shared.release_waiting();
            return;
        }
        let writes = self
            .state
            .take_writes(WRITES_PER_ROUND_TRIP, &shared.claiming);
        if writes.is_empty() {
            shared.release_waiting();
            return;
        }
        shared.writing = true;
        shared.write_again = false;
        let waiting = std::mem::take(&mut shared.waiting);
        let ids: Vec<SessionId> = writes.iter().map(|w| w.id.clone()).collect();
        let more = writes.len() == WRITES_PER_ROUND_TRIP;
        let save = shared.store.save(writes, attached_here);
        ctx.spawn(save.into_actor(self).map(move |saved, act, ctx| {
            let mut again = more;
            match saved {
                Ok(outcomes) => {
                    for (id, outcome) in ids.iter().zip(outcomes) {
                        match outcome {
                            Saved::Saved => {}
                            Saved::Missing => {
                                act.state.rewrite_whole(id);
                                again = true;
                            }
                            Saved::Lost => act.lose(id),
                        }
                    }
                }
                Err(err) => {
                    // Whatever landed, the next write carries these sessions whole. Not
                    // retried now: a store that failed is retried at the next change or
                    // when it rejoins, never in a loop.
                    log::debug!(
                        "event=session_write_failed sessions={} error={err}",
                        ids.len()
                    );
                    for id in &ids {
                        act.state.rewrite_whole(id);
                    }
                    again = false;
                }
            }
            for waiter in waiting {
                let _ = waiter.send(());
            }
            let Some(shared) = &mut act.shared else {
                return;
            };
            shared.writing = false;
            if again || std::mem::take(&mut shared.write_again) {
                act.flush(ctx);
            }
        }));
    }

    /// Resolves once what changed so far is written (or could not be).
    fn flush_then(&mut self, ctx: &mut Context<Self>) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        if let Some(shared) = &mut self.shared {
            shared.waiting.push(tx);
        }
        self.flush(ctx);
        rx
    }

    /// Resolves once what changed so far is written, or after `within`.
    pub(super) fn write_now(
        &mut self,
        within: Duration,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, ()> {
        if self.shared.is_none() {
            return Box::pin(fut::ready(()));
        }
        let written = self.flush_then(ctx);
        Box::pin(
            async move {
                let _ = tokio::time::timeout(within, written).await;
            }
            .into_actor(self),
        )
    }

    /// Another instance owns `id` now (it claimed it, or an admin ended it): this copy goes,
    /// and a connection still attached to it here is closed.
    fn lose(&mut self, id: &SessionId) {
        log::info!("event=session_lost session={id}");
        if let Some(connection) = self.state.forget(id) {
            connection.do_send(CloseConnection {
                code: 1008,
                reason: "session resumed on another instance".into(),
                cancel_replies: None,
            });
        }
    }

    /// Resumes `id` through the store: claims it, asking a live holder to let go first.
    pub(super) fn open_shared(
        &mut self,
        id: SessionId,
        msg: OpenSession,
    ) -> ResponseActFuture<Self, SessionOpened> {
        let Some(shared) = &mut self.shared else {
            let opened = self.open_here(msg, Some(id));
            return Box::pin(fut::ready(opened));
        };
        shared.claiming.insert(id.clone());
        let store = shared.store.clone();
        let bus = shared.bus.clone();
        let user = msg.user.clone();
        let claim_id = id.clone();
        let claim = async move {
            let first = store.claim(claim_id.clone(), user.clone(), false).await;
            let Ok(Claim::Held { instance }) = first else {
                return first;
            };
            let asked = match &bus {
                Some(bus) => bus
                    .send(AskInstance {
                        instance: instance.clone(),
                        command: Command::TakeOverSession {
                            session_id: claim_id.to_string(),
                        },
                    })
                    .await
                    .map_err(|err| RedisUnavailable(err.to_string()))
                    .and_then(|answer| answer),
                None => Err(RedisUnavailable("no cluster bus".into())),
            };
            log::info!(
                "event=session_takeover session={claim_id} from={instance} answer={asked:?}"
            );
            // Let go or not (silent, or it restarted and forgot it): this instance takes it.
            store.claim(claim_id, user, true).await
        };
        Box::pin(claim.into_actor(self).map(move |claim, act, ctx| {
            if let Some(shared) = &mut act.shared {
                shared.claiming.remove(&id);
            }
            let opened = act.finish_claim(id, msg, claim);
            act.flush(ctx);
            opened
        }))
    }

    fn finish_claim(
        &mut self,
        id: SessionId,
        msg: OpenSession,
        claim: Result<Claim, RedisUnavailable>,
    ) -> SessionOpened {
        let me = self
            .shared
            .as_ref()
            .map(|s| s.store.instance().to_string())
            .unwrap_or_default();
        let connection = msg.connection.clone();
        let conn_id = msg.conn_id;
        let opened = match claim {
            // This instance wrote it last: its own copy has all of it, and maybe more.
            Ok(Claim::Claimed {
                previous_writer, ..
            }) if previous_writer == me && self.state.knows(&id) => self.open_here(msg, Some(id)),
            Ok(Claim::Claimed {
                session,
                previous_writer,
            }) => {
                let (mut opened, previous, row) =
                    self.state.adopt(id, session, (msg.conn_id, msg.connection));
                opened.previous_instance = Some(previous_writer).filter(|p| *p != me);
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
            Ok(Claim::Ended) => {
                if let Some(stale) = self.state.forget(&id) {
                    stale.do_send(CloseConnection {
                        code: 1008,
                        reason: "session ended by an administrator".into(),
                        cancel_replies: None,
                    });
                }
                self.open_here(msg, None)
            }
            // Not in the store (opened during an outage, or the store lost it) or the store
            // is unreachable: this instance's own copy, if it has one, written whole.
            Ok(Claim::Missing) | Ok(Claim::Held { .. }) | Err(_) => {
                let opened = self.open_here(msg, Some(id));
                if opened.resumed {
                    self.state.rewrite_whole(&opened.id);
                }
                opened
            }
        };
        log::debug!(
            "event=session_claimed session={} resumed={}",
            opened.id,
            opened.resumed
        );
        // The socket may have gone while the claim ran; it will never detach what it never
        // learned it had.
        if !connection.connected() {
            if let Some(row) =
                self.state
                    .detach(&opened.id, conn_id, actix::clock::Instant::now(), now_ms())
            {
                self.persist(row);
            }
        }
        opened
    }

    /// Ends `id`, which is not attached here: through the store, or its holder.
    pub(super) fn end_shared(
        &mut self,
        id: SessionId,
    ) -> ResponseActFuture<Self, Result<(), AppError>> {
        let Some(shared) = &self.shared else {
            return Box::pin(fut::ready(self.end_here(&id)));
        };
        let store = shared.store.clone();
        let bus = shared.bus.clone();
        let end_id = id.clone();
        let ending = async move {
            let first = store.end(end_id.clone(), false).await?;
            let Ending::Held { instance } = first else {
                return Ok(EndedElsewhere::Store(first));
            };
            let Some(bus) = bus else {
                return Ok(EndedElsewhere::HolderSilent(instance));
            };
            let asked = bus
                .send(AskInstance {
                    instance: instance.clone(),
                    command: Command::EndSession {
                        session_id: end_id.to_string(),
                    },
                })
                .await;
            match asked {
                Ok(Ok(Answer::Done)) => Ok(EndedElsewhere::ByHolder),
                // The holder does not have it (it restarted): the store's record goes.
                Ok(Ok(Answer::NotFound)) => {
                    store.end(end_id, true).await.map(EndedElsewhere::Store)
                }
                _ => Ok(EndedElsewhere::HolderSilent(instance)),
            }
        };
        Box::pin(ending.into_actor(self).map(move |ending, act, _| {
            match ending {
                Ok(EndedElsewhere::ByHolder) => {
                    act.state.forget(&id);
                    Ok(())
                }
                Ok(EndedElsewhere::Store(Ending::Ended(ended))) => {
                    act.state.forget(&id);
                    if let Ok(user) = crate::domain::UserId::parse(&ended.user) {
                        act.persist(SessionRow {
                            id: ended.id,
                            user_id: user.to_string(),
                            started_at: ended.started_at_ms,
                            ended_at: Some(ended.ended_at_ms.unwrap_or_else(now_ms)),
                            messages: ended.messages,
                            avg_response_ms: ended.avg_response_ms,
                        });
                    }
                    Ok(())
                }
                Ok(EndedElsewhere::HolderSilent(instance)) => Err(AppError::Unavailable(format!(
                    "instance {instance}, which holds this session, did not answer; try again"
                ))),
                // Not in the store, or the store is unreachable: this instance's copy, if any.
                Ok(EndedElsewhere::Store(_)) | Err(_) => act.end_here(&id),
            }
        }))
    }

    /// After ending `id` here: its record in the store goes too, so no instance resumes it.
    pub(super) fn end_in_store(
        &mut self,
        id: SessionId,
        ended: Result<(), AppError>,
    ) -> ResponseActFuture<Self, Result<(), AppError>> {
        let Some(store) = self.store_if_up() else {
            return Box::pin(fut::ready(ended));
        };
        Box::pin(
            async move {
                if let Err(err) = store.end(id.clone(), true).await {
                    log::debug!("event=session_end_store_failed session={id} error={err}");
                }
                ended
            }
            .into_actor(self),
        )
    }

    /// A command from another instance about a session this instance holds.
    pub(super) fn on_remote_command(
        &mut self,
        command: Command,
        ctx: &mut Context<Self>,
    ) -> ResponseActFuture<Self, Answer> {
        let (Command::EndSession { session_id } | Command::TakeOverSession { session_id }) =
            &command
        else {
            return Box::pin(fut::ready(Answer::NotFound));
        };
        let Some(id) = SessionId::parse(session_id)
            .ok()
            .filter(|id| self.state.knows(id))
        else {
            return Box::pin(fut::ready(Answer::NotFound));
        };
        match command {
            Command::EndSession { .. } => {
                log::info!("event=session_ended_remotely session={id}");
                let ended = self.end_here(&id);
                Box::pin(self.end_in_store(id, ended).map(|ended, _, _| match ended {
                    Ok(()) => Answer::Done,
                    Err(_) => Answer::NotFound,
                }))
            }
            _ => {
                if let Some(connection) =
                    self.state
                        .let_go(&id, actix::clock::Instant::now(), now_ms())
                {
                    connection.do_send(CloseConnection {
                        code: 1008,
                        reason: "session resumed on another instance".into(),
                        cancel_replies: None,
                    });
                }
                log::info!("event=session_let_go session={id}");
                // The claimant reads the store next: what this instance had must be there.
                let written = self.flush_then(ctx);
                Box::pin(
                    async move {
                        let _ = tokio::time::timeout(LET_GO_WRITE_WAIT, written).await;
                    }
                    .into_actor(self)
                    .map(move |(), act, _| {
                        // The session is the claimant's now; a copy kept here would only be
                        // a stale one (unless a socket here resumed it again meanwhile).
                        if !act.state.is_attached(&id) {
                            act.state.forget(&id);
                        }
                        Answer::Done
                    }),
                )
            }
        }
    }

    /// Every instance's sessions, newest first; this instance's if the store fails.
    pub(super) fn list_shared(
        &mut self,
        msg: ListSessions,
    ) -> ResponseActFuture<Self, Vec<SessionSummary>> {
        let Some(store) = self.store_if_up() else {
            return Box::pin(fut::ready(self.state.list(
                msg.filter,
                msg.after.as_ref(),
                msg.limit,
            )));
        };
        let listed = store.list(msg.filter, msg.after.clone(), msg.limit);
        Box::pin(listed.into_actor(self).map(move |listed, act, _| {
            listed.unwrap_or_else(|err| {
                log::debug!("event=session_list_local error={err}");
                act.state.list(msg.filter, msg.after.as_ref(), msg.limit)
            })
        }))
    }

    /// Every instance's sessions counted; this instance's if the store fails.
    pub(super) fn count_shared(&mut self) -> ResponseActFuture<Self, SessionStats> {
        let Some(store) = self.store_if_up() else {
            return Box::pin(fut::ready(self.state.stats()));
        };
        Box::pin(store.stats().into_actor(self).map(|counted, act, _| {
            counted.unwrap_or_else(|err| {
                log::debug!("event=session_count_local error={err}");
                act.state.stats()
            })
        }))
    }

    /// Drops expired sessions from the store's indexes (each instance's cleanup does it).
    pub(super) fn prune_shared(&mut self, ctx: &mut Context<Self>) {
        if let Some(store) = self.store_if_up() {
            ctx.spawn(
                async move {
                    match store.prune().await {
                        Ok(dropped) => log::debug!("event=session_prune dropped={dropped}"),
                        Err(err) => log::debug!("event=session_prune_failed error={err}"),
                    }
                }
                .into_actor(self),
            );
        }
    }

    /// Renews the store's expiry of every session attached here.
    pub(super) fn refresh_shared(&mut self, ctx: &mut Context<Self>) {
        self.state.touch_attached();
        self.flush(ctx);
    }
}
