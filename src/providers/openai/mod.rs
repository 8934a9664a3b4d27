//! A model behind any OpenAI-compatible `/v1/chat/completions` upstream (OpenAI, vLLM,
//! Ollama, llama.cpp's server, other gateways), always streamed.
//!
//! Deadlines: the connect timeout and the time to the first byte of the reply body are per
//! attempt and enforced here; the whole-reply deadline is the pipeline's, which drops the
//! stream (and with it the upstream connection). Retries happen only while nothing has been
//! yielded: for connect errors, 5xx and 429, with backoff, and never past the reply deadline.

mod chunks;
pub mod client;
mod retry;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use actix_web::web::Bytes;
use awc::error::{ConnectError, SendRequestError};
use awc::http::{header, Uri};
use futures_util::{FutureExt, StreamExt};
use rand::Rng;
use serde::Serialize;
use tokio::time::Instant;

use self::chunks::ChunkDecoder;
use self::retry::{AttemptFailure, Retry, RetryPolicy};
use super::sse::SseParser;
use super::{ModelRequest, Provider, ProviderEvent, ProviderStream};
use crate::config::{ModelSettings, Secret};
use crate::domain::message::{ChatMessage, Params};
use crate::error::AppError;

/// How much of a non-2xx body is read to classify it.
const ERROR_BODY_LIMIT: usize = 64 * 1024;
/// A slow error body gets at least this long, even when the first-byte deadline is near.
const ERROR_BODY_GRACE: Duration = Duration::from_secs(1);

pub struct OpenAiProvider {
    upstream: Arc<Upstream>,
}

/// One model's upstream, fixed at startup.
struct Upstream {
    /// chatgate's name for the model, for logs.
    model: Arc<str>,
    url: Uri,
    upstream_model: String,
    api_key: Option<Secret>,
    connect_timeout: Duration,
    first_byte_timeout: Duration,
    reply_timeout: Duration,
    retry: RetryPolicy,
}

impl OpenAiProvider {
    /// `reply_timeout` is the model's whole-reply deadline: no retry is started that could
    /// not finish before it.
    pub fn new(model: &ModelSettings, reply_timeout: Duration) -> Result<OpenAiProvider, AppError> {
        let base = model.base_url.as_deref().unwrap_or_default();
        let url = format!("{}/chat/completions", base.trim_end_matches('/'));
        let url = url
            .parse::<Uri>()
            .ok()
            .filter(|url| url.scheme().is_some() && url.host().is_some())
            .ok_or_else(|| {
                AppError::internal(format!(
                    "model {}: base_url {:?} is not an absolute http(s) URL",
                    model.name,
                    crate::domain::redact::redact_url(base)
                ))
            })?;
        client::install_crypto_provider();
        Ok(OpenAiProvider {
            upstream: Arc::new(Upstream {
                model: Arc::from(model.name.as_str()),
                url,
                upstream_model: model
                    .upstream_model
                    .clone()
                    .unwrap_or_else(|| model.name.clone()),
                api_key: model.api_key.clone(),
                connect_timeout: Duration::from_millis(model.connect_timeout_ms),
                first_byte_timeout: Duration::from_millis(model.first_byte_timeout_ms),
                reply_timeout,
                retry: RetryPolicy {
                    max_attempts: model.max_attempts.max(1),
                    base: Duration::from_millis(model.retry_backoff_ms),
                    max_retry_after: Duration::from_secs(model.max_retry_after_secs),
                },
            }),
        })
    }
}

#[derive(Serialize)]
struct RequestBody<'a> {
    model: &'a str,
    messages: &'a [ChatMessage],
    stream: bool,
    stream_options: StreamOptions,
    /// The client's other fields, as given (callers keep the four above out of it).
    #[serde(flatten)]
    params: &'a Params,
}

#[derive(Serialize)]
struct StreamOptions {
    include_usage: bool,
}

impl Provider for OpenAiProvider {
    fn stream(&self, request: ModelRequest) -> ProviderStream {
        let upstream = self.upstream.clone();
        let body = serde_json::to_vec(&RequestBody {
            model: &upstream.upstream_model,
            messages: &request.messages,
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            params: &request.params,
        });
        let state = match body {
            Ok(body) => State::Connect {
                upstream,
                body: Bytes::from(body),
            },
            Err(err) => State::Failed(AppError::internal(format!(
                "cannot encode the upstream request: {err}"
            ))),
        };
        Box::pin(futures_util::stream::unfold(state, step))
    }
}

/// The stream's progress. Dropping it at any point drops the request in flight, which
/// closes its connection.
enum State {
    Connect {
        upstream: Arc<Upstream>,
        body: Bytes,
    },
    Read(Box<Reader>),
    Failed(AppError),
    Over,
}

type Item = Result<ProviderEvent, AppError>;

