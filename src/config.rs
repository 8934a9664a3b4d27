//! Settings, layered: built-in defaults, then the optional flat TOML file named by
//! `CHATGATE_CONFIG`, then environment variables. `load` reports every parse problem and
//! `validate` every semantic one, so a broken deployment is fixed in one round instead of
//! one error per restart.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

/// Longer timers are typos, and far-future deadlines overflow `Instant` arithmetic downstream.
const MAX_DURATION_SECS: u64 = 365 * 24 * 60 * 60;
const MIN_SECRET_CHARS: usize = 32;
const MAX_MODEL_DELAY_MS: u64 = 60_000;
/// Upstream call defaults for `provider = "openai"` models (per model in the TOML file).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_FIRST_BYTE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 250;
pub const DEFAULT_MAX_RETRY_AFTER_SECS: u64 = 10;
const MAX_ATTEMPTS_LIMIT: u32 = 10;
const GENERATE_SECRET: &str = "generate one with `openssl rand -hex 32`";

/// Compared case-insensitively; see `is_weak_secret` for how a secret matches.
const WEAK_SECRETS: &str = "secret changeme change-me your-256-bit-secret jwt-secret jwt_secret \
    jwtsecret password passw0rd admin default test example supersecret mysecret letmein qwerty \
    123456 token key chatgate";

/// Reads one numeric setting, widened so every integer type shares one check.
type Getter = fn(&Settings) -> i128;
const NO_MAX: i128 = i128::MAX;
const SECS: i128 = MAX_DURATION_SECS as i128;
const MILLIS: i128 = SECS * 1000;

/// (key, getter, minimum, maximum); the default quoted in messages comes through the same getter.
#[rustfmt::skip] // one rule per line reads as a table
const NUMBER_RULES: &[(&str, Getter, i128, i128)] = &[
    ("CHATGATE_USER_RATE_LIMIT",        |s| s.limits.user_rate_limit.into(),          1,    NO_MAX),
    ("CHATGATE_USER_RATE_WINDOW_SECS",  |s| s.limits.user_rate_window_secs.into(),    1,    SECS),
    ("CHATGATE_ADMIN_RATE_LIMIT",       |s| s.limits.admin_rate_limit.into(),         1,    NO_MAX),
    ("CHATGATE_ADMIN_RATE_WINDOW_SECS", |s| s.limits.admin_rate_window_secs.into(),   1,    SECS),
    ("CHATGATE_DAILY_QUOTA",            |s| s.limits.daily_quota.into(),              1,    NO_MAX),
    ("CHATGATE_HISTORY_MAX_MESSAGES",   |s| s.limits.history_max_messages as i128,    1,    NO_MAX),
    ("CHATGATE_HISTORY_MAX_BYTES",      |s| s.limits.history_max_bytes as i128,       1,    NO_MAX),
    ("CHATGATE_STREAM_TIMEOUT_SECS",    |s| s.timers.stream_timeout_secs.into(),      1,    SECS),
    ("CHATGATE_SESSION_TTL_SECS",       |s| s.timers.session_ttl_secs.into(),         1,    SECS),
    ("CHATGATE_SESSION_CLEANUP_SECS",   |s| s.timers.session_cleanup_secs.into(),     1,    SECS),
    ("CHATGATE_HEARTBEAT_SECS",         |s| s.timers.heartbeat_secs.into(),           1,    SECS),
    ("CHATGATE_CLIENT_TIMEOUT_SECS",    |s| s.timers.client_timeout_secs.into(),      1,    SECS),
    ("CHATGATE_FLUSH_INTERVAL_MS",      |s| s.timers.flush_interval_ms.into(),        1,    MILLIS),
    ("CHATGATE_MAX_FRAME_BYTES",        |s| s.server.max_frame_bytes as i128,         1024, NO_MAX),
    ("CHATGATE_SHUTDOWN_TIMEOUT_SECS",  |s| s.server.shutdown_timeout_secs.into(),    1,    SECS),
    ("CHATGATE_DB_POOL_SIZE",           |s| s.database.pool_max_size.into(),          1,    256),
    ("CHATGATE_DB_CONNECT_TIMEOUT_MS",  |s| s.database.connection_timeout_ms.into(),  1,    MILLIS),
    ("CHATGATE_RECENT_REQUESTS",        |s| s.telemetry.recent_requests as i128,      0,    100_000),
    ("CHATGATE_FLUSH_MAX_BUFFERED_ROWS", |s| s.telemetry.flush_max_buffered_rows as i128, 1, NO_MAX),
    ("CHATGATE_FEED_MAX_BACKLOG_BYTES", |s| s.telemetry.feed_max_backlog_bytes.into(), 1024, NO_MAX),
    ("CHATGATE_FEED_MAX_DROPS",         |s| s.telemetry.feed_max_drops.into(),        1,    1_000),
    ("CHATGATE_FEED_RECENT_REQUESTS",   |s| s.telemetry.feed_recent_requests as i128, 0,    100_000),
    ("CHATGATE_COLLECTOR_INTERVAL_SECS", |s| s.collector.interval_secs.into(),       1,    SECS),
    ("CHATGATE_COLLECTOR_FOLD_AGE_SECS", |s| s.collector.fold_age_secs.into(),       0,    SECS),
    ("CHATGATE_RAW_RETENTION_SECS",     |s| s.collector.raw_retention_secs.into(),    60,   10 * SECS),
    ("CHATGATE_QUOTA_RETENTION_DAYS",   |s| s.collector.quota_retention_days.into(),  1,    3_650),
    ("CHATGATE_COLLECTOR_LEASE_SECS",   |s| s.collector.lease_secs.into(),            3,    3_600),
];

/// Every key of the flat TOML file with the key its problems are reported under (the env var
/// that overrides it). Tests keep this in sync with `Layer` and `Layer::from_env`.
const FILE_KEYS: &[(&str, &str)] = &[
    ("bind", "CHATGATE_BIND"),
    ("database_url", "DATABASE_URL"),
    ("db_pool_size", "CHATGATE_DB_POOL_SIZE"),
    ("db_connect_timeout_ms", "CHATGATE_DB_CONNECT_TIMEOUT_MS"),
    ("jwt_secret", "CHATGATE_JWT_SECRET"),
    ("allowed_origins", "CHATGATE_ALLOWED_ORIGINS"),
    ("user_rate_limit", "CHATGATE_USER_RATE_LIMIT"),
    ("user_rate_window_secs", "CHATGATE_USER_RATE_WINDOW_SECS"),
    ("admin_rate_limit", "CHATGATE_ADMIN_RATE_LIMIT"),
    ("admin_rate_window_secs", "CHATGATE_ADMIN_RATE_WINDOW_SECS"),
    ("daily_quota", "CHATGATE_DAILY_QUOTA"),
    ("history_max_messages", "CHATGATE_HISTORY_MAX_MESSAGES"),
    ("history_max_bytes", "CHATGATE_HISTORY_MAX_BYTES"),
    ("stream_timeout_secs", "CHATGATE_STREAM_TIMEOUT_SECS"),
    ("session_ttl_secs", "CHATGATE_SESSION_TTL_SECS"),
    ("session_cleanup_secs", "CHATGATE_SESSION_CLEANUP_SECS"),
    ("heartbeat_secs", "CHATGATE_HEARTBEAT_SECS"),
    ("client_timeout_secs", "CHATGATE_CLIENT_TIMEOUT_SECS"),
    ("max_frame_bytes", "CHATGATE_MAX_FRAME_BYTES"),
    ("flush_interval_ms", "CHATGATE_FLUSH_INTERVAL_MS"),
    ("shutdown_timeout_secs", "CHATGATE_SHUTDOWN_TIMEOUT_SECS"),
    ("recent_requests", "CHATGATE_RECENT_REQUESTS"),
    (
        "flush_max_buffered_rows",
        "CHATGATE_FLUSH_MAX_BUFFERED_ROWS",
    ),
    ("feed_max_backlog_bytes", "CHATGATE_FEED_MAX_BACKLOG_BYTES"),
    ("feed_max_drops", "CHATGATE_FEED_MAX_DROPS"),
    ("feed_recent_requests", "CHATGATE_FEED_RECENT_REQUESTS"),
    (
        "collector_interval_secs",
        "CHATGATE_COLLECTOR_INTERVAL_SECS",
    ),
    (
        "collector_fold_age_secs",
        "CHATGATE_COLLECTOR_FOLD_AGE_SECS",
    ),
    ("raw_retention_secs", "CHATGATE_RAW_RETENTION_SECS"),
    ("quota_retention_days", "CHATGATE_QUOTA_RETENTION_DAYS"),
    ("collector_lease_secs", "CHATGATE_COLLECTOR_LEASE_SECS"),
    // File-only: RUST_LOG itself is read by env_logger, and models have no env form.
    ("rust_log", "rust_log"),
    ("models", "models"),
];

