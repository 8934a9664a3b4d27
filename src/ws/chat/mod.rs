//! The chat socket: one `WsConnection` actor per client (heartbeat, client frames in, reply
//! frames out). Inbound frame handling is in `inbound`, the upgrade in `handshake`.

pub mod handshake;
mod inbound;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;
use actix_web::web::BytesMut;
use actix_web_actors::ws::{self, CloseCode, CloseReason};
use futures_util::StreamExt;
use tokio::sync::oneshot;

use super::chat_frames::{self, ChatFrame};
use super::protocol::{ClientFrame, ServerFrame};
use super::transport::{wire_len, SocketWatch};
use crate::actors::connections::{
    CloseConnection, Connections, RegisterConnection, UnregisterConnection,
};
use crate::actors::reply_keeper::{
    hold, AttachSocket, DetachSocket, DetachedReply, Held, KeepEndedReply, ReplyEvent, ReplyFrames,
    ReplyKeeper, ReplyStream, ReplySummary, ResumeAnswer, ResumeReply, REPLY_MAX_BYTES,
};
use crate::actors::session_registry::{DetachSession, OpenSession, SessionOpened, SessionRegistry};
use crate::actors::socket_watchdog::{
    CloseTarget, ExpectClose, SocketSession, SocketWatchdog, WatchSocket, CLOSE_WITHIN,
};
use crate::app_state::AppState;
use crate::chat::{CancelReason, ChatPipeline};
use crate::domain::{ChatId, SessionId, UserId};
use crate::error::AppError;

/// The longest a closing connection waits for cancelled replies to send their last frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A chat client that leaves this much unread is cut off: far above any healthy backlog (a
/// reader keeps it near zero), small enough that thousands of stalled clients fit in memory.
const CHAT_MAX_BACKLOG_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
pub struct ConnectionSettings {
    pub heartbeat: Duration,
    pub client_timeout: Duration,
    pub max_frame_bytes: usize,
    /// Unsent bytes a chat client may leave waiting before it is disconnected.
    pub max_backlog_bytes: u64,
}

const BINARY_REFUSED: &str = "binary frames are not accepted; send JSON text frames";

enum Fragments {
    Text(BytesMut),
    Binary,
}

/// How long a `resume` waits for the reply keeper (an in-process actor, normally instant).
const RESUME_TIMEOUT: Duration = Duration::from_secs(5);

struct RunningChat {
    cancel: Option<oneshot::Sender<CancelReason>>,
    /// Its deltas so far, numbered: what a resume replays if this socket drops.
    frames: ReplyFrames,
    /// Takes its events back from the context when the socket goes and the reply does not.
    events: Held,
    /// The instance streaming it, when another one does (resumed from there).
    owner: Option<String>,
}

/// An event of one running chat, tagged with its id.
struct ChatStreamItem {
    id: ChatId,
    event: ReplyEvent,
}

/// The reply keeper, when replies outlive their socket (`CHATGATE_RESUME_GRACE_SECS` > 0);
/// with `None` a reply stops with its socket and nothing is kept.
pub(super) fn reply_keeper_of(state: &AppState) -> Option<Addr<ReplyKeeper>> {
    (state.settings.timers.resume_grace_secs > 0).then(|| state.reply_keeper.clone())
}

pub struct WsConnection {
    conn_id: u64,
    user: UserId,
    resume: Option<SessionId>,
    session: Option<SessionId>,
    pipeline: Arc<ChatPipeline>,
    registry: Addr<SessionRegistry>,
    connections: Addr<Connections>,
    settings: ConnectionSettings,
    last_heard: Instant,
    running: HashMap<ChatId, RunningChat>,
    /// A message arriving in fragments, until its last fragment.
    fragments: Option<Fragments>,
    closing: Option<CloseReason>,
    /// Bytes written for the client and bytes the socket has taken: the difference is what a
    /// client that stopped reading leaves in our memory.
    produced: u64,
    consumed: Arc<AtomicU64>,
    /// This socket's progress, read by the watchdog, which cuts it if it freezes.
    watch: Arc<SocketWatch>,
    watchdog: Addr<SocketWatchdog>,
    keeper: Option<Addr<ReplyKeeper>>,
}

