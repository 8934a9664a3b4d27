use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{what} must be {min}–{max} characters, got {len}")]
    Length {
        what: &'static str,
        min: usize,
        max: usize,
        len: usize,
    },
    #[error("{what} must not contain control characters")]
    Control { what: &'static str },
}

fn check(what: &'static str, value: &str, min: usize, max: usize) -> Result<(), IdError> {
    let len = value.chars().count();
    if len < min || len > max {
        return Err(IdError::Length {
            what,
            min,
            max,
            len,
        });
    }
    if value.chars().any(char::is_control) {
        return Err(IdError::Control { what });
    }
    Ok(())
}

/// A user id (the JWT `sub`): 1–128 characters, no control characters. Cheap to clone because
/// it travels with every chat through several actors.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct UserId(Arc<str>);

impl UserId {
    pub const MAX_CHARS: usize = 128;

    pub fn parse(value: &str) -> Result<UserId, IdError> {
        check("user id (sub)", value, 1, Self::MAX_CHARS)?;
        Ok(UserId(Arc::from(value)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A client-chosen chat id, echoed back on every frame of its reply: 1–64 characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct ChatId(Arc<str>);

impl ChatId {
    pub const MAX_CHARS: usize = 64;

    pub fn parse(value: &str) -> Result<ChatId, IdError> {
        check("id", value, 1, Self::MAX_CHARS)?;
        Ok(ChatId(Arc::from(value)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A chat session id, minted by the server (UUID v4 text).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct SessionId(Arc<str>);

impl SessionId {
    pub fn new_random() -> SessionId {
        SessionId(Arc::from(uuid::Uuid::new_v4().to_string()))
    }

    /// Client-supplied ids (resume, admin paths) are only looked up, never trusted, so any
    /// short printable string is accepted; an unknown one simply finds nothing.
    pub fn parse(value: &str) -> Result<SessionId, IdError> {
        check("session id", value, 1, 64)?;
        Ok(SessionId(Arc::from(value)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! display_as_str {
    ($($ty:ty),*) => {$(
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.as_str())
            }
        }
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let raw = String::deserialize(d)?;
                <$ty>::parse(&raw).map_err(serde::de::Error::custom)
            }
        }
    )*};
}
display_as_str!(UserId, ChatId, SessionId);

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn chat_id_bounds() {
        assert!(ChatId::parse("").is_err());
        assert!(ChatId::parse(&"x".repeat(64)).is_ok());
        assert!(ChatId::parse(&"x".repeat(65)).is_err());
        assert!(ChatId::parse("a\u{0}b").is_err());
    }

    #[test]
    fn user_id_bounds_count_characters_not_bytes() {
        assert!(UserId::parse(&"é".repeat(128)).is_ok());
        assert!(UserId::parse(&"é".repeat(129)).is_err());
        assert!(UserId::parse("").is_err());
    }

    #[test]
    fn ids_deserialize_through_their_parsers() {
        let ok: ChatId = serde_json::from_str("\"c1\"").expect("valid id");
        assert_eq!(ok.as_str(), "c1");
        assert!(serde_json::from_str::<ChatId>(&format!("\"{}\"", "x".repeat(65))).is_err());
    }

    proptest! {
        #[test]
        fn user_id_round_trips(s in "[a-zA-Z0-9_.@-]{1,128}") {
            let id = UserId::parse(&s).expect("valid");
            prop_assert_eq!(id.as_str(), s.as_str());
        }
    }
}
