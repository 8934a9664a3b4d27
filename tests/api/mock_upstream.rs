//! A scripted OpenAI-compatible upstream for tests: an actix-web server on port 0 that answers
//! `POST /v1/chat/completions` with the next step of its script (or its fallback step), and
//! counts requests, open TCP connections and open replies, so tests can see when chatgate
//! really closed an upstream connection.

use std::collections::VecDeque;
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::{header, KeepAlive, StatusCode};
use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use chatgate::config::{ModelSettings, ProviderKind, Secret};
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

use crate::helpers::eventually;

/// What the upstream does with one request.
#[derive(Clone, Debug)]
pub enum Step {
    /// A complete stream: a role chunk, one chunk per delta, the finish chunk, a usage chunk
    /// (when given) and `[DONE]`.
    Reply {
        deltas: Vec<String>,
        usage: Option<(u64, u64)>,
    },
    /// These chunks as they are, one `data:` event each, then `[DONE]`.
    Chunks(Vec<Value>),
    /// Reads the request and never answers.
    HangBeforeFirstByte,
    /// Streams these deltas, then goes silent with the response still open.
    HangAfter(Vec<String>),
    /// Streams these deltas, then breaks the connection mid-body.
    CutAfter(Vec<String>),
    /// One good delta, then an event whose data is not JSON.
    Malformed,
    /// An error status with an optional `Retry-After` and a body.
    Status {
        status: u16,
        retry_after: Option<&'static str>,
        body: &'static str,
    },
}

impl Step {
    pub fn reply(deltas: &[&str], usage: (u64, u64)) -> Step {
        Step::Reply {
            deltas: strings(deltas),
            usage: Some(usage),
        }
    }

    /// A reply of tool calls (`(id, name, arguments)`), streamed as OpenAI does: each call's
    /// first fragment brings its id and name, its arguments follow in two pieces; then
    /// `finish_reason: "tool_calls"` and usage.
    pub fn tool_calls(calls: &[(&str, &str, &str)]) -> Step {
        Step::Chunks(tool_call_chunks(calls))
    }

    pub fn status(status: u16) -> Step {
        Step::Status {
            status,
            retry_after: None,
            body: r#"{"error":{"message":"upstream trouble","type":"server_error"}}"#,
        }
    }
}

pub fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Counts something while guards are alive.
#[derive(Clone, Default)]
struct Gauge(Arc<AtomicUsize>);

struct GaugeGuard(Arc<AtomicUsize>);

impl Gauge {
    fn enter(&self) -> GaugeGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        GaugeGuard(self.0.clone())
    }

    fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[derive(Default)]
struct MockState {
    script: Mutex<VecDeque<Step>>,
    fallback: Mutex<Option<Step>>,
    requests: AtomicUsize,
    bodies: Mutex<Vec<Value>>,
    raw_bodies: Mutex<Vec<String>>,
    authorization: Mutex<Vec<Option<String>>>,
    /// Requests whose handler or response body is still alive.
    open_replies: Gauge,
    open_connections: Gauge,
}

pub struct MockUpstream {
    pub base_url: String,
    state: Arc<MockState>,
    handle: ServerHandle,
}

impl MockUpstream {
    /// Starts the mock; requests beyond the script get `fallback`.
    pub fn start(fallback: Step) -> MockUpstream {
        let state = Arc::new(MockState::default());
        *state.fallback.lock().expect("lock") = Some(fallback);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock upstream");
        let addr = listener.local_addr().expect("addr");
        let data = web::Data::from(state.clone());
        let connections = state.open_connections.clone();
        let server = HttpServer::new(move || {
            App::new()
                .app_data(data.clone())
                .route("/v1/chat/completions", web::post().to(answer))
        })
        .workers(1)
        // One request per connection, and a client that hangs up is gone at once: the open
        // counts then say exactly whether chatgate still holds a connection.
        .keep_alive(KeepAlive::Disabled)
        .h1_allow_half_closed(false)
        .disable_signals()
        .on_connect(move |_, extensions| {
            extensions.insert(connections.enter());
        })
        .listen(listener)
        .expect("listen")
        .run();
        let handle = server.handle();
        actix_web::rt::spawn(server);
        MockUpstream {
            base_url: format!("http://{addr}/v1"),
            state,
            handle,
        }
    }

    /// Queues steps to answer the next requests with, before the fallback.
    pub fn script(&self, steps: impl IntoIterator<Item = Step>) {
        self.state.script.lock().expect("lock").extend(steps);
    }

    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }

    pub fn bodies(&self) -> Vec<Value> {
        self.state.bodies.lock().expect("lock").clone()
    }

    /// The request bodies as the bytes arrived, for checks of exact pass-through.
    pub fn raw_bodies(&self) -> Vec<String> {
        self.state.raw_bodies.lock().expect("lock").clone()
    }

    pub fn authorization(&self) -> Vec<Option<String>> {
        self.state.authorization.lock().expect("lock").clone()
    }

    pub fn open_replies(&self) -> usize {
        self.state.open_replies.get()
    }

    pub fn open_connections(&self) -> usize {
        self.state.open_connections.get()
    }

    /// Waits until some request is being answered (its handler runs).
    pub async fn wait_for_open_reply(&self) {
        eventually(
            "the mock upstream to be answering",
            Duration::from_secs(5),
            || async { (self.open_replies() > 0).then_some(()) },
        )
        .await;
    }

    /// Waits until no reply is being answered and no connection is open.
    pub async fn wait_until_closed(&self, within: Duration) {
        eventually(
            "the mock upstream to see every connection closed",
            within,
            || async { (self.open_replies() == 0 && self.open_connections() == 0).then_some(()) },
        )
        .await;
    }

    /// An `openai` model named `name` served by this mock, with quick retries for tests.
    pub fn model(&self, name: &str) -> ModelSettings {
        ModelSettings {
            name: name.into(),
            provider: ProviderKind::OpenAi,
            base_url: Some(self.base_url.clone()),
            api_key_env: Some("MOCK_UPSTREAM_KEY".into()),
            api_key: Some(Secret::new("sk-mock-key".into())),
            upstream_model: Some(format!("{name}-upstream")),
            retry_backoff_ms: 20,
            ..ModelSettings::echo()
        }
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        actix_web::rt::spawn(self.handle.clone().stop(false));
    }
}

