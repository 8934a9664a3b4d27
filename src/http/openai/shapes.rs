//! OpenAI's response objects: `chat.completion` for a whole reply, `chat.completion.chunk`
//! SSE events for a streamed one, and the error event that ends a stream that failed.

use actix_web::web::Bytes;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::message::{RawJson, ToolCall};
use crate::error::AppError;
use crate::providers::Usage;

/// What every object of one reply shares.
pub struct ReplyMeta {
    id: String,
    created: i64,
    model: String,
    include_usage: bool,
}

#[derive(Serialize, ToSchema)]
struct UsageBody {
    prompt_tokens: u64,
    completion_tokens: u64,
    total_tokens: u64,
}

impl From<Usage> for UsageBody {
    fn from(usage: Usage) -> UsageBody {
        UsageBody {
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            total_tokens: usage.prompt_tokens + usage.completion_tokens,
        }
    }
}

/// A whole reply (`"object": "chat.completion"`).
#[derive(Serialize, ToSchema)]
#[schema(as = ChatCompletion)]
pub struct Completion<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: [CompletionChoice<'a>; 1],
    usage: UsageBody,
}

#[derive(Serialize, ToSchema)]
struct CompletionChoice<'a> {
    index: u32,
    message: AssistantMessage<'a>,
    /// The upstream's token log probabilities when it sent them (`logprobs: true`), else
    /// `null`.
    #[schema(value_type = Option<Object>)]
    logprobs: Option<Logprobs>,
    /// As the model gave it: `stop`, `length`, `tool_calls`, `content_filter`.
    finish_reason: &'a str,
}

#[derive(Serialize, ToSchema)]
struct AssistantMessage<'a> {
    role: &'static str,
    /// `null` when the reply is only tool calls.
    content: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<String>,
    /// The tool calls the model made, as the upstream sent them.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    #[schema(value_type = Vec<Object>)]
    tool_calls: &'a [ToolCall],
}

/// A streamed reply's `logprobs`, gathered into one object for a whole reply. The entries
/// themselves stay as the upstream wrote them.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct Logprobs {
    #[serde(default)]
    content: Option<Vec<RawJson>>,
    #[serde(default)]
    refusal: Option<Vec<RawJson>>,
}

impl Logprobs {
    /// Adds one chunk's `logprobs`; one that is not of OpenAI's shape is skipped (and logged).
    pub fn add(&mut self, chunk: &RawJson) {
        let chunk: Logprobs = match serde_json::from_str(chunk.get()) {
            Ok(chunk) => chunk,
            Err(err) => {
                log::warn!("event=upstream_bad_logprobs error={err}");
                return;
            }
        };
        for (all, more) in [
            (&mut self.content, chunk.content),
            (&mut self.refusal, chunk.refusal),
        ] {
            if let Some(more) = more {
                all.get_or_insert_with(Vec::new).extend(more);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.content.is_none() && self.refusal.is_none()
    }
}

/// What a whole reply gathers from its events before `Done`.
#[derive(Default)]
pub struct WholeReply {
    pub content: String,
    pub refusal: Option<String>,
    pub logprobs: Logprobs,
}

/// One server-sent event of a streamed reply (`"object": "chat.completion.chunk"`), sent as
/// `data: <json>`; the stream ends with `data: [DONE]`.
#[derive(Serialize, ToSchema)]
#[schema(as = ChatCompletionChunk)]
pub struct Chunk<'a> {
    id: &'a str,
    object: &'static str,
    created: i64,
    model: &'a str,
    choices: Vec<ChunkChoice<'a>>,
    /// With `include_usage`, OpenAI sends `"usage": null` on every chunk but the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<UsageBody>)]
    usage: Option<Option<UsageBody>>,
}

#[derive(Serialize, ToSchema)]
struct ChunkChoice<'a> {
    index: u32,
    delta: ChunkDelta<'a>,
    /// The upstream's `logprobs` for this chunk, as sent, else `null`.
    #[schema(value_type = Option<Object>)]
    logprobs: Option<&'a RawJson>,
    finish_reason: Option<&'a str>,
}

#[derive(Default, Serialize, ToSchema)]
struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    refusal: Option<&'a str>,
    /// Tool-call fragments (`index`, then `id`, `type`, `function.name` and pieces of
    /// `function.arguments`), as the upstream sent them.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    tool_calls: Option<&'a RawJson>,
}

const DONE: &[u8] = b"data: [DONE]\n\n";

