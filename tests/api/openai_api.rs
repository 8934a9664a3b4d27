//! `POST /v1/chat/completions` as an OpenAI client sees it, against the echo model and an
//! `openai` model behind the mock upstream.

use std::time::Duration;

use chatgate::config::{ModelSettings, ProviderKind};
use chatgate::providers::sse::SseParser;
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp};
use crate::mock_upstream::{strings, MockUpstream, Step};

const READ_TIMEOUT: Duration = Duration::from_secs(10);

fn chat_body(model: &str, content: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "you are a test"},
            {"role": "user", "content": content},
        ],
        "stream": stream,
        "stream_options": {"include_usage": true},
        "temperature": 0.5,
    })
}

pub(crate) async fn post(app: &TestApp, token: Option<&str>, body: &Value) -> awc::ClientResponse {
    let mut request = app.client().post(app.url("/v1/chat/completions"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send_json(body).await.expect("request")
}

pub(crate) async fn json_of(mut response: awc::ClientResponse) -> Value {
    let bytes = response.body().limit(1 << 20).await.expect("body");
    serde_json::from_slice(&bytes).expect("JSON body")
}

/// Reads an SSE body to its end: every event's data, in order.
pub(crate) async fn sse_events(response: &mut awc::ClientResponse) -> Vec<String> {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    loop {
        match tokio::time::timeout(READ_TIMEOUT, response.next()).await {
            Ok(Some(Ok(bytes))) => events.extend(parser.feed(&bytes).expect("valid SSE")),
            Ok(Some(Err(err))) => panic!("stream broke: {err}"),
            Ok(None) => return events,
            Err(_) => panic!("no end of stream within {READ_TIMEOUT:?}; got {events:?}"),
        }
    }
}

/// Reads SSE events until there are at least `count`.
async fn first_events(response: &mut awc::ClientResponse, count: usize) -> Vec<String> {
    let mut parser = SseParser::default();
    let mut events = Vec::new();
    while events.len() < count {
        match tokio::time::timeout(READ_TIMEOUT, response.next()).await {
            Ok(Some(Ok(bytes))) => events.extend(parser.feed(&bytes).expect("valid SSE")),
            other => panic!("stream ended early ({other:?}); got {events:?}"),
        }
    }
    events
}

fn parse_chunks(events: &[String]) -> Vec<Value> {
    events
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|_| panic!("not JSON: {e}")))
        .collect()
}

/// The content of the chunks' deltas, joined.
fn streamed_text(chunks: &[Value]) -> String {
    chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect()
}

#[actix_web::test]
async fn completion_with_echo_has_the_openai_shape() {
    let app = spawn_app().await;
    let token = app.user_token("alice");
    let response = post(
        &app,
        Some(&token),
        &chat_body("echo", "hello there world", false),
    )
    .await;
    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    assert!(body["id"].as_str().expect("id").starts_with("chatcmpl-"));
    assert_eq!(body["object"], "chat.completion");
    assert_eq!(body["model"], "echo");
    assert!(body["created"].as_i64().expect("created") > 1_600_000_000);
    assert_eq!(body["choices"][0]["index"], 0);
    assert_eq!(
        body["choices"][0]["message"],
        json!({"role": "assistant", "content": "hello there world"})
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    // Prompt: "you are a test" (4) + "hello there world" (3); completion: 3 words.
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    );
    app.wait_for_records(1).await;
    assert_eq!(app.used_today("alice").await, 1);
}

#[actix_web::test]
async fn streamed_completion_with_echo_ends_with_usage_and_done() {
    let app = spawn_app().await;
    let token = app.user_token("alice");
    let mut response = post(
        &app,
        Some(&token),
        &chat_body("echo", "one two three", true),
    )
    .await;
    assert_eq!(response.status(), 200);
    let content_type = response.headers().get("content-type").expect("type");
    assert!(content_type
        .to_str()
        .expect("ascii")
        .starts_with("text/event-stream"));
    let events = sse_events(&mut response).await;
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    let chunks = parse_chunks(&events[..events.len() - 1]);
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    for chunk in &chunks {
        assert_eq!(chunk["object"], "chat.completion.chunk");
        assert_eq!(chunk["id"], chunks[0]["id"]);
        assert_eq!(chunk["model"], "echo");
    }
    assert_eq!(streamed_text(&chunks), "one two three");
    let (finish, usage) = (&chunks[chunks.len() - 2], &chunks[chunks.len() - 1]);
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(
        usage["usage"],
        json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10})
    );
}

