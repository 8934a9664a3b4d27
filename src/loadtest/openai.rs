//! `--openai`: each "connection" is a task sending streamed `POST /v1/chat/completions`
//! requests back to back over a keep-alive connection, reading the SSE reply to `[DONE]`.

use std::borrow::Cow;
use std::time::{Duration, Instant};

use actix_web::web::Bytes;
use awc::http::header;
use futures_util::StreamExt;
use serde::Deserialize;

use super::stats::Counters;
use super::ThreadContext;

/// How one request ended.
#[derive(Debug, PartialEq, Eq)]
enum ChatEnd {
    Done,
    Error {
        code: String,
        retry_after: Option<Duration>,
    },
}

/// Rate-limited requests wait what `Retry-After` asks, but never longer than this.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(1);

/// The most of an error body read to find its code.
const ERROR_BODY_LIMIT: usize = 64 * 1024;

pub(super) async fn drive(connection: u64, ctx: &ThreadContext) {
    // Nothing to open up front: the client's pool opens a connection on the first request.
    let plan = &ctx.plan;
    let target = plan.target_index(connection);
    ctx.tally.borrow_mut().target(target).connected += 1;
    ctx.settled(true);
    let start = ctx.started().await;
    let deadline = plan.deadline(start);
    let url = format!("{}/v1/chat/completions", plan.target(target).base_url);
    let authorization = format!("Bearer {}", plan.token_for(connection));
    let body = Bytes::from(
        serde_json::json!({
            "model": plan.model,
            "messages": [{"role": "user", "content": plan.content}],
            "stream": true,
        })
        .to_string(),
    );
    let mut lines = LineBuffer::default();
    let mut sent = 0u64;
    while plan.another_chat(sent, deadline) {
        sent += 1;
        let sent_at = Instant::now();
        let request = one_chat(ctx, &url, &authorization, body.clone(), &mut lines);
        let end = actix_web::rt::time::timeout(plan.reply_timeout, request).await;
        let now = Instant::now();
        ctx.tally.borrow_mut().reply_ended(now);
        match end {
            Ok(ChatEnd::Done) => {
                let mut tally = ctx.tally.borrow_mut();
                tally.latencies.record(now - sent_at);
                tally.target(target).chats += 1;
                Counters::add(&ctx.counters().chats, 1);
            }
            Ok(ChatEnd::Error { code, retry_after }) => {
                ctx.error(&code);
                if let Some(wait) = retry_after {
                    let mut until = now + wait.min(MAX_RETRY_WAIT);
                    if let Some(deadline) = deadline {
                        until = until.min(deadline);
                    }
                    actix_web::rt::time::sleep_until(until.into()).await;
                }
            }
            // The request is dropped with its connection; the next one opens another.
            Err(_) => ctx.error("timeout"),
        }
    }
    ctx.closed();
}

async fn one_chat(
    ctx: &ThreadContext,
    url: &str,
    authorization: &str,
    body: Bytes,
    lines: &mut LineBuffer,
) -> ChatEnd {
    let sent = ctx
        .http
        .post(url)
        .insert_header((header::AUTHORIZATION, authorization))
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .send_body(body)
        .await;
    let mut response = match sent {
        Ok(response) => response,
        Err(err) => {
            ctx.note_once(&format!("request failed: {err}"));
            return ChatEnd::Error {
                code: "connect_failed".into(),
                retry_after: None,
            };
        }
    };
    let status = response.status();
    if !status.is_success() {
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let body = response
            .body()
            .limit(ERROR_BODY_LIMIT)
            .await
            .unwrap_or_default();
        let code = error_code(&body).unwrap_or_else(|| format!("http_{}", status.as_u16()));
        return ChatEnd::Error { code, retry_after };
    }
    lines.clear();
    let mut done = false;
    let mut failed: Option<String> = None;
    // Read to the end even after `[DONE]`, so the connection goes back to the pool.
    while let Some(chunk) = response.next().await {
        let Ok(chunk) = chunk else {
            return ChatEnd::Error {
                code: "stream_broken".into(),
                retry_after: None,
            };
        };
        lines.extend(&chunk);
        while let Some(line) = lines.next_line() {
            match sse_event(line) {
                SseEvent::Delta => Counters::add(&ctx.counters().deltas, 1),
                SseEvent::Done => done = true,
                SseEvent::Error(code) => failed = Some(code),
                SseEvent::Other => {}
                SseEvent::Malformed => ctx.error("bad_event"),
            }
        }
    }
    match (failed, done) {
        (Some(code), _) => ChatEnd::Error {
            code,
            retry_after: None,
        },
        (None, true) => ChatEnd::Done,
        (None, false) => ChatEnd::Error {
            code: "stream_ended".into(),
            retry_after: None,
        },
    }
}

