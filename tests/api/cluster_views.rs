//! The metrics views count every instance: `/admin/metrics`, each `/admin/ws` frame and
//! `/metrics` on any instance add up the whole cluster and list its instances; without Redis
//! the one instance is the cluster.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster_support::{require_redis, Cluster};
use crate::helpers::{eventually, run_chats, spawn_app_with, Backend};
use crate::tcp_proxy::TcpProxy;
use crate::ws_client::{connect_url, connect_with, ConnectOptions, Incoming, WsClient};

/// Opens a chat socket on instance `index` as `user` and runs `chats` echo chats on it; the
/// socket stays open (returned) so the instance holds one connection and one session.
async fn chat_on(cluster: &Cluster, index: usize, user: &str, chats: usize) -> WsClient {
    let token = cluster.user_token(user);
    let mut ws = connect_url(&cluster.ws_url(index, &token, ""), None)
        .await
        .unwrap_or_else(|status| panic!("upgrade on i{index}: {status}"));
    let session = ws.expect_json().await;
    assert_eq!(session["type"], "session", "{session}");
    for n in 0..chats {
        let id = format!("c{n}");
        ws.chat(&id, "echo", "hello cluster").await;
        assert!(ws.reply(&id).await.done.is_some(), "chat {n} on i{index}");
    }
    ws
}

