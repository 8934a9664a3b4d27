//! What a run counts: live counters the progress line reads across threads, and per-thread
//! tallies (latency histogram, errors by code) merged once at the end.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::actors::metrics::histogram::Histogram;

/// Live counters of one worker thread. Only that thread writes them (no contention on the
/// hot path); the main thread sums all threads' counters for the progress line. Aligned so
/// two threads' counters never share a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Counters {
    pub chats: AtomicU64,
    pub deltas: AtomicU64,
    pub errors: AtomicU64,
    /// Connections open right now.
    pub open: AtomicU64,
    /// Connections whose opening has finished, successfully or not.
    pub settled: AtomicU64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(counter: &AtomicU64, n: u64) {
        counter.fetch_sub(n, Ordering::Relaxed);
    }
}

/// A sum of every thread's counters at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub chats: u64,
    pub deltas: u64,
    pub errors: u64,
    pub open: u64,
    pub settled: u64,
}

impl Totals {
    pub fn sum(all: &[Counters]) -> Totals {
        let mut totals = Totals::default();
        for c in all {
            totals.chats += c.chats.load(Ordering::Relaxed);
            totals.deltas += c.deltas.load(Ordering::Relaxed);
            totals.errors += c.errors.load(Ordering::Relaxed);
            totals.open += c.open.load(Ordering::Relaxed);
            totals.settled += c.settled.load(Ordering::Relaxed);
        }
        totals
    }
}

/// The histogram counts integer units; latencies are recorded in 10 µs units so fast local
/// replies keep sub-millisecond resolution while the range still reaches ~40 s (beyond that
/// values share the last bucket, and `max` stays exact).
const UNIT_MICROS: u64 = 10;

/// Chat latencies: a mergeable histogram (quantiles within 6.25 %) plus the exact maximum.
#[derive(Clone, Debug, Default)]
pub struct Latencies {
    histogram: Histogram,
    max_micros: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latencies {
    pub fn record(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram.record(micros / UNIT_MICROS);
        self.max_micros = self.max_micros.max(micros);
    }

    pub fn merge(&mut self, other: &Latencies) {
        self.histogram.merge(&other.histogram);
        self.max_micros = self.max_micros.max(other.max_micros);
    }

    /// Milliseconds, rounded to the microsecond. A quantile is a bucket's midpoint, which can
    /// lie above the largest value seen; it is capped at the exact maximum so the figures
    /// stay ordered (p50 ≤ p90 ≤ p99 ≤ max).
    pub fn summary(&self) -> LatencySummary {
        let max_ms = self.max_micros as f64 / 1000.0;
        let quantile = |q: f64| {
            self.histogram
                .quantile(q)
                .map(|units| (units * UNIT_MICROS as f64 / 1000.0).min(max_ms))
                .map(round3)
                .unwrap_or(0.0)
        };
        LatencySummary {
            p50: quantile(0.50),
            p90: quantile(0.90),
            p99: quantile(0.99),
            max: round3(max_ms),
        }
    }
}

pub fn round3(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// What one worker thread saw, handed to the main thread when it ends.
#[derive(Debug, Default)]
pub struct Tally {
    pub latencies: Latencies,
    /// Server error codes (`rate_limited`, …) and the tool's own (`connect_failed`, …).
    pub errors: BTreeMap<String, u64>,
    pub connected: u64,
    /// Idle mode: connections still open when the hold time ended.
    pub open_at_deadline: u64,
    /// When the last chat of this thread ended, to measure the run up to its real end.
    pub last_reply_at: Option<Instant>,
    /// Per `--url`, in the order given.
    pub by_target: Vec<TargetTally>,
    /// `--drop-rate`: what dropping and resuming replies did.
    pub resume: ResumeTally,
    /// `--drop-rate`: from cutting a connection to the new one's `session` frame.
    pub reconnects: Latencies,
}

/// What one `--url` got.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct TargetTally {
    /// Connections that opened there (first opens; reconnects after a drop not counted).
    pub connected: u64,
    /// Replies that ended there with `done`.
    pub chats: u64,
}

/// Replies dropped mid-way and resumed, and what their `seq` numbers showed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ResumeTally {
    /// Connections dropped mid-reply (closed without a close frame).
    pub dropped: u64,
    /// Dropped replies that got the rest of their frames, to their `done` or `error`.
    pub resumed: u64,
    /// Dropped replies that could not be resumed: the session did not come back
    /// (`resume_session_lost`), the reply was not kept (`resume_not_found`), or the server
    /// refused the `resume` frame (`resume_refused`).
    pub lost: u64,
    /// Deltas missing from a reply: a `seq` skipped, or fewer than the reply's `last_seq`.
    pub gaps: u64,
    /// Deltas received twice (a `seq` not above the last one seen).
    pub duplicates: u64,
}

