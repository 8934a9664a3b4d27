use diesel::prelude::*;

use crate::db::models::SessionRow;
use crate::db::schema::sessions;
use crate::db::DbConnection;
use crate::with_backend;

/// Writes the latest state of each session; safe to repeat (a retried batch rewrites the
/// same values).
pub fn upsert_sessions(conn: &mut DbConnection, rows: &[SessionRow]) -> QueryResult<usize> {
    let mut written = 0;
    for row in rows {
        written += with_backend!(conn, |c| diesel::insert_into(sessions::table)
            .values(row)
            .on_conflict(sessions::id)
            .do_update()
            .set(row)
            .execute(c))?;
    }
    Ok(written)
}

pub fn find_session(conn: &mut DbConnection, id: &str) -> QueryResult<Option<SessionRow>> {
    sessions::table
        .find(id)
        .select(SessionRow::as_select())
        .first(conn)
        .optional()
}
