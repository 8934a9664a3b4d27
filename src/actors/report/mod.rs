//! The `/admin/metrics` object (also pushed on `/admin/ws`) and `/metrics`' numbers,
//! assembled from each actor's owned snapshot: nothing here holds state.
//!
//! In cluster mode every instance publishes its own numbers each second (an
//! [`InstanceSnapshot`], through `Membership`'s heartbeat); a report adds this instance's fresh
//! numbers to the peers' latest snapshots ([`cluster::ClusterNumbers`]).

pub mod cluster;

use std::collections::BTreeMap;
use std::sync::Arc;

use actix::Addr;
use serde::{Deserialize, Serialize};

use super::connections::{Connections, GetConnectionCount};
use super::db_flusher::{DbFlusher, FlusherStats, GetFlusherStats};
use super::live_feed::FeedStats;
use super::membership::{ClusterView, GetClusterView, Membership};
use super::metrics::state::RecentRequest;
use super::metrics::{GetMetricsParts, MetricsAggregator, MetricsParts, Windows};
use super::reply_keeper::{GetKeeperStats, KeeperStats, ReplyKeeper};
use super::session_registry::{GetSessionStats, SessionRegistry, SessionStats};
use crate::cluster::RedisHealth;
use crate::error::AppError;

pub use cluster::ClusterNumbers;

/// Every window is `{minute, hour, day}`; `models` is keyed by model name, `rejected` by the
/// error code of chats refused at admission; `recent` lists the newest requests.
///
/// `totals`, `models`, `rejected`, `recent`, `sessions`, `flusher` and `hub` count every live
/// instance of the cluster (this one alone without Redis); `instances` has each one's own.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct AdminMetrics {
    pub totals: Windows,
    pub models: BTreeMap<String, Windows>,
    /// The instances' sessions added up.
    pub sessions: SessionStats,
    /// The instances' flushers added up; `last_error` is one instance's latest, prefixed with
    /// its id when there are several.
    pub flusher: FlusherStats,
    /// The instances' connections and feed counters added up.
    pub hub: HubStats,
    pub rejected: BTreeMap<String, u64>,
    pub recent: Vec<RecentRequest>,
    pub generated_at_ms: i64,
    /// Every live instance by id, this one included.
    pub instances: BTreeMap<String, InstanceView>,
    pub cluster: ClusterSummary,
}

/// One instance's own numbers, and how long ago its heartbeat was seen (0 for the instance
/// answering).
#[derive(Clone, Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct InstanceView {
    pub sessions: SessionStats,
    pub flusher: FlusherStats,
    pub hub: HubStats,
    pub seen_ms_ago: u64,
}

/// `redis`: `off` without cluster mode, else whether Redis answers; `instances`: how many are
/// in `instances`.
#[derive(Clone, Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ClusterSummary {
    pub redis: RedisHealth,
    pub instances: usize,
}

/// The open connections and the live feed, reported together as `hub`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct HubStats {
    pub connections: usize,
    pub subscribers: usize,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub subscribers_dropped: u64,
    /// Replies still running whose socket went, waiting to be resumed (the dashboard's
    /// "replies awaiting resume").
    #[serde(default)]
    pub replies_awaiting_resume: usize,
    /// Ended replies whose frames are still kept for a resume.
    #[serde(default)]
    pub replies_kept: usize,
    /// Bytes of kept reply frames.
    #[serde(default)]
    pub replies_kept_bytes: usize,
}

impl HubStats {
    pub fn new(connections: usize, feed: FeedStats, replies: KeeperStats) -> HubStats {
        HubStats {
            connections,
            subscribers: feed.subscribers,
            frames_sent: feed.frames_sent,
            frames_dropped: feed.frames_dropped,
            subscribers_dropped: feed.subscribers_dropped,
            replies_awaiting_resume: replies.running,
            replies_kept: replies.ended,
            replies_kept_bytes: replies.bytes,
        }
    }
}

