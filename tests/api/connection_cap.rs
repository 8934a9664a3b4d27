//! `CHATGATE_USER_MAX_CONNECTIONS`: open chat WebSockets per user. Past it the handshake gets
//! HTTP 429 before the upgrade, and the refused socket leaves no session row.

use std::time::Duration;

use chatgate::actors::db_flusher::Flush;
use futures_util::future::join_all;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{eventually, spawn_app, spawn_app_with, Backend, TestApp};
use crate::ws_client::{connect_with, ConnectOptions, WsClient};

/// The status line and headers a `GET /ws` upgrade request gets, read off a raw socket so the
/// headers of a refusal can be checked.
async fn raw_handshake(app: &TestApp, token: &str) -> (u16, Vec<(String, String)>) {
    let mut stream = tokio::net::TcpStream::connect(app.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET /ws?token={token} HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        app.addr
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("response within 10 s")
            .expect("read");
        assert!(read == 1, "connection closed mid-head: {head:?}");
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).expect("ascii head");
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

async fn try_open(app: &TestApp, user: &str) -> Result<WsClient, u16> {
    let token = app.user_token(user);
    let mut client = connect_with(
        app,
        ConnectOptions {
            token: Some(&token),
            ..Default::default()
        },
    )
    .await?;
    let session = client.expect_json().await;
    assert_eq!(session["type"], "session", "{session}");
    Ok(client)
}

async fn session_rows(app: &TestApp, user: &'static str) -> i64 {
    app.state
        .flusher
        .send(Flush)
        .await
        .expect("mailbox")
        .expect("flush");
    app.query(move |conn| {
        use chatgate::db::schema::sessions::dsl;
        use diesel::prelude::*;
        dsl::sessions
            .filter(dsl::user_id.eq(user))
            .count()
            .get_result(conn)
    })
    .await
}

#[actix_web::test]
async fn seventeenth_socket_of_a_user_gets_429_before_the_upgrade() {
    let app = spawn_app().await;
    let mut open: Vec<WsClient> = Vec::new();
    for _ in 0..16 {
        open.push(try_open(&app, "alice").await.expect("within the cap"));
    }
    let (status, headers) = raw_handshake(&app, &app.user_token("alice")).await;
    assert_eq!(status, 429, "{headers:?}");
    let retry_after = headers
        .iter()
        .find(|(k, _)| k == "retry-after")
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .expect("Retry-After in whole seconds");
    assert!(retry_after >= 1, "{retry_after}");
    assert_eq!(
        session_rows(&app, "alice").await,
        16,
        "a refused handshake writes no session row"
    );

    let bob = try_open(&app, "bob").await;
    assert!(bob.is_ok(), "another user is unaffected");

    open.remove(0).close().await;
    let replacement = eventually(
        "a socket slot freed by a close",
        Duration::from_secs(10),
        || async { try_open(&app, "alice").await.ok() },
    )
    .await;
    assert_eq!(
        try_open(&app, "alice").await.err(),
        Some(429),
        "the freed slot was taken once"
    );
    drop((replacement, open));
}

#[actix_web::test]
async fn concurrent_handshakes_cannot_pass_the_cap_together() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.limits.user_max_connections = 3).await;
    let attempts = join_all((0..12).map(|_| try_open(&app, "carol"))).await;
    let opened = attempts.iter().filter(|a| a.is_ok()).count();
    let refused: Vec<u16> = attempts
        .iter()
        .filter_map(|a| a.as_ref().err())
        .copied()
        .collect();
    assert_eq!(opened, 3, "refusals: {refused:?}");
    assert!(refused.iter().all(|s| *s == 429), "{refused:?}");
}

/// The handshake asks for a slot under the cap while it checks the user: a handshake refused
/// because the user is disabled must give its slot back, or refusals would fill the cap.
#[actix_web::test]
async fn handshakes_refused_for_a_disabled_user_hold_no_slot() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.limits.user_max_connections = 2).await;
    let set_disabled = |disabled: bool| {
        app.query(move |conn| {
            use chatgate::db::schema::users::dsl;
            use diesel::prelude::*;
            chatgate::db::queries::users::insert_user_if_missing(conn, "flip", 0)?;
            diesel::update(dsl::users.find("flip"))
                .set(dsl::disabled.eq(disabled))
                .execute(conn)
        })
    };
    set_disabled(true).await;
    for _ in 0..3 {
        assert_eq!(try_open(&app, "flip").await.err(), Some(403));
    }
    set_disabled(false).await;
    let first = try_open(&app, "flip").await.expect("first socket");
    let second = try_open(&app, "flip").await.expect("second socket");
    assert_eq!(
        try_open(&app, "flip").await.err(),
        Some(429),
        "the cap counts the two open sockets only"
    );
    drop((first, second));
}
