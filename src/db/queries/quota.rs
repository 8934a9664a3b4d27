//! Quota leases: an instance reserves blocks of a user's daily units with one conditional
//! statement (only while used + reserved + k stays within the limit), admits chats from them
//! in memory, and later settles what its chats consumed into `used` and releases the rest.
//!
//! Every write is idempotent under a retried transaction (a COMMIT that went through but
//! whose answer was lost): a lease row carries the sequence number of the last write applied
//! and cumulative totals (`granted`, `used`, `released`); a write with an older or equal
//! sequence number changes nothing, and settles send totals, not increments.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Bool, Nullable, Text};

use crate::db::schema::quota_usage;
use crate::db::DbConnection;
use crate::with_backend;

use super::users;

/// One instance's write for one (user, day) lease, applied in a single transaction together
/// with the others of its batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseWrite {
    pub user: String,
    pub day: String,
    /// Newer than every earlier write of this holder; equal on a retry of the same write.
    pub seq: i64,
    /// Units this holder's chats kept, in total for the day (given-back units excluded).
    pub used: i64,
    /// Unused units handed back, in total for the day.
    pub released: i64,
    /// Units to reserve now; 0 settles only.
    pub reserve: i64,
}

/// The lease and the user's standing after a write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseState {
    /// Units granted to this holder for the day, in total (the database's word, so a grant
    /// whose answer was lost is still learned).
    pub granted: i64,
    pub limit: i64,
    pub disabled: bool,
    /// The user's settled units for the day, all instances.
    pub used: i64,
    /// Units all instances hold for the day, including those of dead instances.
    pub reserved: i64,
}

#[derive(QueryableByName)]
struct LeaseRow {
    #[diesel(sql_type = BigInt)]
    seq: i64,
    #[diesel(sql_type = BigInt)]
    granted: i64,
    #[diesel(sql_type = BigInt)]
    used: i64,
    #[diesel(sql_type = BigInt)]
    released: i64,
}

