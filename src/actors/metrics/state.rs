//! The aggregator's numbers: per model and in total, three rolling windows (a minute of
//! seconds, an hour of minutes, a day of hours) plus lifetime counters, all kept as sums and
//! counts so every average is weighted and windows merge exactly.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::Serialize;

use super::histogram::Histogram;
use super::messages::{Outcome, RecordRequest};
use crate::error::ErrorCode;

/// Additive counters for a span of time.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub errors_by_code: BTreeMap<ErrorCode, u64>,
    pub tokens_in: u64,
    pub tokens_out: u64,
    pub latency_sum_ms: u64,
    pub latency: Histogram,
}

impl Stats {
    fn add(&mut self, record: &RecordRequest) {
        self.requests += 1;
        match record.outcome {
            Outcome::Ok => {}
            Outcome::Cancelled => self.cancelled += 1,
            Outcome::Error(code) => {
                self.errors += 1;
                *self.errors_by_code.entry(code).or_default() += 1;
            }
        }
        self.tokens_in += record.tokens_in;
        self.tokens_out += record.tokens_out;
        self.latency_sum_ms += record.latency_ms;
        self.latency.record(record.latency_ms);
    }

    fn merge(&mut self, other: &Stats) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.cancelled += other.cancelled;
        for (code, n) in &other.errors_by_code {
            *self.errors_by_code.entry(*code).or_default() += n;
        }
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.latency_sum_ms += other.latency_sum_ms;
        self.latency.merge(&other.latency);
    }

    fn clear(&mut self) {
        *self = Stats::default();
    }

    /// The summary a client sees. The average is sum / count, never an average of averages.
    pub fn summary(&self) -> WindowSummary {
        let count = self.latency.count();
        WindowSummary {
            requests: self.requests,
            errors: self.errors,
            cancelled: self.cancelled,
            errors_by_code: self
                .errors_by_code
                .iter()
                .map(|(c, n)| (c.as_str().to_string(), *n))
                .collect(),
            avg_latency_ms: if count == 0 {
                0.0
            } else {
                round1(self.latency_sum_ms as f64 / count as f64)
            },
            p95_latency_ms: self.latency.quantile(0.95).unwrap_or(0.0),
            p99_latency_ms: self.latency.quantile(0.99).unwrap_or(0.0),
            tokens_in: self.tokens_in,
            tokens_out: self.tokens_out,
        }
    }
}