impl ResumeTally {
    fn merge(&mut self, other: &ResumeTally) {
        self.dropped += other.dropped;
        self.resumed += other.resumed;
        self.lost += other.lost;
        self.gaps += other.gaps;
        self.duplicates += other.duplicates;
    }
}

impl Tally {
    pub fn error(&mut self, code: &str) {
        match self.errors.get_mut(code) {
            Some(n) => *n += 1,
            None => {
                self.errors.insert(code.to_string(), 1);
            }
        }
    }

    /// The tally of `--url` number `index`.
    pub fn target(&mut self, index: usize) -> &mut TargetTally {
        if self.by_target.len() <= index {
            self.by_target.resize(index + 1, TargetTally::default());
        }
        &mut self.by_target[index]
    }

    pub fn reply_ended(&mut self, at: Instant) {
        self.last_reply_at = Some(self.last_reply_at.map_or(at, |t| t.max(at)));
    }

    pub fn merge(&mut self, other: Tally) {
        self.latencies.merge(&other.latencies);
        for (code, n) in other.errors {
            *self.errors.entry(code).or_default() += n;
        }
        self.connected += other.connected;
        self.open_at_deadline += other.open_at_deadline;
        for (i, target) in other.by_target.iter().enumerate() {
            let mine = self.target(i);
            mine.connected += target.connected;
            mine.chats += target.chats;
        }
        self.resume.merge(&other.resume);
        self.reconnects.merge(&other.reconnects);
        self.last_reply_at = match (self.last_reply_at, other.last_reply_at) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_ordered_and_capped_at_the_max() {
        let mut latencies = Latencies::default();
        for micros in [150, 900, 1_000, 1_100, 25_000] {
            latencies.record(Duration::from_micros(micros));
        }
        let s = latencies.summary();
        assert!(s.p50 <= s.p90 && s.p90 <= s.p99 && s.p99 <= s.max, "{s:?}");
        assert_eq!(s.max, 25.0);
        // Within one bucket (6.25 %) of the exact median, 1.0 ms.
        assert!((s.p50 - 1.0).abs() <= 0.07, "{s:?}");
    }

    #[test]
    fn a_single_value_reports_itself_everywhere() {
        let mut latencies = Latencies::default();
        latencies.record(Duration::from_micros(17_345));
        let s = latencies.summary();
        assert_eq!(s.max, 17.345);
        assert!(s.p50 <= s.max && s.p50 > 16.0, "{s:?}");
    }

    #[test]
    fn empty_latencies_are_zero() {
        assert_eq!(Latencies::default().summary(), LatencySummary::default());
    }

    #[test]
    fn tallies_merge_errors_and_latest_reply() {
        let now = Instant::now();
        let mut a = Tally::default();
        a.error("rate_limited");
        a.reply_ended(now);
        let mut b = Tally::default();
        b.error("rate_limited");
        b.error("connect_failed");
        b.reply_ended(now + Duration::from_secs(1));
        a.target(0).chats = 3;
        b.target(1).chats = 2;
        b.target(0).connected = 1;
        b.resume.gaps = 1;
        a.resume.dropped = 2;
        a.merge(b);
        assert_eq!(
            a.by_target,
            [
                TargetTally {
                    connected: 1,
                    chats: 3
                },
                TargetTally {
                    connected: 0,
                    chats: 2
                }
            ]
        );
        assert_eq!((a.resume.dropped, a.resume.gaps), (2, 1));
        assert_eq!(a.errors["rate_limited"], 2);
        assert_eq!(a.errors["connect_failed"], 1);
        assert_eq!(a.last_reply_at, Some(now + Duration::from_secs(1)));
    }
}
