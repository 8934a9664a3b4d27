//! What real chat apps send over the chat WebSocket: a system prompt, request params, tools,
//! content parts, and tool results answering the previous reply's `tool_calls` frame.

use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend, TestApp};
use crate::mock_upstream::{MockUpstream, Step};
use crate::ws_client::WsClient;

async fn app_with(mock: &MockUpstream, history_max_messages: usize) -> TestApp {
    let model = mock.model("mock");
    spawn_app_with(Backend::Sqlite, move |s| {
        s.limits.history_max_messages = history_max_messages;
        s.models.push(model);
    })
    .await
}

/// Every frame of reply `id`, in order, up to its `done` or `error`.
async fn frames_of(ws: &mut WsClient, id: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        let frame = ws.expect_json().await;
        assert_eq!(frame["id"], id, "{frame}");
        let last = matches!(frame["type"].as_str(), Some("done" | "error"));
        frames.push(frame);
        if last {
            return frames;
        }
    }
}

fn weather_tool() -> Value {
    json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
}

#[actix_web::test]
async fn system_prompt_params_tools_and_parts_reach_the_upstream() {
    let mock = MockUpstream::start(Step::reply(&["ok"], (5, 1)));
    let app = app_with(&mock, 20).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    let parts = json!([
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
    ]);
    ws.send_json(json!({
        "type": "chat", "id": "c1", "model": "mock",
        "system": "You answer in one word.",
        "content": parts,
        "params": {"temperature": 0.2, "max_tokens": 32, "response_format": {"type": "text"}},
        "tools": weather_tool(),
        "tool_choice": "auto",
    }))
    .await;
    let frames = frames_of(&mut ws, "c1").await;
    let done = frames.last().expect("done");
    assert_eq!(done["type"], "done");
    assert_eq!(done["finish_reason"], "stop");

    let sent = &mock.bodies()[0];
    assert_eq!(
        sent["messages"],
        json!([
            {"role": "system", "content": "You answer in one word."},
            {"role": "user", "content": parts},
        ])
    );
    assert_eq!(sent["temperature"], 0.2);
    assert_eq!(sent["max_tokens"], 32);
    assert_eq!(sent["response_format"], json!({"type": "text"}));
    assert_eq!(sent["tools"], weather_tool());
    assert_eq!(sent["tool_choice"], "auto");
    assert_eq!(sent["stream"], true);
    assert_eq!(sent["model"], "mock-upstream");

    // Params are per chat; the system prompt stays with the session.
    ws.chat("c2", "mock", "again").await;
    frames_of(&mut ws, "c2").await;
    let second = &mock.bodies()[1];
    assert!(second.get("temperature").is_none(), "{second}");
    assert_eq!(second["messages"][0]["role"], "system");
}

#[actix_web::test]
async fn a_tool_call_round_trip_reaches_the_next_reply() {
    let arguments = r#"{"city":"Paris"}"#;
    let mock = MockUpstream::start(Step::reply(&["It is sunny."], (20, 3)));
    mock.script([Step::tool_calls(&[("call_1", "get_weather", arguments)])]);
    let app = app_with(&mock, 20).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.send_json(json!({"type": "chat", "id": "c1", "model": "mock",
                        "content": "weather in Paris?", "tools": weather_tool()}))
        .await;
    let frames = frames_of(&mut ws, "c1").await;
    let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    assert_eq!(kinds, ["tool_calls", "done"], "{frames:?}");
    let call = json!({"id": "call_1", "type": "function",
                      "function": {"name": "get_weather", "arguments": arguments}});
    assert_eq!(frames[0]["calls"], json!([call.clone()]));
    assert_eq!(frames[1]["finish_reason"], "tool_calls");
    assert_eq!(frames[1]["cancelled"], false);

    ws.send_json(json!({"type": "chat", "id": "c2", "model": "mock",
                        "tool_results": [{"call_id": "call_1", "content": "{\"sky\":\"clear\"}"}],
                        "tools": weather_tool()}))
        .await;
    let frames = frames_of(&mut ws, "c2").await;
    assert_eq!(frames.last().expect("done")["finish_reason"], "stop");
    assert_eq!(
        mock.bodies()[1]["messages"],
        json!([
            {"role": "user", "content": "weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "{\"sky\":\"clear\"}"},
        ])
    );

    // The calls are answered: naming one again cannot work upstream.
    ws.send_json(json!({"type": "chat", "id": "c3", "model": "mock",
                        "tool_results": [{"call_id": "call_1", "content": "again"}]}))
        .await;
    let error = ws.expect_json().await;
    assert_eq!(error["type"], "error");
    assert_eq!(error["code"], "bad_request");
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("\"call_1\"") && m.contains("previous reply")),
        "{error}"
    );
}

#[actix_web::test]
async fn the_system_prompt_survives_the_history_bound() {
    let mock = MockUpstream::start(Step::reply(&["ok"], (5, 1)));
    let app = app_with(&mock, 3).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.send_json(json!({"type": "chat", "id": "c0", "model": "mock",
                        "system": "stay", "content": "m0"}))
        .await;
    frames_of(&mut ws, "c0").await;
    for i in 1..5 {
        let id = format!("c{i}");
        ws.chat(&id, "mock", &format!("m{i}")).await;
        frames_of(&mut ws, &id).await;
    }
    let last = mock.bodies().pop().expect("bodies");
    assert_eq!(
        last["messages"],
        json!([
            {"role": "system", "content": "stay"},
            {"role": "user", "content": "m3"},
            {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "m4"},
        ])
    );
}

#[actix_web::test]
async fn payloads_that_cannot_work_are_refused_with_the_reason() {
    let mock = MockUpstream::start(Step::reply(&["ok"], (5, 1)));
    let app = app_with(&mock, 20).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    for (frame, why) in [
        (
            json!({"type": "chat", "id": "e1", "model": "mock", "content": "x", "params": {"stream": false}}),
            "may not set \"stream\"",
        ),
        (
            json!({"type": "chat", "id": "e2", "model": "mock",
                   "tool_results": [{"call_id": "call_404", "content": "x"}]}),
            "\"call_404\", which is not a tool call",
        ),
        (
            json!({"type": "chat", "id": "e3", "model": "mock", "content": [{"type": "text"}]}),
            "no \"text\"",
        ),
    ] {
        ws.send_json(frame.clone()).await;
        let error = ws.expect_json().await;
        assert_eq!(error["type"], "error", "{frame}");
        assert_eq!(error["id"], frame["id"]);
        assert_eq!(error["code"], "bad_request", "{error}");
        let message = error["message"].as_str().expect("message");
        assert!(message.contains(why), "{frame}: {message}");
    }
    // The session goes on: nothing the bad frames carried joined its history.
    ws.chat("ok", "mock", "fine").await;
    frames_of(&mut ws, "ok").await;
    assert_eq!(
        mock.bodies().pop().expect("bodies")["messages"],
        json!([{"role": "user", "content": "fine"}])
    );
}
