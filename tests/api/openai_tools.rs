//! What real chat apps send over `POST /v1/chat/completions`: every role, content parts,
//! sampling and tool fields reach the upstream unchanged, and what the upstream answers
//! (tool calls, finish reasons, refusals, logprobs, usage) comes back intact.

use serde_json::{json, Value};

use crate::helpers::{spawn_app, spawn_app_with, Backend, TestApp};
use crate::mock_upstream::{tool_call_chunks, MockUpstream, Step};
use crate::openai_api::{json_of, post, sse_events};

async fn app_with(mock: &MockUpstream) -> TestApp {
    let model = mock.model("mock");
    spawn_app_with(Backend::Sqlite, move |s| s.models.push(model)).await
}

fn messages() -> Value {
    json!([
        {"role": "system", "content": "you are a test"},
        {"role": "developer", "content": [{"type": "text", "text": "prefer tools"}]},
        {"role": "user", "name": "ann", "content": [
            {"type": "text", "text": "what is in"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "low"}},
            {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
            {"type": "file", "file": {"file_id": "file-1"}},
            {"type": "text", "text": "this, and the weather?"},
        ]},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": "call_0", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
        ]},
        {"role": "tool", "tool_call_id": "call_0", "content": "{\"temp_c\":-3.5}"},
        {"role": "assistant", "content": "It is cold in Oslo.", "refusal": null},
        {"role": "user", "content": "and Paris?"},
    ])
}

/// Every field OpenAI documents that chatgate passes through, plus one it has never heard of.
fn pass_through_fields() -> Value {
    json!({
        "temperature": 0.25,
        "top_p": 0.9,
        "max_tokens": 64,
        "max_completion_tokens": 128,
        "stop": ["\n\n", "END"],
        "seed": 42,
        "n": 1,
        "response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": {"type": "object"}}},
        "tools": [{"type": "function", "function": {"name": "get_weather", "description": "Weather by city",
                   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "parallel_tool_calls": false,
        "logprobs": true,
        "top_logprobs": 2,
        "user": "end-user-7",
        "metadata": {"app": "tests"},
        "reasoning_effort": "low",
        "x_future_field": {"nested": [1, 2.5, null, "x"]},
    })
}

fn request(stream: bool) -> Value {
    let mut body = pass_through_fields();
    body["model"] = json!("mock");
    body["messages"] = messages();
    body["stream"] = json!(stream);
    body
}

#[actix_web::test]
async fn every_role_content_part_and_field_reaches_the_upstream_unchanged() {
    let mock = MockUpstream::start(Step::reply(&["Sunny."], (30, 2)));
    let app = app_with(&mock).await;
    let token = app.user_token("alice");
    for stream in [false, true] {
        let mut response = post(&app, Some(&token), &request(stream)).await;
        assert_eq!(response.status(), 200, "stream={stream}");
        if stream {
            let events = sse_events(&mut response).await;
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        } else {
            let body = json_of(response).await;
            assert_eq!(body["choices"][0]["message"]["content"], "Sunny.");
        }
    }
    let bodies = mock.bodies();
    assert_eq!(bodies.len(), 2);
    for sent in &bodies {
        assert_eq!(sent["messages"], messages(), "messages as given");
        let fields = pass_through_fields();
        for (name, value) in fields.as_object().expect("object") {
            assert_eq!(&sent[name], value, "field {name}");
        }
        // chatgate's own: the upstream's model name, always streamed, usage asked for.
        assert_eq!(sent["model"], "mock-upstream");
        assert_eq!(sent["stream"], true);
        assert_eq!(sent["stream_options"], json!({"include_usage": true}));
        let expected_keys = fields.as_object().expect("object").len() + 4;
        assert_eq!(
            sent.as_object().expect("object").len(),
            expected_keys,
            "{sent}"
        );
    }
}

#[actix_web::test]
async fn fields_and_messages_reach_the_upstream_byte_for_byte() {
    let mock = MockUpstream::start(Step::reply(&["ok"], (3, 1)));
    let app = app_with(&mock).await;
    // Spellings a decode and re-encode would change: 1.50, 1e3, a u64 overflow, escapes,
    // and key order inside objects.
    let message =
        r#"{"content":[{"text":"caf\u00e9 \"x\"","type":"text"}],"role":"user","name":"z"}"#;
    let fields = r#""temperature":1.50,"seed":18446744073709551616,"top_p":1e3,"x_zeta":{"b":1,"a":[2.0,null]}"#;
    let body = format!(r#"{{"model":"mock","messages":[{message}],{fields}}}"#);
    let response = app
        .client()
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(app.user_token("alice"))
        .insert_header(("content-type", "application/json"))
        .send_body(body)
        .await
        .expect("request");
    let status = response.status();
    assert_eq!(status, 200, "{}", json_of(response).await);
    let sent = mock.raw_bodies().pop().expect("a request");
    assert!(
        sent.contains(&format!(r#""messages":[{message}]"#)),
        "{sent}"
    );
    for field in [
        r#""temperature":1.50"#,
        r#""seed":18446744073709551616"#,
        r#""top_p":1e3"#,
        r#""x_zeta":{"b":1,"a":[2.0,null]}"#,
    ] {
        assert!(sent.contains(field), "{field} in {sent}");
    }
}

#[actix_web::test]
async fn a_whole_reply_carries_the_assembled_tool_calls() {
    let calls = [
        ("call_1", "get_weather", r#"{"city":"Paris","unit":"c"}"#),
        ("call_2", "get_time", r#"{"tz":"Europe/Paris"}"#),
    ];
    let mock = MockUpstream::start(Step::tool_calls(&calls));
    let app = app_with(&mock).await;
    let response = post(&app, Some(&app.user_token("alice")), &request(false)).await;
    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], Value::Null);
    assert_eq!(
        choice["message"]["tool_calls"],
        json!([
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": calls[0].2}},
            {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": calls[1].2}},
        ])
    );
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20})
    );
}

#[actix_web::test]
async fn streamed_tool_calls_arrive_as_the_upstream_sent_them() {
    let calls = [("call_1", "get_weather", r#"{"city":"Paris"}"#)];
    let mock = MockUpstream::start(Step::tool_calls(&calls));
    let app = app_with(&mock).await;
    let mut response = post(&app, Some(&app.user_token("alice")), &request(true)).await;
    assert_eq!(response.status(), 200);
    let events = sse_events(&mut response).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).expect("json chunk"))
        .collect();
    let relayed: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    let sent: Vec<Value> = tool_call_chunks(&calls)
        .into_iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls").cloned())
        .collect();
    assert_eq!(relayed.len(), 2);
    assert_eq!(relayed.into_iter().cloned().collect::<Vec<_>>(), sent);
    let finish: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0].get("finish_reason"))
        .filter(|r| !r.is_null())
        .collect();
    assert_eq!(finish, [&json!("tool_calls")]);
}

