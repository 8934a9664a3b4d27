//! One actor per WebSocket: `WsConnection` for chat (handshake checks, the heartbeat, client
//! frames in, reply frames out) and `AdminFeedConnection` for the live metrics feed. This is
//! the only module that uses `actix-web-actors` (deprecated upstream in favour of
//! `actix-ws`), so moving off it touches this file alone.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;
use actix_web::web::{self, BytesMut};
use actix_web::{get, HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, CloseCode, CloseReason, ProtocolError};
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::actors::session_registry::{DetachSession, OpenSession, SessionRegistry};
use crate::actors::ws_hub::{
    CheckOrigin, FeedDelivery, RegisterConnection, Subscribe, UnregisterConnection, Unsubscribe,
    WsHub,
};
use crate::auth::authenticate;
use crate::chat::{CancelReason, ChatEvent, ChatPipeline, ChatRequest, HistorySource};
use crate::domain::{ChatId, SessionId, UserId};
use crate::error::{AppError, ErrorBody};
use crate::http::openapi::AdminRefusals;
use crate::startup::AppState;
use crate::ws::protocol::{ClientFrame, ServerFrame};

/// Closes the connection with `code`. With `cancel_replies`, running replies are cancelled
/// first and their final frames sent before the close (bounded by a grace period).
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct CloseConnection {
    pub code: u16,
    pub reason: String,
    pub cancel_replies: Option<CancelReason>,
}

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

