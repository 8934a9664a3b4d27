//! Relays a running chat to an HTTP client: whole (`chat.completion`) or streamed (SSE).
//! Dropping either (client gone) drops the chat's events receiver, which stops the chat and
//! its upstream request.

use std::convert::Infallible;

use actix_web::http::header;
use actix_web::web::Bytes;
use actix_web::{HttpResponse, HttpResponseBuilder, ResponseError};
use tokio::sync::{mpsc, oneshot, watch};

use super::shapes::{error_event, ReplyMeta, WholeReply};
use crate::chat::{CancelReason, ChatEvent, ChatHandle};
use crate::domain::QuotaReceipt;
use crate::error::AppError;

/// The quota receipt's headers: the numbers of the WebSocket `done` frame's `quota`.
pub const QUOTA_USED: &str = "x-chatgate-quota-used";
pub const QUOTA_LIMIT: &str = "x-chatgate-quota-limit";
/// RFC 3339 in UTC, like `resets_at`: `2026-12-01T00:00:00Z`.
pub const QUOTA_RESET: &str = "x-chatgate-quota-reset";

fn receipt_headers(receipt: QuotaReceipt) -> [(&'static str, String); 3] {
    [
        (QUOTA_USED, receipt.used.to_string()),
        (QUOTA_LIMIT, receipt.limit.to_string()),
        (QUOTA_RESET, receipt.resets_at_text()),
    ]
}

fn with_receipt(builder: &mut HttpResponseBuilder, receipt: Option<QuotaReceipt>) {
    for header in receipt.map(receipt_headers).into_iter().flatten() {
        builder.insert_header(header);
    }
}

/// The error response of a chat refused or failed before its reply began; a quota refusal
/// carries the receipt (every unit used or held) beside `Retry-After`.
fn refused(err: AppError, events: &mut ChatEvents) -> Result<HttpResponse, AppError> {
    if !matches!(err, AppError::QuotaExceeded { .. }) {
        return Err(err);
    }
    let mut response = err.error_response();
    if let Some(receipt) = events.receipt() {
        let headers = response.headers_mut();
        for (name, value) in receipt_headers(receipt) {
            // Digits and an RFC 3339 time: always a valid header value.
            if let Ok(value) = header::HeaderValue::from_str(&value) {
                headers.insert(header::HeaderName::from_static(name), value);
            }
        }
    }
    Ok(response)
}

/// A chat's events, and the shutdown signal that ends streamed replies.
pub struct ChatEvents {
    events: mpsc::Receiver<ChatEvent>,
    /// Held for the chat's whole life: the pipeline reads a dropped sender as "client gone".
    cancel: Option<oneshot::Sender<CancelReason>>,
    shutdown: Option<watch::Receiver<bool>>,
    quota: oneshot::Receiver<QuotaReceipt>,
}

impl ChatEvents {
    /// `shutdown` is `None` for replies that may run to their end during a shutdown.
    pub fn new(handle: ChatHandle, shutdown: Option<watch::Receiver<bool>>) -> ChatEvents {
        ChatEvents {
            events: handle.events,
            cancel: Some(handle.cancel),
            shutdown,
            quota: handle.quota,
        }
    }

    /// The chat's quota receipt. The pipeline sends it before its first event, so once an
    /// event has arrived it is there if there is one.
    fn receipt(&mut self) -> Option<QuotaReceipt> {
        self.quota.try_recv().ok()
    }

    /// The next event; `None` only if the pipeline vanished without a last event.
    async fn next(&mut self) -> Option<ChatEvent> {
        loop {
            let Some(shutdown) = self.shutdown.as_mut() else {
                return self.events.recv().await;
            };
            let stopping = tokio::select! {
                event = self.events.recv() => return event,
                stopping = async { shutdown.wait_for(|stop| *stop).await.is_ok() } => stopping,
            };
            // Shutdown: the pipeline ends the reply with `unavailable`, relayed like any other
            // last event. (Not `stopping`: the signal's sender is gone, nothing to watch.)
            if stopping {
                if let Some(cancel) = self.cancel.take() {
                    let _ = cancel.send(CancelReason::Shutdown);
                }
            }
            self.shutdown = None;
        }
    }
}

fn vanished() -> AppError {
    AppError::internal("the chat pipeline ended without a last event")
}

/// Waits for the whole reply; any failure becomes the HTTP error response.
pub async fn complete(mut events: ChatEvents, meta: ReplyMeta) -> Result<HttpResponse, AppError> {
    let mut reply = WholeReply::default();
    loop {
        match events.next().await.ok_or_else(vanished)? {
            ChatEvent::Delta(text) => reply.content.push_str(&text),
            ChatEvent::Refusal(text) => reply
                .refusal
                .get_or_insert_with(String::new)
                .push_str(&text),
            ChatEvent::Logprobs(logprobs) => reply.logprobs.add(&logprobs),
            // Assembled on `Done`.
            ChatEvent::ToolCallsDelta(_) => {}
            ChatEvent::Done {
                usage,
                finish_reason,
                tool_calls,
                quota,
                ..
            } => {
                let body = meta.completion(reply, usage, &finish_reason, &tool_calls);
                let mut response = HttpResponse::Ok();
                with_receipt(&mut response, Some(quota));
                return Ok(response.json(body));
            }
            ChatEvent::Error(err) => return refused(err, &mut events),
        }
    }
}

/// Streams the reply as SSE. The status line waits for the first event, so a chat refused or
/// failed before its first delta is a plain HTTP error with the right status.
pub async fn stream(mut events: ChatEvents, meta: ReplyMeta) -> Result<HttpResponse, AppError> {
    let first = match events.next().await.ok_or_else(vanished)? {
        ChatEvent::Error(err) => return refused(err, &mut events),
        event => event,
    };
    let receipt = events.receipt();
    let mut opening = meta.opening();
    let (frame, ended) = frame(&meta, first);
    opening.extend_from_slice(&frame);
    let body = SseBody {
        events,
        meta,
        opening: Some(Bytes::from(opening)),
        ended,
    };
    let mut response = HttpResponse::Ok();
    response
        .content_type("text/event-stream")
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        // Reverse proxies (nginx) would otherwise hold deltas back in their buffers.
        .insert_header(("x-accel-buffering", "no"));
    // Known at admission, so it goes out with the status line, before the first delta.
    with_receipt(&mut response, receipt);
    Ok(response.streaming(futures_util::stream::unfold(body, SseBody::next_frame)))
}

struct SseBody {
    events: ChatEvents,
    meta: ReplyMeta,
    opening: Option<Bytes>,
    ended: bool,
}

impl SseBody {
    async fn next_frame(mut self) -> Option<(Result<Bytes, Infallible>, SseBody)> {
        if let Some(opening) = self.opening.take() {
            return Some((Ok(opening), self));
        }
        if self.ended {
            return None;
        }
        let event = event_or(self.events.next().await);
        let (frame, ended) = frame(&self.meta, event);
        self.ended = ended;
        Some((Ok(frame), self))
    }
}

fn event_or(event: Option<ChatEvent>) -> ChatEvent {
    event.unwrap_or_else(|| ChatEvent::Error(vanished()))
}

/// The SSE bytes for one event, and whether it was the last.
fn frame(meta: &ReplyMeta, event: ChatEvent) -> (Bytes, bool) {
    match event {
        ChatEvent::Delta(text) => (Bytes::from(meta.delta(&text)), false),
        ChatEvent::ToolCallsDelta(fragments) => (Bytes::from(meta.tool_calls(&fragments)), false),
        ChatEvent::Refusal(text) => (Bytes::from(meta.refusal(&text)), false),
        ChatEvent::Logprobs(logprobs) => (Bytes::from(meta.logprobs(&logprobs)), false),
        ChatEvent::Done {
            usage,
            finish_reason,
            ..
        } => (Bytes::from(meta.finish(usage, &finish_reason)), true),
        ChatEvent::Error(err) => (error_event(&err), true),
    }
}