#[actix_web::test]
async fn finish_reason_refusal_and_logprobs_are_relayed() {
    let lp = json!({"content": null, "refusal": [{"token": "No", "logprob": -0.125, "bytes": [78, 111], "top_logprobs": []}]});
    let chunk = |delta: Value, logprobs: Value, finish: Value| {
        json!({"id": "x", "object": "chat.completion.chunk", "created": 1, "model": "m",
               "choices": [{"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})
    };
    let chunks = vec![
        chunk(
            json!({"role": "assistant", "refusal": "No"}),
            lp.clone(),
            Value::Null,
        ),
        chunk(json!({}), Value::Null, json!("content_filter")),
    ];
    let mock = MockUpstream::start(Step::Chunks(chunks));
    let app = app_with(&mock).await;
    let token = app.user_token("alice");
    let body = json_of(post(&app, Some(&token), &request(false)).await).await;
    let choice = &body["choices"][0];
    assert_eq!(choice["finish_reason"], "content_filter");
    assert_eq!(choice["message"]["refusal"], "No");
    assert_eq!(choice["logprobs"], lp);

    let mut response = post(&app, Some(&token), &request(true)).await;
    let events = sse_events(&mut response).await;
    let text = events.join("\n");
    assert!(text.contains(r#""refusal":"No""#), "{text}");
    assert!(
        text.contains(r#""finish_reason":"content_filter""#),
        "{text}"
    );
    let relayed: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .map(|c| c["choices"][0]["logprobs"].clone())
        .filter(|l| !l.is_null())
        .collect();
    assert_eq!(relayed, [lp]);
}

#[actix_web::test]
async fn wild_token_counts_are_clamped() {
    let chunks = vec![
        json!({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}]}),
        json!({"choices": [], "usage": {"prompt_tokens": -40, "completion_tokens": 99_999_999_999_999u64}}),
    ];
    let mock = MockUpstream::start(Step::Chunks(chunks));
    let app = app_with(&mock).await;
    let body = json_of(post(&app, Some(&app.user_token("alice")), &request(false)).await).await;
    let max = 1u64 << 31;
    assert_eq!(
        body["usage"],
        json!({"prompt_tokens": 0, "completion_tokens": max, "total_tokens": max})
    );
}

#[actix_web::test]
async fn echo_reads_the_text_parts_of_content() {
    let app = spawn_app().await;
    let body = json!({"model": "echo", "messages": [
        {"role": "developer", "content": "ignored by echo"},
        {"role": "user", "content": [
            {"type": "text", "text": "first words"},
            {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            {"type": "text", "text": "second"},
        ]},
    ]});
    let response = post(&app, Some(&app.user_token("alice")), &body).await;
    assert_eq!(response.status(), 200);
    let body = json_of(response).await;
    assert_eq!(
        body["choices"][0]["message"]["content"],
        "first words second"
    );
}

#[actix_web::test]
async fn an_unknown_role_is_refused_with_the_reason() {
    let app = spawn_app().await;
    let body = json!({"model": "echo", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "wizard", "content": "abracadabra"},
    ]});
    let response = post(&app, Some(&app.user_token("alice")), &body).await;
    assert_eq!(response.status(), 400);
    let body = json_of(response).await;
    assert_eq!(body["error"]["code"], "bad_request");
    let message = body["error"]["message"].as_str().expect("message");
    assert!(
        message.contains("messages[1]") && message.contains("unknown role \"wizard\""),
        "{message}"
    );
}
