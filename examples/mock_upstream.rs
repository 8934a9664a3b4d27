//! A local mock OpenAI-compatible upstream, and a small fixed-concurrency client, for measuring
//! the latency chatgate adds in front of an upstream (README, "Performance").
//!
//! ```sh
//! cargo run --release --example mock_upstream -- serve 127.0.0.1:18800
//! # the same client against the mock directly and against chatgate (a model pointing at it):
//! cargo run --release --example mock_upstream -- drive http://127.0.0.1:18800 \
//!     --concurrency 16 --duration 10 --model mock
//! cargo run --release --example mock_upstream -- drive http://127.0.0.1:18700 \
//!     --concurrency 16 --duration 10 --model mock --token "$TOKEN"
//! ```
//!
//! `serve` answers `POST /v1/chat/completions` at once, one thread: with `"stream": true` an
//! SSE stream of `chat.completion.chunk` events (role, one chunk per word of the last message,
//! `finish_reason`, usage, `[DONE]`) — what chatgate always asks upstreams for — otherwise a
//! whole `chat.completion`. `drive` keeps `--concurrency` requests in flight over keep-alive
//! connections for `--duration` seconds (non-streaming unless `--stream`, the whole body read)
//! and prints one JSON line: requests, errors, p50/p90/p99/max in ms.
//!
//! For the SDK compatibility checks (tests/compat/), `serve` also plays a tool-using model: a
//! request with `tools` whose last message is not a `tool` result is answered with one call
//! of the first tool, `{"text": <last user text>}` as its arguments (streamed in two pieces,
//! `finish_reason: "tool_calls"`); with `"metadata": {"mock_reply": "describe"}` the reply
//! text is a JSON description of the request as it arrived (roles, content part types, the
//! other fields' names and values).

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_web::{web, App, HttpResponse, HttpServer};
use serde_json::{json, Value};

