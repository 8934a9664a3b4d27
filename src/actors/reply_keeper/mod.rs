//! Replies belong to their session, not to a socket. A socket streams its own replies and
//! keeps their frames itself (no message per delta); the keeper only gets a reply when it
//! leaves a socket — ended (one message per chat, so the client can fetch frames it may have
//! missed) or still running when the socket went (the keeper then follows its events until a
//! socket of the session resumes it, or stops it when the grace is over). A resume takes a
//! running reply back out of the keeper in one turn, frames and event stream together, so the
//! resuming socket continues exactly where the keeper stopped reading: no gap, no duplicate.
//!
//! Everything kept is bounded: per reply (`REPLY_MAX_BYTES` of deltas, oldest dropped first)
//! and per instance (`KEPT_MAX_BYTES`: ended replies go oldest first, then running ones lose
//! their oldest deltas). A resume needing a dropped delta gets `not_found`.
//!
//! In cluster mode the keeper also mirrors what it keeps to Redis (see `mirror`): a session
//! resumed on another instance lists and resumes its replies from there, while this instance,
//! their owner, goes on streaming them. The instances speak through the cluster bus: the new
//! holder asks the old one to export the session's replies, tells the owner when one of its
//! sockets holds a reply (no grace stop meanwhile) and when the client cancels it.

mod frames;
mod held;
mod messages;
mod mirror;
mod state;

use std::collections::HashSet;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;
use futures_util::StreamExt;
use tokio::sync::oneshot;

pub use frames::{ReplyEnd, ReplyEvent, ReplyFrames, ReplyState, ReplyStream};
pub use held::{hold, Held, HeldStream};
pub use messages::{
    AttachSocket, DetachSocket, DetachedReply, GetKeeperStats, KeepEndedReply, ResumeAnswer,
    ResumeReply, StopReplies,
};
pub use mirror::{GoneEnd, ReplyMirror, STREAM_MAX_ENTRIES};
pub use state::{
    Export, KeeperLimits, KeeperStats, ReplyKeeperState, ReplyKey, ReplySummary, Resumed,
};

use crate::actors::cluster_bus::{AskInstance, RemoteCommand};
use crate::cluster::protocol::{Answer, Command};
use crate::domain::{CancelReason, ChatId, SessionId, UserId};
use mirror::MirrorOp;

/// Deltas kept per reply: far above a long answer's text (a 4,000-token reply is ~16 KiB),
/// small enough that thousands of replies fit.
pub const REPLY_MAX_BYTES: usize = 1 << 20;

/// Everything kept on one instance, ended and running replies together.
pub const KEPT_MAX_BYTES: usize = 64 << 20;

/// How long a resumed session's `session` frame waits for the socket it took the session
/// from to hand its replies over: that socket was told to close at once, and the watchdog
/// cuts one that cannot within `CLOSE_WITHIN` (1 s).
pub const ATTACH_WAIT: Duration = Duration::from_secs(2);

/// A reply the keeper follows while no socket holds it.
pub struct Following {
    key: ReplyKey,
    held: Held,
    spawn: SpawnHandle,
    cancel: Option<oneshot::Sender<CancelReason>>,
    /// Another instance streams it (its frames come through Redis).
    owner: Option<String>,
}

/// An event of a followed reply, tagged with its run.
struct KeptEvent {
    run: u64,
    event: ReplyEvent,
}

type Listing = oneshot::Sender<Vec<ReplySummary>>;
type ResumeFuture = Pin<Box<dyn std::future::Future<Output = ResumeAnswer>>>;
type RemoteAnswer = ResponseActFuture<ReplyKeeper, Answer>;

/// The events of a reply another instance streams, held by a socket or the keeper here. If it
/// goes before its end (the socket dropped again and the grace ran out, or an admin stopped
/// it), the owner is told, so that it stops the reply after its own grace.
struct HeldElsewhere {
    events: ReplyStream,
    release: Option<(Recipient<AskInstance>, AskInstance)>,
}

