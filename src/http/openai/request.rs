//! The `POST /v1/chat/completions` body, parsed into what the chat pipeline takes. Fields of
//! OpenAI's request this gateway does not act on (temperature, max_tokens, …) are accepted and
//! ignored, so stock clients work unchanged.

use serde::Deserialize;
use utoipa::ToSchema;

use crate::chat::message::{ChatMessage, ChatRole};
use crate::error::AppError;

/// OpenAI's request; other fields (temperature, max_tokens, …) are accepted and ignored.
#[derive(Debug, Deserialize, ToSchema)]
pub struct CompletionRequest {
    #[schema(example = "echo")]
    model: String,
    /// At least one.
    messages: Vec<RequestMessage>,
    /// OpenAI clients send `null` for "not streaming" as often as `false`.
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize, ToSchema)]
struct StreamOptions {
    /// Adds a last chunk with the reply's `usage`.
    #[serde(default)]
    include_usage: Option<bool>,
}

#[derive(Debug, Deserialize, ToSchema)]
struct RequestMessage {
    role: Role,
    content: String,
}

#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum Role {
    System,
    User,
    Assistant,
}

/// A request that passed validation.
#[derive(Debug)]
pub struct Completion {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    pub stream: bool,
    pub include_usage: bool,
}

impl CompletionRequest {
    pub fn parse(self) -> Result<Completion, AppError> {
        let model = self.model.trim();
        if model.is_empty() {
            return Err(AppError::BadRequest("`model` must not be empty".into()));
        }
        if self.messages.is_empty() {
            return Err(AppError::BadRequest(
                "`messages` must hold at least one message".into(),
            ));
        }
        let stream = self.stream.unwrap_or(false);
        let messages = self
            .messages
            .into_iter()
            .map(|m| ChatMessage {
                role: match m.role {
                    Role::System => ChatRole::System,
                    Role::User => ChatRole::User,
                    Role::Assistant => ChatRole::Assistant,
                },
                content: m.content.into(),
            })
            .collect();
        Ok(Completion {
            model: model.to_string(),
            messages,
            stream,
            // Usage is only ever a separate chunk of a stream; a full completion always has it.
            include_usage: stream
                && self
                    .stream_options
                    .and_then(|o| o.include_usage)
                    .unwrap_or(false),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<Completion, String> {
        let request: CompletionRequest =
            serde_json::from_value(value).map_err(|err| err.to_string())?;
        request.parse().map_err(|err| {
            assert_eq!(err.code(), ErrorCode::BadRequest);
            err.to_string()
        })
    }

    #[test]
    fn openai_request_becomes_a_conversation() {
        let c = parse(json!({
            "model": "echo",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi there", "name": "ann"},
                {"role": "assistant", "content": "hi"},
            ],
            "temperature": 0.2,
            "max_tokens": 16,
            "stream": null,
        }))
        .expect("valid");
        assert_eq!(c.model, "echo");
        assert_eq!(
            c.messages.iter().map(|m| m.role).collect::<Vec<_>>(),
            [ChatRole::System, ChatRole::User, ChatRole::Assistant]
        );
        assert_eq!(&*c.messages[1].content, "hi there");
        assert!(!c.stream && !c.include_usage);
    }

    #[test]
    fn include_usage_needs_stream() {
        let body = |stream| {
            json!({"model":"m","messages":[{"role":"user","content":"x"}],
                   "stream":stream,"stream_options":{"include_usage":true}})
        };
        assert!(parse(body(true)).expect("valid").include_usage);
        assert!(!parse(body(false)).expect("valid").include_usage);
    }

    #[test]
    fn invalid_requests_are_refused_with_a_reason() {
        for (body, why) in [
            (json!({"messages":[{"role":"user","content":"x"}]}), "model"),
            (
                json!({"model":" ","messages":[{"role":"user","content":"x"}]}),
                "model",
            ),
            (json!({"model":"m","messages":[]}), "messages"),
            (
                json!({"model":"m","messages":[{"role":"tool","content":"x"}]}),
                "tool",
            ),
            (json!({"model":"m","messages":[{"role":"user"}]}), "content"),
            (
                json!({"model":"m","messages":[{"role":"user","content":null}]}),
                "null",
            ),
            (
                json!({"model":"m","messages":[{"role":"user","content":"x"}],"stream":"yes"}),
                "bool",
            ),
        ] {
            let err = parse(body.clone()).expect_err(&body.to_string());
            assert!(err.contains(why), "{body}: {err}");
        }
    }
}
