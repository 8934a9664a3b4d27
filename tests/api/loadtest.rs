//! `chatgate loadtest` against a running gateway: its numbers agree with the server's own.

use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{eventually, spawn_app_with, Backend, TestApp, TEST_SECRET};

const CONNECTIONS: u64 = 4;
const CHATS_PER_CONNECTION: u64 = 25;
const WORDS: u64 = 7;

async fn spawn_roomy_app() -> TestApp {
    spawn_app_with(Backend::Sqlite, |s| {
        s.limits.user_rate_limit = 1_000_000;
        s.limits.daily_quota = 1_000_000;
        // The test polls /metrics until the counter settles.
        s.limits.admin_rate_limit = 1_000_000;
        // One minted user holds all of a run's sockets unless `--users` spreads them.
        s.limits.user_max_connections = 1_000_000;
    })
    .await
}

/// Runs the binary's loadtest off the test's runtime (the app being driven lives on it).
async fn loadtest(app: &TestApp, extra: &[&str]) -> Value {
    loadtest_urls(&[app], extra).await
}

/// The same against several apps, one `--url` each.
async fn loadtest_urls(apps: &[&TestApp], extra: &[&str]) -> Value {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    cmd.arg("loadtest");
    for app in apps {
        cmd.args(["--url", &app.base_url]);
    }
    cmd.args([
        "--secret",
        TEST_SECRET,
        "--users",
        "2",
        "--connections",
        &CONNECTIONS.to_string(),
        "--chats",
        &CHATS_PER_CONNECTION.to_string(),
        "--words",
        &WORDS.to_string(),
        "--json",
    ])
    .args(extra);
    let output = actix_web::rt::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run chatgate loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "loadtest failed ({}): {stdout}\n{stderr}",
        output.status
    );
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        lines.len(),
        1,
        "exactly one JSON object on stdout: {stdout}"
    );
    serde_json::from_str(lines[0]).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// `chatgate_requests_total{model="echo",outcome="ok"}`, 0 before the first chat.
