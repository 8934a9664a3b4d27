//! `GET /ws`: authentication, origin and user checks, then the upgrade to a `WsConnection`.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix_web::{get, web, HttpRequest, HttpResponse};
use serde::Deserialize;

use super::{reply_keeper_of, ConnectionSettings, WsConnection, CHAT_MAX_BACKLOG_BYTES};
use crate::actors::connections::Reservation;
use crate::app_state::AppState;
use crate::auth::authenticate;
use crate::db::models::UserRow;
use crate::db::queries::{now_ms, users};
use crate::domain::{SessionId, UserId};
use crate::error::{AppError, ErrorBody};
use crate::ws::origin::check_origin;
use crate::ws::transport::{start_watched, SocketShutdown, SocketWatch};

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
        (status = 429, description = "`rate_limited`: this user already has \
            `CHATGATE_USER_MAX_CONNECTIONS` open WebSockets, or too many failed token attempts \
            came from this address", body = ErrorBody,
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
    // The three checks ask three places (the origins actor, the database, the connections
    // actor) and none needs another's answer: asked at once, a handshake — and every
    // reconnect — waits for the slowest of them, not for their sum. Refusals keep their
    // order: origin, bad `session_id`, disabled user, connection cap. A slot taken for a
    // handshake refused here is freed when `reservation` drops.
    let (origin, user_row, reservation) = futures_util::future::join3(
        check_origin(&req, &state, &identity.user),
        user_row(&state, &identity.user),
        reserve_slot(&state, &identity.user),
    )
    .await;
    origin?;
    let resume = resume_of(&req)?;
    if user_row?.disabled {
        return Err(AppError::Forbidden("this user is disabled".into()));
    }
    // Held from here, so an error below (or the client leaving) frees the slot again.
    let reservation = reservation?;
    let max_frame_bytes = state.settings.server.max_frame_bytes;
    let consumed = Arc::new(AtomicU64::new(0));
    let watch = Arc::new(SocketWatch::new(SocketShutdown::of_request(&req)));
    let connection = WsConnection::new(
        reservation.conn_id(),
        identity.user,
        resume,
        &state,
        consumed.clone(),
        watch.clone(),
    );
    let response = start_watched(
        connection,
        &req,
        payload,
        max_frame_bytes,
        consumed,
        Some(watch),
    )?;
    reservation.hand_over();
    Ok(response)
}

/// The user's row, created on its first handshake. Straight to the database, never queued
/// behind chats waiting for quota; a known user costs one read.
async fn user_row(state: &AppState, user: &UserId) -> Result<UserRow, AppError> {
    let user = user.as_str().to_string();
    Ok(state
        .db
        .run(move |conn| users::ensure_user(conn, &user, now_ms()))
        .await?)
}

/// How long a user at the connection cap is told to wait: a closed socket frees its slot at
/// once, one that vanished without a close within the client timeout plus a heartbeat.
const CONNECTION_CAP_RETRY_AFTER: Duration = Duration::from_secs(5);

/// A slot under the user's connection cap (`CHATGATE_USER_MAX_CONNECTIONS`), or 429.
async fn reserve_slot(state: &AppState, user: &UserId) -> Result<Reservation, AppError> {
    let reservation = Reservation::take(&state.connections, user.clone())
        .await
        .map_err(|err| AppError::unavailable_mailbox("connections", err))?;
    reservation.ok_or_else(|| {
        log::info!("event=ws_connection_cap user={user}");
        AppError::RateLimited {
            message: format!(
                "this user already has {} open WebSockets; close one first",
                state.settings.limits.user_max_connections
            ),
            retry_after: CONNECTION_CAP_RETRY_AFTER,
        }
    })
}

/// The session to resume, from `?session_id=` (empty means none).
fn resume_of(req: &HttpRequest) -> Result<Option<SessionId>, AppError> {
    let query = web::Query::<HandshakeQuery>::from_query(req.query_string())
        .map_err(|err| AppError::BadRequest(format!("invalid query: {err}")))?;
    match query.into_inner().session_id.filter(|s| !s.is_empty()) {
        Some(raw) => SessionId::parse(&raw)
            .map(Some)
            .map_err(|err| AppError::BadRequest(err.to_string())),
        None => Ok(None),
    }
}

impl WsConnection {
    fn new(
        conn_id: u64,
        user: UserId,
        resume: Option<SessionId>,
        state: &AppState,
        consumed: Arc<AtomicU64>,
        watch: Arc<SocketWatch>,
    ) -> WsConnection {
        let settings = &state.settings;
        WsConnection {
            conn_id,
            user,
            resume,
            session: None,
            pipeline: state.pipeline.clone(),
            registry: state.registry.clone(),
            connections: state.connections.clone(),
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
            consumed,
            watch,
            watchdog: state.watchdog.clone(),
            keeper: reply_keeper_of(state),
        }
    }
}
