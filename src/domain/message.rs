//! One message of a conversation as the pipeline and the providers see it.

use std::sync::Arc;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    System,
    User,
    Assistant,
}

/// One message of a conversation, as a model sees it. Contents are shared, so handing a
/// history snapshot to a provider copies pointers, not text.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: ChatRole,
    pub content: Arc<str>,
}

impl ChatMessage {
    pub fn user(content: impl Into<Arc<str>>) -> ChatMessage {
        ChatMessage {
            role: ChatRole::User,
            content: content.into(),
        }
    }

    pub fn assistant(content: impl Into<Arc<str>>) -> ChatMessage {
        ChatMessage {
            role: ChatRole::Assistant,
            content: content.into(),
        }
    }
}

/// Words separated by whitespace: how the built-in model and estimated usage count tokens.
pub fn count_words(messages: &[ChatMessage]) -> u64 {
    messages
        .iter()
        .map(|m| m.content.split_whitespace().count() as u64)
        .sum()
}