async fn answer(state: web::Data<MockState>, req: HttpRequest, body: web::Bytes) -> HttpResponse {
    let guard = state.open_replies.enter();
    state.requests.fetch_add(1, Ordering::SeqCst);
    let raw = String::from_utf8_lossy(&body).into_owned();
    state.raw_bodies.lock().expect("lock").push(raw);
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    state.bodies.lock().expect("lock").push(body);
    let auth = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    state.authorization.lock().expect("lock").push(auth);
    let step = {
        let next = state.script.lock().expect("lock").pop_front();
        next.or_else(|| state.fallback.lock().expect("lock").clone())
            .expect("a fallback step")
    };
    type Frame = Result<Bytes, io::Error>;
    let frames = |texts: Vec<String>| -> Vec<Frame> {
        texts.into_iter().map(|t| Ok(Bytes::from(t))).collect()
    };
    match step {
        Step::HangBeforeFirstByte => {
            futures_util::future::pending::<()>().await;
            unreachable!("pending never resolves")
        }
        Step::Status {
            status,
            retry_after,
            body,
        } => {
            let mut response =
                HttpResponse::build(StatusCode::from_u16(status).expect("status code"));
            if let Some(value) = retry_after {
                response.insert_header((header::RETRY_AFTER, value));
            }
            response.content_type("application/json").body(body)
        }
        Step::Chunks(chunks) => {
            let mut events: Vec<String> = chunks.iter().map(|c| format!("data: {c}\n\n")).collect();
            events.push("data: [DONE]\n\n".into());
            sse(stream::iter(frames(events)), guard)
        }
        Step::Reply { deltas, usage } => {
            sse(stream::iter(frames(reply_events(&deltas, usage))), guard)
        }
        Step::HangAfter(deltas) => sse(
            stream::iter(frames(opening_events(&deltas))).chain(stream::pending()),
            guard,
        ),
        Step::CutAfter(deltas) => sse(
            stream::iter(frames(opening_events(&deltas))).chain(stream::once(async {
                // One pending poll lets the server flush the deltas before the cut; a body
                // error closes the connection without flushing what is buffered.
                tokio::task::yield_now().await;
                Err(io::Error::new(io::ErrorKind::ConnectionReset, "cut"))
            })),
            guard,
        ),
        Step::Malformed => {
            let mut events = opening_events(&strings(&["ok"]));
            events.push("data: {\"choices\": [{\"delta\": {\"content\": \"never\"\n\n".into());
            events.push("data: [DONE]\n\n".into());
            sse(stream::iter(frames(events)), guard)
        }
    }
}

/// The response stays "open" for the mock until its body is dropped.
fn sse(
    body: impl futures_util::Stream<Item = Result<Bytes, io::Error>> + 'static,
    guard: GaugeGuard,
) -> HttpResponse {
    let body = body.map(move |frame| {
        let _alive = &guard;
        frame
    });
    HttpResponse::Ok()
        .content_type("text/event-stream")
        .streaming(body)
}

fn chunk(delta: Value, finish_reason: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "mock",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
    });
    format!("data: {chunk}\n\n")
}

/// The role chunk, a comment, then one chunk per delta (one of them with CRLF line ends, as
/// some servers write).
fn opening_events(deltas: &[String]) -> Vec<String> {
    let mut events = vec![
        ": mock upstream says hello\n\n".to_string(),
        chunk(json!({"role": "assistant", "content": ""}), None),
    ];
    for (i, delta) in deltas.iter().enumerate() {
        let event = chunk(json!({ "content": delta }), None);
        events.push(if i == 1 {
            event.replace('\n', "\r\n")
        } else {
            event
        });
    }
    events
}

fn reply_events(deltas: &[String], usage: Option<(u64, u64)>) -> Vec<String> {
    let mut events = opening_events(deltas);
    events.push(chunk(json!({}), Some("stop")));
    if let Some((prompt, completion)) = usage {
        let usage = json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1,
            "model": "mock", "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion},
        });
        events.push(format!("data: {usage}\n\n"));
    }
    events.push("data: [DONE]\n\n".into());
    events
}

/// The chunks of a streamed tool-call reply (see [`Step::tool_calls`]).
pub fn tool_call_chunks(calls: &[(&str, &str, &str)]) -> Vec<Value> {
    let wrap = |delta: Value, finish: Option<&str>| {
        json!({
            "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1,
            "model": "mock",
            "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}],
        })
    };
    let mut chunks = vec![wrap(json!({"role": "assistant", "content": null}), None)];
    for (index, (id, name, arguments)) in calls.iter().enumerate() {
        let split = arguments.len() / 2;
        let (head, tail) = arguments.split_at(split);
        chunks.push(wrap(
            json!({"tool_calls": [{"index": index, "id": id, "type": "function",
                                   "function": {"name": name, "arguments": head}}]}),
            None,
        ));
        chunks.push(wrap(
            json!({"tool_calls": [{"index": index, "function": {"arguments": tail}}]}),
            None,
        ));
    }
    chunks.push(wrap(json!({}), Some("tool_calls")));
    chunks.push(json!({
        "id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1, "model": "mock",
        "choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 9, "total_tokens": 20},
    }));
    chunks
}
