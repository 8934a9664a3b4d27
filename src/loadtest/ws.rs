//! One chat WebSocket: open it and read the `session` frame, wait for the chat phase, then
//! chat back to back (or, in idle mode, only hold it), answering the server's pings all along.
//! With `--drop-rate`, some replies lose their connection mid-way and are resumed on a new
//! one (see `resume.rs` for how their deltas are checked).

use std::borrow::Cow;
use std::fmt::Write as _;
use std::future::Future;
use std::pin::pin;
use std::time::{Duration, Instant};

use actix_codec::Framed;
use actix_web::web::Bytes;
use awc::error::WsClientError;
use awc::ws::{CloseCode, CloseReason, Codec, Frame, Message};
use awc::BoxedSocket;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;

use super::resume::{resume_frame, DropDice, SeqCheck};
use super::stats::Counters;
use super::{Mode, ThreadContext, CONNECT_TIMEOUT};

type Socket = Framed<BoxedSocket, Codec>;

/// Why a connection stopped being usable; each becomes an error code in the summary.
#[derive(Debug)]
enum Ended {
    /// The server closed it, with its close code when it sent one.
    Closed(Option<u16>),
    /// The bytes were not a valid WebSocket stream.
    Protocol,
    /// A reply (or the opening) took longer than allowed.
    Timeout,
    /// Reopening the connection after a drop failed (the opening's own code).
    Reconnect(Cow<'static, str>),
}

impl Ended {
    fn code(&self) -> Cow<'static, str> {
        match self {
            Ended::Closed(Some(code)) => format!("closed_{code}").into(),
            Ended::Closed(None) => "closed".into(),
            Ended::Protocol => "protocol_error".into(),
            Ended::Timeout => "timeout".into(),
            Ended::Reconnect(code) => format!("reconnect_{code}").into(),
        }
    }
}

/// The fields of a server frame the load test looks at, borrowed from the received bytes
/// (the rest — delta text, usage — is skipped without being copied).
#[derive(Deserialize)]
struct FrameView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
    #[serde(default)]
    retry_after_ms: Option<u64>,
    #[serde(default)]
    cancelled: bool,
    /// `delta`: its number within the reply.
    #[serde(default)]
    seq: Option<u64>,
    /// `session`: the session and whether it was resumed, with the replies it keeps.
    #[serde(borrow, default)]
    session_id: Option<Cow<'a, str>>,
    #[serde(default)]
    resumed: bool,
    #[serde(borrow, default)]
    replies: Vec<KeptReplyView<'a>>,
}

/// An entry of a resumed `session` frame's `replies`.
#[derive(Deserialize)]
struct KeptReplyView<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    state: Option<Cow<'a, str>>,
    #[serde(default)]
    last_seq: u64,
}

/// What the `session` frame of an opened connection said.
#[derive(Debug, Default)]
struct Session {
    id: String,
    resumed: bool,
    /// (reply id, `last_seq`) of the kept replies that already ended.
    ended_replies: Vec<(String, u64)>,
}

impl Session {
    fn from_frame(frame: &FrameView<'_>) -> Session {
        Session {
            id: frame.session_id.as_deref().unwrap_or_default().to_string(),
            resumed: frame.resumed,
            ended_replies: frame
                .replies
                .iter()
                .filter(|r| r.state.as_deref().is_some_and(|s| s != "running"))
                .map(|r| (r.id.to_string(), r.last_seq))
                .collect(),
        }
    }
}

/// Where a connection goes: its `--url` (the next one after each drop) and its session.
struct Link {
    connection: u64,
    target: usize,
    session: Session,
}

/// How far reading a reply got.
enum Step {
    Ended(ReplyEnd),
    /// The delta after which to drop the connection arrived.
    Drop,
}

/// How one reply ended.
#[derive(Debug, PartialEq, Eq)]
enum ReplyEnd {
    Done,
    Cancelled,
    Error {
        code: String,
        retry_after_ms: Option<u64>,
    },
}

enum Next<T> {
    Text(Bytes),
    Until(T),
}

/// Rate-limited chats wait what the server asks, but never longer than this, so a
/// misconfigured limit shows up in the progress line instead of stalling the run.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(1);

/// How long the closing frame may take to go out at the end.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

