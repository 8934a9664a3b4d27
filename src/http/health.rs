use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use crate::app_state::AppState;
use crate::error::{AppError, ErrorBody};

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    status: &'static str,
}

#[derive(Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    status: &'static str,
    #[schema(example = "ok")]
    database: &'static str,
}

/// Liveness: answers as long as the process serves HTTP.
#[utoipa::path(
    tag = "health",
    responses((status = 200, description = "The process serves HTTP", body = Health))
)]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health { status: "ok" })
}

/// Readiness: the database must answer now, or load balancers should send traffic elsewhere.
#[utoipa::path(
    tag = "health",
    responses(
        (status = 200, description = "The database answers", body = Readiness),
        (status = 503, description = "`unavailable`: the database does not answer", body = ErrorBody),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    match state.db.ping().await {
        Ok(()) => Ok(HttpResponse::Ok().json(Readiness {
            status: "ready",
            database: "ok",
        })),
        Err(err) => {
            log::warn!("event=readyz_failed error={err}");
            Err(AppError::Unavailable("the database does not answer".into()))
        }
    }
}
