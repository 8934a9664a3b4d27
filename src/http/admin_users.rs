//! `/admin/users`: per-user limits and state, with optimistic concurrency (`ETag`/`If-Match`).

use actix_web::http::header;
use actix_web::{get, put, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::actors::cluster_bus::TellOthers;
use crate::actors::connections::CloseUserConnections;
use crate::actors::reply_keeper::StopReplies;
use crate::actors::socket_watchdog::{CloseTarget, ExpectClose, CLOSE_WITHIN};
use crate::app_state::AppState;
use crate::auth::AdminIdentity;
use crate::cluster::protocol::Command;
use crate::db::models::UserRow;
use crate::db::queries::users::{self, UserChange};
use crate::db::queries::{now_ms, quota};
use crate::domain::{QuotaDay, UserId};
use crate::error::{AppError, ErrorBody};
use crate::http::openapi::AdminRefusals;
use crate::http::pagination::{decode_cursor, page_limit, Page};

#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    /// The limit in force: the user's own, or the default when `daily_limit_is_default`.
    pub daily_limit: i64,
    pub daily_limit_is_default: bool,
    /// Chat requests counted today (UTC).
    pub used_today: i64,
    pub disabled: bool,
    /// Bumped by every change; sent as `ETag`, compared with `If-Match`.
    pub version: i64,
}

impl UserView {
    fn new(row: UserRow, used_today: i64, default_limit: i64) -> UserView {
        UserView {
            daily_limit: row.daily_limit.unwrap_or(default_limit),
            daily_limit_is_default: row.daily_limit.is_none(),
            id: row.id,
            used_today,
            disabled: row.disabled,
            version: row.version,
        }
    }
}

fn etag(version: i64) -> (header::HeaderName, String) {
    (header::ETAG, format!("\"{version}\""))
}

fn parse_user_id(raw: &str) -> Result<UserId, AppError> {
    UserId::parse(raw).map_err(|e| AppError::BadRequest(e.to_string()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Page size, 1–1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Users, by id, a page at a time.
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of users", body = Page<UserView>),
        (status = 400, description = "`bad_request`: bad `limit` or `cursor`", body = ErrorBody),
        AdminRefusals,
    )
)]
#[get("/admin/users")]
pub async fn list_users(
    _admin: AdminIdentity,
    state: web::Data<AppState>,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, AppError> {
    let limit = page_limit(query.limit)?;
    let after: Option<String> = decode_cursor(query.cursor.as_deref())?;
    let day = QuotaDay::today().as_key();
    let rows = state
        .db
        .run(move |conn| {
            let rows = users::list_users(conn, after.as_deref(), limit as i64 + 1)?;
            rows.into_iter()
                .map(|row| quota::used_on(conn, &row.id, &day).map(|used| (row, used)))
                .collect::<diesel::QueryResult<Vec<_>>>()
        })
        .await?;
    let default_limit = state.settings.limits.daily_quota;
    let views = rows
        .into_iter()
        .map(|(row, used)| UserView::new(row, used, default_limit))
        .collect();
    Ok(
        HttpResponse::Ok().json(Page::from_fetched(views, limit, |u: &UserView| {
            u.id.clone()
        })),
    )
}

/// One user, with its version as `ETag`.
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    params(("id" = String, Path, description = "User id (a token's `sub`)",
            min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$")),
    responses(
        (status = 200, description = "The user", body = UserView,
            headers(("ETag" = String, description = "`\"<version>\"`, for `If-Match`"))),
        (status = 400, description = "`bad_request`: not a user id", body = ErrorBody),
        (status = 404, description = "`not_found`: no such user", body = ErrorBody),
        AdminRefusals,
    )
)]
#[get("/admin/users/{id}")]
pub async fn get_user(
    _admin: AdminIdentity,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = parse_user_id(&path.into_inner())?;
    let day = QuotaDay::today().as_key();
    let key = id.as_str().to_string();
    let found = state
        .db
        .run(move |conn| {
            let Some(row) = users::find_user(conn, &key)? else {
                return Ok(None);
            };
            let used = quota::used_on(conn, &key, &day)?;
            Ok(Some((row, used)))
        })
        .await?;
    let (row, used) = found.ok_or_else(|| AppError::NotFound(format!("no user {id}")))?;
    let view = UserView::new(row, used, state.settings.limits.daily_quota);
    Ok(HttpResponse::Ok()
        .insert_header(etag(view.version))
        .json(view))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PutUser {
    /// `null` or absent: the default quota applies.
    #[serde(default, deserialize_with = "whole_number")]
    #[schema(minimum = 0)]
    daily_limit: Option<i64>,
    disabled: bool,
}

/// JSON has one number type: `5.0` is the integer 5 (as the document's `integer` says), while
/// `5.5` is refused.
fn whole_number<'de, D>(deserializer: D) -> Result<Option<i64>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let Some(number) = Option::<serde_json::Number>::deserialize(deserializer)? else {
        return Ok(None);
    };
    if let Some(n) = number.as_i64() {
        return Ok(Some(n));
    }
    match number.as_f64() {
        Some(f) if f.fract() == 0.0 && f >= i64::MIN as f64 && f < i64::MAX as f64 => {
            Ok(Some(f as i64))
        }
        _ => Err(serde::de::Error::custom(format!(
            "daily_limit must be a whole number, got {number}"
        ))),
    }
}