fn round1(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct WindowSummary {
    pub requests: u64,
    pub errors: u64,
    pub cancelled: u64,
    pub errors_by_code: BTreeMap<String, u64>,
    pub avg_latency_ms: f64,
    pub p95_latency_ms: f64,
    pub p99_latency_ms: f64,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Windows {
    pub minute: WindowSummary,
    pub hour: WindowSummary,
    pub day: WindowSummary,
}

/// Fixed slots of `slot_secs` each; a slot is reset when its time comes round again.
#[derive(Clone, Debug)]
struct Ring {
    slot_secs: u64,
    slots: Vec<(u64, Stats)>,
}

impl Ring {
    fn new(slot_secs: u64, len: usize) -> Ring {
        Ring {
            slot_secs,
            slots: vec![(u64::MAX, Stats::default()); len],
        }
    }

    fn record(&mut self, now_secs: u64, record: &RecordRequest) {
        let index = now_secs / self.slot_secs;
        let len = self.slots.len() as u64;
        let slot = &mut self.slots[(index % len) as usize];
        if slot.0 != index {
            slot.0 = index;
            slot.1.clear();
        }
        slot.1.add(record);
    }

    /// Everything in the `len` slots ending with the current one.
    fn merged(&self, now_secs: u64) -> Stats {
        let current = now_secs / self.slot_secs;
        let oldest = current.saturating_sub(self.slots.len() as u64 - 1);
        let mut total = Stats::default();
        for (index, stats) in &self.slots {
            if *index != u64::MAX && *index >= oldest && *index <= current {
                total.merge(stats);
            }
        }
        total
    }
}

#[derive(Clone, Debug)]
struct ModelStats {
    minute: Ring,
    hour: Ring,
    day: Ring,
    lifetime: Stats,
}

impl ModelStats {
    fn new() -> ModelStats {
        ModelStats {
            minute: Ring::new(1, 60),
            hour: Ring::new(60, 60),
            day: Ring::new(3600, 24),
            lifetime: Stats::default(),
        }
    }

    fn record(&mut self, now_secs: u64, record: &RecordRequest) {
        self.minute.record(now_secs, record);
        self.hour.record(now_secs, record);
        self.day.record(now_secs, record);
        self.lifetime.add(record);
    }

    fn windows(&self, now_secs: u64) -> Windows {
        Windows {
            minute: self.minute.merged(now_secs).summary(),
            hour: self.hour.merged(now_secs).summary(),
            day: self.day.merged(now_secs).summary(),
        }
    }
}

/// One line of the recent-requests list on the dashboard.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RecentRequest {
    pub at_ms: i64,
    pub user: String,
    #[schema(value_type = String)]
    pub model: Arc<str>,
    pub latency_ms: u64,
    /// `ok`, `cancelled` or an error code.
    #[schema(value_type = String)]
    pub outcome: &'static str,
    pub tokens_in: u64,
    pub tokens_out: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct MetricsSnapshot {
    pub totals: Windows,
    pub models: BTreeMap<String, Windows>,
    /// Chats refused at admission, by code: not usage, so not in the windows above.
    pub rejected: BTreeMap<String, u64>,
    pub recent: Vec<RecentRequest>,
}

/// Since-start counters for Prometheus.
#[derive(Clone, Debug, Default)]
pub struct LifetimeCounters {
    pub models: BTreeMap<String, Stats>,
    pub rejected: BTreeMap<ErrorCode, u64>,
}

pub struct AggregatorState {
    totals: ModelStats,
    models: BTreeMap<Arc<str>, ModelStats>,
    rejected: BTreeMap<ErrorCode, u64>,
    recent: VecDeque<RecentRequest>,
    recent_capacity: usize,
}

impl AggregatorState {
    pub fn new(recent_capacity: usize) -> AggregatorState {
        AggregatorState {
            totals: ModelStats::new(),
            models: BTreeMap::new(),
            rejected: BTreeMap::new(),
            recent: VecDeque::with_capacity(recent_capacity.min(4096)),
            recent_capacity,
        }
    }

    pub fn record(&mut self, now_secs: u64, record: &RecordRequest) {
        self.totals.record(now_secs, record);
        match self.models.get_mut(&record.model) {
            Some(stats) => stats.record(now_secs, record),
            None => {
                let mut stats = ModelStats::new();
                stats.record(now_secs, record);
                self.models.insert(record.model.clone(), stats);
            }
        }
        if self.recent_capacity > 0 {
            if self.recent.len() == self.recent_capacity {
                self.recent.pop_front();
            }
            self.recent.push_back(RecentRequest {
                at_ms: record.started_at_ms,
                user: record.user.to_string(),
                model: record.model.clone(),
                latency_ms: record.latency_ms,
                outcome: record.outcome.as_str(),
                tokens_in: record.tokens_in,
                tokens_out: record.tokens_out,
            });
        }
    }

    pub fn reject(&mut self, code: ErrorCode) {
        *self.rejected.entry(code).or_default() += 1;
    }

    /// `recent_limit` newest requests, newest first.
    pub fn snapshot(&self, now_secs: u64, recent_limit: usize) -> MetricsSnapshot {
        MetricsSnapshot {
            totals: self.totals.windows(now_secs),
            models: self
                .models
                .iter()
                .map(|(name, stats)| (name.to_string(), stats.windows(now_secs)))
                .collect(),
            rejected: self
                .rejected
                .iter()
                .map(|(c, n)| (c.as_str().to_string(), *n))
                .collect(),
            recent: self
                .recent
                .iter()
                .rev()
                .take(recent_limit)
                .cloned()
                .collect(),
        }
    }

    pub fn lifetime(&self) -> LifetimeCounters {
        LifetimeCounters {
            models: self
                .models
                .iter()
                .map(|(name, stats)| (name.to_string(), stats.lifetime.clone()))
                .collect(),
            rejected: self.rejected.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::UserId;

    fn record(model: &str, latency_ms: u64, outcome: Outcome) -> RecordRequest {
        RecordRequest {
            id: uuid::Uuid::new_v4(),
            user: UserId::parse("u").expect("user"),
            session: None,
            model: Arc::from(model),
            started_at_ms: 0,
            latency_ms,
            tokens_in: 2,
            tokens_out: 3,
            estimated: false,
            outcome,
        }
    }

    #[test]
    fn averages_are_weighted_never_averages_of_bucket_averages() {
        let mut state = AggregatorState::new(10);
        // The example: minute A has 3 × 100 ms and 1 × 500 ms, minute B 1 × 100 ms.
        // (Its 166.7 ms figure cannot come from these five records: the weighted average is
        // 900 / 5 = 180 ms; the average of the two minute averages would be 150 ms.)
        let minute_a = 1_000_000 * 60 + 5;
        for _ in 0..3 {
            state.record(minute_a, &record("m", 100, Outcome::Ok));
        }
        state.record(minute_a + 1, &record("m", 500, Outcome::Ok));
        // Within minute A alone: (300 + 500) / 4 = 200 ms.
        assert_eq!(
            state.snapshot(minute_a + 1, 10).models["m"]
                .minute
                .avg_latency_ms,
            200.0
        );
        let minute_b = minute_a + 61;
        state.record(minute_b, &record("m", 100, Outcome::Ok));
        let snapshot = state.snapshot(minute_b, 10);
        let windows = &snapshot.models["m"];
        // The last minute holds only minute B's record.
        assert_eq!(windows.minute.avg_latency_ms, 100.0);
        // Hour and day: (3×100 + 500 + 100) / 5 = 180 ms — and not (200 + 100) / 2 = 150.
        assert_eq!(windows.hour.avg_latency_ms, 180.0);
        assert_eq!(windows.day.avg_latency_ms, 180.0);
        assert_eq!(snapshot.totals.hour.requests, 5);
    }

    #[test]
    fn windows_forget_what_is_older_than_their_span() {
        let mut state = AggregatorState::new(10);
        state.record(0, &record("m", 10, Outcome::Ok));
        let later = 2 * 86_400;
        state.record(
            later,
            &record("m", 10, Outcome::Error(ErrorCode::UpstreamError)),
        );
        let snapshot = state.snapshot(later, 10);
        let day = &snapshot.models["m"].day;
        assert_eq!(day.requests, 1);
        assert_eq!(day.errors, 1);
        assert_eq!(day.errors_by_code["upstream_error"], 1);
        assert_eq!(state.lifetime().models["m"].requests, 2);
    }

    #[test]
    fn recent_ring_is_bounded_and_newest_first() {
        let mut state = AggregatorState::new(3);
        for latency in 1..=5 {
            state.record(0, &record("m", latency, Outcome::Ok));
        }
        let recent = state.snapshot(0, 10).recent;
        assert_eq!(
            recent.iter().map(|r| r.latency_ms).collect::<Vec<_>>(),
            vec![5, 4, 3]
        );
    }
}
