//! Messages of a conversation, typed only as far as chatgate reads them (the role, and the
//! text of the content for `echo` and estimated usage). Each message travels as the JSON it
//! arrived as, so content parts, tool calls and fields chatgate does not know reach an
//! upstream unchanged.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::value::RawValue;

/// A piece of JSON kept as it was written: relayed, never re-encoded.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(transparent)]
pub struct RawJson(pub Box<RawValue>);

impl RawJson {
    pub fn get(&self) -> &str {
        self.0.get()
    }

    /// `value` must be valid JSON text (callers pass serde_json output or parsed input).
    fn from_string(value: String) -> Result<RawJson, String> {
        RawValue::from_string(value)
            .map(RawJson)
            .map_err(|err| format!("not valid JSON: {err}"))
    }

    pub fn encode(value: &impl Serialize) -> RawJson {
        // Plain structs and strings always encode; `null` keeps the shape if one ever did not.
        serde_json::value::to_raw_value(value)
            .map(RawJson)
            .unwrap_or_else(|_| RawJson(null()))
    }
}

fn null() -> Box<RawValue> {
    RawValue::from_string("null".into()).unwrap_or_else(|_| unreachable!("null is JSON"))
}

impl PartialEq for RawJson {
    fn eq(&self, other: &RawJson) -> bool {
        self.get() == other.get()
    }
}

impl Eq for RawJson {}

/// Request fields passed to an upstream as given (`temperature`, `tools`, …), by name.
pub type Params = BTreeMap<String, RawJson>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

impl ChatRole {
    pub const ALL: &'static str = "system, developer, user, assistant or tool";

    pub fn parse(role: &str) -> Option<ChatRole> {
        Some(match role {
            "system" => ChatRole::System,
            "developer" => ChatRole::Developer,
            "user" => ChatRole::User,
            "assistant" => ChatRole::Assistant,
            "tool" => ChatRole::Tool,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ChatRole::System => "system",
            ChatRole::Developer => "developer",
            ChatRole::User => "user",
            ChatRole::Assistant => "assistant",
            ChatRole::Tool => "tool",
        }
    }
}

/// One message of a conversation, as a model sees it. Shared, so handing a history snapshot
/// to a provider copies pointers, not text.
#[derive(Clone, Debug)]
pub struct ChatMessage {
    pub role: ChatRole,
    /// The text of the content: the string, or its text parts joined by a space.
    pub content: Arc<str>,
    /// The whole message in OpenAI's shape, exactly as it is sent upstream.
    raw: Arc<RawValue>,
}

impl PartialEq for ChatMessage {
    fn eq(&self, other: &ChatMessage) -> bool {
        self.role == other.role && self.raw.get() == other.raw.get()
    }
}

impl Eq for ChatMessage {}

impl Serialize for ChatMessage {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.raw.serialize(serializer)
    }
}

/// The fields of a message chatgate reads; the rest stays in the raw text.
#[derive(Deserialize)]
struct MessageView<'a> {
    #[serde(borrow, default)]
    role: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
    #[serde(borrow, default)]
    tool_call_id: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct PartView<'a> {
    #[serde(borrow, default, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    text: Option<Cow<'a, str>>,
}

/// The text of a `content` value: a string, or the text parts of an array joined by a space
/// (images, audio and files have no text to count or echo).
pub fn content_text(content: &RawValue) -> Result<String, String> {
    let json = content.get();
    if json.starts_with('"') {
        return serde_json::from_str::<String>(json).map_err(|err| err.to_string());
    }
    if !json.starts_with('[') {
        return Err("`content` must be a string or an array of content parts".into());
    }
    let parts: Vec<&RawValue> = serde_json::from_str(json).map_err(|err| err.to_string())?;
    let mut texts = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let part: PartView = serde_json::from_str(part.get()).map_err(|_| {
            format!("content part {i} must be an object with a \"type\" (text, image_url, …)")
        })?;
        match (part.kind.as_deref(), part.text) {
            (None, _) => return Err(format!("content part {i} has no \"type\"")),
            (Some("text"), Some(text)) => texts.push(text),
            (Some("text"), None) => return Err(format!("text part {i} has no \"text\"")),
            _ => {}
        }
    }
    Ok(texts.join(" "))
}

