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

/// The user's row, created on first use. Reads first, so only a user's first use writes:
/// every later call (a WebSocket handshake, a reconnect) is a primary-key read, which on
/// SQLite never waits for the single writer (the usage flusher's batches).
pub fn ensure_user(conn: &mut DbConnection, id: &str, now_ms: i64) -> QueryResult<UserRow> {
    if let Some(row) = find_user(conn, id)? {
        return Ok(row);
    }
    insert_user_if_missing(conn, id, now_ms)?;
    find_user(conn, id)?.ok_or(diesel::result::Error::NotFound)
}

/// Users ordered by id, after `after` (exclusive), at most `limit`.
pub fn list_users(
    conn: &mut DbConnection,
    after: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<UserRow>> {
    with_backend!(conn, |c| {
        let mut query = users::table
            .select(UserRow::as_select())
            .order(users::id.asc())
            .limit(limit)
            .into_boxed();
        if let Some(after) = after {
            query = query.filter(users::id.gt(after));
        }
        query.load(c)
    })
}

/// What an admin wants a user row to say.
#[derive(Clone, Debug)]
pub struct UserChange {
    pub daily_limit: Option<i64>,
    pub disabled: bool,
}

/// Creates or replaces the row unconditionally; the version goes up by one on replace.
pub fn put_user(
    conn: &mut DbConnection,
    id: &str,
    change: &UserChange,
    now_ms: i64,
) -> QueryResult<UserRow> {
    let row = UserRow {
        id: id.to_string(),
        daily_limit: change.daily_limit,
        disabled: change.disabled,
        version: 1,
        created_at: now_ms,
    };
    with_backend!(conn, |c| diesel::insert_into(users::table)
        .values(&row)
        .on_conflict(users::id)
        .do_update()
        .set((
            users::daily_limit.eq(change.daily_limit),
            users::disabled.eq(change.disabled),
            users::version.eq(users::version + 1),
        ))
        .returning(UserRow::as_returning())
        .get_result(c))
}

/// Replaces the row only if it is still at `expected_version` (`None` = any existing version):
/// one conditional UPDATE, so two admins (or instances) cannot lose each other's change.
/// `None` back means the precondition failed.
pub fn update_user_if(
    conn: &mut DbConnection,
    id: &str,
    expected_version: Option<i64>,
    change: &UserChange,
) -> QueryResult<Option<UserRow>> {
    with_backend!(conn, |c| {
        let mut update = diesel::update(users::table.filter(users::id.eq(id))).into_boxed();
        if let Some(version) = expected_version {
            update = update.filter(users::version.eq(version));
        }
        update
            .set((
                users::daily_limit.eq(change.daily_limit),
                users::disabled.eq(change.disabled),
                users::version.eq(users::version + 1),
            ))
            .returning(UserRow::as_returning())
            .get_result(c)
            .optional()
    })
}
