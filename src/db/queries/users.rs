use diesel::prelude::*;

use crate::db::models::UserRow;
use crate::db::schema::users;
use crate::db::DbConnection;
use crate::with_backend;

/// Creates the user's row with the default quota if it does not exist yet.
pub fn insert_user_if_missing(conn: &mut DbConnection, id: &str, now_ms: i64) -> QueryResult<()> {
    let row = UserRow {
        id: id.to_string(),
        daily_limit: None,
        disabled: false,
        version: 1,
        created_at: now_ms,
    };
    with_backend!(conn, |c| diesel::insert_into(users::table)
        .values(&row)
        .on_conflict_do_nothing()
        .execute(c))?;
    Ok(())
}

pub fn find_user(conn: &mut DbConnection, id: &str) -> QueryResult<Option<UserRow>> {
    with_backend!(conn, |c| users::table
        .find(id)
        .select(UserRow::as_select())
        .first(c)
        .optional())
}

/// The user's row, created on first use.
pub fn ensure_user(conn: &mut DbConnection, id: &str, now_ms: i64) -> QueryResult<UserRow> {
    insert_user_if_missing(conn, id, now_ms)?;
    find_user(conn, id)?.ok_or(diesel::result::Error::NotFound)
}