#[actix_web::test]
async fn streamed_completion_without_include_usage_has_no_usage_chunk() {
    let app = spawn_app().await;
    let token = app.user_token("alice");
    let body = json!({"model": "echo", "stream": true,
                      "messages": [{"role": "user", "content": "a b"}]});
    let mut response = post(&app, Some(&token), &body).await;
    let events = sse_events(&mut response).await;
    let chunks = parse_chunks(&events[..events.len() - 1]);
    assert!(
        chunks.iter().all(|c| c.get("usage").is_none()),
        "{chunks:?}"
    );
    assert_eq!(
        chunks.last().expect("finish")["choices"][0]["finish_reason"],
        "stop"
    );
}

#[actix_web::test]
async fn completions_through_the_upstream_carry_its_text_and_usage() {
    let mock = MockUpstream::start(Step::reply(&["up", "stream", " text"], (11, 3)));
    let model = mock.model("mock");
    let app = spawn_app_with(Backend::Sqlite, move |s| s.models.push(model)).await;
    let token = app.user_token("alice");

    let body = json_of(post(&app, Some(&token), &chat_body("mock", "hi", false)).await).await;
    assert_eq!(body["choices"][0]["message"]["content"], "upstream text");
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 3, "total_tokens": 14})
    );
    assert_eq!(
        mock.bodies()[0]["messages"],
        json!([{"role": "system", "content": "you are a test"},
               {"role": "user", "content": "hi"}])
    );

    let mut response = post(&app, Some(&token), &chat_body("mock", "hi", true)).await;
    let events = sse_events(&mut response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks = parse_chunks(&events[..events.len() - 1]);
    assert_eq!(streamed_text(&chunks), "upstream text");
    assert_eq!(chunks.last().expect("usage")["usage"]["total_tokens"], 14);
}

#[actix_web::test]
async fn missing_or_bad_token_is_401() {
    let app = spawn_app().await;
    let body = chat_body("echo", "hi", false);
    for token in [None, Some("not-a-jwt")] {
        let response = post(&app, token, &body).await;
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(json_of(response).await["error"]["code"], "unauthorized");
    }
}

#[actix_web::test]
async fn invalid_bodies_are_400_bad_request() {
    let app = spawn_app().await;
    let token = app.user_token("alice");
    let bad = [
        json!({"messages": [{"role": "user", "content": "x"}]}),
        json!({"model": "echo", "messages": []}),
        json!({"model": "echo", "messages": [{"role": "tool", "content": "x"}]}),
        json!({"model": "echo", "messages": [{"role": "user", "content": 5}]}),
        json!({"model": "echo", "messages": "hi"}),
        json!([1, 2]),
    ];
    for body in bad {
        let response = post(&app, Some(&token), &body).await;
        assert_eq!(response.status(), 400, "{body}");
        let error = json_of(response).await;
        assert_eq!(error["error"]["code"], "bad_request", "{body}: {error}");
        assert!(error["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    let mut response = app
        .client()
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(&token)
        .content_type("application/json")
        .send_body("{\"model\": ")
        .await
        .expect("request");
    assert_eq!(response.status(), 400);
    let bytes = response.body().await.expect("body");
    let error: Value = serde_json::from_slice(&bytes).expect("json");
    assert_eq!(error["error"]["code"], "bad_request");
    // Nothing above was a chat: no quota was touched.
    assert_eq!(app.used_today("alice").await, 0);
}

#[actix_web::test]
async fn unknown_model_is_400_unsupported_model() {
    let app = spawn_app().await;
    let token = app.user_token("alice");
    for stream in [false, true] {
        let response = post(&app, Some(&token), &chat_body("gpt-9", "hi", stream)).await;
        assert_eq!(response.status(), 400);
        assert_eq!(
            json_of(response).await["error"]["code"],
            "unsupported_model"
        );
    }
}

#[actix_web::test]
async fn body_over_the_frame_limit_is_413() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.server.max_frame_bytes = 2048).await;
    let token = app.user_token("alice");
    let response = post(
        &app,
        Some(&token),
        &chat_body("echo", &"x".repeat(4096), false),
    )
    .await;
    assert_eq!(response.status(), 413);
    assert_eq!(json_of(response).await["error"]["code"], "too_large");
}

#[actix_web::test]
async fn rate_limited_completion_is_429_with_retry_after() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.limits.user_rate_limit = 1;
        s.limits.user_rate_window_secs = 60;
    })
    .await;
    let token = app.user_token("alice");
    let first = post(&app, Some(&token), &chat_body("echo", "hi", false)).await;
    assert_eq!(first.status(), 200);
    for stream in [false, true] {
        let response = post(&app, Some(&token), &chat_body("echo", "hi", stream)).await;
        assert_eq!(response.status(), 429);
        let retry_after: u64 = response
            .headers()
            .get("retry-after")
            .expect("Retry-After")
            .to_str()
            .expect("ascii")
            .parse()
            .expect("whole seconds");
        assert!((1..=60).contains(&retry_after), "{retry_after}");
        assert_eq!(json_of(response).await["error"]["code"], "rate_limited");
    }
}

