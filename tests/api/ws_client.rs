//! A WebSocket client for tests, over awc.

// Shared by several test binaries; not each uses every method.
#![allow(dead_code)]

use std::time::Duration;

use actix_codec::Framed;
use actix_http::ws;
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};

use crate::helpers::TestApp;

pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

pub struct WsClient {
    framed: Framed<BoxedSocket, ws::Codec>,
    /// Answer server pings (a well-behaved client); off to test the heartbeat.
    pub auto_pong: bool,
}

#[derive(Debug)]
pub enum Incoming {
    Json(Value),
    Close(Option<u16>),
}

/// The frames of one reply, up to its `done` or `error`.
#[derive(Debug, Default)]
pub struct Reply {
    pub deltas: Vec<String>,
    pub done: Option<Value>,
    pub error: Option<Value>,
}

impl Reply {
    pub fn text(&self) -> String {
        self.deltas.concat()
    }

    pub fn error_code(&self) -> Option<&str> {
        self.error.as_ref().and_then(|e| e["code"].as_str())
    }
}

#[derive(Default)]
pub struct ConnectOptions<'a> {
    pub token: Option<&'a str>,
    pub session_id: Option<&'a str>,
    pub origin: Option<&'a str>,
    /// Defaults to `/ws`.
    pub path: Option<&'a str>,
}

impl<'a> ConnectOptions<'a> {
    pub fn at(mut self, path: &'a str) -> Self {
        self.path = Some(path);
        self
    }
}

/// Connects; `Err(status)` when the server refused the upgrade.
pub async fn connect_with(app: &TestApp, options: ConnectOptions<'_>) -> Result<WsClient, u16> {
    let mut url = format!("{}{}?", app.ws_url, options.path.unwrap_or("/ws"));
    if let Some(token) = options.token {
        url.push_str(&format!("token={token}&"));
    }
    if let Some(session) = options.session_id {
        url.push_str(&format!("session_id={session}&"));
    }
    connect_url(&url, options.origin).await
}

/// Connects to a full WebSocket URL; `Err(status)` when the server refused the upgrade.
pub async fn connect_url(url: &str, origin: Option<&str>) -> Result<WsClient, u16> {
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(10))
        .finish();
    let mut request = client.ws(url).max_frame_size(1 << 20);
    if let Some(origin) = origin {
        request = request.origin(origin);
    }
    match request.connect().await {
        Ok((_response, framed)) => Ok(WsClient {
            framed,
            auto_pong: true,
        }),
        Err(awc::error::WsClientError::InvalidResponseStatus(status)) => Err(status.as_u16()),
        Err(err) => panic!("websocket connect failed: {err}"),
    }
}

impl WsClient {
    /// Connects as `user` and reads the `session` frame; returns the client and session id.
    pub async fn open(app: &TestApp, user: &str) -> (WsClient, String) {
        let token = app.user_token(user);
        let mut client = connect_with(
            app,
            ConnectOptions {
                token: Some(&token),
                ..Default::default()
            },
        )
        .await
        .expect("upgrade");
        let session = client.expect_json().await;
        assert_eq!(session["type"], "session", "{session}");
        let id = session["session_id"]
            .as_str()
            .expect("session_id")
            .to_string();
        (client, id)
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        let text: String = text.into();
        self.framed
            .send(ws::Message::Text(text.into()))
            .await
            .expect("send text");
    }

    pub async fn send_json(&mut self, value: Value) {
        self.send_text(value.to_string()).await;
    }

    pub async fn send_binary(&mut self, data: &'static [u8]) {
        self.framed
            .send(ws::Message::Binary(data.into()))
            .await
            .expect("send binary");
    }

    pub async fn chat(&mut self, id: &str, model: &str, content: &str) {
        self.send_json(json!({"type":"chat","id":id,"model":model,"content":content}))
            .await;
    }

    /// The next JSON frame or the close, within `timeout`.
    pub async fn next_with_timeout(&mut self, timeout: Duration) -> Option<Incoming> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let frame = tokio::time::timeout_at(deadline, self.framed.next())
                .await
                .ok()?;
            match frame {
                None => return Some(Incoming::Close(None)),
                Some(Err(err)) => panic!("websocket protocol error: {err}"),
                Some(Ok(ws::Frame::Text(bytes))) => {
                    let value = serde_json::from_slice(&bytes).expect("server frames are JSON");
                    return Some(Incoming::Json(value));
                }
                Some(Ok(ws::Frame::Close(reason))) => {
                    return Some(Incoming::Close(reason.map(|r| u16::from(r.code))))
                }
                Some(Ok(ws::Frame::Ping(payload))) => {
                    if self.auto_pong {
                        let _ = self.framed.send(ws::Message::Pong(payload)).await;
                    }
                }
                Some(Ok(_)) => {}
            }
        }
    }

    pub async fn next(&mut self) -> Incoming {
        self.next_with_timeout(FRAME_TIMEOUT)
            .await
            .expect("a frame within the timeout")
    }

    pub async fn expect_json(&mut self) -> Value {
        match self.next().await {
            Incoming::Json(value) => value,
            Incoming::Close(code) => panic!("expected a frame, connection closed with {code:?}"),
        }
    }

    pub async fn expect_close(&mut self, timeout: Duration) -> Option<u16> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_with_timeout(left).await {
                Some(Incoming::Close(code)) => return code,
                Some(Incoming::Json(_)) => continue,
                None => panic!("connection not closed within {timeout:?}"),
            }
        }
    }

    /// Reads frames until the reply `id` ends; frames of other ids are a test failure.
    pub async fn reply(&mut self, id: &str) -> Reply {
        let mut replies = self.replies(&[id]).await;
        replies.remove(id).expect("reply")
    }

    /// Reads until every id in `ids` has ended; returns each one's frames.
    pub async fn replies(&mut self, ids: &[&str]) -> std::collections::HashMap<String, Reply> {
        let mut replies: std::collections::HashMap<String, Reply> =
            std::collections::HashMap::new();
        let mut open: std::collections::HashSet<&str> = ids.iter().copied().collect();
        while !open.is_empty() {
            let frame = self.expect_json().await;
            let id = frame["id"]
                .as_str()
                .unwrap_or_else(|| panic!("frame without id: {frame}"))
                .to_string();
            assert!(
                open.contains(id.as_str()),
                "frame for an id that is not running: {frame}"
            );
            let reply = replies.entry(id.clone()).or_default();
            match frame["type"].as_str() {
                Some("delta") => reply
                    .deltas
                    .push(frame["content"].as_str().expect("content").to_string()),
                Some("done") => {
                    reply.done = Some(frame);
                    open.remove(id.as_str());
                }
                Some("error") => {
                    reply.error = Some(frame);
                    open.remove(id.as_str());
                }
                other => panic!("unexpected frame type {other:?}"),
            }
        }
        replies
    }

    pub async fn close(mut self) {
        let _ = self.framed.send(ws::Message::Close(None)).await;
    }
}
