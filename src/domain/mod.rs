//! Validated newtypes and pure rules: no I/O, no actix. Inputs from the network become these
//! types at the edge, so the core never re-checks them.

mod backoff;
mod cancel;
mod ids;
pub mod message;
mod quota;
mod quota_day;
pub mod redact;

pub use backoff::Backoff;
pub use cancel::CancelReason;
pub use ids::{ChatId, IdError, SessionId, UserId};
pub use quota::{QuotaReceipt, QuotaStanding, QuotaTake};
pub use quota_day::QuotaDay;
