//! Quota receipts: a WebSocket `done` carries the user's standing after that chat, and the
//! OpenAI-compatible API returns the same numbers as `x-chatgate-quota-*` headers (on whole
//! and streamed replies, and on a `quota_exceeded` refusal).

use chatgate::domain::QuotaDay;
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::ws_client::WsClient;

/// Gives `user` its own daily limit, different from the server's default, so a receipt that
/// reported the default would fail.
async fn set_limit(app: &TestApp, user: &str, limit: i64) {
    let admin = app.admin_token("ops");
    let resp = app
        .client()
        .put(app.url(&format!("/admin/users/{user}")))
        .bearer_auth(&admin)
        .send_json(&json!({"daily_limit": limit, "disabled": false}))
        .await
        .expect("PUT /admin/users");
    assert!(
        resp.status().is_success(),
        "setting the limit: {}",
        resp.status()
    );
}

/// The next 00:00 UTC as RFC 3339, read around the chats so a run across midnight passes.
fn midnights(before: QuotaDay) -> [String; 2] {
    let fmt = |day: QuotaDay| {
        day.ends_at()
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    };
    [fmt(before), fmt(QuotaDay::today())]
}

async fn spawn() -> TestApp {
    spawn_app_with(Backend::Sqlite, |s| {
        s.limits.daily_quota = 1_000;
        s.limits.user_rate_limit = 1_000;
    })
    .await
}

#[actix_web::test]
async fn done_frames_carry_the_users_standing_after_each_chat() {
    let app = spawn().await;
    set_limit(&app, "receipt-ws", 7).await;
    let day = QuotaDay::today();
    let (mut ws, _) = WsClient::open(&app, "receipt-ws").await;
    let mut seen = Vec::new();
    for i in 1..=3 {
        let id = format!("c{i}");
        ws.chat(&id, "echo", "count me").await;
        let reply = ws.reply(&id).await;
        let done = reply
            .done
            .clone()
            .unwrap_or_else(|| panic!("no done: {reply:?}"));
        let quota = &done["quota"];
        assert_eq!(
            quota.as_object().map(|q| q.len()),
            Some(3),
            "used, limit, resets_at: {done}"
        );
        assert_eq!(quota["limit"], 7, "the user's own limit: {done}");
        let resets_at = quota["resets_at"].as_str().expect("resets_at").to_string();
        assert!(
            midnights(day).contains(&resets_at),
            "the next 00:00 UTC: {done}"
        );
        seen.push(quota["used"].as_i64().expect("used"));
        // Let a settlement happen between chats: the count must not jump when units move
        // from this instance's book into the database.
        app.settle_quota().await;
    }
    assert_eq!(seen, [1, 2, 3]);
    assert_eq!(app.used_today("receipt-ws").await, 3, "the database agrees");
    ws.close().await;
}

/// One chat over `POST /v1/chat/completions`; returns the status, the receipt headers and the
/// body as text.
async fn http_chat(app: &TestApp, user: &str, stream: bool) -> (u16, [Option<String>; 3], String) {
    let mut resp = app
        .client()
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(app.user_token(user))
        .send_json(&json!({
            "model": "echo",
            "messages": [{"role": "user", "content": "count me too"}],
            "stream": stream,
        }))
        .await
        .expect("POST /v1/chat/completions");
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let headers = [
        header("x-chatgate-quota-used"),
        header("x-chatgate-quota-limit"),
        header("x-chatgate-quota-reset"),
    ];
    let status = resp.status().as_u16();
    let body = resp.body().limit(1 << 20).await.expect("body");
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

#[actix_web::test]
async fn openai_replies_carry_the_receipt_in_headers_whole_and_streamed() {
    let app = spawn().await;
    set_limit(&app, "receipt-http", 9).await;
    let day = QuotaDay::today();
    // A WebSocket chat first: both transports count against the same standing.
    let (mut ws, _) = WsClient::open(&app, "receipt-http").await;
    ws.chat("c1", "echo", "one").await;
    let done = ws.reply("c1").await.done.expect("done");
    assert_eq!(done["quota"]["used"], 1, "{done}");
    ws.close().await;

    let (status, [used, limit, reset], body) = http_chat(&app, "receipt-http", false).await;
    assert_eq!(status, 200, "{body}");
    let completion: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(completion["object"], "chat.completion", "{body}");
    assert_eq!(used.as_deref(), Some("2"), "whole reply: used");
    assert_eq!(limit.as_deref(), Some("9"), "whole reply: limit");
    let reset = reset.expect("whole reply: reset");
    assert!(
        midnights(day).contains(&reset),
        "RFC 3339 UTC midnight: {reset}"
    );

    let (status, [used, limit, reset], body) = http_chat(&app, "receipt-http", true).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    assert_eq!(used.as_deref(), Some("3"), "streamed reply: used");
    assert_eq!(limit.as_deref(), Some("9"), "streamed reply: limit");
    let reset = reset.expect("streamed reply: reset");
    assert!(
        midnights(day).contains(&reset),
        "RFC 3339 UTC midnight: {reset}"
    );
    assert_eq!(app.used_today("receipt-http").await, 3);
}

#[actix_web::test]
async fn quota_exceeded_carries_a_full_receipt_and_other_refusals_none() {
    let app = spawn().await;
    set_limit(&app, "receipt-full", 2).await;
    let day = QuotaDay::today();
    for (stream, expected) in [(false, "1"), (true, "2")] {
        let (status, [used, ..], body) = http_chat(&app, "receipt-full", stream).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(used.as_deref(), Some(expected));
    }
    for stream in [false, true] {
        let (status, [used, limit, reset], body) = http_chat(&app, "receipt-full", stream).await;
        assert_eq!(status, 429, "{body}");
        let error: Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(error["error"]["code"], "quota_exceeded", "{body}");
        assert_eq!(
            (used.as_deref(), limit.as_deref()),
            (Some("2"), Some("2")),
            "every unit used (stream {stream})"
        );
        let reset = reset.expect("reset");
        assert!(midnights(day).contains(&reset), "{reset}");
    }
    // A refusal that is not about the quota says nothing about it.
    let resp = app
        .client()
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(app.user_token("receipt-full"))
        .send_json(
            &json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
        )
        .await
        .expect("POST");
    assert_eq!(resp.status(), 400);
    assert!(resp.headers().get("x-chatgate-quota-used").is_none());
    // The WebSocket refuses the same way, without a `done`.
    let (mut ws, _) = WsClient::open(&app, "receipt-full").await;
    ws.chat("c1", "echo", "one more").await;
    let reply = ws.reply("c1").await;
    assert_eq!(reply.error_code(), Some("quota_exceeded"), "{reply:?}");
    ws.close().await;
}
