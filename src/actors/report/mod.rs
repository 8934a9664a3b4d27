//! The `/admin/metrics` object (also pushed on `/admin/ws`), assembled from each actor's
//! owned snapshot: nothing here holds state.

use std::collections::BTreeMap;

use actix::Addr;
use serde::Serialize;

use super::connections::{Connections, GetConnectionCount};
use super::db_flusher::{DbFlusher, FlusherStats, GetFlusherStats};
use super::live_feed::FeedStats;
use super::metrics::state::RecentRequest;
use super::metrics::{GetMetricsSnapshot, MetricsAggregator, Windows};
use super::session_registry::{GetSessionStats, SessionRegistry, SessionStats};
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

/// The open connections and the live feed, reported together as `hub`.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct HubStats {
    pub connections: usize,
    pub subscribers: usize,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub subscribers_dropped: u64,
}

impl HubStats {
    pub fn new(connections: usize, feed: FeedStats) -> HubStats {
        HubStats {
            connections,
            subscribers: feed.subscribers,
            frames_sent: feed.frames_sent,
            frames_dropped: feed.frames_dropped,
            subscribers_dropped: feed.subscribers_dropped,
        }
    }
}

/// The actors a report is gathered from (the live feed adds its own numbers).
#[derive(Clone)]
pub struct ReportSources {
    pub metrics: Addr<MetricsAggregator>,
    pub registry: Addr<SessionRegistry>,
    pub flusher: Addr<DbFlusher>,
    pub connections: Addr<Connections>,
}

impl ReportSources {
    /// Asks every actor at once; each answers with an owned snapshot.
    pub async fn gather(
        &self,
        recent_limit: usize,
        feed: FeedStats,
    ) -> Result<AdminMetrics, AppError> {
        let (metrics, sessions, flusher, connections) = futures_util::future::join4(
            self.metrics.send(GetMetricsSnapshot { recent_limit }),
            self.registry.send(GetSessionStats),
            self.flusher.send(GetFlusherStats),
            self.connections.send(GetConnectionCount),
        )
        .await;
        let connections =
            connections.map_err(|e| AppError::unavailable_mailbox("connections", e))?;
        let metrics =
            metrics.map_err(|e| AppError::unavailable_mailbox("metrics_aggregator", e))?;
        Ok(AdminMetrics {
            totals: metrics.totals,
            models: metrics.models,
            sessions: sessions.map_err(|e| AppError::unavailable_mailbox("session_registry", e))?,
            flusher: flusher.map_err(|e| AppError::unavailable_mailbox("db_flusher", e))?,
            hub: HubStats::new(connections, feed),
            rejected: metrics.rejected,
            recent: metrics.recent,
            generated_at_ms: chrono::Utc::now().timestamp_millis(),
        })
    }
}
