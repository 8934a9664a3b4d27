//! Cluster mode while Redis is away, end to end with real `chatgate serve` processes whose
//! Redis is reached through a [`TcpProxy`] the test cuts: Redis is a degraded mode, never an
//! outage. Chats go on over both transports, `/readyz` stays 200, the log says so once, and
//! the instance rejoins within 5 s of Redis answering again, without a restart; what
//! PostgreSQL holds is complete either way.

use std::time::{Duration, Instant};

use diesel::prelude::*;
use serde_json::json;

use crate::cluster_support::{require_redis, Cluster};
use crate::helpers::eventually;
use crate::tcp_proxy::redis_behind_proxy;
use crate::ws_client::{connect_url, WsClient};

/// The contract's bound on rejoining after Redis answers again.
const REJOIN_WITHIN: Duration = Duration::from_secs(5);
/// How long noticing an outage may take: the next heartbeat (1 s) plus its timeouts.
const NOTICED_WITHIN: Duration = Duration::from_secs(4);

const OUTAGE_WARNING: &str = "event=redis_down";
const REJOINED: &str = "event=redis_up";

/// One instance, `i0`, that reaches Redis at `redis_url` (a proxy); the fixture itself (key
/// clean-up, the test's own reads) uses Redis directly, so a test that fails mid-outage
/// still cleans up.
fn cluster_behind(redis_url: &str) -> Cluster {
    let mut cluster = Cluster::start_with_redis(0, &require_redis(), &[]);
    cluster.add_instance(&[("CHATGATE_REDIS_URL", redis_url)]);
    cluster
}

fn log_of(cluster: &Cluster, index: usize) -> Vec<String> {
    cluster.instances[index]
        .as_ref()
        .unwrap_or_else(|| panic!("instance {index} was killed"))
        .log_lines()
}

/// Lines of `log` (from line `from` on) that contain `needle`.
fn lines_with(log: &[String], from: usize, needle: &str) -> Vec<String> {
    log.iter()
        .skip(from)
        .filter(|line| line.contains(needle))
        .cloned()
        .collect()
}

fn warnings(log: &[String], from: usize) -> Vec<String> {
    lines_with(log, from, " WARN ")
}

async fn wait_for_log_line(cluster: &Cluster, index: usize, needle: &str, within: Duration) {
    eventually(
        &format!("instance {index} logs `{needle}`"),
        within,
        || async { (!lines_with(&log_of(cluster, index), 0, needle).is_empty()).then_some(()) },
    )
    .await;
}

/// The members of `<prefix>instances` with their last heartbeat (ms since the epoch), read
/// straight from Redis; `None` if Redis does not answer.
fn instances_in_redis(cluster: &Cluster) -> Option<Vec<(String, i64)>> {
    let client = redis::Client::open(require_redis().as_str()).ok()?;
    let mut conn = client
        .get_connection_with_timeout(Duration::from_secs(1))
        .ok()?;
    redis::cmd("ZRANGE")
        .arg(format!("{}instances", cluster.prefix))
        .arg(0)
        .arg(-1)
        .arg("WITHSCORES")
        .query(&mut conn)
        .ok()
}

