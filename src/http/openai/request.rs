//! The `POST /v1/chat/completions` body, parsed into what the chat pipeline takes. chatgate
//! reads `model`, `messages`, `stream` and `stream_options`; every other field is kept as it
//! was sent and reaches an `openai` upstream unchanged, so new OpenAI fields work without a
//! release. Messages are read only for their role and text; each travels as sent.

use std::fmt;

use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use utoipa::ToSchema;

use crate::domain::message::{ChatMessage, Params, RawJson};
use crate::error::AppError;

/// OpenAI's Chat Completions request: every field is accepted. Fields other than `model`,
/// `messages`, `stream` and `stream_options` (`temperature`, `max_tokens`, `tools`,
/// `tool_choice`, `response_format`, `logprobs`, `seed`, …, and fields chatgate does not
/// know) are passed to `openai` upstreams unchanged; `echo` ignores them.
#[derive(Debug, ToSchema)]
pub struct CompletionRequest {
    #[schema(example = "echo")]
    model: String,
    /// At least one. Each has a `role` (`system`, `developer`, `user`, `assistant`, `tool`) and
    /// a `content` that is a string or an array of content parts (`text`, `image_url`,
    /// `input_audio`, `file`, …); `assistant` may carry `tool_calls` instead of content, `tool`
    /// needs a `tool_call_id`. Every message is passed upstream as given.
    #[schema(value_type = Vec<Object>, min_items = 1)]
    messages: Vec<RawJson>,
    /// OpenAI clients send `null` for "not streaming" as often as `false`.
    #[schema(nullable)]
    stream: Option<bool>,
    #[schema(nullable)]
    stream_options: Option<StreamOptions>,
    /// Every other field of the request, passed through as given.
    #[serde(flatten)]
    #[schema(value_type = std::collections::BTreeMap<String, serde_json::Value>)]
    extra: Params,
}

#[derive(Debug, Deserialize, ToSchema)]
struct StreamOptions {
    /// Adds a last chunk with the reply's `usage`.
    #[serde(default)]
    include_usage: Option<bool>,
}

/// By hand, because `#[serde(flatten)]` buffers values and cannot keep them as raw JSON.
impl<'de> Deserialize<'de> for CompletionRequest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RequestVisitor;

        impl<'de> Visitor<'de> for RequestVisitor {
            type Value = CompletionRequest;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object (a chat completions request)")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut model = None;
                let mut messages = None;
                let mut stream = None;
                let mut stream_options = None;
                let mut extra = Params::new();
                while let Some(key) = map.next_key::<String>()? {
                    match key.as_str() {
                        "model" => model = Some(map.next_value::<String>()?),
                        "messages" => messages = Some(map.next_value::<Vec<RawJson>>()?),
                        "stream" => stream = map.next_value::<Option<bool>>()?,
                        "stream_options" => {
                            stream_options = map.next_value::<Option<StreamOptions>>()?
                        }
                        _ => {
                            let value = map.next_value::<RawJson>()?;
                            if extra.insert(key.clone(), value).is_some() {
                                return Err(de::Error::custom(format!("duplicate field `{key}`")));
                            }
                        }
                    }
                }
                Ok(CompletionRequest {
                    model: model.ok_or_else(|| de::Error::missing_field("model"))?,
                    messages: messages.ok_or_else(|| de::Error::missing_field("messages"))?,
                    stream,
                    stream_options,
                    extra,
                })
            }
        }

        deserializer.deserialize_map(RequestVisitor)
    }
}

/// A request that passed validation.
#[derive(Debug)]
pub struct Completion {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// What the upstream gets beside the conversation.
    pub params: Params,
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
            .enumerate()
            .map(|(i, raw)| {
                ChatMessage::parse(raw)
                    .map_err(|why| AppError::BadRequest(format!("`messages[{i}]` {why}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Completion {
            model: model.to_string(),
            messages,
            params: self.extra,
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
    use crate::domain::message::ChatRole;
    use crate::error::ErrorCode;
    use serde_json::json;

    fn parse(value: serde_json::Value) -> Result<Completion, String> {
        let request: CompletionRequest =
            serde_json::from_str(&value.to_string()).map_err(|err| err.to_string())?;
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
        let params: Vec<(&str, &str)> = c
            .params
            .iter()
            .map(|(k, v)| (k.as_str(), v.get()))
            .collect();
        assert_eq!(params, [("max_tokens", "16"), ("temperature", "0.2")]);
    }

    #[test]
    fn every_role_content_parts_and_unknown_fields_are_kept_as_sent() {
        let body = r#"{"model":"m","messages":[
            {"role":"developer","content":"use tools"},
            {"role":"user","content":[{"type":"text","text":"weather in"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA","detail":"low"}}]},
            {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"w","arguments":"{}"}}]},
            {"role":"tool","tool_call_id":"call_1","content":"sunny"}],
            "tools":[{"type":"function","function":{"name":"w","parameters":{"type":"object"}}}],
            "temperature":1.0000000000000002,"x_vendor_field":{"deep":[1,2.50]}}"#;
        let request: CompletionRequest = serde_json::from_str(body).expect("valid");
        let c = request.parse().expect("valid");
        assert_eq!(
            c.messages.iter().map(|m| m.role).collect::<Vec<_>>(),
            [
                ChatRole::Developer,
                ChatRole::User,
                ChatRole::Assistant,
                ChatRole::Tool
            ]
        );
        assert_eq!(&*c.messages[1].content, "weather in");
        assert!(c.messages[1].raw().contains(r#""detail":"low""#));
        assert_eq!(c.params["temperature"].get(), "1.0000000000000002");
        assert_eq!(c.params["x_vendor_field"].get(), r#"{"deep":[1,2.50]}"#);
        assert!(c.params.contains_key("tools"));
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
            (
                json!({"model":"m","messages":[{"role":"wizard","content":"x"}]}),
                "unknown role \"wizard\"",
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

#[cfg(test)]
mod schema_tests {
    #[test]
    fn the_documented_request_is_open() {
        let doc = serde_json::to_value(crate::http::openapi::document()).expect("json");
        let schema = &doc["components"]["schemas"]["CompletionRequest"];
        // Any other field, of any type, is part of the request.
        let extra = &schema["additionalProperties"];
        assert!(extra.is_object() && extra.get("type").is_none(), "{schema}");
        assert_eq!(schema["required"], serde_json::json!(["model", "messages"]));
    }
}
