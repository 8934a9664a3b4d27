//! The `/admin/metrics` object (also pushed on `/admin/ws`), assembled from each actor's
//! owned snapshot: nothing here holds state.

use std::collections::BTreeMap;

use actix::Addr;
use serde::Serialize;

use crate::actors::db_flusher::{DbFlusher, FlusherStats, GetFlusherStats};
use crate::actors::metrics::state::RecentRequest;
use crate::actors::metrics::{GetMetricsSnapshot, MetricsAggregator, Windows};
use crate::actors::session_registry::{GetSessionStats, SessionRegistry, SessionStats};
use crate::actors::ws_hub::HubStats;
use crate::error::AppError;

/// Every window is `{minute, hour, day}`; `models` is keyed by model name, `rejected` by the
/// error code of chats refused at admission; `recent` lists the newest requests.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AdminMetrics {
    pub totals: Windows,
    pub models: BTreeMap<String, Windows>,
    pub sessions: SessionStats,
    pub flusher: FlusherStats,
    pub hub: HubStats,
    pub rejected: BTreeMap<String, u64>,
    pub recent: Vec<RecentRequest>,
    pub generated_at_ms: i64,
}

/// The actors a report is gathered from (the hub adds its own numbers).
#[derive(Clone)]
pub struct ReportSources {
    pub metrics: Addr<MetricsAggregator>,
    pub registry: Addr<SessionRegistry>,
    pub flusher: Addr<DbFlusher>,
}

impl ReportSources {
    /// Asks every actor at once; each answers with an owned snapshot.
    pub async fn gather(
        &self,
        recent_limit: usize,
        hub: HubStats,
    ) -> Result<AdminMetrics, AppError> {
        let (metrics, sessions, flusher) = futures_util::future::join3(
            self.metrics.send(GetMetricsSnapshot { recent_limit }),
            self.registry.send(GetSessionStats),
            self.flusher.send(GetFlusherStats),
        )
        .await;
        let metrics =
            metrics.map_err(|e| AppError::unavailable_mailbox("metrics_aggregator", e))?;
        Ok(AdminMetrics {
            totals: metrics.totals,
            models: metrics.models,
            sessions: sessions.map_err(|e| AppError::unavailable_mailbox("session_registry", e))?,
            flusher: flusher.map_err(|e| AppError::unavailable_mailbox("db_flusher", e))?,
            hub,
            rejected: metrics.rejected,
            recent: metrics.recent,
            generated_at_ms: chrono::Utc::now().timestamp_millis(),
        })
    }
}
