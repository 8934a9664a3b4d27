use actix_web::{get, web, HttpResponse};
use serde_json::json;

use crate::error::AppError;
use crate::startup::AppState;

/// Liveness: answers as long as the process serves HTTP.
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Readiness: the database must answer now, or load balancers should send traffic elsewhere.
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    match state.db.ping().await {
        Ok(()) => Ok(HttpResponse::Ok().json(json!({"status": "ready", "database": "ok"}))),
        Err(err) => {
            log::warn!("event=readyz_failed error={err}");
            Err(AppError::Unavailable("the database does not answer".into()))
        }
    }
}
