//! `/admin/sessions`: the session registry, read and managed. In cluster mode every answer
//! covers every instance (the registry reads the shared store, and asks the instance that
//! holds a session to end it); alone, or while Redis is unreachable, this instance's. The
//! database keeps the sessions' rows for history.

use actix_web::{delete, get, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::actors::cluster_bus::TellOthers;
use crate::actors::reply_keeper::StopReplies;
use crate::actors::session_registry::{
    CountSessions, EndSession, ListSessions, SessionStats, SessionSummary, StateFilter,
};
use crate::actors::socket_watchdog::{CloseTarget, ExpectClose, CLOSE_WITHIN};
use crate::app_state::AppState;
use crate::auth::AdminIdentity;
use crate::cluster::protocol::Command;
use crate::domain::SessionId;
use crate::error::{AppError, ErrorBody};
use crate::http::openapi::AdminRefusals;
use crate::http::pagination::{decode_cursor, page_limit, Page};

/// Sessions by state, on every instance (active = attached to a socket on a live instance).
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    responses((status = 200, description = "Counts; `total` = `active` + `inactive`", body = SessionStats), AdminRefusals)
)]
#[get("/admin/sessions/stats")]
pub async fn session_stats(
    _admin: AdminIdentity,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let stats = state
        .registry
        .send(CountSessions)
        .await
        .map_err(|err| AppError::unavailable_mailbox("session_registry", err))?;
    Ok(HttpResponse::Ok().json(stats))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Which sessions (default `all`).
    #[param(inline)]
    state: Option<StateFilter>,
    /// Page size, 1–1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A session as the contract lists it: RFC 3339 times.
#[derive(Serialize, ToSchema)]
pub struct SessionItem {
    id: String,
    user: String,
    active: bool,
    started_at: String,
    ended_at: Option<String>,
    messages: i64,
    avg_response_ms: Option<i64>,
    #[serde(skip)]
    started_at_ms: i64,
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

impl From<SessionSummary> for SessionItem {
    fn from(s: SessionSummary) -> SessionItem {
        SessionItem {
            started_at: rfc3339(s.started_at_ms),
            ended_at: s.ended_at_ms.map(rfc3339),
            id: s.id,
            user: s.user,
            active: s.active,
            messages: s.messages,
            avg_response_ms: s.avg_response_ms,
            started_at_ms: s.started_at_ms,
        }
    }
}

/// Sessions, newest first, a page at a time.
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of sessions", body = Page<SessionItem>),
        (status = 400, description = "`bad_request`: bad `state`, `limit` or `cursor`", body = ErrorBody),
        AdminRefusals,
    )
)]
#[get("/admin/sessions")]
pub async fn list_sessions(
    _admin: AdminIdentity,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let query = query.into_inner();
    let limit = page_limit(query.limit)?;
    let after: Option<(i64, String)> = decode_cursor(query.cursor.as_deref())?;
    let sessions = state
        .registry
        .send(ListSessions {
            filter: query.state.unwrap_or(StateFilter::All),
            after,
            limit: limit + 1,
        })
        .await
        .map_err(|err| AppError::unavailable_mailbox("session_registry", err))?;
    let items: Vec<SessionItem> = sessions.into_iter().map(SessionItem::from).collect();
    Ok(
        HttpResponse::Ok().json(Page::from_fetched(items, limit, |s: &SessionItem| {
            (s.started_at_ms, s.id.clone())
        })),
    )
}

/// Ends a session, on whichever instance holds it; its connection closes with 1008.
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    params(("id" = String, Path, description = "Session id", min_length = 1, max_length = 64,
        pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")),
    responses(
        (status = 204, description = "Ended"),
        (status = 400, description = "`bad_request`: not a session id", body = ErrorBody),
        (status = 404, description = "`not_found`: no such session", body = ErrorBody),
        AdminRefusals,
    )
)]
#[delete("/admin/sessions/{id}")]
pub async fn end_session(
    admin: AdminIdentity,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id =
        SessionId::parse(&path.into_inner()).map_err(|e| AppError::BadRequest(e.to_string()))?;
    state
        .registry
        .send(EndSession { id: id.clone() })
        .await
        .map_err(|err| AppError::unavailable_mailbox("session_registry", err))??;
    // Its replies stop now, also those its socket had handed over to go on without it.
    state.reply_keeper.do_send(StopReplies::Session(id.clone()));
    // And those another instance keeps (it streamed them before the session moved).
    if let Some(cluster) = &state.cluster {
        cluster.bus.do_send(TellOthers(Command::StopReplies {
            session_id: Some(id.as_str().to_string()),
            user_id: None,
        }));
    }
    // A socket frozen on a client that stopped reading cannot close itself.
    state.watchdog.do_send(ExpectClose {
        target: CloseTarget::Session(id.clone()),
        within: CLOSE_WITHIN,
    });
    log::info!(
        "event=session_ended_by_admin admin={} session={id}",
        admin.0.user
    );
    Ok(HttpResponse::NoContent().finish())
}