#[derive(QueryableByName)]
struct Standing {
    #[diesel(sql_type = BigInt)]
    used: i64,
    #[diesel(sql_type = BigInt)]
    reserved: i64,
    #[diesel(sql_type = Nullable<BigInt>)]
    daily_limit: Option<i64>,
    #[diesel(sql_type = Bool)]
    disabled: bool,
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

// `$n` parameters work on both backends (SQLite numbers named parameters in order of first
// appearance, so each statement introduces them in order).

const ENSURE_USAGE: &str = "INSERT INTO quota_usage (user_id, day, used, reserved) \
VALUES ($1, $2, 0, 0) ON CONFLICT (user_id, day) DO NOTHING";

const ENSURE_LEASE: &str = "INSERT INTO quota_leases \
(holder, user_id, day, seq, granted, used, released, renewed_at) \
VALUES ($1, $2, $3, 0, 0, 0, 0, $4) ON CONFLICT (holder, user_id, day) DO NOTHING";

const READ_LEASE: &str = "SELECT seq, granted, used, released FROM quota_leases \
WHERE holder = $1 AND user_id = $2 AND day = $3";

const SETTLE: &str = "UPDATE quota_usage SET used = used + $1, reserved = reserved - $2 \
WHERE user_id = $3 AND day = $4";

// The quota rule itself: k units are reserved only while the user is enabled and everything
// used or held by any instance, plus k, stays within the user's limit (or the default).
const RESERVE: &str = "UPDATE quota_usage SET reserved = reserved + $1 \
WHERE user_id = $2 AND day = $3 AND used + reserved + $1 <= \
(SELECT COALESCE(daily_limit, $4) FROM users WHERE id = $2 AND NOT disabled) \
RETURNING reserved AS n";

const WRITE_LEASE: &str = "UPDATE quota_leases \
SET seq = $1, granted = granted + $2, used = $3, released = $4, renewed_at = $5 \
WHERE holder = $6 AND user_id = $7 AND day = $8";

const STANDING: &str = "SELECT q.used, q.reserved, u.daily_limit, u.disabled \
FROM quota_usage q JOIN users u ON u.id = q.user_id WHERE q.user_id = $1 AND q.day = $2";

fn read_lease(
    conn: &mut DbConnection,
    holder: &str,
    user: &str,
    day: &str,
) -> QueryResult<Option<LeaseRow>> {
    // PostgreSQL: the row stays locked to this transaction, so two writes of one holder can
    // never interleave between the read and the update.
    match conn {
        DbConnection::Postgres(c) => diesel::sql_query(format!("{READ_LEASE} FOR UPDATE"))
            .bind::<Text, _>(holder)
            .bind::<Text, _>(user)
            .bind::<Text, _>(day)
            .get_result(c)
            .optional(),
        DbConnection::Sqlite(c) => diesel::sql_query(READ_LEASE)
            .bind::<Text, _>(holder)
            .bind::<Text, _>(user)
            .bind::<Text, _>(day)
            .get_result(c)
            .optional(),
    }
}

fn standing(
    conn: &mut DbConnection,
    user: &str,
    day: &str,
    default_limit: i64,
) -> QueryResult<(i64, i64, i64, bool)> {
    let row: Option<Standing> = with_backend!(conn, |c| diesel::sql_query(STANDING)
        .bind::<Text, _>(user)
        .bind::<Text, _>(day)
        .get_result(c)
        .optional())?;
    Ok(match row {
        Some(s) => (
            s.used,
            s.reserved,
            s.daily_limit.unwrap_or(default_limit),
            s.disabled,
        ),
        None => (0, 0, default_limit, false),
    })
}

fn try_reserve(
    conn: &mut DbConnection,
    user: &str,
    day: &str,
    k: i64,
    default_limit: i64,
) -> QueryResult<bool> {
    let row: Option<Count> = with_backend!(conn, |c| diesel::sql_query(RESERVE)
        .bind::<BigInt, _>(k)
        .bind::<Text, _>(user)
        .bind::<Text, _>(day)
        .bind::<BigInt, _>(default_limit)
        .get_result(c)
        .optional())?;
    Ok(row.is_some())
}

/// Applies one lease write; call inside a write transaction. Users are created on their
/// first reservation with the default limit.
pub fn apply_lease_write(
    conn: &mut DbConnection,
    holder: &str,
    write: &LeaseWrite,
    default_limit: i64,
    now_ms: i64,
) -> QueryResult<LeaseState> {
    let (user, day) = (write.user.as_str(), write.day.as_str());
    if write.reserve > 0 {
        users::insert_user_if_missing(conn, user, now_ms)?;
        with_backend!(conn, |c| diesel::sql_query(ENSURE_USAGE)
            .bind::<Text, _>(user)
            .bind::<Text, _>(day)
            .execute(c))?;
        with_backend!(conn, |c| diesel::sql_query(ENSURE_LEASE)
            .bind::<Text, _>(holder)
            .bind::<Text, _>(user)
            .bind::<Text, _>(day)
            .bind::<BigInt, _>(now_ms)
            .execute(c))?;
    }
    let Some(lease) = read_lease(conn, holder, user, day)? else {
        // Settling a lease that was never granted: nothing to move.
        let (used, reserved, limit, disabled) = standing(conn, user, day, default_limit)?;
        return Ok(LeaseState {
            granted: 0,
            limit,
            disabled,
            used,
            reserved,
        });
    };
    let mut granted = lease.granted;
    if lease.seq < write.seq {
        let used_delta = write.used - lease.used;
        let released_delta = write.released - lease.released;
        if used_delta != 0 || released_delta != 0 {
            with_backend!(conn, |c| diesel::sql_query(SETTLE)
                .bind::<BigInt, _>(used_delta)
                .bind::<BigInt, _>(used_delta + released_delta)
                .bind::<Text, _>(user)
                .bind::<Text, _>(day)
                .execute(c))?;
        }
        let mut grant = 0;
        if write.reserve > 0 {
            if try_reserve(conn, user, day, write.reserve, default_limit)? {
                grant = write.reserve;
            } else {
                // Near the limit a smaller block may still fit: take what is left, under the
                // same conditional statement.
                let (used, reserved, limit, disabled) = standing(conn, user, day, default_limit)?;
                let left = (limit - used - reserved).min(write.reserve);
                if !disabled && left > 0 && try_reserve(conn, user, day, left, default_limit)? {
                    grant = left;
                }
            }
        }
        with_backend!(conn, |c| diesel::sql_query(WRITE_LEASE)
            .bind::<BigInt, _>(write.seq)
            .bind::<BigInt, _>(grant)
            .bind::<BigInt, _>(write.used)
            .bind::<BigInt, _>(write.released)
            .bind::<BigInt, _>(now_ms)
            .bind::<Text, _>(holder)
            .bind::<Text, _>(user)
            .bind::<Text, _>(day)
            .execute(c))?;
        granted += grant;
    }
    let (used, reserved, limit, disabled) = standing(conn, user, day, default_limit)?;
    Ok(LeaseState {
        granted,
        limit,
        disabled,
        used,
        reserved,
    })
}

/// Forgets lease rows of days before `day` (`YYYY-MM-DD`); their units stay counted.
pub fn prune_leases(conn: &mut DbConnection, before_day: &str) -> QueryResult<usize> {
    with_backend!(conn, |c| diesel::sql_query(
        "DELETE FROM quota_leases WHERE day < $1"
    )
    .bind::<Text, _>(before_day)
    .execute(c))
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

/// Units held by all instances for the user's day (for tests and operators).
pub fn reserved_on(conn: &mut DbConnection, user: &str, day: &str) -> QueryResult<i64> {
    let row: Option<Count> = with_backend!(conn, |c| diesel::sql_query(
        "SELECT reserved AS n FROM quota_usage WHERE user_id = $1 AND day = $2"
    )
    .bind::<Text, _>(user)
    .bind::<Text, _>(day)
    .get_result(c)
    .optional())?;
    Ok(row.map_or(0, |r| r.n))
}
