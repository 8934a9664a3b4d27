//! Migrations embedded in the binary, one set per backend (same names in both folders).

use diesel::connection::SimpleConnection;
use diesel::migration::MigrationVersion;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};

use super::DbConnection;

pub const SQLITE: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
pub const POSTGRES: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// Any key works as long as every chatgate instance uses the same one.
const POSTGRES_MIGRATION_LOCK: i64 = 0x6368_6174_6761_7465; // "chatgate"

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Applies every pending migration and returns the versions applied (empty when up to date).
/// On PostgreSQL an advisory lock makes instances that start together take turns.
pub fn run_pending(conn: &mut DbConnection) -> Result<Vec<String>, BoxError> {
    let applied: Vec<MigrationVersion<'static>> = match conn {
        DbConnection::Postgres(pg) => {
            pg.batch_execute(&format!(
                "SELECT pg_advisory_lock({POSTGRES_MIGRATION_LOCK})"
            ))?;
            let result = pg
                .run_pending_migrations(POSTGRES)
                .map(|v| v.into_iter().map(|m| m.as_owned()).collect());
            pg.batch_execute(&format!(
                "SELECT pg_advisory_unlock({POSTGRES_MIGRATION_LOCK})"
            ))?;
            result?
        }
        DbConnection::Sqlite(sqlite) => sqlite
            .run_pending_migrations(SQLITE)?
            .into_iter()
            .map(|m| m.as_owned())
            .collect(),
    };
    Ok(applied.iter().map(ToString::to_string).collect())
}

/// Reverts every applied migration (tests check that each `down.sql` works).
pub fn revert_all(conn: &mut DbConnection) -> Result<usize, BoxError> {
    let reverted = match conn {
        DbConnection::Postgres(pg) => pg.revert_all_migrations(POSTGRES)?.len(),
        DbConnection::Sqlite(sqlite) => sqlite.revert_all_migrations(SQLITE)?.len(),
    };
    Ok(reverted)
}
