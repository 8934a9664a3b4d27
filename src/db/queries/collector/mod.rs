//! The usage collector's tables: its single-flight lease (`collector_lease`), its run records
//! (`collector_runs`), and the compaction and retention run itself.
//!
//! Lease times come from the database's clock, not the instance's: instances whose clocks
//! disagree still agree on whether a lease has expired, and the recorded runs of different
//! instances are on one time line.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::db::models::{CollectorRunRow, LeaseRow};
use crate::db::schema::{collector_lease, collector_runs};
use crate::db::DbConnection;
use crate::with_backend;

use super::write_transaction;

mod retention;

pub use retention::{collect, CollectPlan, CollectReport};

/// The lease row the usage collector runs under.
pub const LEASE_NAME: &str = "usage_collector";

/// Values of `collector_runs.status`.
pub mod status {
    pub const RUNNING: &str = "running";
    pub const OK: &str = "ok";
    pub const ERROR: &str = "error";
    /// Its holder stopped renewing the lease before finishing (the process died); a later
    /// run took the lease over.
    pub const ABANDONED: &str = "abandoned";
}

/// Epoch milliseconds now, by the database's clock. `clock_timestamp()` rather than `now()`:
/// the latter is the transaction's start, which can be long before a lock wait ended.
const CLOCK_POSTGRES: &str =
    "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT AS now_ms";
const CLOCK_SQLITE: &str = "SELECT CAST(ROUND(unixepoch('subsec') * 1000) AS INTEGER) AS now_ms";

// Takes the lease when it is free, expired, or already ours (a retried attempt whose commit
// was not acknowledged): one statement, so two instances can never both succeed. Nothing is
// returned when someone else holds a live lease.
const ACQUIRE_POSTGRES: &str = "\
INSERT INTO collector_lease (name, holder, run_id, expires_at) \
VALUES ($1, $2, $3, (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT + $4) \
ON CONFLICT (name) DO UPDATE \
SET holder = excluded.holder, run_id = excluded.run_id, expires_at = excluded.expires_at \
WHERE collector_lease.expires_at < (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT \
OR collector_lease.run_id = excluded.run_id \
RETURNING run_id";

const ACQUIRE_SQLITE: &str = "\
INSERT INTO collector_lease (name, holder, run_id, expires_at) \
VALUES (?1, ?2, ?3, CAST(ROUND(unixepoch('subsec') * 1000) AS INTEGER) + ?4) \
ON CONFLICT (name) DO UPDATE \
SET holder = excluded.holder, run_id = excluded.run_id, expires_at = excluded.expires_at \
WHERE collector_lease.expires_at < CAST(ROUND(unixepoch('subsec') * 1000) AS INTEGER) \
OR collector_lease.run_id = excluded.run_id \
RETURNING run_id";

const RENEW_POSTGRES: &str = "\
UPDATE collector_lease \
SET expires_at = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT + $3 \
WHERE name = $1 AND run_id = $2";

const RENEW_SQLITE: &str = "\
UPDATE collector_lease \
SET expires_at = CAST(ROUND(unixepoch('subsec') * 1000) AS INTEGER) + ?3 \
WHERE name = ?1 AND run_id = ?2";

#[derive(QueryableByName)]
struct NowMs {
    #[diesel(sql_type = BigInt)]
    now_ms: i64,
}

#[derive(QueryableByName)]
struct RunId {
    #[diesel(sql_type = Text)]
    #[allow(dead_code)] // only its presence matters
    run_id: String,
}

/// Epoch milliseconds by the database's clock.
pub fn db_clock_ms(conn: &mut DbConnection) -> QueryResult<i64> {
    let row: NowMs = match conn {
        DbConnection::Postgres(c) => diesel::sql_query(CLOCK_POSTGRES).get_result(c)?,
        DbConnection::Sqlite(c) => diesel::sql_query(CLOCK_SQLITE).get_result(c)?,
    };
    Ok(row.now_ms)
}

