//! One chat pipeline for every transport: admission (model, rate limit, quota), the model
//! stream with its deadline and cancellation, and exactly one request record per admitted
//! chat.

/// Chat messages are domain types; the old path stays for callers.
pub use crate::domain::message;
pub mod pipeline;
pub mod tool_calls;

pub use pipeline::{CancelReason, ChatEvent, ChatHandle, ChatPipeline, ChatRequest, HistorySource};