impl ReplyMeta {
    pub fn new(model: &str, include_usage: bool) -> ReplyMeta {
        ReplyMeta {
            id: format!("chatcmpl-{}", uuid::Uuid::new_v4().simple()),
            created: chrono::Utc::now().timestamp(),
            model: model.to_string(),
            include_usage,
        }
    }

    pub fn completion<'a>(
        &'a self,
        reply: WholeReply,
        usage: Usage,
        finish_reason: &'a str,
        tool_calls: &'a [ToolCall],
    ) -> impl Serialize + 'a {
        let content = (!reply.content.is_empty() || tool_calls.is_empty()).then_some(reply.content);
        Completion {
            id: &self.id,
            object: "chat.completion",
            created: self.created,
            model: &self.model,
            choices: [CompletionChoice {
                index: 0,
                message: AssistantMessage {
                    role: "assistant",
                    content,
                    refusal: reply.refusal,
                    tool_calls,
                },
                logprobs: (!reply.logprobs.is_empty()).then_some(reply.logprobs),
                finish_reason,
            }],
            usage: usage.into(),
        }
    }

    /// The first event of a stream: the assistant role with empty content, as OpenAI sends.
    pub fn opening(&self) -> Vec<u8> {
        self.event(
            ChunkDelta {
                role: Some("assistant"),
                content: Some(""),
                ..ChunkDelta::default()
            },
            None,
        )
    }

    pub fn delta(&self, content: &str) -> Vec<u8> {
        self.event(
            ChunkDelta {
                content: Some(content),
                ..ChunkDelta::default()
            },
            None,
        )
    }

    pub fn refusal(&self, refusal: &str) -> Vec<u8> {
        self.event(
            ChunkDelta {
                refusal: Some(refusal),
                ..ChunkDelta::default()
            },
            None,
        )
    }

    pub fn tool_calls(&self, fragments: &RawJson) -> Vec<u8> {
        self.event(
            ChunkDelta {
                tool_calls: Some(fragments),
                ..ChunkDelta::default()
            },
            None,
        )
    }

    pub fn logprobs(&self, logprobs: &RawJson) -> Vec<u8> {
        self.choice_event(ChunkDelta::default(), Some(logprobs), None)
    }

    /// The end of a good reply: the finish chunk, the usage chunk when asked for, `[DONE]`.
    pub fn finish(&self, usage: Usage, finish_reason: &str) -> Vec<u8> {
        let mut out = self.event(ChunkDelta::default(), Some(finish_reason));
        if self.include_usage {
            let chunk = Chunk {
                choices: Vec::new(),
                usage: Some(Some(usage.into())),
                ..self.chunk()
            };
            push_event(&mut out, &chunk);
        }
        out.extend_from_slice(DONE);
        out
    }

    fn chunk(&self) -> Chunk<'_> {
        Chunk {
            id: &self.id,
            object: "chat.completion.chunk",
            created: self.created,
            model: &self.model,
            choices: Vec::new(),
            usage: self.include_usage.then_some(None),
        }
    }

    fn event(&self, delta: ChunkDelta<'_>, finish_reason: Option<&str>) -> Vec<u8> {
        self.choice_event(delta, None, finish_reason)
    }

    fn choice_event(
        &self,
        delta: ChunkDelta<'_>,
        logprobs: Option<&RawJson>,
        finish_reason: Option<&str>,
    ) -> Vec<u8> {
        let chunk = Chunk {
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs,
                finish_reason,
            }],
            ..self.chunk()
        };
        let mut out = Vec::new();
        push_event(&mut out, &chunk);
        out
    }
}

/// The event that ends a stream that failed after it began; no `[DONE]` follows.
pub fn error_event(err: &AppError) -> Bytes {
    if let AppError::Internal(cause) = err {
        log::error!("event=internal_error cause={cause:?}");
    }
    let mut out = Vec::new();
    push_event(&mut out, &err.body());
    Bytes::from(out)
}

