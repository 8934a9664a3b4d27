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

/// Reads the `serve --dev` banner up to its last line (`limits:`).
fn dev_banner(child: &mut std::process::Child) -> String {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let last = line.starts_with("limits:");
            seen.push(line);
            if last {
                let _ = tx.send(seen.join("\n"));
                return;
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(30))
        .expect("dev banner")
}

fn banner_value<'a>(banner: &'a str, label: &str) -> &'a str {
    banner
        .lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no `{label}` line: {banner}"))
        .trim()
}

fn loadtest_json(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .arg("loadtest")
        .args(args)
        .args(["--connections", "1", "--json"])
        .output()
        .expect("run loadtest");
    serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "loadtest summary ({err}): {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

#[test]
fn serve_dev_hands_its_secret_over_in_a_private_file_and_lifts_the_user_limits() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_chatgate"))
        .args(["serve", "--dev"])
        .current_dir(dir.path())
        .env_remove("CHATGATE_CONFIG")
        .env_remove("CHATGATE_JWT_SECRET")
        .env_remove("CHATGATE_USER_RATE_LIMIT")
        .env_remove("CHATGATE_DAILY_QUOTA")
        .env("TMPDIR", dir.path())
        .env("CHATGATE_BIND", "127.0.0.1:0")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let banner = dev_banner(&mut child);
    let base = banner_value(&banner, "gateway:").to_string();
    let path = banner_value(&banner, "secret file:")
        .split(" (")
        .next()
        .expect("path")
        .to_string();
    let path = std::path::PathBuf::from(path);
    assert!(path.starts_with(dir.path()), "{banner}");
    let mode = std::fs::metadata(&path).expect("secret file").permissions();
    assert_eq!(mode.mode() & 0o777, 0o600);
    let secret = std::fs::read_to_string(&path).expect("read secret");
    assert!(secret.len() >= 32);
    assert!(!banner.contains(&secret), "the secret is never printed");
    assert!(
        banner.contains(&format!(
            "CHATGATE_JWT_SECRET=\"$(cat {})\" chatgate token --sub alice",
            path.display()
        )),
        "{banner}"
    );
    assert!(banner.contains("user rate limit lifted"), "{banner}");
    assert!(banner.contains("daily quota lifted"), "{banner}");

    // A token minted with the file's secret is accepted.
    let minted = chatgate(
        &["token", "--sub", "alice"],
        &[("CHATGATE_JWT_SECRET", &secret)],
        dir.path(),
    );
    assert!(minted.status.success());
    let token = String::from_utf8_lossy(&minted.stdout).trim().to_string();
    let by_token = loadtest_json(&["--url", &base, "--token", &token, "--chats", "1"]);
    assert_eq!(by_token["chats"], 1, "{by_token}");
    // More chats than the default 30 per user per minute, from the one loadtest user.
    let by_secret = loadtest_json(&["--url", &base, "--secret", &secret, "--chats", "40"]);
    assert_eq!(by_secret["chats"], 40, "{by_secret}");
    assert_eq!(by_secret["errors"], serde_json::json!({}), "{by_secret}");

    crate::process::signal(child.id(), "-INT");
    assert_eq!(
        crate::process::wait_exit(&mut child, Duration::from_secs(15)).code(),
        Some(0)
    );
    assert!(!path.exists(), "the secret file is removed at exit");
}

#[test]
fn websocket_access_log_reports_the_connection_lifetime_not_a_latency() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = crate::process::serve_command(dir.path())
        .spawn()
        .expect("spawn serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let next_matching = |what: &str, matches: &dyn Fn(&str) -> bool| -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(_) => {}
                Err(err) => panic!("no log line with {what}: {err}"),
            }
        }
    };
    let listening = next_matching("the address", &|l| l.contains("listening on http://"));
    let addr = listening
        .split("listening on http://")
        .nth(1)
        .expect("address")
        .trim()
        .to_string();

    let mut plain = std::net::TcpStream::connect(&addr).expect("connect");
    plain
        .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
        .expect("request");
    let mut reply = String::new();
    plain.read_to_string(&mut reply).expect("reply");
    assert!(reply.contains(" 200 "), "{reply}");
    let http = next_matching("path=/healthz", &|l| {
        l.contains("event=http") && l.contains("path=/healthz")
    });
    assert!(http.contains(" ms="), "{http}");

    let minted = chatgate(
        &["token", "--sub", "logged"],
        &[("CHATGATE_JWT_SECRET", TEST_SECRET)],
        dir.path(),
    );
    let token = String::from_utf8_lossy(&minted.stdout).trim().to_string();
    let run = loadtest_json(&[
        "--url",
        &format!("http://{addr}"),
        "--token",
        &token,
        "--chats",
        "1",
    ]);
    assert_eq!(run["chats"], 1, "{run}");
    let ws = next_matching("path=/ws", &|l| {
        l.contains("event=http") && l.contains("path=/ws")
    });
    assert!(ws.contains("status=101"), "{ws}");
    assert!(ws.contains(" lifetime_ms="), "{ws}");
    assert!(!ws.contains(" ms="), "{ws}");

    crate::process::signal(child.id(), "-TERM");
    assert_eq!(
        crate::process::wait_exit(&mut child, Duration::from_secs(15)).code(),
        Some(0)
    );
}