/// A credential whose `Debug`/`Display` never show it, so logging `Settings` is safe.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: String) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// One problem found while loading or validating; Display = "<KEY>: <what is wrong>; <how to fix it>".
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigProblem {
    pub key: String,
    pub message: String,
}

impl ConfigProblem {
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub limits: LimitSettings,
    pub timers: TimerSettings,
    pub telemetry: TelemetrySettings,
    pub collector: CollectorSettings,
    pub models: Vec<ModelSettings>,
    pub log_filter: Option<String>,
}

/// Usage metrics and the live feed.
#[derive(Clone, Debug)]
pub struct TelemetrySettings {
    /// Newest request details kept for the dashboard.
    pub recent_requests: usize,
    /// Raw request rows the flusher holds while the database is away; past it the oldest are
    /// dropped (counted; the per-minute rollups keep them in the totals).
    pub flush_max_buffered_rows: usize,
    /// Unsent bytes a live-feed subscriber may leave before frames for it are dropped.
    pub feed_max_backlog_bytes: u64,
    /// Frames dropped in a row before a live-feed subscriber is disconnected.
    pub feed_max_drops: u32,
    /// Newest requests included in each live-feed frame.
    pub feed_recent_requests: usize,
}

/// The usage collector: compaction of raw request rows into rollups, and retention.
#[derive(Clone, Debug)]
pub struct CollectorSettings {
    /// How often each instance tries a run (the lease makes it one run across instances).
    pub interval_secs: u64,
    /// Raw rows younger than this are left for the flusher's own rollups to settle.
    pub fold_age_secs: u64,
    /// Raw request rows older than this are deleted once the rollups count them.
    pub raw_retention_secs: u64,
    /// Quota rows of days further back than this are deleted.
    pub quota_retention_days: u32,
    /// How long a lease lasts without renewal: how long a dead instance's lease blocks runs.
    pub lease_secs: u64,
}

#[derive(Clone, Debug)]
pub struct ServerSettings {
    pub bind: String,
    pub allowed_origins: Vec<String>,
    pub max_frame_bytes: usize,
    pub shutdown_timeout_secs: u64,
}

/// `Debug` is hand-written: a Postgres URL may carry a password.
#[derive(Clone)]
pub struct DatabaseSettings {
    pub url: String,
    pub pool_max_size: u32,
    pub connection_timeout_ms: u64,
}

#[derive(Clone, Debug)]
pub struct AuthSettings {
    pub jwt_secret: Option<Secret>,
}

#[derive(Clone, Debug)]
pub struct LimitSettings {
    pub user_rate_limit: u32,
    pub user_rate_window_secs: u64,
    pub admin_rate_limit: u32,
    pub admin_rate_window_secs: u64,
    pub daily_quota: i64,
    pub history_max_messages: usize,
    pub history_max_bytes: usize,
}

#[derive(Clone, Debug)]
pub struct TimerSettings {
    pub stream_timeout_secs: u64,
    pub session_ttl_secs: u64,
    pub session_cleanup_secs: u64,
    pub heartbeat_secs: u64,
    pub client_timeout_secs: u64,
    pub flush_interval_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    Echo,
    OpenAi,
}

impl ProviderKind {
    pub const ALL: [ProviderKind; 2] = [ProviderKind::Echo, ProviderKind::OpenAi];

    /// The spelling used in the TOML file.
    pub fn as_str(&self) -> &'static str {
        match self {
            ProviderKind::Echo => "echo",
            ProviderKind::OpenAi => "openai",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == name)
    }
}

#[derive(Clone, Debug)]
pub struct ModelSettings {
    pub name: String,
    pub provider: ProviderKind,
    pub delay_ms: u64,
    pub base_url: Option<String>,
    pub api_key_env: Option<String>,
    /// The value of `api_key_env`, read once while loading; never in the TOML file.
    pub api_key: Option<Secret>,
    pub upstream_model: Option<String>,
    pub timeout_secs: Option<u64>,
    /// TCP connect plus TLS handshake, per attempt.
    pub connect_timeout_ms: u64,
    /// From sending a request upstream to the first byte of its reply body, per attempt.
    pub first_byte_timeout_ms: u64,
    /// Tries per reply, the first included; retries happen only before any delta.
    pub max_attempts: u32,
    /// First retry delay; it doubles per retry, with jitter.
    pub retry_backoff_ms: u64,
    /// The longest upstream `Retry-After` that is waited out; a longer one is passed to the
    /// client as `upstream_rate_limited`.
    pub max_retry_after_secs: u64,
}

impl ModelSettings {
    /// The built-in model served when the file declares none (and by `serve --dev`).
    pub fn echo() -> Self {
        Self {
            name: "echo".to_string(),
            provider: ProviderKind::Echo,
            delay_ms: 0,
            base_url: None,
            api_key_env: None,
            api_key: None,
            upstream_model: None,
            timeout_secs: None,
            connect_timeout_ms: DEFAULT_CONNECT_TIMEOUT_MS,
            first_byte_timeout_ms: DEFAULT_FIRST_BYTE_TIMEOUT_MS,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
            retry_backoff_ms: DEFAULT_RETRY_BACKOFF_MS,
            max_retry_after_secs: DEFAULT_MAX_RETRY_AFTER_SECS,
        }
    }
}

impl DatabaseSettings {
    pub fn is_postgres(&self) -> bool {
        let url = self.url.trim();
        url.starts_with("postgres://") || url.starts_with("postgresql://")
    }

    /// The path (or `:memory:`) to hand to SQLite, with an optional `sqlite://` prefix removed;
    /// `None` for PostgreSQL.
    pub fn sqlite_path(&self) -> Option<&str> {
        if self.is_postgres() {
            return None;
        }
        let url = self.url.trim();
        Some(url.strip_prefix("sqlite://").unwrap_or(url))
    }

    /// The URL with any password replaced, for logs.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.redacted_url())
            .field("pool_max_size", &self.pool_max_size)
            .field("connection_timeout_ms", &self.connection_timeout_ms)
            .finish()
    }
}

impl Settings {
    /// Defaults only (database url "chatgate.db", no secret, one echo model).
    pub fn defaults() -> Settings {
        Settings {
            server: ServerSettings {
                bind: "127.0.0.1:8080".to_string(),
                allowed_origins: Vec::new(),
                max_frame_bytes: 65_536,
                shutdown_timeout_secs: 10,
            },
            database: DatabaseSettings {
                url: "chatgate.db".to_string(),
                pool_max_size: 8,
                connection_timeout_ms: 5_000,
            },
            auth: AuthSettings { jwt_secret: None },
            limits: LimitSettings {
                user_rate_limit: 30,
                user_rate_window_secs: 60,
                admin_rate_limit: 20,
                admin_rate_window_secs: 60,
                daily_quota: 1_000,
                history_max_messages: 20,
                history_max_bytes: 32_768,
            },
            timers: TimerSettings {
                stream_timeout_secs: 120,
                session_ttl_secs: 900,
                session_cleanup_secs: 300,
                heartbeat_secs: 10,
                client_timeout_secs: 30,
                flush_interval_ms: 1_000,
            },
            telemetry: TelemetrySettings {
                recent_requests: 1_000,
                flush_max_buffered_rows: 200_000,
                feed_max_backlog_bytes: 65_536,
                feed_max_drops: 3,
                feed_recent_requests: 50,
            },
            collector: CollectorSettings {
                interval_secs: 3_600,
                fold_age_secs: 300,
                raw_retention_secs: 7 * 24 * 3_600,
                quota_retention_days: 35,
                lease_secs: 60,
            },
            models: vec![ModelSettings::echo()],
            log_filter: None,
        }
    }

