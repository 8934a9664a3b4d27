//! `/admin/metrics` (JSON snapshot), `/metrics` (Prometheus) and the `/admin/ws` feed route.

use actix_web::{get, web, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::actors::live_feed::GetFeedStats;
use crate::actors::report::AdminMetrics;
use crate::app_state::AppState;
use crate::auth::AdminIdentity;
use crate::error::{AppError, ErrorBody};
use crate::http::metrics_render::render;
use crate::http::openapi::AdminRefusals;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// How many of the newest requests to include (default 100, at most 1,000).
    recent: Option<usize>,
}

/// A JSON snapshot of usage, sessions, the flusher, open connections and the live feed, over
/// every live instance of the cluster, with each instance's own numbers in `instances`.
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    params(MetricsQuery),
    responses(
        (status = 200, description = "The snapshot", body = AdminMetrics),
        (status = 400, description = "`bad_request`: `recent` is not a whole number",
            body = ErrorBody),
        AdminRefusals,
    )
)]
#[get("/admin/metrics")]
pub async fn admin_metrics(
    _admin: AdminIdentity,
    state: web::Data<AppState>,
    query: web::Query<MetricsQuery>,
) -> Result<HttpResponse, AppError> {
    let feed = state
        .live_feed
        .send(GetFeedStats)
        .await
        .map_err(|e| AppError::unavailable_mailbox("live_feed", e))?;
    let report = state
        .report_sources()
        .gather(query.recent.unwrap_or(100).min(1_000), feed)
        .await?;
    Ok(HttpResponse::Ok().json(report))
}

/// Prometheus text exposition: this instance's series with an `instance` label, and the
/// cluster's totals (`chatgate_cluster_…`) over every live instance.
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    responses(
        (status = 200, description = "Prometheus text format 0.0.4",
            content_type = "text/plain; version=0.0.4", body = String),
        AdminRefusals,
    )
)]
#[get("/metrics")]
pub async fn prometheus(
    _admin: AdminIdentity,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let feed = state
        .live_feed
        .send(GetFeedStats)
        .await
        .map_err(|e| AppError::unavailable_mailbox("live_feed", e))?;
    let numbers = state.report_sources().gather_cluster(0, feed).await?;
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(render(&numbers)))
}
