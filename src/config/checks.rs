//! Shape checks of single settings (the table names them with `check`), and how URL-valued
//! settings are shown. Each message says what is wrong and how to fix it, and never quotes a
//! secret.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::OnceLock;

use rand::distr::{Alphanumeric, SampleString};

use super::Secret;
use crate::domain::redact::redact_url;

const MIN_SECRET_CHARS: usize = 32;
const GENERATE_SECRET: &str = "generate one with `openssl rand -hex 32`";
const MAX_INSTANCE_ID_CHARS: usize = 64;

/// Compared case-insensitively; see `is_weak_secret` for how a secret matches.
const WEAK_SECRETS: &str = "secret changeme change-me your-256-bit-secret jwt-secret jwt_secret \
    jwtsecret password passw0rd admin default test example supersecret mysecret letmein qwerty \
    123456 token key chatgate";

pub fn check_bind(bind: &str, _dev: bool) -> Vec<String> {
    parse_bind(bind).err().into_iter().collect()
}

pub fn parse_bind(raw: &str) -> Result<SocketAddr, String> {
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

pub fn check_origins(origins: &[String], _dev: bool) -> Vec<String> {
    origins
        .iter()
        .filter(|origin| *origin != "*" && !is_origin(origin))
        .map(|origin| {
            format!(
                "`{origin}` is not an origin; write scheme://host[:port] with no path or \
                 trailing slash, e.g. https://app.example.com, or * to allow all"
            )
        })
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

pub fn is_postgres_url(url: &str) -> bool {
    let url = url.trim();
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// The path (or `:memory:`) SQLite gets, `sqlite://` removed; `None` for PostgreSQL.
pub fn sqlite_path(url: &str) -> Option<&str> {
    if is_postgres_url(url) {
        return None;
    }
    let url = url.trim();
    Some(url.strip_prefix("sqlite://").unwrap_or(url))
}

pub fn check_database_url(url: &str, _dev: bool) -> Vec<String> {
    let Some(path) = sqlite_path(url) else {
        return Vec::new();
    };
    if path.is_empty() {
        return vec![
            "is empty; set it to a SQLite file path such as chatgate.db or a postgres:// URL"
                .to_string(),
        ];
    }
    // `file:` URIs carry SQLite options in a query string, so they are not plain paths.
    if path == ":memory:" || path.starts_with("file:") {
        return Vec::new();
    }
    let path = Path::new(path);
    if path.is_dir() {
        return vec![format!(
            "`{}` is a directory; point it at a database file inside it, e.g. {}",
            path.display(),
            path.join("chatgate.db").display()
        )];
    }
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => vec![format!(
            "the directory `{}` does not exist; create it (mkdir -p {0}) or choose a path in an \
             existing directory",
            parent.display()
        )],
        _ => Vec::new(),
    }
}

/// Messages never include the value: these lines end up in logs and terminals.
pub fn check_secret(secret: &Option<Secret>, dev: bool) -> Vec<String> {
    let Some(secret) = secret else {
        return match dev {
            true => Vec::new(),
            false => vec![format!(
                "is not set; set CHATGATE_JWT_SECRET (or jwt_secret in the config file); \
                 {GENERATE_SECRET}"
            )],
        };
    };
    let value = secret.expose();
    let mut problems = Vec::new();
    if value.chars().count() < MIN_SECRET_CHARS {
        problems.push(format!(
            "is shorter than {MIN_SECRET_CHARS} characters; {GENERATE_SECRET}"
        ));
    }
    if is_single_repeated_char(value) {
        problems.push(format!(
            "is one character repeated; use a random value, {GENERATE_SECRET}"
        ));
    }
    if is_weak_secret(value) {
        problems.push(format!(
            "is or contains a well-known weak value; use a random value, {GENERATE_SECRET}"
        ));
    }
    problems
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

/// The scheme only: whether the server answers is for startup to find out, not validation.
pub fn check_redis_url(url: &Option<String>, _dev: bool) -> Vec<String> {
    match url.as_deref().map(str::trim) {
        Some(url) if !(url.starts_with("redis://") || url.starts_with("rediss://")) => {
            vec![format!(
                "`{}` is not a Redis URL; write redis://[user:pass@]host:port[/db] or rediss://… \
                 for TLS, or leave it empty to run without cluster mode",
                redact_url(url)
            )]
        }
        Some(url) if url.len() <= "rediss://".len() => vec![
            "has no host; write redis://host:port[/db], e.g. redis://127.0.0.1:6379".to_string(),
        ],
        _ => Vec::new(),
    }
}

/// It names this instance in keys and views other instances read, so it stays short and
/// needs no quoting anywhere.
pub fn check_instance_id(id: &str, _dev: bool) -> Vec<String> {
    let fix = "use 1 to 64 letters, digits, `-`, `_` or `.`, e.g. gateway-1";
    if id.is_empty() || id.chars().count() > MAX_INSTANCE_ID_CHARS {
        return vec![format!("is {} characters long; {fix}", id.chars().count())];
    }
    match id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_.".contains(*c)))
    {
        Some(bad) => vec![format!("contains {bad:?}; {fix}")],
        None => Vec::new(),
    }
}

/// Host name (cleaned to the allowed characters) plus a random suffix, chosen once per process
/// so every `Settings::defaults()` agrees.
pub fn default_instance_id() -> String {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host: String = gethostname::gethostname()
            .to_string_lossy()
            .chars()
            .map(|c| match c.is_ascii_alphanumeric() || "-_.".contains(c) {
                true => c,
                false => '-',
            })
            .take(MAX_INSTANCE_ID_CHARS - 9)
            .collect();
        let suffix = Alphanumeric
            .sample_string(&mut rand::rng(), 8)
            .to_lowercase();
        match host.is_empty() {
            true => format!("chatgate-{suffix}"),
            false => format!("{host}-{suffix}"),
        }
    })
    .clone()
}

pub fn show_url(url: &str) -> String {
    redact_url(url)
}

pub fn show_optional_url(url: &Option<String>) -> String {
    url.as_deref().map(redact_url).unwrap_or_default()
}

pub fn is_env_var_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}
