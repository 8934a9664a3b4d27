//! `/admin/origins`: the browser origins allowed to open WebSockets, held by the `Origins`
//! actor the handshakes ask, so a change applies to the next handshake.

use actix_web::{get, put, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::actors::origins::{GetOrigins, SetOrigins};
use crate::app_state::AppState;
use crate::auth::AdminIdentity;
use crate::config::is_origin;
use crate::error::{AppError, ErrorBody};
use crate::http::openapi::AdminRefusals;

/// Browser origins (`scheme://host[:port]`, or `*` for all) allowed to open WebSockets besides
/// the server's own.
#[derive(Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Origins {
    /// Each entry is `*` or `scheme://host[:port]` (surrounding blanks are ignored).
    #[schema(example = json!(["https://app.example.com"]),
        inline, value_type = Vec<OriginPattern>)]
    origins: Vec<String>,
}

/// One allow-list entry as the handler accepts it (see `config::is_origin`).
#[derive(ToSchema)]
#[schema(pattern = r"^\s*(\*|[A-Za-z0-9+.\-]+://[^/?# ]*[^/?#\s])\s*$")]
pub struct OriginPattern(#[allow(dead_code)] String);

/// The allow-list the next WebSocket handshake is checked against.
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    responses((status = 200, description = "The allow-list", body = Origins), AdminRefusals)
)]
#[get("/admin/origins")]
pub async fn get_origins(
    _admin: AdminIdentity,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let origins = state
        .origins
        .send(GetOrigins)
        .await
        .map_err(|e| AppError::unavailable_mailbox("origins", e))?;
    Ok(HttpResponse::Ok().json(Origins { origins }))
}

/// Replaces the allow-list; the next handshake sees the change.
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    request_body = Origins,
    responses(
        (status = 200, description = "The new allow-list", body = Origins),
        (status = 400, description = "`bad_request`: an entry is not an origin", body = ErrorBody),
        (status = 413, description = "`too_large`: the body is over `CHATGATE_MAX_FRAME_BYTES`", body = ErrorBody),
        AdminRefusals,
    )
)]
#[put("/admin/origins")]
pub async fn put_origins(
    admin: AdminIdentity,
    state: web::Data<AppState>,
    body: web::Json<Origins>,
) -> Result<HttpResponse, AppError> {
    let origins: Vec<String> = body
        .into_inner()
        .origins
        .into_iter()
        .map(|o| o.trim().to_string())
        .collect();
    let bad: Vec<&str> = origins
        .iter()
        .map(String::as_str)
        .filter(|o| *o != "*" && !is_origin(o))
        .collect();
    if !bad.is_empty() {
        return Err(AppError::BadRequest(format!(
            "not origins (expected scheme://host[:port] or *): {}",
            bad.join(", ")
        )));
    }
    let origins = state
        .origins
        .send(SetOrigins { origins })
        .await
        .map_err(|e| AppError::unavailable_mailbox("origins", e))?;
    log::info!(
        "event=origins_changed admin={} origins={}",
        admin.0.user,
        origins.join(",")
    );
    Ok(HttpResponse::Ok().json(Origins { origins }))
}
