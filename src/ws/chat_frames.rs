//! The `chat` frame's payload (system prompt, content or content parts, tool results, request
//! params and tools) turned into a chat request, and the frames that end a reply.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::protocol::{FrameError, ServerFrame};
use crate::actors::reply_keeper::{ReplyEnd, ReplyEvent, ReplyState, ReplyStream};
use crate::chat::{ChatEvent, ChatRequest, HistorySource};
use crate::domain::message::{ChatMessage, ChatRole, Params, RawJson, Turn};
use crate::domain::{ChatId, SessionId, UserId};
use crate::error::AppError;

/// Fields chatgate sets itself; a `params` object may not carry them.
const RESERVED_PARAMS: [(&str, &str); 4] = [
    ("model", "the chat frame's \"model\" names the model"),
    ("messages", "the session's history is the conversation"),
    ("stream", "every WebSocket reply is streamed"),
    ("stream_options", "chatgate sets how the upstream streams"),
];

/// A validated `chat` frame.
#[derive(Debug, PartialEq, Eq)]
pub struct ChatFrame {
    pub id: ChatId,
    pub model: String,
    pub turn: Turn,
    /// `params`, with `tools` and `tool_choice` of the frame added.
    pub params: Params,
}

/// The chat frame's own fields, as sent; [`ChatFrame::parse`] checks them.
#[derive(Debug, Default, Deserialize)]
pub struct ChatFields<'a> {
    #[serde(borrow, default)]
    pub model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub system: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub params: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub tools: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub tool_choice: Option<&'a RawValue>,
    #[serde(borrow, default)]
    pub tool_results: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolResult<'a> {
    #[serde(borrow, default)]
    call_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

impl ChatFrame {
    pub fn parse(id: ChatId, fields: ChatFields<'_>) -> Result<ChatFrame, FrameError> {
        let fail = |message: String| FrameError {
            id: Some(id.clone()),
            message,
        };
        let model = fields
            .model
            .as_deref()
            .filter(|m| !m.is_empty())
            .ok_or_else(|| fail("a chat frame needs a \"model\"".into()))?;
        let user = match fields.content {
            Some(content) => Some(user_message(content).map_err(&fail)?),
            None => None,
        };
        let tool_results = match fields.tool_results {
            Some(results) => tool_results(results).map_err(&fail)?,
            None => Vec::new(),
        };
        if user.is_none() && tool_results.is_empty() {
            return Err(fail(
                "a chat frame needs a non-empty \"content\" (or \"tool_results\" answering the \
                 previous reply's tool calls)"
                    .into(),
            ));
        }
        let system = match fields.system.as_deref() {
            Some(system) if system.trim().is_empty() => {
                return Err(fail("\"system\" must not be blank".into()))
            }
            Some(system) => Some(ChatMessage::text(ChatRole::System, system)),
            None => None,
        };
        let params = params(&fields).map_err(&fail)?;
        Ok(ChatFrame {
            id: id.clone(),
            model: model.to_string(),
            turn: Turn {
                system,
                tool_results,
                user,
            },
            params,
        })
    }

    pub fn into_request(self, user: UserId, session: SessionId) -> ChatRequest {
        ChatRequest {
            user,
            model: self.model,
            history: HistorySource::Session {
                id: session,
                turn: self.turn,
            },
            params: self.params,
            received: Instant::now(),
            ends_at_shutdown: true,
        }
    }
}

fn user_message(content: &RawValue) -> Result<ChatMessage, String> {
    let blank = match content.get() {
        "[]" => true,
        text if text.starts_with('"') => serde_json::from_str::<Cow<str>>(text)
            .map(|t| t.trim().is_empty())
            .unwrap_or(false),
        _ => false,
    };
    if blank {
        return Err("a chat frame needs a non-empty \"content\"".into());
    }
    ChatMessage::with_content(ChatRole::User, content).map_err(|err| format!("\"content\": {err}"))
}

