//! The chat WebSocket: wire frames and the per-connection actor.

pub mod connection;
pub mod protocol;