/// What `If-Match` asks for: absent (unconditional), `*` (any existing version) or a version.
enum Precondition {
    None,
    Exists,
    Version(i64),
    /// A tag this server never issued: it can match nothing.
    Unmatchable,
}

fn precondition(req: &HttpRequest) -> Precondition {
    let Some(value) = req.headers().get(header::IF_MATCH) else {
        return Precondition::None;
    };
    let Ok(value) = value.to_str() else {
        return Precondition::Unmatchable;
    };
    let value = value.trim();
    if value == "*" {
        return Precondition::Exists;
    }
    // Weak tags compare by value too: versions are exact either way.
    let tag = value.strip_prefix("W/").unwrap_or(value).trim_matches('"');
    tag.parse()
        .map(Precondition::Version)
        .unwrap_or(Precondition::Unmatchable)
}

/// Creates or replaces a user. With `If-Match`, only if the stored version still matches.
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    params(
        ("id" = String, Path, description = "User id (a token's `sub`)",
            min_length = 1, max_length = 128, pattern = r"^[^\u0000-\u001F\u007F-\u009F]*$"),
        ("If-Match" = Option<String>, Header,
            description = "`\"<version>\"` from `ETag`, or `*` for any existing version"),
    ),
    request_body = PutUser,
    responses(
        (status = 200, description = "The stored user", body = UserView,
            headers(("ETag" = String, description = "`\"<version>\"` of the stored row"))),
        (status = 400, description = "`bad_request`: bad id or body", body = ErrorBody),
        (status = 412, description = "`precondition_failed`: `If-Match` names another version", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over `CHATGATE_MAX_FRAME_BYTES`", body = ErrorBody),
        AdminRefusals,
    )
)]
#[put("/admin/users/{id}")]
pub async fn put_user(
    admin: AdminIdentity,
    req: HttpRequest,
    state: web::Data<AppState>,
    path: web::Path<String>,
    body: web::Json<PutUser>,
) -> Result<HttpResponse, AppError> {
    let id = parse_user_id(&path.into_inner())?;
    let PutUser {
        daily_limit,
        disabled,
    } = body.into_inner();
    if daily_limit.is_some_and(|limit| limit < 0) {
        return Err(AppError::BadRequest(
            "daily_limit must be 0 or more (null for the default)".into(),
        ));
    }
    let change = UserChange {
        daily_limit,
        disabled,
    };
    let expected = match precondition(&req) {
        Precondition::Unmatchable => {
            return Err(AppError::PreconditionFailed(
                "If-Match names no version of this user".into(),
            ))
        }
        other => other,
    };
    let key = id.as_str().to_string();
    let day = QuotaDay::today().as_key();
    let stored = state
        .db
        .run(move |conn| {
            let row = match expected {
                Precondition::None => Some(users::put_user(conn, &key, &change, now_ms())?),
                Precondition::Exists => users::update_user_if(conn, &key, None, &change)?,
                Precondition::Version(v) => users::update_user_if(conn, &key, Some(v), &change)?,
                Precondition::Unmatchable => None,
            };
            match row {
                Some(row) => Ok(Some((quota::used_on(conn, &key, &day)?, row))),
                None => Ok(None),
            }
        })
        .await?;
    let (used, row) = stored.ok_or_else(|| {
        AppError::PreconditionFailed(
            "the user changed since you read it; reload and try again".into(),
        )
    })?;
    log::info!(
        "event=user_updated admin={} user={} version={} disabled={} daily_limit={:?}",
        admin.0.user,
        row.id,
        row.version,
        row.disabled,
        row.daily_limit
    );
    if row.disabled {
        state.connections.do_send(CloseUserConnections {
            user: id.clone(),
            code: 1008,
            reason: "user disabled".into(),
        });
        // Their replies stop now, also those their sockets had handed over to go on without them.
        state.reply_keeper.do_send(StopReplies::User(id.clone()));
        // A socket frozen on a client that stopped reading cannot close itself.
        state.watchdog.do_send(ExpectClose {
            target: CloseTarget::User(id.clone()),
            within: CLOSE_WITHIN,
        });
        // The user's sockets on the other instances: each closes its own (and has its
        // watchdog cut the frozen ones) when the word arrives over the bus.
        if let Some(cluster) = &state.cluster {
            cluster.bus.do_send(TellOthers(Command::CloseUserSockets {
                user_id: id.as_str().to_string(),
            }));
            cluster.bus.do_send(TellOthers(Command::StopReplies {
                session_id: None,
                user_id: Some(id.as_str().to_string()),
            }));
        }
    }
    let view = UserView::new(row, used, state.settings.limits.daily_quota);
    Ok(HttpResponse::Ok()
        .insert_header(etag(view.version))
        .json(view))
}