fn heartbeat_of(cluster: &Cluster, instance: &str) -> Option<i64> {
    instances_in_redis(cluster)?
        .into_iter()
        .find(|(id, _)| id == instance)
        .map(|(_, seen)| seen)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Request rows the instances have written to PostgreSQL (one per admitted chat).
fn request_rows(cluster: &Cluster) -> i64 {
    use chatgate::db::schema::request_log;
    let mut pg = diesel::PgConnection::establish(&cluster.db.url).expect("connect to PostgreSQL");
    request_log::table
        .count()
        .get_result(&mut pg)
        .expect("count request_log")
}

/// Waits until exactly `chats` request rows are stored (the instances flush every 100 ms),
/// and fails if there are more.
async fn wait_for_request_rows(cluster: &Cluster, chats: i64) {
    let rows = eventually(
        &format!("{chats} request rows in PostgreSQL"),
        Duration::from_secs(10),
        || async {
            let rows = request_rows(cluster);
            (rows >= chats).then_some(rows)
        },
    )
    .await;
    assert_eq!(rows, chats, "one request row per chat served, no more");
}

async fn readyz(cluster: &Cluster, index: usize) -> u16 {
    cluster
        .client()
        .get(format!("{}/readyz", cluster.base(index)))
        .send()
        .await
        .expect("readyz")
        .status()
        .as_u16()
}

/// Opens a chat WebSocket on instance `index` as `user`.
async fn open_ws(cluster: &Cluster, index: usize, user: &str) -> WsClient {
    let token = cluster.user_token(user);
    let mut ws = connect_url(&cluster.ws_url(index, &token, ""), None)
        .await
        .unwrap_or_else(|status| panic!("upgrade refused with {status}"));
    let session = ws.expect_json().await;
    assert_eq!(session["type"], "session", "{session}");
    ws
}

/// One echo chat on `ws`; asserts it ends with `done`.
async fn ws_chat(ws: &mut WsClient, id: &str) {
    ws.chat(id, "echo", "still here").await;
    let reply = ws.reply(id).await;
    assert!(
        reply.done.is_some(),
        "chat {id} ended without done: {reply:?}"
    );
    assert_eq!(reply.text(), "still here");
}

/// One whole (non-streamed) chat over `POST /v1/chat/completions`; asserts its answer.
async fn http_chat(cluster: &Cluster, index: usize, user: &str) {
    let mut response = cluster
        .client()
        .post(format!("{}/v1/chat/completions", cluster.base(index)))
        .bearer_auth(cluster.user_token(user))
        .send_json(&json!({
            "model": "echo",
            "messages": [{"role": "user", "content": "still here"}],
        }))
        .await
        .expect("request");
    let status = response.status().as_u16();
    let body: serde_json::Value =
        serde_json::from_slice(&response.body().limit(1 << 20).await.expect("body"))
            .unwrap_or(serde_json::Value::Null);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["choices"][0]["message"]["content"], "still here",
        "{body}"
    );
}

/// Chats while Redis is away, as many clients would: `sockets` fresh WebSockets of different
/// users with `per_socket` chats each, all at once, plus `http` HTTP chats. Returns how many
/// chats that was (each one asserted to succeed).
async fn chat_burst(cluster: &Cluster, index: usize, sockets: usize, per_socket: usize) -> i64 {
    let users = (0..sockets).map(|n| async move {
        let mut ws = open_ws(cluster, index, &format!("burst-{n}")).await;
        for i in 0..per_socket {
            ws_chat(&mut ws, &format!("b{i}")).await;
        }
        ws.close().await;
        http_chat(cluster, index, &format!("burst-{n}")).await;
    });
    futures_util::future::join_all(users).await;
    (sockets * (per_socket + 1)) as i64
}

/// Everything a Redis outage must leave as it was, checked on instance `index` at once:
/// readiness, a chat over each transport, the admin API.
async fn serves_as_usual(cluster: &Cluster, index: usize, ws: &mut WsClient, chat_id: &str) {
    assert_eq!(readyz(cluster, index).await, 200, "/readyz stays 200");
    ws_chat(ws, chat_id).await;
    http_chat(cluster, index, "alice").await;
    redis_state(cluster, index).await;
}

/// `cluster.redis` of instance `index`'s `/admin/metrics` (which must answer 200).
async fn redis_state(cluster: &Cluster, index: usize) -> String {
    let (status, metrics) = cluster
        .get(index, "/admin/metrics", &cluster.admin_token("root"))
        .await;
    assert_eq!(status, 200, "{metrics}");
    metrics["cluster"]["redis"]
        .as_str()
        .unwrap_or_else(|| panic!("no cluster.redis in {metrics}"))
        .to_string()
}

