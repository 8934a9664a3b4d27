//! SIGTERM on the real binary: every streaming reply ends with `unavailable`, every socket
//! closes with 1001, usage is all written, and a client that stopped reading does not hold
//! the process past its deadline.

use std::time::{Duration, Instant};

use chatgate::auth::{JwtKeys, Role};
use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::TEST_SECRET;
use crate::process::ServerProcess;
use crate::ws_client::{connect_url, Incoming, WsClient};

const SLOW_MODEL: &str = "[[models]]\nname = \"slow\"\nprovider = \"echo\"\ndelay_ms = 50\n";

fn token(user: &str) -> String {
    JwtKeys::new(TEST_SECRET.as_bytes())
        .mint(user, Role::User, 600)
        .expect("mint")
}

fn count_rows(db: &std::path::Path) -> (i64, i64) {
    use chatgate::db::queries::usage;
    let pool = chatgate::db::DbPool::new(
        &chatgate::db::DatabaseUrl::parse(db.to_str().expect("utf8")),
        &chatgate::db::PoolSettings {
            max_size: 1,
            connection_timeout: Duration::from_secs(5),
            retry: Default::default(),
        },
    );
    let mut conn = pool.checkout().expect("open the database after exit");
    (
        usage::count_requests(&mut conn).expect("count"),
        usage::sum_rollup_requests(&mut conn).expect("sum"),
    )
}

#[actix_web::test]
async fn sigterm_ends_two_hundred_running_replies_cleanly_and_keeps_their_usage() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("chatgate.toml");
    std::fs::write(&config, SLOW_MODEL).expect("config");
    let config = config.to_str().expect("utf8").to_string();
    let mut server = ServerProcess::start(
        dir.path(),
        &[
            ("CHATGATE_CONFIG", &config),
            ("CHATGATE_USER_RATE_LIMIT", "100000"),
            ("CHATGATE_SHUTDOWN_TIMEOUT_SECS", "5"),
            ("RUST_LOG", "warn,chatgate::startup=info"),
        ],
    );
    let words: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    let content = words.join(" ");
    // 200 connections, each with a reply under way (first delta seen).
    let mut clients = join_all((0..200).map(|i| {
        let url = format!("ws://{}/ws?token={}", server.addr, token(&format!("u{i}")));
        let content = content.clone();
        async move {
            let mut ws = connect_url(&url, None).await.expect("upgrade");
            assert_eq!(ws.expect_json().await["type"], "session");
            ws.send_json(json!({"type":"chat","id":"r","model":"slow","content":content}))
                .await;
            assert_eq!(ws.expect_json().await["type"], "delta");
            ws
        }
    }))
    .await;

    server.signal("-TERM");
    let signalled = Instant::now();
    let outcomes = join_all(clients.iter_mut().map(|ws: &mut WsClient| async move {
        let mut saw_unavailable = false;
        loop {
            match ws.next().await {
                Incoming::Json(frame) if frame["type"] == "delta" => {}
                Incoming::Json(frame) => {
                    assert_eq!(frame["type"], "error", "{frame}");
                    assert_eq!(frame["code"], "unavailable", "{frame}");
                    assert_eq!(frame["id"], "r");
                    saw_unavailable = true;
                }
                Incoming::Close(code) => return (saw_unavailable, code),
            }
        }
    }))
    .await;
    for (i, (saw_unavailable, code)) in outcomes.iter().enumerate() {
        assert!(
            saw_unavailable,
            "client {i}: no unavailable error before the close"
        );
        assert_eq!(*code, Some(1001), "client {i}");
    }
    let status = server.wait_exit(Duration::from_secs(8));
    assert_eq!(status.code(), Some(0));
    assert!(
        signalled.elapsed() < Duration::from_secs(6),
        "exit took {:?}",
        signalled.elapsed()
    );
    // One request row per reply cut by the shutdown, and the rollups agree.
    assert_eq!(count_rows(&dir.path().join("serve.db")), (200, 200));
}

