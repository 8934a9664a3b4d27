//! Starts every actor on the current arbiter and wires their addresses into `AppState`.

use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use tokio::sync::watch;

use crate::actors::cluster_bus::{ClusterBus, RouteCommands};
use crate::actors::collector::{Collector, DbCollectorStore};
use crate::actors::connections::{Connections, RedisSlots};
use crate::actors::db_flusher::{DbBatchWriter, DbFlusher, FlusherSettings};
use crate::actors::history_cache::HistoryCache;
use crate::actors::live_feed::{FeedSettings, LiveFeed};
use crate::actors::membership::{self, Membership, NotifyOnRejoin};
use crate::actors::metrics::MetricsAggregator;
use crate::actors::origins::Origins;
use crate::actors::quota_leases::QuotaLeases;
use crate::actors::rate_limiter::RateLimiter;
use crate::actors::reply_keeper::{
    KeeperLimits, ReplyKeeper, ReplyMirror, ATTACH_WAIT, KEPT_MAX_BYTES,
};
use crate::actors::report::ReportSources;
use crate::actors::session_registry::{HistoryLimits, RedisSessionStore, SessionRegistry};
use crate::actors::socket_watchdog::{SocketWatchdog, WatchdogLimits};
use crate::app_state::{AppState, ClusterHandles, FeedLimits, GuardLimiters};
use crate::auth::JwtKeys;
use crate::chat::ChatPipeline;
use crate::cluster::protocol::CommandKind;
use crate::cluster::RedisLink;
use crate::config::Settings;
use crate::db::queries::origins::StoredOrigins;
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

/// How often each instance rereads the allowed origins from the database. Changes normally
/// arrive at once (the instance's own, or the bus's notice); this only bounds how late a
/// notice lost to a Redis outage can be — rejoining rereads too — at one cheap query per
/// period.
const ORIGINS_RELOAD: Duration = Duration::from_secs(30);

/// Starts every actor on the current arbiter and returns the shared state.
pub(super) fn start_actors(
    settings: Arc<Settings>,
    pool: DbPool,
    jwt: JwtKeys,
    shutdown: watch::Receiver<bool>,
    origins: &StoredOrigins,
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
    let registry = start_registry(&settings, cluster.as_ref(), flusher.clone());
    // In cluster mode the limits hold for all instances together (windows in Redis).
    let shared_link = cluster.as_ref().map(|cluster| &cluster.link);
    let user_window = Duration::from_secs(limits.user_rate_window_secs);
    let user_limiter = RateLimiter::for_cluster(
        "users",
        limits.user_rate_limit,
        user_window,
        user_window,
        shared_link,
    )
    .start();
    let admin_window = Duration::from_secs(limits.admin_rate_window_secs);
    let guard = GuardLimiters {
        admins: RateLimiter::for_cluster(
            "admins",
            limits.admin_rate_limit,
            admin_window,
            admin_window,
            shared_link,
        )
        .start(),
        auth_failures: RateLimiter::for_cluster(
            "auth_failures",
            limits.auth_failure_limit,
            AUTH_FAILURE_WINDOW,
            AUTH_FAILURE_WINDOW,
            shared_link,
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
    let connections = start_connections(&settings, cluster.as_ref(), &watchdog);
    let reply_keeper = start_reply_keeper(&settings, cluster.as_ref());
    let sources = ReportSources {
        metrics: metrics.clone(),
        registry: registry.clone(),
        flusher: flusher.clone(),
        connections: connections.clone(),
        reply_keeper: reply_keeper.clone(),
        membership: cluster.as_ref().map(|c| c.membership.clone()),
        instance: Arc::from(settings.cluster.instance_id.as_str()),
    };
    let origins = Origins::new(origins, pool.clone(), ORIGINS_RELOAD).start();
    if let Some(cluster) = &cluster {
        // Another instance's change arrives as a notice to reread the database.
        cluster.bus.do_send(RouteCommands {
            kind: CommandKind::OriginsChanged,
            to: origins.clone().recipient(),
        });
        cluster
            .membership
            .do_send(NotifyOnRejoin(origins.clone().recipient()));
    }
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

/// The reply keeper; in cluster mode mirroring kept replies to Redis and answering the other
/// instances' commands about them.
fn start_reply_keeper(settings: &Settings, cluster: Option<&ClusterHandles>) -> Addr<ReplyKeeper> {
    let grace = Duration::from_secs(settings.timers.resume_grace_secs);
    let keeper = ReplyKeeper::new(KeeperLimits {
        grace,
        kept_max_bytes: KEPT_MAX_BYTES,
        attach_wait: ATTACH_WAIT,
    });
    let Some(cluster) = cluster else {
        return keeper.start();
    };
    let mirror = ReplyMirror::new(
        cluster.link.clone(),
        grace,
        Arc::new(crate::ws::chat_frames::owner_gone),
    );
    let keeper = keeper
        .mirrored(mirror, cluster.bus.clone().recipient())
        .start();
    cluster.bus.do_send(RouteCommands {
        kind: CommandKind::Replies,
        to: keeper.clone().recipient(),
    });
    keeper
}

/// The open connections and the per-user cap: over the whole cluster in cluster mode, where
/// they also close a disabled user's sockets when another instance says so.
fn start_connections(
    settings: &Settings,
    cluster: Option<&ClusterHandles>,
    watchdog: &Addr<SocketWatchdog>,
) -> Addr<Connections> {
    let connections = Connections::new(settings.limits.user_max_connections)
        .with_watchdog(watchdog.clone().recipient());
    let Some(cluster) = cluster else {
        return connections.start();
    };
    let connections = connections
        .with_shared(Box::new(RedisSlots::new(cluster.link.clone())))
        .start();
    cluster.bus.do_send(RouteCommands {
        kind: CommandKind::CloseUserSockets,
        to: connections.clone().recipient(),
    });
    cluster
        .membership
        .do_send(NotifyOnRejoin(connections.clone().recipient()));
    connections
}

/// The session registry; in cluster mode sharing its sessions through Redis and answering
/// the other instances' commands about the sessions it holds.
fn start_registry(
    settings: &Settings,
    cluster: Option<&ClusterHandles>,
    flusher: actix::Addr<DbFlusher>,
) -> actix::Addr<SessionRegistry> {
    let limits = &settings.limits;
    let ttl = Duration::from_secs(settings.timers.session_ttl_secs);
    let registry = SessionRegistry::new(
        HistoryLimits {
            max_messages: limits.history_max_messages,
            max_bytes: limits.history_max_bytes,
        },
        ttl,
        Duration::from_secs(settings.timers.session_cleanup_secs),
        flusher,
    );
    let Some(cluster) = cluster else {
        return registry.start();
    };
    let store = RedisSessionStore::new(cluster.link.clone(), ttl, membership::DEAD_AFTER);
    let registry = registry
        .shared_through(
            std::rc::Rc::new(store),
            Some(cluster.bus.clone().recipient()),
            ttl,
        )
        .start();
    for kind in [CommandKind::EndSession, CommandKind::TakeOverSession] {
        cluster.bus.do_send(RouteCommands {
            kind,
            to: registry.clone().recipient(),
        });
    }
    cluster
        .membership
        .do_send(NotifyOnRejoin(registry.clone().recipient()));
    registry
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