/// (a) An instance whose Redis does not answer at startup starts, is ready and serves chats;
/// it joins the cluster once Redis answers, without a restart.
#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn an_instance_started_while_redis_is_unreachable_serves_chats_and_joins_later() {
    let (proxy, via_proxy) = redis_behind_proxy();
    proxy.cut();
    let cluster = cluster_behind(&via_proxy);

    let mut ws = open_ws(&cluster, 0, "alice").await;
    serves_as_usual(&cluster, 0, &mut ws, "c1").await;
    wait_for_log_line(&cluster, 0, OUTAGE_WARNING, NOTICED_WITHIN).await;
    assert_eq!(
        heartbeat_of(&cluster, "i0"),
        None,
        "not joined while cut off"
    );

    proxy.restore();
    let restored = Instant::now();
    wait_for_log_line(&cluster, 0, REJOINED, REJOIN_WITHIN).await;
    eventually("i0 registered in Redis", REJOIN_WITHIN, || async {
        heartbeat_of(&cluster, "i0")
    })
    .await;
    assert!(restored.elapsed() <= REJOIN_WITHIN + Duration::from_secs(1));
    serves_as_usual(&cluster, 0, &mut ws, "c2").await;

    let log = log_of(&cluster, 0);
    assert_eq!(
        lines_with(&log, 0, OUTAGE_WARNING).len(),
        1,
        "{}",
        log.join("\n")
    );
    assert_eq!(lines_with(&log, 0, REJOINED).len(), 1, "{}", log.join("\n"));
    wait_for_request_rows(&cluster, 4).await;
}

/// (b) + (c) Redis cut off from a running instance: it goes on serving on its own (both
/// transports, `/readyz` 200), logs one warning however many chats it serves, drops out of the
/// cluster (its peer evicts it after 5 s without a heartbeat), and rejoins within 5 s of Redis
/// answering again: it heartbeats, and evicts its peer once that is killed. Every chat is one
/// request row in PostgreSQL.
#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn a_redis_outage_is_a_degraded_mode_with_one_warning_and_a_rejoin_within_5_s() {
    let (proxy, via_proxy) = redis_behind_proxy();
    let mut cluster = Cluster::start_with_redis(0, &require_redis(), &[]);
    // i0 reaches Redis through the proxy; its peer i1 directly.
    cluster.add_instance(&[("CHATGATE_REDIS_URL", via_proxy.as_str())]);
    cluster.add_instance(&[]);
    eventually(
        "both instances heartbeat",
        Duration::from_secs(10),
        || async {
            let live = instances_in_redis(&cluster)?;
            (live.len() == 2).then_some(())
        },
    )
    .await;

    let mut chats = 0i64;
    let mut ws = open_ws(&cluster, 0, "alice").await;
    serves_as_usual(&cluster, 0, &mut ws, "before").await;
    chats += 2;

    let from = log_of(&cluster, 0).len();
    proxy.cut();
    wait_for_log_line(&cluster, 0, OUTAGE_WARNING, NOTICED_WITHIN).await;
    assert_eq!(redis_state(&cluster, 0).await, "down");

    // The outage goes on for longer than DEAD_AFTER, with chats all along: the socket opened
    // before it, new sockets, HTTP.
    let cut_at = Instant::now();
    let mut round = 0;
    let evicted = loop {
        round += 1;
        serves_as_usual(&cluster, 0, &mut ws, &format!("during-{round}")).await;
        chats += 2;
        chats += chat_burst(&cluster, 0, 8, 3).await;
        if heartbeat_of(&cluster, "i0").is_none() {
            break cut_at.elapsed();
        }
        assert!(
            cut_at.elapsed() < Duration::from_secs(12),
            "i0 still listed in Redis {:?} after the cut",
            cut_at.elapsed()
        );
    };
    assert!(
        evicted > Duration::from_secs(3),
        "evicted too early: {evicted:?}"
    );
    assert_eq!(readyz(&cluster, 1).await, 200);

    let log = log_of(&cluster, 0);
    let warned = warnings(&log, from);
    assert_eq!(
        warned.len(),
        1,
        "one warning for the whole outage, got:\n{}",
        warned.join("\n")
    );
    assert!(warned[0].contains(OUTAGE_WARNING), "{}", warned[0]);
    assert!(warned[0].contains("instance=i0"), "{}", warned[0]);

    proxy.restore();
    let restored_ms = now_ms();
    // Evicted above, so any entry now is a fresh heartbeat.
    eventually("i0 back in the cluster", REJOIN_WITHIN, || async {
        heartbeat_of(&cluster, "i0").filter(|&seen| {
            seen > restored_ms && !lines_with(&log_of(&cluster, 0), from, REJOINED).is_empty()
        })
    })
    .await;
    serves_as_usual(&cluster, 0, &mut ws, "after").await;
    chats += 2;
    assert_eq!(redis_state(&cluster, 0).await, "up");

    let log = log_of(&cluster, 0);
    assert_eq!(
        lines_with(&log, 0, OUTAGE_WARNING).len(),
        1,
        "{}",
        log.join("\n")
    );
    assert_eq!(lines_with(&log, 0, REJOINED).len(), 1, "{}", log.join("\n"));
    assert_eq!(
        warnings(&log, from).len(),
        1,
        "nothing else warned:\n{}",
        log.join("\n")
    );
    wait_for_request_rows(&cluster, chats).await;

    // Back in the cluster for real: now i0's heartbeat is the one that evicts a dead peer,
    // within 10 s of its death.
    cluster.kill(1);
    let killed = Instant::now();
    eventually(
        "the killed i1 leaves the cluster",
        Duration::from_secs(10),
        || async {
            let live = instances_in_redis(&cluster)?;
            let ids: Vec<&str> = live.iter().map(|(id, _)| id.as_str()).collect();
            (ids == ["i0"]).then_some(())
        },
    )
    .await;
    assert!(
        killed.elapsed() >= Duration::from_secs(4),
        "{:?}",
        killed.elapsed()
    );
}

