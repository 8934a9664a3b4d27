//! OpenAI's response objects: `chat.completion` for a whole reply, `chat.completion.chunk`
//! SSE events for a streamed one, and the error event that ends a stream that failed.

use actix_web::web::Bytes;
use serde::Serialize;
use utoipa::ToSchema;

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
    choices: [CompletionChoice; 1],
    usage: UsageBody,
}

#[derive(Serialize, ToSchema)]
struct CompletionChoice {
    index: u32,
    message: AssistantMessage,
    /// Always `null`.
    #[schema(value_type = Option<Object>)]
    logprobs: Option<()>,
    finish_reason: &'static str,
}

#[derive(Serialize, ToSchema)]
struct AssistantMessage {
    role: &'static str,
    content: String,
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
    /// Always `null`.
    #[schema(value_type = Option<Object>)]
    logprobs: Option<()>,
    finish_reason: Option<&'static str>,
}

#[derive(Default, Serialize, ToSchema)]
struct ChunkDelta<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    content: Option<&'a str>,
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

    pub fn completion(&self, content: String, usage: Usage) -> impl Serialize + '_ {
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
                },
                logprobs: None,
                finish_reason: "stop",
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

    /// The end of a good reply: the finish chunk, the usage chunk when asked for, `[DONE]`.
    pub fn finish(&self, usage: Usage) -> Vec<u8> {
        let mut out = self.event(ChunkDelta::default(), Some("stop"));
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

    fn event(&self, delta: ChunkDelta<'_>, finish_reason: Option<&'static str>) -> Vec<u8> {
        let chunk = Chunk {
            choices: vec![ChunkChoice {
                index: 0,
                delta,
                logprobs: None,
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
        let c = serde_json::to_value(meta.completion("hi there".into(), usage())).expect("json");
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
        bytes.extend(meta.finish(usage()));
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
        let events = events(&meta.finish(usage()));
        assert_eq!(events.len(), 2);
        let finish: Value = serde_json::from_str(&events[0]).expect("json");
        assert!(finish.get("usage").is_none());
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
