//! Models, bind, origins, the database path, redaction and the declarations themselves.

use std::cell::RefCell;
use std::net::SocketAddr;

use super::checks::parse_bind;
use super::tests::*;
use super::*;

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
    s.database.url = "postgres://app:pa55@db:5432/chat?sslmode=require&password=pa55".to_string();
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
fn file_keys_match_declarations_and_env_vars() {
    let probe = toml::Value::Boolean(true);
    // Every declared key is accepted by the file (a wrong type still proves the key is known)...
    for decl in Settings::declarations() {
        let known = Settings::defaults().apply_toml_key(&decl.toml_key(), &probe);
        assert!(known.is_some(), "{}", decl.env);
    }
    // ...an undeclared one is not...
    assert!(Settings::defaults().apply_toml_key("zzz", &probe).is_none());
    // ...and every declared env var is read, under the contract's naming rule.
    let asked = RefCell::new(Vec::new());
    let _ = Settings::load(&|name: &str| {
        asked.borrow_mut().push(name.to_string());
        None
    });
    for decl in Settings::declarations() {
        assert!(
            asked.borrow().contains(&decl.env.to_string()),
            "{}",
            decl.env
        );
        assert_eq!(
            decl.env.trim_start_matches("CHATGATE_").to_lowercase(),
            decl.toml_key()
        );
    }
}
