//! `/admin/origins`: the browser origins allowed to open WebSockets. The list is stored in the
//! database; a change is written there first, then applied to this instance's `Origins` actor
//! (which the handshakes ask), and other instances are told to reread it.

use actix_web::{get, put, web, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::actors::cluster_bus::TellOthers;
use crate::actors::origins::{normalize_list, ApplyOrigins};
use crate::app_state::AppState;
use crate::auth::AdminIdentity;
use crate::cluster::protocol::Command;
use crate::config::is_origin;
use crate::db::queries::now_ms;
use crate::db::queries::origins::{load_origins, replace_origins};
use crate::db::DbError;
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

/// The stored allow-list: the one every instance applies to its next WebSocket handshake.
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
    // The database, not this instance's copy: the copy may trail a change made elsewhere by
    // the bus's delivery, and it catches up from what is read here.
    let stored = state
        .db
        .run(load_origins)
        .await
        .map_err(|err| db_unavailable("read", err))?;
    let origins = match stored {
        Some(stored) => state
            .origins
            .send(ApplyOrigins(stored.clone()))
            .await
            .map(|_| stored.origins)
            .map_err(|e| AppError::unavailable_mailbox("origins", e))?,
        // Only before the first start stored it, which cannot be while serving.
        None => Vec::new(),
    };
    Ok(HttpResponse::Ok().json(Origins { origins }))
}

/// Replaces the stored allow-list. The next handshake on this instance sees the change; other
/// instances of a cluster within a second.
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
    let origins = parse_origins(body.into_inner())?;
    let by = admin.0.user.to_string();
    // Written first, in one transaction: when it fails nothing has changed anywhere.
    let stored = state
        .db
        .run(move |conn| replace_origins(conn, &origins, &by, now_ms()))
        .await
        .map_err(|err| db_unavailable("store", err))?;
    state
        .origins
        .send(ApplyOrigins(stored.clone()))
        .await
        .map_err(|e| AppError::unavailable_mailbox("origins", e))?;
    if let Some(cluster) = &state.cluster {
        // Best effort: an instance that misses it rereads on rejoining Redis or periodically.
        cluster.bus.do_send(TellOthers(Command::OriginsChanged));
    }
    log::info!(
        "event=origins_changed admin={} version={} origins={}",
        admin.0.user,
        stored.version,
        stored.origins.join(",")
    );
    Ok(HttpResponse::Ok().json(Origins {
        origins: stored.origins,
    }))
}

/// The list as it is stored (normalized, see `normalize_list`), or which entries are not
/// origins.
fn parse_origins(body: Origins) -> Result<Vec<String>, AppError> {
    let origins: Vec<String> = body
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
    Ok(normalize_list(&origins))
}

/// Any database failure here is a 503 with a plain reason: the request is safe to repeat, and
/// a failed write changed nothing (one transaction, applied only after it committed).
fn db_unavailable(action: &str, err: DbError) -> AppError {
    log::warn!("event=origins_db_failed action={action} error=\"{err}\"");
    let (done, outcome) = match action {
        "store" => ("stored", ", so nothing was changed"),
        _ => ("read", ""),
    };
    AppError::Unavailable(format!(
        "the allowed origins could not be {done}: the database failed or did not \
         answer{outcome}; try again"
    ))
}
