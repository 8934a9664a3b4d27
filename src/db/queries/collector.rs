//! The usage collector's tables: its single-flight lease (`collector_lease`), its run records
//! (`collector_runs`), and the compaction and retention run itself.
//!
//! Lease times come from the database's clock, not the instance's: instances whose clocks
//! disagree still agree on whether a lease has expired, and the recorded runs of different
//! instances are on one time line.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::db::models::{CollectorRunRow, LeaseRow};
use crate::db::schema::{collector_lease, collector_runs, quota_usage, request_log};
use crate::db::DbConnection;
use crate::with_backend;

use super::{usage, write_transaction};

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

// Raw rows older than the cutoff that the rollups already count. Both counts in one statement
// so they see the same rows; both are answered from indexes (the second from the partial
// index on unrolled rows).
const COUNT_ROLLED_POSTGRES: &str = "\
SELECT (SELECT COUNT(*) FROM request_log WHERE started_at < $1) \
     - (SELECT COUNT(*) FROM request_log WHERE rolled_up = false AND started_at < $1) AS n";

const COUNT_ROLLED_SQLITE: &str = "\
SELECT (SELECT COUNT(*) FROM request_log WHERE started_at < ?1) \
     - (SELECT COUNT(*) FROM request_log WHERE rolled_up = false AND started_at < ?1) AS n";

// Folding: each unrolled row older than the cutoff is added to its (minute, model) rollup and
// marked rolled up, together, so a row is counted once whatever fails or repeats. The minute
// is floored the way the flusher floors it (also for times before 1970). An error is any
// outcome but ok and cancelled, as `RequestRow::is_error` says.
//
// PostgreSQL: one statement; marking comes first and the rollup is built from exactly the rows
// marked, so a row committed concurrently is either in both or in neither.
const FOLD_POSTGRES: &str = "\
WITH folded AS ( \
    UPDATE request_log SET rolled_up = true \
    WHERE rolled_up = false AND started_at < $1 \
    RETURNING model, started_at, latency_ms, tokens_in, tokens_out, outcome \
), added AS ( \
    INSERT INTO usage_rollup \
        (bucket_start, model, requests, errors, latency_sum_ms, latency_count, tokens_in, tokens_out) \
    SELECT started_at - ((started_at % 60000) + 60000) % 60000 AS bucket, model, COUNT(*), \
        SUM(CASE WHEN outcome IN ('ok', 'cancelled') THEN 0 ELSE 1 END), SUM(latency_ms), \
        COUNT(*), SUM(tokens_in), SUM(tokens_out) \
    FROM folded GROUP BY bucket, model \
    ON CONFLICT (bucket_start, model) DO UPDATE SET \
        requests = usage_rollup.requests + excluded.requests, \
        errors = usage_rollup.errors + excluded.errors, \
        latency_sum_ms = usage_rollup.latency_sum_ms + excluded.latency_sum_ms, \
        latency_count = usage_rollup.latency_count + excluded.latency_count, \
        tokens_in = usage_rollup.tokens_in + excluded.tokens_in, \
        tokens_out = usage_rollup.tokens_out + excluded.tokens_out \
) \
SELECT COUNT(*) AS n FROM folded";

// SQLite has no data-modifying CTEs; the two statements run under the write lock that
// `write_transaction` takes up front, so no row can appear between them.
const FOLD_ADD_SQLITE: &str = "\
INSERT INTO usage_rollup \
    (bucket_start, model, requests, errors, latency_sum_ms, latency_count, tokens_in, tokens_out) \
SELECT started_at - ((started_at % 60000) + 60000) % 60000 AS bucket, model, COUNT(*), \
    SUM(CASE WHEN outcome IN ('ok', 'cancelled') THEN 0 ELSE 1 END), SUM(latency_ms), \
    COUNT(*), SUM(tokens_in), SUM(tokens_out) \
FROM request_log WHERE rolled_up = false AND started_at < ?1 \
GROUP BY bucket, model \
ON CONFLICT (bucket_start, model) DO UPDATE SET \
    requests = usage_rollup.requests + excluded.requests, \
    errors = usage_rollup.errors + excluded.errors, \
    latency_sum_ms = usage_rollup.latency_sum_ms + excluded.latency_sum_ms, \
    latency_count = usage_rollup.latency_count + excluded.latency_count, \
    tokens_in = usage_rollup.tokens_in + excluded.tokens_in, \
    tokens_out = usage_rollup.tokens_out + excluded.tokens_out";

