//! Chats over WebSocket through an `openai` model whose upstream is the scripted mock:
//! deadlines, retries, failure classes, cancellation reaching the upstream connection.

use std::time::{Duration, Instant};

use chatgate::config::ModelSettings;
use serde_json::json;

use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::mock_upstream::{strings, MockUpstream, Step};
use crate::ws_client::WsClient;

async fn app_with(mock: &MockUpstream, tune: impl FnOnce(&mut ModelSettings)) -> TestApp {
    let mut model = mock.model("mock");
    tune(&mut model);
    spawn_app_with(Backend::Sqlite, move |s| s.models.push(model)).await
}

#[actix_web::test]
async fn ws_chat_relays_the_upstream_deltas_and_usage() {
    let mock = MockUpstream::start(Step::reply(&["Hel", "lo", " wor", "ld"], (7, 4)));
    let app = app_with(&mock, |_| {}).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "mock", "say hello").await;
    let reply = ws.reply("c1").await;
    assert_eq!(reply.deltas, ["Hel", "lo", " wor", "ld"], "{reply:?}");
    let done = reply.done.expect("done");
    assert_eq!(
        done["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 4})
    );

    let sent = &mock.bodies()[0];
    assert_eq!(sent["model"], "mock-upstream");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["stream_options"], json!({"include_usage": true}));
    assert_eq!(
        sent["messages"],
        json!([{"role": "user", "content": "say hello"}])
    );
    assert_eq!(
        mock.authorization(),
        [Some("Bearer sk-mock-key".to_string())]
    );

    // The next chat sends the history, the finished reply included.
    ws.chat("c2", "mock", "again").await;
    assert!(ws.reply("c2").await.done.is_some());
    assert_eq!(
        mock.bodies()[1]["messages"],
        json!([
            {"role": "user", "content": "say hello"},
            {"role": "assistant", "content": "Hello world"},
            {"role": "user", "content": "again"},
        ])
    );
}

#[actix_web::test]
async fn silent_upstream_times_out_at_the_deadline_and_its_connection_is_closed() {
    let mock = MockUpstream::start(Step::HangBeforeFirstByte);
    let app = app_with(&mock, |m| m.timeout_secs = Some(2)).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    let sent = Instant::now();
    ws.chat("c1", "mock", "hello?").await;
    mock.wait_for_open_reply().await;
    let reply = ws.reply("c1").await;
    let elapsed = sent.elapsed();
    assert_eq!(reply.error_code(), Some("upstream_timeout"), "{reply:?}");
    assert!(
        elapsed >= Duration::from_secs(2) && elapsed < Duration::from_millis(2500),
        "timed out after {elapsed:?}"
    );
    mock.wait_until_closed(Duration::from_secs(1)).await;
    assert_eq!(mock.requests(), 1, "a timeout is not retried");
}

#[actix_web::test]
async fn upstream_stalling_mid_reply_times_out_after_its_deltas() {
    let mock = MockUpstream::start(Step::HangAfter(strings(&["half", " a"])));
    let app = app_with(&mock, |m| m.timeout_secs = Some(1)).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "mock", "hi").await;
    let reply = ws.reply("c1").await;
    assert_eq!(reply.deltas, ["half", " a"], "{reply:?}");
    assert_eq!(reply.error_code(), Some("upstream_timeout"));
    mock.wait_until_closed(Duration::from_secs(1)).await;
}

#[actix_web::test]
async fn first_byte_timeout_ends_the_attempt_early() {
    let mock = MockUpstream::start(Step::HangBeforeFirstByte);
    let app = app_with(&mock, |m| m.first_byte_timeout_ms = 300).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    let sent = Instant::now();
    ws.chat("c1", "mock", "hello?").await;
    let reply = ws.reply("c1").await;
    assert_eq!(reply.error_code(), Some("upstream_timeout"), "{reply:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent.elapsed()
    );
    mock.wait_until_closed(Duration::from_secs(1)).await;
    assert_eq!(mock.requests(), 1);
}

#[actix_web::test]
async fn server_errors_before_the_first_delta_are_retried() {
    let mock = MockUpstream::start(Step::reply(&["fine"], (1, 1)));
    mock.script([Step::status(500), Step::status(500)]);
    let app = app_with(&mock, |_| {}).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "mock", "hi").await;
    let reply = ws.reply("c1").await;
    assert_eq!(reply.text(), "fine", "{reply:?}");
    assert_eq!(mock.requests(), 3);
}

#[actix_web::test]
async fn retries_stop_at_the_attempt_limit() {
    let mock = MockUpstream::start(Step::status(503));
    let app = app_with(&mock, |m| m.max_attempts = 2).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "mock", "hi").await;
    assert_eq!(ws.reply("c1").await.error_code(), Some("upstream_error"));
    assert_eq!(mock.requests(), 2);
}

#[actix_web::test]
async fn upstream_retry_after_is_waited_out() {
    let mock = MockUpstream::start(Step::reply(&["late", " but", " here"], (2, 3)));
    mock.script([Step::Status {
        status: 429,
        retry_after: Some("1"),
        body: r#"{"error":{"message":"slow down"}}"#,
    }]);
    let app = app_with(&mock, |_| {}).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    let sent = Instant::now();
    ws.chat("c1", "mock", "hi").await;
    let reply = ws.reply("c1").await;
    assert_eq!(reply.text(), "late but here", "{reply:?}");
    assert!(
        sent.elapsed() >= Duration::from_secs(1),
        "{:?}",
        sent.elapsed()
    );
    assert_eq!(mock.requests(), 2);
}

