//! Database access for both backends through one connection type.
//!
//! `DbConnection` is diesel's `MultiConnection` enum. The URL scheme alone picks the variant
//! (never the derive's try-each-in-order `establish`, because SQLite accepts any string as a
//! file name). Queries live in `queries/` as free functions taking `&mut DbConnection`; where a
//! backend needs its own SQL or types the derive does not cover (booleans, upserts), they use
//! [`with_backend!`], which type-checks the same body once per backend. Every call runs on the
//! blocking pool through [`DbPool::run`], never on an async worker.

pub mod migrations;
pub mod models;
pub mod outage;
pub mod queries;
pub mod retry;
pub mod schema;

use std::time::Duration;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{self, ManageConnection, R2D2Connection};
use diesel::{Connection, PgConnection, SqliteConnection};

use crate::error::AppError;
use retry::{Backoff, Transience};

#[derive(diesel::MultiConnection)]
pub enum DbConnection {
    Postgres(PgConnection),
    Sqlite(SqliteConnection),
}

/// Runs `$body` with `$conn` bound to the concrete backend connection, type-checking it for
/// each backend. Only `db/queries` uses it: nowhere else knows which backend is running.
#[macro_export]
macro_rules! with_backend {
    ($conn:expr, |$c:ident| $body:expr) => {
        match $conn {
            $crate::db::DbConnection::Postgres($c) => $body,
            $crate::db::DbConnection::Sqlite($c) => $body,
        }
    };
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendKind {
    Postgres,
    Sqlite,
}

/// `DATABASE_URL` resolved to a backend and the string that backend's driver expects.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DatabaseUrl {
    pub kind: BackendKind,
    pub target: String,
}

impl DatabaseUrl {
    pub fn parse(raw: &str) -> DatabaseUrl {
        let raw = raw.trim();
        if raw.starts_with("postgres://") || raw.starts_with("postgresql://") {
            return DatabaseUrl {
                kind: BackendKind::Postgres,
                target: raw.to_string(),
            };
        }
        let path = raw.strip_prefix("sqlite://").unwrap_or(raw);
        DatabaseUrl {
            kind: BackendKind::Sqlite,
            target: path.to_string(),
        }
    }

    pub fn is_sqlite_memory(&self) -> bool {
        self.kind == BackendKind::Sqlite && self.target == ":memory:"
    }

    /// For logs: the URL without a password.
    pub fn redacted(&self) -> String {
        match self.kind {
            BackendKind::Sqlite => {
                format!("sqlite:{}", crate::domain::redact::redact_url(&self.target))
            }
            BackendKind::Postgres => crate::domain::redact::redact_url(&self.target),
        }
    }
}

/// r2d2 manager that opens the backend the URL names and applies SQLite's settings.
#[derive(Clone, Debug)]
pub struct DbConnectionManager {
    url: DatabaseUrl,
}

impl DbConnectionManager {
    pub fn new(url: DatabaseUrl) -> DbConnectionManager {
        DbConnectionManager { url }
    }
}

/// WAL lets readers run beside the single writer; `synchronous=NORMAL` is durable across
/// process crashes in WAL mode and avoids an fsync per commit; the busy timeout turns
/// writer contention into a short wait instead of an error.
const SQLITE_PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
     PRAGMA busy_timeout = 5000; PRAGMA foreign_keys = ON;";

impl ManageConnection for DbConnectionManager {
    type Connection = DbConnection;
    type Error = r2d2::Error;

    fn connect(&self) -> Result<DbConnection, r2d2::Error> {
        match self.url.kind {
            BackendKind::Postgres => PgConnection::establish(&self.url.target)
                .map(DbConnection::Postgres)
                .map_err(r2d2::Error::ConnectionError),
            BackendKind::Sqlite => {
                let mut conn = SqliteConnection::establish(&self.url.target)
                    .map_err(r2d2::Error::ConnectionError)?;
                conn.batch_execute(SQLITE_PRAGMAS)
                    .map_err(r2d2::Error::QueryError)?;
                Ok(DbConnection::Sqlite(conn))
            }
        }
    }