    /// Layers: defaults <- file named by env("CHATGATE_CONFIG") <- env. `env` is injected so
    /// tests never touch the process environment. Every parse problem is returned, not just the first.
    pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, Vec<ConfigProblem>> {
        let (settings, problems) = Settings::load_partial(env);
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems)
        }
    }

    /// Loads and validates in one pass, so a run reports parse problems and validation
    /// problems together. A key that failed to parse keeps its default and is not validated
    /// again (one problem per key).
    pub fn load_validated(
        env: &dyn Fn(&str) -> Option<String>,
        dev: bool,
    ) -> Result<Settings, Vec<ConfigProblem>> {
        let (settings, mut problems) = Settings::load_partial(env);
        for problem in settings.validate(dev) {
            if !problems.iter().any(|p| p.key == problem.key) {
                problems.push(problem);
            }
        }
        if problems.is_empty() {
            Ok(settings)
        } else {
            Err(problems)
        }
    }

    fn load_partial(env: &dyn Fn(&str) -> Option<String>) -> (Settings, Vec<ConfigProblem>) {
        let mut settings = Settings::defaults();
        let mut problems = Vec::new();
        if let Some(path) = env_value(env, "CHATGATE_CONFIG") {
            let (layer, file_problems) = read_file_layer(Path::new(&path));
            problems.extend(file_problems);
            layer.apply(&mut settings, &mut problems);
        }
        // Env is parsed even when the file had problems, so all are reported in the same run.
        let mut reader = EnvReader {
            env,
            problems: Vec::new(),
        };
        let env_layer = Layer::from_env(&mut reader);
        problems.extend(reader.problems);
        env_layer.apply(&mut settings, &mut problems);
        if settings.models.is_empty() {
            settings.models.push(ModelSettings::echo());
        }
        for model in &mut settings.models {
            // Read once here: a key rotated later needs a restart, and no request path ever
            // touches the process environment.
            model.api_key = model
                .api_key_env
                .as_deref()
                .filter(|var| is_env_var_name(var))
                .and_then(|var| env_value(env, var))
                .map(Secret::new);
        }
        (settings, problems)
    }

    /// Every problem, not just the first. `dev` = `serve --dev`: a missing secret is then allowed.
    pub fn validate(&self, dev: bool) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        self.check_server(&mut problems);
        self.check_database(&mut problems);
        check_secret(self.auth.jwt_secret.as_ref(), dev, &mut problems);
        self.check_numbers(&mut problems);
        self.check_models(&mut problems);
        problems
    }

    /// The resolved socket address of `server.bind` (validate() guarantees it parses).
    pub fn bind_addr(&self) -> SocketAddr {
        // Unreachable after validate(); the contract default beats a panic if a caller skipped it.
        parse_bind(&self.server.bind)
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080))
    }

    /// Default of `timers.stream_timeout_secs`, overridden by a model's timeout_secs.
    pub fn model_timeout_secs(&self, model: &ModelSettings) -> u64 {
        model
            .timeout_secs
            .unwrap_or(self.timers.stream_timeout_secs)
    }

    fn check_server(&self, problems: &mut Vec<ConfigProblem>) {
        if let Err(message) = parse_bind(&self.server.bind) {
            problems.push(ConfigProblem::new("CHATGATE_BIND", message));
        }
        for origin in &self.server.allowed_origins {
            if origin != "*" && !is_origin(origin) {
                problems.push(ConfigProblem::new(
                    "CHATGATE_ALLOWED_ORIGINS",
                    format!(
                        "`{origin}` is not an origin; write scheme://host[:port] with no path or \
                         trailing slash, e.g. https://app.example.com, or * to allow all"
                    ),
                ));
            }
        }
    }

    fn check_database(&self, problems: &mut Vec<ConfigProblem>) {
        let key = "DATABASE_URL";
        let Some(path) = self.database.sqlite_path() else {
            return;
        };
        if path.is_empty() {
            problems.push(ConfigProblem::new(
                key,
                "is empty; set it to a SQLite file path such as chatgate.db or a postgres:// URL",
            ));
            return;
        }
        // `file:` URIs carry SQLite options in a query string, so they are not plain paths.
        if path == ":memory:" || path.starts_with("file:") {
            return;
        }
        let path = Path::new(path);
        if path.is_dir() {
            problems.push(ConfigProblem::new(
                key,
                format!(
                    "`{}` is a directory; point it at a database file inside it, e.g. {}",
                    path.display(),
                    path.join("chatgate.db").display()
                ),
            ));
        } else if let Some(parent) = path.parent() {
            if !parent.as_os_str().is_empty() && !parent.is_dir() {
                problems.push(ConfigProblem::new(
                    key,
                    format!(
                        "the directory `{}` does not exist; create it (mkdir -p {0}) or choose a \
                         path in an existing directory",
                        parent.display()
                    ),
                ));
            }
        }
    }

    fn check_numbers(&self, problems: &mut Vec<ConfigProblem>) {
        let defaults = Settings::defaults();
        for &(key, get, min, max) in NUMBER_RULES {
            let (value, default) = (get(self), get(&defaults));
            if value < min {
                problems.push(ConfigProblem::new(
                    key,
                    format!("is {value}, must be at least {min}; raise it (default {default})"),
                ));
            } else if value > max {
                problems.push(ConfigProblem::new(
                    key,
                    format!("is {value}, must be at most {max}; lower it (default {default})"),
                ));
            }
        }
        let (heartbeat, client) = (self.timers.heartbeat_secs, self.timers.client_timeout_secs);
        // Only meaningful once both are positive; zero is already reported above.
        if heartbeat > 0 && client > 0 && client <= heartbeat {
            problems.push(ConfigProblem::new(
                "CHATGATE_CLIENT_TIMEOUT_SECS",
                format!(
                    "is {client}, must be greater than CHATGATE_HEARTBEAT_SECS ({heartbeat}) or \
                     healthy connections are dropped between pings; raise it, e.g. to {}",
                    heartbeat.saturating_mul(3)
                ),
            ));
        }
    }

    fn check_models(&self, problems: &mut Vec<ConfigProblem>) {
        let mut first_index: HashMap<&str, usize> = HashMap::new();
        for (i, model) in self.models.iter().enumerate() {
            let key = |field: &str| format!("models[{i}].{field}");
            if model.name.trim().is_empty() {
                problems.push(ConfigProblem::new(
                    key("name"),
                    "is missing or empty; give every model the name clients will request",
                ));
            } else if let Some(first) = first_index.get(model.name.as_str()) {
                problems.push(ConfigProblem::new(
                    key("name"),
                    format!(
                        "`{}` is already used by models[{first}]; model names must be unique, \
                         rename one of them",
                        model.name
                    ),
                ));
            } else {
                first_index.insert(&model.name, i);
            }
            if model.provider == ProviderKind::OpenAi {
                match model.base_url.as_deref() {
                    None | Some("") => problems.push(ConfigProblem::new(
                        key("base_url"),
                        "is required for provider \"openai\"; set it to the upstream's API base, \
                         e.g. base_url = \"http://127.0.0.1:9000/v1\"",
                    )),
                    Some(url) if !(url.starts_with("http://") || url.starts_with("https://")) => {
                        problems.push(ConfigProblem::new(
                            key("base_url"),
                            format!(
                                "`{url}` is not an HTTP URL; start it with http:// or https://"
                            ),
                        ))
                    }
                    Some(_) => {}
                }
            }
            if let Some(var) = &model.api_key_env {
                // The value is not echoed: a common slip is pasting the key itself here.
                if !is_env_var_name(var) {
                    problems.push(ConfigProblem::new(
                        key("api_key_env"),
                        "is not an environment variable name; give the NAME of the variable \
                         holding the key (letters, digits, underscores, e.g. UPSTREAM_KEY), or \
                         remove it",
                    ));
                } else if model.provider == ProviderKind::OpenAi && model.api_key.is_none() {
                    problems.push(ConfigProblem::new(
                        key("api_key_env"),
                        format!(
                            "names `{var}`, which is not set or empty; export {var}=<key> \
                             before starting chatgate, or remove api_key_env for an upstream \
                             that needs no key"
                        ),
                    ));
                }
            }
            check_upstream_numbers(model, &key, problems);
            if model
                .upstream_model
                .as_deref()
                .is_some_and(|m| m.trim().is_empty())
            {
                problems.push(ConfigProblem::new(
                    key("upstream_model"),
                    "is empty; remove it to send the model name upstream, or set the upstream id",
                ));
            }
            match model.timeout_secs {
                Some(0) => problems.push(ConfigProblem::new(
                    key("timeout_secs"),
                    "is 0, must be at least 1; raise it, or remove it to use \
                     CHATGATE_STREAM_TIMEOUT_SECS",
                )),
                Some(secs) if secs > MAX_DURATION_SECS => problems.push(ConfigProblem::new(
                    key("timeout_secs"),
                    format!("is {secs}, must be at most {MAX_DURATION_SECS}; lower it"),
                )),
                _ => {}
            }
            if model.delay_ms > MAX_MODEL_DELAY_MS {
                problems.push(ConfigProblem::new(
                    key("delay_ms"),
                    format!(
                        "is {}, must be at most {MAX_MODEL_DELAY_MS}; lower it",
                        model.delay_ms
                    ),
                ));
            }
        }
    }
}

