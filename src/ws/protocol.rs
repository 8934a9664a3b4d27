//! The WebSocket wire contract: what clients send and what the server answers.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::chat_frames::{ChatFields, ChatFrame};
use crate::actors::reply_keeper::ReplySummary;
use crate::domain::message::ToolCall;
use crate::domain::{ChatId, QuotaReceipt};
use crate::error::{AppError, ErrorCode};
use crate::providers::Usage;

/// A validated client frame.
#[derive(Debug, PartialEq, Eq)]
pub enum ClientFrame {
    Chat(ChatFrame),
    Cancel {
        id: ChatId,
    },
    /// Sends reply `id` of the session from after `after_seq` (0: from its first delta).
    Resume {
        id: ChatId,
        after_seq: u64,
    },
    Ping,
}

/// A frame that could not be accepted, with the id it named when it named a valid one (so
/// the error can be routed to that chat).
#[derive(Debug, PartialEq, Eq)]
pub struct FrameError {
    pub id: Option<ChatId>,
    pub message: String,
}

/// Every field optional, so one pass tells exactly what is missing or wrong.
#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

/// The `resume` frame's own field, read in a second pass so that it is checked only there.
#[derive(Deserialize)]
struct ResumeFields {
    #[serde(default)]
    after_seq: Option<serde_json::Value>,
}

const FRAME_TYPES: &str = "chat, cancel, resume or ping";

impl ClientFrame {
    pub fn parse(text: &str) -> Result<ClientFrame, FrameError> {
        let raw: RawFrame = serde_json::from_str(text).map_err(|err| FrameError {
            id: None,
            message: format!("frame is not a JSON object of the expected shape: {err}"),
        })?;
        let kind = raw.kind.as_deref().ok_or_else(|| FrameError {
            id: None,
            message: format!("frame has no \"type\"; expected {FRAME_TYPES}"),
        })?;
        let parse_id = |required: bool| -> Result<Option<ChatId>, FrameError> {
            match raw.id.as_deref() {
                Some(id) => ChatId::parse(id).map(Some).map_err(|err| FrameError {
                    id: None,
                    message: err.to_string(),
                }),
                None if required => Err(FrameError {
                    id: None,
                    message: format!("a {kind} frame needs an \"id\" (1–64 characters)"),
                }),
                None => Ok(None),
            }
        };
        match kind {
            "chat" => {
                let id = parse_id(true)?.ok_or_else(|| FrameError {
                    id: None,
                    message: "missing id".into(),
                })?;
                // A second pass over the same text: `flatten` cannot carry borrowed raw JSON.
                let fields: ChatFields = serde_json::from_str(text).map_err(|err| FrameError {
                    id: Some(id.clone()),
                    message: format!("chat frame fields of the wrong type: {err}"),
                })?;
                ChatFrame::parse(id, fields).map(ClientFrame::Chat)
            }
            "cancel" => {
                let id = parse_id(true)?.ok_or_else(|| FrameError {
                    id: None,
                    message: "missing id".into(),
                })?;
                Ok(ClientFrame::Cancel { id })
            }
            "resume" => {
                let id = parse_id(true)?.ok_or_else(|| FrameError {
                    id: None,
                    message: "missing id".into(),
                })?;
                let fields: ResumeFields =
                    serde_json::from_str(text).map_err(|err| FrameError {
                        id: Some(id.clone()),
                        message: format!("resume frame fields of the wrong type: {err}"),
                    })?;
                let after_seq = match fields.after_seq {
                    None | Some(serde_json::Value::Null) => 0,
                    Some(value) => value.as_u64().ok_or_else(|| FrameError {
                        id: Some(id.clone()),
                        message: "\"after_seq\" must be a whole number ≥ 0 (the last seq received)"
                            .into(),
                    })?,
                };
                Ok(ClientFrame::Resume { id, after_seq })
            }
            "ping" => Ok(ClientFrame::Ping),
            other => Err(FrameError {
                id: None,
                message: format!("unknown frame type {other:?}; expected {FRAME_TYPES}"),
            }),
        }
    }
}