const CHAT_PREFIX: &str = r#"{"type":"chat","id":""#;

pub(super) async fn drive(connection: u64, ctx: &ThreadContext) {
    let mut link = Link {
        connection,
        target: ctx.plan.target_index(connection),
        session: Session::default(),
    };
    let socket = match open_slotted(&mut link, ctx).await {
        Ok(socket) => {
            ctx.tally.borrow_mut().target(link.target).connected += 1;
            ctx.settled(true);
            socket
        }
        Err(code) => {
            ctx.error(&code);
            ctx.settled(false);
            return;
        }
    };
    let result = match ctx.plan.mode {
        Mode::Idle => {
            let mut socket = socket;
            hold_idle(&mut socket, ctx).await.map(|()| socket)
        }
        _ => chat(socket, &mut link, ctx).await,
    };
    ctx.closed();
    match result {
        Ok(mut socket) => {
            let close = socket.send(Message::Close(Some(CloseReason {
                code: CloseCode::Normal,
                description: None,
            })));
            let _ = actix_web::rt::time::timeout(CLOSE_TIMEOUT, close).await;
        }
        Err(ended) => ctx.error(&ended.code()),
    }
}

/// Opens `link`'s connection, taking one of the thread's handshake slots for it.
async fn open_slotted(link: &mut Link, ctx: &ThreadContext) -> Result<Socket, Cow<'static, str>> {
    // The semaphore is never closed, so acquiring cannot fail.
    let _slot = ctx.connect_slots.acquire().await;
    open(link, ctx).await
}

/// TCP, the upgrade, and the `session` frame, which the server sends first (asking to resume
/// `link`'s session when it has one); the frame's word goes into `link.session`.
async fn open(link: &mut Link, ctx: &ThreadContext) -> Result<Socket, Cow<'static, str>> {
    let mut url = format!(
        "{}/ws?token={}",
        ctx.plan.target(link.target).ws_url,
        query_escape(ctx.plan.token_for(link.connection))
    );
    if !link.session.id.is_empty() {
        let _ = write!(url, "&session_id={}", query_escape(&link.session.id));
    }
    let connecting = ctx.http.ws(url).max_frame_size(1 << 20).connect();
    let mut socket = match actix_web::rt::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Err(_) => return Err("connect_timeout".into()),
        Ok(Err(WsClientError::InvalidResponseStatus(status))) => {
            return Err(format!("handshake_{}", status.as_u16()).into())
        }
        Ok(Err(err)) => {
            ctx.note_once(&format!("connect failed: {err}"));
            return Err("connect_failed".into());
        }
        Ok(Ok((_response, socket))) => socket,
    };
    let mut timer = pin!(actix_web::rt::time::sleep(CONNECT_TIMEOUT));
    loop {
        match next(&mut socket, ctx, &mut timer).await {
            Ok(Next::Text(bytes)) => match serde_json::from_slice::<FrameView>(&bytes) {
                Ok(frame) if frame.kind == "session" => {
                    link.session = Session::from_frame(&frame);
                    return Ok(socket);
                }
                _ => ctx.error("unexpected_frame"),
            },
            Ok(Next::Until(())) => return Err("connect_timeout".into()),
            Err(ended) => return Err(ended.code()),
        }
    }
}

