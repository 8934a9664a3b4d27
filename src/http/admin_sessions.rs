//! `/admin/sessions`: the session registry, read and managed.

use actix_web::{get, web, HttpResponse};

use crate::actors::session_registry::GetSessionStats;
use crate::auth::AdminIdentity;
use crate::error::AppError;
use crate::startup::AppState;

#[get("/admin/sessions/stats")]
pub async fn session_stats(
    _admin: AdminIdentity,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let stats = state
        .registry
        .send(GetSessionStats)
        .await
        .map_err(|err| AppError::unavailable_mailbox("session_registry", err))?;
    Ok(HttpResponse::Ok().json(stats))
}