/// Everything the server sends. Borrowed fields: frames are serialized once and dropped.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    Session {
        session_id: &'a str,
        resumed: bool,
        /// A resumed session's kept replies (absent on a fresh session).
        #[serde(skip_serializing_if = "Option::is_none")]
        replies: Option<&'a [ReplySummary]>,
    },
    Delta {
        id: &'a str,
        /// 1, 2, 3, … within the reply: what a `resume` counts from.
        seq: u64,
        content: &'a str,
    },
    /// The reply's tool calls, whole, before its `done`.
    ToolCalls {
        id: &'a str,
        calls: &'a [ToolCall],
    },
    Done {
        id: &'a str,
        usage: Usage,
        latency_ms: u64,
        cancelled: bool,
        /// `stop`, `length`, `tool_calls`, `content_filter` (as the model said), or `cancelled`.
        finish_reason: &'a str,
        /// The user's standing after this chat.
        quota: QuotaReceipt,
    },
    Error {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a str>,
        code: ErrorCode,
        message: Cow<'a, str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    Pong,
}

impl<'a> ServerFrame<'a> {
    pub fn error(id: Option<&'a str>, err: &AppError) -> ServerFrame<'a> {
        ServerFrame::Error {
            id,
            code: err.code(),
            message: Cow::Owned(err.client_message()),
            retry_after_ms: err.retry_after().map(|d| (d.as_millis() as u64).max(1)),
        }
    }

    pub fn bad_request(id: Option<&'a str>, message: &'a str) -> ServerFrame<'a> {
        ServerFrame::Error {
            id,
            code: ErrorCode::BadRequest,
            message: Cow::Borrowed(message),
            retry_after_ms: None,
        }
    }

