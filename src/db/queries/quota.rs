//! The atomic daily quota: one statement takes a unit only while the user is under their
//! limit, so concurrent takes from any number of connections or instances cannot overshoot.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::db::schema::quota_usage;
use crate::db::DbConnection;

use super::users;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaTake {
    /// A unit was taken; `used` counts it.
    Taken {
        used: i64,
    },
    Exceeded {
        limit: i64,
    },
    Disabled,
}

#[derive(QueryableByName)]
struct Used {
    #[diesel(sql_type = BigInt)]
    used: i64,
}

// The row is inserted (first chat of the day) or incremented, each only while under the
// limit; the limit is the user's own or the default. When the WHERE fails nothing is returned.
// SQLite needs the WHERE on the SELECT to parse ON CONFLICT after INSERT … SELECT.
const TAKE_SQLITE: &str = "\
INSERT INTO quota_usage (user_id, day, used) \
SELECT u.id, ?2, 1 FROM users u \
WHERE u.id = ?1 AND NOT u.disabled AND COALESCE(u.daily_limit, ?3) > 0 \
ON CONFLICT (user_id, day) DO UPDATE SET used = quota_usage.used + 1 \
WHERE quota_usage.used < (SELECT COALESCE(daily_limit, ?3) FROM users WHERE id = ?1 AND NOT disabled) \
RETURNING used";

const TAKE_POSTGRES: &str = "\
INSERT INTO quota_usage (user_id, day, used) \
SELECT u.id, $2, 1 FROM users u \
WHERE u.id = $1 AND NOT u.disabled AND COALESCE(u.daily_limit, $3) > 0 \
ON CONFLICT (user_id, day) DO UPDATE SET used = quota_usage.used + 1 \
WHERE quota_usage.used < (SELECT COALESCE(daily_limit, $3) FROM users WHERE id = $1 AND NOT disabled) \
RETURNING used";

fn try_take(
    conn: &mut DbConnection,
    user: &str,
    day: &str,
    default_limit: i64,
) -> QueryResult<Option<i64>> {
    let taken: Option<Used> = match conn {
        DbConnection::Postgres(c) => diesel::sql_query(TAKE_POSTGRES)
            .bind::<Text, _>(user)
            .bind::<Text, _>(day)
            .bind::<BigInt, _>(default_limit)
            .get_result(c)
            .optional()?,
        DbConnection::Sqlite(c) => diesel::sql_query(TAKE_SQLITE)
            .bind::<Text, _>(user)
            .bind::<Text, _>(day)
            .bind::<BigInt, _>(default_limit)
            .get_result(c)
            .optional()?,
    };
    Ok(taken.map(|t| t.used))
}

/// Takes one unit of `user`'s quota for `day`, creating the user row on first use. One
/// statement when a unit is available (the hot path); the user row is only read to explain
/// a refusal.
pub fn take_unit(
    conn: &mut DbConnection,
    user: &str,
    day: &str,
    default_limit: i64,
    now_ms: i64,
) -> QueryResult<QuotaTake> {
    if let Some(used) = try_take(conn, user, day, default_limit)? {
        return Ok(QuotaTake::Taken { used });
    }
    let row = match users::find_user(conn, user)? {
        Some(row) => row,
        None => {
            users::insert_user_if_missing(conn, user, now_ms)?;
            if let Some(used) = try_take(conn, user, day, default_limit)? {
                return Ok(QuotaTake::Taken { used });
            }
            users::find_user(conn, user)?.ok_or(diesel::result::Error::NotFound)?
        }
    };
    Ok(if row.disabled {
        QuotaTake::Disabled
    } else {
        QuotaTake::Exceeded {
            limit: row.daily_limit.unwrap_or(default_limit),
        }
    })
}

/// Returns a unit taken for a request that failed before the user got anything.
pub fn give_back_unit(conn: &mut DbConnection, user: &str, day: &str) -> QueryResult<bool> {
    let updated = diesel::update(
        quota_usage::table
            .filter(quota_usage::user_id.eq(user))
            .filter(quota_usage::day.eq(day))
            .filter(quota_usage::used.gt(0)),
    )
    .set(quota_usage::used.eq(quota_usage::used - 1))
    .execute(conn)?;
    Ok(updated == 1)
}

pub fn used_on(conn: &mut DbConnection, user: &str, day: &str) -> QueryResult<i64> {
    Ok(quota_usage::table
        .filter(quota_usage::user_id.eq(user))
        .filter(quota_usage::day.eq(day))
        .select(quota_usage::used)
        .first::<i64>(conn)
        .optional()?
        .unwrap_or(0))
}
