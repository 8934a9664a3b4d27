//! The retention run: what it deletes, in one transaction.

use diesel::prelude::*;

use crate::db::queries::{usage, write_transaction};
use crate::db::schema::{quota_usage, request_log, sessions};
use crate::db::DbConnection;

/// The cutoffs of one run, all derived from its start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectPlan {
    /// Raw rows that started before this are deleted (the rollups count them already), and so
    /// are sessions that ended before it.
    pub delete_raw_before_ms: i64,
    /// Quota rows for days before this `YYYY-MM-DD` are deleted.
    pub keep_quota_from_day: String,
    /// Flush batch ids recorded before this are forgotten.
    pub forget_batches_before_ms: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// Rows retention removed: raw request rows plus ended sessions.
    pub processed: i64,
    /// Always 0: the flusher counts every raw row into the rollups as it writes it, so a run
    /// has nothing to fold. Kept because the run listing reports it.
    pub stored: i64,
    /// Always 0, for the same reason.
    pub skipped: i64,
    pub raw_deleted: i64,
    pub sessions_deleted: i64,
    pub quota_pruned: i64,
    pub batches_pruned: i64,
    /// Time spent waiting to open the write transaction (SQLite's write lock).
    pub lock_wait_ms: i64,
}

/// The retention run, in one transaction.
pub fn collect(conn: &mut DbConnection, plan: &CollectPlan) -> QueryResult<CollectReport> {
    let asked = std::time::Instant::now();
    write_transaction(conn, |conn| {
        let lock_wait_ms = i64::try_from(asked.elapsed().as_millis()).unwrap_or(i64::MAX);
        let raw_deleted = diesel::delete(
            request_log::table.filter(request_log::started_at.lt(plan.delete_raw_before_ms)),
        )
        .execute(conn)? as i64;
        // Live sessions have no end; only those ended longer ago than the raw retention go.
        let sessions_deleted = diesel::delete(
            sessions::table.filter(sessions::ended_at.lt(plan.delete_raw_before_ms)),
        )
        .execute(conn)? as i64;
        let quota_pruned = diesel::delete(
            quota_usage::table.filter(quota_usage::day.lt(&plan.keep_quota_from_day)),
        )
        .execute(conn)?;
        let batches_pruned = usage::prune_batches(conn, plan.forget_batches_before_ms)?;
        Ok(CollectReport {
            processed: raw_deleted + sessions_deleted,
            raw_deleted,
            sessions_deleted,
            quota_pruned: quota_pruned as i64,
            batches_pruned: batches_pruned as i64,
            lock_wait_ms,
            ..CollectReport::default()
        })
    })
}
