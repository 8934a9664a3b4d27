//! The settings table: each setting is declared here once. Adding one is one entry (plus its
//! README row, which `tests/readme_config.rs` holds to this table).

use ipnet::IpNet;

use super::checks::{
    check_bind, check_database_url, check_instance_id, check_origins, check_redis_url,
    check_secret, default_instance_id, show_optional_url, show_url,
};
use super::declare::{readme_default, toml_key, Declaration, SettingValue};
use super::models::ModelSettings;
use super::{check_range, env_value, ConfigProblem, Secret};

/// Longer timers are typos, and far-future deadlines overflow `Instant` arithmetic downstream.
pub const MAX_DURATION_SECS: u64 = 365 * 24 * 60 * 60;
const NO_MAX: i128 = i128::MAX;
const SECS: i128 = MAX_DURATION_SECS as i128;
const MILLIS: i128 = SECS * 1000;

declare_settings! {
    /// Per-user and per-admin limits.
    limits: LimitSettings {
        /// chats per user in any window
        user_rate_limit: u32 = 30;
            env "CHATGATE_USER_RATE_LIMIT", unit "chats", range 1 => NO_MAX;
        /// the user rate limit's window
        user_rate_window_secs: u64 = 60;
            env "CHATGATE_USER_RATE_WINDOW_SECS", unit "s", range 1 => SECS;
        /// admin requests per admin in any window
        admin_rate_limit: u32 = 20;
            env "CHATGATE_ADMIN_RATE_LIMIT", unit "requests", range 1 => NO_MAX;
        /// the admin rate limit's window
        admin_rate_window_secs: u64 = 60;
            env "CHATGATE_ADMIN_RATE_WINDOW_SECS", unit "s", range 1 => SECS;
        /// chats per user per UTC day unless the user's row sets its own
        daily_quota: i64 = 1_000;
            env "CHATGATE_DAILY_QUOTA", unit "chats", range 1 => NO_MAX;
        /// messages of the session history a model sees (oldest dropped first)
        history_max_messages: usize = 20;
            env "CHATGATE_HISTORY_MAX_MESSAGES", unit "messages", range 1 => NO_MAX;
        /// bytes of the session history a model sees (oldest dropped first)
        history_max_bytes: usize = 32_768;
            env "CHATGATE_HISTORY_MAX_BYTES", unit "bytes", range 1 => NO_MAX;
        /// open chat WebSockets per user; past it the handshake gets 429
        user_max_connections: u32 = 16;
            env "CHATGATE_USER_MAX_CONNECTIONS", unit "connections", range 1 => 1_000_000;
        /// failed authentications per client address per minute; past it 429
        auth_failure_limit: u32 = 30;
            env "CHATGATE_AUTH_FAILURE_LIMIT", unit "failures/min", range 1 => 1_000_000;
    }

    /// Deadlines and periods.
    timers: TimerSettings {
        /// deadline for one model reply (a model's `timeout_secs` overrides)
        stream_timeout_secs: u64 = 120;
            env "CHATGATE_STREAM_TIMEOUT_SECS", unit "s", range 1 => SECS;
        /// how long an ended session stays resumable
        session_ttl_secs: u64 = 900;
            env "CHATGATE_SESSION_TTL_SECS", unit "s", range 1 => SECS;
        /// how often the session sweep runs
        session_cleanup_secs: u64 = 300;
            env "CHATGATE_SESSION_CLEANUP_SECS", unit "s", range 1 => SECS;
        /// server ping interval
        heartbeat_secs: u64 = 10;
            env "CHATGATE_HEARTBEAT_SECS", unit "s", range 1 => SECS;
        /// silence after which a connection is closed (must exceed the ping interval)
        client_timeout_secs: u64 = 30;
            env "CHATGATE_CLIENT_TIMEOUT_SECS", unit "s", range 1 => SECS;
        /// how often buffered rows are written
        flush_interval_ms: u64 = 1_000;
            env "CHATGATE_FLUSH_INTERVAL_MS", unit "ms", range 1 => MILLIS;
        /// how long a reply goes on after its socket drops, waiting to be resumed (0 = stop with the socket)
        resume_grace_secs: u64 = 30;
            env "CHATGATE_RESUME_GRACE_SECS", unit "s", range 0 => 3_600;
    }

    /// The listener.
    server: ServerSettings {
        /// listen address; `:PORT` means all interfaces; port 0 picks a free port
        bind: String = "127.0.0.1:8080".to_string();
            env "CHATGATE_BIND", unit "address", check check_bind;
        /// comma list of browser origins allowed to open WebSockets (`*` = any)
        allowed_origins: Vec<String> = Vec::new();
            env "CHATGATE_ALLOWED_ORIGINS", unit "origins", check check_origins;
        /// largest client frame / HTTP JSON body
        max_frame_bytes: usize = 65_536;
            env "CHATGATE_MAX_FRAME_BYTES", unit "bytes", range 1024 => NO_MAX;
        /// graceful shutdown deadline
        shutdown_timeout_secs: u64 = 10;
            env "CHATGATE_SHUTDOWN_TIMEOUT_SECS", unit "s", range 1 => SECS;
        /// comma list of load balancer addresses or CIDR blocks whose X-Forwarded-For is believed
        trusted_proxies: Vec<IpNet> = Vec::new();
            env "CHATGATE_TRUSTED_PROXIES", unit "addresses";
    }

    /// `Debug` shows the URL redacted, like the dump.
    database: DatabaseSettings {
        /// `postgres://…`/`postgresql://…` selects PostgreSQL; anything else is a SQLite path
        url: String = "chatgate.db".to_string();
            env "DATABASE_URL", unit "URL", check check_database_url, show show_url;
        /// database connections per instance
        pool_max_size: u32 = 8;
            env "CHATGATE_DB_POOL_SIZE", unit "connections", range 1 => 256;
        /// wait for a pooled connection before answering `unavailable`
        connection_timeout_ms: u64 = 5_000;
            env "CHATGATE_DB_CONNECT_TIMEOUT_MS", unit "ms", range 1 => MILLIS;
    }

    /// Token checks.
    auth: AuthSettings {
        /// HS256 secret, at least 32 characters, not a well-known weak value; required unless `--dev`
        jwt_secret: Option<Secret> = None;
            env "CHATGATE_JWT_SECRET", unit "secret", check check_secret, readme "none";
        /// when set, a token must carry this `aud`
        jwt_audience: Option<String> = None;
            env "CHATGATE_JWT_AUDIENCE", unit "text";
        /// when set, a token must carry this `iss`
        jwt_issuer: Option<String> = None;
            env "CHATGATE_JWT_ISSUER", unit "text";
    }

    /// Usage metrics and the live feed.
    telemetry: TelemetrySettings {
        /// newest request details kept in memory for the dashboard
        recent_requests: usize = 1_000;
            env "CHATGATE_RECENT_REQUESTS", unit "requests", range 0 => 100_000;
        /// raw request rows held while the database is away; past it the oldest are dropped
        flush_max_buffered_rows: usize = 200_000;
            env "CHATGATE_FLUSH_MAX_BUFFERED_ROWS", unit "rows", range 1 => NO_MAX;
        /// unsent bytes an `/admin/ws` subscriber may leave before frames for it are dropped
        feed_max_backlog_bytes: u64 = 65_536;
            env "CHATGATE_FEED_MAX_BACKLOG_BYTES", unit "bytes", range 1024 => NO_MAX;
        /// frames in a row a subscriber may miss before it is disconnected
        feed_max_drops: u32 = 3;
            env "CHATGATE_FEED_MAX_DROPS", unit "frames", range 1 => 1_000;
        /// newest requests included in each live-feed frame
        feed_recent_requests: usize = 50;
            env "CHATGATE_FEED_RECENT_REQUESTS", unit "requests", range 0 => 100_000;
    }

    /// The usage collector: retention and its lease.
    collector: CollectorSettings {
        /// how often each instance tries a usage collection run
        interval_secs: u64 = 3_600;
            env "CHATGATE_COLLECTOR_INTERVAL_SECS", unit "s", range 1 => SECS;
        /// no effect since the fold step was removed; still accepted so existing configurations load
        fold_age_secs: u64 = 300;
            env "CHATGATE_COLLECTOR_FOLD_AGE_SECS", unit "s", range 0 => SECS;
        /// raw request rows older than this are deleted once the rollups count them
        raw_retention_secs: u64 = 7 * 24 * 3_600;
            env "CHATGATE_RAW_RETENTION_SECS", unit "s", range 60 => 10 * SECS;
        /// daily quota rows of days further back than this are deleted
        quota_retention_days: u32 = 35;
            env "CHATGATE_QUOTA_RETENTION_DAYS", unit "days", range 1 => 3_650;
        /// the collector lease's TTL: how long a killed instance's lease blocks the next run
        lease_secs: u64 = 60;
            env "CHATGATE_COLLECTOR_LEASE_SECS", unit "s", range 3 => 3_600;
    }

    /// Cluster mode: shared state in Redis.
    cluster: ClusterSettings {
        /// `redis://` or `rediss://` URL; set = cluster mode (needs PostgreSQL)
        redis_url: Option<String> = None;
            env "CHATGATE_REDIS_URL", unit "URL", check check_redis_url, show show_optional_url;
        /// this instance's name in the cluster views; unique among running instances
        instance_id: String = default_instance_id();
            env "CHATGATE_INSTANCE_ID", unit "name", check check_instance_id,
            readme "host name + random suffix";
        /// the prefix of every Redis key and channel (deployments sharing one Redis differ)
        redis_key_prefix: Option<String> = None;
            env "CHATGATE_REDIS_KEY_PREFIX", unit "text", readme "chatgate:<db>:";
    }
}
