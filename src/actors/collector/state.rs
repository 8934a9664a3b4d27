//! The collector's decisions, without actix: which run this instance has going, what to ask
//! the store, the cutoffs of a run, and what a finished run amounts to.

use std::time::Duration;

// tokio's clock (what `actix::clock` re-exports), so tests can pause time.
use chrono::{DateTime, Days};
use tokio::time::Instant;

use crate::config::CollectorSettings;
use crate::db::queries::collector::{status, BeginRun, CollectPlan, CollectReport, RunFinish};
use crate::db::DbError;
use crate::domain::QuotaDay;

/// Flush batch ids only have to outlive a retried batch (see `DbFlusher`).
const BATCH_LEDGER_KEEP_MS: i64 = 24 * 3600 * 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    Timer,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Timer => "timer",
        }
    }
}

/// A run that holds the lease, from the moment it was taken until it is released.
#[derive(Clone, Debug)]
pub struct ActiveRun {
    pub run_id: String,
    pub trigger: Trigger,
    /// Database clock, epoch ms.
    pub started_at_ms: i64,
    /// How long taking the lease took (pool, locks, retries).
    pub lease_wait_ms: i64,
    pub began: Instant,
}

/// What the run log line says about one finished run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSummary {
    pub run_id: String,
    pub trigger: Trigger,
    pub status: &'static str,
    pub processed: i64,
    pub stored: i64,
    pub skipped: i64,
    pub duration_ms: i64,
    pub lock_wait_ms: i64,
    pub raw_deleted: i64,
    pub sessions_deleted: i64,
    pub quota_pruned: i64,
    pub error: Option<String>,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event=collector_run run_id={} status={} processed={} stored={} skipped={} \
             duration_ms={} lock_wait_ms={} trigger={} raw_deleted={} sessions_deleted={} \
             quota_pruned={}",
            self.run_id,
            self.status,
            self.processed,
            self.stored,
            self.skipped,
            self.duration_ms,
            self.lock_wait_ms,
            self.trigger.as_str(),
            self.raw_deleted,
            self.sessions_deleted,
            self.quota_pruned,
        )?;
        if let Some(error) = &self.error {
            // Debug-quoted so the line stays one line and parseable.
            write!(f, " error={error:?}")?;
        }
        Ok(())
    }
}

/// The cutoffs of a run that started at `started_at_ms` (database clock).
pub fn plan_at(started_at_ms: i64, settings: &CollectorSettings) -> CollectPlan {
    let secs_ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let keep_quota_from_day = DateTime::from_timestamp_millis(started_at_ms)
        .and_then(|now| now.checked_sub_days(Days::new(settings.quota_retention_days.into())))
        .map(|day| QuotaDay::of(day).as_key())
        // A start outside chrono's range cannot happen with a sane clock; prune nothing then.
        .unwrap_or_else(|| "0000-01-01".to_string());
    CollectPlan {
        delete_raw_before_ms: started_at_ms.saturating_sub(secs_ms(settings.raw_retention_secs)),
        keep_quota_from_day,
        forget_batches_before_ms: started_at_ms.saturating_sub(BATCH_LEDGER_KEEP_MS),
    }
}

pub(super) fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Everything the collector decides, without actix: which run this instance has going, what
/// to ask the store, and what a finished run amounts to.
pub struct CollectorState {
    holder: String,
    settings: CollectorSettings,
    running: Option<String>,
}

impl CollectorState {
    pub fn new(holder: String, settings: CollectorSettings) -> CollectorState {
        CollectorState {
            holder,
            settings,
            running: None,
        }
    }