fn push_event(out: &mut Vec<u8>, value: &impl Serialize) {
    out.extend_from_slice(b"data: ");
    // Serializing these plain structs cannot fail; an empty object keeps the stream valid.
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.extend_from_slice(b"{}");
    }
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::sse::SseParser;
    use serde_json::{json, Value};

    fn events(bytes: &[u8]) -> Vec<String> {
        SseParser::default().feed(bytes).expect("valid SSE")
    }

    fn usage() -> Usage {
        Usage {
            prompt_tokens: 3,
            completion_tokens: 2,
        }
    }

    #[test]
    fn completion_has_openai_shape() {
        let meta = ReplyMeta::new("echo", false);
        let reply = WholeReply {
            content: "hi there".into(),
            ..WholeReply::default()
        };
        let c = serde_json::to_value(meta.completion(reply, usage(), "stop", &[])).expect("json");
        assert!(c["id"].as_str().expect("id").starts_with("chatcmpl-"));
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["model"], "echo");
        assert!(c["created"].is_i64());
        assert_eq!(
            c["choices"],
            json!([{"index":0,"message":{"role":"assistant","content":"hi there"},
                    "logprobs":null,"finish_reason":"stop"}])
        );
        assert_eq!(
            c["usage"],
            json!({"prompt_tokens":3,"completion_tokens":2,"total_tokens":5})
        );
    }

    #[test]
    fn stream_events_have_openai_shape() {
        let meta = ReplyMeta::new("echo", true);
        let mut bytes = meta.opening();
        bytes.extend(meta.delta("hi"));
        bytes.extend(meta.finish(usage(), "stop"));
        let events = events(&bytes);
        assert_eq!(events.len(), 5, "{events:?}");
        assert_eq!(events[4], "[DONE]");
        let chunks: Vec<Value> = events[..4]
            .iter()
            .map(|e| serde_json::from_str(e).expect("json"))
            .collect();
        for chunk in &chunks {
            assert_eq!(chunk["object"], "chat.completion.chunk");
            assert_eq!(chunk["id"], chunks[0]["id"]);
        }
        assert_eq!(
            chunks[0]["choices"][0]["delta"],
            json!({"role":"assistant","content":""})
        );
        assert_eq!(chunks[1]["choices"][0]["delta"], json!({"content":"hi"}));
        assert_eq!(chunks[1]["usage"], Value::Null);
        assert_eq!(chunks[2]["choices"][0]["finish_reason"], "stop");
        assert_eq!(chunks[3]["choices"], json!([]));
        assert_eq!(chunks[3]["usage"]["total_tokens"], 5);
    }

    #[test]
    fn without_include_usage_there_is_no_usage_chunk() {
        let meta = ReplyMeta::new("echo", false);
        let events = events(&meta.finish(usage(), "stop"));
        assert_eq!(events.len(), 2);
        let finish: Value = serde_json::from_str(&events[0]).expect("json");
        assert!(finish.get("usage").is_none());
    }

    fn raw(text: &str) -> RawJson {
        RawJson(serde_json::value::RawValue::from_string(text.into()).expect("json"))
    }

    #[test]
    fn tool_calls_refusal_and_logprobs_keep_the_upstreams_shape() {
        let meta = ReplyMeta::new("m", false);
        let fragments = raw(
            r#"[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\": 1.50}"}}]"#,
        );
        let mut bytes = meta.tool_calls(&fragments);
        bytes.extend(meta.refusal("no"));
        let lp = raw(
            r#"{"content":[{"token":"x","logprob":-0.25,"bytes":[120],"top_logprobs":[]}],"refusal":null}"#,
        );
        bytes.extend(meta.logprobs(&lp));
        bytes.extend(meta.finish(usage(), "tool_calls"));
        let events = events(&bytes);
        assert!(events[0].contains(r#""tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\": 1.50}"}}]"#), "{}", events[0]);
        let refusal: Value = serde_json::from_str(&events[1]).expect("json");
        assert_eq!(refusal["choices"][0]["delta"], json!({"refusal":"no"}));
        assert!(events[2].contains(r#""logprobs":{"content":[{"token":"x","logprob":-0.25,"bytes":[120],"top_logprobs":[]}],"refusal":null}"#), "{}", events[2]);
        let finish: Value = serde_json::from_str(&events[3]).expect("json");
        assert_eq!(finish["choices"][0]["finish_reason"], "tool_calls");

        let call = ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            ..ToolCall::default()
        };
        let mut reply = WholeReply::default();
        reply.logprobs.add(&lp);
        reply.logprobs.add(&lp);
        let whole = serde_json::to_value(meta.completion(reply, usage(), "tool_calls", &[call]))
            .expect("json");
        let choice = &whole["choices"][0];
        assert_eq!(choice["message"]["content"], Value::Null);
        assert_eq!(choice["message"]["tool_calls"][0]["id"], "call_1");
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(
            choice["logprobs"]["content"].as_array().map(Vec::len),
            Some(2)
        );
    }

    #[test]
    fn error_event_carries_code_and_message() {
        let bytes = error_event(&AppError::UpstreamError("broke".into()));
        let events = events(&bytes);
        let value: Value = serde_json::from_str(&events[0]).expect("json");
        assert_eq!(
            value,
            json!({"error":{"code":"upstream_error","message":"broke"}})
        );
    }
}