/// Bytes of an SSE body as they arrive, cut into lines (a line may span chunks).
#[derive(Debug, Default)]
struct LineBuffer {
    buf: Vec<u8>,
    /// Where the unread part starts.
    pos: usize,
}

impl LineBuffer {
    fn clear(&mut self) {
        self.buf.clear();
        self.pos = 0;
    }

    fn extend(&mut self, chunk: &[u8]) {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// The next complete line without its `\n` (or `\r\n`).
    fn next_line(&mut self) -> Option<&[u8]> {
        let rest = &self.buf[self.pos..];
        let end = rest.iter().position(|&b| b == b'\n')?;
        let line = &self.buf[self.pos..self.pos + end];
        self.pos += end + 1;
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum SseEvent {
    /// A chunk carrying some content.
    Delta,
    Done,
    Error(String),
    /// Blank lines, comments, other fields, chunks without content (role, finish reason).
    Other,
    Malformed,
}

#[derive(Deserialize)]
struct ChunkView<'a> {
    #[serde(borrow, default)]
    choices: Vec<ChoiceView<'a>>,
    #[serde(borrow, default)]
    error: Option<ErrorView<'a>>,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(borrow, default)]
    delta: Option<DeltaView<'a>>,
}

#[derive(Deserialize)]
struct DeltaView<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct ErrorBody<'a> {
    #[serde(borrow)]
    error: ErrorView<'a>,
}

#[derive(Deserialize)]
struct ErrorView<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
}

fn sse_event(line: &[u8]) -> SseEvent {
    let Some(data) = line.strip_prefix(b"data:") else {
        return SseEvent::Other;
    };
    let data = data.strip_prefix(b" ").unwrap_or(data);
    if data == b"[DONE]" {
        return SseEvent::Done;
    }
    match serde_json::from_slice::<ChunkView>(data) {
        Ok(ChunkView {
            error: Some(error), ..
        }) => SseEvent::Error(error.code.as_deref().unwrap_or("error").to_string()),
        Ok(chunk) => {
            let has_content = chunk.choices.iter().any(|c| {
                c.delta
                    .as_ref()
                    .and_then(|d| d.content.as_deref())
                    .is_some_and(|s| !s.is_empty())
            });
            if has_content {
                SseEvent::Delta
            } else {
                SseEvent::Other
            }
        }
        Err(_) => SseEvent::Malformed,
    }
}

fn error_code(body: &[u8]) -> Option<String> {
    let parsed: ErrorBody = serde_json::from_slice(body).ok()?;
    parsed.error.code.map(Cow::into_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\"hello\"}}]}\n\n\
        data: {\"choices\":[{\"delta\":{\"content\":\" there\"},\"finish_reason\":null}]}\r\n\r\n\
        : a comment\n\n\
        data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
        data: [DONE]\n\n";

    fn events(chunks: &[&[u8]]) -> Vec<SseEvent> {
        let mut lines = LineBuffer::default();
        let mut out = Vec::new();
        for chunk in chunks {
            lines.extend(chunk);
            while let Some(line) = lines.next_line() {
                match sse_event(line) {
                    SseEvent::Other => {}
                    event => out.push(event),
                }
            }
        }
        out
    }

    #[test]
    fn a_stream_split_anywhere_gives_the_same_events() {
        let whole = events(&[STREAM.as_bytes()]);
        assert_eq!(
            whole,
            vec![SseEvent::Delta, SseEvent::Delta, SseEvent::Done],
            "{whole:?}"
        );
        let bytes = STREAM.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(
                events(&[&bytes[..cut], &bytes[cut..]]),
                whole,
                "cut at {cut}"
            );
        }
        let singles: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(events(&singles), whole);
    }

    #[test]
    fn errors_in_the_stream_and_in_bodies_give_their_code() {
        assert_eq!(
            sse_event(br#"data: {"error":{"code":"upstream_timeout","message":"slow"}}"#),
            SseEvent::Error("upstream_timeout".into())
        );
        assert_eq!(sse_event(b"data: {not json"), SseEvent::Malformed);
        assert_eq!(
            error_code(br#"{"error":{"code":"rate_limited","message":"slow down"}}"#).as_deref(),
            Some("rate_limited")
        );
        assert_eq!(error_code(b"<html>"), None);
    }
}