impl futures_util::Stream for HeldElsewhere {
    type Item = ReplyEvent;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<ReplyEvent>> {
        let polled = self.events.as_mut().poll_next(cx);
        if let Poll::Ready(Some(ReplyEvent::End(_)) | None) = &polled {
            self.release = None;
        }
        polled
    }
}

impl Drop for HeldElsewhere {
    fn drop(&mut self) {
        if let Some((bus, release)) = self.release.take() {
            bus.do_send(release);
        }
    }
}

pub struct ReplyKeeper {
    state: ReplyKeeperState<Following, Listing>,
    cluster: Option<Mirroring>,
}

/// Cluster mode: the mirror, its write queue (one write in flight; what comes meanwhile goes
/// with the next) and the bus to the other instances.
struct Mirroring {
    mirror: ReplyMirror,
    bus: Recipient<AskInstance>,
    queue: Vec<MirrorOp>,
    writing: bool,
    /// Told when everything queued before they asked is written.
    waiting: Vec<oneshot::Sender<()>>,
}

impl ReplyKeeper {
    pub fn new(limits: KeeperLimits) -> ReplyKeeper {
        ReplyKeeper {
            state: ReplyKeeperState::new(limits),
            cluster: None,
        }
    }

    /// Cluster mode: kept replies are mirrored to Redis and resumable on every instance.
    pub fn mirrored(mut self, mirror: ReplyMirror, bus: Recipient<AskInstance>) -> ReplyKeeper {
        self.cluster = Some(Mirroring {
            mirror,
            bus,
            queue: Vec::new(),
            writing: false,
            waiting: Vec::new(),
        });
        self
    }

    fn mirror(&mut self, op: MirrorOp, ctx: &mut Context<Self>) {
        if let Some(cluster) = &mut self.cluster {
            cluster.queue.push(op);
            self.write_mirror(ctx);
        }
    }

    /// Copies the session's kept replies to the mirror (those not there yet).
    fn export_session(&mut self, session: &SessionId, ctx: &mut Context<Self>) {
        if !self.cluster.as_ref().is_some_and(|c| c.mirror.is_up()) {
            return;
        }
        for export in self.state.export_session(session) {
            self.mirror(MirrorOp::Export(export), ctx);
        }
    }

    /// Resolves once everything mirrored so far is written (or failed).
    fn mirror_written(&mut self, ctx: &mut Context<Self>) -> oneshot::Receiver<()> {
        let (written, done) = oneshot::channel();
        if let Some(cluster) = &mut self.cluster {
            cluster.waiting.push(written);
        }
        self.write_mirror(ctx);
        done
    }

    fn write_mirror(&mut self, ctx: &mut Context<Self>) {
        let Some(cluster) = &mut self.cluster else {
            return;
        };
        if cluster.writing {
            return;
        }
        if cluster.queue.is_empty() {
            for waiter in cluster.waiting.drain(..) {
                let _ = waiter.send(());
            }
            return;
        }
        cluster.writing = true;
        let ops = std::mem::take(&mut cluster.queue);
        let done = std::mem::take(&mut cluster.waiting);
        let mirror = cluster.mirror.clone();
        let write = async move { mirror.write(ops).await };
        ctx.spawn(write.into_actor(self).map(move |written, act, ctx| {
            if let Err(err) = written {
                log::debug!("event=reply_mirror_write_failed error={err}");
            }
            for waiter in done {
                let _ = waiter.send(());
            }
            if let Some(cluster) = &mut act.cluster {
                cluster.writing = false;
            }
            act.write_mirror(ctx);
        }));
    }

