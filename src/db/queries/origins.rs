//! The stored origin allow-list (`allowed_origins_list` + `allowed_origins`): always read
//! whole and replaced whole, with a version that goes up on every change.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Nullable, Text};

use crate::db::queries::write_transaction;
use crate::db::schema::{allowed_origins, allowed_origins_list as list};
use crate::db::DbConnection;
use crate::with_backend;

/// `updated_by` of a list seeded from the setting at first start.
pub const SEEDED_BY: &str = "CHATGATE_ALLOWED_ORIGINS";
/// The list's one row (the table's CHECK allows no other).
const LIST_ID: i64 = 1;

/// The allow-list as stored, with the version it had when read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredOrigins {
    pub version: i64,
    /// In the order given.
    pub origins: Vec<String>,
}

#[derive(QueryableByName)]
struct ListEntry {
    #[diesel(sql_type = BigInt)]
    version: i64,
    #[diesel(sql_type = Nullable<Text>)]
    origin: Option<String>,
}

/// The list and its version; `None` if it was never set. One statement, so the version and
/// the origins come from one snapshot even under PostgreSQL's READ COMMITTED, where two
/// statements could straddle another instance's change.
pub fn load_origins(conn: &mut DbConnection) -> QueryResult<Option<StoredOrigins>> {
    const QUERY: &str = "SELECT l.version AS version, o.origin AS origin \
         FROM allowed_origins_list l LEFT JOIN allowed_origins o ON 1 = 1 \
         WHERE l.id = 1 ORDER BY o.position";
    let entries: Vec<ListEntry> = with_backend!(conn, |c| diesel::sql_query(QUERY).load(c))?;
    let Some(first) = entries.first() else {
        return Ok(None);
    };
    Ok(Some(StoredOrigins {
        version: first.version,
        origins: entries.into_iter().filter_map(|e| e.origin).collect(),
    }))
}

/// Replaces the list with `origins` (distinct, already normalized) in one transaction and
/// returns it with its new version. The list row is written first: on PostgreSQL its row lock
/// makes concurrent replacements take turns, so the last one wins whole.
pub fn replace_origins(
    conn: &mut DbConnection,
    origins: &[String],
    updated_by: &str,
    now_ms: i64,
) -> QueryResult<StoredOrigins> {
    write_transaction(conn, |conn| {
        let version: i64 = with_backend!(conn, |c| diesel::insert_into(list::table)
            .values((
                list::id.eq(LIST_ID),
                list::version.eq(1),
                list::updated_at.eq(now_ms),
                list::updated_by.eq(updated_by),
            ))
            .on_conflict(list::id)
            .do_update()
            .set((
                list::version.eq(list::version + 1),
                list::updated_at.eq(now_ms),
                list::updated_by.eq(updated_by),
            ))
            .returning(list::version)
            .get_result(c))?;
        with_backend!(conn, |c| diesel::delete(allowed_origins::table).execute(c))?;
        insert_entries(conn, origins)?;
        Ok(StoredOrigins {
            version,
            origins: origins.to_vec(),
        })
    })
}

/// Stores `origins` (distinct, normalized) as the list if it was never set — the first start
/// — and returns the list in force and whether it was seeded now. Of instances starting
/// together on one database, one seeds and the others find the list set.
pub fn seed_origins_if_unset(
    conn: &mut DbConnection,
    origins: &[String],
    now_ms: i64,
) -> QueryResult<(StoredOrigins, bool)> {
    write_transaction(conn, |conn| {
        let inserted = with_backend!(conn, |c| diesel::insert_into(list::table)
            .values((
                list::id.eq(LIST_ID),
                list::version.eq(1),
                list::updated_at.eq(now_ms),
                list::updated_by.eq(SEEDED_BY),
            ))
            .on_conflict_do_nothing()
            .execute(c))?;
        let seeded = inserted == 1;
        if seeded {
            insert_entries(conn, origins)?;
        }
        let stored = load_origins(conn)?.ok_or(diesel::result::Error::NotFound)?;
        Ok((stored, seeded))
    })
}

fn insert_entries(conn: &mut DbConnection, origins: &[String]) -> QueryResult<()> {
    if origins.is_empty() {
        return Ok(());
    }
    let rows: Vec<_> = origins
        .iter()
        .enumerate()
        .map(|(position, origin)| {
            (
                allowed_origins::origin.eq(origin.as_str()),
                allowed_origins::position.eq(position as i64),
            )
        })
        .collect();
    with_backend!(conn, |c| diesel::insert_into(allowed_origins::table)
        .values(&rows)
        .execute(c))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::migrations::run_pending;
    use diesel::Connection;

    fn memory() -> DbConnection {
        let mut conn = DbConnection::Sqlite(
            diesel::SqliteConnection::establish(":memory:").expect("in-memory sqlite"),
        );
        run_pending(&mut conn).expect("migrations");
        conn
    }

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_first_start_seeds_and_later_starts_find_the_list() {
        let mut conn = memory();
        assert_eq!(load_origins(&mut conn).expect("load"), None);
        let (stored, seeded) =
            seed_origins_if_unset(&mut conn, &list(&["https://b.test", "https://a.test"]), 1)
                .expect("seed");
        assert!(seeded);
        assert_eq!(stored.version, 1);
        assert_eq!(stored.origins, list(&["https://b.test", "https://a.test"]));
        let (again, seeded) =
            seed_origins_if_unset(&mut conn, &list(&["https://c.test"]), 2).expect("seed");
        assert!(!seeded, "a set list is never seeded again");
        assert_eq!(again, stored);
    }

    #[test]
    fn a_replacement_bumps_the_version_and_an_empty_list_stays_set() {
        let mut conn = memory();
        seed_origins_if_unset(&mut conn, &list(&["https://a.test"]), 1).expect("seed");
        let replaced =
            replace_origins(&mut conn, &list(&["*", "https://x.test"]), "ops", 2).expect("put");
        assert_eq!(replaced.version, 2);
        assert_eq!(
            load_origins(&mut conn).expect("load"),
            Some(replaced.clone())
        );
        let empty = replace_origins(&mut conn, &[], "ops", 3).expect("put");
        assert_eq!(
            empty,
            StoredOrigins {
                version: 3,
                origins: vec![]
            }
        );
        assert_eq!(load_origins(&mut conn).expect("load"), Some(empty.clone()));
        let (after_restart, seeded) =
            seed_origins_if_unset(&mut conn, &list(&["https://a.test"]), 4).expect("seed");
        assert!(!seeded);
        assert_eq!(after_restart, empty, "an empty list is a set list");
    }

    #[test]
    fn a_replacement_before_any_seed_creates_the_list() {
        let mut conn = memory();
        let stored = replace_origins(&mut conn, &list(&["https://a.test"]), "ops", 1).expect("put");
        assert_eq!(stored.version, 1);
        assert_eq!(load_origins(&mut conn).expect("load"), Some(stored));
    }
}