async fn step(state: State) -> Option<(Item, State)> {
    let mut reader = match state {
        State::Over => return None,
        State::Failed(err) => return Some((Err(err), State::Over)),
        State::Connect { upstream, body } => match open(upstream, body).await {
            Ok(reader) => Box::new(reader),
            Err(err) => return Some((Err(err), State::Over)),
        },
        State::Read(reader) => reader,
    };
    match reader.next_event().await {
        Some(Ok(event)) => Some((Ok(event), State::Read(reader))),
        Some(Err(err)) => Some((Err(err), State::Over)),
        None => None,
    }
}

/// Sends the request, retrying while that is allowed, until an upstream answers 2xx.
async fn open(upstream: Arc<Upstream>, body: Bytes) -> Result<Reader, AppError> {
    let started = Instant::now();
    let reply_deadline = started + upstream.reply_timeout;
    let mut attempt = 1;
    loop {
        let attempt_started = Instant::now();
        let failure = match send_once(&upstream, body.clone(), attempt_started).await {
            Ok(response) => {
                let first_byte_deadline = attempt_started + upstream.first_byte_timeout;
                return Ok(Reader::new(
                    upstream,
                    response,
                    started,
                    first_byte_deadline,
                ));
            }
            Err(failure) => failure,
        };
        let jitter = rand::rng().random::<f64>();
        let delay = upstream
            .retry
            .delay(attempt, failure.retry, jitter)
            .filter(|delay| Instant::now() + *delay < reply_deadline);
        let Some(delay) = delay else {
            log::warn!(
                "event=upstream_failed model={} attempts={attempt} reason={} code={} elapsed_ms={}",
                upstream.model,
                failure.reason,
                failure.error.code(),
                started.elapsed().as_millis()
            );
            return Err(failure.error);
        };
        log::warn!(
            "event=upstream_retry model={} attempt={attempt} max_attempts={} reason={} \
             delay_ms={} elapsed_ms={}",
            upstream.model,
            upstream.retry.max_attempts,
            failure.reason,
            delay.as_millis(),
            started.elapsed().as_millis()
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

async fn send_once(
    upstream: &Upstream,
    body: Bytes,
    attempt_started: Instant,
) -> Result<awc::ClientResponse, AttemptFailure> {
    let first_byte_deadline = attempt_started + upstream.first_byte_timeout;
    let mut request = client::for_current_thread(upstream.connect_timeout)
        .post(upstream.url.clone())
        .insert_header((header::CONTENT_TYPE, "application/json"))
        .insert_header((header::ACCEPT, "text/event-stream"));
    if let Some(key) = &upstream.api_key {
        request = request.bearer_auth(key.expose());
    }
    let mut response =
        match tokio::time::timeout_at(first_byte_deadline, request.send_body(body)).await {
            Ok(Ok(response)) => response,
            Ok(Err(err)) => return Err(send_failure(upstream, err, attempt_started)),
            Err(_) => return Err(first_byte_timeout(upstream, attempt_started)),
        };
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let wait = retry::retry_after(response.headers(), SystemTime::now());
    let until = first_byte_deadline.max(Instant::now() + ERROR_BODY_GRACE);
    let text = match tokio::time::timeout_at(until, response.body().limit(ERROR_BODY_LIMIT)).await {
        Ok(Ok(bytes)) => String::from_utf8_lossy(&bytes).into_owned(),
        _ => String::new(),
    };
    Err(retry::classify_status(
        status.as_u16(),
        &text,
        wait,
        &upstream.upstream_model,
    ))
}

fn send_failure(upstream: &Upstream, err: SendRequestError, started: Instant) -> AttemptFailure {
    let elapsed_ms = started.elapsed().as_millis();
    let (error, retry) = match &err {
        SendRequestError::Connect(ConnectError::Timeout) => {
            log::warn!(
                "event=upstream_timeout model={} phase=connect elapsed_ms={elapsed_ms}",
                upstream.model
            );
            (
                AppError::UpstreamTimeout(format!(
                    "could not connect to the model's upstream within {} ms",
                    upstream.connect_timeout.as_millis()
                )),
                Retry::Backoff,
            )
        }
        // A write failing on a fresh or pooled connection means the request never reached
        // the model, so it is as safe to repeat as a refused connect.
        SendRequestError::Connect(_) | SendRequestError::Send(_) => (
            AppError::UpstreamError("cannot connect to the model's upstream".into()),
            Retry::Backoff,
        ),
        _ => (
            AppError::UpstreamError("the request to the model's upstream failed".into()),
            Retry::No,
        ),
    };
    AttemptFailure {
        error,
        retry,
        reason: format!("send_error=\"{err}\""),
    }
}

fn first_byte_timeout(upstream: &Upstream, started: Instant) -> AttemptFailure {
    log::warn!(
        "event=upstream_timeout model={} phase=first_byte elapsed_ms={}",
        upstream.model,
        started.elapsed().as_millis()
    );
    AttemptFailure {
        error: AppError::UpstreamTimeout(format!(
            "the model's upstream sent nothing within {} ms",
            upstream.first_byte_timeout.as_millis()
        )),
        // The upstream may be working on it; a second copy would only add load.
        retry: Retry::No,
        reason: "first_byte_timeout".into(),
    }
}

/// Reads a 2xx reply body: SSE events in, provider events out.
struct Reader {
    upstream: Arc<Upstream>,
    body: awc::ClientResponse,
    parser: SseParser,
    decoder: ChunkDecoder,
    pending: VecDeque<ProviderEvent>,
    started: Instant,
    /// Until the first body bytes arrive.
    first_byte_deadline: Option<Instant>,
}

impl Reader {
    fn new(
        upstream: Arc<Upstream>,
        body: awc::ClientResponse,
        started: Instant,
        first_byte_deadline: Instant,
    ) -> Reader {
        Reader {
            upstream,
            body,
            parser: SseParser::default(),
            decoder: ChunkDecoder::default(),
            pending: VecDeque::new(),
            started,
            first_byte_deadline: Some(first_byte_deadline),
        }
    }

    async fn next_event(&mut self) -> Option<Item> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.decoder.done {
                self.release_connection();
                return None;
            }
            let chunk = match self.first_byte_deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, self.body.next()).await {
                    Ok(chunk) => chunk,
                    Err(_) => {
                        return Some(Err(first_byte_timeout(&self.upstream, self.started).error))
                    }
                },
                None => self.body.next().await,
            };
            match chunk {
                Some(Ok(bytes)) => {
                    if !bytes.is_empty() {
                        self.first_byte_deadline = None;
                    }
                    if let Err(err) = self.decode(&bytes) {
                        return Some(Err(err));
                    }
                }
                Some(Err(err)) => return Some(Err(self.broken(&err.to_string()))),
                None if self.decoder.is_complete() => return None,
                None => return Some(Err(self.broken("ended before the reply was complete"))),
            }
        }
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<(), AppError> {
        let events = self.parser.feed(bytes).map_err(|err| {
            log::warn!(
                "event=upstream_bad_sse model={} error={err}",
                self.upstream.model
            );
            AppError::UpstreamError("the model's upstream sent a malformed event stream".into())
        })?;
        for data in events {
            self.decoder
                .decode(&data, &self.upstream.model, &mut self.pending)?;
        }
        Ok(())
    }

    fn broken(&self, why: &str) -> AppError {
        log::warn!(
            "event=upstream_stream_broken model={} elapsed_ms={} error=\"{why}\"",
            self.upstream.model,
            self.started.elapsed().as_millis()
        );
        AppError::UpstreamError("the model's upstream stream broke off mid-reply".into())
    }

    /// The body usually ends in the same read as `[DONE]`; reading its end without waiting
    /// lets the connection go back to the pool instead of being closed.
    fn release_connection(&mut self) {
        for _ in 0..4 {
            match self.body.next().now_or_never() {
                Some(Some(Ok(_))) => continue,
                _ => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProviderKind;

    fn settings(base_url: Option<&str>) -> ModelSettings {
        ModelSettings {
            name: "small".into(),
            provider: ProviderKind::OpenAi,
            base_url: base_url.map(str::to_string),
            ..ModelSettings::echo()
        }
    }

    #[test]
    fn completions_url_is_built_from_the_base_url() {
        for base in ["http://127.0.0.1:9000/v1", "http://127.0.0.1:9000/v1/"] {
            let provider =
                OpenAiProvider::new(&settings(Some(base)), Duration::from_secs(5)).expect("valid");
            assert_eq!(
                provider.upstream.url.to_string(),
                "http://127.0.0.1:9000/v1/chat/completions"
            );
            assert_eq!(provider.upstream.upstream_model, "small");
        }
    }

    #[test]
    fn request_body_carries_messages_and_params_verbatim() {
        let raw = |text: &str| {
            crate::domain::message::RawJson(
                serde_json::value::RawValue::from_string(text.into()).expect("json"),
            )
        };
        let message = ChatMessage::parse(raw(
            r#"{"role":"user","content":[{"type":"text","text":"hi"}],"name":"ann"}"#,
        ))
        .expect("valid");
        let mut params = Params::new();
        params.insert("temperature".into(), raw("0.30000000000000004"));
        params.insert("seed".into(), raw("18446744073709551616"));
        let body = serde_json::to_string(&RequestBody {
            model: "up",
            messages: &[message],
            stream: true,
            stream_options: StreamOptions {
                include_usage: true,
            },
            params: &params,
        })
        .expect("json");
        assert_eq!(
            body,
            r#"{"model":"up","messages":[{"role":"user","content":[{"type":"text","text":"hi"}],"name":"ann"}],"stream":true,"stream_options":{"include_usage":true},"seed":18446744073709551616,"temperature":0.30000000000000004}"#
        );
    }

    #[test]
    fn base_url_must_be_absolute() {
        for base in [None, Some(""), Some("/v1"), Some("not a url")] {
            assert!(
                OpenAiProvider::new(&settings(base), Duration::from_secs(5)).is_err(),
                "{base:?}"
            );
        }
    }
}