    /// A resume of a reply not kept here: another instance may have exported it.
    fn resume_elsewhere(&self, key: ReplyKey, after_seq: u64) -> ResumeFuture {
        let Some(cluster) = &self.cluster else {
            return Box::pin(std::future::ready(ResumeAnswer::NotFound));
        };
        let mirror = cluster.mirror.clone();
        let bus = cluster.bus.clone();
        Box::pin(async move {
            let Ok(Some(fetched)) = mirror.fetch(&key).await else {
                return ResumeAnswer::NotFound;
            };
            if after_seq.saturating_add(1) < fetched.first_seq {
                return ResumeAnswer::NotFound;
            }
            if let Some(end) = fetched.end {
                let deltas = fetched
                    .deltas
                    .into_iter()
                    .filter(|(seq, _)| *seq > after_seq)
                    .collect();
                return ResumeAnswer::Ended { deltas, end };
            }
            let owner = fetched.owner;
            let held = |held| AskInstance {
                instance: owner.clone(),
                command: Command::ReplyHeld {
                    session_id: key.session.to_string(),
                    id: key.id.to_string(),
                    held,
                },
            };
            // Before the first frame: from now the owner must not stop it for want of a socket.
            let _ = bus.send(held(true)).await;
            let mut frames = ReplyFrames::starting_at(fetched.first_seq, REPLY_MAX_BYTES);
            for (_, text) in &fetched.deltas {
                frames.push(text);
            }
            let events = HeldElsewhere {
                events: mirror.follow(&key, owner.clone(), fetched.last_entry),
                release: Some((bus.clone(), held(false))),
            };
            let (cancel, cancelled) = oneshot::channel();
            let forward = AskInstance {
                instance: owner.clone(),
                command: Command::CancelReply {
                    session_id: key.session.to_string(),
                    id: key.id.to_string(),
                },
            };
            actix::spawn(async move {
                // Dropped unsent when the reply ends or stops: nothing to forward.
                if cancelled.await.is_ok() {
                    let _ = bus.send(forward).await;
                }
            });
            log::debug!(
                "event=reply_resumed_elsewhere session={} id={} owner={owner} after_seq={after_seq}",
                key.session,
                key.id
            );
            ResumeAnswer::Running(DetachedReply {
                id: key.id,
                frames,
                events: Box::pin(events),
                cancel: Some(cancel),
                owner: Some(owner),
            })
        })
    }

    /// A command of another instance about replies kept here.
    fn on_remote(&mut self, command: Command) -> RemoteAnswer {
        let now = Instant::now();
        let reply_key = |session_id: &str, id: &str| {
            Some(ReplyKey {
                session: SessionId::parse(session_id).ok()?,
                id: ChatId::parse(id).ok()?,
            })
        };
        match command {
            Command::ExportReplies { session_id } => {
                let Ok(session) = SessionId::parse(&session_id) else {
                    return Box::pin(fut::ready(Answer::NotFound));
                };
                // A socket here may still hold the session, about to hand its replies over.
                let (listing, unattached) = oneshot::channel();
                if let Some(listing) = self.state.when_unattached(&session, listing, now) {
                    let _ = listing.send(Vec::new());
                }
                Box::pin(
                    async move {
                        let _ = unattached.await;
                    }
                    .into_actor(self)
                    .then(move |(), act, ctx| {
                        act.export_session(&session, ctx);
                        let written = act.mirror_written(ctx);
                        async move {
                            let _ = written.await;
                            Answer::Done
                        }
                        .into_actor(act)
                    }),
                )
            }
            Command::ReplyHeld {
                session_id,
                id,
                held,
            } => {
                let found = reply_key(&session_id, &id)
                    .is_some_and(|key| self.state.set_held_elsewhere(&key, held, now));
                Box::pin(fut::ready(if found {
                    Answer::Done
                } else {
                    Answer::NotFound
                }))
            }
            Command::CancelReply { session_id, id } => {
                let cancel = reply_key(&session_id, &id)
                    .and_then(|key| self.state.running_mut(&key))
                    .and_then(|following| following.cancel.take());
                let answer = match cancel {
                    Some(cancel) => {
                        let _ = cancel.send(CancelReason::Client);
                        Answer::Done
                    }
                    None => Answer::NotFound,
                };
                Box::pin(fut::ready(answer))
            }
            _ => Box::pin(fut::ready(Answer::NotFound)),
        }
    }

    /// Stops a reply: its event stream and cancel handle go, so the pipeline sees its client
    /// gone — the upstream request is dropped and the chat recorded as cancelled.
    fn stop(&mut self, following: Following, ctx: &mut Context<Self>) {
        drop(following.held.take());
        ctx.cancel_future(following.spawn);
    }

