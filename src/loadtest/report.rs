//! The summary at the end of a run, as text for people and as one JSON object for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::stats::{round3, LatencySummary, Tally, Totals};
use super::{Mode, Plan};

/// The JSON summary. The contract's fields first; the rest describe the run and its cost.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Replies that ended with `done` (and were not cancelled).
    pub chats: u64,
    pub deltas: u64,
    /// Server error codes and the tool's own (`connect_failed`, `timeout`, `closed_1001`, …).
    pub errors: BTreeMap<String, u64>,
    pub chats_per_sec: f64,
    pub deltas_per_sec: f64,
    pub latency_ms: LatencySummary,
    /// From the moment every connection was open to the end of the last reply (idle mode:
    /// the hold time).
    pub duration_secs: f64,
    /// CPU time the load test itself used (user + system, all threads), connecting included.
    pub cpu_secs: f64,
    pub mode: &'static str,
    pub connections: u64,
    /// Connections that opened: WebSockets upgraded that got their `session` frame; with
    /// `--openai`, the request loops started (HTTP connections open on demand).
    pub connected: u64,
    /// Idle mode: connections still open when the hold time ended.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_at_end: Option<u64>,
    pub threads: u64,
}

impl Summary {
    pub fn new(
        plan: &Plan,
        tally: &Tally,
        totals: Totals,
        duration: Duration,
        cpu_secs: f64,
    ) -> Summary {
        let secs = duration.as_secs_f64();
        let rate = |n: u64| {
            if secs > 0.0 {
                round3(n as f64 / secs)
            } else {
                0.0
            }
        };
        Summary {
            chats: totals.chats,
            deltas: totals.deltas,
            errors: tally.errors.clone(),
            chats_per_sec: rate(totals.chats),
            deltas_per_sec: rate(totals.deltas),
            latency_ms: tally.latencies.summary(),
            // Microseconds: short runs keep chats / duration_secs = chats_per_sec.
            duration_secs: (secs * 1e6).round() / 1e6,
            cpu_secs: round3(cpu_secs),
            mode: plan.mode.name(),
            connections: plan.connections,
            connected: tally.connected,
            open_at_end: (plan.mode == Mode::Idle).then_some(tally.open_at_deadline),
            threads: plan.threads,
        }
    }

    /// A run succeeded when anything got through: a chat, or (idle) a connection held.
    pub fn succeeded(&self) -> bool {
        match self.open_at_end {
            Some(open) => open > 0,
            None => self.chats > 0,
        }
    }

    pub fn to_json(&self) -> String {
        // Plain numbers, strings and string-keyed maps: serializing cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "chatgate loadtest: {} mode, {} connections ({} opened) on {} thread(s), {:.1} s",
            self.mode, self.connections, self.connected, self.threads, self.duration_secs
        );
        if let Some(open) = self.open_at_end {
            let _ = writeln!(out, "  held open  {open} at the end");
        } else {
            let _ = writeln!(
                out,
                "  chats      {:>10}  ({:.1}/s)",
                self.chats, self.chats_per_sec
            );
            let _ = writeln!(
                out,
                "  deltas     {:>10}  ({:.1}/s)",
                self.deltas, self.deltas_per_sec
            );
            let l = &self.latency_ms;
            let _ = writeln!(
                out,
                "  latency    p50 {} ms  p90 {} ms  p99 {} ms  max {} ms",
                l.p50, l.p90, l.p99, l.max
            );
        }
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            self.errors
                .iter()
                .map(|(code, n)| format!("{code}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let _ = writeln!(out, "  errors     {errors}");
        // Over a very short run the share says nothing (start-up dominates).
        let share = if self.duration_secs >= 1.0 {
            format!(
                " ({:.0} % of one core over the run)",
                100.0 * self.cpu_secs / self.duration_secs
            )
        } else {
            String::new()
        };
        let _ = write!(out, "  own cpu    {:.2} s{share}", self.cpu_secs);
        out
    }
}
