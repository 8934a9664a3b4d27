use std::time::Duration;

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

/// How long `/readyz` waits for the database: a load balancer's probe must see 503, not time
/// out, while the database is away.
const READY_WITHIN: Duration = Duration::from_secs(1);

/// Readiness: the database must answer now, or load balancers should send traffic elsewhere.
#[utoipa::path(
    tag = "health",
    responses(
        (status = 200, description = "The database answers", body = Readiness),
        (status = 503, description = "`unavailable`: the database has not answered within 1 s", body = ErrorBody),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    // The checkout gets most of the budget; the outer bound also covers a query that hangs on
    // a connection whose server vanished, so the answer is never later than promised.
    let probe = state.db.ping(READY_WITHIN * 4 / 5);
    let failure = match actix_web::rt::time::timeout(READY_WITHIN, probe).await {
        Ok(Ok(())) => {
            return Ok(HttpResponse::Ok().json(Readiness {
                status: "ready",
                database: "ok",
            }))
        }
        Ok(Err(err)) => err.to_string(),
        Err(_) => format!("no answer within {READY_WITHIN:?}"),
    };
    log::debug!("event=readyz_failed error={failure}");
    Err(AppError::Unavailable("the database does not answer".into()))
}
