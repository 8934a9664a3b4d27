//! What handlers share: immutable settings and actor addresses. Nothing in here is locked;
//! all mutable state lives inside the actors. It sits above the chat pipeline and below the
//! transports (ws, http), which read it; startup builds it.

use std::sync::Arc;

use actix::Addr;
use tokio::sync::watch;

use crate::actors::cluster_bus::ClusterBus;
use crate::actors::collector::Collector;
use crate::actors::connections::Connections;
use crate::actors::db_flusher::DbFlusher;
use crate::actors::history_cache::HistoryCache;
use crate::actors::live_feed::LiveFeed;
use crate::actors::membership::Membership;
use crate::actors::metrics::MetricsAggregator;
use crate::actors::origins::Origins;
use crate::actors::quota_leases::QuotaLeases;
use crate::actors::rate_limiter::RateLimiter;
use crate::actors::reply_keeper::ReplyKeeper;
use crate::actors::report::ReportSources;
use crate::actors::session_registry::SessionRegistry;
use crate::actors::socket_watchdog::SocketWatchdog;
use crate::auth::JwtKeys;
use crate::chat::ChatPipeline;
use crate::cluster::RedisLink;
use crate::config::Settings;
use crate::db::DbPool;

/// Limits for live-feed subscribers, from the settings.
#[derive(Clone, Debug)]
pub struct FeedLimits {
    pub max_backlog_bytes: u64,
    pub max_consecutive_drops: u32,
}

/// The limiters the request guard consults; each is its own RateLimiter actor.
#[derive(Clone)]
pub struct GuardLimiters {
    pub admins: Addr<RateLimiter>,
    pub auth_failures: Addr<RateLimiter>,
}

/// Cluster mode's handles (`CHATGATE_REDIS_URL` set); `None` runs one instance on its own.
#[derive(Clone)]
pub struct ClusterHandles {
    pub link: RedisLink,
    pub bus: Addr<ClusterBus>,
    pub membership: Addr<Membership>,
}

pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: DbPool,
    pub jwt: JwtKeys,
    pub pipeline: Arc<ChatPipeline>,
    pub registry: Addr<SessionRegistry>,
    pub connections: Addr<Connections>,
    pub origins: Addr<Origins>,
    pub live_feed: Addr<LiveFeed>,
    pub quota: Addr<QuotaLeases>,
    pub flusher: Addr<DbFlusher>,
    pub metrics: Addr<MetricsAggregator>,
    pub user_limiter: Addr<RateLimiter>,
    pub guard: GuardLimiters,
    pub history_cache: Addr<HistoryCache>,
    pub feed: FeedLimits,
    /// Turns true when shutdown starts; streamed HTTP replies end with `unavailable` then.
    pub shutdown: watch::Receiver<bool>,
    pub collector: Addr<Collector>,
    pub watchdog: Addr<SocketWatchdog>,
    /// Replies whose socket went, and ended ones, for `CHATGATE_RESUME_GRACE_SECS`.
    pub reply_keeper: Addr<ReplyKeeper>,
    pub cluster: Option<ClusterHandles>,
}

impl AppState {
    /// The actors an `/admin/metrics` report is gathered from.
    pub fn report_sources(&self) -> ReportSources {
        ReportSources {
            metrics: self.metrics.clone(),
            registry: self.registry.clone(),
            flusher: self.flusher.clone(),
            connections: self.connections.clone(),
            reply_keeper: self.reply_keeper.clone(),
            membership: self.cluster.as_ref().map(|c| c.membership.clone()),
            instance: Arc::from(self.settings.cluster.instance_id.as_str()),
        }
    }
}