#[actix_web::test]
async fn upstream_failure_before_the_first_delta_is_an_http_error() {
    let mock = MockUpstream::start(Step::status(500));
    let mut model = mock.model("mock");
    model.max_attempts = 1;
    let app = spawn_app_with(Backend::Sqlite, move |s| s.models.push(model)).await;
    let token = app.user_token("alice");
    for stream in [false, true] {
        let response = post(&app, Some(&token), &chat_body("mock", "hi", stream)).await;
        assert_eq!(response.status(), 502, "stream={stream}");
        assert_eq!(json_of(response).await["error"]["code"], "upstream_error");
    }
    app.wait_for_records(2).await;
    assert_eq!(
        app.used_today("alice").await,
        0,
        "failed chats give units back"
    );
}

#[actix_web::test]
async fn failure_after_the_stream_began_is_an_error_event_without_done() {
    let mock = MockUpstream::start(Step::CutAfter(strings(&["one", " two"])));
    let model = mock.model("mock");
    let app = spawn_app_with(Backend::Sqlite, move |s| s.models.push(model)).await;
    let token = app.user_token("alice");
    let mut response = post(&app, Some(&token), &chat_body("mock", "hi", true)).await;
    assert_eq!(response.status(), 200);
    let events = sse_events(&mut response).await;
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let chunks = parse_chunks(&events);
    let (last, deltas) = chunks.split_last().expect("events");
    assert_eq!(streamed_text(deltas), "one two");
    assert_eq!(last["error"]["code"], "upstream_error", "{last}");
    assert!(last["error"]["message"].is_string());
    assert_eq!(mock.requests(), 1);
}

#[actix_web::test]
async fn sse_client_disconnect_closes_the_upstream_connection() {
    let mock = MockUpstream::start(Step::HangAfter(strings(&["a", " b"])));
    let model = mock.model("mock");
    let app = spawn_app_with(Backend::Sqlite, move |s| s.models.push(model)).await;
    let token = app.user_token("alice");
    let mut response = post(&app, Some(&token), &chat_body("mock", "hi", true)).await;
    // Role chunk and both deltas.
    let events = first_events(&mut response, 3).await;
    assert_eq!(streamed_text(&parse_chunks(&events)), "a b");
    assert_eq!(mock.open_replies(), 1);
    drop(response);
    mock.wait_until_closed(Duration::from_secs(1)).await;
    app.wait_for_records(1).await;
    assert_eq!(app.used_today("alice").await, 1, "a delta was delivered");
}

#[actix_web::test]
async fn shutdown_ends_a_streamed_reply_with_unavailable() {
    let slow = ModelSettings {
        name: "slow".into(),
        provider: ProviderKind::Echo,
        delay_ms: 100,
        ..ModelSettings::echo()
    };
    let app = spawn_app_with(Backend::Sqlite, move |s| s.models.push(slow)).await;
    let token = app.user_token("alice");
    let words: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
    let mut response = post(
        &app,
        Some(&token),
        &chat_body("slow", &words.join(" "), true),
    )
    .await;
    let mut events = first_events(&mut response, 2).await;
    app.shutdown.trigger();
    events.extend(sse_events(&mut response).await);
    let last: Value = serde_json::from_str(events.last().expect("events")).expect("json");
    assert_eq!(last["error"]["code"], "unavailable", "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"));
}
