//! Batches and where they go: one batch is one transaction.

use crate::db::models::{RequestRow, RollupRow, SessionRow};
use crate::db::queries::{now_ms, sessions, usage, write_transaction};
use crate::db::{DbConnection, DbError, DbPool};

/// One unit of work for the database, applied in one transaction. Kept whole across
/// retries; its id makes a retry after an unacknowledged commit a no-op.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Batch {
    pub id: String,
    pub sessions: Vec<SessionRow>,
    pub requests: Vec<RequestRow>,
    pub rollups: Vec<RollupRow>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.sessions.len() + self.requests.len() + self.rollups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Splits into two non-empty halves (rows in order: rollups, requests, sessions). Only
    /// called after the database refused this batch as a whole, so its id was never committed
    /// and each half may carry a fresh one.
    pub fn split(self) -> (Batch, Batch) {
        let mut first_rows = self.len() / 2;
        let mut first = Batch {
            id: format!("{}.0", self.id),
            ..Batch::default()
        };
        let mut second = Batch {
            id: format!("{}.1", self.id),
            ..Batch::default()
        };
        for row in self.rollups {
            if first_rows > 0 {
                first.rollups.push(row);
                first_rows -= 1;
            } else {
                second.rollups.push(row);
            }
        }
        for row in self.requests {
            if first_rows > 0 {
                first.requests.push(row);
                first_rows -= 1;
            } else {
                second.requests.push(row);
            }
        }
        for row in self.sessions {
            if first_rows > 0 {
                first.sessions.push(row);
                first_rows -= 1;
            } else {
                second.sessions.push(row);
            }
        }
        (first, second)
    }

    /// What a log line may say about a single refused row: its kind and key, never content.
    pub fn describe(&self) -> String {
        let rollups = self
            .rollups
            .iter()
            .map(|r| format!("rollup:{}:{}", r.bucket_start, r.model));
        let requests = self.requests.iter().map(|r| format!("request:{}", r.id));
        let sessions = self.sessions.iter().map(|s| format!("session:{}", s.id));
        rollups
            .chain(requests)
            .chain(sessions)
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// Where batches go. The real one writes to the database; tests substitute their own.
pub trait BatchWriter: Send + Sync + 'static {
    fn write(&self, batch: &Batch) -> Result<(), DbError>;
}

pub struct DbBatchWriter {
    pub db: DbPool,
}

/// How long applied batch ids are remembered (far longer than any retry takes).
const BATCH_LEDGER_KEEP_MS: i64 = 24 * 3600 * 1000;

impl BatchWriter for DbBatchWriter {
    fn write(&self, batch: &Batch) -> Result<(), DbError> {
        self.db
            .run_blocking(&|conn: &mut DbConnection| write_batch(conn, batch))
    }
}

/// Applies `batch` once in one transaction. Rows go in a fixed order (rollups by minute and
/// model, sessions by id; the state sorts them) so two instances upserting the same rollup
/// rows on PostgreSQL take their row locks in the same order and cannot deadlock.
pub fn write_batch(conn: &mut DbConnection, batch: &Batch) -> diesel::QueryResult<()> {
    write_transaction(conn, |conn| {
        let now = now_ms();
        if !usage::claim_batch(conn, &batch.id, now)? {
            log::warn!("event=flush_batch_already_applied batch={}", batch.id);
            return Ok(());
        }
        usage::add_rollups(conn, &batch.rollups)?;
        usage::insert_requests(conn, &batch.requests)?;
        sessions::upsert_sessions(conn, &batch.sessions)?;
        // The ledger only has to outlive any retry of a batch.
        usage::prune_batches(conn, now - BATCH_LEDGER_KEEP_MS)?;
        Ok(())
    })
}