    /// This instance's name in the lease.
    pub fn holder(&self) -> &str {
        &self.holder
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.settings.interval_secs)
    }

    pub fn lease_ttl_ms(&self) -> i64 {
        i64::try_from(self.settings.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// Three renewals per TTL, so two can fail in a row before the lease lapses.
    pub fn renew_every(&self) -> Duration {
        Duration::from_millis(self.settings.lease_secs.saturating_mul(1000) / 3).max(
            // Never a zero period, whatever the settings say.
            Duration::from_millis(1),
        )
    }

    /// The run this instance holds the lease for, if any.
    pub fn running(&self) -> Option<&str> {
        self.running.as_deref()
    }

    pub fn begin_request(&self, trigger: Trigger) -> BeginRun {
        BeginRun {
            holder: self.holder.clone(),
            run_id: uuid::Uuid::new_v4().to_string(),
            lease_ttl_ms: self.lease_ttl_ms(),
            // Nine tenths: a timer that fires a little early still runs once per interval.
            min_gap_ms: match trigger {
                Trigger::Manual => None,
                Trigger::Timer => Some(millis(self.interval()) / 10 * 9),
            },
        }
    }

    /// The lease was taken: remember the run and return its cutoffs.
    pub fn started(&mut self, run: &ActiveRun) -> CollectPlan {
        self.running = Some(run.run_id.clone());
        plan_at(run.started_at_ms, &self.settings)
    }

    /// The work ended: what to record for it.
    pub fn outcome(&self, run: &ActiveRun, result: &Result<CollectReport, DbError>) -> RunFinish {
        let (report, status, error) = match result {
            Ok(report) => (report.clone(), status::OK, None),
            // The blocking pool reports a panicking task this way.
            Err(DbError::Canceled) => (
                CollectReport::default(),
                status::ERROR,
                Some(
                    "the run stopped unexpectedly (it panicked, or the server was stopping); \
                     the server log has details"
                        .into(),
                ),
            ),
            Err(err) => (
                CollectReport::default(),
                status::ERROR,
                Some(err.to_string()),
            ),
        };
        RunFinish {
            run_id: run.run_id.clone(),
            processed: report.processed,
            stored: report.stored,
            skipped: report.skipped,
            lock_wait_ms: run.lease_wait_ms.saturating_add(report.lock_wait_ms),
            status,
            error,
        }
    }

    /// The run is finished and its lease released (or left to expire).
    pub fn ended(&mut self, run_id: &str) {
        if self.running.as_deref() == Some(run_id) {
            self.running = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn settings(interval_secs: u64, lease_secs: u64) -> CollectorSettings {
        CollectorSettings {
            interval_secs,
            fold_age_secs: 300,
            raw_retention_secs: 7 * 24 * 3600,
            quota_retention_days: 35,
            lease_secs,
        }
    }

    #[test]
    fn plan_cutoffs_follow_the_settings() {
        let start = chrono::Utc
            .with_ymd_and_hms(2026, 3, 10, 0, 0, 30)
            .single()
            .expect("time")
            .timestamp_millis();
        let plan = plan_at(start, &settings(3600, 60));
        assert_eq!(plan.delete_raw_before_ms, start - 7 * 24 * 3_600_000);
        assert_eq!(plan.forget_batches_before_ms, start - 24 * 3_600_000);
        // 35 days back from 2026-03-10 (a UTC day, like the quota's own key).
        assert_eq!(plan.keep_quota_from_day, "2026-02-03");
    }
    #[test]
    fn only_timer_runs_ask_for_a_gap_since_the_last_run() {
        let state = CollectorState::new("h".into(), settings(3600, 60));
        assert_eq!(state.begin_request(Trigger::Manual).min_gap_ms, None);
        let timer = state.begin_request(Trigger::Timer);
        assert_eq!(timer.min_gap_ms, Some(3_240_000));
        assert_eq!((timer.holder.as_str(), timer.lease_ttl_ms), ("h", 60_000));
        assert_ne!(timer.run_id, state.begin_request(Trigger::Timer).run_id);
        assert_eq!(state.renew_every(), Duration::from_secs(20));
    }
    #[test]
    fn the_run_line_carries_every_recorded_field() {
        let summary = RunSummary {
            run_id: "r1".into(),
            trigger: Trigger::Timer,
            status: status::ERROR,
            processed: 7,
            stored: 3,
            skipped: 4,
            duration_ms: 12,
            lock_wait_ms: 2,
            raw_deleted: 1,
            sessions_deleted: 2,
            quota_pruned: 0,
            error: Some("database is locked\nagain".into()),
        };
        assert_eq!(
            summary.to_string(),
            "event=collector_run run_id=r1 status=error processed=7 stored=3 skipped=4 \
             duration_ms=12 lock_wait_ms=2 trigger=timer raw_deleted=1 sessions_deleted=2 \
             quota_pruned=0 \
             error=\"database is locked\\nagain\""
        );
    }
}