    pub fn to_json(&self) -> String {
        // Serializing these types cannot fail: no maps with non-string keys, no custom impls.
        serde_json::to_string(self).unwrap_or_else(|_| {
            String::from(r#"{"type":"error","code":"internal","message":"frame encoding failed"}"#)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The text of a chat frame's user message.
    fn chat_text(frame: &ClientFrame) -> Option<&str> {
        match frame {
            ClientFrame::Chat(chat) => chat.turn.user.as_ref().map(|m| &*m.content),
            _ => None,
        }
    }

    #[test]
    fn valid_frames_parse() {
        let frame = ClientFrame::parse(
            r#"{"type":"chat","id":"c1","model":"echo","content":"hello there"}"#,
        )
        .expect("valid");
        let ClientFrame::Chat(chat) = &frame else {
            panic!("{frame:?}")
        };
        assert_eq!(chat.id.as_str(), "c1");
        assert_eq!(chat.model, "echo");
        assert_eq!(chat_text(&frame), Some("hello there"));
        assert!(chat.params.is_empty() && chat.turn.system.is_none());
        assert_eq!(
            ClientFrame::parse(r#"{"type":"cancel","id":"c1"}"#),
            Ok(ClientFrame::Cancel {
                id: ChatId::parse("c1").expect("id")
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping)
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"resume","id":"c1","after_seq":5}"#),
            Ok(ClientFrame::Resume {
                id: ChatId::parse("c1").expect("id"),
                after_seq: 5
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"resume","id":"c1"}"#),
            Ok(ClientFrame::Resume {
                id: ChatId::parse("c1").expect("id"),
                after_seq: 0
            })
        );
        // Escapes decode (borrowed parsing falls back to owned strings).
        let frame =
            ClientFrame::parse(r#"{"type":"chat","id":"c\"1","model":"echo","content":"a\nb"}"#)
                .expect("valid");
        assert_eq!(chat_text(&frame), Some("a\nb"));
    }

    #[test]
    fn bad_frames_explain_themselves() {
        for (text, fragment) in [
            ("{", "JSON"),
            ("[1,2]", "JSON"),
            (r#"{"type":"nope"}"#, "unknown frame type"),
            (r#"{"id":"c1"}"#, "no \"type\""),
            (
                r#"{"type":"chat","model":"echo","content":"x"}"#,
                "needs an \"id\"",
            ),
            (
                r#"{"type":"chat","id":"","model":"echo","content":"x"}"#,
                "1–64",
            ),
            (
                r#"{"type":"chat","id":5,"model":"echo","content":"x"}"#,
                "JSON",
            ),
            (r#"{"type":"resume","after_seq":1}"#, "needs an \"id\""),
            (
                r#"{"type":"resume","id":"c1","after_seq":-1}"#,
                "whole number",
            ),
            (
                r#"{"type":"resume","id":"c1","after_seq":"5"}"#,
                "whole number",
            ),
        ] {
            let err = ClientFrame::parse(text).expect_err(text);
            assert!(err.message.contains(fragment), "{text}: {}", err.message);
        }
        let long = format!(
            r#"{{"type":"chat","id":"{}","model":"echo","content":"x"}}"#,
            "a".repeat(65)
        );
        assert!(ClientFrame::parse(&long).is_err());
    }

    #[test]
    fn errors_after_a_valid_id_carry_it() {
        let err = ClientFrame::parse(r#"{"type":"chat","id":"c9","model":"echo","content":"  "}"#)
            .expect_err("blank");
        assert_eq!(err.id.as_ref().map(ChatId::as_str), Some("c9"));
    }

    #[test]
    fn server_frames_match_the_contract() {
        let done = ServerFrame::Done {
            id: "c1",
            usage: Usage {
                prompt_tokens: 2,
                completion_tokens: 2,
            },
            latency_ms: 3,
            cancelled: false,
            finish_reason: "stop",
            quota: QuotaReceipt {
                used: 2,
                limit: 5,
                resets_at: chrono::DateTime::from_timestamp(1_796_083_200, 0).expect("time"),
            },
        };
        assert_eq!(
            done.to_json(),
            r#"{"type":"done","id":"c1","usage":{"prompt_tokens":2,"completion_tokens":2},"latency_ms":3,"cancelled":false,"finish_reason":"stop","quota":{"used":2,"limit":5,"resets_at":"2026-12-01T00:00:00Z"}}"#
        );
        assert_eq!(ServerFrame::Pong.to_json(), r#"{"type":"pong"}"#);
        assert_eq!(
            ServerFrame::Session {
                session_id: "s",
                resumed: false,
                replies: None,
            }
            .to_json(),
            r#"{"type":"session","session_id":"s","resumed":false}"#
        );
        let replies = [ReplySummary {
            id: ChatId::parse("c1").expect("id"),
            state: crate::actors::reply_keeper::ReplyState::Running,
            last_seq: 17,
        }];
        assert_eq!(
            ServerFrame::Session {
                session_id: "s",
                resumed: true,
                replies: Some(&replies),
            }
            .to_json(),
            r#"{"type":"session","session_id":"s","resumed":true,"replies":[{"id":"c1","state":"running","last_seq":17}]}"#
        );
        assert_eq!(
            ServerFrame::Delta {
                id: "c1",
                seq: 3,
                content: "hi"
            }
            .to_json(),
            r#"{"type":"delta","id":"c1","seq":3,"content":"hi"}"#
        );
        let limited = AppError::RateLimited {
            message: "slow".into(),
            retry_after: std::time::Duration::from_millis(1234),
        };
        assert_eq!(
            ServerFrame::error(Some("c1"), &limited).to_json(),
            r#"{"type":"error","id":"c1","code":"rate_limited","message":"slow","retry_after_ms":1234}"#
        );
    }

    proptest! {
        #[test]
        fn parser_never_panics(text in ".{0,200}") {
            let _ = ClientFrame::parse(&text);
        }

        #[test]
        fn chat_frames_round_trip(id in "[a-zA-Z0-9_-]{1,64}", model in "[a-z0-9.-]{1,20}", content in "[^\u{0}]{0,100}") {
            let json = serde_json::json!({"type":"chat","id":id,"model":model,"content":content}).to_string();
            match ClientFrame::parse(&json) {
                Ok(ClientFrame::Chat(chat)) => {
                    prop_assert_eq!(chat.id.as_str(), id.as_str());
                    prop_assert_eq!(chat.model, model);
                    prop_assert_eq!(chat.turn.user.map(|m| m.content.to_string()), Some(content));
                }
                Ok(other) => prop_assert!(false, "parsed as {:?}", other),
                Err(err) => prop_assert!(content.trim().is_empty(), "{}", err.message),
            }
        }
    }
}