impl WsConnection {
    fn send(&mut self, ctx: &mut ws::WebsocketContext<Self>, frame: &ServerFrame<'_>) {
        self.send_text(ctx, frame.to_json());
    }

    /// Sends an already serialized frame.
    fn send_text(&mut self, ctx: &mut ws::WebsocketContext<Self>, text: String) {
        self.produced += wire_len(text.len());
        ctx.text(text);
        let backlog = self
            .produced
            .saturating_sub(self.consumed.load(Ordering::Relaxed));
        if backlog > self.settings.max_backlog_bytes && self.closing.is_none() {
            log::warn!(
                "event=ws_slow_client conn_id={} user={} backlog_bytes={backlog}",
                self.conn_id,
                self.user
            );
            // Its replies end as cancelled when the actor stops; other clients are untouched.
            self.close(ctx, CloseCode::Policy, "client is not reading its frames");
        }
    }

    fn close(&mut self, ctx: &mut ws::WebsocketContext<Self>, code: CloseCode, reason: &str) {
        ctx.close(Some(CloseReason {
            code,
            description: Some(reason.to_string()),
        }));
        ctx.stop();
    }

    fn heartbeat(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        let silent = Instant::now().duration_since(self.last_heard);
        if silent > self.settings.client_timeout {
            log::info!(
                "event=ws_timeout conn_id={} user={} silent_ms={}",
                self.conn_id,
                self.user,
                silent.as_millis()
            );
            self.close(ctx, CloseCode::Policy, "client silent past the timeout");
            return;
        }
        ctx.ping(b"");
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        match ClientFrame::parse(text) {
            Ok(ClientFrame::Ping) => self.send(ctx, &ServerFrame::Pong),
            Ok(ClientFrame::Cancel { id }) => {
                // A cancel for a reply that already ended is ignored: after its `done` or
                // `error`, no more frames may name that id.
                if let Some(cancel) = self.running.get_mut(&id).and_then(|r| r.cancel.take()) {
                    let _ = cancel.send(CancelReason::Client);
                }
            }
            Ok(ClientFrame::Chat(chat)) => self.start_chat(chat, ctx),
            Ok(ClientFrame::Resume { id, after_seq }) => self.resume(id, after_seq, ctx),
            Err(err) => {
                let frame =
                    ServerFrame::bad_request(err.id.as_ref().map(ChatId::as_str), &err.message);
                self.send(ctx, &frame);
            }
        }
    }

    fn start_chat(&mut self, chat: ChatFrame, ctx: &mut ws::WebsocketContext<Self>) {
        let id = chat.id.clone();
        if self.closing.is_some() {
            let err = AppError::Unavailable("the connection is closing".into());
            return self.send(ctx, &ServerFrame::error(Some(id.as_str()), &err));
        }
        if self.running.contains_key(&id) {
            let frame = ServerFrame::bad_request(
                Some(id.as_str()),
                "a reply with this id is still running; use another id",
            );
            return self.send(ctx, &frame);
        }
        let Some(session) = self.session.clone() else {
            let err = AppError::Unavailable("the session is not open".into());
            return self.send(ctx, &ServerFrame::error(Some(id.as_str()), &err));
        };
        let handle = self
            .pipeline
            .start(chat.into_request(self.user.clone(), session));
        let events = chat_frames::reply_stream(id.clone(), handle.events);
        // Without a keeper nothing is resumable: deltas are only numbered, not kept.
        let cap = if self.keeper.is_some() {
            REPLY_MAX_BYTES
        } else {
            0
        };
        let frames = ReplyFrames::new(cap);
        self.follow(id, events, Some(handle.cancel), frames, None, ctx);
    }