/// Limits for live-feed subscribers, from the settings.
#[derive(Clone, Debug)]
pub struct FeedLimits {
    pub max_backlog_bytes: u64,
    pub max_consecutive_drops: u32,
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
    hub: Addr<WsHub>,
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
            self.close(ctx, CloseCode::Normal, "client silent past the timeout");
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
            Ok(ClientFrame::Chat { id, model, content }) => {
                self.start_chat(id, model, content, ctx)
            }
            Err(err) => {
                let frame =
                    ServerFrame::bad_request(err.id.as_ref().map(ChatId::as_str), &err.message);
                self.send(ctx, &frame);
            }
        }
    }

    fn start_chat(
        &mut self,
        id: ChatId,
        model: String,
        content: String,
        ctx: &mut ws::WebsocketContext<Self>,
    ) {
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
        let handle = self.pipeline.start(ChatRequest {
            user: self.user.clone(),
            model,
            history: HistorySource::Session {
                id: session,
                content: Arc::from(content),
            },
            received: Instant::now(),
            ends_at_shutdown: true,
        });
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
            ChatEvent::Done {
                usage,
                latency_ms,
                cancelled,
            } => self.send(
                ctx,
                &ServerFrame::Done {
                    id,
                    usage: *usage,
                    latency_ms: *latency_ms,
                    cancelled: *cancelled,
                },
            ),
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

impl Actor for WsConnection {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(256);
        self.hub.do_send(RegisterConnection {
            conn_id: self.conn_id,
            user: self.user.clone(),
            connection: ctx.address().recipient(),
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
                .map(|opened, act, ctx| match opened {
                    Ok(opened) => {
                        log::debug!(
                            "event=ws_open conn_id={} user={} session={} resumed={}",
                            act.conn_id,
                            act.user,
                            opened.id,
                            opened.resumed
                        );
                        act.send(
                            ctx,
                            &ServerFrame::Session {
                                session_id: opened.id.as_str(),
                                resumed: opened.resumed,
                            },
                        );
                        act.session = Some(opened.id);
                    }
                    Err(err) => {
                        log::warn!(
                            "event=ws_session_failed conn_id={} error={err}",
                            act.conn_id
                        );
                        act.close(ctx, CloseCode::Error, "session registry unavailable");
                    }
                }),
        );
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        // Running replies notice their closed channels and record themselves as cancelled.
        if let Some(id) = self.session.take() {
            self.registry.do_send(DetachSession {
                id,
                conn_id: self.conn_id,
            });
        }
        self.hub.do_send(UnregisterConnection {
            conn_id: self.conn_id,
        });
        log::debug!(
            "event=ws_closed conn_id={} user={}",
            self.conn_id,
            self.user
        );
    }
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for WsConnection {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        let msg = match msg {
            Ok(msg) => msg,
            Err(ProtocolError::Overflow) => {
                let reason = format!("frame larger than {} bytes", self.settings.max_frame_bytes);
                return self.close(ctx, CloseCode::Size, &reason);
            }
            Err(err) => {
                log::debug!(
                    "event=ws_protocol_error conn_id={} error={err}",
                    self.conn_id
                );
                return self.close(ctx, CloseCode::Protocol, "websocket protocol error");
            }
        };
        match msg {
            ws::Message::Text(text) => self.on_text(&text, ctx),
            ws::Message::Binary(_) => {
                self.send(ctx, &ServerFrame::bad_request(None, BINARY_REFUSED))
            }
            ws::Message::Continuation(item) => self.on_fragment(item, ctx),
            ws::Message::Ping(payload) => ctx.pong(&payload),
            ws::Message::Pong(_) | ws::Message::Nop => {}
            ws::Message::Close(reason) => {
                ctx.close(reason);
                ctx.stop();
            }
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl WsConnection {
    /// Reassembles a fragmented message. Text is parsed once complete; binary is discarded and
    /// answered once, like an unfragmented binary frame.
    fn on_fragment(&mut self, item: actix_http::ws::Item, ctx: &mut ws::WebsocketContext<Self>) {
        let (data, last) = match item {
            actix_http::ws::Item::FirstText(data) => {
                self.fragments = Some(Fragments::Text(BytesMut::new()));
                (data, false)
            }
            actix_http::ws::Item::FirstBinary(_) => {
                self.fragments = Some(Fragments::Binary);
                return;
            }
            actix_http::ws::Item::Continue(data) => (data, false),
            actix_http::ws::Item::Last(data) => (data, true),
        };
        let max = self.settings.max_frame_bytes;
        match self.fragments.as_mut() {
            None => self.close(
                ctx,
                CloseCode::Protocol,
                "continuation without a first fragment",
            ),
            Some(Fragments::Binary) => {
                if last {
                    self.fragments = None;
                    self.send(ctx, &ServerFrame::bad_request(None, BINARY_REFUSED));
                }
            }
            Some(Fragments::Text(buffer)) => {
                if buffer.len() + data.len() > max {
                    self.fragments = None;
                    return self.close(
                        ctx,
                        CloseCode::Size,
                        &format!("message larger than {max} bytes"),
                    );
                }
                buffer.extend_from_slice(&data);
                if last {
                    if let Some(Fragments::Text(complete)) = self.fragments.take() {
                        match std::str::from_utf8(&complete) {
                            Ok(text) => self.on_text(text, ctx),
                            Err(_) => self.close(
                                ctx,
                                CloseCode::Invalid,
                                "text message is not valid UTF-8",
                            ),
                        }
                    }
                }
            }
        }
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

#[derive(Deserialize)]
struct HandshakeQuery {
    session_id: Option<String>,
}

/// `GET /ws`: authenticates and checks the origin before upgrading, so refusals are plain
/// HTTP errors (401, 403) with the JSON body.
#[utoipa::path(
    tag = "chat",
    description = "The chat WebSocket (protocol in the README: `chat`, `cancel`, `ping` frames \
        in; `session`, `delta`, `done`, `error`, `pong` frames out). Authenticated and \
        origin-checked before the upgrade; the token may be the `token` query parameter, \
        since browsers cannot set headers on a WebSocket handshake.",
    security(("token_query" = []), ("bearer_jwt" = [])),
    params(
        ("session_id" = Option<String>, Query,
            description = "Resume this ended session of the same user (within the session TTL)"),
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open; its first \
            frame is `{\"type\":\"session\",\"session_id\",\"resumed\"}`"),
        (status = 400, description = "`bad_request`: not a WebSocket handshake, or a bad \
            `session_id`", body = ErrorBody),
        (status = 401, description = "`unauthorized`: no token, or an invalid or expired one",
            body = ErrorBody),
        (status = 403, description = "`forbidden`: the `Origin` is not allowed, or the user is \
            disabled", body = ErrorBody),
        (status = 429, description = "`rate_limited`: too many failed token attempts from this \
            address", body = ErrorBody,
            headers(("Retry-After" = u64, description = "Seconds to wait, at least 1"))),
        (status = 500, description = "`internal`: the server log has the details", body = ErrorBody),
        (status = 503, description = "`unavailable`: shutting down, or the database or an \
            internal actor is not answering", body = ErrorBody),
    )
)]
#[get("/ws")]
pub async fn handshake(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let identity = authenticate(&req)?;
    let origin = req
        .headers()
        .get(actix_web::http::header::ORIGIN)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let own_origin = {
        let info = req.connection_info();
        format!("{}://{}", info.scheme(), info.host())
    };
    let allowed = state
        .hub
        .send(CheckOrigin {
            origin: origin.clone(),
            own_origin,
        })
        .await
        .map_err(|err| AppError::unavailable_mailbox("ws_hub", err))?;
    if !allowed {
        log::info!(
            "event=ws_origin_refused user={} origin={:?}",
            identity.user,
            origin
        );
        return Err(AppError::Forbidden(
            "this origin may not open WebSockets here".into(),
        ));
    }
    let query = web::Query::<HandshakeQuery>::from_query(req.query_string())
        .map_err(|err| AppError::BadRequest(format!("invalid query: {err}")))?;
    let resume = match query.into_inner().session_id.filter(|s| !s.is_empty()) {
        Some(raw) => {
            Some(SessionId::parse(&raw).map_err(|err| AppError::BadRequest(err.to_string()))?)
        }
        None => None,
    };
    // Straight to the database, never queued behind chats waiting for quota.
    let user = identity.user.clone();
    let user_row = state
        .db
        .run(move |conn| {
            crate::db::queries::users::ensure_user(
                conn,
                user.as_str(),
                crate::db::queries::now_ms(),
            )
        })
        .await?;
    if user_row.disabled {
        return Err(AppError::Forbidden("this user is disabled".into()));
    }
    let settings = &state.settings;
    let consumed = Arc::new(AtomicU64::new(0));
    let connection = WsConnection {
        conn_id: rand::random(),
        user: identity.user,
        resume,
        session: None,
        pipeline: state.pipeline.clone(),
        registry: state.registry.clone(),
        hub: state.hub.clone(),
        settings: ConnectionSettings {
            heartbeat: Duration::from_secs(settings.timers.heartbeat_secs),
            client_timeout: Duration::from_secs(settings.timers.client_timeout_secs),
            max_frame_bytes: settings.server.max_frame_bytes,
            max_backlog_bytes: CHAT_MAX_BACKLOG_BYTES,
        },
        last_heard: Instant::now(),
        running: HashMap::new(),
        fragments: None,
        closing: None,
        produced: 0,
        consumed: consumed.clone(),
    };
    start_counted(
        connection,
        &req,
        payload,
        settings.server.max_frame_bytes,
        consumed,
    )
}

/// Upgrades to a WebSocket served by `actor`, returning the response and the counter of
/// bytes the HTTP layer has taken from the actor's outgoing stream.
fn start_counted<A>(
    actor: A,
    req: &HttpRequest,
    payload: web::Payload,
    max_frame_bytes: usize,
    consumed: Arc<AtomicU64>,
) -> Result<HttpResponse, AppError>
where
    A: Actor<Context = ws::WebsocketContext<A>> + StreamHandler<Result<ws::Message, ProtocolError>>,
{
    let mut response = ws::handshake(req)
        .map_err(|err| AppError::BadRequest(format!("websocket handshake failed: {err}")))?;
    let codec = actix_http::ws::Codec::new().max_size(max_frame_bytes);
    let body = CountingBody {
        inner: Box::pin(ws::WebsocketContext::with_codec(actor, payload, codec)),
        consumed,
    };
    Ok(response.streaming(body))
}

/// Bytes a server text frame of `payload` bytes takes on the wire (servers do not mask). Must
/// be exact: `produced - consumed` is compared against a limit, and any per-frame error
/// accumulates over a long-lived connection.
fn wire_len(payload: usize) -> u64 {
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    (payload + header) as u64
}

/// Counts what the HTTP layer takes from a WebSocket's outgoing stream. It only takes more
/// while the socket drains, so `produced - consumed` is what waits in memory because the
/// client is not reading.
struct CountingBody<S> {
    inner: std::pin::Pin<Box<S>>,
    consumed: Arc<AtomicU64>,
}

impl<S> futures_util::Stream for CountingBody<S>
where
    S: futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>>,
{
    type Item = Result<web::Bytes, actix_web::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(bytes))) = &polled {
            self.consumed
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        polled
    }
}

/// The descriptor of the TCP connection a request arrived on (recorded at accept).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionFd(pub std::os::fd::RawFd);

/// A handle that can shut a connection's socket down from outside. A WebSocket actor whose
/// client stops reading is frozen (actix runs it only while the socket drains), so it cannot
/// close itself; shutting the socket makes the pending write fail and frees everything.
#[derive(Debug)]
pub struct SocketShutdown(socket2::Socket);

impl SocketShutdown {
    /// Duplicates the descriptor of the connection `req` arrived on.
    fn of_request(req: &HttpRequest) -> Option<SocketShutdown> {
        let ConnectionFd(fd) = *req.conn_data::<ConnectionFd>()?;
        // SAFETY: `fd` is the socket of the connection this request is being handled on; the
        // connection stays open at least until its handler returns, so the number cannot name
        // another file here. The duplicate we keep owns its own reference to the socket.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        borrowed
            .try_clone_to_owned()
            .ok()
            .map(|owned| SocketShutdown(socket2::Socket::from(owned)))
    }

    pub fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }
}

/// One frame of the live metrics feed, serialized once for every subscriber.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct FeedFrame(pub Arc<str>);

#[derive(Clone, Debug)]
pub struct FeedConnectionSettings {
    pub heartbeat: Duration,
    pub client_timeout: Duration,
    /// Unsent bytes allowed to wait for a subscriber; a frame that would add to more is dropped.
    pub max_backlog_bytes: u64,
    /// Frames dropped in a row before the subscriber is disconnected.
    pub max_consecutive_drops: u32,
}

/// An admin watching `/admin/ws`. Frames come from the hub; this actor decides, from how much
/// its client has left unread, whether to write or drop each one.
pub struct AdminFeedConnection {
    id: u64,
    admin: UserId,
    hub: Addr<WsHub>,
    consumed: Arc<AtomicU64>,
    produced: u64,
    consecutive_drops: u32,
    last_heard: Instant,
    settings: FeedConnectionSettings,
    socket: Option<SocketShutdown>,
}

impl Actor for AdminFeedConnection {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Two frames waiting is already a client that has fallen behind; the hub counts every
        // frame that does not fit and gives up on the subscriber after a few.
        ctx.set_mailbox_capacity(2);
        self.hub.do_send(Subscribe {
            id: self.id,
            frames: ctx.address().recipient(),
            close: ctx.address().recipient(),
            socket: self.socket.take().map(Arc::new),
        });
        ctx.run_interval(self.settings.heartbeat, |act, ctx| {
            if Instant::now().duration_since(act.last_heard) > act.settings.client_timeout {
                ctx.close(Some(CloseReason {
                    code: CloseCode::Normal,
                    description: Some("client silent past the timeout".into()),
                }));
                return ctx.stop();
            }
            ctx.ping(b"");
        });
        log::info!("event=feed_subscribed id={} admin={}", self.id, self.admin);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.hub.do_send(Unsubscribe { id: self.id });
        log::info!(
            "event=feed_unsubscribed id={} admin={}",
            self.id,
            self.admin
        );
    }
}

