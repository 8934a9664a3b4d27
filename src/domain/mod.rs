//! Validated newtypes and pure rules: no I/O, no actix. Inputs from the network become these
//! types at the edge, so the core never re-checks them.

mod ids;
mod quota;
mod quota_day;

pub use ids::{ChatId, IdError, SessionId, UserId};
pub use quota::QuotaTake;
pub use quota_day::QuotaDay;
