//! Starts every actor on the current arbiter and wires their addresses into `AppState`.

use std::sync::Arc;
use std::time::Duration;

use actix::Actor;
use tokio::sync::watch;

use crate::actors::cluster_bus::ClusterBus;
use crate::actors::collector::{Collector, DbCollectorStore};
use crate::actors::connections::Connections;
use crate::actors::db_flusher::{DbBatchWriter, DbFlusher, FlusherSettings};
use crate::actors::history_cache::HistoryCache;
use crate::actors::live_feed::{FeedSettings, LiveFeed};
use crate::actors::membership::Membership;
use crate::actors::metrics::MetricsAggregator;
use crate::actors::origins::Origins;
use crate::actors::quota_leases::QuotaLeases;
use crate::actors::rate_limiter::RateLimiter;
use crate::actors::reply_keeper::{KeeperLimits, ReplyKeeper, ATTACH_WAIT, KEPT_MAX_BYTES};
use crate::actors::report::ReportSources;
use crate::actors::session_registry::{HistoryLimits, SessionRegistry};
use crate::actors::socket_watchdog::{SocketWatchdog, WatchdogLimits};
use crate::app_state::{AppState, ClusterHandles, FeedLimits, GuardLimiters};
use crate::auth::JwtKeys;
use crate::chat::ChatPipeline;
use crate::cluster::RedisLink;
use crate::config::Settings;
use crate::db::{retry::Backoff, DbPool};
use crate::providers::ModelCatalog;

/// The window of `limits.auth_failure_limit`, per the setting's definition (per minute).
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Usage-history answers kept, and for how long: enough for dashboards refreshing together,
/// short enough that new usage shows up within seconds.
const HISTORY_CACHE_ENTRIES: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(256) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};
const HISTORY_CACHE_TTL: Duration = Duration::from_secs(3);

/// Starts every actor on the current arbiter and returns the shared state.
pub(super) fn start_actors(
    settings: Arc<Settings>,
    pool: DbPool,
    jwt: JwtKeys,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<AppState> {
    let timers = &settings.timers;
    let limits = &settings.limits;
    let cluster = start_cluster(&settings)?;
    let flusher = DbFlusher::new(
        Arc::new(DbBatchWriter { db: pool.clone() }),
        FlusherSettings {
            interval: Duration::from_millis(timers.flush_interval_ms),
            flush_threshold_rows: 2_000,
            max_batch_rows: 5_000,
            max_buffered_requests: settings.telemetry.flush_max_buffered_rows,
            retry: Backoff::default(),
        },
    )
    .start();
    let registry = SessionRegistry::new(
        HistoryLimits {
            max_messages: limits.history_max_messages,
            max_bytes: limits.history_max_bytes,
        },
        Duration::from_secs(timers.session_ttl_secs),
        Duration::from_secs(timers.session_cleanup_secs),
        flusher.clone(),
    )
    .start();
    let user_window = Duration::from_secs(limits.user_rate_window_secs);
    let user_limiter =
        RateLimiter::new("users", limits.user_rate_limit, user_window, user_window).start();
    let admin_window = Duration::from_secs(limits.admin_rate_window_secs);
    let guard = GuardLimiters {
        admins: RateLimiter::new(
            "admins",
            limits.admin_rate_limit,
            admin_window,
            admin_window,
        )
        .start(),
        auth_failures: RateLimiter::new(
            "auth_failures",
            limits.auth_failure_limit,
            AUTH_FAILURE_WINDOW,
            AUTH_FAILURE_WINDOW,
        )
        .start(),
    };
    let quota = QuotaLeases::new(
        pool.clone(),
        limits.daily_quota,
        Duration::from_millis(timers.flush_interval_ms),
    )
    .start();
    let metrics =
        MetricsAggregator::new(settings.telemetry.recent_requests, flusher.clone()).start();
    let connections = Connections::new(limits.user_max_connections).start();
    let sources = ReportSources {
        metrics: metrics.clone(),
        registry: registry.clone(),
        flusher: flusher.clone(),
        connections: connections.clone(),
    };
    let origins = Origins::new(&settings.server.allowed_origins).start();
    let live_feed = LiveFeed::new(
        sources,
        FeedSettings {
            interval: Duration::from_secs(1),
            recent_requests: settings.telemetry.feed_recent_requests,
            max_missed_frames: settings.telemetry.feed_max_drops,
        },
    )
    .start();
    let models = ModelCatalog::from_settings(&settings).map_err(|err| anyhow::anyhow!("{err}"))?;
    let pipeline = Arc::new(ChatPipeline::new(
        user_limiter.clone(),
        quota.clone(),
        registry.clone(),
        metrics.clone(),
        models,
    ));
    let feed = FeedLimits {
        max_backlog_bytes: settings.telemetry.feed_max_backlog_bytes,
        max_consecutive_drops: settings.telemetry.feed_max_drops,
    };
    // Names this instance in the collector's lease, so an operator can tell instances apart.
    let holder = format!(
        "pid{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let collector = Collector::new(
        holder,
        settings.collector.clone(),
        std::rc::Rc::new(DbCollectorStore { db: pool.clone() }),
    )
    .start();
    let heartbeat = Duration::from_secs(timers.heartbeat_secs);
    let watchdog = SocketWatchdog::new(
        WatchdogLimits {
            // A live socket's actor runs at least every heartbeat, which is shorter.
            frozen_after: Duration::from_secs(timers.client_timeout_secs),
            close_flush: Duration::from_secs(1),
        },
        heartbeat.min(Duration::from_secs(1)) / 2,
        registry.clone(),
    )
    .start();
    let reply_keeper = ReplyKeeper::new(KeeperLimits {
        grace: Duration::from_secs(timers.resume_grace_secs),
        kept_max_bytes: KEPT_MAX_BYTES,
        attach_wait: ATTACH_WAIT,
    })
    .start();
    Ok(AppState {
        settings,
        db: pool,
        jwt,
        pipeline,
        registry,
        connections,
        origins,
        live_feed,
        quota,
        flusher,
        metrics,
        user_limiter,
        guard,
        history_cache: HistoryCache::new(HISTORY_CACHE_ENTRIES, HISTORY_CACHE_TTL).start(),
        feed,
        shutdown,
        collector,
        watchdog,
        reply_keeper,
        cluster,
    })
}

/// Cluster mode's link, bus and membership, when `CHATGATE_REDIS_URL` is set. Redis need not
/// answer yet: the instance starts degraded and joins when it does.
fn start_cluster(settings: &Settings) -> anyhow::Result<Option<ClusterHandles>> {
    let Some(url) = settings.cluster.redis_url.as_deref() else {
        return Ok(None);
    };
    let link = RedisLink::connect(
        url,
        &settings.cluster.instance_id,
        settings.cluster.redis_key_prefix.as_deref(),
    )?;
    let bus = ClusterBus::new(link.clone()).start();
    let membership = Membership::new(link.clone(), bus.clone()).start();
    Ok(Some(ClusterHandles {
        link,
        bus,
        membership,
    }))
}