/// One configuration source in the flat shape of the TOML file. The env layer is built in
/// the same shape so both merge through `apply`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Layer {
    bind: Option<String>,
    database_url: Option<String>,
    db_pool_size: Option<u32>,
    db_connect_timeout_ms: Option<u64>,
    jwt_secret: Option<Secret>,
    allowed_origins: Option<String>,
    user_rate_limit: Option<u32>,
    user_rate_window_secs: Option<u64>,
    admin_rate_limit: Option<u32>,
    admin_rate_window_secs: Option<u64>,
    daily_quota: Option<i64>,
    history_max_messages: Option<usize>,
    history_max_bytes: Option<usize>,
    stream_timeout_secs: Option<u64>,
    session_ttl_secs: Option<u64>,
    session_cleanup_secs: Option<u64>,
    heartbeat_secs: Option<u64>,
    client_timeout_secs: Option<u64>,
    max_frame_bytes: Option<usize>,
    flush_interval_ms: Option<u64>,
    shutdown_timeout_secs: Option<u64>,
    recent_requests: Option<usize>,
    flush_max_buffered_rows: Option<usize>,
    feed_max_backlog_bytes: Option<u64>,
    feed_max_drops: Option<u32>,
    feed_recent_requests: Option<usize>,
    collector_interval_secs: Option<u64>,
    collector_fold_age_secs: Option<u64>,
    raw_retention_secs: Option<u64>,
    quota_retention_days: Option<u32>,
    collector_lease_secs: Option<u64>,
    rust_log: Option<String>,
    models: Option<Vec<FileModel>>,
}

/// Provider stays a string here so an unknown one is reported with the list of known ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "model")]
struct FileModel {
    name: Option<String>,
    provider: Option<String>,
    delay_ms: Option<u64>,
    base_url: Option<String>,
    api_key_env: Option<String>,
    upstream_model: Option<String>,
    timeout_secs: Option<u64>,
    connect_timeout_ms: Option<u64>,
    first_byte_timeout_ms: Option<u64>,
    max_attempts: Option<u32>,
    retry_backoff_ms: Option<u64>,
    max_retry_after_secs: Option<u64>,
}

impl Layer {
    fn from_env(env: &mut EnvReader<'_>) -> Layer {
        Layer {
            bind: env.text("CHATGATE_BIND"),
            database_url: env.text("DATABASE_URL"),
            db_pool_size: env.number("CHATGATE_DB_POOL_SIZE"),
            db_connect_timeout_ms: env.number("CHATGATE_DB_CONNECT_TIMEOUT_MS"),
            jwt_secret: env.text("CHATGATE_JWT_SECRET").map(Secret::new),
            allowed_origins: env.text("CHATGATE_ALLOWED_ORIGINS"),
            user_rate_limit: env.number("CHATGATE_USER_RATE_LIMIT"),
            user_rate_window_secs: env.number("CHATGATE_USER_RATE_WINDOW_SECS"),
            admin_rate_limit: env.number("CHATGATE_ADMIN_RATE_LIMIT"),
            admin_rate_window_secs: env.number("CHATGATE_ADMIN_RATE_WINDOW_SECS"),
            daily_quota: env.number("CHATGATE_DAILY_QUOTA"),
            history_max_messages: env.number("CHATGATE_HISTORY_MAX_MESSAGES"),
            history_max_bytes: env.number("CHATGATE_HISTORY_MAX_BYTES"),
            stream_timeout_secs: env.number("CHATGATE_STREAM_TIMEOUT_SECS"),
            session_ttl_secs: env.number("CHATGATE_SESSION_TTL_SECS"),
            session_cleanup_secs: env.number("CHATGATE_SESSION_CLEANUP_SECS"),
            heartbeat_secs: env.number("CHATGATE_HEARTBEAT_SECS"),
            client_timeout_secs: env.number("CHATGATE_CLIENT_TIMEOUT_SECS"),
            max_frame_bytes: env.number("CHATGATE_MAX_FRAME_BYTES"),
            flush_interval_ms: env.number("CHATGATE_FLUSH_INTERVAL_MS"),
            shutdown_timeout_secs: env.number("CHATGATE_SHUTDOWN_TIMEOUT_SECS"),
            recent_requests: env.number("CHATGATE_RECENT_REQUESTS"),
            flush_max_buffered_rows: env.number("CHATGATE_FLUSH_MAX_BUFFERED_ROWS"),
            feed_max_backlog_bytes: env.number("CHATGATE_FEED_MAX_BACKLOG_BYTES"),
            feed_max_drops: env.number("CHATGATE_FEED_MAX_DROPS"),
            feed_recent_requests: env.number("CHATGATE_FEED_RECENT_REQUESTS"),
            collector_interval_secs: env.number("CHATGATE_COLLECTOR_INTERVAL_SECS"),
            collector_fold_age_secs: env.number("CHATGATE_COLLECTOR_FOLD_AGE_SECS"),
            raw_retention_secs: env.number("CHATGATE_RAW_RETENTION_SECS"),
            quota_retention_days: env.number("CHATGATE_QUOTA_RETENTION_DAYS"),
            collector_lease_secs: env.number("CHATGATE_COLLECTOR_LEASE_SECS"),
            rust_log: None,
            models: None,
        }
    }

