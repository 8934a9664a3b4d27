//! Transport pieces both sockets share: counting what the client has not read yet (the
//! backlog), the upgrade that installs that count, a handle that shuts a socket down from
//! outside its actor, and the progress report the socket watchdog reads.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, ProtocolError};

use crate::actors::live_feed::SocketCutOff;
use crate::actors::socket_watchdog::{Progress, WatchedSocket};
use crate::error::AppError;

/// Upgrades to a WebSocket served by `actor`, returning the response and the counter of
/// bytes the HTTP layer has taken from the actor's outgoing stream.
pub(super) fn start_counted<A>(
    actor: A,
    req: &HttpRequest,
    payload: web::Payload,
    max_frame_bytes: usize,
    consumed: Arc<AtomicU64>,
) -> Result<HttpResponse, AppError>
where
    A: Actor<Context = ws::WebsocketContext<A>> + StreamHandler<Result<ws::Message, ProtocolError>>,
{
    start_watched(actor, req, payload, max_frame_bytes, consumed, None)
}

/// Like `start_counted`, and reports the socket's progress to `watch` for the watchdog.
pub(super) fn start_watched<A>(
    actor: A,
    req: &HttpRequest,
    payload: web::Payload,
    max_frame_bytes: usize,
    consumed: Arc<AtomicU64>,
    watch: Option<Arc<SocketWatch>>,
) -> Result<HttpResponse, AppError>
where
    A: Actor<Context = ws::WebsocketContext<A>> + StreamHandler<Result<ws::Message, ProtocolError>>,
{
    let mut response = ws::handshake(req)
        .map_err(|err| AppError::BadRequest(format!("websocket handshake failed: {err}")))?;
    let codec = actix_http::ws::Codec::new().max_size(max_frame_bytes);
    let body = CountingBody {
        inner: Box::pin(ws::WebsocketContext::with_codec(actor, payload, codec)),
        consumed,
        watch,
    };
    Ok(response.streaming(body))
}

/// Bytes a server text frame of `payload` bytes takes on the wire (servers do not mask). Must
/// be exact: `produced - consumed` is compared against a limit, and any per-frame error
/// accumulates over a long-lived connection.
pub(super) fn wire_len(payload: usize) -> u64 {
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    (payload + header) as u64
}

/// Unacknowledged bytes in the kernel past which a closing connection is taken to be stuck
/// on a client that stopped reading: a reading client keeps far less in flight, and the HTTP
/// layer only holds output back once the kernel's buffer (capped at 128 KiB per socket) is
/// full.
const STUCK_UNSENT_BYTES: u64 = 32 * 1024;

/// Counts what the HTTP layer takes from a WebSocket's outgoing stream. It only takes more
/// while the socket drains, so `produced - consumed` is what waits in memory because the
/// client is not reading.
struct CountingBody<S> {
    inner: std::pin::Pin<Box<S>>,
    consumed: Arc<AtomicU64>,
    watch: Option<Arc<SocketWatch>>,
}

impl<S> Drop for CountingBody<S> {
    fn drop(&mut self) {
        if let Some(watch) = &self.watch {
            // The body ends with the actor's close frame, but the HTTP layer may still hold
            // output it cannot write to a client that stopped reading, and keeps the
            // connection open for it. Such a connection stays watched: the watchdog cuts it
            // once its close has not gone out within `close_flush`.
            if !(watch.actor_has_stopped() && watch.unsent_bytes() >= STUCK_UNSENT_BYTES) {
                watch.finished.store(true, Ordering::Release);
            }
        }
    }
}

impl<S> futures_util::Stream for CountingBody<S>
where
    S: futures_util::Stream<Item = Result<web::Bytes, actix_web::Error>>,
{
    type Item = Result<web::Bytes, actix_web::Error>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        // Polled means the HTTP layer has room and the actor runs (it is polled inside).
        if let Some(watch) = &self.watch {
            watch.stamp(&watch.last_polled_ms);
        }
        let polled = self.inner.as_mut().poll_next(cx);
        if let std::task::Poll::Ready(Some(Ok(bytes))) = &polled {
            self.consumed
                .fetch_add(bytes.len() as u64, Ordering::Relaxed);
        }
        polled
    }
}

/// The descriptor of the TCP connection a request arrived on (recorded at accept).
#[derive(Clone, Copy, Debug)]
pub struct ConnectionFd(pub std::os::fd::RawFd);

