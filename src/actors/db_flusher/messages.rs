//! What the flusher accepts and what it reports.

use actix::prelude::*;
use serde::Serialize;

use crate::db::models::{RequestRow, SessionRow};
use crate::error::AppError;

#[derive(Message)]
#[rtype(result = "()")]
pub struct EnqueueSession {
    pub row: SessionRow,
}

/// One admitted chat's row; also counted into its minute's rollup at once, so dropping the raw
/// row under pressure never loses it from the usage totals.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EnqueueRequest {
    pub row: RequestRow,
}

/// Resolves once every row enqueued before it is committed (or set aside as refused by the
/// database, which the stats report).
#[derive(Message)]
#[rtype(result = "Result<(), AppError>")]
pub struct Flush;

/// Final flush at shutdown; safe to send twice.
#[derive(Message)]
#[rtype(result = "Result<(), AppError>")]
pub struct Shutdown;

#[derive(Message)]
#[rtype(result = "FlusherStats")]
pub struct GetFlusherStats;

/// Also read back from other instances' snapshots (cluster views), hence `Deserialize`.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FlusherStats {
    pub buffered: usize,
    pub written: u64,
    /// Rows lost: raw rows pushed out of a full buffer plus rows the database refused.
    pub dropped: u64,
    pub retries: u64,
    pub last_error: Option<String>,
    pub batches: u64,
    /// Of `dropped`, the rows the database refused (each set aside alone, its batch written).
    pub refused: u64,
}