    fn apply(self, s: &mut Settings, problems: &mut Vec<ConfigProblem>) {
        // Destructured without `..` so a field added to `Layer` cannot be forgotten here.
        let Layer {
            bind,
            database_url,
            db_pool_size,
            db_connect_timeout_ms,
            jwt_secret,
            allowed_origins,
            user_rate_limit,
            user_rate_window_secs,
            admin_rate_limit,
            admin_rate_window_secs,
            daily_quota,
            history_max_messages,
            history_max_bytes,
            stream_timeout_secs,
            session_ttl_secs,
            session_cleanup_secs,
            heartbeat_secs,
            client_timeout_secs,
            max_frame_bytes,
            flush_interval_ms,
            shutdown_timeout_secs,
            recent_requests,
            flush_max_buffered_rows,
            feed_max_backlog_bytes,
            feed_max_drops,
            feed_recent_requests,
            collector_interval_secs,
            collector_fold_age_secs,
            raw_retention_secs,
            quota_retention_days,
            collector_lease_secs,
            rust_log,
            models,
        } = self;
        let (srv, db, lim, tm) = (&mut s.server, &mut s.database, &mut s.limits, &mut s.timers);
        set(&mut srv.bind, bind);
        set(
            &mut srv.allowed_origins,
            allowed_origins.as_deref().map(split_origins),
        );
        set(&mut srv.max_frame_bytes, max_frame_bytes);
        set(&mut srv.shutdown_timeout_secs, shutdown_timeout_secs);
        set(&mut db.url, database_url);
        set(&mut db.pool_max_size, db_pool_size);
        set(&mut db.connection_timeout_ms, db_connect_timeout_ms);
        if let Some(secret) = jwt_secret.filter(|secret| !secret.expose().is_empty()) {
            s.auth.jwt_secret = Some(secret);
        }
        set(&mut lim.user_rate_limit, user_rate_limit);
        set(&mut lim.user_rate_window_secs, user_rate_window_secs);
        set(&mut lim.admin_rate_limit, admin_rate_limit);
        set(&mut lim.admin_rate_window_secs, admin_rate_window_secs);
        set(&mut lim.daily_quota, daily_quota);
        set(&mut lim.history_max_messages, history_max_messages);
        set(&mut lim.history_max_bytes, history_max_bytes);
        set(&mut tm.stream_timeout_secs, stream_timeout_secs);
        set(&mut tm.session_ttl_secs, session_ttl_secs);
        set(&mut tm.session_cleanup_secs, session_cleanup_secs);
        set(&mut tm.heartbeat_secs, heartbeat_secs);
        set(&mut tm.client_timeout_secs, client_timeout_secs);
        set(&mut tm.flush_interval_ms, flush_interval_ms);
        let tel = &mut s.telemetry;
        set(&mut tel.recent_requests, recent_requests);
        set(&mut tel.flush_max_buffered_rows, flush_max_buffered_rows);
        set(&mut tel.feed_max_backlog_bytes, feed_max_backlog_bytes);
        set(&mut tel.feed_max_drops, feed_max_drops);
        set(&mut tel.feed_recent_requests, feed_recent_requests);
        let col = &mut s.collector;
        set(&mut col.interval_secs, collector_interval_secs);
        set(&mut col.fold_age_secs, collector_fold_age_secs);
        set(&mut col.raw_retention_secs, raw_retention_secs);
        set(&mut col.quota_retention_days, quota_retention_days);
        set(&mut col.lease_secs, collector_lease_secs);
        if let Some(filter) = rust_log.filter(|filter| !filter.trim().is_empty()) {
            s.log_filter = Some(filter);
        }
        if let Some(models) = models {
            s.models = models
                .into_iter()
                .enumerate()
                .filter_map(|(i, model)| model.into_settings(i, problems))
                .collect();
        }
    }
}

impl FileModel {
    fn into_settings(
        self,
        index: usize,
        problems: &mut Vec<ConfigProblem>,
    ) -> Option<ModelSettings> {
        let key = format!("models[{index}].provider");
        let known = ProviderKind::ALL.map(|k| k.as_str()).join(", ");
        let provider = match self.provider.as_deref() {
            None => {
                problems.push(ConfigProblem::new(
                    key,
                    format!("is missing; add provider = \"...\" with one of: {known}"),
                ));
                return None;
            }
            Some(name) => match ProviderKind::from_name(name) {
                Some(kind) => kind,
                None => {
                    problems.push(ConfigProblem::new(
                        key,
                        format!("unknown provider `{name}`; use one of: {known}"),
                    ));
                    return None;
                }
            },
        };
        Some(ModelSettings {
            name: self.name.unwrap_or_default(),
            provider,
            delay_ms: self.delay_ms.unwrap_or(0),
            base_url: self.base_url,
            api_key_env: self.api_key_env,
            api_key: None,
            upstream_model: self.upstream_model,
            timeout_secs: self.timeout_secs,
            connect_timeout_ms: self
                .connect_timeout_ms
                .unwrap_or(DEFAULT_CONNECT_TIMEOUT_MS),
            first_byte_timeout_ms: self
                .first_byte_timeout_ms
                .unwrap_or(DEFAULT_FIRST_BYTE_TIMEOUT_MS),
            max_attempts: self.max_attempts.unwrap_or(DEFAULT_MAX_ATTEMPTS),
            retry_backoff_ms: self.retry_backoff_ms.unwrap_or(DEFAULT_RETRY_BACKOFF_MS),
            max_retry_after_secs: self
                .max_retry_after_secs
                .unwrap_or(DEFAULT_MAX_RETRY_AFTER_SECS),
        })
    }
}

/// The ranges of a model's upstream call settings; each message quotes the default so the fix
/// is obvious.
fn check_upstream_numbers(
    model: &ModelSettings,
    key: &dyn Fn(&str) -> String,
    problems: &mut Vec<ConfigProblem>,
) {
    let rules: [(&str, u64, u64, u64, u64); 5] = [
        (
            "connect_timeout_ms",
            model.connect_timeout_ms,
            1,
            600_000,
            DEFAULT_CONNECT_TIMEOUT_MS,
        ),
        (
            "first_byte_timeout_ms",
            model.first_byte_timeout_ms,
            1,
            MAX_DURATION_SECS * 1000,
            DEFAULT_FIRST_BYTE_TIMEOUT_MS,
        ),
        (
            "max_attempts",
            model.max_attempts.into(),
            1,
            MAX_ATTEMPTS_LIMIT.into(),
            DEFAULT_MAX_ATTEMPTS.into(),
        ),
        (
            "retry_backoff_ms",
            model.retry_backoff_ms,
            1,
            60_000,
            DEFAULT_RETRY_BACKOFF_MS,
        ),
        (
            "max_retry_after_secs",
            model.max_retry_after_secs,
            0,
            3_600,
            DEFAULT_MAX_RETRY_AFTER_SECS,
        ),
    ];
    for (field, value, min, max, default) in rules {
        if value < min {
            problems.push(ConfigProblem::new(
                key(field),
                format!("is {value}, must be at least {min}; raise it (default {default})"),
            ));
        } else if value > max {
            problems.push(ConfigProblem::new(
                key(field),
                format!("is {value}, must be at most {max}; lower it (default {default})"),
            ));
        }
    }
}

fn set<T>(slot: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *slot = value;
    }
}

/// An env var set to the empty string counts as unset, as with most Unix tools.
fn env_value(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|value| !value.is_empty())
}

struct EnvReader<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<ConfigProblem>,
}

impl EnvReader<'_> {
    fn text(&self, name: &str) -> Option<String> {
        env_value(self.env, name)
    }

    fn number<T: EnvNumber>(&mut self, name: &str) -> Option<T> {
        let raw = self.text(name)?;
        match raw.trim().parse::<T>() {
            Ok(value) => Some(value),
            Err(_) => {
                self.problems.push(ConfigProblem::new(
                    name,
                    format!(
                        "`{raw}` is not a whole number from {} to {}; set it to plain digits, or \
                         unset it to use the default",
                        T::MIN,
                        T::MAX
                    ),
                ));
                None
            }
        }
    }
}

/// The integer types settings use, with their ranges for the error message.
trait EnvNumber: std::str::FromStr + fmt::Display {
    const MIN: Self;
    const MAX: Self;
}

macro_rules! env_number {
    ($($t:ty),*) => {$(
        impl EnvNumber for $t {
            const MIN: Self = <$t>::MIN;
            const MAX: Self = <$t>::MAX;
        }
    )*};
}
env_number!(u32, u64, usize, i64);

/// Reads the file and checks each top-level key on its own, so every bad key is reported,
/// not only the first one serde stops at. The keys that parse are still returned, so the
/// caller can report problems (such as an unknown provider) that only show up after merging.
fn read_file_layer(path: &Path) -> (Layer, Vec<ConfigProblem>) {
    let shown = path.display();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) => {
            let message = format!(
                "cannot read `{shown}` ({err}); point CHATGATE_CONFIG at a readable TOML file \
                 or unset it"
            );
            return (
                Layer::default(),
                vec![ConfigProblem::new("CHATGATE_CONFIG", message)],
            );
        }
    };
    let mut table: toml::Table = match toml::from_str(&text) {
        Ok(table) => table,
        Err(err) => {
            let before = err.span().and_then(|span| text.get(..span.start));
            let at = before
                .map(|before| format!(" at line {}", before.matches('\n').count() + 1))
                .unwrap_or_default();
            let message = format!(
                "`{shown}` is not valid TOML{at} ({}); fix the syntax",
                err.message().trim()
            );
            return (
                Layer::default(),
                vec![ConfigProblem::new("CHATGATE_CONFIG", message)],
            );
        }
    };
    let mut problems = Vec::new();
    let mut bad_keys = Vec::new();
    for (key, value) in &table {
        if let (true, toml::Value::Array(models)) = (key == "models", value) {
            for (i, model) in models.iter().enumerate() {
                if let Err(err) = model.clone().try_into::<FileModel>() {
                    bad_keys.push(key.clone());
                    problems.push(ConfigProblem::new(
                        format!("models[{i}]"),
                        format!("in `{shown}`: {}; fix this [[models]] entry", err.message()),
                    ));
                }
            }
            continue;
        }
        let mut single = toml::Table::new();
        single.insert(key.clone(), value.clone());
        if let Err(err) = single.try_into::<Layer>() {
            bad_keys.push(key.clone());
            let message = err.message();
            problems.push(match FILE_KEYS.iter().find(|(known, _)| known == key) {
                Some((_, problem_key)) => ConfigProblem::new(
                    *problem_key,
                    format!("`{key}` in `{shown}`: {message}; correct the value or remove it"),
                ),
                None => ConfigProblem::new(
                    "CHATGATE_CONFIG",
                    format!("in `{shown}`: {message}; remove the key or correct its spelling"),
                ),
            });
        }
    }
    table.retain(|key, _| !bad_keys.iter().any(|bad| bad == key));
    match table.try_into::<Layer>() {
        Ok(layer) => (layer, problems),
        Err(err) => {
            let message = format!("in `{shown}`: {}; fix the file", err.message());
            problems.push(ConfigProblem::new("CHATGATE_CONFIG", message));
            (Layer::default(), problems)
        }
    }
}