    fn answer(answers: Vec<(Listing, Vec<ReplySummary>)>) {
        for (listing, list) in answers {
            let _ = listing.send(list);
        }
    }

    fn sweep(&mut self, ctx: &mut Context<Self>) {
        let swept = self.state.sweep(Instant::now());
        for following in swept.stop {
            log::info!(
                "event=reply_unresumed session={} id={} grace_secs={}",
                following.key.session,
                following.key.id,
                self.state.limits().grace.as_secs()
            );
            self.stop(following, ctx);
        }
        Self::answer(swept.answers);
    }
}

impl Actor for ReplyKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // One message per ended chat: room for bursts, never waited on by a socket.
        ctx.set_mailbox_capacity(65_536);
        let every = (self.state.limits().grace / 4)
            .clamp(Duration::from_millis(50), Duration::from_secs(1));
        ctx.run_interval(every, |act, ctx| act.sweep(ctx));
        log::info!("event=actor_started actor=reply_keeper");
    }
}

impl Handler<AttachSocket> for ReplyKeeper {
    type Result = ResponseFuture<Vec<ReplySummary>>;

    fn handle(&mut self, msg: AttachSocket, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        if !msg.listing {
            self.state.attach(msg.session, msg.conn_id, None, now);
            return Box::pin(std::future::ready(Vec::new()));
        }
        let (listing, answer) = oneshot::channel();
        if let Some((listing, list)) =
            self.state
                .attach(msg.session.clone(), msg.conn_id, Some(listing), now)
        {
            let _ = listing.send(list);
        }
        let local = async move { answer.await.unwrap_or_default() };
        let Some(cluster) = &self.cluster else {
            return Box::pin(local);
        };
        // Also the replies other instances keep: the one that had the session exports its own
        // first (a socket there may be handing them over right now).
        let mirror = cluster.mirror.clone();
        let bus = cluster.bus.clone();
        let previous = msg
            .previous_instance
            .filter(|previous| previous != mirror.instance());
        let session = msg.session;
        Box::pin(async move {
            let mut list: Vec<ReplySummary> = local.await;
            if let Some(previous) = previous {
                let export = AskInstance {
                    instance: previous,
                    command: Command::ExportReplies {
                        session_id: session.to_string(),
                    },
                };
                let _ = bus.send(export).await;
            }
            let here: HashSet<ChatId> = list.iter().map(|reply| reply.id.clone()).collect();
            if let Ok(elsewhere) = mirror.summaries(&session, &here).await {
                list.extend(elsewhere.into_iter().map(|(_, reply)| reply));
            }
            list
        })
    }
}

impl Handler<DetachSocket> for ReplyKeeper {
    type Result = ();

    fn handle(&mut self, msg: DetachSocket, ctx: &mut Context<Self>) {
        let now = Instant::now();
        for reply in msg.replies {
            let run = self.state.next_run();
            let key = ReplyKey {
                session: msg.session.clone(),
                id: reply.id,
            };
            log::debug!(
                "event=reply_detached session={} id={} last_seq={}",
                key.session,
                key.id,
                reply.frames.last_seq()
            );
            let (held, events) = hold(reply.events);
            let spawn = ctx.add_stream(events.map(move |event| KeptEvent { run, event }));
            let foreign = reply.owner.is_some();
            let following = Following {
                key: key.clone(),
                held,
                spawn,
                cancel: reply.cancel,
                owner: reply.owner,
            };
            let stop = self.state.keep_running(
                key.clone(),
                msg.user.clone(),
                reply.frames,
                run,
                following,
                now,
            );
            if foreign {
                self.state.mark_foreign(&key);
            }
            for following in stop {
                self.stop(following, ctx);
            }
        }
        // The client may come back on another instance: its replies go where that one looks.
        self.export_session(&msg.session, ctx);
        Self::answer(self.state.detach(&msg.session, msg.conn_id));
    }
}

impl Handler<KeepEndedReply> for ReplyKeeper {
    type Result = ();

