//! Loading and validating the declared settings (moved from the former config.rs).

use super::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};

pub(super) const GOOD_SECRET: &str =
    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

/// A config file in the temp dir, removed when dropped.
pub(super) struct TempConfig(PathBuf);

impl TempConfig {
    pub(super) fn new(contents: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let path = std::env::temp_dir().join(format!(
            "chatgate-config-test-{}-{n}.toml",
            std::process::id()
        ));
        std::fs::write(&path, contents).unwrap();
        Self(path)
    }

    pub(super) fn path(&self) -> String {
        self.0.to_str().unwrap().to_string()
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

pub(super) fn load_with(pairs: &[(&str, &str)]) -> Result<Settings, Vec<ConfigProblem>> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Settings::load(&|name| map.get(name).cloned())
}

pub(super) fn load_file(
    contents: &str,
    pairs: &[(&str, &str)],
) -> Result<Settings, Vec<ConfigProblem>> {
    let file = TempConfig::new(contents);
    let path = file.path();
    let mut all = vec![("CHATGATE_CONFIG", path.as_str())];
    all.extend_from_slice(pairs);
    load_with(&all)
}

pub(super) fn keys(problems: &[ConfigProblem]) -> Vec<&str> {
    problems.iter().map(|p| p.key.as_str()).collect()
}

pub(super) fn valid() -> Settings {
    let mut settings = Settings::defaults();
    settings.auth.jwt_secret = Some(Secret::new(GOOD_SECRET.to_string()));
    settings
}

pub(super) fn secret_problems(secret: &str) -> Vec<ConfigProblem> {
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