/// A message's text: its string content, or its text parts joined by a space.
fn text_of(message: &Value) -> String {
    match &message["content"] {
        Value::String(text) => text.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter(|p| p["type"] == "text")
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

/// What the compatibility checks ask to see of a request: roles, part types, other fields.
fn describe(request: &Value) -> String {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    let roles: Vec<&Value> = messages.iter().map(|m| &m["role"]).collect();
    let part_types: Vec<&Value> = messages
        .iter()
        .filter_map(|m| m["content"].as_array())
        .flatten()
        .map(|p| &p["type"])
        .collect();
    let mut params = request.as_object().cloned().unwrap_or_default();
    for own in ["model", "messages", "stream", "stream_options"] {
        params.remove(own);
    }
    json!({"roles": roles, "part_types": part_types, "params": params}).to_string()
}

/// The tool call a request with `tools` gets, unless it already carries a tool result.
fn tool_call_for(request: &Value) -> Option<(String, String)> {
    let name = request["tools"][0]["function"]["name"].as_str()?;
    let messages = request["messages"].as_array()?;
    if messages.last()?["role"] == "tool" {
        return None;
    }
    let user = messages.iter().rev().find(|m| m["role"] == "user")?;
    Some((name.to_string(), json!({"text": text_of(user)}).to_string()))
}

fn words_of(request: &Value) -> Vec<String> {
    let last = request["messages"]
        .as_array()
        .and_then(|m| m.last())
        .map(|m| {
            if request["metadata"]["mock_reply"] == "describe" {
                describe(request)
            } else if m["role"] == "tool" {
                format!("tool said {}", text_of(m))
            } else {
                text_of(m)
            }
        })
        .unwrap_or_default();
    let mut words: Vec<String> = last.split_whitespace().map(str::to_string).collect();
    for word in words.iter_mut().skip(1) {
        word.insert(0, ' ');
    }
    words
}

async fn completions(body: web::Bytes) -> HttpResponse {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return HttpResponse::BadRequest().body("bad json");
    };
    let model = request["model"].as_str().unwrap_or("mock").to_string();
    let words = words_of(&request);
    let usage = json!({"prompt_tokens": words.len(), "completion_tokens": words.len(),
                       "total_tokens": 2 * words.len()});
    let head = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk",
                      "created": 1_717_171_717, "model": model});
    let call = tool_call_for(&request);
    if request["stream"].as_bool() != Some(true) {
        if let Some((name, arguments)) = &call {
            return HttpResponse::Ok().json(json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_717_171_717,
                "model": model,
                "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                    "role": "assistant", "content": null,
                    "tool_calls": [{"id": "call_mock_1", "type": "function",
                                    "function": {"name": name, "arguments": arguments}}]}}],
                "usage": usage,
            }));
        }
        return HttpResponse::Ok().json(json!({
            "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_717_171_717,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": words.concat()},
                         "finish_reason": "stop"}],
            "usage": usage,
        }));
    }
    let mut out = String::new();
    let mut event = |choices: Value, usage: Value| {
        let mut chunk = head.clone();
        chunk["choices"] = choices;
        chunk["usage"] = usage;
        out.push_str("data: ");
        out.push_str(&chunk.to_string());
        out.push_str("\n\n");
    };
    event(
        json!([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": null}]),
        Value::Null,
    );
    let finish = if let Some((name, arguments)) = &call {
        let mut cut = arguments.len() / 2;
        while !arguments.is_char_boundary(cut) {
            cut -= 1;
        }
        let (head, tail) = arguments.split_at(cut);
        event(
            json!([{"index": 0, "finish_reason": null, "delta": {"tool_calls": [{"index": 0,
                "id": "call_mock_1", "type": "function",
                "function": {"name": name, "arguments": head}}]}}]),
            Value::Null,
        );
        event(
            json!([{"index": 0, "finish_reason": null, "delta": {"tool_calls": [{"index": 0,
                "function": {"arguments": tail}}]}}]),
            Value::Null,
        );
        "tool_calls"
    } else {
        for word in &words {
            event(
                json!([{"index": 0, "delta": {"content": word}, "finish_reason": null}]),
                Value::Null,
            );
        }
        "stop"
    };
    event(
        json!([{"index": 0, "delta": {}, "finish_reason": finish}]),
        Value::Null,
    );
    event(json!([]), usage);
    out.push_str("data: [DONE]\n\n");
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .body(out)
}

fn serve(addr: &str) -> std::io::Result<()> {
    actix_web::rt::System::new().block_on(
        HttpServer::new(|| App::new().route("/v1/chat/completions", web::post().to(completions)))
            .workers(1)
            .bind(addr)?
            .run(),
    )
}

struct Args {
    url: String,
    concurrency: usize,
    duration: f64,
    model: String,
    token: String,
    stream: bool,
    words: usize,
}

fn parse_args(mut rest: std::env::Args) -> Args {
    let mut args = Args {
        url: rest.next().expect("drive URL"),
        concurrency: 16,
        duration: 10.0,
        model: "mock".into(),
        token: "none".into(),
        stream: false,
        words: 10,
    };
    while let Some(flag) = rest.next() {
        let mut value = || {
            rest.next()
                .unwrap_or_else(|| panic!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--concurrency" => args.concurrency = value().parse().expect("--concurrency N"),
            "--duration" => args.duration = value().parse().expect("--duration SECS"),
            "--model" => args.model = value(),
            "--token" => args.token = value(),
            "--words" => args.words = value().parse().expect("--words N"),
            "--stream" => args.stream = true,
            other => panic!("unknown flag {other}"),
        }
    }
    args
}

fn quantile(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1000.0
}

fn drive(args: Args) {
    let words: Vec<String> = (0..args.words).map(|i| format!("w{i}")).collect();
    let body = json!({"model": args.model, "stream": args.stream,
                      "messages": [{"role": "user", "content": words.join(" ")}]})
    .to_string();
    let url = format!("{}/v1/chat/completions", args.url.trim_end_matches('/'));
    let latencies = Rc::new(RefCell::new(Vec::<Duration>::new()));
    let errors = Rc::new(RefCell::new(0u64));
    actix_web::rt::System::new().block_on(async {
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish();
        let end = Instant::now() + Duration::from_secs_f64(args.duration);
        let tasks: Vec<_> = (0..args.concurrency)
            .map(|_| {
                let (client, url, body) = (client.clone(), url.clone(), body.clone());
                let auth = format!("Bearer {}", args.token);
                let (latencies, errors) = (latencies.clone(), errors.clone());
                actix_web::rt::spawn(async move {
                    while Instant::now() < end {
                        let start = Instant::now();
                        let sent = client
                            .post(&url)
                            .insert_header(("authorization", auth.as_str()))
                            .insert_header(("content-type", "application/json"))
                            .send_body(body.clone())
                            .await;
                        let ok = match sent {
                            Ok(mut response) => {
                                let status = response.status();
                                let read = response.body().limit(1 << 20).await;
                                status.is_success() && read.is_ok()
                            }
                            Err(_) => false,
                        };
                        if ok {
                            latencies.borrow_mut().push(start.elapsed());
                        } else {
                            *errors.borrow_mut() += 1;
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
    let mut sorted = latencies.take();
    sorted.sort_unstable();
    println!(
        "{}",
        json!({
            "requests": sorted.len(), "errors": *errors.borrow(),
            "per_sec": sorted.len() as f64 / args.duration,
            "p50_ms": quantile(&sorted, 0.5), "p90_ms": quantile(&sorted, 0.9),
            "p99_ms": quantile(&sorted, 0.99),
            "max_ms": sorted.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        })
    );
}

fn main() -> std::io::Result<()> {
    let mut args = std::env::args();
    args.next();
    match args.next().as_deref() {
        Some("serve") => serve(&args.next().unwrap_or_else(|| "127.0.0.1:18800".into())),
        Some("drive") => {
            drive(parse_args(args));
            Ok(())
        }
        _ => {
            eprintln!("usage: mock_upstream serve ADDR | drive URL [--concurrency N] [--duration SECS] [--model M] [--token T] [--stream] [--words N]");
            std::process::exit(2);
        }
    }
}