fn tool_results(raw: &RawValue) -> Result<Vec<(String, ChatMessage)>, String> {
    let shape = "\"tool_results\" must be an array of {\"call_id\": …, \"content\": …} objects";
    let results: Vec<ToolResult> = serde_json::from_str(raw.get()).map_err(|_| shape)?;
    results
        .into_iter()
        .enumerate()
        .map(|(i, result)| {
            let call_id = result
                .call_id
                .filter(|id| !id.is_empty())
                .ok_or_else(|| format!("tool_results[{i}] needs a \"call_id\""))?;
            let content = result.content.ok_or_else(|| {
                format!("tool_results[{i}] needs a \"content\" (a string or content parts)")
            })?;
            let message = ChatMessage::tool_result(&call_id, content)
                .map_err(|err| format!("tool_results[{i}]: {err}"))?;
            Ok((call_id.into_owned(), message))
        })
        .collect()
}

fn params(fields: &ChatFields<'_>) -> Result<Params, String> {
    let mut params = match fields.params {
        Some(raw) => serde_json::from_str::<Params>(raw.get())
            .map_err(|_| "\"params\" must be an object of request fields".to_string())?,
        None => Params::new(),
    };
    for (name, why) in RESERVED_PARAMS {
        if params.contains_key(name) {
            return Err(format!("\"params\" may not set {name:?}: {why}"));
        }
    }
    for (name, value) in [("tools", fields.tools), ("tool_choice", fields.tool_choice)] {
        let Some(value) = value else { continue };
        if params.contains_key(name) {
            return Err(format!(
                "{name:?} is given twice, on the frame and in \"params\"; give it once"
            ));
        }
        if name == "tools" && !value.get().starts_with('[') {
            return Err("\"tools\" must be an array of tool definitions".into());
        }
        params.insert(name.to_string(), RawJson(value.to_owned()));
    }
    Ok(params)
}

/// The frames that end a reply: its tool calls (when it made any), then `done`.
pub fn ending<'a>(id: &'a str, event: &'a ChatEvent) -> Vec<ServerFrame<'a>> {
    let ChatEvent::Done {
        usage,
        latency_ms,
        cancelled,
        finish_reason,
        tool_calls,
        quota,
    } = event
    else {
        return Vec::new();
    };
    let mut frames = Vec::with_capacity(2);
    if !tool_calls.is_empty() {
        frames.push(ServerFrame::ToolCalls {
            id,
            calls: tool_calls,
        });
    }
    frames.push(ServerFrame::Done {
        id,
        usage: *usage,
        latency_ms: *latency_ms,
        cancelled: *cancelled,
        finish_reason,
        quota: *quota,
    });
    frames
}

/// A chat's events as its socket (or the reply keeper) relays them: deltas, then the end with
/// its frames serialized once, here. Events without a frame of their own are left out (tool
/// calls come whole before `done`).
pub fn reply_stream(id: ChatId, events: mpsc::Receiver<ChatEvent>) -> ReplyStream {
    Box::pin(futures_util::stream::unfold(
        (id, events),
        |(id, mut events)| async move {
            loop {
                let event = events.recv().await?;
                if let Some(event) = reply_event(&id, event) {
                    return Some((event, (id, events)));
                }
            }
        },
    ))
}

/// The end of a reply whose owning instance vanished while another one relayed it.
pub fn owner_gone(id: &ChatId) -> ReplyEnd {
    let err = AppError::Unavailable(
        "the instance streaming this reply is gone; send the chat again".into(),
    );
    ReplyEnd {
        state: ReplyState::Error,
        frames: vec![ServerFrame::error(Some(id.as_str()), &err).to_json()],
    }
}

