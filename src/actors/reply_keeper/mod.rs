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

mod frames;
mod held;
mod messages;
mod state;

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
pub use state::{KeeperLimits, KeeperStats, ReplyKeeperState, ReplyKey, ReplySummary, Resumed};

use crate::domain::CancelReason;

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
}

/// An event of a followed reply, tagged with its run.
struct KeptEvent {
    run: u64,
    event: ReplyEvent,
}

type Listing = oneshot::Sender<Vec<ReplySummary>>;

pub struct ReplyKeeper {
    state: ReplyKeeperState<Following, Listing>,
}

impl ReplyKeeper {
    pub fn new(limits: KeeperLimits) -> ReplyKeeper {
        ReplyKeeper {
            state: ReplyKeeperState::new(limits),
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
                .attach(msg.session, msg.conn_id, Some(listing), now)
        {
            let _ = listing.send(list);
        }
        Box::pin(async move { answer.await.unwrap_or_default() })
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
            let following = Following {
                key: key.clone(),
                held,
                spawn,
                cancel: reply.cancel,
            };
            let stop =
                self.state
                    .keep_running(key, msg.user.clone(), reply.frames, run, following, now);
            for following in stop {
                self.stop(following, ctx);
            }
        }
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
    type Result = MessageResult<ResumeReply>;

    fn handle(&mut self, msg: ResumeReply, ctx: &mut Context<Self>) -> Self::Result {
        let key = ReplyKey {
            session: msg.session,
            id: msg.id,
        };
        let answer = match self.state.resume(&key, msg.after_seq) {
            Resumed::NotFound => ResumeAnswer::NotFound,
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
                    }),
                    None => ResumeAnswer::NotFound,
                }
            }
        };
        MessageResult(answer)
    }
}

impl Handler<StopReplies> for ReplyKeeper {
    type Result = ();

    fn handle(&mut self, msg: StopReplies, ctx: &mut Context<Self>) {
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
    fn handle(&mut self, item: KeptEvent, _: &mut Context<Self>) {
        match item.event {
            ReplyEvent::Delta(content) => self.state.on_delta(item.run, &content),
            // Its stream ends by itself after the end; the handle has nothing left to stop.
            ReplyEvent::End(end) => drop(self.state.on_end(item.run, end, Instant::now())),
        }
    }

    /// One reply's events ended; the keeper goes on.
    fn finished(&mut self, _: &mut Context<Self>) {}
}

#[cfg(test)]
mod tests;
