//! `/admin/metrics` (JSON snapshot), `/metrics` (Prometheus) and the `/admin/ws` feed route.

use actix_web::{get, web, HttpResponse};
use serde::Deserialize;
use utoipa::IntoParams;

use crate::actors::db_flusher::GetFlusherStats;
use crate::actors::metrics::GetLifetimeCounters;
use crate::actors::session_registry::GetSessionStats;
use crate::actors::ws_hub::GetHubStats;
use crate::auth::AdminIdentity;
use crate::error::{AppError, ErrorBody};
use crate::http::openapi::AdminRefusals;
use crate::http::prometheus::Encoder;
use crate::report::{AdminMetrics, ReportSources};
use crate::startup::AppState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct MetricsQuery {
    /// How many of the newest requests to include (default 100, at most 1,000).
    recent: Option<usize>,
}

fn sources(state: &AppState) -> ReportSources {
    ReportSources {
        metrics: state.metrics.clone(),
        registry: state.registry.clone(),
        flusher: state.flusher.clone(),
    }
}

/// A JSON snapshot of usage, sessions, the flusher and the live feed hub.
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
    let hub = state
        .hub
        .send(GetHubStats)
        .await
        .map_err(|e| AppError::unavailable_mailbox("ws_hub", e))?;
    let report = sources(&state)
        .gather(query.recent.unwrap_or(100).min(1_000), hub)
        .await?;
    Ok(HttpResponse::Ok().json(report))
}

/// Prometheus text exposition (lifetime counters, sessions, connections, flusher).
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
    let (lifetime, sessions, flusher, hub) = futures_util::future::join4(
        state.metrics.send(GetLifetimeCounters),
        state.registry.send(GetSessionStats),
        state.flusher.send(GetFlusherStats),
        state.hub.send(GetHubStats),
    )
    .await;
    let lifetime = lifetime.map_err(|e| AppError::unavailable_mailbox("metrics_aggregator", e))?;
    let sessions = sessions.map_err(|e| AppError::unavailable_mailbox("session_registry", e))?;
    let flusher = flusher.map_err(|e| AppError::unavailable_mailbox("db_flusher", e))?;
    let hub = hub.map_err(|e| AppError::unavailable_mailbox("ws_hub", e))?;

    let mut e = Encoder::default();
    e.family(
        "chatgate_requests_total",
        "counter",
        "Admitted chat requests by model and outcome.",
    );
    for (model, stats) in &lifetime.models {
        let ok = stats.requests - stats.errors - stats.cancelled;
        e.sample(
            "chatgate_requests_total",
            &[("model", model), ("outcome", "ok")],
            ok as f64,
        );
        e.sample(
            "chatgate_requests_total",
            &[("model", model), ("outcome", "cancelled")],
            stats.cancelled as f64,
        );
        for (code, n) in &stats.errors_by_code {
            e.sample(
                "chatgate_requests_total",
                &[("model", model), ("outcome", code.as_str())],
                *n as f64,
            );
        }
    }
    e.family(
        "chatgate_tokens_total",
        "counter",
        "Tokens by model and direction.",
    );
    for (model, stats) in &lifetime.models {
        e.sample(
            "chatgate_tokens_total",
            &[("model", model), ("direction", "in")],
            stats.tokens_in as f64,
        );
        e.sample(
            "chatgate_tokens_total",
            &[("model", model), ("direction", "out")],
            stats.tokens_out as f64,
        );
    }
    e.family(
        "chatgate_request_duration_seconds",
        "histogram",
        "Time from a chat's arrival to its last frame.",
    );
    for (model, stats) in &lifetime.models {
        let buckets: Vec<(f64, u64)> = stats
            .latency
            .cumulative_at_powers_of_two()
            .into_iter()
            .map(|(edge_ms, cumulative)| (edge_ms as f64 / 1000.0, cumulative))
            .collect();
        let sum = stats.latency_sum_ms as f64 / 1000.0;
        e.histogram(
            "chatgate_request_duration_seconds",
            &[("model", model)],
            &buckets,
            sum,
            stats.latency.count(),
        );
    }
    e.family(
        "chatgate_rejected_total",
        "counter",
        "Chats refused at admission, by error code.",
    );
    for (code, n) in &lifetime.rejected {
        e.sample(
            "chatgate_rejected_total",
            &[("code", code.as_str())],
            *n as f64,
        );
    }
    e.family(
        "chatgate_sessions",
        "gauge",
        "Chat sessions held by this instance.",
    );
    e.sample(
        "chatgate_sessions",
        &[("state", "active")],
        sessions.active as f64,
    );
    e.sample(
        "chatgate_sessions",
        &[("state", "inactive")],
        sessions.inactive as f64,
    );
    e.family(
        "chatgate_websocket_connections",
        "gauge",
        "Open chat WebSocket connections.",
    );
    e.sample(
        "chatgate_websocket_connections",
        &[],
        hub.connections as f64,
    );
    e.family(
        "chatgate_feed_subscribers",
        "gauge",
        "Admins subscribed to the live metrics feed.",
    );
    e.sample("chatgate_feed_subscribers", &[], hub.subscribers as f64);
    e.family(
        "chatgate_flusher_buffered_rows",
        "gauge",
        "Rows waiting to be written to the database.",
    );
    e.sample(
        "chatgate_flusher_buffered_rows",
        &[],
        flusher.buffered as f64,
    );
    e.family(
        "chatgate_flusher_written_rows_total",
        "counter",
        "Rows written to the database.",
    );
    e.sample(
        "chatgate_flusher_written_rows_total",
        &[],
        flusher.written as f64,
    );
    e.family(
        "chatgate_flusher_dropped_rows_total",
        "counter",
        "Raw request rows dropped because the buffer was full.",
    );
    e.sample(
        "chatgate_flusher_dropped_rows_total",
        &[],
        flusher.dropped as f64,
    );
    e.family(
        "chatgate_flusher_retries_total",
        "counter",
        "Batch writes retried after a transient database failure.",
    );
    e.sample(
        "chatgate_flusher_retries_total",
        &[],
        flusher.retries as f64,
    );
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(e.finish()))
}