/// Percent-encodes everything but RFC 3986's unreserved characters. JWTs need none of it, but
/// a `--token` is taken as given and must not break the query string.
fn query_escape(value: &str) -> Cow<'_, str> {
    let unreserved = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~');
    if value.bytes().all(unreserved) {
        return Cow::Borrowed(value);
    }
    let mut out = String::with_capacity(value.len() * 3);
    for b in value.bytes() {
        if unreserved(b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    Cow::Owned(out)
}

/// Idle mode: wait for the start, hold the connection for the duration, report it open.
async fn hold_idle(socket: &mut Socket, ctx: &ThreadContext) -> Result<(), Ended> {
    let start = hold(socket, ctx, &mut Box::pin(ctx.started())).await?;
    let deadline = ctx.plan.deadline(start).unwrap_or(start);
    hold(
        socket,
        ctx,
        &mut pin!(actix_web::rt::time::sleep_until(deadline.into())),
    )
    .await?;
    ctx.tally.borrow_mut().open_at_deadline += 1;
    Ok(())
}

/// Chats back to back until the plan says stop; returns the connection it ends on (a drop
/// replaces it).
async fn chat(mut socket: Socket, link: &mut Link, ctx: &ThreadContext) -> Result<Socket, Ended> {
    let plan = &ctx.plan;
    let start = hold(&mut socket, ctx, &mut Box::pin(ctx.started())).await?;
    let deadline = plan.deadline(start);
    // Everything after the id is the same for every chat: encode it once.
    let suffix = format!(
        r#"","model":{},"content":{}}}"#,
        serde_json::Value::from(plan.model.as_str()),
        serde_json::Value::from(plan.content.as_str())
    );
    let mut timer = pin!(actix_web::rt::time::sleep(plan.reply_timeout));
    let mut id = String::with_capacity(20);
    let mut sent = 0u64;
    let mut dice = DropDice::new(link.connection, plan.drop_rate.unwrap_or(0.0));
    while plan.another_chat(sent, deadline) {
        id.clear();
        let _ = write!(id, "{sent}");
        let mut text = String::with_capacity(CHAT_PREFIX.len() + id.len() + suffix.len());
        text.push_str(CHAT_PREFIX);
        text.push_str(&id);
        text.push_str(&suffix);
        let sent_at = Instant::now();
        timer.as_mut().reset((sent_at + plan.reply_timeout).into());
        socket
            .send(Message::Text(text.into()))
            .await
            .map_err(|_| Ended::Closed(None))?;
        sent += 1;
        let drop_after = dice.roll(u64::from(plan.words));
        let mut seqs = SeqCheck::default();
        let end = match reply(&mut socket, ctx, &id, &mut timer, &mut seqs, drop_after).await? {
            Step::Ended(end) => {
                seqs.ended(None);
                end
            }
            Step::Drop => {
                let (resumed, end) = resume(socket, link, ctx, &id, &mut timer, &mut seqs).await?;
                socket = resumed;
                end
            }
        };
        if plan.drop_rate.is_some() {
            let mut tally = ctx.tally.borrow_mut();
            tally.resume.gaps += seqs.gaps;
            tally.resume.duplicates += seqs.duplicates;
        }
        let now = Instant::now();
        ctx.tally.borrow_mut().reply_ended(now);
        match end {
            ReplyEnd::Done => {
                let mut tally = ctx.tally.borrow_mut();
                tally.latencies.record(now - sent_at);
                tally.target(link.target).chats += 1;
                Counters::add(&ctx.counters().chats, 1);
            }
            ReplyEnd::Cancelled => ctx.error("cancelled"),
            ReplyEnd::Error {
                code,
                retry_after_ms,
            } => {
                ctx.error(&code);
                if let Some(ms) = retry_after_ms {
                    let mut until = now + Duration::from_millis(ms).min(MAX_RETRY_WAIT);
                    if let Some(deadline) = deadline {
                        until = until.min(deadline);
                    }
                    hold(
                        &mut socket,
                        ctx,
                        &mut pin!(actix_web::rt::time::sleep_until(until.into())),
                    )
                    .await?;
                }
            }
        }
    }
    Ok(socket)
}

/// Drops `socket` mid-reply the way a network change does (no close frame), reconnects to
/// the next `--url` with the session's id, and asks for the rest of reply `id` after the last
/// `seq` seen. Returns the new connection and how the reply ended; a reply that cannot be
/// resumed ends as an error (`resume_session_lost`, `resume_not_found`, `resume_refused`).
async fn resume<F: Future<Output = ()> + Unpin>(
    socket: Socket,
    link: &mut Link,
    ctx: &ThreadContext,
    id: &str,
    timer: &mut F,
    seqs: &mut SeqCheck,
) -> Result<(Socket, ReplyEnd), Ended> {
    drop(socket);
    let dropped_at = Instant::now();
    ctx.tally.borrow_mut().resume.dropped += 1;
    link.target = (link.target + 1) % ctx.plan.targets.len();
    // No handshake slot: those pace the opening burst, and a reconnect replaces a connection
    // the server just lost (at most one per connection). Queued behind the slots, reconnects
    // at 10 % of ~10k chats/s waited ~360 ms for one (more than the reconnect itself).
    let mut socket = open(link, ctx).await.map_err(Ended::Reconnect)?;
    ctx.tally
        .borrow_mut()
        .reconnects
        .record(dropped_at.elapsed());
    let lost = |code: &str| {
        ctx.tally.borrow_mut().resume.lost += 1;
        ReplyEnd::Error {
            code: code.to_string(),
            retry_after_ms: None,
        }
    };
    if !link.session.resumed {
        // A fresh session: the reply went with the old one. Chatting goes on in this one.
        return Ok((socket, lost("resume_session_lost")));
    }
    let announced_last = link
        .session
        .ended_replies
        .iter()
        .find(|(reply, _)| reply == id)
        .map(|(_, last_seq)| *last_seq);
    socket
        .send(Message::Text(resume_frame(id, seqs.last()).into()))
        .await
        .map_err(|_| Ended::Closed(None))?;
    let end = match reply(&mut socket, ctx, id, timer, seqs, None).await? {
        // The reply is no longer kept.
        Step::Ended(ReplyEnd::Error { code, .. }) if code == "not_found" => {
            return Ok((socket, lost("resume_not_found")))
        }
        // The `resume` frame itself was refused (a server without resumable replies).
        Step::Ended(ReplyEnd::Error { code, .. }) if code == "bad_request" => {
            return Ok((socket, lost("resume_refused")))
        }
        Step::Ended(end) => end,
        // Not asked for: a reply is dropped at most once.
        Step::Drop => ReplyEnd::Error {
            code: "resume_dropped_twice".into(),
            retry_after_ms: None,
        },
    };
    seqs.ended(announced_last);
    ctx.tally.borrow_mut().resume.resumed += 1;
    Ok((socket, end))
}

/// Reads the frames of reply `id` up to its `done` or `error`, counting its deltas and
/// checking their `seq`; stops early once `drop_after` of its deltas have arrived (this
/// connection's share, counted from the reply's start).
async fn reply<F: Future<Output = ()> + Unpin>(
    socket: &mut Socket,
    ctx: &ThreadContext,
    id: &str,
    timer: &mut F,
    seqs: &mut SeqCheck,
    drop_after: Option<u64>,
) -> Result<Step, Ended> {
    let mut deltas = 0u64;
    loop {
        let bytes = match next(socket, ctx, timer).await? {
            Next::Text(bytes) => bytes,
            Next::Until(()) => return Err(Ended::Timeout),
        };
        let Ok(frame) = serde_json::from_slice::<FrameView>(&bytes) else {
            ctx.error("bad_frame");
            continue;
        };
        let ours = frame.id.as_deref() == Some(id);
        match &*frame.kind {
            "delta" if ours => {
                Counters::add(&ctx.counters().deltas, 1);
                seqs.delta(frame.seq);
                deltas += 1;
                if drop_after == Some(deltas) {
                    return Ok(Step::Drop);
                }
            }
            "done" if ours => {
                return Ok(Step::Ended(if frame.cancelled {
                    ReplyEnd::Cancelled
                } else {
                    ReplyEnd::Done
                }))
            }
            // An error without an id is about a frame the server could not read: ours.
            "error" if ours || frame.id.is_none() => {
                return Ok(Step::Ended(ReplyEnd::Error {
                    code: frame.code.as_deref().unwrap_or("error").to_string(),
                    retry_after_ms: frame.retry_after_ms,
                }))
            }
            "pong" => {}
            _ => ctx.error("unexpected_frame"),
        }
    }
}

/// Waits for `until`, answering pings; any text frame meanwhile is unexpected.
async fn hold<F: Future + Unpin>(
    socket: &mut Socket,
    ctx: &ThreadContext,
    until: &mut F,
) -> Result<F::Output, Ended> {
    loop {
        match next(socket, ctx, until).await? {
            Next::Until(out) => return Ok(out),
            Next::Text(_) => ctx.error("unexpected_frame"),
        }
    }
}

/// The next text frame, or `until`'s output if it comes first. Pings are answered here, so
/// every caller keeps the connection alive while it waits.
async fn next<F: Future + Unpin>(
    socket: &mut Socket,
    ctx: &ThreadContext,
    until: &mut F,
) -> Result<Next<F::Output>, Ended> {
    loop {
        let frame = tokio::select! {
            biased;
            frame = socket.next() => frame,
            out = &mut *until => return Ok(Next::Until(out)),
        };
        match frame {
            Some(Ok(Frame::Text(bytes))) => return Ok(Next::Text(bytes)),
            Some(Ok(Frame::Ping(payload))) => socket
                .send(Message::Pong(payload))
                .await
                .map_err(|_| Ended::Closed(None))?,
            Some(Ok(Frame::Pong(_))) => {}
            Some(Ok(Frame::Close(reason))) => {
                return Err(Ended::Closed(reason.map(|r| u16::from(r.code))))
            }
            // chatgate never sends binary or fragmented frames.
            Some(Ok(Frame::Binary(_) | Frame::Continuation(_))) => ctx.error("unexpected_frame"),
            Some(Err(_)) => return Err(Ended::Protocol),
            None => return Err(Ended::Closed(None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_view_reads_every_server_frame_shape() {
        let done: FrameView = serde_json::from_str(
            r#"{"type":"done","id":"7","usage":{"prompt_tokens":2,"completion_tokens":2},"latency_ms":3,"cancelled":false}"#,
        )
        .expect("done");
        assert_eq!(
            (&*done.kind, done.id.as_deref(), done.cancelled),
            ("done", Some("7"), false)
        );
        let error: FrameView = serde_json::from_str(
            r#"{"type":"error","id":"c\"1","code":"rate_limited","message":"slow","retry_after_ms":1234}"#,
        )
        .expect("error");
        assert_eq!(error.id.as_deref(), Some("c\"1"));
        assert_eq!(error.code.as_deref(), Some("rate_limited"));
        assert_eq!(error.retry_after_ms, Some(1234));
        let session: FrameView =
            serde_json::from_str(r#"{"type":"session","session_id":"s","resumed":false}"#)
                .expect("session");
        assert_eq!(session.kind, "session");
        assert!(!Session::from_frame(&session).resumed);
        assert!(serde_json::from_str::<FrameView>(r#"{"id":"x"}"#).is_err());
        let delta: FrameView =
            serde_json::from_str(r#"{"type":"delta","id":"7","content":"w1","seq":3}"#)
                .expect("delta");
        assert_eq!(delta.seq, Some(3));
        let old: FrameView =
            serde_json::from_str(r#"{"type":"delta","id":"7","content":"w1"}"#).expect("delta");
        assert_eq!(old.seq, None, "a server without seq still parses");
    }

    #[test]
    fn a_resumed_session_frame_names_the_replies_that_ended() {
        let frame: FrameView = serde_json::from_str(
            r#"{"type":"session","session_id":"s1","resumed":true,"replies":[
                {"id":"c1","state":"running","last_seq":17},
                {"id":"c2","state":"done","last_seq":9},
                {"id":"c3","state":"cancelled","last_seq":2}]}"#,
        )
        .expect("session");
        let session = Session::from_frame(&frame);
        assert_eq!(session.id, "s1");
        assert!(session.resumed);
        assert_eq!(
            session.ended_replies,
            [("c2".to_string(), 9), ("c3".to_string(), 2)],
            "a running reply's last_seq is not its end"
        );
    }

    #[test]
    fn tokens_are_escaped_only_when_needed() {
        assert!(matches!(
            query_escape("eyJ.a-b_c~"),
            Cow::Borrowed("eyJ.a-b_c~")
        ));
        assert_eq!(query_escape("a&b=c d/é"), "a%26b%3Dc%20d%2F%C3%A9");
    }

    #[test]
    fn chat_frames_are_valid_client_frames() {
        let suffix = format!(
            r#"","model":{},"content":{}}}"#,
            serde_json::Value::from("ec\"ho"),
            serde_json::Value::from("w0 w1\nw2")
        );
        let text = format!("{CHAT_PREFIX}42{suffix}");
        match crate::ws::protocol::ClientFrame::parse(&text) {
            Ok(crate::ws::protocol::ClientFrame::Chat(chat)) => {
                assert_eq!(chat.id.as_str(), "42");
                assert_eq!(chat.model, "ec\"ho");
                assert_eq!(chat.turn.user.map(|m| m.content), Some("w0 w1\nw2".into()));
            }
            other => panic!("{other:?}"),
        }
    }
}