    /// Relays reply `id` from `events` on, numbering its deltas after those in `frames`.
    fn follow(
        &mut self,
        id: ChatId,
        events: ReplyStream,
        cancel: Option<oneshot::Sender<CancelReason>>,
        frames: ReplyFrames,
        owner: Option<String>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let (held, events) = hold(events);
        let tag = id.clone();
        ctx.add_stream(events.map(move |event| ChatStreamItem {
            id: tag.clone(),
            event,
        }));
        self.running.insert(
            id,
            RunningChat {
                cancel,
                frames,
                events: held,
                owner,
            },
        );
    }

    fn on_chat_event(&mut self, item: ChatStreamItem, ctx: &mut ws::WebsocketContext<Self>) {
        match item.event {
            ReplyEvent::Delta(content) => {
                let Some(running) = self.running.get_mut(&item.id) else {
                    return;
                };
                let seq = running.frames.push(&content);
                let id = item.id.as_str();
                self.send(
                    ctx,
                    &ServerFrame::Delta {
                        id,
                        seq,
                        content: &content,
                    },
                );
            }
            ReplyEvent::End(end) => {
                for frame in &end.frames {
                    self.send_text(ctx, frame.clone());
                }
                if let Some(running) = self.running.remove(&item.id) {
                    self.keep_ended(item.id, running.frames, end);
                }
                self.close_if_drained(ctx);
            }
        }
    }

    /// An ended reply stays resumable for the grace: the client may have missed its last
    /// frames if the connection drops now.
    fn keep_ended(
        &self,
        id: ChatId,
        frames: ReplyFrames,
        end: crate::actors::reply_keeper::ReplyEnd,
    ) {
        let (Some(keeper), Some(session)) = (&self.keeper, &self.session) else {
            return;
        };
        let keep = KeepEndedReply {
            session: session.clone(),
            id,
            user: self.user.clone(),
            frames,
            end,
        };
        // Never waits: a keeper this far behind loses a resume, not a chat.
        if keeper.try_send(keep).is_err() {
            log::warn!(
                "event=reply_not_kept conn_id={} reason=keeper_mailbox_full",
                self.conn_id
            );
        }
    }

    /// `resume`: the reply's deltas after `after_seq`, its end if it ended, and, while it
    /// runs, the rest as it comes.
    fn resume(&mut self, id: ChatId, after_seq: u64, ctx: &mut ws::WebsocketContext<Self>) {
        if self.closing.is_some() {
            let err = AppError::Unavailable("the connection is closing".into());
            return self.send(ctx, &ServerFrame::error(Some(id.as_str()), &err));
        }
        // A reply this socket streams itself: replay from its own frames; live ones follow.
        if let Some(running) = self.running.remove(&id) {
            self.replay(&id, &running.frames, after_seq, ctx);
            self.running.insert(id, running);
            return;
        }
        let (Some(keeper), Some(session)) = (self.keeper.clone(), self.session.clone()) else {
            return self.reply_not_found(&id, ctx);
        };
        let ask = ResumeReply {
            session,
            id: id.clone(),
            after_seq,
        };
        // Nothing else is handled meanwhile: a `cancel` right behind this `resume` must find
        // the reply already running here.
        ctx.wait(
            keeper
                .send(ask)
                .timeout(RESUME_TIMEOUT)
                .into_actor(self)
                .map(move |answer, act, ctx| act.resumed(id, after_seq, answer, ctx)),
        );
    }

    fn resumed(
        &mut self,
        id: ChatId,
        after_seq: u64,
        answer: Result<ResumeAnswer, MailboxError>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        match answer {
            Err(err) => {
                let err = AppError::unavailable_mailbox("reply_keeper", err);
                self.send(ctx, &ServerFrame::error(Some(id.as_str()), &err));
            }
            Ok(ResumeAnswer::NotFound) => self.reply_not_found(&id, ctx),
            Ok(ResumeAnswer::Ended { deltas, end }) => {
                for (seq, content) in &deltas {
                    let frame = ServerFrame::Delta {
                        id: id.as_str(),
                        seq: *seq,
                        content,
                    };
                    self.send(ctx, &frame);
                }
                for frame in end.frames {
                    self.send_text(ctx, frame);
                }
            }
            Ok(ResumeAnswer::Running(reply)) => {
                log::debug!(
                    "event=reply_resumed conn_id={} id={} after_seq={after_seq}",
                    self.conn_id,
                    reply.id
                );
                self.replay(&reply.id, &reply.frames, after_seq, ctx);
                let DetachedReply {
                    id,
                    frames,
                    events,
                    cancel,
                    owner,
                } = reply;
                self.follow(id, events, cancel, frames, owner, ctx);
            }
        }
    }

