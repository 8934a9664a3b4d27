//! Which database failures are worth retrying, and how long to wait between attempts.

use std::time::Duration;

use diesel::result::{DatabaseErrorKind, Error};
use rand::Rng;

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

/// Exponential backoff with "equal jitter": attempt n waits between half and all of
/// `min(cap, base * 2^n)`, so retries from many callers spread out but never collapse to zero.
#[derive(Clone, Debug)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_retries: u32,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_millis(25),
            cap: Duration::from_secs(1),
            max_retries: 4,
        }
    }
}

impl Backoff {
    /// The ceiling for attempt `attempt` (0-based), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry number `attempt`, or `None` once the retries are used up.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        if attempt >= self.max_retries {
            return None;
        }
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        let jitter_ms = rand::rng().random_range(0..=half.as_millis() as u64);
        Some(half + Duration::from_millis(jitter_ms))
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

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap_then_stops() {
        let backoff = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
            max_retries: 6,
        };
        let ceilings: Vec<u64> = (0..6)
            .map(|n| backoff.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, vec![10, 20, 40, 80, 100, 100]);
        for attempt in 0..6 {
            for _ in 0..50 {
                let delay = backoff.delay(attempt).expect("within budget");
                let ceiling = backoff.ceiling(attempt);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{attempt}: {delay:?}"
                );
            }
        }
        assert_eq!(backoff.delay(6), None);
        assert_eq!(backoff.ceiling(200), Duration::from_millis(100));
    }
}