async fn ok_counter(app: &TestApp, admin: &str) -> f64 {
    let mut resp = app
        .client()
        .get(app.url("/metrics"))
        .bearer_auth(admin)
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(resp.status(), 200);
    let body = resp.body().await.expect("body");
    let text = String::from_utf8(body.to_vec()).expect("utf-8");
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("valid exposition format");
    scrape
        .samples
        .iter()
        .filter(|s| {
            s.metric == "chatgate_requests_total"
                && s.labels.get("model") == Some("echo")
                && s.labels.get("outcome") == Some("ok")
        })
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

/// The summary's own consistency, and that its chats are exactly the server's delta.
async fn check_against_server(app: &TestApp, admin: &str, before: f64, summary: &Value) {
    let chats = summary["chats"].as_u64().expect("chats");
    assert_eq!(chats, CONNECTIONS * CHATS_PER_CONNECTION, "{summary}");
    assert_eq!(
        summary["urls"],
        serde_json::json!([{"url": app.base_url, "connected": CONNECTIONS, "chats": chats}]),
        "{summary}"
    );
    assert_eq!(
        summary["deltas"].as_u64(),
        Some(chats * WORDS),
        "echo sends one delta per word: {summary}"
    );
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
    let latency = &summary["latency_ms"];
    let [p50, p90, p99, max] = ["p50", "p90", "p99", "max"].map(|k| {
        latency[k]
            .as_f64()
            .unwrap_or_else(|| panic!("{k}: {summary}"))
    });
    assert!(
        0.0 < p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "{summary}"
    );
    let secs = summary["duration_secs"].as_f64().expect("duration_secs");
    assert!(secs > 0.0, "{summary}");
    let rate = summary["chats_per_sec"].as_f64().expect("chats_per_sec");
    assert!(
        (rate - chats as f64 / secs).abs() <= 0.01 * rate + 0.01,
        "chats_per_sec is chats / duration_secs: {summary}"
    );
    assert!(summary["cpu_secs"].as_f64().is_some(), "{summary}");

    // The server records a reply just after sending its `done`: wait for it to land, then
    // the counter must have moved by exactly the client's count (never more).
    let expected = before + chats as f64;
    eventually(
        "the server's ok counter reaches the load test's chat count",
        Duration::from_secs(10),
        || async move { (ok_counter(app, admin).await == expected).then_some(()) },
    )
    .await;
}

#[actix_web::test]
async fn loadtest_chats_equal_the_servers_request_counter_delta() {
    let app = spawn_roomy_app().await;
    let admin = app.admin_token("ops");
    let before = ok_counter(&app, &admin).await;
    let summary = loadtest(&app, &[]).await;
    assert_eq!(
        summary["connected"].as_u64(),
        Some(CONNECTIONS),
        "{summary}"
    );
    check_against_server(&app, &admin, before, &summary).await;

    // A second run adds exactly its own count.
    let before = ok_counter(&app, &admin).await;
    let summary = loadtest(&app, &["--threads", "2"]).await;
    check_against_server(&app, &admin, before, &summary).await;
}

/// `--drop-rate`: replies cut mid-way are resumed on a new connection, each exactly once,
/// and the server counts every chat once.
#[actix_web::test]
async fn loadtest_drop_rate_resumes_every_dropped_reply_without_gaps() {
    let app = spawn_roomy_app().await;
    let admin = app.admin_token("ops");
    let before = ok_counter(&app, &admin).await;
    let summary = loadtest(&app, &["--drop-rate", "0.3"]).await;
    let resume = &summary["resume"];
    let dropped = resume["dropped"].as_u64().expect("dropped");
    assert!(dropped > 0, "{summary}");
    assert_eq!(resume["resumed"].as_u64(), Some(dropped), "{summary}");
    for field in ["lost", "gaps", "duplicates"] {
        assert_eq!(resume[field].as_u64(), Some(0), "{field}: {summary}");
    }
    let reconnect_max = resume["reconnect_ms"]["max"]
        .as_f64()
        .expect("reconnect_ms");
    assert!(reconnect_max > 0.0, "{summary}");
    assert_eq!(
        summary["chats"].as_u64(),
        Some(CONNECTIONS * CHATS_PER_CONNECTION),
        "{summary}"
    );
    check_against_server(&app, &admin, before, &summary).await;
}

#[actix_web::test]
async fn loadtest_spreads_its_connections_over_every_url_in_turn() {
    let apps = [spawn_roomy_app().await, spawn_roomy_app().await];
    // One secret for both apps: one admin token reads both.
    let admin = apps[0].admin_token("ops");
    let admin = admin.as_str();
    let before = [
        ok_counter(&apps[0], admin).await,
        ok_counter(&apps[1], admin).await,
    ];
    for extra in [&[][..], &["--openai"][..]] {
        let before_run = [
            ok_counter(&apps[0], admin).await,
            ok_counter(&apps[1], admin).await,
        ];
        let summary = loadtest_urls(&[&apps[0], &apps[1]], extra).await;
        let chats = summary["chats"].as_u64().expect("chats");
        assert_eq!(chats, CONNECTIONS * CHATS_PER_CONNECTION, "{summary}");
        assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
        // Round-robin: connections 0 and 2 on the first URL, 1 and 3 on the second.
        let half = CONNECTIONS / 2;
        let per_url = half * CHATS_PER_CONNECTION;
        assert_eq!(
            summary["urls"],
            serde_json::json!([
                {"url": apps[0].base_url, "connected": half, "chats": per_url},
                {"url": apps[1].base_url, "connected": half, "chats": per_url},
            ]),
            "{summary}"
        );
        // Each server served exactly its half, by its own count.
        for (app, before) in apps.iter().zip(before_run) {
            let expected = before + per_url as f64;
            eventually(
                "each server's ok counter grows by its share",
                Duration::from_secs(10),
                || async move { (ok_counter(app, admin).await == expected).then_some(()) },
            )
            .await;
        }
    }
    let after = [
        ok_counter(&apps[0], admin).await,
        ok_counter(&apps[1], admin).await,
    ];
    assert_eq!(after[0] - before[0], after[1] - before[1], "an even spread");
}

#[actix_web::test]
async fn loadtest_openai_chats_equal_the_servers_request_counter_delta() {
    let app = spawn_roomy_app().await;
    let probe = app
        .client()
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(app.user_token("probe"))
        // No messages: refused (400) where the route exists, so the probe is never usage.
        .send_json(&serde_json::json!({}))
        .await
        .expect("POST /v1/chat/completions");
    assert_eq!(probe.status(), 400, "the probe without messages is refused");
    let admin = app.admin_token("ops");
    let before = ok_counter(&app, &admin).await;
    let summary = loadtest(&app, &["--openai"]).await;
    assert_eq!(summary["mode"], "openai", "{summary}");
    check_against_server(&app, &admin, before, &summary).await;
}

#[actix_web::test]
async fn loadtest_idle_holds_every_connection_open() {
    let app = spawn_roomy_app().await;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    cmd.args([
        "loadtest",
        "--url",
        &app.base_url,
        "--secret",
        TEST_SECRET,
        "--connections",
        "20",
        "--idle",
        "--duration",
        "0.5",
        "--json",
    ]);
    let output = actix_web::rt::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run chatgate loadtest");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    let summary: Value = serde_json::from_str(stdout.trim()).expect("one JSON object");
    assert_eq!(summary["open_at_end"].as_u64(), Some(20), "{summary}");
    assert_eq!(summary["chats"].as_u64(), Some(0), "{summary}");
    assert_eq!(summary["errors"], serde_json::json!({}), "{summary}");
}

#[actix_web::test]
async fn loadtest_with_a_bad_token_reports_the_refusal_and_fails() {
    let app = spawn_roomy_app().await;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_chatgate"));
    cmd.args([
        "loadtest",
        "--url",
        &app.base_url,
        "--token",
        "not-a-jwt",
        "--connections",
        "2",
        "--chats",
        "1",
        "--json",
    ]);
    let output = actix_web::rt::task::spawn_blocking(move || cmd.output())
        .await
        .expect("join")
        .expect("run chatgate loadtest");
    assert!(!output.status.success(), "nothing succeeded: exit non-zero");
    let summary: Value =
        serde_json::from_str(String::from_utf8_lossy(&output.stdout).trim()).expect("JSON");
    assert_eq!(
        summary["errors"]["handshake_401"].as_u64(),
        Some(2),
        "{summary}"
    );
    assert_eq!(summary["chats"].as_u64(), Some(0), "{summary}");
}
