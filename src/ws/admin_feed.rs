//! The admin feed socket: one `AdminFeedConnection` per admin watching `/admin/ws`, fed by
//! the `LiveFeed` actor, and its handshake.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;
use actix_web::{get, web, HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, CloseCode, CloseReason, ProtocolError};

use super::origin::check_origin;
use super::protocol::{ClientFrame, ServerFrame};
use super::transport::{start_counted, wire_len, SocketShutdown};
use crate::actors::connections::CloseConnection;
use crate::actors::live_feed::{FeedDelivery, FeedFrame, LiveFeed, Subscribe, Unsubscribe};
use crate::app_state::AppState;
use crate::auth::authenticate;
use crate::domain::UserId;
use crate::error::{AdminRefusals, AppError, ErrorBody};

#[derive(Clone, Debug)]
pub struct FeedConnectionSettings {
    pub heartbeat: Duration,
    pub client_timeout: Duration,
    /// Unsent bytes allowed to wait for a subscriber; a frame that would add to more is dropped.
    pub max_backlog_bytes: u64,
    /// Frames dropped in a row before the subscriber is disconnected.
    pub max_consecutive_drops: u32,
}

/// An admin watching `/admin/ws`. Frames come from the live feed; this actor decides, from how much
/// its client has left unread, whether to write or drop each one.
pub struct AdminFeedConnection {
    id: u64,
    admin: UserId,
    feed: Addr<LiveFeed>,
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
        // Two frames waiting is already a client that has fallen behind; the feed counts every
        // frame that does not fit and gives up on the subscriber after a few.
        ctx.set_mailbox_capacity(2);
        self.feed.do_send(Subscribe {
            id: self.id,
            frames: ctx.address().recipient(),
            close: ctx.address().recipient(),
            socket: self
                .socket
                .take()
                .map(|s| Arc::new(s) as Arc<dyn crate::actors::live_feed::SocketCutOff>),
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
        self.feed.do_send(Unsubscribe { id: self.id });
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
            self.feed.do_send(FeedDelivery {
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
        self.feed.do_send(FeedDelivery {
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
        object with `\"type\":\"metrics\"` added. Authenticated and origin-checked (the \
        rules of `/ws`) before the upgrade; the token may be the `token` query parameter, \
        since browsers cannot set headers on a WebSocket handshake.",
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
    check_origin(&req, &state, &identity.user).await?;
    let settings = &state.settings;
    let consumed = Arc::new(AtomicU64::new(0));
    let feed = state.feed.clone();
    let connection = AdminFeedConnection {
        id: rand::random(),
        admin: identity.user,
        feed: state.live_feed.clone(),
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
