//! Cluster mode: rate limits (user, admin, failed authentication) and the per-user connection
//! cap hold for all instances together, and disabling a user closes their sockets on every
//! instance. Two real `chatgate serve` processes on one PostgreSQL schema and one Redis.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::json;

use crate::cluster_support::Cluster;
use crate::helpers::eventually;
use crate::ws_client::{connect_url, WsClient};

/// One whole (non-streamed) chat on instance `index`; (status, `Retry-After`, error code).
async fn post_chat(
    cluster: &Cluster,
    index: usize,
    token: &str,
) -> (u16, Option<u64>, Option<String>) {
    let mut response = cluster
        .client()
        .post(format!("{}/v1/chat/completions", cluster.base(index)))
        .bearer_auth(token)
        .send_json(&json!({"model": "echo", "messages": [{"role": "user", "content": "hi"}]}))
        .await
        .expect("request");
    status_of(&mut response).await
}

async fn status_of<S>(response: &mut awc::ClientResponse<S>) -> (u16, Option<u64>, Option<String>)
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, actix_web::error::PayloadError>>
        + Unpin,
{
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body: serde_json::Value = response.json().limit(1 << 20).await.unwrap_or_default();
    let code = body["error"]["code"].as_str().map(str::to_string);
    (response.status().as_u16(), retry_after, code)
}

/// Statuses of requests sent at once, alternating between instance 0 and 1.
fn tally(results: &[(u16, Option<u64>, Option<String>)]) -> (usize, usize) {
    let ok = results.iter().filter(|r| r.0 == 200).count();
    let limited = results
        .iter()
        .filter(|r| r.0 == 429 && r.2.as_deref() == Some("rate_limited") && r.1.is_some())
        .count();
    (ok, limited)
}