    /// Sends the deltas of `frames` after `after_seq` (`not_found` if one was dropped).
    fn replay(
        &mut self,
        id: &ChatId,
        frames: &ReplyFrames,
        after_seq: u64,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        let Some(deltas) = frames.after(after_seq) else {
            return self.reply_not_found(id, ctx);
        };
        for (seq, content) in deltas {
            let frame = ServerFrame::Delta {
                id: id.as_str(),
                seq,
                content,
            };
            self.send(ctx, &frame);
        }
    }

    fn reply_not_found(&mut self, id: &ChatId, ctx: &mut ws::WebsocketContext<Self>) {
        let err = AppError::NotFound(format!(
            "no reply {id:?} is kept for this session (unknown, ended more than \
             CHATGATE_RESUME_GRACE_SECS ago, or its earlier deltas were dropped)"
        ));
        self.send(ctx, &ServerFrame::error(Some(id.as_str()), &err));
    }

    /// Starts closing: running replies are cancelled and the close follows their last frames.
    fn begin_close(&mut self, msg: CloseConnection, ctx: &mut ws::WebsocketContext<Self>) {
        let reason = CloseReason {
            code: CloseCode::from(msg.code),
            description: Some(msg.reason),
        };
        match msg.cancel_replies {
            Some(cancel_reason) if !self.running.is_empty() => {
                for running in self.running.values_mut() {
                    if let Some(cancel) = running.cancel.take() {
                        let _ = cancel.send(cancel_reason);
                    }
                }
                self.closing = Some(reason);
                ctx.run_later(CLOSE_GRACE, |act, ctx| {
                    if let Some(reason) = act.closing.take() {
                        ctx.close(Some(reason));
                        ctx.stop();
                    }
                });
            }
            _ => {
                ctx.close(Some(reason));
                ctx.stop();
            }
        }
    }

    fn close_if_drained(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        if self.running.is_empty() {
            if let Some(reason) = self.closing.take() {
                ctx.close(Some(reason));
                ctx.stop();
            }
        }
    }
}

impl WsConnection {
    /// Opens (or resumes) the session; a resumed one also learns its kept replies, once a
    /// socket it took the session from has handed them over. Then the `session` frame.
    async fn open_session(
        open: OpenSession,
        registry: Addr<SessionRegistry>,
        keeper: Option<Addr<ReplyKeeper>>,
        watchdog: Addr<SocketWatchdog>,
    ) -> (
        Result<SessionOpened, MailboxError>,
        Option<Vec<ReplySummary>>,
    ) {
        let conn_id = open.conn_id;
        let opened = match registry.send(open).await {
            Ok(opened) => opened,
            Err(err) => return (Err(err), None),
        };
        if opened.resumed {
            // A socket it took the session from may be frozen and unable to close (and to
            // hand its replies over, which the listing below waits for).
            watchdog.do_send(ExpectClose {
                target: CloseTarget::Session(opened.id.clone()),
                within: CLOSE_WITHIN,
            });
        }
        let attach = |listing| AttachSocket {
            session: opened.id.clone(),
            conn_id,
            listing,
            previous_instance: opened.previous_instance.clone(),
        };
        let replies = match (&keeper, opened.resumed) {
            (Some(keeper), true) => Some(keeper.send(attach(true)).await.unwrap_or_default()),
            (Some(keeper), false) => {
                keeper.do_send(attach(false));
                None
            }
            (None, resumed) => resumed.then(Vec::new),
        };
        (Ok(opened), replies)
    }

