//! The live feed under a subscriber that stops reading. Its own test binary: it bounds the
//! process's RSS, which other tests running in parallel would otherwise inflate.

#[path = "api/helpers.rs"]
mod helpers;
#[path = "api/ws_client.rs"]
mod ws_client;

use std::time::{Duration, Instant};

use helpers::{run_chats, spawn_app_with, Backend, TestApp};
use ws_client::{connect_with, ConnectOptions, Incoming, WsClient};

async fn feed_client(app: &TestApp) -> WsClient {
    let admin = app.admin_token("ops");
    connect_with(
        app,
        ConnectOptions {
            token: Some(&admin),
            ..Default::default()
        }
        .at("/admin/ws"),
    )
    .await
    .expect("feed")
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[actix_web::test]
async fn slow_subscriber_is_dropped_and_never_delays_the_others() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.limits.user_rate_limit = 10_000;
        s.telemetry.feed_max_backlog_bytes = 16 * 1024;
        s.telemetry.feed_recent_requests = 1_000;
    })
    .await;
    // A busy gateway's frames (~50 KB): kernel socket buffers absorb the first few, then the
    // stalled client's backlog grows in our memory and the limit applies.
    run_chats(&app, 10, 40).await;
    let admin = app.admin_token("ops");
    // A raw socket with a tiny receive buffer that completes the handshake, then never reads.
    let stalled = stalled_feed_client(&app, &admin).await;
    let mut reader = feed_client(&app).await;
    let rss_before = rss_kib();
    let start = Instant::now();
    let mut arrivals = 0u32;
    let mut last = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        match reader.next_with_timeout(Duration::from_millis(2500)).await {
            Some(Incoming::Json(frame)) => {
                assert_eq!(frame["type"], "metrics");
                let gap = last.elapsed();
                assert!(
                    arrivals == 0 || gap < Duration::from_millis(2000),
                    "reader waited {gap:?} for a frame"
                );
                last = Instant::now();
                arrivals += 1;
            }
            Some(Incoming::Close(code)) => panic!("reader closed: {code:?}"),
            None => panic!("reader got no frame for 2.5 s"),
        }
    }
    assert!((19..=21).contains(&arrivals), "{arrivals} frames in 20 s");
    let (_, json) = app.get("/admin/metrics", Some(&admin)).await;
    assert_eq!(json["hub"]["subscribers_dropped"], 1, "{}", json["hub"]);
    assert_eq!(json["hub"]["subscribers"], 1);
    let growth = rss_kib().saturating_sub(rss_before);
    assert!(growth < 64 * 1024, "RSS grew by {growth} KiB");
    drop(stalled);
}

/// Opens `/admin/ws` over a raw TCP socket with a 4 KiB receive buffer and never reads after
/// the handshake. Async: the server's actors share this test's thread.
async fn stalled_feed_client(app: &TestApp, token: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(&app.addr.into()).expect("connect");
    socket.set_nonblocking(true).expect("nonblocking");
    let mut stream = tokio::net::TcpStream::from_std(socket.into()).expect("tokio stream");
    let request = format!(
        "GET /admin/ws?token={token} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        app.addr
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("handshake");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.expect("response");
    assert_eq!(&head[9..12], b"101", "upgrade accepted");
    stream
}
