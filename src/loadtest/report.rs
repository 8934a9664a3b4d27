//! The summary at the end of a run, as text for people and as one JSON object for scripts.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;

use super::stats::{round3, LatencySummary, ResumeTally, Tally, Totals};
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
    /// Per `--url`, in the order given.
    pub urls: Vec<UrlSummary>,
    /// With `--drop-rate`: replies dropped and resumed, and the `seq` checks of every reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumeSummary>,
}

#[derive(Debug, Serialize)]
pub struct UrlSummary {
    pub url: String,
    /// Connections (or request loops) that opened there.
    pub connected: u64,
    /// Replies that ended there with `done`.
    pub chats: u64,
}

#[derive(Debug, Serialize)]
pub struct ResumeSummary {
    pub drop_rate: f64,
    #[serde(flatten)]
    pub counts: ResumeTally,
    /// From cutting a connection to the new connection's `session` frame (TCP, upgrade,
    /// and the server's hand-over of the session).
    pub reconnect_ms: LatencySummary,
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
            urls: plan
                .targets
                .iter()
                .enumerate()
                .map(|(i, target)| {
                    let got = tally.by_target.get(i).copied().unwrap_or_default();
                    UrlSummary {
                        url: target.base_url.clone(),
                        connected: got.connected,
                        chats: got.chats,
                    }
                })
                .collect(),
            resume: plan.drop_rate.map(|drop_rate| ResumeSummary {
                drop_rate,
                counts: tally.resume,
                reconnect_ms: tally.reconnects.summary(),
            }),
        }
    }

    /// A run succeeded when anything got through (a chat, or with `--idle` a connection
    /// held) and no reply lost or repeated a delta.
    pub fn succeeded(&self) -> bool {
        let got_through = match self.open_at_end {
            Some(open) => open > 0,
            None => self.chats > 0,
        };
        let intact = self
            .resume
            .as_ref()
            .is_none_or(|r| r.counts.gaps == 0 && r.counts.duplicates == 0);
        got_through && intact
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
        if self.urls.len() > 1 {
            for url in &self.urls {
                let _ = writeln!(
                    out,
                    "  url        {}  {} connected, {} chats",
                    url.url, url.connected, url.chats
                );
            }
        }
        if let Some(r) = &self.resume {
            let _ = writeln!(
                out,
                "  resume     drop rate {}: dropped {}  resumed {}  lost {}  gaps {}  duplicates {}",
                r.drop_rate,
                r.counts.dropped,
                r.counts.resumed,
                r.counts.lost,
                r.counts.gaps,
                r.counts.duplicates
            );
            let c = &r.reconnect_ms;
            let _ = writeln!(
                out,
                "  reconnect  p50 {} ms  p90 {} ms  p99 {} ms  max {} ms",
                c.p50, c.p90, c.p99, c.max
            );
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadtest::plan::LoadtestArgs;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: LoadtestArgs,
    }

    fn plan(extra: &[&str]) -> Plan {
        let base = [
            "loadtest",
            "--url",
            "http://a:1",
            "--url",
            "http://b:2",
            "--token",
            "t",
            "--connections",
            "4",
            "--chats",
            "1",
        ];
        let wrapper = Wrapper::try_parse_from([&base[..], extra].concat()).expect("args");
        Plan::from_args(wrapper.args).expect("plan")
    }

    #[test]
    fn the_summary_reports_each_url_and_the_resume_checks() {
        let dropping = plan(&["--drop-rate", "0.5"]);
        let mut tally = Tally::default();
        *tally.target(0) = crate::loadtest::stats::TargetTally {
            connected: 2,
            chats: 2,
        };
        tally.target(1).connected = 2;
        tally.resume.dropped = 3;
        tally.resume.resumed = 3;
        tally.reconnects.record(Duration::from_millis(12));
        let totals = Totals {
            chats: 2,
            ..Totals::default()
        };
        let summary = Summary::new(&dropping, &tally, totals, Duration::from_secs(1), 0.0);
        let json: serde_json::Value = serde_json::from_str(&summary.to_json()).expect("JSON");
        assert_eq!(
            json["urls"],
            serde_json::json!([
                {"url": "http://a:1", "connected": 2, "chats": 2},
                {"url": "http://b:2", "connected": 2, "chats": 0},
            ])
        );
        let mut resume = json["resume"].clone();
        let reconnect = resume
            .as_object_mut()
            .and_then(|r| r.remove("reconnect_ms"))
            .expect("reconnect_ms");
        assert_eq!(
            resume,
            serde_json::json!({"drop_rate": 0.5, "dropped": 3, "resumed": 3, "lost": 0, "gaps": 0, "duplicates": 0})
        );
        assert_eq!(reconnect["max"], 12.0, "{reconnect}");
        assert!(summary.succeeded());
        assert!(summary.to_text().contains("resumed 3"));
        assert!(summary.to_text().contains("reconnect  p50"));

        tally.resume.duplicates = 1;
        let summary = Summary::new(&dropping, &tally, totals, Duration::from_secs(1), 0.0);
        assert!(!summary.succeeded(), "a duplicate delta fails the run");
        tally.resume.duplicates = 0;
        tally.resume.gaps = 2;
        let summary = Summary::new(&dropping, &tally, totals, Duration::from_secs(1), 0.0);
        assert!(!summary.succeeded(), "a gap fails the run");

        let summary = Summary::new(&plan(&[]), &tally, totals, Duration::ZERO, 0.0);
        assert!(summary.resume.is_none(), "no --drop-rate, no resume report");
        assert!(!summary.to_json().contains("resume"));
    }
}