/// A Redis that stops answering without closing its sockets (a dead host, a partition) is
/// noticed by the client's timeouts, and once a Redis answers at that address again the
/// instance gets there on a fresh connection: the old, half-open one never recovers.
#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn a_half_open_redis_connection_is_noticed_and_replaced() {
    let (proxy, via_proxy) = redis_behind_proxy();
    let cluster = cluster_behind(&via_proxy);
    eventually("i0 heartbeats", Duration::from_secs(10), || async {
        heartbeat_of(&cluster, "i0")
    })
    .await;
    let mut ws = open_ws(&cluster, 0, "alice").await;

    let from = log_of(&cluster, 0).len();
    proxy.stall();
    wait_for_log_line(&cluster, 0, OUTAGE_WARNING, NOTICED_WITHIN).await;
    serves_as_usual(&cluster, 0, &mut ws, "c1").await;
    let _ = chat_burst(&cluster, 0, 4, 2).await;

    proxy.restore();
    let restored_ms = now_ms();
    eventually(
        "i0 heartbeats again after the stall",
        REJOIN_WITHIN,
        || async {
            heartbeat_of(&cluster, "i0").filter(|&seen| {
                seen > restored_ms && !lines_with(&log_of(&cluster, 0), from, REJOINED).is_empty()
            })
        },
    )
    .await;
    serves_as_usual(&cluster, 0, &mut ws, "c2").await;

    let log = log_of(&cluster, 0);
    let warned = warnings(&log, from);
    assert_eq!(warned.len(), 1, "{}", log.join("\n"));
    assert!(warned[0].contains(OUTAGE_WARNING), "{}", warned[0]);
    assert_eq!(lines_with(&log, 0, REJOINED).len(), 1, "{}", log.join("\n"));
    wait_for_request_rows(&cluster, 4 + 4 * 3).await;
}

/// A Redis URL whose host does not exist is a Redis that is down, not a reason to stop.
#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn an_unresolvable_redis_host_does_not_stop_the_gateway() {
    let cluster = cluster_behind("redis://no-such-redis.invalid:6379");
    let mut ws = open_ws(&cluster, 0, "alice").await;
    serves_as_usual(&cluster, 0, &mut ws, "c1").await;
    wait_for_log_line(&cluster, 0, OUTAGE_WARNING, NOTICED_WITHIN).await;
    serves_as_usual(&cluster, 0, &mut ws, "c2").await;
    let log = log_of(&cluster, 0);
    assert_eq!(
        lines_with(&log, 0, OUTAGE_WARNING).len(),
        1,
        "{}",
        log.join("\n")
    );
    assert!(
        !log.iter().any(|line| line.contains(" ERROR ")),
        "{}",
        log.join("\n")
    );
    wait_for_request_rows(&cluster, 4).await;
}

/// Cluster mode on SQLite is refused before anything listens, saying why.
#[test]
fn a_redis_url_with_sqlite_is_a_configuration_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = crate::process::serve_command(dir.path())
        .env("CHATGATE_REDIS_URL", "redis://127.0.0.1:6379")
        .stderr(std::process::Stdio::piped())
        .output()
        .expect("run serve");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("CHATGATE_REDIS_URL"), "{stderr}");
    assert!(stderr.contains("PostgreSQL"), "{stderr}");
    assert!(!stderr.contains("listening on"), "{stderr}");
}
