//! The chat WebSocket: wire frames and the per-connection actor.

pub mod chat_frames;
pub mod connection;
pub mod protocol;
