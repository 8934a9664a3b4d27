//! Allowed origins in cluster mode: `PUT /admin/origins` on one instance reaches the other
//! instances' handshakes within a second, and a change an instance missed while it was cut
//! off from Redis reaches it when it rejoins.

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use serde_json::{json, Value};

use crate::cluster_support::{require_redis, Cluster};
use crate::helpers::eventually;
use crate::tcp_proxy::TcpProxy;
use crate::ws_client::connect_url;

const SETTING: (&str, &str) = ("CHATGATE_ALLOWED_ORIGINS", "https://old.test");

/// 101 when a chat WebSocket from a page at `origin` opens on instance `index`, else the
/// refusal's status.
async fn handshake_status(cluster: &Cluster, index: usize, origin: &str) -> u16 {
    let url = cluster.ws_url(index, &cluster.user_token("alice"), "");
    match connect_url(&url, Some(origin)).await {
        Ok(client) => {
            client.close().await;
            101
        }
        Err(status) => status,
    }
}

async fn put_origins(cluster: &Cluster, index: usize, origins: &[&str]) -> (u16, Value) {
    let mut response = cluster
        .client()
        .put(format!("{}/admin/origins", cluster.base(index)))
        .bearer_auth(cluster.admin_token("ops"))
        .send_json(&json!({ "origins": origins }))
        .await
        .expect("request");
    let body = response.body().await.expect("body");
    (
        response.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// Subscribers of instance `index`'s own bus channel, as Redis counts them. The bus
/// subscribes to the broadcast channel first, so 1 here means it hears broadcasts too.
fn bus_subscribers(cluster: &Cluster, index: usize) -> i64 {
    let client = redis::Client::open(cluster.redis_url.as_str()).expect("redis url");
    let mut conn = client.get_connection().expect("redis connection");
    let channel = format!("{}bus:to:i{index}", cluster.prefix);
    let counts: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(&channel)
        .query(&mut conn)
        .expect("PUBSUB NUMSUB");
    counts.first().map_or(0, |(_, n)| *n)
}

/// Waits until instance `index` listens on the bus, so a broadcast cannot slip past it.
async fn wait_listening(cluster: &Cluster, index: usize, listening: bool) {
    eventually(
        &format!("instance {index} listening on the bus: {listening}"),
        Duration::from_secs(10),
        || async { ((bus_subscribers(cluster, index) > 0) == listening).then_some(()) },
    )
    .await;
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn a_put_on_one_instance_reaches_the_others_handshakes_within_a_second() {
    let cluster = Cluster::start(2, &[SETTING]);
    wait_listening(&cluster, 1, true).await;
    for index in 0..2 {
        assert_eq!(
            handshake_status(&cluster, index, "https://old.test").await,
            101
        );
        assert_eq!(
            handshake_status(&cluster, index, "https://new.test").await,
            403
        );
    }

    let (status, body) = put_origins(&cluster, 0, &["https://new.test"]).await;
    assert_eq!(status, 200, "{body}");
    let put_answered = std::time::Instant::now();
    assert_eq!(handshake_status(&cluster, 0, "https://new.test").await, 101);
    eventually(
        "instance 1 permits the new origin",
        Duration::from_secs(1),
        || async { (handshake_status(&cluster, 1, "https://new.test").await == 101).then_some(()) },
    )
    .await;
    assert!(put_answered.elapsed() < Duration::from_secs(1));
    assert_eq!(handshake_status(&cluster, 1, "https://old.test").await, 403);
    assert_eq!(
        cluster
            .get(1, "/admin/origins", &cluster.admin_token("ops"))
            .await,
        (200, json!({"origins": ["https://new.test"]}))
    );

    // And back the other way: a refusal spreads as fast as a permission.
    let (status, body) = put_origins(&cluster, 1, &["https://old.test"]).await;
    assert_eq!(status, 200, "{body}");
    eventually(
        "instance 0 refuses the removed origin",
        Duration::from_secs(1),
        || async { (handshake_status(&cluster, 0, "https://new.test").await == 403).then_some(()) },
    )
    .await;
    assert_eq!(handshake_status(&cluster, 0, "https://old.test").await, 101);
}

/// `host:port` of a `redis://[user:pass@]host:port[/db]` URL, and where it resolves.
fn redis_host_port(url: &str) -> (String, SocketAddr) {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split('/').next().unwrap_or(rest);
    let host_port = authority
        .rsplit('@')
        .next()
        .unwrap_or(authority)
        .to_string();
    assert!(
        host_port.contains(':'),
        "TEST_REDIS_URL needs an explicit port: {url}"
    );
    let addr = host_port
        .to_socket_addrs()
        .expect("resolve TEST_REDIS_URL")
        .next()
        .expect("an address for TEST_REDIS_URL");
    (host_port, addr)
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn an_origins_change_missed_during_a_redis_outage_arrives_on_rejoin() {
    let redis_url = require_redis();
    let (host_port, target) = redis_host_port(&redis_url);
    let proxy = TcpProxy::start(target);
    let via_proxy = redis_url.replacen(&host_port, &proxy.addr.to_string(), 1);
    let mut cluster = Cluster::start(1, &[SETTING]);
    let cut_off = cluster.add_instance(&[("CHATGATE_REDIS_URL", &via_proxy)]);
    wait_listening(&cluster, cut_off, true).await;

    proxy.cut();
    wait_listening(&cluster, cut_off, false).await;
    let (status, body) = put_origins(&cluster, 0, &["https://new.test"]).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(handshake_status(&cluster, 0, "https://new.test").await, 101);
    assert_eq!(
        handshake_status(&cluster, cut_off, "https://new.test").await,
        403,
        "the notice cannot have reached the cut-off instance"
    );

    proxy.restore();
    // Rejoining takes up to a few heartbeats (the contract's 5 s); the periodic reload is
    // far later (30 s).
    eventually(
        "the cut-off instance permits the new origin after rejoining",
        Duration::from_secs(8),
        || async {
            (handshake_status(&cluster, cut_off, "https://new.test").await == 101).then_some(())
        },
    )
    .await;
    assert_eq!(
        handshake_status(&cluster, cut_off, "https://old.test").await,
        403
    );
}
