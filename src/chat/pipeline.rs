use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use futures_util::StreamExt;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::actors::metrics::{MetricsAggregator, Outcome, RecordRejection, RecordRequest};
use crate::actors::quota_leases::{quota_retry_after, GiveBackQuota, QuotaLeases, TakeQuota};
use crate::actors::rate_limiter::{Admission, Check, RateLimiter};
use crate::actors::session_registry::{AppendUserMessage, RecordReply, SessionRegistry};
use crate::chat::tool_calls::ToolCallAssembler;
use crate::domain::message::{count_words, ChatMessage, Params, RawJson, ToolCall, Turn};
use crate::domain::{QuotaDay, QuotaReceipt, QuotaTake, SessionId, UserId};
use crate::error::AppError;
use crate::providers::{Model, ModelCatalog, ModelRequest, ProviderEvent, Usage};

/// Where the conversation the model sees comes from.
pub enum HistorySource {
    /// A WebSocket session: the turn joins the session's history, and a finished reply
    /// joins it too.
    Session { id: SessionId, turn: Turn },
    /// A stateless request (OpenAI API): the caller sends the whole conversation.
    Given(Vec<ChatMessage>),
}

pub struct ChatRequest {
    pub user: UserId,
    pub model: String,
    pub history: HistorySource,
    /// Request fields for the model beyond the conversation, passed through as given.
    pub params: Params,
    /// When the request arrived; latency is measured from here.
    pub received: Instant,
    /// Streamed replies (WebSocket, SSE) end with `unavailable` when shutdown begins; a whole
    /// HTTP reply is an ordinary in-flight request and may finish, until the shutdown's
    /// deadline is near (`end_all_replies`).
    pub ends_at_shutdown: bool,
}

/// What the transport relays to its client, in order. After `Done` or `Error` nothing follows.
#[derive(Debug)]
pub enum ChatEvent {
    Delta(String),
    /// One upstream chunk's `delta.tool_calls` fragments, as sent (the whole calls follow,
    /// assembled, on `Done`).
    ToolCallsDelta(RawJson),
    /// Refusal text, streamed like content.
    Refusal(String),
    /// One upstream chunk's `logprobs`, as sent.
    Logprobs(RawJson),
    Done {
        usage: Usage,
        latency_ms: u64,
        cancelled: bool,
        /// As the model gave it (`stop`, `length`, `tool_calls`, `content_filter`, …), or
        /// `cancelled`.
        finish_reason: Arc<str>,
        /// The reply's tool calls, assembled from their fragments.
        tool_calls: Vec<ToolCall>,
        /// The user's quota standing with this chat counted.
        quota: QuotaReceipt,
    },
    Error(AppError),
}

pub use crate::domain::CancelReason;

/// The transport's side of a running chat. Dropping `events` (client gone) stops the chat.
pub struct ChatHandle {
    pub events: mpsc::Receiver<ChatEvent>,
    pub cancel: oneshot::Sender<CancelReason>,
    /// The user's quota standing, sent before the first event when the chat is admitted (with
    /// it counted) or refused with `quota_exceeded` (every unit used or held); never sent
    /// otherwise. For transports that answer before the last event (HTTP headers).
    pub quota: oneshot::Receiver<QuotaReceipt>,
}

pub struct ChatPipeline {
    pub rate_limiter: Addr<RateLimiter>,
    pub quota: Addr<QuotaLeases>,
    pub registry: Addr<SessionRegistry>,
    pub metrics: Addr<MetricsAggregator>,
    pub models: ModelCatalog,
    /// Moves forward at shutdown: the replies it reaches end with `unavailable` and record
    /// themselves, whether or not their transport is still able to pass the word on.
    shutdown: watch::Sender<Stopping>,
    /// Chats started and not yet recorded, so shutdown can wait for their records.
    in_flight: Arc<AtomicUsize>,
}

/// Counts a chat as in flight for as long as it lives (also if its task panics).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<AtomicUsize>) -> InFlight {
        counter.fetch_add(1, Ordering::SeqCst);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How far shutdown has gone: streamed replies end first, whole HTTP replies at the deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stopping {
    No,
    Streams,
    Everything,
}

impl Stopping {
    /// The stage that ends `request`.
    fn ending(request: &ChatRequest) -> Stopping {
        if request.ends_at_shutdown {
            Stopping::Streams
        } else {
            Stopping::Everything
        }
    }
}