fn split_origins(raw: &str) -> Vec<String> {
    raw.split(',')
        .map(str::trim)
        .filter(|origin| !origin.is_empty())
        .map(str::to_string)
        .collect()
}

/// Browsers send `scheme://host[:port]` exactly; anything with a path would never match.
pub fn is_origin(origin: &str) -> bool {
    match origin.split_once("://") {
        Some((scheme, host)) => {
            !scheme.is_empty()
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
                && !host.is_empty()
                && !host.contains(['/', '?', '#', ' '])
        }
        None => false,
    }
}

fn parse_bind(raw: &str) -> Result<SocketAddr, String> {
    let raw = raw.trim();
    let parsed = match raw.strip_prefix(':') {
        Some(port) => port
            .parse::<u16>()
            .map(|port| SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))
            .ok(),
        None => raw.parse::<SocketAddr>().ok(),
    };
    parsed.ok_or_else(|| {
        format!(
            "`{raw}` is not a listen address; use IP:PORT (e.g. 127.0.0.1:8080, 0.0.0.0:8080, \
             [::]:8080) or :PORT for all interfaces"
        )
    })
}

fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn check_secret(secret: Option<&Secret>, dev: bool, problems: &mut Vec<ConfigProblem>) {
    let key = "CHATGATE_JWT_SECRET";
    let Some(secret) = secret else {
        if !dev {
            problems.push(ConfigProblem::new(
                key,
                format!(
                    "is not set; set CHATGATE_JWT_SECRET (or jwt_secret in the config file); \
                     {GENERATE_SECRET}"
                ),
            ));
        }
        return;
    };
    // Messages never include the value: these lines end up in logs and terminals.
    let value = secret.expose();
    if value.chars().count() < MIN_SECRET_CHARS {
        problems.push(ConfigProblem::new(
            key,
            format!("is shorter than {MIN_SECRET_CHARS} characters; {GENERATE_SECRET}"),
        ));
    }
    if is_single_repeated_char(value) {
        problems.push(ConfigProblem::new(
            key,
            format!("is one character repeated; use a random value, {GENERATE_SECRET}"),
        ));
    }
    if is_weak_secret(value) {
        problems.push(ConfigProblem::new(
            key,
            format!(
                "is or contains a well-known weak value; use a random value, {GENERATE_SECRET}"
            ),
        ));
    }
}

fn is_single_repeated_char(value: &str) -> bool {
    let mut chars = value.chars();
    match chars.next() {
        Some(first) => value.chars().nth(1).is_some() && chars.all(|c| c == first),
        None => false,
    }
}

/// Equal to a listed value, starting with one, containing one as a whole word, or one
/// repeated. Equality and repetition are special cases of the prefix rule.
fn is_weak_secret(value: &str) -> bool {
    let lower = value.to_lowercase();
    WEAK_SECRETS.split_whitespace().any(|weak| {
        lower.starts_with(weak)
            || lower
                .split(|c: char| !c.is_alphanumeric())
                .any(|word| word == weak)
    })
}

fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_string();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    let mut out = url[..scheme_end].to_string();
    match authority.rfind('@') {
        Some(at) => {
            let (userinfo, host) = authority.split_at(at);
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push_str(":[redacted]");
                }
                None => out.push_str(userinfo),
            }
            out.push_str(host);
        }
        None => out.push_str(authority),
    }
    // libpq also accepts the password as a query parameter.
    match tail.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}=[redacted]")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            out.push_str(path);
            out.push('?');
            out.push_str(&query.join("&"));
        }
        None => out.push_str(tail),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const GOOD_SECRET: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    /// A config file in the temp dir, removed when dropped.
    struct TempConfig(PathBuf);

    impl TempConfig {
        fn new(contents: &str) -> Self {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let n = NEXT.fetch_add(1, Ordering::SeqCst);
            let path = std::env::temp_dir().join(format!(
                "chatgate-config-test-{}-{n}.toml",
                std::process::id()
            ));
            std::fs::write(&path, contents).unwrap();
            Self(path)
        }

        fn path(&self) -> String {
            self.0.to_str().unwrap().to_string()
        }
    }

    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn load_with(pairs: &[(&str, &str)]) -> Result<Settings, Vec<ConfigProblem>> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::load(&|name| map.get(name).cloned())
    }

    fn load_file(contents: &str, pairs: &[(&str, &str)]) -> Result<Settings, Vec<ConfigProblem>> {
        let file = TempConfig::new(contents);
        let path = file.path();
        let mut all = vec![("CHATGATE_CONFIG", path.as_str())];
        all.extend_from_slice(pairs);
        load_with(&all)
    }

    fn keys(problems: &[ConfigProblem]) -> Vec<&str> {
        problems.iter().map(|p| p.key.as_str()).collect()
    }

    fn valid() -> Settings {
        let mut settings = Settings::defaults();
        settings.auth.jwt_secret = Some(Secret::new(GOOD_SECRET.to_string()));
        settings
    }

    fn secret_problems(secret: &str) -> Vec<ConfigProblem> {
        let mut settings = valid();
        settings.auth.jwt_secret = Some(Secret::new(secret.to_string()));
        let problems = settings.validate(false);
        assert!(
            problems.iter().all(|p| !p.to_string().contains(secret)),
            "{problems:?}"
        );
        problems
    }

    #[test]
    fn defaults_follow_the_contract() {
        let s = load_with(&[]).unwrap();
        assert_eq!(s.server.bind, "127.0.0.1:8080");
        assert_eq!(s.database.url, "chatgate.db");
        assert!(s.auth.jwt_secret.is_none());
        assert_eq!(
            (s.limits.user_rate_limit, s.limits.user_rate_window_secs),
            (30, 60)
        );
        assert_eq!(
            (s.limits.admin_rate_limit, s.limits.daily_quota),
            (20, 1000)
        );
        assert_eq!(
            (s.timers.heartbeat_secs, s.timers.client_timeout_secs),
            (10, 30)
        );
        assert_eq!(
            (s.server.max_frame_bytes, s.timers.flush_interval_ms),
            (65536, 1000)
        );
        assert_eq!(s.models.len(), 1);
        assert_eq!(
            (s.models[0].name.as_str(), &s.models[0].provider),
            ("echo", &ProviderKind::Echo)
        );
        assert_eq!(format!("{s:?}"), format!("{:?}", Settings::defaults()));
    }

    #[test]
    fn file_overrides_defaults() {
        let s = load_file(
            r#"
            bind = ":9000"
            user_rate_limit = 5
            db_pool_size = 2
            rust_log = "debug"
            allowed_origins = "https://a.example, https://b.example:8443"
            [[models]]
            name = "small"
            provider = "openai"
            base_url = "http://127.0.0.1:9000/v1"
            timeout_secs = 30
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(s.server.bind, ":9000");
        assert_eq!(s.limits.user_rate_limit, 5);
        assert_eq!(s.limits.admin_rate_limit, 20);
        assert_eq!(s.database.pool_max_size, 2);
        assert_eq!(s.log_filter.as_deref(), Some("debug"));
        assert_eq!(
            s.server.allowed_origins,
            ["https://a.example", "https://b.example:8443"]
        );
        assert_eq!(
            s.models.len(),
            1,
            "declared models replace the built-in echo"
        );
        assert_eq!(s.models[0].provider, ProviderKind::OpenAi);
        assert_eq!(s.model_timeout_secs(&s.models[0]), 30);
        assert_eq!(s.model_timeout_secs(&ModelSettings::echo()), 120);
    }

    #[test]
    fn env_overrides_file() {
        let s = load_file(
            "user_rate_limit = 5\nheartbeat_secs = 7\ndatabase_url = \"file.db\"",
            &[
                ("CHATGATE_USER_RATE_LIMIT", "9"),
                ("DATABASE_URL", "env.db"),
            ],
        )
        .unwrap();
        assert_eq!(s.limits.user_rate_limit, 9);
        assert_eq!(s.timers.heartbeat_secs, 7);
        assert_eq!(s.database.url, "env.db");
    }

    #[test]
    fn collector_settings_load_from_every_layer_and_are_range_checked() {
        let d = Settings::defaults().collector;
        assert_eq!(
            (d.interval_secs, d.fold_age_secs, d.raw_retention_secs),
            (3_600, 300, 604_800)
        );
        assert_eq!((d.quota_retention_days, d.lease_secs), (35, 60));
        let s = load_file(
            "collector_interval_secs = 600\nraw_retention_secs = 86400\nquota_retention_days = 40",
            &[
                ("CHATGATE_COLLECTOR_INTERVAL_SECS", "900"),
                ("CHATGATE_COLLECTOR_FOLD_AGE_SECS", "0"),
                ("CHATGATE_COLLECTOR_LEASE_SECS", "30"),
            ],
        )
        .unwrap();
        let c = &s.collector;
        assert_eq!(
            (c.interval_secs, c.fold_age_secs, c.lease_secs),
            (900, 0, 30)
        );
        assert_eq!((c.raw_retention_secs, c.quota_retention_days), (86_400, 40));
        let mut s = valid();
        s.collector.interval_secs = 0;
        s.collector.raw_retention_secs = 59;
        s.collector.quota_retention_days = 0;
        s.collector.lease_secs = 2;
        assert_eq!(
            keys(&s.validate(false)),
            [
                "CHATGATE_COLLECTOR_INTERVAL_SECS",
                "CHATGATE_RAW_RETENTION_SECS",
                "CHATGATE_QUOTA_RETENTION_DAYS",
                "CHATGATE_COLLECTOR_LEASE_SECS"
            ]
        );
    }

    #[test]
    fn empty_env_value_counts_as_unset() {
        let s = load_file(
            "user_rate_limit = 5",
            &[
                ("CHATGATE_USER_RATE_LIMIT", ""),
                ("CHATGATE_JWT_SECRET", ""),
            ],
        )
        .unwrap();
        assert_eq!(s.limits.user_rate_limit, 5);
        assert!(s.auth.jwt_secret.is_none());
    }

    #[test]
    fn unknown_toml_keys_are_all_reported() {
        let problems = load_file(
            "usr_rate_limit = 5\n[[models]]\nname = \"m\"\nprovider = \"echo\"\nbse_url = \"x\"",
            &[],
        )
        .unwrap_err();
        // Keys are checked in the table's sorted order, so models[0] comes first.
        assert_eq!(keys(&problems), ["models[0]", "CHATGATE_CONFIG"]);
        assert!(problems[0].message.contains("bse_url"));
        assert!(problems[1].message.contains("usr_rate_limit"));
    }

    #[test]
    fn parse_problems_from_env_and_file_are_reported_together() {
        let problems = load_file(
            "daily_quota = \"many\"\n[[models]]\nname = \"m\"\nprovider = \"gpt\"",
            &[
                ("CHATGATE_USER_RATE_LIMIT", "abc"),
                ("CHATGATE_HEARTBEAT_SECS", "-1"),
            ],
        )
        .unwrap_err();
        assert_eq!(
            keys(&problems),
            [
                "CHATGATE_DAILY_QUOTA",
                "models[0].provider",
                "CHATGATE_USER_RATE_LIMIT",
                "CHATGATE_HEARTBEAT_SECS"
            ]
        );
        assert!(problems[0].message.contains("daily_quota"));
        assert!(problems[1].message.contains("echo, openai"));
        assert!(problems[2].message.contains("`abc` is not a whole number"));
    }

    #[test]
    fn unreadable_or_invalid_file_is_reported() {
        let problems =
            load_with(&[("CHATGATE_CONFIG", "/definitely/missing/chatgate.toml")]).unwrap_err();
        assert_eq!(keys(&problems), ["CHATGATE_CONFIG"]);
        let problems = load_file("bind = \"x\"\nuser_rate_limit = = 3", &[]).unwrap_err();
        assert_eq!(keys(&problems), ["CHATGATE_CONFIG"]);
        assert!(problems[0].message.contains("line 2"), "{problems:?}");
    }

    #[test]
    fn missing_secret_is_allowed_only_in_dev() {
        let settings = Settings::defaults();
        assert!(settings.validate(true).is_empty());
        let problems = settings.validate(false);
        assert_eq!(keys(&problems), ["CHATGATE_JWT_SECRET"]);
        assert!(problems[0].message.contains("openssl rand -hex 32"));
    }

    #[test]
    fn weak_secret_is_reported() {
        for weak in [
            "changeme-changeme-changeme-changeme",
            "SuperSecret-but-long-enough-for-the-length-rule",
            "prod-2024-jwt-secret-do-not-share-with-anyone",
            "secretsecretsecretsecretsecretsecret",
        ] {
            let problems = secret_problems(weak);
            assert_eq!(keys(&problems), ["CHATGATE_JWT_SECRET"], "{weak}");
            assert!(problems[0].message.contains("weak"));
        }
    }

    #[test]
    fn short_weak_secret_gives_two_problems() {
        let problems = secret_problems("changeme");
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].message.contains("shorter than 32"));
        assert!(problems[1].message.contains("weak"));
        assert_eq!(
            secret_problems("x7Pq2").len(),
            1,
            "short but otherwise fine"
        );
    }

    #[test]
    fn repeated_char_secret_is_reported() {
        let problems = secret_problems(&"a".repeat(40));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].message.contains("one character repeated"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut s = valid();
        s.limits.user_rate_limit = 0;
        s.timers.client_timeout_secs = s.timers.heartbeat_secs;
        s.server.bind = "nope".to_string();
        s.database.pool_max_size = 300;
        s.server.max_frame_bytes = 512;
        let problems = s.validate(false);
        assert_eq!(
            keys(&problems),
            [
                "CHATGATE_BIND",
                "CHATGATE_USER_RATE_LIMIT",
                "CHATGATE_MAX_FRAME_BYTES",
                "CHATGATE_DB_POOL_SIZE",
                "CHATGATE_CLIENT_TIMEOUT_SECS"
            ]
        );
        assert!(problems.iter().all(|p| p.to_string().contains("; ")));
    }

    #[test]
    fn valid_config_passes() {
        let mut s = valid();
        s.models.push(ModelSettings {
            name: "small".to_string(),
            provider: ProviderKind::OpenAi,
            delay_ms: 0,
            base_url: Some("https://api.example.com/v1".to_string()),
            api_key_env: Some("UPSTREAM_KEY".to_string()),
            api_key: Some(Secret::new("sk-test".to_string())),
            upstream_model: Some("qwen2.5-0.5b".to_string()),
            timeout_secs: Some(60),
            ..ModelSettings::echo()
        });
        s.server.allowed_origins = vec!["*".to_string(), "http://localhost:3000".to_string()];
        assert_eq!(s.validate(false), []);
    }

    #[test]
    fn model_problems_are_reported() {
        let s = load_file(
            "[[models]]\nname = \"a\"\nprovider = \"echo\"\n\
             [[models]]\nname = \"a\"\nprovider = \"openai\"\napi_key_env = \"sk-123\"\n\
             [[models]]\nprovider = \"echo\"\ndelay_ms = 60001\ntimeout_secs = 0",
            &[],
        )
        .unwrap();
        let problems = Settings {
            auth: valid().auth,
            ..s
        }
        .validate(false);
        assert_eq!(
            keys(&problems),
            [
                "models[1].name",
                "models[1].base_url",
                "models[1].api_key_env",
                "models[2].name",
                "models[2].timeout_secs",
                "models[2].delay_ms"
            ]
        );
        assert!(problems[0].message.contains("models[0]"));
        assert!(!problems[2].message.contains("sk-123"));
    }

    #[test]
    fn upstream_call_settings_come_from_the_file_with_defaults() {
        let s = load_file(
            "[[models]]\nname = \"a\"\nprovider = \"openai\"\nbase_url = \"http://u/v1\"\n\
             connect_timeout_ms = 250\nfirst_byte_timeout_ms = 1500\nmax_attempts = 5\n\
             retry_backoff_ms = 10\nmax_retry_after_secs = 2\n\
             [[models]]\nname = \"b\"\nprovider = \"openai\"\nbase_url = \"http://u/v1\"",
            &[],
        )
        .unwrap();
        let (a, b) = (&s.models[0], &s.models[1]);
        assert_eq!(
            (
                a.connect_timeout_ms,
                a.first_byte_timeout_ms,
                a.max_attempts,
                a.retry_backoff_ms,
                a.max_retry_after_secs
            ),
            (250, 1500, 5, 10, 2)
        );
        assert_eq!(
            (
                b.connect_timeout_ms,
                b.first_byte_timeout_ms,
                b.max_attempts,
                b.retry_backoff_ms,
                b.max_retry_after_secs
            ),
            (
                DEFAULT_CONNECT_TIMEOUT_MS,
                DEFAULT_FIRST_BYTE_TIMEOUT_MS,
                DEFAULT_MAX_ATTEMPTS,
                DEFAULT_RETRY_BACKOFF_MS,
                DEFAULT_MAX_RETRY_AFTER_SECS
            )
        );
    }

    #[test]
    fn upstream_call_settings_out_of_range_are_reported() {
        let mut s = valid();
        s.models[0].connect_timeout_ms = 0;
        s.models[0].max_attempts = 11;
        s.models[0].retry_backoff_ms = 0;
        s.models[0].max_retry_after_secs = 3601;
        let problems = s.validate(false);
        assert_eq!(
            keys(&problems),
            [
                "models[0].connect_timeout_ms",
                "models[0].max_attempts",
                "models[0].retry_backoff_ms",
                "models[0].max_retry_after_secs"
            ]
        );
        assert!(problems[1].message.contains("at most 10"), "{problems:?}");
    }

    #[test]
    fn api_key_is_read_once_from_the_named_variable() {
        let file = "[[models]]\nname = \"a\"\nprovider = \"openai\"\n\
                    base_url = \"http://u/v1\"\napi_key_env = \"UPSTREAM_KEY\"";
        let config = TempConfig::new(file);
        let path = config.path();
        let with_key = |key: Option<&'static str>| {
            let path = path.clone();
            move |name: &str| match name {
                "CHATGATE_CONFIG" => Some(path.clone()),
                "CHATGATE_JWT_SECRET" => Some(GOOD_SECRET.to_string()),
                "UPSTREAM_KEY" => key.map(str::to_string),
                _ => None,
            }
        };
        let s = Settings::load_validated(&with_key(Some("sk-live-123")), false).unwrap();
        let key = s.models[0].api_key.as_ref().expect("key");
        assert_eq!(key.expose(), "sk-live-123");
        assert!(!format!("{s:?}").contains("sk-live-123"));

        for missing in [None, Some("")] {
            let problems = Settings::load_validated(&with_key(missing), false).unwrap_err();
            assert_eq!(keys(&problems), ["models[0].api_key_env"]);
            assert!(problems[0].message.contains("export UPSTREAM_KEY"));
        }
    }

    #[test]
    fn unknown_or_missing_provider_is_a_load_problem() {
        let problems = load_file(
            "[[models]]\nname = \"a\"\nprovider = \"gpt\"\n[[models]]\nname = \"b\"",
            &[],
        )
        .unwrap_err();
        assert_eq!(
            keys(&problems),
            ["models[0].provider", "models[1].provider"]
        );
        assert!(problems[0]
            .message
            .contains("unknown provider `gpt`; use one of: echo, openai"));
    }

    #[test]
    fn bind_accepts_colon_port() {
        let mut s = valid();
        s.server.bind = ":0".to_string();
        assert!(s.validate(false).is_empty());
        assert_eq!(s.bind_addr(), "0.0.0.0:0".parse::<SocketAddr>().unwrap());
        s.server.bind = "[::1]:9000".to_string();
        assert_eq!(s.bind_addr().port(), 9000);
        for bad in ["8080", ":99999", "localhost", ""] {
            assert!(parse_bind(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins_list_is_trimmed_and_checked() {
        let s = load_with(&[(
            "CHATGATE_ALLOWED_ORIGINS",
            " https://a.example , ,https://b.example:8443, ",
        )])
        .unwrap();
        assert_eq!(
            s.server.allowed_origins,
            ["https://a.example", "https://b.example:8443"]
        );
        let s = load_file("allowed_origins = \"https://c.example,*\"", &[]).unwrap();
        assert_eq!(s.server.allowed_origins, ["https://c.example", "*"]);
        let mut s = valid();
        s.server.allowed_origins = vec!["https://a.example/".to_string(), "a.example".to_string()];
        assert_eq!(s.validate(false).len(), 2);
    }

    #[test]
    fn sqlite_directory_must_exist() {
        let mut s = valid();
        s.database.url = "/definitely/not/here/chatgate.db".to_string();
        assert_eq!(keys(&s.validate(false)), ["DATABASE_URL"]);
        s.database.url = String::new();
        assert_eq!(keys(&s.validate(false)), ["DATABASE_URL"]);
        let in_temp = std::env::temp_dir().join("chatgate.db");
        for ok in [
            ":memory:".to_string(),
            "sqlite://:memory:".to_string(),
            format!("sqlite://{}", in_temp.display()),
            "postgres://u:p@db.internal/chatgate".to_string(),
        ] {
            s.database.url = ok;
            assert_eq!(s.validate(false), [], "{}", s.database.url);
        }
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let secret = Secret::new("hunter2-hunter2".to_string());
        assert_eq!(format!("{secret:?}"), "[redacted]");
        assert_eq!(secret.to_string(), "[redacted]");
        assert_eq!(secret.expose(), "hunter2-hunter2");
        let mut s = valid();
        s.database.url =
            "postgres://app:pa55@db:5432/chat?sslmode=require&password=pa55".to_string();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains(GOOD_SECRET) && !shown.contains("pa55"),
            "{shown}"
        );
        assert_eq!(
            s.database.redacted_url(),
            "postgres://app:[redacted]@db:5432/chat?sslmode=require&password=[redacted]"
        );
    }

    #[test]
    fn file_keys_match_layer_fields_and_env_vars() {
        // Every listed key is accepted by `Layer` (a wrong type still proves the key is known)...
        for (key, _) in FILE_KEYS {
            let mut single = toml::Table::new();
            single.insert(key.to_string(), toml::Value::Boolean(true));
            if let Err(err) = single.try_into::<Layer>() {
                assert!(!err.message().contains("unknown field"), "{key}: {err}");
            }
        }
        // ...every `Layer` field is listed (serde names them all when rejecting a key)...
        let mut unknown = toml::Table::new();
        unknown.insert("zzz".to_string(), toml::Value::Boolean(true));
        let err = unknown.try_into::<Layer>().err().unwrap();
        let (_, fields) = err.message().split_once("expected one of").unwrap();
        assert_eq!(fields.matches('`').count() / 2, FILE_KEYS.len(), "{fields}");
        // ...and every env var named there is read.
        let asked = RefCell::new(Vec::new());
        let _ = Settings::load(&|name: &str| {
            asked.borrow_mut().push(name.to_string());
            None
        });
        for (key, env_name) in FILE_KEYS
            .iter()
            .filter(|(k, _)| !["rust_log", "models"].contains(k))
        {
            assert!(asked.borrow().contains(&env_name.to_string()), "{env_name}");
            assert_eq!(
                env_name.trim_start_matches("CHATGATE_").to_lowercase(),
                *key
            );
        }
    }
}
