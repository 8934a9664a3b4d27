//! The `[[models]]` of the TOML file: what a model is, how an entry is read and checked.

use std::collections::HashMap;
use std::fmt;

use serde::Deserialize;

use super::checks::is_env_var_name;
use super::table::MAX_DURATION_SECS;
use super::{ConfigProblem, Secret};
use crate::domain::redact::redact_url;

const MAX_MODEL_DELAY_MS: u64 = 60_000;
/// Upstream call defaults for `provider = "openai"` models (per model in the TOML file).
pub const DEFAULT_CONNECT_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_FIRST_BYTE_TIMEOUT_MS: u64 = 60_000;
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
pub const DEFAULT_RETRY_BACKOFF_MS: u64 = 250;
pub const DEFAULT_MAX_RETRY_AFTER_SECS: u64 = 10;
const MAX_ATTEMPTS_LIMIT: u32 = 10;

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

/// `Debug` is hand-written: `base_url` may carry a password.
#[derive(Clone)]
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

/// Provider stays a string here so an unknown one is reported with the list of known ones.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename = "model")]
pub(super) struct FileModel {
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

impl FileModel {
    pub(super) fn into_settings(
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

/// Names unique and present, an upstream for `openai`, the key variable set, numbers in range.
pub fn check_models(models: &[ModelSettings], problems: &mut Vec<ConfigProblem>) {
    let mut first_index: HashMap<&str, usize> = HashMap::new();
    for (i, model) in models.iter().enumerate() {
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
                        format!("`{url}` is not an HTTP URL; start it with http:// or https://"),
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

impl ModelSettings {
    /// The model's line in the settings dump: the key's variable name, never the key, and the
    /// upstream URL redacted.
    pub fn dump_line(&self) -> String {
        let mut line = format!("model {}: provider={}", self.name, self.provider.as_str());
        if let Some(url) = &self.base_url {
            line.push_str(&format!(" base_url={}", redact_url(url)));
        }
        if let Some(upstream) = &self.upstream_model {
            line.push_str(&format!(" upstream_model={upstream}"));
        }
        if let Some(var) = &self.api_key_env {
            let state = if self.api_key.is_some() {
                "set"
            } else {
                "unset"
            };
            line.push_str(&format!(" api_key_env={var} ({state})"));
        }
        line
    }
}

impl fmt::Debug for ModelSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ModelSettings")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("delay_ms", &self.delay_ms)
            .field("base_url", &self.base_url.as_deref().map(redact_url))
            .field("api_key_env", &self.api_key_env)
            .field("api_key", &self.api_key)
            .field("upstream_model", &self.upstream_model)
            .field("timeout_secs", &self.timeout_secs)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("first_byte_timeout_ms", &self.first_byte_timeout_ms)
            .field("max_attempts", &self.max_attempts)
            .field("retry_backoff_ms", &self.retry_backoff_ms)
            .field("max_retry_after_secs", &self.max_retry_after_secs)
            .finish()
    }
}