impl Handler<FeedFrame> for AdminFeedConnection {
    type Result = ();

    fn handle(&mut self, frame: FeedFrame, ctx: &mut Self::Context) {
        let backlog = self
            .produced
            .saturating_sub(self.consumed.load(Ordering::Relaxed));
        log::trace!(
            "event=feed_frame id={} bytes={} backlog={backlog} produced={}",
            self.id,
            frame.0.len(),
            self.produced
        );
        if backlog > self.settings.max_backlog_bytes {
            self.consecutive_drops += 1;
            let give_up = self.consecutive_drops >= self.settings.max_consecutive_drops;
            self.hub.do_send(FeedDelivery {
                written: false,
                disconnected: give_up,
            });
            if give_up {
                log::warn!(
                    "event=feed_subscriber_dropped id={} admin={} backlog_bytes={backlog}",
                    self.id,
                    self.admin
                );
                ctx.stop();
            }
            return;
        }
        self.consecutive_drops = 0;
        self.produced += wire_len(frame.0.len());
        ctx.text(&*frame.0);
        self.hub.do_send(FeedDelivery {
            written: true,
            disconnected: false,
        });
    }
}

impl Handler<CloseConnection> for AdminFeedConnection {
    type Result = ();

    fn handle(&mut self, msg: CloseConnection, ctx: &mut Self::Context) {
        ctx.close(Some(CloseReason {
            code: CloseCode::from(msg.code),
            description: Some(msg.reason),
        }));
        ctx.stop();
    }
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for AdminFeedConnection {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Ping(payload)) => ctx.pong(&payload),
            Ok(ws::Message::Text(text)) => {
                if matches!(ClientFrame::parse(&text), Ok(ClientFrame::Ping)) {
                    ctx.text(ServerFrame::Pong.to_json());
                }
            }
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Ok(_) => {}
            Err(_) => ctx.stop(),
        }
    }

    fn finished(&mut self, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

/// `GET /admin/ws`: the live metrics feed for admins (token in the query for browsers).
#[utoipa::path(
    tag = "admin",
    description = "The live metrics feed: each second one text frame, the `/admin/metrics` \
        object with `\"type\":\"metrics\"` added. Authenticated before the upgrade; the \
        token may be the `token` query parameter, since browsers cannot set headers on a \
        WebSocket handshake.",
    security(("token_query" = []), ("bearer_jwt" = [])),
    responses(
        (status = 101, description = "Switching Protocols: the feed is open"),
        (status = 400, description = "`bad_request`: not a WebSocket handshake", body = ErrorBody),
        AdminRefusals,
    )
)]
#[get("/admin/ws")]
pub async fn admin_feed_handshake(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let identity = authenticate(&req)?;
    if identity.role != crate::auth::Role::Admin {
        return Err(AppError::Forbidden(
            "the metrics feed needs a token with role admin".into(),
        ));
    }
    let settings = &state.settings;
    let consumed = Arc::new(AtomicU64::new(0));
    let feed = state.feed.clone();
    let connection = AdminFeedConnection {
        id: rand::random(),
        admin: identity.user,
        hub: state.hub.clone(),
        consumed: consumed.clone(),
        produced: 0,
        consecutive_drops: 0,
        last_heard: Instant::now(),
        settings: FeedConnectionSettings {
            heartbeat: Duration::from_secs(settings.timers.heartbeat_secs),
            client_timeout: Duration::from_secs(settings.timers.client_timeout_secs),
            max_backlog_bytes: feed.max_backlog_bytes,
            max_consecutive_drops: feed.max_consecutive_drops,
        },
        socket: SocketShutdown::of_request(&req),
    };
    start_counted(
        connection,
        &req,
        payload,
        settings.server.max_frame_bytes,
        consumed,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_codec::Encoder;
    use actix_http::ws::{Codec, Message};

    /// The accounting must match what the codec really writes, or a busy reader would slowly
    /// look like a stalled one.
    #[test]
    fn wire_len_matches_the_encoded_frame() {
        for size in [0, 1, 125, 126, 1000, 65_535, 65_536, 200_000] {
            let mut buf = BytesMut::new();
            Codec::new()
                .encode(Message::Text("x".repeat(size).into()), &mut buf)
                .expect("encode");
            assert_eq!(wire_len(size), buf.len() as u64, "payload {size}");
        }
    }
}