    fn is_valid(&self, conn: &mut DbConnection) -> Result<(), r2d2::Error> {
        conn.ping().map_err(r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut DbConnection) -> bool {
        std::thread::panicking() || conn.is_broken()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("no database connection: {0}")]
    Pool(#[from] r2d2::PoolError),
    #[error(transparent)]
    Query(#[from] diesel::result::Error),
    #[error("blocking pool is gone")]
    Canceled,
}

impl DbError {
    pub fn transience(&self) -> Transience {
        match self {
            // The pool only times out when it cannot open or lend a connection: the server is
            // down, unreachable or saturated, all of which may pass.
            DbError::Pool(_) => Transience::Transient,
            DbError::Query(err) => retry::classify(err),
            DbError::Canceled => Transience::Permanent,
        }
    }
}

impl From<DbError> for AppError {
    fn from(err: DbError) -> AppError {
        match err {
            DbError::Query(diesel::result::Error::NotFound) => {
                AppError::NotFound("no such record".into())
            }
            other if other.transience() == Transience::Transient => {
                log::warn!("event=db_unavailable error={other}");
                AppError::Unavailable("the database is not answering; try again shortly".into())
            }
            other => AppError::internal(other),
        }
    }
}

#[derive(Clone, Debug)]
pub struct PoolSettings {
    pub max_size: u32,
    pub connection_timeout: Duration,
    pub retry: Backoff,
}

/// The connection pool plus the one way to use it: off the async workers, with retries for
/// transient failures.
#[derive(Clone)]
pub struct DbPool {
    pool: r2d2::Pool<DbConnectionManager>,
    kind: BackendKind,
    retry: Backoff,
}

impl DbPool {
    /// Builds the pool without connecting, so a database that is briefly down at start does
    /// not stop the process; callers see `Unavailable` until it answers.
    pub fn new(url: &DatabaseUrl, settings: &PoolSettings) -> DbPool {
        // Every SQLite `:memory:` connection is its own empty database: keep exactly one,
        // forever, so migrations and queries see the same data.
        let memory = url.is_sqlite_memory();
        let max_size = if memory { 1 } else { settings.max_size };
        let outage = outage::OutageLog::default();
        let pool = r2d2::Pool::builder()
            .max_size(max_size)
            .min_idle(Some(if memory { 1 } else { 0 }))
            .idle_timeout(if memory {
                None
            } else {
                Some(Duration::from_secs(600))
            })
            .max_lifetime(if memory {
                None
            } else {
                Some(Duration::from_secs(1800))
            })
            .connection_timeout(settings.connection_timeout)
            // A connection that died while idle (the server restarted, a proxy or NAT dropped
            // it) is found and replaced at checkout instead of failing the request it is
            // lent to; the check is one round trip per checkout.
            .test_on_check_out(true)
            .error_handler(Box::new(outage.clone()))
            .event_handler(Box::new(outage))
            .build_unchecked(DbConnectionManager::new(url.clone()));
        DbPool {
            pool,
            kind: url.kind,
            retry: settings.retry.clone(),
        }
    }

    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// A connection for code already on a blocking thread (migrations, tests, CLI).
    pub fn checkout(&self) -> Result<r2d2::PooledConnection<DbConnectionManager>, DbError> {
        Ok(self.pool.get()?)
    }

    /// One attempt, on the calling thread. Only for code already on a blocking thread.
    pub fn run_blocking<T, F>(&self, f: &F) -> Result<T, DbError>
    where
        F: Fn(&mut DbConnection) -> diesel::QueryResult<T>,
    {
        let mut conn = self.pool.get()?;
        Ok(f(&mut conn)?)
    }

    /// Runs `f` on the blocking pool; transient failures are retried with backoff (waiting
    /// asynchronously between attempts), permanent ones are returned at once. `f` must be
    /// safe to repeat: each attempt is its own transaction or a single statement.
    pub async fn run<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: Fn(&mut DbConnection) -> diesel::QueryResult<T> + Send + Sync + 'static,
    {
        let f = std::sync::Arc::new(f);
        let mut attempt = 0;
        loop {
            let pool = self.clone();
            let job = f.clone();
            let result = actix_web::web::block(move || pool.run_blocking(&*job))
                .await
                .map_err(|_| DbError::Canceled)
                .and_then(|r| r);
            match result {
                Err(err) if err.transience() == Transience::Transient => {
                    match self.retry.delay(attempt) {
                        Some(delay) => {
                            log::debug!("event=db_retry attempt={attempt} error={err}");
                            attempt += 1;
                            actix_web::rt::time::sleep(delay).await;
                        }
                        None => return Err(err),
                    }
                }
                other => return other,
            }
        }
    }

    /// Whether the database answers a trivial query now (for `/readyz`), waiting at most
    /// `within` for a connection instead of the pool's timeout. No retries: a probe must
    /// report the present, not wait for the future.
    pub async fn ping(&self, within: Duration) -> Result<(), DbError> {
        let pool = self.pool.clone();
        actix_web::web::block(move || -> Result<(), DbError> {
            let mut conn = pool.get_timeout(within)?;
            conn.ping()?;
            Ok(())
        })
        .await
        .map_err(|_| DbError::Canceled)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_scheme_picks_backend() {
        assert_eq!(
            DatabaseUrl::parse("postgres://u@h/db").kind,
            BackendKind::Postgres
        );
        assert_eq!(
            DatabaseUrl::parse("postgresql://u@h/db").kind,
            BackendKind::Postgres
        );
        let sqlite = DatabaseUrl::parse("sqlite://data/chatgate.db");
        assert_eq!(sqlite.kind, BackendKind::Sqlite);
        assert_eq!(sqlite.target, "data/chatgate.db");
        assert_eq!(DatabaseUrl::parse("chatgate.db").target, "chatgate.db");
        assert!(DatabaseUrl::parse(":memory:").is_sqlite_memory());
    }

    #[test]
    fn redacted_url_hides_password() {
        let url = DatabaseUrl::parse("postgres://app:hunter2@db:5432/chat");
        assert_eq!(url.redacted(), "postgres://app:[redacted]@db:5432/chat");
        assert!(!url.redacted().contains("hunter2"));
        let url = DatabaseUrl::parse("postgres://app@db/chat?sslmode=disable&password=hunter2");
        assert_eq!(
            url.redacted(),
            "postgres://app@db/chat?sslmode=disable&password=[redacted]"
        );
    }
}