impl ChatMessage {
    /// Reads a message a client sent, keeping its JSON as it is. The error says what is wrong
    /// (without naming its position, which the caller knows).
    pub fn parse(raw: RawJson) -> Result<ChatMessage, String> {
        let view: MessageView = serde_json::from_str(raw.get())
            .map_err(|_| "must be an object with a \"role\"".to_string())?;
        let role = view.role.ok_or("has no \"role\"")?;
        let role = ChatRole::parse(&role)
            .ok_or_else(|| format!("has the unknown role {role:?}; a role is {}", ChatRole::ALL))?;
        let content = match view.content {
            Some(content) => content_text(content)?,
            // An assistant turn may be only tool calls (or a refusal).
            None if role == ChatRole::Assistant => String::new(),
            None => {
                return Err(format!(
                    "({}) has no `content` (missing or null); give a string or an array of \
                     content parts",
                    role.as_str()
                ))
            }
        };
        if role == ChatRole::Tool && view.tool_call_id.is_none_or(|id| id.is_empty()) {
            return Err("(tool) needs the \"tool_call_id\" of the call it answers".into());
        }
        Ok(ChatMessage {
            role,
            content: Arc::from(content),
            raw: Arc::from(raw.0),
        })
    }

    /// A message with this role and `content` (a string or an array of parts) as given.
    pub fn with_content(role: ChatRole, content: &RawValue) -> Result<ChatMessage, String> {
        let text = content_text(content)?;
        let raw = RawJson::from_string(format!(
            r#"{{"role":"{}","content":{}}}"#,
            role.as_str(),
            content.get()
        ))?;
        Ok(ChatMessage {
            role,
            content: Arc::from(text),
            raw: Arc::from(raw.0),
        })
    }

    pub fn text(role: ChatRole, content: &str) -> ChatMessage {
        #[derive(Serialize)]
        struct Plain<'a> {
            role: ChatRole,
            content: &'a str,
        }
        ChatMessage {
            role,
            content: Arc::from(content),
            raw: Arc::from(RawJson::encode(&Plain { role, content }).0),
        }
    }

    pub fn user(content: &str) -> ChatMessage {
        ChatMessage::text(ChatRole::User, content)
    }

    pub fn assistant(content: &str) -> ChatMessage {
        ChatMessage::text(ChatRole::Assistant, content)
    }

    /// A reply that ended in tool calls: OpenAI's `content` is `null` when there is no text.
    pub fn assistant_with_calls(content: &str, tool_calls: &[ToolCall]) -> ChatMessage {
        if tool_calls.is_empty() {
            return ChatMessage::assistant(content);
        }
        #[derive(Serialize)]
        struct WithCalls<'a> {
            role: ChatRole,
            content: Option<&'a str>,
            tool_calls: &'a [ToolCall],
        }
        let raw = RawJson::encode(&WithCalls {
            role: ChatRole::Assistant,
            content: (!content.is_empty()).then_some(content),
            tool_calls,
        });
        ChatMessage {
            role: ChatRole::Assistant,
            content: Arc::from(content),
            raw: Arc::from(raw.0),
        }
    }

    /// The answer to tool call `call_id`; `content` is a string or an array of parts.
    pub fn tool_result(call_id: &str, content: &RawValue) -> Result<ChatMessage, String> {
        let text = content_text(content)?;
        let id = serde_json::to_string(call_id).map_err(|err| err.to_string())?;
        let raw = RawJson::from_string(format!(
            r#"{{"role":"tool","tool_call_id":{id},"content":{}}}"#,
            content.get()
        ))?;
        Ok(ChatMessage {
            role: ChatRole::Tool,
            content: Arc::from(text),
            raw: Arc::from(raw.0),
        })
    }

    /// Bytes of the message as sent upstream: what a history bound in bytes counts.
    pub fn size(&self) -> usize {
        self.raw.get().len()
    }

    pub fn raw(&self) -> &str {
        self.raw.get()
    }
}