fn instance_ids(report: &Value) -> BTreeSet<String> {
    report["instances"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn ids(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

/// Waits until instance `index`'s `/admin/metrics` satisfies `ready`; returns that report.
async fn metrics_when(
    cluster: &Cluster,
    index: usize,
    what: &str,
    deadline: Duration,
    ready: impl Fn(&Value) -> bool,
) -> Value {
    let admin = cluster.admin_token("ops");
    eventually(what, deadline, || {
        let admin = admin.clone();
        let ready = &ready;
        async move {
            let (status, report) = cluster.get(index, "/admin/metrics", &admin).await;
            assert_eq!(status, 200, "{report}");
            ready(&report).then_some(report)
        }
    })
    .await
}

/// What both instances' reports must show once each has the other's latest snapshot.
fn counts_both(report: &Value, requests: u64) -> bool {
    report["totals"]["minute"]["requests"] == requests && instance_ids(report) == ids(&["i0", "i1"])
}

fn assert_cluster_report(report: &Value, me: &str, peer: &str, requests: u64) {
    assert_eq!(report["totals"]["minute"]["requests"], requests, "{report}");
    assert_eq!(report["totals"]["day"]["requests"], requests);
    assert_eq!(report["models"]["echo"]["minute"]["requests"], requests);
    assert!(
        report["totals"]["minute"]["tokens_out"].as_u64() > Some(0),
        "{report}"
    );
    assert!(report["totals"]["minute"]["p95_latency_ms"].as_f64() > Some(0.0));
    assert_eq!(
        report["cluster"],
        serde_json::json!({"redis": "up", "instances": 2})
    );
    let instances = &report["instances"];
    assert_eq!(instances[me]["seen_ms_ago"], 0, "the answering instance");
    let seen = instances[peer]["seen_ms_ago"]
        .as_u64()
        .unwrap_or_else(|| panic!("seen_ms_ago of {peer}: {report}"));
    assert!(seen < 5_000, "{peer} seen {seen} ms ago");
    for id in [me, peer] {
        // Each instance holds one chat socket and its session.
        assert_eq!(instances[id]["hub"]["connections"], 1, "{id}: {report}");
        assert_eq!(instances[id]["sessions"]["active"], 1, "{id}: {report}");
        assert!(instances[id]["flusher"]["written"].is_u64(), "{report}");
    }
    assert_eq!(report["hub"]["connections"], 2, "summed: {report}");
    assert_eq!(report["sessions"]["active"], 2, "summed: {report}");
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn admin_metrics_and_feed_on_either_instance_count_both() {
    let cluster = Cluster::start(2, &[]);
    let _on_i0 = chat_on(&cluster, 0, "alice", 3).await;
    let _on_i1 = chat_on(&cluster, 1, "bob", 5).await;

    for (me, peer) in [(0, 1), (1, 0)] {
        let report = metrics_when(
            &cluster,
            me,
            "the report counts both instances' chats",
            Duration::from_secs(10),
            |r| counts_both(r, 8),
        )
        .await;
        assert_cluster_report(&report, &format!("i{me}"), &format!("i{peer}"), 8);
    }

    // The same numbers in the live feed, on each instance.
    let admin = cluster.admin_token("ops");
    for me in 0..2 {
        let url = cluster
            .ws_url(me, &admin, "")
            .replacen("/ws?", "/admin/ws?", 1);
        let mut feed = connect_url(&url, None).await.expect("feed upgrade");
        let deadline = Instant::now() + Duration::from_secs(10);
        let frame = loop {
            assert!(Instant::now() < deadline, "no frame counting both on i{me}");
            match feed.next().await {
                Incoming::Json(frame) if counts_both(&frame, 8) => break frame,
                Incoming::Json(_) => continue,
                Incoming::Close(code) => panic!("feed closed: {code:?}"),
            }
        };
        assert_eq!(frame["type"], "metrics");
        assert_cluster_report(&frame, &format!("i{me}"), &format!("i{}", 1 - me), 8);
        // This feed's own subscriber is in this instance's hub.
        assert_eq!(
            frame["instances"][format!("i{me}")]["hub"]["subscribers"],
            1
        );
    }
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn prometheus_labels_each_instance_and_adds_cluster_totals() {
    let cluster = Cluster::start(2, &[]);
    drop(chat_on(&cluster, 0, "alice", 2).await);
    drop(chat_on(&cluster, 1, "bob", 3).await);
    let admin = cluster.admin_token("ops");
    for (me, own) in [(0, 2), (1, 3)] {
        let expected = [
            format!(
                r#"chatgate_requests_total{{instance="i{me}",model="echo",outcome="ok"}} {own}"#
            ),
            r#"chatgate_cluster_requests_total{model="echo",outcome="ok"} 5"#.to_string(),
            "chatgate_cluster_instances 2".to_string(),
            r#"chatgate_cluster_redis{state="up"} 1"#.to_string(),
        ];
        let text = eventually(
            "both instances' chats in the cluster totals",
            Duration::from_secs(10),
            || {
                let url = format!("{}/metrics", cluster.base(me));
                let (client, admin, expected) = (cluster.client(), admin.clone(), &expected);
                async move {
                    let mut resp = client.get(url).bearer_auth(admin).send().await.ok()?;
                    assert_eq!(resp.status(), 200);
                    let text = String::from_utf8(resp.body().await.ok()?.to_vec()).ok()?;
                    expected
                        .iter()
                        .all(|line| text.lines().any(|l| l == line))
                        .then_some(text)
                }
            },
        )
        .await;
        let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
            .expect("valid exposition format");
        // Every per-instance series names this instance and only this one; cluster series
        // carry no instance label.
        for sample in &scrape.samples {
            let label = sample.labels.get("instance");
            if sample.metric.starts_with("chatgate_cluster_") {
                assert_eq!(label, None, "{}", sample.metric);
            } else {
                assert_eq!(label, Some(format!("i{me}").as_str()), "{}", sample.metric);
            }
        }
        assert!(scrape
            .samples
            .iter()
            .any(|s| s.metric == "chatgate_cluster_request_duration_seconds"));
    }
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn a_killed_instance_leaves_the_views_within_10_s() {
    let mut cluster = Cluster::start(2, &[]);
    drop(chat_on(&cluster, 0, "alice", 2).await);
    drop(chat_on(&cluster, 1, "bob", 4).await);
    metrics_when(
        &cluster,
        0,
        "i0 counts both",
        Duration::from_secs(10),
        |r| counts_both(r, 6),
    )
    .await;

    cluster.kill(1);
    let killed_at = Instant::now();
    let report = metrics_when(
        &cluster,
        0,
        "the killed instance leaves i0's view",
        Duration::from_secs(10),
        |r| instance_ids(r) == ids(&["i0"]),
    )
    .await;
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(
        report["cluster"],
        serde_json::json!({"redis": "up", "instances": 1})
    );
    // Its numbers left with it; what i0 served is still counted.
    assert_eq!(report["totals"]["minute"]["requests"], 2, "{report}");
}

/// `TEST_REDIS_URL` with its `host:port` replaced by a proxy the test can cut.
fn redis_behind_proxy() -> (TcpProxy, String) {
    let url = require_redis();
    let rest = url
        .split_once("://")
        .map(|(_, rest)| rest)
        .unwrap_or(&url)
        .to_string();
    let authority = rest.split('/').next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let target = std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("TEST_REDIS_URL needs host:port: {url}"));
    let proxy = TcpProxy::start(target);
    let via_proxy = url.replacen(host_port, &proxy.addr.to_string(), 1);
    (proxy, via_proxy)
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn while_redis_is_down_each_instance_reports_itself_and_says_down() {
    let (proxy, via_proxy) = redis_behind_proxy();
    let cluster = Cluster::start_with_redis(2, &via_proxy, &[]);
    drop(chat_on(&cluster, 0, "alice", 2).await);
    drop(chat_on(&cluster, 1, "bob", 3).await);
    metrics_when(
        &cluster,
        0,
        "i0 counts both",
        Duration::from_secs(10),
        |r| counts_both(r, 5),
    )
    .await;

    proxy.cut();
    let report = metrics_when(
        &cluster,
        0,
        "i0 reports Redis down",
        Duration::from_secs(10),
        |r| r["cluster"]["redis"] == "down",
    )
    .await;
    assert_eq!(instance_ids(&report), ids(&["i0"]), "{report}");
    assert_eq!(report["cluster"]["instances"], 1);
    assert_eq!(report["totals"]["minute"]["requests"], 2, "only its own");

    proxy.restore();
    let report = metrics_when(
        &cluster,
        0,
        "i0 sees the cluster again after Redis returns",
        Duration::from_secs(15),
        |r| r["cluster"]["redis"] == "up" && counts_both(r, 5),
    )
    .await;
    assert_eq!(report["cluster"]["instances"], 2);
}

#[actix_web::test]
async fn without_redis_the_views_hold_this_instance_and_redis_is_off() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.limits.user_rate_limit = 10_000).await;
    assert_eq!(run_chats(&app, 2, 3).await, 6);
    let me = app.state.settings.cluster.instance_id.clone();
    let admin = app.admin_token("ops");
    let (status, report) = app.get("/admin/metrics", Some(&admin)).await;
    assert_eq!(status, 200);
    assert_eq!(report["totals"]["minute"]["requests"], 6, "{report}");
    assert_eq!(instance_ids(&report), ids(&[me.as_str()]), "{report}");
    assert_eq!(
        report["cluster"],
        serde_json::json!({"redis": "off", "instances": 1})
    );
    let mine = &report["instances"][me.as_str()];
    assert_eq!(mine["seen_ms_ago"], 0);
    // The instance's own numbers are the top-level ones.
    for part in ["sessions", "flusher", "hub"] {
        assert_eq!(mine[part], report[part], "{part}: {report}");
    }

    let mut feed = connect_with(
        &app,
        ConnectOptions {
            token: Some(&admin),
            ..Default::default()
        }
        .at("/admin/ws"),
    )
    .await
    .expect("feed");
    match feed.next().await {
        Incoming::Json(frame) => {
            assert_eq!(frame["type"], "metrics");
            assert_eq!(
                frame["cluster"],
                serde_json::json!({"redis": "off", "instances": 1})
            );
            assert_eq!(instance_ids(&frame), ids(&[me.as_str()]));
            assert_eq!(frame["totals"]["minute"]["requests"], 6);
        }
        Incoming::Close(code) => panic!("feed closed: {code:?}"),
    }
}