fn redis_conn(cluster: &Cluster) -> redis::Connection {
    redis::Client::open(cluster.redis_url.as_str())
        .expect("redis url")
        .get_connection()
        .expect("redis")
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn user_rate_limit_holds_across_two_instances() {
    let cluster = Cluster::start(
        2,
        &[
            ("CHATGATE_USER_RATE_LIMIT", "5"),
            ("CHATGATE_USER_RATE_WINDOW_SECS", "300"),
        ],
    );
    let token = cluster.user_token("alice");
    // Six chats on each instance at once: per-instance limits would admit ten.
    let results = join_all((0..12).map(|i| post_chat(&cluster, i % 2, &token))).await;
    assert_eq!(tally(&results), (5, 7), "{results:?}");
    for (status, retry_after, _) in &results {
        if *status == 429 {
            let secs = retry_after.unwrap_or_default();
            assert!((1..=300).contains(&secs), "Retry-After {secs}");
        }
    }
    // Another user has a window of their own.
    let bob = cluster.user_token("bob");
    assert_eq!(post_chat(&cluster, 1, &bob).await.0, 200);

    // What Redis holds: the admitted chats, expiring with the window.
    let mut conn = redis_conn(&cluster);
    let log = format!("{}rl:users:alice", cluster.prefix);
    let held: i64 = redis::cmd("ZCARD")
        .arg(&log)
        .query(&mut conn)
        .expect("zcard");
    let ttl_ms: i64 = redis::cmd("PTTL").arg(&log).query(&mut conn).expect("pttl");
    assert_eq!(held, 5);
    assert!(ttl_ms > 0 && ttl_ms <= 300_000, "{ttl_ms}");
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn admin_rate_limit_holds_across_two_instances() {
    let cluster = Cluster::start(2, &[("CHATGATE_ADMIN_RATE_LIMIT", "4")]);
    let token = cluster.admin_token("root");
    let client = cluster.client();
    let results = join_all((0..10).map(|i| {
        let request = client
            .get(format!("{}/admin/users", cluster.base(i % 2)))
            .bearer_auth(&token);
        async move {
            let mut response = request.send().await.expect("request");
            status_of(&mut response).await
        }
    }))
    .await;
    assert_eq!(tally(&results), (4, 6), "{results:?}");
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn auth_failure_limit_holds_across_two_instances() {
    let cluster = Cluster::start(2, &[("CHATGATE_AUTH_FAILURE_LIMIT", "3")]);
    let client = cluster.client();
    let mut statuses = Vec::new();
    // One after another, so the first three are the failures the limit lets through.
    for i in 0..8 {
        let mut response = client
            .get(format!("{}/v1/models", cluster.base(i % 2)))
            .bearer_auth("not-a-token")
            .send()
            .await
            .expect("request");
        statuses.push(status_of(&mut response).await);
    }
    let codes: Vec<u16> = statuses.iter().map(|s| s.0).collect();
    assert_eq!(
        codes,
        [401, 401, 401, 429, 429, 429, 429, 429],
        "{statuses:?}"
    );
    assert!(statuses[3..]
        .iter()
        .all(|s| s.2.as_deref() == Some("rate_limited") && s.1.is_some()));
    // A valid token from the same address is never held back by it.
    let token = cluster.user_token("carol");
    for i in 0..2 {
        let (status, _) = cluster.get(i, "/v1/models", &token).await;
        assert_eq!(status, 200, "instance {i}");
    }
}

/// Opens a chat socket of `user` on instance `index`: `Err(status)` when refused.
async fn open_socket(cluster: &Cluster, index: usize, user: &str) -> Result<WsClient, u16> {
    let token = cluster.user_token(user);
    let mut client = connect_url(&cluster.ws_url(index, &token, ""), None).await?;
    let session = client.expect_json().await;
    assert_eq!(session["type"], "session", "{session}");
    Ok(client)
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn seventeenth_socket_across_two_instances_gets_429_before_the_upgrade() {
    let cluster = Cluster::start(2, &[]);
    let mut open = Vec::new();
    for i in 0..16 {
        open.push(
            open_socket(&cluster, i % 2, "dave")
                .await
                .unwrap_or_else(|status| panic!("socket {i} within the cap got {status}")),
        );
    }
    for index in 0..2 {
        assert_eq!(
            open_socket(&cluster, index, "dave").await.err(),
            Some(429),
            "the 17th socket on instance {index}"
        );
    }
    assert!(
        open_socket(&cluster, 0, "erin").await.is_ok(),
        "another user is unaffected"
    );

    // A socket closed on instance 1 frees a slot that instance 0 can give.
    open.remove(1).close().await;
    let replacement = eventually(
        "the slot freed on instance 1 is usable on instance 0",
        Duration::from_secs(10),
        || async { open_socket(&cluster, 0, "dave").await.ok() },
    )
    .await;
    assert_eq!(
        open_socket(&cluster, 1, "dave").await.err(),
        Some(429),
        "the freed slot was taken once"
    );
    drop((replacement, open));
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn a_killed_instances_sockets_stop_counting_within_10_s() {
    let mut cluster = Cluster::start(2, &[("CHATGATE_USER_MAX_CONNECTIONS", "3")]);
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(
            open_socket(&cluster, 1, "frank")
                .await
                .expect("within the cap"),
        );
    }
    assert_eq!(open_socket(&cluster, 0, "frank").await.err(), Some(429));

    cluster.kill(1);
    let killed_at = Instant::now();
    let reopened = eventually(
        "a socket on instance 0 after instance 1 died",
        Duration::from_secs(10),
        || async { open_socket(&cluster, 0, "frank").await.ok() },
    )
    .await;
    assert!(killed_at.elapsed() < Duration::from_secs(10));
    // The dead instance's three are gone, and the cap still holds for the live ones.
    let mut more = vec![reopened];
    for _ in 0..2 {
        more.push(
            open_socket(&cluster, 0, "frank")
                .await
                .expect("within the cap"),
        );
    }
    assert_eq!(open_socket(&cluster, 0, "frank").await.err(), Some(429));
    drop((held, more));
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn disabling_a_user_closes_their_sockets_on_both_instances_with_1008() {
    let cluster = Cluster::start(2, &[]);
    // Both instances listen on the bus once they heartbeat.
    let mut conn = redis_conn(&cluster);
    let instances = format!("{}instances", cluster.prefix);
    eventually("both instances heartbeat", Duration::from_secs(10), || {
        let live: Vec<String> = redis::cmd("ZRANGE")
            .arg(&instances)
            .arg(0)
            .arg(-1)
            .query(&mut conn)
            .unwrap_or_default();
        async move { (live.len() == 2).then_some(()) }
    })
    .await;

    let mut mallory = Vec::new();
    for i in 0..4 {
        mallory.push(open_socket(&cluster, i % 2, "mallory").await.expect("open"));
    }
    let mut bystander = open_socket(&cluster, 1, "trent").await.expect("open");

    let mut response = cluster
        .client()
        .put(format!("{}/admin/users/mallory", cluster.base(0)))
        .bearer_auth(cluster.admin_token("root"))
        .send_json(&json!({"disabled": true}))
        .await
        .expect("request");
    assert_eq!(response.status().as_u16(), 200);
    let _ = response.body().await;
    let deadline = Instant::now() + Duration::from_secs(1);
    for (i, socket) in mallory.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        assert_eq!(
            socket.expect_close(left).await,
            Some(1008),
            "socket {i} on instance {}",
            i % 2
        );
    }

    bystander.chat("c1", "echo", "still here").await;
    let reply = bystander.reply("c1").await;
    assert!(reply.done.is_some(), "{reply:?}");
}

/// Redis's address from `TEST_REDIS_URL` (`redis://[user:pass@]host:port[/db]`).
fn redis_addr(url: &str) -> std::net::SocketAddr {
    use std::net::ToSocketAddrs;
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let host = rest.split('/').next().unwrap_or(rest);
    host.to_socket_addrs()
        .expect("redis host")
        .next()
        .expect("an address")
}

/// Waits until both instances heartbeat again through Redis (they rejoined).
async fn both_heartbeat_since(cluster: &Cluster, since_ms: i64) {
    let mut conn = redis_conn(cluster);
    let instances = format!("{}instances", cluster.prefix);
    eventually("both instances rejoin", Duration::from_secs(10), || {
        let live: Vec<(String, i64)> = redis::cmd("ZRANGE")
            .arg(&instances)
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
            .query(&mut conn)
            .unwrap_or_default();
        let fresh = live.iter().filter(|(_, at)| *at > since_ms).count();
        async move { (fresh == 2).then_some(()) }
    })
    .await;
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn limits_are_per_instance_while_redis_is_down_and_shared_again_after() {
    let redis_url = crate::cluster_support::require_redis();
    let proxy = crate::tcp_proxy::TcpProxy::start(redis_addr(&redis_url));
    let cluster = Cluster::start_with_redis(
        2,
        &format!("redis://{}", proxy.addr),
        &[
            ("CHATGATE_USER_RATE_LIMIT", "3"),
            ("CHATGATE_USER_RATE_WINDOW_SECS", "300"),
            ("CHATGATE_USER_MAX_CONNECTIONS", "2"),
        ],
    );
    let token = cluster.user_token("grace");
    assert_eq!(post_chat(&cluster, 0, &token).await.0, 200, "Redis is up");

    proxy.cut();
    let cut_at = chrono::Utc::now().timestamp_millis();
    // Every chat is answered (never a 5xx), each instance holding its own window.
    let mut per_instance = [0usize; 2];
    for i in 0..12 {
        let started = Instant::now();
        let (status, _, code) = post_chat(&cluster, i % 2, &token).await;
        assert!(
            status == 200 || (status == 429 && code.as_deref() == Some("rate_limited")),
            "chat {i}: {status} {code:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "chat {i} waited on Redis"
        );
        if status == 200 {
            per_instance[i % 2] += 1;
        }
    }
    assert_eq!(
        per_instance,
        [3, 3],
        "per-instance windows while Redis is down"
    );
    // Sockets: the local cap of each instance.
    let mut sockets = Vec::new();
    for index in [0, 0, 1, 1] {
        sockets.push(
            open_socket(&cluster, index, "heidi")
                .await
                .expect("local cap"),
        );
    }
    assert_eq!(open_socket(&cluster, 0, "heidi").await.err(), Some(429));

    proxy.restore();
    both_heartbeat_since(&cluster, cut_at).await;
    // The sockets opened meanwhile are written back to Redis on rejoin.
    let mut conn = redis_conn(&cluster);
    let slots = format!("{}conns:heidi", cluster.prefix);
    eventually(
        "the slots opened meanwhile reach Redis",
        Duration::from_secs(5),
        || {
            let held: i64 = redis::cmd("SCARD")
                .arg(&slots)
                .query(&mut conn)
                .unwrap_or_default();
            async move { (held == 4).then_some(()) }
        },
    )
    .await;
    // And limits are shared again: a fresh user gets three chats over both instances.
    let ivan = cluster.user_token("ivan");
    let results = join_all((0..8).map(|i| post_chat(&cluster, i % 2, &ivan))).await;
    assert_eq!(tally(&results), (3, 5), "{results:?}");
    drop(sockets);
}
