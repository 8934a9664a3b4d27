//! The aggregator's numbers: per model and in total, three rolling windows (a minute of
//! seconds, an hour of minutes, a day of hours) plus lifetime counters, all kept as sums and
//! counts so every average is weighted and windows merge exactly — also across instances:
//! [`MetricsParts`] is what one instance contributes to the cluster's numbers.

use std::borrow::Cow;
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize};

use super::histogram::Histogram;
use super::messages::{Outcome, RecordRequest};
use crate::error::ErrorCode;

/// Additive counters for a span of time. Serialized into cluster snapshots, so every field is
/// a sum (or a histogram of counts) that merges by addition.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    pub requests: u64,
    pub errors: u64,
    pub cancelled: u64,
    #[serde(deserialize_with = "known_codes")]
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

    pub fn merge(&mut self, other: &Stats) {
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

/// A peer running a newer build may report an error code this one does not know: its count
/// stays in `errors`, only its line in `errors_by_code` is left out.
fn known_codes<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<ErrorCode, u64>, D::Error> {
    let raw = BTreeMap::<String, u64>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .filter_map(|(code, n)| {
            let code: ErrorCode = serde_json::from_value(serde_json::Value::String(code)).ok()?;
            Some((code, n))
        })
        .collect())
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

/// The raw counters behind [`Windows`]: what instances exchange, since summaries (averages,
/// percentiles) do not add up but these do.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RawWindows {
    pub minute: Stats,
    pub hour: Stats,
    pub day: Stats,
}

impl RawWindows {
    pub fn merge(&mut self, other: &RawWindows) {
        self.minute.merge(&other.minute);
        self.hour.merge(&other.hour);
        self.day.merge(&other.day);
    }

    pub fn summary(&self) -> Windows {
        Windows {
            minute: self.minute.summary(),
            hour: self.hour.summary(),
            day: self.day.summary(),
        }
    }
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
        self.raw_windows(now_secs).summary()
    }

    fn raw_windows(&self, now_secs: u64) -> RawWindows {
        RawWindows {
            minute: self.minute.merged(now_secs),
            hour: self.hour.merged(now_secs),
            day: self.day.merged(now_secs),
        }
    }
}

/// One line of the recent-requests list on the dashboard.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct RecentRequest {
    pub at_ms: i64,
    pub user: String,
    #[schema(value_type = String)]
    pub model: Arc<str>,
    pub latency_ms: u64,
    /// `ok`, `cancelled` or an error code.
    #[schema(value_type = String)]
    pub outcome: Cow<'static, str>,
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

/// What one instance contributes to the cluster's numbers (published in its snapshot each
/// second): raw windows and since-start counters per model, refusals by code, and its newest
/// requests. Totals are not sent: they are the sum over models.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MetricsParts {
    pub models: BTreeMap<String, RawWindows>,
    /// Since start, per model (Prometheus counters).
    pub lifetime: BTreeMap<String, Stats>,
    /// Chats refused at admission since start, by code.
    pub rejected: BTreeMap<String, u64>,
    /// Newest first.
    pub recent: Vec<RecentRequest>,
}

impl MetricsParts {
    /// Every model's windows added up.
    pub fn totals(&self) -> RawWindows {
        let mut totals = RawWindows::default();
        for windows in self.models.values() {
            totals.merge(windows);
        }
        totals
    }

    /// Adds another instance's numbers; `recent` is left to the caller (it needs ordering).
    pub fn merge_counts(&mut self, other: &MetricsParts) {
        for (model, windows) in &other.models {
            self.models.entry(model.clone()).or_default().merge(windows);
        }
        for (model, stats) in &other.lifetime {
            self.lifetime.entry(model.clone()).or_default().merge(stats);
        }
        for (code, n) in &other.rejected {
            *self.rejected.entry(code.clone()).or_default() += n;
        }
    }
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
                outcome: Cow::Borrowed(record.outcome.as_str()),
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

    /// This instance's contribution to the cluster's numbers, with `recent_limit` newest
    /// requests.
    pub fn parts(&self, now_secs: u64, recent_limit: usize) -> MetricsParts {
        MetricsParts {
            models: self
                .models
                .iter()
                .map(|(name, stats)| (name.to_string(), stats.raw_windows(now_secs)))
                .collect(),
            lifetime: self
                .models
                .iter()
                .map(|(name, stats)| (name.to_string(), stats.lifetime.clone()))
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
        // The issue's example: minute A has 3 × 100 ms and 1 × 500 ms, minute B 1 × 100 ms.
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
        assert_eq!(state.parts(later, 0).lifetime["m"].requests, 2);
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

    #[test]
    fn parts_survive_the_wire_and_their_totals_match_the_local_totals() {
        let mut state = AggregatorState::new(10);
        let now = 7_200;
        state.record(now - 1_800, &record("b", 70, Outcome::Cancelled));
        state.record(now, &record("a", 40, Outcome::Ok));
        state.record(
            now,
            &record("b", 900, Outcome::Error(ErrorCode::UpstreamError)),
        );
        state.reject(ErrorCode::RateLimited);
        let parts = state.parts(now, 2);
        let json = serde_json::to_string(&parts).expect("serialize");
        let back: MetricsParts = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, parts);
        let local = state.snapshot(now, 2);
        assert_eq!(back.totals().summary(), local.totals);
        assert_eq!(back.models["b"].summary(), local.models["b"]);
        assert_eq!(back.rejected["rate_limited"], 1);
        assert_eq!(back.recent, local.recent);
        assert_eq!(back.lifetime["b"].requests, 2);
    }

    #[test]
    fn merged_instances_report_what_one_instance_serving_everything_would() {
        let (mut one, mut two, mut both) = (
            AggregatorState::new(0),
            AggregatorState::new(0),
            AggregatorState::new(0),
        );
        let now = 86_400 * 3;
        for i in 0..300u64 {
            let latency = (i * 37) % 2_000 + 1;
            let r = record(if i % 3 == 0 { "a" } else { "b" }, latency, Outcome::Ok);
            let at = now - 299 + i;
            if i % 2 == 0 {
                one.record(at, &r);
            } else {
                two.record(at, &r);
            }
            both.record(at, &r);
        }
        one.reject(ErrorCode::QuotaExceeded);
        two.reject(ErrorCode::QuotaExceeded);
        let mut merged = one.parts(now, 0);
        merged.merge_counts(&two.parts(now, 0));
        let expected = both.snapshot(now, 0);
        // Percentiles included: merged histograms are the histogram of every record.
        assert_eq!(merged.totals().summary(), expected.totals);
        for (model, windows) in &expected.models {
            assert_eq!(&merged.models[model].summary(), windows, "model {model}");
        }
        assert_eq!(merged.rejected["quota_exceeded"], 2);
        assert_eq!(merged.lifetime["b"], both.parts(now, 0).lifetime["b"]);
    }

    #[test]
    fn an_error_code_this_build_does_not_know_is_left_out_not_fatal() {
        let stats: Stats = serde_json::from_str(
            r#"{"requests":2,"errors":2,"errors_by_code":{"upstream_error":1,"from_the_future":1}}"#,
        )
        .expect("tolerant");
        assert_eq!(stats.errors, 2);
        assert_eq!(
            stats.errors_by_code,
            BTreeMap::from([(ErrorCode::UpstreamError, 1)])
        );
    }
}
