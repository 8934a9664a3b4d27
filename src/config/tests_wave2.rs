//! The wave 2 settings: defaults, parsing and the problems they report.

use ipnet::IpNet;

use super::tests::*;
use super::*;

#[test]
fn wave2_defaults_follow_the_contract() {
    let s = load_with(&[]).unwrap();
    assert_eq!(
        (s.limits.user_max_connections, s.limits.auth_failure_limit),
        (16, 30)
    );
    assert!(s.server.trusted_proxies.is_empty());
    assert_eq!(
        (s.auth.jwt_audience.clone(), s.auth.jwt_issuer.clone()),
        (None, None)
    );
    assert_eq!(s.timers.resume_grace_secs, 30);
    assert!(s.cluster.redis_url.is_none());
    assert!(checks::check_instance_id(&s.cluster.instance_id, false).is_empty());
    assert_eq!(valid().validate(false), []);
}

#[test]
fn trusted_proxies_parse_into_networks_and_name_every_bad_entry() {
    let s = load_with(&[(
        "CHATGATE_TRUSTED_PROXIES",
        " 10.0.0.5, 10.1.0.0/16 ,, fd00::/8",
    )])
    .unwrap();
    let expected: Vec<IpNet> = ["10.0.0.5/32", "10.1.0.0/16", "fd00::/8"]
        .iter()
        .map(|net| net.parse().unwrap())
        .collect();
    assert_eq!(s.server.trusted_proxies, expected);
    let s = load_file("trusted_proxies = \"192.168.0.0/24\"", &[]).unwrap();
    assert_eq!(s.server.trusted_proxies.len(), 1);

    let problems = load_with(&[(
        "CHATGATE_TRUSTED_PROXIES",
        "10.0.0.5, 10.0.0.999, lb.internal",
    )])
    .unwrap_err();
    assert_eq!(keys(&problems), ["CHATGATE_TRUSTED_PROXIES"]);
    let message = &problems[0].message;
    assert!(
        message.contains("`10.0.0.999`") && message.contains("`lb.internal`"),
        "{message}"
    );
    assert!(!message.contains("`10.0.0.5`"), "{message}");
}

#[test]
fn empty_audience_and_issuer_are_ignored() {
    let s = load_with(&[("CHATGATE_JWT_AUDIENCE", ""), ("CHATGATE_JWT_ISSUER", "")]).unwrap();
    assert_eq!((s.auth.jwt_audience, s.auth.jwt_issuer), (None, None));
    let s = load_file(
        "jwt_audience = \"\"\njwt_issuer = \"https://id.example\"",
        &[("CHATGATE_JWT_AUDIENCE", "chatgate")],
    )
    .unwrap();
    assert_eq!(s.auth.jwt_audience.as_deref(), Some("chatgate"));
    assert_eq!(s.auth.jwt_issuer.as_deref(), Some("https://id.example"));
}

#[test]
fn limits_and_grace_are_range_checked() {
    let s = load_with(&[("CHATGATE_RESUME_GRACE_SECS", "0")]).unwrap();
    assert_eq!(s.timers.resume_grace_secs, 0);
    let mut s = valid();
    s.limits.user_max_connections = 0;
    s.limits.auth_failure_limit = 0;
    s.timers.resume_grace_secs = 3_601;
    assert_eq!(
        keys(&s.validate(false)),
        [
            "CHATGATE_USER_MAX_CONNECTIONS",
            "CHATGATE_AUTH_FAILURE_LIMIT",
            "CHATGATE_RESUME_GRACE_SECS"
        ]
    );
}

#[test]
fn redis_needs_postgres_and_a_redis_scheme() {
    let mut s = valid();
    s.cluster.redis_url = Some("redis://127.0.0.1:6379".to_string());
    let problems = s.validate(false);
    assert_eq!(keys(&problems), ["CHATGATE_REDIS_URL"]);
    assert!(problems[0].message.contains("PostgreSQL"), "{problems:?}");
    assert!(problems[0].message.contains("SQLite"), "{problems:?}");

    s.database.url = "postgres://app@db/chat".to_string();
    for ok in ["redis://127.0.0.1:6379", "rediss://u:p@cache:6380/2"] {
        s.cluster.redis_url = Some(ok.to_string());
        assert_eq!(s.validate(false), [], "{ok}");
    }
    s.cluster.redis_url = Some("http://u:hunter2@cache:6379".to_string());
    let problems = s.validate(false);
    assert_eq!(keys(&problems), ["CHATGATE_REDIS_URL"]);
    assert!(problems[0].message.contains("rediss://"));
    assert!(!problems[0].message.contains("hunter2"), "{problems:?}");
}

#[test]
fn instance_id_charset_and_length_are_checked() {
    let s = load_with(&[("CHATGATE_INSTANCE_ID", "gateway-1.eu_west")]).unwrap();
    assert_eq!(s.cluster.instance_id, "gateway-1.eu_west");
    let mut s = valid();
    for bad in ["gw 1", "gw/1", "é", &"x".repeat(65)] {
        s.cluster.instance_id = bad.to_string();
        assert_eq!(keys(&s.validate(false)), ["CHATGATE_INSTANCE_ID"], "{bad}");
    }
    s.cluster.instance_id = String::new();
    assert_eq!(keys(&s.validate(false)), ["CHATGATE_INSTANCE_ID"]);
}

#[test]
fn dump_lists_every_declared_variable_with_secrets_redacted() {
    let mut s = valid();
    s.database.url = "postgres://app:pw1@db/chat?password=pw2".to_string();
    s.cluster.redis_url = Some("redis://:pw3@cache:6379?token=pw4".to_string());
    s.models[0].base_url = Some("https://bob:pw5@up/v1?api_key=pw6".to_string());
    let lines = s.dump_lines();
    let all = lines.join("\n");
    for secret in ["pw1", "pw2", "pw3", "pw4", "pw5", "pw6", GOOD_SECRET] {
        assert!(!all.contains(secret), "{secret} in {all}");
    }
    assert!(!format!("{s:?}").contains("pw5"));
    for decl in Settings::declarations() {
        let prefix = format!("{}=", decl.env);
        assert!(
            lines.iter().any(|line| line.starts_with(&prefix)),
            "{prefix}"
        );
    }
    assert!(all.contains("CHATGATE_REDIS_URL=redis://:[redacted]@cache:6379?token=[redacted]"));
}