const FOLD_MARK_SQLITE: &str =
    "UPDATE request_log SET rolled_up = true WHERE rolled_up = false AND started_at < ?1";

#[derive(QueryableByName)]
struct NowMs {
    #[diesel(sql_type = BigInt)]
    now_ms: i64,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
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

/// The cutoffs of one run, all derived from its start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CollectPlan {
    /// Unrolled raw rows that started before this are folded into the rollups.
    pub fold_before_ms: i64,
    /// Rolled-up raw rows that started before this are deleted.
    pub delete_raw_before_ms: i64,
    /// Quota rows for days before this `YYYY-MM-DD` are deleted.
    pub keep_quota_from_day: String,
    /// Flush batch ids recorded before this are forgotten.
    pub forget_batches_before_ms: i64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CollectReport {
    /// Raw rows old enough to fold that the run looked at (`stored + skipped`).
    pub processed: i64,
    /// Rows folded into the rollups by this run.
    pub stored: i64,
    /// Rows the rollups already counted.
    pub skipped: i64,
    pub raw_deleted: i64,
    pub quota_pruned: i64,
    pub batches_pruned: i64,
    /// Time spent waiting to open the write transaction (SQLite's write lock).
    pub lock_wait_ms: i64,
}

/// The compaction and retention run, in one transaction: folding and marking land together
/// or not at all, so running it twice (or retrying it) never counts a row twice.
pub fn collect(conn: &mut DbConnection, plan: &CollectPlan) -> QueryResult<CollectReport> {
    let asked = std::time::Instant::now();
    write_transaction(conn, |conn| {
        let lock_wait_ms = i64::try_from(asked.elapsed().as_millis()).unwrap_or(i64::MAX);
        let skipped = count_rolled_up_before(conn, plan.fold_before_ms)?;
        let stored = fold_unrolled_before(conn, plan.fold_before_ms)?;
        let raw_deleted = delete_rolled_up_before(conn, plan.delete_raw_before_ms)?;
        let quota_pruned = diesel::delete(
            quota_usage::table.filter(quota_usage::day.lt(&plan.keep_quota_from_day)),
        )
        .execute(conn)?;
        let batches_pruned = usage::prune_batches(conn, plan.forget_batches_before_ms)?;
        Ok(CollectReport {
            processed: stored + skipped,
            stored,
            skipped,
            raw_deleted: raw_deleted as i64,
            quota_pruned: quota_pruned as i64,
            batches_pruned: batches_pruned as i64,
            lock_wait_ms,
        })
    })
}

fn count_rolled_up_before(conn: &mut DbConnection, before_ms: i64) -> QueryResult<i64> {
    let row: Count = match conn {
        DbConnection::Postgres(c) => diesel::sql_query(COUNT_ROLLED_POSTGRES)
            .bind::<BigInt, _>(before_ms)
            .get_result(c)?,
        DbConnection::Sqlite(c) => diesel::sql_query(COUNT_ROLLED_SQLITE)
            .bind::<BigInt, _>(before_ms)
            .get_result(c)?,
    };
    Ok(row.n)
}

/// Folds unrolled rows that started before `before_ms` into the rollups; returns how many.
fn fold_unrolled_before(conn: &mut DbConnection, before_ms: i64) -> QueryResult<i64> {
    match conn {
        DbConnection::Postgres(c) => {
            let row: Count = diesel::sql_query(FOLD_POSTGRES)
                .bind::<BigInt, _>(before_ms)
                .get_result(c)?;
            Ok(row.n)
        }
        DbConnection::Sqlite(c) => {
            diesel::sql_query(FOLD_ADD_SQLITE)
                .bind::<BigInt, _>(before_ms)
                .execute(c)?;
            let marked = diesel::sql_query(FOLD_MARK_SQLITE)
                .bind::<BigInt, _>(before_ms)
                .execute(c)?;
            Ok(marked as i64)
        }
    }
}

/// Deletes raw rows past retention, only those the rollups already count.
fn delete_rolled_up_before(conn: &mut DbConnection, before_ms: i64) -> QueryResult<usize> {
    with_backend!(conn, |c| diesel::delete(
        request_log::table
            .filter(request_log::rolled_up.eq(true))
            .filter(request_log::started_at.lt(before_ms))
    )
    .execute(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::{RequestRow, RollupRow};
    use crate::db::{migrations, DatabaseUrl, DbConnectionManager};
    use diesel::connection::SimpleConnection;
    use diesel::r2d2::ManageConnection;

    fn sqlite() -> DbConnection {
        let mut conn = DbConnectionManager::new(DatabaseUrl::parse(":memory:"))
            .connect()
            .expect("open in-memory SQLite");
        migrations::run_pending(&mut conn).expect("migrate");
        conn
    }

    fn begin(run_id: &str, holder: &str) -> BeginRun {
        BeginRun {
            holder: holder.into(),
            run_id: run_id.into(),
            lease_ttl_ms: 60_000,
            min_gap_ms: None,
        }
    }

    fn finish(run_id: &str) -> RunFinish {
        RunFinish {
            run_id: run_id.into(),
            processed: 0,
            stored: 0,
            skipped: 0,
            lock_wait_ms: 0,
            status: status::OK,
            error: None,
        }
    }

    fn raw(id: &str, model: &str, started_at: i64, outcome: &str, rolled_up: bool) -> RequestRow {
        RequestRow {
            id: id.into(),
            user_id: "u".into(),
            session_id: None,
            model: model.into(),
            started_at,
            latency_ms: 10,
            tokens_in: 2,
            tokens_out: 3,
            estimated: false,
            outcome: outcome.into(),
            rolled_up,
        }
    }

    fn rollups(conn: &mut DbConnection) -> Vec<RollupRow> {
        use crate::db::schema::usage_rollup::dsl as u;
        u::usage_rollup
            .select(RollupRow::as_select())
            .order((u::bucket_start, u::model))
            .load(conn)
            .expect("rollups")
    }

    #[test]
    fn a_live_lease_is_exclusive_and_a_released_one_is_free() {
        let mut conn = sqlite();
        assert!(matches!(
            begin_run(&mut conn, &begin("r1", "a")),
            Ok(Begun::Started { .. })
        ));
        assert_eq!(
            begin_run(&mut conn, &begin("r2", "b")).expect("begin"),
            Begun::Held {
                run_id: "r1".into()
            }
        );
        // Repeating the holder's own attempt is harmless (a retry after a lost commit ack).
        assert!(matches!(
            begin_run(&mut conn, &begin("r1", "a")),
            Ok(Begun::Started { .. })
        ));
        let row = end_run(&mut conn, &finish("r1"))
            .expect("end")
            .expect("row");
        assert_eq!(row.status, "ok");
        assert!(row.finished_at.is_some_and(|f| f >= row.started_at));
        assert_eq!(find_lease(&mut conn, LEASE_NAME).expect("lease"), None);
        assert!(matches!(
            begin_run(&mut conn, &begin("r2", "b")),
            Ok(Begun::Started { .. })
        ));
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_its_run_marked_abandoned() {
        let mut conn = sqlite();
        conn.batch_execute(
            "INSERT INTO collector_lease VALUES ('usage_collector', 'dead', 'old', 1000); \
             INSERT INTO collector_runs (run_id, holder, started_at, status) \
             VALUES ('old', 'dead', 500, 'running');",
        )
        .expect("seed");
        assert!(matches!(
            begin_run(&mut conn, &begin("new", "alive")),
            Ok(Begun::Started { .. })
        ));
        let lease = find_lease(&mut conn, LEASE_NAME)
            .expect("lease")
            .expect("row");
        assert_eq!(
            (lease.holder.as_str(), lease.run_id.as_str()),
            ("alive", "new")
        );
        let runs = list_runs(&mut conn, 10, None).expect("runs");
        let old = runs.iter().find(|r| r.run_id == "old").expect("old run");
        assert_eq!(old.status, status::ABANDONED);
        // The dead holder's late release cannot free the new holder's lease.
        assert!(!release_lease(&mut conn, LEASE_NAME, "old").expect("release"));
        assert!(!renew_lease(&mut conn, LEASE_NAME, "old", 1000).expect("renew"));
        assert!(renew_lease(&mut conn, LEASE_NAME, "new", 1000).expect("renew"));
    }

    #[test]
    fn a_timer_run_is_skipped_when_a_run_started_recently() {
        let mut conn = sqlite();
        begin_run(&mut conn, &begin("r1", "a")).expect("begin");
        end_run(&mut conn, &finish("r1")).expect("end");
        let mut timer = begin("r2", "b");
        timer.min_gap_ms = Some(3_600_000);
        assert!(matches!(
            begin_run(&mut conn, &timer).expect("begin"),
            Begun::NotDue { .. }
        ));
        assert_eq!(
            find_lease(&mut conn, LEASE_NAME).expect("lease"),
            None,
            "a skipped timer run leaves no lease behind"
        );
        timer.min_gap_ms = Some(0);
        assert!(matches!(
            begin_run(&mut conn, &timer).expect("begin"),
            Begun::Started { .. }
        ));
    }

    #[test]
    fn folding_counts_each_unrolled_row_once_per_minute_and_model() {
        let mut conn = sqlite();
        let minute = 1_700_000_040_000; // a whole minute
        usage::insert_requests(
            &mut conn,
            &[
                raw("a", "echo", minute + 1, "ok", false),
                raw("b", "echo", minute + 59_999, "upstream_error", false),
                raw("c", "small", minute + 5, "cancelled", false),
                raw("d", "echo", minute + 60_000, "ok", false),
                raw("e", "echo", minute + 2, "ok", true),
                raw("late", "echo", minute + 600_000, "ok", false),
            ],
        )
        .expect("insert");
        let plan = CollectPlan {
            fold_before_ms: minute + 300_000,
            delete_raw_before_ms: 0,
            keep_quota_from_day: "1970-01-01".into(),
            forget_batches_before_ms: 0,
        };
        let first = collect(&mut conn, &plan).expect("collect");
        assert_eq!((first.processed, first.stored, first.skipped), (5, 4, 1));
        let expected = vec![
            RollupRow {
                bucket_start: minute,
                model: "echo".into(),
                requests: 2,
                errors: 1,
                latency_sum_ms: 20,
                latency_count: 2,
                tokens_in: 4,
                tokens_out: 6,
            },
            RollupRow {
                bucket_start: minute,
                model: "small".into(),
                requests: 1,
                errors: 0,
                latency_sum_ms: 10,
                latency_count: 1,
                tokens_in: 2,
                tokens_out: 3,
            },
            RollupRow {
                bucket_start: minute + 60_000,
                model: "echo".into(),
                requests: 1,
                errors: 0,
                latency_sum_ms: 10,
                latency_count: 1,
                tokens_in: 2,
                tokens_out: 3,
            },
        ];
        assert_eq!(rollups(&mut conn), expected);
        let second = collect(&mut conn, &plan).expect("collect");
        assert_eq!((second.processed, second.stored, second.skipped), (5, 0, 5));
        assert_eq!(rollups(&mut conn), expected, "a second run adds nothing");
    }

    #[test]
    fn folding_adds_to_an_existing_rollup_and_floors_times_before_1970() {
        let mut conn = sqlite();
        usage::add_rollups(
            &mut conn,
            &[RollupRow {
                bucket_start: -60_000,
                model: "echo".into(),
                requests: 5,
                errors: 0,
                latency_sum_ms: 50,
                latency_count: 5,
                tokens_in: 0,
                tokens_out: 0,
            }],
        )
        .expect("rollup");
        usage::insert_requests(&mut conn, &[raw("a", "echo", -1, "ok", false)]).expect("insert");
        let plan = CollectPlan {
            fold_before_ms: 0,
            delete_raw_before_ms: 0,
            keep_quota_from_day: "1970-01-01".into(),
            forget_batches_before_ms: 0,
        };
        collect(&mut conn, &plan).expect("collect");
        let rows = rollups(&mut conn);
        assert_eq!(rows.len(), 1, "{rows:?}");
        assert_eq!((rows[0].requests, rows[0].latency_sum_ms), (6, 60));
    }

    #[test]
    fn retention_deletes_only_old_rolled_up_rows_and_old_quota_days() {
        let mut conn = sqlite();
        usage::insert_requests(
            &mut conn,
            &[
                raw("old-rolled", "echo", 1_000, "ok", true),
                raw("old-unrolled", "echo", 2_000, "ok", false),
                raw("new-rolled", "echo", 9_000_000, "ok", true),
            ],
        )
        .expect("insert");
        conn.batch_execute(
            "INSERT INTO users (id, created_at) VALUES ('u', 0); \
             INSERT INTO quota_usage (user_id, day, used) VALUES ('u', '2026-01-01', 1), ('u', '2026-01-02', 1), \
             ('u', '2026-02-10', 1);",
        )
        .expect("seed quota");
        let plan = CollectPlan {
            // The unrolled row is too young to fold, so it must survive retention.
            fold_before_ms: 1_500,
            delete_raw_before_ms: 5_000,
            keep_quota_from_day: "2026-01-02".into(),
            forget_batches_before_ms: 0,
        };
        let report = collect(&mut conn, &plan).expect("collect");
        assert_eq!((report.raw_deleted, report.quota_pruned), (1, 1));
        let ids: Vec<String> = request_log::table
            .select(request_log::id)
            .order(request_log::id)
            .load(&mut conn)
            .expect("ids");
        assert_eq!(ids, ["new-rolled", "old-unrolled"]);
        let days: Vec<String> = quota_usage::table
            .select(quota_usage::day)
            .order(quota_usage::day)
            .load(&mut conn)
            .expect("days");
        assert_eq!(days, ["2026-01-02", "2026-02-10"]);
    }

    #[test]
    fn runs_are_listed_newest_first_in_pages() {
        let mut conn = sqlite();
        conn.batch_execute(
            "INSERT INTO collector_runs (run_id, holder, started_at, status) VALUES \
             ('a', 'h', 1, 'ok'), ('b', 'h', 2, 'ok'), ('c', 'h', 2, 'ok'), ('d', 'h', 3, 'ok');",
        )
        .expect("seed");
        let mut seen = Vec::new();
        let mut before: Option<(i64, String)> = None;
        loop {
            let page = list_runs(
                &mut conn,
                2,
                before.as_ref().map(|(s, id)| (*s, id.as_str())),
            )
            .expect("page");
            let Some(last) = page.last() else { break };
            before = Some((last.started_at, last.run_id.clone()));
            seen.extend(page.into_iter().map(|r| r.run_id));
        }
        assert_eq!(seen, ["d", "c", "b", "a"]);
    }
}