/// Bumped when a snapshot's meaning changes, so instances of different builds during a rolling
/// deploy leave out each other's numbers rather than misread them.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Newest requests one snapshot carries at most, whatever the feed shows: a snapshot is
/// written to Redis and read by every peer each second (about 150 bytes a request).
pub const PUBLISHED_RECENT: usize = 100;

/// What one instance publishes about itself each second (and what it reports fresh about
/// itself): the mergeable metrics and its own sessions, flusher and hub.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct InstanceSnapshot {
    pub v: u32,
    pub generated_at_ms: i64,
    pub metrics: MetricsParts,
    pub sessions: SessionStats,
    pub flusher: FlusherStats,
    pub hub: HubStats,
}

/// The actors a report is gathered from (the live feed adds its own numbers).
#[derive(Clone)]
pub struct ReportSources {
    pub metrics: Addr<MetricsAggregator>,
    pub registry: Addr<SessionRegistry>,
    pub flusher: Addr<DbFlusher>,
    pub connections: Addr<Connections>,
    pub reply_keeper: Addr<ReplyKeeper>,
    /// Cluster mode's membership (`None` without Redis).
    pub membership: Option<Addr<Membership>>,
    /// This instance's id (`CHATGATE_INSTANCE_ID`).
    pub instance: Arc<str>,
}

impl ReportSources {
    /// This instance's own numbers: asks every actor at once; each answers with an owned
    /// snapshot.
    pub async fn local(
        &self,
        recent_limit: usize,
        feed: FeedStats,
    ) -> Result<InstanceSnapshot, AppError> {
        let ((metrics, sessions, flusher, connections), replies) = futures_util::future::join(
            futures_util::future::join4(
                self.metrics.send(GetMetricsParts { recent_limit }),
                self.registry.send(GetSessionStats),
                self.flusher.send(GetFlusherStats),
                self.connections.send(GetConnectionCount),
            ),
            self.reply_keeper.send(GetKeeperStats),
        )
        .await;
        let replies = replies.map_err(|e| AppError::unavailable_mailbox("reply_keeper", e))?;
        let connections =
            connections.map_err(|e| AppError::unavailable_mailbox("connections", e))?;
        Ok(InstanceSnapshot {
            v: SNAPSHOT_VERSION,
            generated_at_ms: chrono::Utc::now().timestamp_millis(),
            metrics: metrics.map_err(|e| AppError::unavailable_mailbox("metrics_aggregator", e))?,
            sessions: sessions.map_err(|e| AppError::unavailable_mailbox("session_registry", e))?,
            flusher: flusher.map_err(|e| AppError::unavailable_mailbox("db_flusher", e))?,
            hub: HubStats::new(connections, feed, replies),
        })
    }

    /// The cluster as the membership's last heartbeat saw it; `None` without cluster mode.
    /// Never waits on Redis: the membership answers from what it holds.
    pub async fn cluster_view(&self) -> Result<Option<ClusterView>, AppError> {
        match &self.membership {
            None => Ok(None),
            Some(membership) => membership
                .send(GetClusterView)
                .await
                .map(Some)
                .map_err(|e| AppError::unavailable_mailbox("membership", e)),
        }
    }

    /// This instance's fresh numbers with the peers' latest snapshots.
    pub async fn gather_cluster(
        &self,
        recent_limit: usize,
        feed: FeedStats,
    ) -> Result<ClusterNumbers, AppError> {
        let own = self.local(recent_limit, feed).await?;
        let view = self.cluster_view().await?;
        Ok(ClusterNumbers::new(&self.instance, own, view))
    }

    /// The `/admin/metrics` object.
    pub async fn gather(
        &self,
        recent_limit: usize,
        feed: FeedStats,
    ) -> Result<AdminMetrics, AppError> {
        Ok(self
            .gather_cluster(recent_limit, feed)
            .await?
            .report(recent_limit))
    }
}
