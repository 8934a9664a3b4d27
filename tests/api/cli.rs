//! The binary itself: configuration errors, and SIGTERM handling.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::helpers::TEST_SECRET;
use crate::process::ServerProcess;

fn chatgate(args: &[&str], env: &[(&str, &str)], dir: &std::path::Path) -> std::process::Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    cmd.args(args)
        .current_dir(dir)
        .env_remove("CHATGATE_CONFIG")
        .env_remove("CHATGATE_JWT_SECRET");
    for (k, v) in env {
        cmd.env(k, v);
    }
    // A bad config must exit before listening, so this never waits on a running server.
    cmd.output().expect("run chatgate")
}

#[test]
fn weak_short_and_repeated_secrets_each_stop_serve() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("changeme-changeme-changeme-changeme-123", "weak"),
        ("short-but-random-Xy7", "32"),
        (&*"z".repeat(40), "repeat"),
    ];
    for (secret, expected) in cases {
        let out = chatgate(
            &["serve"],
            &[
                ("CHATGATE_JWT_SECRET", secret),
                ("CHATGATE_BIND", "127.0.0.1:0"),
            ],
            dir.path(),
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_lowercase();
        assert!(!out.status.success(), "{secret}: serve should refuse");
        assert!(stderr.contains("chatgate_jwt_secret"), "{secret}: {stderr}");
        assert!(
            stderr.contains(expected),
            "{secret}: expected '{expected}' in: {stderr}"
        );
        assert!(
            !stderr.contains(&secret.to_lowercase()),
            "the secret itself must not be printed"
        );
    }
}

#[test]
fn check_config_prints_every_problem_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = chatgate(
        &["check-config"],
        &[
            ("CHATGATE_JWT_SECRET", TEST_SECRET),
            ("CHATGATE_USER_RATE_LIMIT", "0"),
            ("CHATGATE_BIND", "not-an-address"),
            ("CHATGATE_HEARTBEAT_SECS", "abc"),
        ],
        dir.path(),
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    for key in [
        "CHATGATE_USER_RATE_LIMIT",
        "CHATGATE_BIND",
        "CHATGATE_HEARTBEAT_SECS",
    ] {
        assert!(stderr.contains(key), "missing {key} in: {stderr}");
    }
}

#[test]
fn valid_config_passes_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = chatgate(
        &["check-config"],
        &[("CHATGATE_JWT_SECRET", TEST_SECRET)],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
}

#[test]
fn migrate_applies_then_reports_up_to_date() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("m.db");
    let db = db.to_str().expect("utf8 path");
    let first = chatgate(&["migrate"], &[("DATABASE_URL", db)], dir.path());
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(String::from_utf8_lossy(&first.stdout).contains("applied"));
    let second = chatgate(&["migrate"], &[("DATABASE_URL", db)], dir.path());
    assert!(String::from_utf8_lossy(&second.stdout).contains("up to date"));
}

#[test]
fn sigterm_exits_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProcess::start(dir.path(), &[]);
    let healthy = std::net::TcpStream::connect(&server.addr).is_ok();
    assert!(healthy, "server at {} accepts connections", server.addr);
    server.signal("-TERM");
    let status = server.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0));
}

#[test]
fn serve_dev_prints_ready_tokens_and_the_dashboard_url() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    cmd.args(["serve", "--dev"])
        .current_dir(dir.path())
        .env_remove("CHATGATE_CONFIG")
        .env_remove("CHATGATE_JWT_SECRET")
        .env("CHATGATE_BIND", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            seen.push(line);
            if seen.iter().any(|l| l.contains("user token:")) {
                let _ = tx.send(seen.join("\n"));
                return;
            }
        }
    });
    let banner = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("dev banner");
    crate::process::signal(child.id(), "-INT");
    assert_eq!(
        crate::process::wait_exit(&mut child, Duration::from_secs(15)).code(),
        Some(0)
    );
    assert!(banner.contains("DEVELOPMENT MODE"), "{banner}");
    assert!(banner.contains("/admin#token="), "{banner}");
    assert!(banner.contains("admin token: ey"), "{banner}");
}