/// Resolves once shutdown reaches `stage` (never, if the pipeline is gone).
async fn reached(shutdown: &mut watch::Receiver<Stopping>, stage: Stopping) {
    if shutdown.wait_for(|now| *now >= stage).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Enough room that a fast model never waits on a transport that is keeping up, small enough
/// that a stalled client holds little.
const EVENT_BUFFER: usize = 64;

impl ChatPipeline {
    pub fn new(
        rate_limiter: Addr<RateLimiter>,
        quota: Addr<QuotaLeases>,
        registry: Addr<SessionRegistry>,
        metrics: Addr<MetricsAggregator>,
        models: ModelCatalog,
    ) -> ChatPipeline {
        ChatPipeline {
            rate_limiter,
            quota,
            registry,
            metrics,
            models,
            shutdown: watch::channel(Stopping::No).0,
            in_flight: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Ends every running streamed reply with `unavailable` and refuses new chats.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_if_modified(|now| {
            let changed = *now < Stopping::Streams;
            *now = (*now).max(Stopping::Streams);
            changed
        });
    }

    /// Ends every reply still running, whole HTTP replies too (the shutdown deadline is near).
    pub fn end_all_replies(&self) {
        self.shutdown.send_replace(Stopping::Everything);
    }

    /// Chats started and not yet recorded.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Starts a chat on the current worker. Events arrive on the handle.
    pub fn start(self: &Arc<Self>, request: ChatRequest) -> ChatHandle {
        let (events_tx, events) = mpsc::channel(EVENT_BUFFER);
        let (cancel, cancel_rx) = oneshot::channel();
        let (quota_tx, quota) = oneshot::channel();
        let pipeline = self.clone();
        actix_web::rt::spawn(
            async move { pipeline.run(request, events_tx, cancel_rx, quota_tx).await },
        );
        ChatHandle {
            events,
            cancel,
            quota,
        }
    }

    fn reject(&self, events: &mpsc::Sender<ChatEvent>, err: AppError) {
        self.metrics.do_send(RecordRejection { code: err.code() });
        let _ = events.try_send(ChatEvent::Error(err));
    }

    /// Admission: every refusal here is not usage. `Ok` means a quota unit of `day` was taken;
    /// its receipt (or that of a quota refusal) goes to `receipt_to` first.
    async fn admit(
        &self,
        request: &ChatRequest,
        day: QuotaDay,
        receipt_to: oneshot::Sender<QuotaReceipt>,
    ) -> Result<(Model, QuotaReceipt), AppError> {
        let model = self.models.get(&request.model).cloned().ok_or_else(|| {
            AppError::UnsupportedModel(format!(
                "model {:?} is not served here; available: {}",
                request.model,
                self.models.names().join(", ")
            ))
        })?;
        // Both questions go to the core actors at once: one cross-thread round trip instead of
        // two, which is most of admission's cost. The rate limit still decides first; a unit
        // taken for a chat it refuses goes straight back to the block (no database write).
        let key: Arc<str> = Arc::from(request.user.as_str());
        let (allowed, take) = futures_util::future::join(
            self.rate_limiter.send(Check { key }),
            self.quota.send(TakeQuota {
                user: request.user.clone(),
                day,
            }),
        )
        .await;
        let take = take
            .map_err(|err| AppError::unavailable_mailbox("quota_leases", err))
            .and_then(|take| take);
        let refusal = match allowed {
            Ok(Admission::Allowed) => None,
            Ok(Admission::Limited { retry_after }) => Some(AppError::RateLimited {
                message: "too many chats; slow down".into(),
                retry_after,
            }),
            Err(err) => Some(AppError::unavailable_mailbox("rate_limiter", err)),
        };
        if let Some(refusal) = refusal {
            if matches!(take, Ok(QuotaTake::Taken(_))) {
                self.quota.do_send(GiveBackQuota {
                    user: request.user.clone(),
                    day,
                });
            }
            return Err(refusal);
        }
        let take = take?;
        match take {
            QuotaTake::Taken(standing) => {
                let receipt = QuotaReceipt::new(day, standing);
                let _ = receipt_to.send(receipt);
                Ok((model, receipt))
            }
            QuotaTake::Exceeded { limit } => {
                let _ = receipt_to.send(QuotaReceipt::exhausted(day, limit));
                Err(AppError::QuotaExceeded {
                    message: format!(
                        "daily quota of {limit} chats used up; it resets at 00:00 UTC"
                    ),
                    retry_after: quota_retry_after(),
                })
            }
            QuotaTake::Disabled => Err(AppError::Forbidden("this user is disabled".into())),
        }
    }

    async fn run(
        self: Arc<Self>,
        request: ChatRequest,
        events: mpsc::Sender<ChatEvent>,
        mut cancel: oneshot::Receiver<CancelReason>,
        receipt_to: oneshot::Sender<QuotaReceipt>,
    ) {
        let _in_flight = InFlight::enter(&self.in_flight);
        let mut shutdown = self.shutdown.subscribe();
        if *shutdown.borrow_and_update() > Stopping::No {
            let err =
                AppError::Unavailable("the server is shutting down; reconnect shortly".into());
            return self.reject(&events, err);
        }
        // Read once: a unit taken before 00:00 UTC is accounted (and given back) to that day.
        let day = QuotaDay::today();
        let (model, receipt) = match self.admit(&request, day, receipt_to).await {
            Ok(admitted) => admitted,
            Err(err) => return self.reject(&events, err),
        };
        let started_at_ms = chrono::Utc::now().timestamp_millis();
        let mut run = Run::new(&request, &model, started_at_ms, receipt);

        let (session, messages) = match &request.history {
            HistorySource::Session { id, turn } => {
                let appended = self
                    .registry
                    .send(AppendUserMessage {
                        id: id.clone(),
                        turn: turn.clone(),
                    })
                    .await
                    .map_err(|err| AppError::unavailable_mailbox("session_registry", err))
                    .and_then(|r| r);
                match appended {
                    Ok(history) => (Some(id.clone()), history),
                    Err(err) => {
                        return self.finish(run, &events, Ending::Failed(err), &request, &day)
                    }
                }
            }
            HistorySource::Given(messages) => (None, messages.clone()),
        };
        run.session = session;
        run.estimated_usage.prompt_tokens = count_words(&messages);

        // The client may have cancelled or left, or shutdown begun, while we were admitting.
        let ends_at = Stopping::ending(&request);
        if *shutdown.borrow_and_update() >= ends_at {
            return self.finish(
                run,
                &events,
                Ending::Cancelled(CancelReason::Shutdown),
                &request,
                &day,
            );
        }
        if let Ok(reason) = cancel.try_recv() {
            return self.finish(run, &events, Ending::Cancelled(reason), &request, &day);
        }
        if events.is_closed() {
            return self.finish(run, &events, Ending::ClientGone, &request, &day);
        }

        let deadline = tokio::time::sleep_until(Instant::now() + model.timeout);
        tokio::pin!(deadline);
        let mut stream = model.provider.stream(ModelRequest {
            messages,
            params: request.params.clone(),
        });
        let ending = 'stream: loop {
            tokio::select! {
                biased;
                reason = &mut cancel => match reason {
                    Ok(reason) => break Ending::Cancelled(reason),
                    // The transport dropped its handle without a word: it is gone.
                    Err(_) => break Ending::ClientGone,
                },
                _ = reached(&mut shutdown, ends_at) => break Ending::Cancelled(CancelReason::Shutdown),
                _ = events.closed() => break Ending::ClientGone,
                _ = &mut deadline => break Ending::Failed(AppError::UpstreamTimeout(format!(
                    "model {} did not finish within {} s", model.name, model.timeout.as_secs()
                ))),
                item = stream.next() => match item {
                    Some(Ok(event)) => {
                        let Some(event) = run.on_event(event) else { continue };
                        // A client that stops reading fills the channel; waiting for room must
                        // still honour cancel and the deadline, or the chat (and its upstream
                        // request) would hang with the client.
                        tokio::select! {
                            biased;
                            reason = &mut cancel => break 'stream match reason {
                                Ok(reason) => Ending::Cancelled(reason),
                                Err(_) => Ending::ClientGone,
                            },
                            _ = reached(&mut shutdown, ends_at) => {
                                break 'stream Ending::Cancelled(CancelReason::Shutdown)
                            }
                            _ = &mut deadline => {
                                log::warn!("event=client_stalled model={} deltas={}", model.name, run.deltas);
                                break 'stream Ending::ClientGone;
                            }
                            sent = events.send(event) => if sent.is_err() {
                                break 'stream Ending::ClientGone;
                            },
                        }
                    }
                    Some(Err(err)) => break Ending::Failed(err),
                    None => break Ending::Finished,
                },
            }
        };
        // Dropping the stream here closes any upstream request before the record is written.
        drop(stream);
        if let Ending::Failed(AppError::UpstreamTimeout(_)) = &ending {
            // OpenAI-API chats have no session: "-" keeps the line's shape.
            log::warn!(
                "event=upstream_timeout session={} model={} user={} elapsed_ms={}",
                run.session.as_ref().map(SessionId::as_str).unwrap_or("-"),
                model.name,
                request.user,
                request.received.elapsed().as_millis()
            );
        }
        self.finish(run, &events, ending, &request, &day)
    }

    /// Sends the last frame, gives back the quota when nothing was delivered, appends a good
    /// reply to the session, and records the request: once, whatever happened.
    fn finish(
        &self,
        run: Run,
        events: &mpsc::Sender<ChatEvent>,
        ending: Ending,
        request: &ChatRequest,
        day: &QuotaDay,
    ) {
        let latency_ms = request.received.elapsed().as_millis() as u64;
        let usage = run.reported_usage.unwrap_or(run.estimated_usage);
        let tool_calls = run.tool_calls.finish();
        let done =
            |finish_reason: Arc<str>, cancelled: bool, tool_calls: &[ToolCall]| ChatEvent::Done {
                usage,
                latency_ms,
                cancelled,
                finish_reason,
                tool_calls: tool_calls.to_vec(),
                quota: run.quota,
            };
        let (outcome, last) = match ending {
            Ending::Finished => {
                let reason = run.finish_reason.clone().unwrap_or_else(|| {
                    Arc::from(if tool_calls.is_empty() {
                        "stop"
                    } else {
                        "tool_calls"
                    })
                });
                (Outcome::Ok, Some(done(reason, false, &tool_calls)))
            }
            Ending::Cancelled(CancelReason::Client) => (
                Outcome::Cancelled,
                Some(done(Arc::from("cancelled"), true, &[])),
            ),
            Ending::Cancelled(CancelReason::Shutdown) => (
                Outcome::Error(crate::error::ErrorCode::Unavailable),
                Some(ChatEvent::Error(AppError::Unavailable(
                    "the server is shutting down; reconnect shortly".into(),
                ))),
            ),
            Ending::ClientGone => (Outcome::Cancelled, None),
            Ending::Failed(err) => (Outcome::Error(err.code()), Some(ChatEvent::Error(err))),
        };
        if matches!(outcome, Outcome::Error(_)) && run.deltas == 0 {
            self.quota.do_send(GiveBackQuota {
                user: request.user.clone(),
                day: *day,
            });
        }
        if outcome == Outcome::Ok {
            if let Some(session) = &run.session {
                self.registry.do_send(RecordReply {
                    id: session.clone(),
                    content: Arc::from(run.reply.as_str()),
                    tool_calls,
                    latency_ms,
                });
            }
        }
        if let Some(last) = last {
            // The last frame must not be lost to a momentarily full buffer.
            if let Err(mpsc::error::TrySendError::Full(last)) = events.try_send(last) {
                let events = events.clone();
                actix_web::rt::spawn(async move {
                    let _ = events.send(last).await;
                });
            }
        }
        self.metrics.do_send(RecordRequest {
            id: uuid::Uuid::new_v4(),
            user: request.user.clone(),
            session: run.session,
            model: run.model,
            started_at_ms: run.started_at_ms,
            latency_ms,
            tokens_in: usage.prompt_tokens,
            tokens_out: usage.completion_tokens,
            estimated: run.reported_usage.is_none(),
            outcome,
        });
    }
}

