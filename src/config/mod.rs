//! Settings, layered: built-in defaults, then the optional flat TOML file named by
//! `CHATGATE_CONFIG`, then environment variables (an empty variable counts as unset). `load`
//! reports every parse problem and `validate` every semantic one, so a broken deployment is
//! fixed in one round instead of one error per restart.
//!
//! Each setting is declared once, in `table.rs`: field, variable, default, unit, range, check
//! and doc line. The `declare_settings!` macro (`declare.rs`) derives the structs, both
//! readers, the range checks, the redacted dump (`Settings::dump`, also behind `Debug`) and
//! `Settings::declarations()`, which a test holds the README's table to.
//!
//! Why serde/toml plus one declarative macro rather than a layered-config crate such as
//! figment: figment reads the process environment itself (tests here inject it), stops at the
//! first bad value of a struct (we must report every problem, each under its variable), knows
//! nothing of ranges, redaction or docs, so those would still need a table of their own —
//! the second copy this module exists to remove. The macro is the table.

#[macro_use]
mod declare;
mod checks;
mod file;
mod models;
mod table;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_models;
#[cfg(test)]
mod tests_readme;
#[cfg(test)]
mod tests_wave2;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use serde::Deserialize;

pub use checks::is_origin;
pub use declare::Declaration;
pub use models::{
    ModelSettings, ProviderKind, DEFAULT_CONNECT_TIMEOUT_MS, DEFAULT_FIRST_BYTE_TIMEOUT_MS,
    DEFAULT_MAX_ATTEMPTS, DEFAULT_MAX_RETRY_AFTER_SECS, DEFAULT_RETRY_BACKOFF_MS,
};
pub use table::{
    AuthSettings, ClusterSettings, CollectorSettings, DatabaseSettings, LimitSettings,
    ServerSettings, Settings, TelemetrySettings, TimerSettings,
};

/// Variables the README's table documents that are not settings of this table: `RUST_LOG`
/// is read by env_logger itself (TOML `rust_log` is its fallback), with its default.
pub const EXTERNAL_VARIABLES: &[(&str, &str)] = &[("RUST_LOG", "info")];

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

impl DatabaseSettings {
    pub fn is_postgres(&self) -> bool {
        checks::is_postgres_url(&self.url)
    }

    /// The path (or `:memory:`) to hand to SQLite, with an optional `sqlite://` prefix removed;
    /// `None` for PostgreSQL.
    pub fn sqlite_path(&self) -> Option<&str> {
        checks::sqlite_path(&self.url)
    }

    /// The URL with any password replaced, for logs.
    pub fn redacted_url(&self) -> String {
        checks::show_url(&self.url)
    }
}

impl Settings {
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
            settings.apply_file(Path::new(&path), &mut problems);
        }
        // Env is parsed even when the file had problems, so all are reported in the same run.
        settings.apply_env(env, &mut problems);
        if settings.models.is_empty() {
            settings.models.push(ModelSettings::echo());
        }
        for model in &mut settings.models {
            // Read once here: a key rotated later needs a restart, and no request path ever
            // touches the process environment.
            model.api_key = model
                .api_key_env
                .as_deref()
                .filter(|var| checks::is_env_var_name(var))
                .and_then(|var| env_value(env, var))
                .map(Secret::new);
        }
        (settings, problems)
    }

    /// Every problem, not just the first. `dev` = `serve --dev`: a missing secret is then allowed.
    pub fn validate(&self, dev: bool) -> Vec<ConfigProblem> {
        let mut problems = Vec::new();
        self.check_declared(dev, &mut problems);
        self.check_relations(&mut problems);
        models::check_models(&self.models, &mut problems);
        problems
    }

    /// The resolved socket address of `server.bind` (validate() guarantees it parses).
    pub fn bind_addr(&self) -> SocketAddr {
        // Unreachable after validate(); the contract default beats a panic if a caller skipped it.
        checks::parse_bind(&self.server.bind)
            .unwrap_or_else(|_| SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080))
    }

    /// Default of `timers.stream_timeout_secs`, overridden by a model's timeout_secs.
    pub fn model_timeout_secs(&self, model: &ModelSettings) -> u64 {
        model
            .timeout_secs
            .unwrap_or(self.timers.stream_timeout_secs)
    }

    /// The redacted dump: one `VARIABLE=value` line per setting, then the models. For the
    /// startup log and `chatgate check-config`.
    pub fn dump_lines(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .dump()
            .into_iter()
            .map(|(env, value)| format!("{env}={value}"))
            .collect();
        for model in &self.models {
            lines.push(model.dump_line());
        }
        lines
    }

    /// Rules between settings; each single setting was checked on its own before.
    fn check_relations(&self, problems: &mut Vec<ConfigProblem>) {
        let (heartbeat, client) = (self.timers.heartbeat_secs, self.timers.client_timeout_secs);
        // Only meaningful once both are positive; zero is already reported.
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
        if self.cluster.redis_url.is_some() && !self.database.is_postgres() {
            problems.push(ConfigProblem::new(
                "CHATGATE_REDIS_URL",
                "cluster mode needs a PostgreSQL DATABASE_URL, but DATABASE_URL names SQLite, \
                 which one instance owns; set DATABASE_URL to a postgres:// URL shared by every \
                 instance, or leave CHATGATE_REDIS_URL empty to run one instance",
            ));
        }
    }
}

/// An env var set to the empty string counts as unset, as with most Unix tools.
fn env_value(env: &dyn Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    env(name).filter(|value| !value.is_empty())
}

/// Quotes the default so the fix is obvious.
fn check_range(
    key: &str,
    value: Option<i128>,
    default: Option<i128>,
    (min, max): (i128, i128),
    problems: &mut Vec<ConfigProblem>,
) {
    let (Some(value), Some(default)) = (value, default) else {
        return;
    };
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
