//! A chat client that stops reading freezes its connection's actor; the server still closes
//! its socket and ends its session in time: by itself (client timeout), when an admin ends
//! the session, and when the user is disabled.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::helpers::{eventually, spawn_app_with, Backend, TestApp};
use crate::shutdown::{server_send_queue, stalled_chatter};
use crate::ws_client::WsClient;

/// The state of the server's side of the connection to `client_port`, as /proc/net/tcp
/// names it (`01` established); `None` once the kernel has forgotten it.
fn server_socket_state(server_port: u16, client_port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
    let port_of = |field: &str| {
        field
            .rsplit(':')
            .next()
            .and_then(|p| u16::from_str_radix(p, 16).ok())
    };
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
        (port_of(local)? == server_port && port_of(remote)? == client_port)
            .then(|| state.to_string())
    })
}

async fn session_stats(app: &TestApp, admin: &str) -> Value {
    let (status, body) = app.get("/admin/sessions/stats", Some(admin)).await;
    assert_eq!(status, 200, "{body}");
    body
}

/// A stalled client whose session is open and whose server socket is backed up.
pub(crate) async fn frozen_client(
    app: &TestApp,
    user: &str,
) -> (tokio::net::TcpStream, u16, Instant) {
    let admin = app.admin_token("ops");
    let (stream, port) = stalled_chatter(&app.addr.to_string(), &app.user_token(user)).await;
    let stopped_reading = Instant::now();
    eventually(
        "the stalled session is open",
        Duration::from_secs(10),
        || async { (session_stats(app, &admin).await["active"] == 1).then_some(()) },
    )
    .await;
    eventually(
        "the server's send queue to the stalled client fills",
        Duration::from_secs(10),
        || async { (server_send_queue(app.addr.port(), port) >= 64 * 1024).then_some(()) },
    )
    .await;
    (stream, port, stopped_reading)
}

/// The watchdog cuts a socket whose actor stopped (or was told to close) about a second
/// later, on its half-second tick; `within` leaves room for a loaded machine on top.
async fn wait_socket_closed(app: &TestApp, client_port: u16, within: Duration) {
    eventually("the server closes the socket", within, || async {
        (server_socket_state(app.addr.port(), client_port).as_deref() != Some("01")).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn a_client_that_stops_reading_loses_its_socket_and_session_within_the_timeouts() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.timers.heartbeat_secs = 1;
        s.timers.client_timeout_secs = 2;
    })
    .await;
    let admin = app.admin_token("ops");
    let (_stream, port, stopped_reading) = frozen_client(&app, "stalled").await;
    // Contract: client timeout + heartbeat + 2 s after the client stopped reading; a little
    // more for polling and a loaded machine.
    eventually(
        "the stalled session ends",
        Duration::from_secs(8),
        || async { (session_stats(&app, &admin).await["active"] == 0).then_some(()) },
    )
    .await;
    let took = stopped_reading.elapsed();
    assert!(
        took < Duration::from_millis(5_500),
        "the session ended {took:?} after the client stopped reading"
    );
    wait_socket_closed(&app, port, Duration::from_secs(5)).await;
}

#[actix_web::test]
async fn an_admin_ending_a_frozen_session_closes_its_socket() {
    // Default timers (30 s): only the admin action can close the socket within the test.
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let admin = app.admin_token("ops");
    let (_stream, port, _) = frozen_client(&app, "stalled").await;
    let (_, page) = app.get("/admin/sessions?state=active", Some(&admin)).await;
    let id = page["items"][0]["id"]
        .as_str()
        .expect("session id")
        .to_string();
    let resp = app
        .client()
        .delete(app.url(&format!("/admin/sessions/{id}")))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("delete");
    assert_eq!(resp.status(), 204);
    wait_socket_closed(&app, port, Duration::from_secs(4)).await;
    assert_eq!(session_stats(&app, &admin).await["active"], 0);
}

#[actix_web::test]
async fn disabling_a_user_closes_their_frozen_socket_and_ends_the_session() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let admin = app.admin_token("ops");
    let (_stream, port, _) = frozen_client(&app, "stalled").await;
    let resp = app
        .client()
        .put(app.url("/admin/users/stalled"))
        .bearer_auth(&admin)
        .send_json(&json!({"daily_limit": 10, "disabled": true}))
        .await
        .expect("disable");
    assert_eq!(resp.status(), 200);
    eventually(
        "the disabled user's session ends",
        Duration::from_secs(4),
        || async { (session_stats(&app, &admin).await["active"] == 0).then_some(()) },
    )
    .await;
    wait_socket_closed(&app, port, Duration::from_secs(5)).await;
}

#[actix_web::test]
async fn a_client_that_does_not_answer_pings_is_closed_with_1008() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.timers.heartbeat_secs = 1;
        s.timers.client_timeout_secs = 2;
    })
    .await;
    let (mut ws, _) = WsClient::open(&app, "quiet").await;
    ws.auto_pong = false;
    assert_eq!(ws.expect_close(Duration::from_secs(6)).await, Some(1008));
}