#[actix_web::test]
async fn retry_after_past_the_cap_goes_to_the_client() {
    let mock = MockUpstream::start(Step::Status {
        status: 429,
        retry_after: Some("30"),
        body: "{}",
    });
    let app = app_with(&mock, |_| {}).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "mock", "hi").await;
    let reply = ws.reply("c1").await;
    assert_eq!(reply.error_code(), Some("upstream_rate_limited"));
    assert_eq!(reply.error.expect("error")["retry_after_ms"], 30_000);
    assert_eq!(mock.requests(), 1);
}

#[actix_web::test]
async fn stream_cut_after_two_deltas_is_an_error_and_never_retried() {
    let mock = MockUpstream::start(Step::reply(&["should", " not", " come"], (1, 3)));
    mock.script([Step::CutAfter(strings(&["one", " two"]))]);
    let app = app_with(&mock, |_| {}).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "mock", "hi").await;
    let reply = ws.reply("c1").await;
    assert_eq!(reply.deltas, ["one", " two"], "{reply:?}");
    assert_eq!(reply.error_code(), Some("upstream_error"));
    assert_eq!(mock.requests(), 1);
    // The delta reached the client, so the unit stays used.
    app.wait_for_records(1).await;
    assert_eq!(app.used_today("alice").await, 1);
}

#[actix_web::test]
async fn client_disconnect_mid_stream_closes_the_upstream_and_keeps_the_quota_unit() {
    let mock = MockUpstream::start(Step::HangAfter(strings(&["a", " b"])));
    // Without a resume grace the reply stops with its socket (with one, it waits for a
    // resume first: tests/api/resume_replies.rs).
    let model = mock.model("mock");
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.models.push(model);
        s.timers.resume_grace_secs = 0;
    })
    .await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "mock", "hi").await;
    for expected in ["a", " b"] {
        let frame = ws.expect_json().await;
        assert_eq!(frame["type"], "delta", "{frame}");
        assert_eq!(frame["content"], expected);
    }
    assert_eq!((mock.open_replies(), mock.open_connections()), (1, 1));
    drop(ws);
    mock.wait_until_closed(Duration::from_secs(1)).await;
    app.wait_for_records(1).await;
    assert_eq!(app.used_today("alice").await, 1);
}

#[actix_web::test]
async fn cancel_closes_the_upstream_connection() {
    let mock = MockUpstream::start(Step::HangAfter(strings(&["a"])));
    let app = app_with(&mock, |_| {}).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "mock", "hi").await;
    assert_eq!(ws.expect_json().await["type"], "delta");
    ws.send_json(json!({"type": "cancel", "id": "c1"})).await;
    let done = ws.reply("c1").await.done.expect("done");
    assert_eq!(done["cancelled"], true);
    mock.wait_until_closed(Duration::from_secs(1)).await;
}

#[actix_web::test]
async fn unknown_upstream_model_is_unsupported_and_gives_the_unit_back() {
    let mock = MockUpstream::start(Step::Status {
        status: 404,
        retry_after: None,
        body: r#"{"error":{"message":"The model `mock-upstream` does not exist.","code":"model_not_found"}}"#,
    });
    let app = app_with(&mock, |_| {}).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "mock", "hi").await;
    let reply = ws.reply("c1").await;
    assert_eq!(reply.error_code(), Some("unsupported_model"), "{reply:?}");
    assert!(reply.deltas.is_empty());
    assert_eq!(mock.requests(), 1);
    app.wait_for_records(1).await;
    assert_eq!(app.used_today("alice").await, 0);
}

#[actix_web::test]
async fn malformed_sse_is_an_upstream_error_and_chatgate_keeps_serving() {
    let mock = MockUpstream::start(Step::reply(&["still", " here"], (1, 2)));
    mock.script([Step::Malformed]);
    let app = app_with(&mock, |_| {}).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "mock", "hi").await;
    let reply = ws.reply("c1").await;
    assert_eq!(reply.deltas, ["ok"], "{reply:?}");
    assert_eq!(reply.error_code(), Some("upstream_error"));

    ws.chat("c2", "mock", "hi").await;
    assert_eq!(ws.reply("c2").await.text(), "still here");
    ws.chat("c3", "echo", "echo works").await;
    assert_eq!(ws.reply("c3").await.text(), "echo works");
    let (status, _) = app.get("/healthz", None).await;
    assert_eq!(status, 200);
}

#[actix_web::test]
async fn unreachable_upstream_is_retried_then_an_upstream_error() {
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let mut model = ModelSettings {
        base_url: Some(format!("http://127.0.0.1:{closed_port}/v1")),
        ..MockUpstream::start(Step::HangBeforeFirstByte).model("gone")
    };
    model.max_attempts = 2;
    let app = spawn_app_with(Backend::Sqlite, move |s| s.models.push(model)).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "gone", "hi").await;
    let reply = ws.reply("c1").await;
    assert_eq!(reply.error_code(), Some("upstream_error"), "{reply:?}");
}
