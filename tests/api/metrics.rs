//! Usage metrics: counted right, persisted once, pushed live, exposed to Prometheus.

use std::time::{Duration, Instant};

use chatgate::db::queries::usage;

use crate::helpers::{
    eventually, require_postgres, run_chats, spawn_app_with, spawn_with_settings, test_settings,
    Backend, TestApp,
};
use crate::tcp_proxy::postgres_behind_proxy;
use crate::ws_client::{connect_with, ConnectOptions, Incoming, WsClient};

async fn stored_counts(app: &TestApp) -> (i64, i64) {
    app.query(|conn| {
        Ok((
            usage::count_requests(conn)?,
            usage::sum_rollup_requests(conn)?,
        ))
    })
    .await
}

#[actix_web::test]
async fn every_chat_is_persisted_exactly_once_after_shutdown() {
    every_chat_is_persisted_exactly_once_after_shutdown_on(Backend::Sqlite).await;
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn every_chat_is_persisted_exactly_once_after_shutdown_postgres() {
    require_postgres();
    every_chat_is_persisted_exactly_once_after_shutdown_on(Backend::Postgres).await;
}

async fn every_chat_is_persisted_exactly_once_after_shutdown_on(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.limits.user_rate_limit = 10_000;
        // Long enough that only the shutdown flush writes most rows.
        s.timers.flush_interval_ms = 60_000;
    })
    .await;
    assert_eq!(run_chats(&app, 10, 50).await, 500);
    // The same path SIGTERM takes (the CLI test checks the signal itself).
    app.shutdown.trigger();
    let result = tokio::time::timeout(Duration::from_secs(15), app.stopped).await;
    assert!(
        matches!(result, Ok(Ok(Ok(())))),
        "{backend:?}: clean shutdown"
    );
    let db = app.database.pool();
    let counts = db
        .run(|conn| {
            Ok((
                usage::count_requests(conn)?,
                usage::sum_rollup_requests(conn)?,
            ))
        })
        .await
        .expect("count");
    assert_eq!(
        counts,
        (500, 500),
        "{backend:?}: request rows, rollup requests"
    );
}

#[actix_web::test]
async fn prometheus_counter_matches_chats_served() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.limits.user_rate_limit = 10_000).await;
    assert_eq!(run_chats(&app, 3, 7).await, 21);
    let admin = app.admin_token("ops");
    // This instance's series carry its id; alone, the cluster's totals are its own.
    let own = format!(
        r#"chatgate_requests_total{{instance="{}",model="echo",outcome="ok"}} 21"#,
        app.state.settings.cluster.instance_id
    );
    let text = eventually(
        "the aggregator has every record",
        Duration::from_secs(5),
        || {
            let client = app.client();
            let url = app.url("/metrics");
            let admin = admin.clone();
            let own = own.clone();
            async move {
                let mut resp = client.get(url).bearer_auth(admin).send().await.ok()?;
                assert_eq!(resp.status(), 200);
                let body = resp.body().await.ok()?;
                let text = String::from_utf8(body.to_vec()).ok()?;
                (text.lines().any(|l| l == own)
                    && text.contains(
                        r#"chatgate_cluster_requests_total{model="echo",outcome="ok"} 21"#,
                    ))
                .then_some(text)
            }
        },
    )
    .await;
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("valid exposition format");
    let served: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "chatgate_requests_total" && s.labels.get("model") == Some("echo"))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(served, 21.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "chatgate_request_duration_seconds"),
        "histogram present"
    );

    let (status, json) = app.get("/admin/metrics", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(json["totals"]["minute"]["requests"], 21);
    assert_eq!(json["models"]["echo"]["day"]["requests"], 21);
    for key in [
        "requests",
        "errors",
        "avg_latency_ms",
        "p95_latency_ms",
        "p99_latency_ms",
        "tokens_in",
        "tokens_out",
    ] {
        assert!(json["totals"]["hour"].get(key).is_some(), "missing {key}");
    }
    for key in ["buffered", "written", "dropped", "retries", "last_error"] {
        assert!(json["flusher"].get(key).is_some(), "missing flusher.{key}");
    }
    for key in [
        "subscribers",
        "frames_sent",
        "frames_dropped",
        "subscribers_dropped",
    ] {
        assert!(json["hub"].get(key).is_some(), "missing hub.{key}");
    }
    assert_eq!(
        json["sessions"]["total"],
        json["sessions"]["active"].as_u64().unwrap_or(99)
            + json["sessions"]["inactive"].as_u64().unwrap_or(99)
    );
    assert_eq!(app.get("/metrics", Some(&app.user_token("u"))).await.0, 403);
}