/// A raw client that sends a chat whose reply it never reads, with a tiny receive window,
/// so the server's socket and the connection's actor stall.
pub(crate) async fn stalled_chatter(addr: &str, token: &str) -> (tokio::net::TcpStream, u16) {
    use actix_codec::Encoder;
    use actix_http::ws::{Codec, Message};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let target: std::net::SocketAddr = addr.parse().expect("addr");
    socket.connect(&target.into()).expect("connect");
    socket.set_nonblocking(true).expect("nonblocking");
    let mut stream = tokio::net::TcpStream::from_std(socket.into()).expect("stream");
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("handshake");
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await.expect("response");
    assert_eq!(&head[9..12], b"101");
    let mut frames = actix_web::web::BytesMut::new();
    let mut codec = Codec::new().client_mode();
    // ~1 MB of reply: far more than the socket buffers hold, well under the 4 MiB at which
    // the server would cut the client off itself, so the connection is stalled, not closed.
    let content = "x ".repeat(25_000);
    let chat = json!({"type":"chat","id":"s0","model":"echo","content":content}).to_string();
    codec
        .encode(Message::Text(chat.into()), &mut frames)
        .expect("encode");
    stream.write_all(&frames).await.expect("send chats");
    let local_port = stream.local_addr().expect("local addr").port();
    (stream, local_port)
}

/// Bytes the kernel holds unsent on the server's side of the connection to `client_port`
/// (`tx_queue` in /proc/net/tcp): how far a non-reading client has backed the server up.
pub(crate) fn server_send_queue(server_port: u16, client_port: u16) -> u64 {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port_of = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, remote, queues) = (fields.get(1)?, fields.get(2)?, fields.get(4)?);
            (port_of(local)? == server_port && port_of(remote)? == client_port)
                .then(|| u64::from_str_radix(queues.split(':').next()?, 16).ok())?
        })
        .next()
        .unwrap_or(0)
}

#[actix_web::test]
async fn a_client_that_stopped_reading_does_not_hold_shutdown_past_the_deadline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = ServerProcess::start(
        dir.path(),
        &[
            ("CHATGATE_USER_RATE_LIMIT", "100000"),
            ("CHATGATE_SHUTDOWN_TIMEOUT_SECS", "3"),
            ("RUST_LOG", "warn,chatgate::startup=info"),
        ],
    );
    let (stalled, stalled_port) = stalled_chatter(&server.addr, &token("stalled")).await;
    let server_port: u16 = server
        .addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    // A healthy client alongside: it still gets its close.
    let mut healthy = connect_url(
        &format!("ws://{}/ws?token={}", server.addr, token("ok")),
        None,
    )
    .await
    .expect("upgrade");
    assert_eq!(healthy.expect_json().await["type"], "session");
    // Wait until the stalled client's reply is under way (its chat is admitted and counted).
    let admin = JwtKeys::new(TEST_SECRET.as_bytes())
        .mint("ops", Role::Admin, 600)
        .expect("mint");
    let client = awc::Client::default();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut resp = client
            .get(format!("http://{}/admin/sessions/stats", server.addr))
            .bearer_auth(&admin)
            .send()
            .await
            .expect("stats");
        let stats: serde_json::Value = resp.json().await.expect("json");
        if stats["active"] == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both sessions never became active: {stats}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    // The stalled client's reply has backed up the server's socket (verified, not assumed).
    let deadline = Instant::now() + Duration::from_secs(10);
    while server_send_queue(server_port, stalled_port) < 64 * 1024 {
        assert!(
            Instant::now() < deadline,
            "the server's send queue to the stalled client never filled"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
    healthy.send_json(json!({"type":"ping"})).await;
    assert_eq!(healthy.expect_json().await["type"], "pong");
    server.signal("-TERM");
    let signalled = Instant::now();
    assert_eq!(
        healthy.expect_close(Duration::from_secs(5)).await,
        Some(1001)
    );
    let status = server.wait_exit(Duration::from_secs(8));
    let took = signalled.elapsed();
    assert_eq!(status.code(), Some(0));
    // The allowance over the 3 s deadline covers process exit on a loaded 2-core machine; it
    // is tight enough to catch actix's own 3 s drain stacking on top of ours (5.3 s, a bug
    // this test found).
    assert!(
        took < Duration::from_millis(4_500),
        "shutdown took {took:?} with a 3 s deadline"
    );
    // The stalled client's chat passed admission before the shutdown: it is in the usage.
    assert_eq!(count_rows(&dir.path().join("serve.db")), (1, 1));
    drop(stalled);
}