/// Takes lease `name` for `run_id` until `ttl_ms` from now, if nobody holds it live.
pub fn try_acquire_lease(
    conn: &mut DbConnection,
    name: &str,
    holder: &str,
    run_id: &str,
    ttl_ms: i64,
) -> QueryResult<bool> {
    let taken: Option<RunId> = match conn {
        DbConnection::Postgres(c) => diesel::sql_query(ACQUIRE_POSTGRES)
            .bind::<Text, _>(name)
            .bind::<Text, _>(holder)
            .bind::<Text, _>(run_id)
            .bind::<BigInt, _>(ttl_ms)
            .get_result(c)
            .optional()?,
        DbConnection::Sqlite(c) => diesel::sql_query(ACQUIRE_SQLITE)
            .bind::<Text, _>(name)
            .bind::<Text, _>(holder)
            .bind::<Text, _>(run_id)
            .bind::<BigInt, _>(ttl_ms)
            .get_result(c)
            .optional()?,
    };
    Ok(taken.is_some())
}

/// Pushes the lease's expiry to `ttl_ms` from now; `false` when `run_id` no longer holds it.
pub fn renew_lease(
    conn: &mut DbConnection,
    name: &str,
    run_id: &str,
    ttl_ms: i64,
) -> QueryResult<bool> {
    let updated = match conn {
        DbConnection::Postgres(c) => diesel::sql_query(RENEW_POSTGRES)
            .bind::<Text, _>(name)
            .bind::<Text, _>(run_id)
            .bind::<BigInt, _>(ttl_ms)
            .execute(c)?,
        DbConnection::Sqlite(c) => diesel::sql_query(RENEW_SQLITE)
            .bind::<Text, _>(name)
            .bind::<Text, _>(run_id)
            .bind::<BigInt, _>(ttl_ms)
            .execute(c)?,
    };
    Ok(updated == 1)
}

/// Gives the lease up, only if `run_id` still holds it (a lease taken over is not touched).
pub fn release_lease(conn: &mut DbConnection, name: &str, run_id: &str) -> QueryResult<bool> {
    let deleted = diesel::delete(
        collector_lease::table
            .filter(collector_lease::name.eq(name))
            .filter(collector_lease::run_id.eq(run_id)),
    )
    .execute(conn)?;
    Ok(deleted == 1)
}

pub fn find_lease(conn: &mut DbConnection, name: &str) -> QueryResult<Option<LeaseRow>> {
    collector_lease::table
        .find(name)
        .select(LeaseRow::as_select())
        .first(conn)
        .optional()
}

/// What `begin_run` asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BeginRun {
    pub holder: String,
    pub run_id: String,
    pub lease_ttl_ms: i64,
    /// Timer runs only: do nothing if any run started less than this long ago, so N instances
    /// with their own timers run about once per interval between them, not N times.
    pub min_gap_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Begun {
    /// The lease is ours and the run is recorded as `running`.
    Started { started_at: i64 },
    /// Someone holds a live lease; `run_id` is their run.
    Held { run_id: String },
    /// A timer run found a recent run and left the lease as it was.
    NotDue { last_started_at: i64 },
}

