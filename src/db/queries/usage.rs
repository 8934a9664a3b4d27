//! Request log rows, per-minute rollups, and the ledger of applied flush batches.

use diesel::prelude::*;
use diesel::upsert::excluded;

use crate::db::models::{RequestRow, RollupRow};
use crate::db::schema::{flush_batches, request_log, usage_rollup};
use crate::db::DbConnection;
use crate::with_backend;

/// Rows per INSERT: well under SQLite's bound-parameter limit with 11 columns.
const INSERT_CHUNK: usize = 200;

/// Records `batch_id` as applied. `false` means it was applied before (a retry after a commit
/// whose acknowledgement was lost) and must not be applied again.
pub fn claim_batch(conn: &mut DbConnection, batch_id: &str, now_ms: i64) -> QueryResult<bool> {
    let inserted = with_backend!(conn, |c| diesel::insert_into(flush_batches::table)
        .values((
            flush_batches::id.eq(batch_id),
            flush_batches::written_at.eq(now_ms)
        ))
        .on_conflict_do_nothing()
        .execute(c))?;
    Ok(inserted == 1)
}

pub fn prune_batches(conn: &mut DbConnection, older_than_ms: i64) -> QueryResult<usize> {
    diesel::delete(flush_batches::table.filter(flush_batches::written_at.lt(older_than_ms)))
        .execute(conn)
}

/// Inserts request rows; a row already stored (same id) is left as it is.
pub fn insert_requests(conn: &mut DbConnection, rows: &[RequestRow]) -> QueryResult<usize> {
    let mut inserted = 0;
    for chunk in rows.chunks(INSERT_CHUNK) {
        inserted += with_backend!(conn, |c| diesel::insert_into(request_log::table)
            .values(chunk)
            .on_conflict_do_nothing()
            .execute(c))?;
    }
    Ok(inserted)
}

/// Adds each rollup's sums to its (minute, model) row.
pub fn add_rollups(conn: &mut DbConnection, rows: &[RollupRow]) -> QueryResult<usize> {
    use usage_rollup::dsl as r;
    let mut written = 0;
    for row in rows {
        written += with_backend!(conn, |c| diesel::insert_into(r::usage_rollup)
            .values(row)
            .on_conflict((r::bucket_start, r::model))
            .do_update()
            .set((
                r::requests.eq(r::requests + excluded(r::requests)),
                r::errors.eq(r::errors + excluded(r::errors)),
                r::latency_sum_ms.eq(r::latency_sum_ms + excluded(r::latency_sum_ms)),
                r::latency_count.eq(r::latency_count + excluded(r::latency_count)),
                r::tokens_in.eq(r::tokens_in + excluded(r::tokens_in)),
                r::tokens_out.eq(r::tokens_out + excluded(r::tokens_out)),
            ))
            .execute(c))?;
    }
    Ok(written)
}

pub fn count_requests(conn: &mut DbConnection) -> QueryResult<i64> {
    request_log::table.count().get_result(conn)
}

pub fn sum_rollup_requests(conn: &mut DbConnection) -> QueryResult<i64> {
    let rows: Vec<i64> = usage_rollup::table
        .select(usage_rollup::requests)
        .load(conn)?;
    Ok(rows.iter().sum())
}