/// One tool call of a reply, assembled, in OpenAI's shape.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FunctionCall {
    pub name: String,
    pub arguments: String,
}

/// What one WebSocket chat adds to its session's history.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Turn {
    /// Replaces the session's system prompt from this chat on.
    pub system: Option<ChatMessage>,
    /// Answers to the previous reply's tool calls, as `tool` messages, by call id.
    pub tool_results: Vec<(String, ChatMessage)>,
    /// The user's message; may be absent when tool results carry the turn.
    pub user: Option<ChatMessage>,
}

/// Words separated by whitespace: how the built-in model and estimated usage count tokens.
pub fn count_words(messages: &[ChatMessage]) -> u64 {
    messages
        .iter()
        .map(|m| m.content.split_whitespace().count() as u64)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> RawJson {
        RawJson(RawValue::from_string(text.into()).expect("json"))
    }

    #[test]
    fn messages_keep_their_json_and_read_their_text() {
        let text = r#"{"role":"user","content":[{"type":"text","text":"look at"},{"type":"image_url","image_url":{"url":"data:image/png;base64,AAA="}},{"type":"text","text":"this"}],"name":"ann"}"#;
        let m = ChatMessage::parse(raw(text)).expect("valid");
        assert_eq!(m.role, ChatRole::User);
        assert_eq!(&*m.content, "look at this");
        assert_eq!(serde_json::to_string(&m).expect("json"), text);
        let dev =
            ChatMessage::parse(raw(r#"{"role":"developer","content":"be terse"}"#)).expect("valid");
        assert_eq!(dev.role, ChatRole::Developer);
        let calls = ChatMessage::parse(raw(
            r#"{"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function","function":{"name":"f","arguments":"{}"}}]}"#,
        ))
        .expect("valid");
        assert_eq!(&*calls.content, "");
        let tool = ChatMessage::parse(raw(r#"{"role":"tool","tool_call_id":"c","content":"17"}"#))
            .expect("valid");
        assert_eq!(tool.role, ChatRole::Tool);
    }

    #[test]
    fn bad_messages_say_why() {
        for (text, why) in [
            (
                r#"{"role":"wizard","content":"x"}"#,
                "unknown role \"wizard\"",
            ),
            (r#"{"content":"x"}"#, "no \"role\""),
            (r#"{"role":"user"}"#, "content"),
            (r#"{"role":"user","content":null}"#, "null"),
            (r#"{"role":"user","content":5}"#, "string or an array"),
            (r#"{"role":"user","content":[5]}"#, "content part 0"),
            (
                r#"{"role":"user","content":[{"type":"text"}]}"#,
                "no \"text\"",
            ),
            (r#"{"role":"tool","content":"x"}"#, "tool_call_id"),
            ("[1]", "object"),
        ] {
            let err = ChatMessage::parse(raw(text)).expect_err(text);
            assert!(err.contains(why), "{text}: {err}");
        }
    }

    #[test]
    fn built_messages_are_openai_shaped() {
        let call = ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "f".into(),
                arguments: "{\"a\":1}".into(),
            },
        };
        let m = ChatMessage::assistant_with_calls("", std::slice::from_ref(&call));
        assert_eq!(
            m.raw(),
            r#"{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]}"#
        );
        let t = ChatMessage::tool_result("call_1", &raw(r#""sunny""#).0).expect("valid");
        assert_eq!(
            t.raw(),
            r#"{"role":"tool","tool_call_id":"call_1","content":"sunny"}"#
        );
        let u =
            ChatMessage::with_content(ChatRole::User, &raw(r#"[{"type":"text","text":"hi"}]"#).0)
                .expect("valid");
        assert_eq!(
            u.raw(),
            r#"{"role":"user","content":[{"type":"text","text":"hi"}]}"#
        );
        assert_eq!(&*u.content, "hi");
        assert_eq!(
            ChatMessage::user("a \"b\"").raw(),
            r#"{"role":"user","content":"a \"b\""}"#
        );
    }
}