/// Takes the lease and records the run, in one transaction: a held lease always has its run
/// row. Safe to repeat after an unacknowledged commit (the lease is already ours then).
pub fn begin_run(conn: &mut DbConnection, req: &BeginRun) -> QueryResult<Begun> {
    write_transaction(conn, |conn| {
        if !try_acquire_lease(conn, LEASE_NAME, &req.holder, &req.run_id, req.lease_ttl_ms)? {
            // The failed upsert locked the live row (PostgreSQL) or we hold the write lock
            // (SQLite), so it is still there to read.
            let holder = find_lease(conn, LEASE_NAME)?.ok_or(diesel::result::Error::NotFound)?;
            return Ok(Begun::Held {
                run_id: holder.run_id,
            });
        }
        // Read after the lease is ours: the previous run's release committed before this, so
        // recorded runs never overlap.
        let now = db_clock_ms(conn)?;
        if let Some(gap) = req.min_gap_ms {
            let last = collector_runs::table
                .filter(collector_runs::run_id.ne(&req.run_id))
                .select(diesel::dsl::max(collector_runs::started_at))
                .first::<Option<i64>>(conn)?;
            if let Some(last) = last.filter(|last| now - last < gap) {
                release_lease(conn, LEASE_NAME, &req.run_id)?;
                return Ok(Begun::NotDue {
                    last_started_at: last,
                });
            }
        }
        // Holding the lease means no other run is alive: any still marked running lost its
        // lease without finishing. Its own late finish (a stalled, not dead, holder) would
        // still overwrite this with the real outcome.
        diesel::update(
            collector_runs::table
                .filter(collector_runs::status.eq(status::RUNNING))
                .filter(collector_runs::run_id.ne(&req.run_id)),
        )
        .set((
            collector_runs::status.eq(status::ABANDONED),
            collector_runs::error.eq(Some("its lease expired before it finished")),
        ))
        .execute(conn)?;
        let row = CollectorRunRow {
            run_id: req.run_id.clone(),
            holder: req.holder.clone(),
            started_at: now,
            finished_at: None,
            processed: 0,
            stored: 0,
            skipped: 0,
            duration_ms: None,
            lock_wait_ms: 0,
            status: status::RUNNING.to_string(),
            error: None,
        };
        let inserted = with_backend!(conn, |c| diesel::insert_into(collector_runs::table)
            .values(&row)
            .on_conflict_do_nothing()
            .execute(c))?;
        if inserted == 0 {
            // A retry of an attempt that committed: report the time that was recorded.
            let started_at = collector_runs::table
                .find(&req.run_id)
                .select(collector_runs::started_at)
                .first(conn)?;
            return Ok(Begun::Started { started_at });
        }
        Ok(Begun::Started { started_at: now })
    })
}

/// A run's outcome, written by `end_run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFinish {
    pub run_id: String,
    pub processed: i64,
    pub stored: i64,
    pub skipped: i64,
    pub lock_wait_ms: i64,
    pub status: &'static str,
    pub error: Option<String>,
}

/// Records the outcome and releases the lease, together. Returns the finished row (`None` if
/// the run was never recorded).
pub fn end_run(conn: &mut DbConnection, fin: &RunFinish) -> QueryResult<Option<CollectorRunRow>> {
    write_transaction(conn, |conn| {
        // Taken inside the transaction that releases the lease: the next run's start is read
        // after this commits, so it is never earlier than this finish.
        let now = db_clock_ms(conn)?;
        let started_at: Option<i64> = collector_runs::table
            .find(&fin.run_id)
            .select(collector_runs::started_at)
            .first(conn)
            .optional()?;
        if let Some(started_at) = started_at {
            diesel::update(collector_runs::table.find(&fin.run_id))
                .set((
                    collector_runs::finished_at.eq(Some(now)),
                    collector_runs::duration_ms.eq(Some((now - started_at).max(0))),
                    collector_runs::processed.eq(fin.processed),
                    collector_runs::stored.eq(fin.stored),
                    collector_runs::skipped.eq(fin.skipped),
                    collector_runs::lock_wait_ms.eq(fin.lock_wait_ms),
                    collector_runs::status.eq(fin.status),
                    collector_runs::error.eq(fin.error.as_deref()),
                ))
                .execute(conn)?;
        }
        release_lease(conn, LEASE_NAME, &fin.run_id)?;
        collector_runs::table
            .find(&fin.run_id)
            .select(CollectorRunRow::as_select())
            .first(conn)
            .optional()
    })
}

/// Runs newest first; `before` is the (started_at, run_id) of the last row of the previous page.
pub fn list_runs(
    conn: &mut DbConnection,
    limit: i64,
    before: Option<(i64, &str)>,
) -> QueryResult<Vec<CollectorRunRow>> {
    use collector_runs::dsl as r;
    let newest_first = (r::started_at.desc(), r::run_id.desc());
    match before {
        None => r::collector_runs
            .select(CollectorRunRow::as_select())
            .order(newest_first)
            .limit(limit)
            .load(conn),
        Some((started_at, run_id)) => r::collector_runs
            .select(CollectorRunRow::as_select())
            .filter(
                r::started_at
                    .lt(started_at)
                    .or(r::started_at.eq(started_at).and(r::run_id.lt(run_id))),
            )
            .order(newest_first)
            .limit(limit)
            .load(conn),
    }
}

#[cfg(test)]
mod tests;
