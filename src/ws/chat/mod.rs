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
use tokio::sync::oneshot;

use super::chat_frames::{self, ChatFrame};
use super::protocol::{ClientFrame, ServerFrame};
use super::transport::{wire_len, SocketWatch};
use crate::actors::connections::{
    CloseConnection, Connections, RegisterConnection, UnregisterConnection,
};
use crate::actors::session_registry::{DetachSession, OpenSession, SessionOpened, SessionRegistry};
use crate::actors::socket_watchdog::{
    CloseTarget, ExpectClose, SocketSession, SocketWatchdog, WatchSocket, CLOSE_WITHIN,
};
use crate::chat::{CancelReason, ChatEvent, ChatPipeline};
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

struct RunningChat {
    cancel: Option<oneshot::Sender<CancelReason>>,
}

/// An event of one running chat, tagged with its id.
struct ChatStreamItem {
    id: ChatId,
    event: ChatEvent,
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
}

impl WsConnection {
    fn send(&mut self, ctx: &mut ws::WebsocketContext<Self>, frame: &ServerFrame<'_>) {
        let text = frame.to_json();
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
        let mut events = handle.events;
        let stream_id = id.clone();
        ctx.add_stream(futures_util::stream::poll_fn(move |cx| {
            events.poll_recv(cx).map(|event| {
                event.map(|event| ChatStreamItem {
                    id: stream_id.clone(),
                    event,
                })
            })
        }));
        self.running.insert(
            id,
            RunningChat {
                cancel: Some(handle.cancel),
            },
        );
    }

    fn on_chat_event(&mut self, item: ChatStreamItem, ctx: &mut ws::WebsocketContext<Self>) {
        let id = item.id.as_str();
        match &item.event {
            ChatEvent::Delta(content) => {
                return self.send(ctx, &ServerFrame::Delta { id, content })
            }
            // No frame of their own: the whole calls come before `done`.
            ChatEvent::ToolCallsDelta(_) | ChatEvent::Refusal(_) | ChatEvent::Logprobs(_) => return,
            ChatEvent::Done { .. } => {
                for frame in chat_frames::ending(id, &item.event) {
                    self.send(ctx, &frame);
                }
            }
            ChatEvent::Error(err) => self.send(ctx, &ServerFrame::error(Some(id), err)),
        }
        self.running.remove(&item.id);
        self.close_if_drained(ctx);
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
    /// Sends the `session` frame, or closes when the registry did not answer.
    fn session_opened(
        &mut self,
        opened: Result<SessionOpened, MailboxError>,
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
                    },
                );
                if opened.resumed {
                    // A socket it took the session from may be frozen and unable to close.
                    self.watchdog.do_send(ExpectClose {
                        target: CloseTarget::Session(opened.id.clone()),
                        within: CLOSE_WITHIN,
                    });
                }
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
        // Nothing else is handled until the session frame is out: it must be the first frame.
        ctx.wait(
            self.registry
                .send(open)
                .into_actor(self)
                .map(|opened, act, ctx| act.session_opened(opened, ctx)),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.watch.actor_stopped();
        // Running replies notice their closed channels and record themselves as cancelled.
        if let Some(id) = self.session.take() {
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
