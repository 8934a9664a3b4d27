//! What instances say to each other over the cluster bus (Redis pub/sub), as JSON. Every
//! message carries a version: during a rolling deploy an instance ignores, with a debug log,
//! messages of a version it does not know instead of misreading them.

use serde::{Deserialize, Serialize};

/// The version this build writes and reads.
pub const BUS_VERSION: u16 = 1;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub v: u16,
    /// The sending instance; answers go to its channel.
    pub from: String,
    pub body: Body,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// A command; `request` is 0 when the sender does not wait for an answer.
    Command {
        request: u64,
        command: Command,
    },
    Answer {
        request: u64,
        answer: Answer,
    },
}

/// The commands one instance asks of another.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Command {
    /// An admin ended the session: close its socket with 1008 and end it.
    EndSession { session_id: String },
    /// The session is being resumed on another instance: close its socket with 1008 and let
    /// go of it, without ending it.
    TakeOverSession { session_id: String },
    /// The user was disabled: close all their chat sockets with 1008.
    CloseUserSockets { user_id: String },
    /// The allowed origins changed in the database: reload them.
    OriginsChanged,
    /// The session is resumed on the asking instance: export its kept replies to Redis (once
    /// no socket here holds it) and answer when they are written.
    ExportReplies { session_id: String },
    /// A socket on the asking instance resumed this running reply (`held`), or let it go
    /// again (it then has the grace to be resumed before it is stopped).
    ReplyHeld {
        session_id: String,
        id: String,
        held: bool,
    },
    /// The client cancelled this running reply on the asking instance.
    CancelReply { session_id: String, id: String },
    /// An admin ended the session (`session_id`) or disabled the user (`user_id`): stop
    /// their replies kept here too.
    StopReplies {
        session_id: Option<String>,
        user_id: Option<String>,
    },
}

/// A command's kind, which picks the actor that handles it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommandKind {
    EndSession,
    TakeOverSession,
    CloseUserSockets,
    OriginsChanged,
    /// Every command about kept replies.
    Replies,
}

impl Command {
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::EndSession { .. } => CommandKind::EndSession,
            Command::TakeOverSession { .. } => CommandKind::TakeOverSession,
            Command::CloseUserSockets { .. } => CommandKind::CloseUserSockets,
            Command::OriginsChanged => CommandKind::OriginsChanged,
            Command::ExportReplies { .. }
            | Command::ReplyHeld { .. }
            | Command::CancelReply { .. }
            | Command::StopReplies { .. } => CommandKind::Replies,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Answer {
    Done,
    NotFound,
}

impl Envelope {
    pub fn encode(&self) -> String {
        // Serializing these plain enums and strings cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Reads a message; `None` for garbage or another version (logged at debug, as neither is
    /// this instance's to fix).
    pub fn decode(payload: &[u8]) -> Option<Envelope> {
        #[derive(Deserialize)]
        struct Version {
            v: u16,
        }
        match serde_json::from_slice::<Version>(payload) {
            Ok(Version { v }) if v == BUS_VERSION => {}
            Ok(Version { v }) => {
                log::debug!("event=cluster_bus_skipped reason=version v={v}");
                return None;
            }
            Err(err) => {
                log::debug!("event=cluster_bus_skipped reason=undecodable error={err}");
                return None;
            }
        }
        serde_json::from_slice(payload)
            .map_err(|err| log::debug!("event=cluster_bus_skipped reason=undecodable error={err}"))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_skips_other_versions() {
        let sent = Envelope {
            v: BUS_VERSION,
            from: "a".into(),
            body: Body::Command {
                request: 7,
                command: Command::EndSession {
                    session_id: "s".into(),
                },
            },
        };
        assert_eq!(
            Envelope::decode(sent.encode().as_bytes()),
            Some(sent.clone())
        );
        let future = sent.encode().replace("\"v\":1", "\"v\":2");
        assert_eq!(Envelope::decode(future.as_bytes()), None);
        assert_eq!(Envelope::decode(b"not json"), None);
    }
}
