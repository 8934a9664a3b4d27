//! Connection failures as an operator wants to read them. r2d2 logs every failed connection
//! attempt as a multi-line ERROR (libpq's messages span lines); during an outage that is one
//! entry per attempt per pending connection. Instead: one warning when the database stops
//! answering, one info line when a connection works again, the attempts between at debug.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use diesel::r2d2::{self, event, HandleError, HandleEvent};

/// Whether the pool currently considers the database away.
#[derive(Debug, Default)]
pub struct OutageState {
    down: AtomicBool,
}

/// What a pool event means for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum OutageChange {
    Started,
    Ended,
    Unchanged,
}

impl OutageState {
    /// A connection could not be opened or failed its check.
    pub fn failed(&self) -> OutageChange {
        if self.down.swap(true, Ordering::AcqRel) {
            OutageChange::Unchanged
        } else {
            OutageChange::Started
        }
    }

    /// A connection was opened or passed its check.
    pub fn answered(&self) -> OutageChange {
        // A load first: this runs on every checkout and is almost always false.
        if self.down.load(Ordering::Acquire) && self.down.swap(false, Ordering::AcqRel) {
            OutageChange::Ended
        } else {
            OutageChange::Unchanged
        }
    }
}

/// The r2d2 error and event handler over one [`OutageState`] (both are the same concern: the
/// pool's view of the database).
#[derive(Clone, Debug, Default)]
pub struct OutageLog(Arc<OutageState>);

/// Folds a driver message onto one line.
pub fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

impl HandleError<r2d2::Error> for OutageLog {
    fn handle_error(&self, error: r2d2::Error) {
        let text = one_line(&error.to_string());
        match self.0.failed() {
            OutageChange::Started => log::warn!("event=db_outage_started error={text}"),
            _ => log::debug!("event=db_connect_failed error={text}"),
        }
    }
}

impl OutageLog {
    fn answered(&self) {
        if self.0.answered() == OutageChange::Ended {
            log::info!("event=db_outage_ended");
        }
    }
}

impl HandleEvent for OutageLog {
    fn handle_acquire(&self, _: event::AcquireEvent) {
        self.answered();
    }

    fn handle_checkout(&self, _: event::CheckoutEvent) {
        self.answered();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_start_and_one_end_per_outage() {
        let state = OutageState::default();
        assert_eq!(state.answered(), OutageChange::Unchanged);
        assert_eq!(state.failed(), OutageChange::Started);
        for _ in 0..10 {
            assert_eq!(state.failed(), OutageChange::Unchanged);
        }
        assert_eq!(state.answered(), OutageChange::Ended);
        assert_eq!(state.answered(), OutageChange::Unchanged);
        assert_eq!(state.failed(), OutageChange::Started, "a second outage");
    }

    #[test]
    fn libpq_messages_fold_onto_one_line() {
        let message = "connection to server at \"127.0.0.1\", port 5432 failed: server closed \
            the connection unexpectedly\n\tThis probably means the server terminated \
            abnormally\n\tbefore or while processing the request.\n";
        let line = one_line(message);
        assert!(!line.contains('\n') && !line.contains('\t'), "{line}");
        assert!(line.ends_with("the request."), "{line}");
    }
}