/// Passwords planted in every URL-valued setting, as userinfo and as query parameters.
const PLANTED: [&str; 6] = [
    "dbUserinfoPw",
    "dbQueryPw",
    "redisUserinfoPw",
    "redisQueryPw",
    "modelUserinfoPw",
    "modelQueryKey",
];

fn model_with_secret_base_url(dir: &std::path::Path) -> String {
    let path = dir.join("chatgate.toml");
    std::fs::write(
        &path,
        "[[models]]\nname = \"up\"\nprovider = \"openai\"\n\
         base_url = \"http://bob:modelUserinfoPw@127.0.0.1:9/v1?api_key=modelQueryKey\"\n",
    )
    .expect("write config");
    path.to_str().expect("utf8 path").to_string()
}

fn assert_no_planted_secret(output: &str) {
    for secret in PLANTED {
        assert!(!output.contains(secret), "{secret} leaked in:\n{output}");
    }
}

#[test]
fn check_config_dump_never_shows_url_passwords() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = model_with_secret_base_url(dir.path());
    let env = [
        ("CHATGATE_JWT_SECRET", TEST_SECRET),
        ("CHATGATE_CONFIG", config.as_str()),
        (
            "DATABASE_URL",
            "postgres://app:dbUserinfoPw@127.0.0.1:5432/chat?sslmode=disable&password=dbQueryPw",
        ),
        (
            "CHATGATE_REDIS_URL",
            "redis://user:redisUserinfoPw@127.0.0.1:6379/0?password=redisQueryPw",
        ),
    ];
    let out = chatgate(&["check-config"], &env, dir.path());
    let shown = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{shown}");
    assert_no_planted_secret(&shown);
    // The dump is there, with the parts that are not secret.
    for expected in [
        "DATABASE_URL=postgres://app:[redacted]@127.0.0.1:5432/chat?sslmode=disable&password=[redacted]",
        "CHATGATE_REDIS_URL=redis://user:[redacted]@127.0.0.1:6379/0?password=[redacted]",
        "base_url=http://bob:[redacted]@127.0.0.1:9/v1?api_key=[redacted]",
        "CHATGATE_JWT_SECRET=[redacted]",
    ] {
        assert!(shown.contains(expected), "missing {expected} in:\n{shown}");
    }

    // A rejected configuration names the bad URL without its secrets either.
    let mut bad = env.to_vec();
    bad.push(("DATABASE_URL", "chatgate.db?password=dbQueryPw"));
    bad.push((
        "CHATGATE_REDIS_URL",
        "http://user:redisUserinfoPw@cache/?token=redisQueryPw",
    ));
    let out = chatgate(&["check-config"], &bad, dir.path());
    let shown = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{shown}");
    assert!(shown.contains("CHATGATE_REDIS_URL"), "{shown}");
    assert_no_planted_secret(&shown);
}

#[test]
fn serve_startup_log_never_shows_url_passwords() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = model_with_secret_base_url(dir.path());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    cmd.arg("serve")
        .current_dir(dir.path())
        .env("CHATGATE_CONFIG", &config)
        .env("CHATGATE_JWT_SECRET", TEST_SECRET)
        .env("CHATGATE_BIND", "127.0.0.1:0")
        .env("DATABASE_URL", dir.path().join("serve.db"))
        .env("RUST_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let listening = line.contains("listening on http://");
            if tx.send(line).is_err() || listening {
                break;
            }
        }
    });
    let mut log = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Ok(line) =
        rx.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()))
    {
        let listening = line.contains("listening on http://");
        log.push(line);
        if listening {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    let log = log.join("\n");
    assert!(log.contains("listening on http://"), "{log}");
    assert!(log.contains("event=config_loaded"), "{log}");
    assert!(
        log.contains("base_url=http://bob:[redacted]@127.0.0.1:9/v1?api_key=[redacted]"),
        "{log}"
    );
    assert_no_planted_secret(&log);
}