/// A handle that can shut a connection's socket down from outside. A WebSocket actor whose
/// client stops reading is frozen (actix runs it only while the socket drains), so it cannot
/// close itself; shutting the socket makes the pending write fail and frees everything.
#[derive(Debug)]
pub struct SocketShutdown(socket2::Socket);

impl SocketShutdown {
    /// Duplicates the descriptor of the connection `req` arrived on.
    pub(super) fn of_request(req: &HttpRequest) -> Option<SocketShutdown> {
        let ConnectionFd(fd) = *req.conn_data::<ConnectionFd>()?;
        // SAFETY: `fd` is the socket of the connection this request is being handled on; the
        // connection stays open at least until its handler returns, so the number cannot name
        // another file here. The duplicate we keep owns its own reference to the socket.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        borrowed
            .try_clone_to_owned()
            .ok()
            .map(|owned| SocketShutdown(socket2::Socket::from(owned)))
    }

    pub fn shutdown(&self) {
        let _ = self.0.shutdown(std::net::Shutdown::Both);
    }

    /// Bytes the kernel holds for the client, not yet acknowledged (0 if it cannot tell).
    fn unsent_bytes(&self) -> u64 {
        use std::os::fd::AsRawFd;
        let mut queued: libc::c_int = 0;
        // SAFETY: TIOCOUTQ on a TCP socket writes one int; the descriptor is ours (a
        // duplicate held by this value) and `queued` outlives the call.
        let rc = unsafe { libc::ioctl(self.0.as_raw_fd(), libc::TIOCOUTQ, &mut queued) };
        if rc == 0 {
            queued.max(0) as u64
        } else {
            0
        }
    }
}

/// A chat socket's progress as the watchdog reads it, written by the transport and the
/// socket's actor: times are milliseconds since `epoch`.
#[derive(Debug)]
pub struct SocketWatch {
    epoch: Instant,
    last_polled_ms: AtomicU64,
    /// `u64::MAX` while the actor runs.
    stopped_at_ms: AtomicU64,
    finished: AtomicBool,
    socket: Option<SocketShutdown>,
}

impl SocketWatch {
    pub(super) fn new(socket: Option<SocketShutdown>) -> SocketWatch {
        SocketWatch {
            epoch: Instant::now(),
            last_polled_ms: AtomicU64::new(0),
            stopped_at_ms: AtomicU64::new(u64::MAX),
            finished: AtomicBool::new(false),
            socket,
        }
    }

    fn now_ms(&self) -> u64 {
        Instant::now().duration_since(self.epoch).as_millis() as u64
    }

    fn stamp(&self, field: &AtomicU64) {
        field.store(self.now_ms(), Ordering::Release);
    }

    /// The socket's actor stopped; its close frame is on its way.
    pub(super) fn actor_stopped(&self) {
        self.stamp(&self.stopped_at_ms);
    }

    fn actor_has_stopped(&self) -> bool {
        self.stopped_at_ms.load(Ordering::Acquire) != u64::MAX
    }

    fn unsent_bytes(&self) -> u64 {
        self.socket.as_ref().map_or(0, SocketShutdown::unsent_bytes)
    }
}

impl WatchedSocket for SocketWatch {
    fn progress(&self) -> Progress {
        let now = self.now_ms();
        let since = |ms: u64| Duration::from_millis(now.saturating_sub(ms));
        let stopped = self.stopped_at_ms.load(Ordering::Acquire);
        Progress {
            idle: since(self.last_polled_ms.load(Ordering::Acquire)),
            stopped_for: (stopped != u64::MAX).then(|| since(stopped)),
            finished: self.finished.load(Ordering::Acquire),
        }
    }

    fn cut_off(&self) {
        if let Some(socket) = &self.socket {
            socket.shutdown();
        }
    }
}

impl SocketCutOff for SocketShutdown {
    fn cut_off(&self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_codec::Encoder;
    use actix_http::ws::{Codec, Message};
    use actix_web::web::BytesMut;

    /// The accounting must match what the codec really writes, or a busy reader would slowly
    /// look like a stalled one.
    #[test]
    fn wire_len_matches_the_encoded_frame() {
        for size in [0, 1, 125, 126, 1000, 65_535, 65_536, 200_000] {
            let mut buf = BytesMut::new();
            Codec::new()
                .encode(Message::Text("x".repeat(size).into()), &mut buf)
                .expect("encode");
            assert_eq!(wire_len(size), buf.len() as u64, "payload {size}");
        }
    }
}
