//! `/admin/users`: per-user limits and state.

use actix_web::{get, http::header, web, HttpResponse};
use serde::Serialize;

use crate::auth::AdminIdentity;
use crate::db::models::UserRow;
use crate::db::queries::{quota, users};
use crate::domain::{QuotaDay, UserId};
use crate::error::AppError;
use crate::startup::AppState;

#[derive(Debug, Serialize)]
pub struct UserView {
    pub id: String,
    pub daily_limit: i64,
    pub daily_limit_is_default: bool,
    pub used_today: i64,
    pub disabled: bool,
    pub version: i64,
    pub created_at_ms: i64,
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
            created_at_ms: row.created_at,
        }
    }
}

pub fn etag(version: i64) -> (header::HeaderName, String) {
    (header::ETAG, format!("\"{version}\""))
}

#[get("/admin/users/{id}")]
pub async fn get_user(
    _admin: AdminIdentity,
    state: web::Data<AppState>,
    path: web::Path<String>,
) -> Result<HttpResponse, AppError> {
    let id = UserId::parse(&path.into_inner()).map_err(|e| AppError::BadRequest(e.to_string()))?;
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