enum Ending {
    Finished,
    Cancelled(CancelReason),
    ClientGone,
    Failed(AppError),
}

/// What is known about an admitted chat while it runs.
struct Run {
    model: Arc<str>,
    session: Option<SessionId>,
    started_at_ms: i64,
    deltas: u64,
    reply: String,
    keep_reply: bool,
    estimated_usage: Usage,
    reported_usage: Option<Usage>,
    finish_reason: Option<Arc<str>>,
    tool_calls: ToolCallAssembler,
    quota: QuotaReceipt,
}

impl Run {
    fn new(request: &ChatRequest, model: &Model, started_at_ms: i64, quota: QuotaReceipt) -> Run {
        Run {
            model: model.name.clone(),
            session: None,
            started_at_ms,
            deltas: 0,
            reply: String::new(),
            keep_reply: matches!(request.history, HistorySource::Session { .. }),
            estimated_usage: Usage::default(),
            reported_usage: None,
            finish_reason: None,
            tool_calls: ToolCallAssembler::default(),
            quota,
        }
    }

    /// Takes in what the model sent; returns what the client is to see of it.
    fn on_event(&mut self, event: ProviderEvent) -> Option<ChatEvent> {
        let relayed = match event {
            ProviderEvent::Delta(text) => {
                if self.keep_reply {
                    self.reply.push_str(&text);
                }
                ChatEvent::Delta(text)
            }
            ProviderEvent::ToolCalls(fragments) => {
                if let Err(err) = self.tool_calls.feed(&fragments) {
                    // Relayed all the same: the client may make more of it than we can.
                    log::warn!(
                        "event=upstream_bad_tool_calls model={} error={err}",
                        self.model
                    );
                }
                ChatEvent::ToolCallsDelta(fragments)
            }
            ProviderEvent::Refusal(text) => ChatEvent::Refusal(text),
            ProviderEvent::Logprobs(logprobs) => return Some(ChatEvent::Logprobs(logprobs)),
            ProviderEvent::Finish(reason) => {
                self.finish_reason = Some(Arc::from(reason));
                return None;
            }
            ProviderEvent::Usage(usage) => {
                self.reported_usage = Some(usage);
                return None;
            }
        };
        self.deltas += 1;
        self.estimated_usage.completion_tokens += 1;
        Some(relayed)
    }
}

/// Used by transports to bound how long they wait for a final frame after cancelling.
pub const CANCEL_GRACE: Duration = Duration::from_secs(5);