fn reply_event(id: &ChatId, event: ChatEvent) -> Option<ReplyEvent> {
    let event = match event {
        ChatEvent::Delta(content) => return Some(ReplyEvent::Delta(content)),
        ChatEvent::ToolCallsDelta(_) | ChatEvent::Refusal(_) | ChatEvent::Logprobs(_) => {
            return None
        }
        ending_event => ending_event,
    };
    let (state, frames) = match &event {
        ChatEvent::Done { cancelled, .. } => (
            if *cancelled {
                ReplyState::Cancelled
            } else {
                ReplyState::Done
            },
            ending(id.as_str(), &event)
                .iter()
                .map(ServerFrame::to_json)
                .collect(),
        ),
        ChatEvent::Error(err) => (
            ReplyState::Error,
            vec![ServerFrame::error(Some(id.as_str()), err).to_json()],
        ),
        _ => return None,
    };
    Some(ReplyEvent::End(ReplyEnd { state, frames }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::message::{FunctionCall, ToolCall};
    use crate::providers::Usage;
    use crate::ws::protocol::ClientFrame;
    use std::sync::Arc;

    fn chat(text: &str) -> Result<ChatFrame, FrameError> {
        match ClientFrame::parse(text) {
            Ok(ClientFrame::Chat(chat)) => Ok(chat),
            Ok(other) => panic!("not a chat: {other:?}"),
            Err(err) => Err(err),
        }
    }

    #[test]
    fn every_optional_field_lands_where_it_belongs() {
        let chat = chat(
            r#"{"type":"chat","id":"c1","model":"m","system":"be terse",
                "content":[{"type":"text","text":"what is"},{"type":"image_url","image_url":{"url":"https://x/y.png"}}],
                "params":{"temperature":0.2,"max_tokens":64,"response_format":{"type":"json_object"}},
                "tools":[{"type":"function","function":{"name":"f","parameters":{}}}],
                "tool_choice":"auto",
                "tool_results":[{"call_id":"call_1","content":"17"}]}"#,
        )
        .expect("valid");
        assert_eq!(chat.model, "m");
        let system = chat.turn.system.expect("system");
        assert_eq!(system.raw(), r#"{"role":"system","content":"be terse"}"#);
        let user = chat.turn.user.expect("user");
        assert_eq!(&*user.content, "what is");
        assert_eq!(
            user.raw(),
            r#"{"role":"user","content":[{"type":"text","text":"what is"},{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}"#
        );
        assert_eq!(chat.turn.tool_results.len(), 1);
        assert_eq!(
            chat.turn.tool_results[0].1.raw(),
            r#"{"role":"tool","tool_call_id":"call_1","content":"17"}"#
        );
        let keys: Vec<&str> = chat.params.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "max_tokens",
                "response_format",
                "temperature",
                "tool_choice",
                "tools"
            ]
        );
        assert_eq!(chat.params["temperature"].get(), "0.2");
        assert_eq!(chat.params["tool_choice"].get(), r#""auto""#);
    }

    #[test]
    fn tool_results_may_stand_in_for_content() {
        let chat =
            chat(r#"{"type":"chat","id":"c2","model":"m","tool_results":[{"call_id":"a","content":"x"}]}"#)
                .expect("valid");
        assert!(chat.turn.user.is_none());
    }

    #[test]
    fn bad_payloads_say_why_and_name_the_chat() {
        for (text, why) in [
            (
                r#"{"type":"chat","id":"c","model":"m"}"#,
                "non-empty \"content\"",
            ),
            (
                r#"{"type":"chat","id":"c","model":"m","content":[]}"#,
                "non-empty",
            ),
            (
                r#"{"type":"chat","id":"c","model":"m","content":7}"#,
                "string or an array",
            ),
            (
                r#"{"type":"chat","id":"c","model":"m","content":"x","params":{"stream":true}}"#,
                "may not set \"stream\"",
            ),
            (
                r#"{"type":"chat","id":"c","model":"m","content":"x","params":{"model":"y"}}"#,
                "may not set \"model\"",
            ),
            (
                r#"{"type":"chat","id":"c","model":"m","content":"x","params":{"messages":[]}}"#,
                "may not set \"messages\"",
            ),
            (
                r#"{"type":"chat","id":"c","model":"m","content":"x","params":[1]}"#,
                "object",
            ),
            (
                r#"{"type":"chat","id":"c","model":"m","content":"x","tools":{}}"#,
                "array of tool",
            ),
            (
                r#"{"type":"chat","id":"c","model":"m","content":"x","tools":[],"params":{"tools":[]}}"#,
                "twice",
            ),
            (
                r#"{"type":"chat","id":"c","model":"m","content":"x","system":" "}"#,
                "blank",
            ),
            (
                r#"{"type":"chat","id":"c","model":"m","tool_results":{}}"#,
                "array of",
            ),
            (
                r#"{"type":"chat","id":"c","model":"m","tool_results":[{"content":"x"}]}"#,
                "call_id",
            ),
            (
                r#"{"type":"chat","id":"c","model":"m","tool_results":[{"call_id":"a"}]}"#,
                "needs a \"content\"",
            ),
        ] {
            let err = chat(text).expect_err(text);
            assert!(err.message.contains(why), "{text}: {}", err.message);
            assert_eq!(err.id.as_ref().map(ChatId::as_str), Some("c"), "{text}");
        }
    }

    #[test]
    fn a_reply_with_tool_calls_ends_with_them_then_done() {
        let event = ChatEvent::Done {
            usage: Usage {
                prompt_tokens: 1,
                completion_tokens: 2,
            },
            latency_ms: 3,
            cancelled: false,
            finish_reason: Arc::from("tool_calls"),
            tool_calls: vec![ToolCall {
                id: "call_1".into(),
                kind: "function".into(),
                function: FunctionCall {
                    name: "get_weather".into(),
                    arguments: "{\"city\":\"Paris\"}".into(),
                },
            }],
            quota: crate::domain::QuotaReceipt {
                used: 1,
                limit: 9,
                resets_at: chrono::DateTime::from_timestamp(1_796_083_200, 0).expect("time"),
            },
        };
        let frames: Vec<String> = ending("c1", &event)
            .iter()
            .map(ServerFrame::to_json)
            .collect();
        assert_eq!(
            frames,
            [
                r#"{"type":"tool_calls","id":"c1","calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{\"city\":\"Paris\"}"}}]}"#,
                r#"{"type":"done","id":"c1","usage":{"prompt_tokens":1,"completion_tokens":2},"latency_ms":3,"cancelled":false,"finish_reason":"tool_calls","quota":{"used":1,"limit":9,"resets_at":"2026-12-01T00:00:00Z"}}"#,
            ]
        );
    }

    #[actix::test]
    async fn a_chats_events_become_deltas_and_one_serialized_end() {
        use futures_util::StreamExt;
        let (tx, rx) = mpsc::channel(8);
        let mut stream = reply_stream(ChatId::parse("c1").expect("id"), rx);
        tx.send(ChatEvent::Delta("hi".into())).await.expect("open");
        tx.send(ChatEvent::Refusal("no".into()))
            .await
            .expect("open");
        tx.send(ChatEvent::Done {
            usage: Usage::default(),
            latency_ms: 1,
            cancelled: true,
            finish_reason: Arc::from("cancelled"),
            tool_calls: Vec::new(),
            quota: crate::domain::QuotaReceipt {
                used: 1,
                limit: 9,
                resets_at: chrono::DateTime::from_timestamp(1_796_083_200, 0).expect("time"),
            },
        })
        .await
        .expect("open");
        drop(tx);
        assert_eq!(stream.next().await, Some(ReplyEvent::Delta("hi".into())));
        let Some(ReplyEvent::End(end)) = stream.next().await else {
            panic!("end")
        };
        assert_eq!(end.state, ReplyState::Cancelled);
        assert_eq!(end.frames.len(), 1);
        assert!(
            end.frames[0].starts_with(r#"{"type":"done","id":"c1""#),
            "{}",
            end.frames[0]
        );
        assert_eq!(stream.next().await, None);
    }
}