#[actix_web::test]
async fn refusals_are_counted_apart_from_usage() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.limits.user_rate_limit = 1).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("a", "echo", "one").await;
    assert!(ws.reply("a").await.done.is_some());
    ws.chat("b", "echo", "two").await;
    assert_eq!(ws.reply("b").await.error_code(), Some("rate_limited"));
    let admin = app.admin_token("ops");
    let (_, json) = app.get("/admin/metrics", Some(&admin)).await;
    assert_eq!(json["rejected"]["rate_limited"], 1);
    assert_eq!(json["totals"]["minute"]["requests"], 1);
}

async fn feed_client(app: &TestApp) -> WsClient {
    let admin = app.admin_token("ops");
    let mut ws = connect_with(
        app,
        ConnectOptions {
            token: Some(&admin),
            ..Default::default()
        }
        .at("/admin/ws"),
    )
    .await
    .expect("feed");
    ws.auto_pong = true;
    ws
}

#[actix_web::test]
async fn live_feed_pushes_a_metrics_frame_every_second() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let mut feed = feed_client(&app).await;
    let mut arrivals = Vec::new();
    while arrivals.len() < 4 {
        match feed.next().await {
            Incoming::Json(frame) => {
                assert_eq!(frame["type"], "metrics");
                assert!(frame["totals"]["minute"].is_object());
                arrivals.push(Instant::now());
            }
            Incoming::Close(code) => panic!("feed closed: {code:?}"),
        }
    }
    for pair in arrivals.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(
            gap > Duration::from_millis(500) && gap < Duration::from_millis(1600),
            "gap {gap:?}"
        );
    }
    let user = app.user_token("u");
    assert_eq!(
        connect_with(
            &app,
            ConnectOptions {
                token: Some(&user),
                ..Default::default()
            }
            .at("/admin/ws")
        )
        .await
        .err(),
        Some(403)
    );
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn database_outage_degrades_chats_and_loses_no_usage() {
    let (database, proxy, via_proxy) = postgres_behind_proxy();
    let mut settings = test_settings(&via_proxy);
    settings.limits.user_rate_limit = 10_000;
    settings.timers.flush_interval_ms = 1_000;
    settings.database.connection_timeout_ms = 500;
    let app = spawn_with_settings(settings, database).await;
    let admin = app.admin_token("ops");

    assert_eq!(run_chats(&app, 4, 25).await, 100);
    proxy.cut();
    let cut_at = Instant::now();
    // During the cut: chats fail closed, the process keeps serving, readiness says so.
    let (mut ws_result, mut saw_unavailable) = (None, false);
    while cut_at.elapsed() < Duration::from_secs(5) {
        let (status, _) = app.get("/healthz", None).await;
        assert_eq!(status, 200);
        let token = app.user_token("during-cut");
        if ws_result.is_none() {
            ws_result = connect_with(
                &app,
                ConnectOptions {
                    token: Some(&token),
                    ..Default::default()
                },
            )
            .await
            .err();
        }
        let (ready, _) = app.get("/readyz", None).await;
        if ready == 503 {
            saw_unavailable = true;
        }
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_unavailable, "/readyz was 503 during the cut");
    assert_eq!(
        ws_result,
        Some(503),
        "a handshake needing the database is refused with 503"
    );
    let (_, during) = app.get("/admin/metrics", Some(&admin)).await;
    proxy.restore();

    eventually("/readyz is 200 again", Duration::from_secs(10), || async {
        (app.get("/readyz", None).await.0 == 200).then_some(())
    })
    .await;
    let flusher = eventually(
        "the flusher drains its buffer",
        Duration::from_secs(20),
        || async {
            let (_, json) = app.get("/admin/metrics", Some(&admin)).await;
            (json["flusher"]["buffered"] == 0).then_some(json["flusher"].clone())
        },
    )
    .await;
    assert_eq!(
        stored_counts(&app).await,
        (100, 100),
        "every chat stored exactly once"
    );
    assert!(
        flusher["retries"].as_u64().unwrap_or(0) > 0
            || during["flusher"]["retries"].as_u64().unwrap_or(0) > 0,
        "{flusher}"
    );
    assert_eq!(flusher["dropped"], 0);
}