    fn handle(&mut self, msg: KeepEndedReply, ctx: &mut Context<Self>) {
        let key = ReplyKey {
            session: msg.session,
            id: msg.id,
        };
        let stop = self
            .state
            .keep_ended(key, msg.user, msg.frames, msg.end, Instant::now());
        for following in stop {
            self.stop(following, ctx);
        }
    }
}

impl Handler<ResumeReply> for ReplyKeeper {
    type Result = ResponseFuture<ResumeAnswer>;

    fn handle(&mut self, msg: ResumeReply, ctx: &mut Context<Self>) -> Self::Result {
        let key = ReplyKey {
            session: msg.session,
            id: msg.id,
        };
        let answer = match self.state.resume(&key, msg.after_seq) {
            Resumed::NotFound => return self.resume_elsewhere(key, msg.after_seq),
            Resumed::Ended { deltas, end } => ResumeAnswer::Ended { deltas, end },
            Resumed::Running {
                frames, running, ..
            } => {
                // Taken in this turn: every event the keeper read is in `frames`, every later
                // one is still in the stream the socket gets.
                let events = running.held.take();
                ctx.cancel_future(running.spawn);
                match events {
                    Some(events) => ResumeAnswer::Running(DetachedReply {
                        id: key.id,
                        frames,
                        events,
                        cancel: running.cancel,
                        owner: running.owner,
                    }),
                    None => ResumeAnswer::NotFound,
                }
            }
        };
        Box::pin(std::future::ready(answer))
    }
}

impl Handler<RemoteCommand> for ReplyKeeper {
    type Result = ResponseActFuture<Self, Answer>;

    fn handle(&mut self, msg: RemoteCommand, ctx: &mut Context<Self>) -> Self::Result {
        if let Command::StopReplies {
            session_id,
            user_id,
        } = &msg.0
        {
            let session = session_id
                .as_deref()
                .and_then(|id| SessionId::parse(id).ok());
            let user = user_id.as_deref().and_then(|id| UserId::parse(id).ok());
            if let Some(session) = session {
                self.stop_replies(StopReplies::Session(session), ctx);
            }
            if let Some(user) = user {
                self.stop_replies(StopReplies::User(user), ctx);
            }
            return Box::pin(fut::ready(Answer::Done));
        }
        self.on_remote(msg.0)
    }
}

impl Handler<StopReplies> for ReplyKeeper {
    type Result = ();

    fn handle(&mut self, msg: StopReplies, ctx: &mut Context<Self>) {
        self.stop_replies(msg, ctx);
    }
}

impl ReplyKeeper {
    fn stop_replies(&mut self, msg: StopReplies, ctx: &mut Context<Self>) {
        let now = Instant::now();
        let stop = match &msg {
            StopReplies::Session(session) => self.state.stop_session(session, now),
            StopReplies::User(user) => self.state.stop_user(user, now),
        };
        if !stop.is_empty() {
            log::info!("event=replies_stopped by={msg:?} count={}", stop.len());
        }
        for following in stop {
            self.stop(following, ctx);
        }
    }
}

impl Handler<GetKeeperStats> for ReplyKeeper {
    type Result = MessageResult<GetKeeperStats>;

    fn handle(&mut self, _: GetKeeperStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.stats())
    }
}

impl StreamHandler<KeptEvent> for ReplyKeeper {
    fn handle(&mut self, item: KeptEvent, ctx: &mut Context<Self>) {
        match item.event {
            ReplyEvent::Delta(content) => {
                if let Some((key, seq)) = self.state.on_delta(item.run, &content) {
                    let text = content;
                    self.mirror(MirrorOp::Delta { key, seq, text }, ctx);
                }
            }
            ReplyEvent::End(end) => {
                if let Some((key, last_seq)) = self.state.exported_run(item.run) {
                    let end = end.clone();
                    self.mirror(MirrorOp::End { key, last_seq, end }, ctx);
                }
                // Its stream ends by itself after the end; the handle has nothing left to stop.
                drop(self.state.on_end(item.run, end, Instant::now()));
            }
        }
    }

    /// One reply's events ended; the keeper goes on.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

#[cfg(test)]
mod tests;
