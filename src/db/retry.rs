//! Which database failures are worth retrying; how long to wait is the shared [`Backoff`].

use diesel::result::{DatabaseErrorKind, Error};

pub use crate::domain::Backoff;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transience {
    /// May succeed if tried again (lost connection, lock contention, serialization failure).
    Transient,
    /// Will fail the same way again (constraint, syntax, bad data).
    Permanent,
}

/// Message fragments of failures that pass: SQLite lock contention and libpq's words for a
/// connection that went away. Drivers report these as `Unknown`, so the text is all there is.
const TRANSIENT_MESSAGES: &[&str] = &[
    "database is locked",
    "database table is locked",
    "busy",
    "connection refused",
    "connection reset",
    "server closed the connection",
    "terminating connection",
    "could not connect",
    "no connection to the server",
    "connection timed out",
    "broken pipe",
    "deadlock detected",
    "could not serialize access",
    "the database system is starting up",
    "the database system is shutting down",
];

pub fn classify(err: &Error) -> Transience {
    match err {
        Error::DatabaseError(kind, info) => match kind {
            DatabaseErrorKind::SerializationFailure | DatabaseErrorKind::ClosedConnection => {
                Transience::Transient
            }
            DatabaseErrorKind::UniqueViolation
            | DatabaseErrorKind::ForeignKeyViolation
            | DatabaseErrorKind::NotNullViolation
            | DatabaseErrorKind::CheckViolation
            | DatabaseErrorKind::ReadOnlyTransaction => Transience::Permanent,
            // libpq could not send the statement: the connection is gone ("no connection to
            // the server", "server closed the connection"), which a fresh connection fixes.
            // Only a statement libpq refuses to build is the caller's fault.
            DatabaseErrorKind::UnableToSendCommand => {
                if info.message().contains("number of parameters") {
                    Transience::Permanent
                } else {
                    Transience::Transient
                }
            }
            _ => message_transience(info.message()),
        },
        Error::BrokenTransactionManager => Transience::Transient,
        _ => Transience::Permanent,
    }
}

fn message_transience(message: &str) -> Transience {
    let lower = message.to_ascii_lowercase();
    if TRANSIENT_MESSAGES.iter().any(|m| lower.contains(m)) {
        Transience::Transient
    } else {
        Transience::Permanent
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::DatabaseErrorInformation;

    #[derive(Debug)]
    struct Info(&'static str);
    impl DatabaseErrorInformation for Info {
        fn message(&self) -> &str {
            self.0
        }
        fn details(&self) -> Option<&str> {
            None
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            None
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            None
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
    }

    fn db_err(kind: DatabaseErrorKind, msg: &'static str) -> Error {
        Error::DatabaseError(kind, Box::new(Info(msg)))
    }

    #[test]
    fn transient_failures_are_retried() {
        for err in [
            db_err(
                DatabaseErrorKind::SerializationFailure,
                "could not serialize access",
            ),
            db_err(DatabaseErrorKind::ClosedConnection, "closed"),
            db_err(DatabaseErrorKind::Unknown, "database is locked"),
            db_err(
                DatabaseErrorKind::Unknown,
                "Connection refused (os error 111)",
            ),
            db_err(
                DatabaseErrorKind::Unknown,
                "server closed the connection unexpectedly",
            ),
            db_err(DatabaseErrorKind::Unknown, "connection reset by peer"),
            db_err(
                DatabaseErrorKind::UnableToSendCommand,
                "no connection to the server\n",
            ),
            db_err(
                DatabaseErrorKind::UnableToSendCommand,
                "server closed the connection unexpectedly\n\tThis probably means",
            ),
        ] {
            assert_eq!(classify(&err), Transience::Transient, "{err:?}");
        }
    }

    #[test]
    fn permanent_failures_fail_at_once() {
        for err in [
            db_err(DatabaseErrorKind::UniqueViolation, "duplicate key"),
            db_err(DatabaseErrorKind::ForeignKeyViolation, "fk"),
            db_err(DatabaseErrorKind::CheckViolation, "check"),
            db_err(
                DatabaseErrorKind::UnableToSendCommand,
                "number of parameters must be between 0 and 65535",
            ),
            db_err(
                DatabaseErrorKind::Unknown,
                "syntax error at or near \"SELEC\"",
            ),
            Error::NotFound,
        ] {
            assert_eq!(classify(&err), Transience::Permanent, "{err:?}");
        }
    }
}
