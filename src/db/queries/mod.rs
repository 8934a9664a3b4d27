//! Free functions over `&mut DbConnection`, one file per table. Backend-specific SQL appears
//! only here, as a match on the connection variant.

pub mod collector;
pub mod history;
pub mod origins;
pub mod quota;
pub mod sessions;
pub mod usage;
pub mod users;

use diesel::connection::SimpleConnection;
use diesel::QueryResult;

use super::DbConnection;

/// A write transaction. On SQLite it takes the write lock up front (`BEGIN IMMEDIATE`): a
/// deferred transaction that has read can fail to upgrade its lock without waiting on the
/// busy timeout, which under contention turns into spurious errors.
pub fn write_transaction<T, F>(conn: &mut DbConnection, f: F) -> QueryResult<T>
where
    F: FnOnce(&mut DbConnection) -> QueryResult<T>,
{
    use diesel::connection::Connection;
    if matches!(conn, DbConnection::Postgres(_)) {
        return conn.transaction(f);
    }
    conn.batch_execute("BEGIN IMMEDIATE")?;
    let outcome = f(conn).and_then(|value| conn.batch_execute("COMMIT").map(|()| value));
    if outcome.is_err() {
        // Leaves the connection usable whatever failed; a ROLLBACK with no open transaction
        // only errors, which changes nothing.
        let _ = conn.batch_execute("ROLLBACK");
    }
    outcome
}

pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