    /// Sends the `session` frame, or closes when the registry did not answer.
    fn session_opened(
        &mut self,
        opened: Result<SessionOpened, MailboxError>,
        replies: Option<Vec<ReplySummary>>,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
        match opened {
            Ok(opened) => {
                log::debug!(
                    "event=ws_open conn_id={} user={} session={} resumed={}",
                    self.conn_id,
                    self.user,
                    opened.id,
                    opened.resumed
                );
                self.send(
                    ctx,
                    &ServerFrame::Session {
                        session_id: opened.id.as_str(),
                        resumed: opened.resumed,
                        replies: replies.as_deref(),
                    },
                );
                self.watchdog.do_send(SocketSession {
                    conn_id: self.conn_id,
                    session: opened.id.clone(),
                });
                self.session = Some(opened.id);
            }
            Err(err) => {
                log::warn!(
                    "event=ws_session_failed conn_id={} error={err}",
                    self.conn_id
                );
                self.close(ctx, CloseCode::Error, "session registry unavailable");
            }
        }
    }
}

impl Actor for WsConnection {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
        self.connections.do_send(RegisterConnection {
            conn_id: self.conn_id,
            user: self.user.clone(),
            connection: ctx.address().recipient(),
        });
        self.watchdog.do_send(WatchSocket {
            conn_id: self.conn_id,
            user: self.user.clone(),
            socket: self.watch.clone(),
        });
        let heartbeat = self.settings.heartbeat;
        ctx.run_interval(heartbeat, |act, ctx| act.heartbeat(ctx));
        let open = OpenSession {
            user: self.user.clone(),
            resume: self.resume.take(),
            conn_id: self.conn_id,
            connection: ctx.address().recipient(),
        };
        let opening = Self::open_session(
            open,
            self.registry.clone(),
            self.keeper.clone(),
            self.watchdog.clone(),
        );
        // Nothing else is handled until the session frame is out: it must be the first frame.
        ctx.wait(
            opening
                .into_actor(self)
                .map(|(opened, replies), act, ctx| act.session_opened(opened, replies, ctx)),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.watch.actor_stopped();
        if let Some(id) = self.session.take() {
            self.hand_over_replies(&id);
            self.registry.do_send(DetachSession {
                id,
                conn_id: self.conn_id,
            });
        }
        self.connections.do_send(UnregisterConnection {
            conn_id: self.conn_id,
        });
        log::debug!(
            "event=ws_closed conn_id={} user={}",
            self.conn_id,
            self.user
        );
    }
}

impl WsConnection {
    /// The socket goes without a `cancel`: its running replies go on with the keeper, frames
    /// and unread events together. Without a keeper (grace 0) they are dropped here, and each
    /// notices its closed channel, stops upstream and records itself as cancelled.
    fn hand_over_replies(&mut self, session: &SessionId) {
        let Some(keeper) = &self.keeper else {
            return;
        };
        let replies = self
            .running
            .drain()
            .filter_map(|(id, running)| {
                Some(DetachedReply {
                    id,
                    frames: running.frames,
                    events: running.events.take()?,
                    cancel: running.cancel,
                    owner: running.owner,
                })
            })
            .collect();
        // do_send: the hand-over must not be lost to a full mailbox, or the replies stop.
        keeper.do_send(DetachSocket {
            session: session.clone(),
            conn_id: self.conn_id,
            user: self.user.clone(),
            replies,
        });
    }
}

impl StreamHandler<ChatStreamItem> for WsConnection {
    fn handle(&mut self, item: ChatStreamItem, ctx: &mut Self::Context) {
        self.on_chat_event(item, ctx);
    }

    /// One chat's events ended; the connection goes on.
    fn finished(&mut self, _: &mut Self::Context) {}
}

impl Handler<CloseConnection> for WsConnection {
    type Result = ();

    fn handle(&mut self, msg: CloseConnection, ctx: &mut Self::Context) {
        log::info!(
            "event=ws_close conn_id={} user={} code={} reason={}",
            self.conn_id,
            self.user,
            msg.code,
            msg.reason
        );
        self.begin_close(msg, ctx);
    }
}
