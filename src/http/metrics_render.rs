//! `/metrics` as Prometheus text: a pure function of one snapshot of the actors' counters,
//! so the exposition can be tested without a server and the handler stays a thin shell.

use crate::actors::db_flusher::FlusherStats;
use crate::actors::metrics::state::LifetimeCounters;
use crate::actors::report::HubStats;
use crate::actors::session_registry::SessionStats;
use crate::http::prometheus::Encoder;

/// Everything `/metrics` reports, gathered from the actors at one moment.
pub struct PrometheusSnapshot {
    pub lifetime: LifetimeCounters,
    pub sessions: SessionStats,
    pub flusher: FlusherStats,
    pub hub: HubStats,
}

/// The text exposition (format 0.0.4) of `snapshot`.
pub fn render(snapshot: &PrometheusSnapshot) -> String {
    let mut e = Encoder::default();
    e.family(
        "chatgate_requests_total",
        "counter",
        "Admitted chat requests by model and outcome.",
    );
    for (model, stats) in &snapshot.lifetime.models {
        let ok = stats.requests - stats.errors - stats.cancelled;
        e.sample(
            "chatgate_requests_total",
            &[("model", model), ("outcome", "ok")],
            ok as f64,
        );
        e.sample(
            "chatgate_requests_total",
            &[("model", model), ("outcome", "cancelled")],
            stats.cancelled as f64,
        );
        for (code, n) in &stats.errors_by_code {
            e.sample(
                "chatgate_requests_total",
                &[("model", model), ("outcome", code.as_str())],
                *n as f64,
            );
        }
    }
    e.family(
        "chatgate_tokens_total",
        "counter",
        "Tokens by model and direction.",
    );
    for (model, stats) in &snapshot.lifetime.models {
        e.sample(
            "chatgate_tokens_total",
            &[("model", model), ("direction", "in")],
            stats.tokens_in as f64,
        );
        e.sample(
            "chatgate_tokens_total",
            &[("model", model), ("direction", "out")],
            stats.tokens_out as f64,
        );
    }
    e.family(
        "chatgate_request_duration_seconds",
        "histogram",
        "Time from a chat's arrival to its last frame.",
    );
    for (model, stats) in &snapshot.lifetime.models {
        let buckets: Vec<(f64, u64)> = stats
            .latency
            .cumulative_at_powers_of_two()
            .into_iter()
            .map(|(edge_ms, cumulative)| (edge_ms as f64 / 1000.0, cumulative))
            .collect();
        let sum = stats.latency_sum_ms as f64 / 1000.0;
        e.histogram(
            "chatgate_request_duration_seconds",
            &[("model", model)],
            &buckets,
            sum,
            stats.latency.count(),
        );
    }
    e.family(
        "chatgate_rejected_total",
        "counter",
        "Chats refused at admission, by error code.",
    );
    for (code, n) in &snapshot.lifetime.rejected {
        e.sample(
            "chatgate_rejected_total",
            &[("code", code.as_str())],
            *n as f64,
        );
    }
    e.family(
        "chatgate_sessions",
        "gauge",
        "Chat sessions held by this instance.",
    );
    e.sample(
        "chatgate_sessions",
        &[("state", "active")],
        snapshot.sessions.active as f64,
    );
    e.sample(
        "chatgate_sessions",
        &[("state", "inactive")],
        snapshot.sessions.inactive as f64,
    );
    e.family(
        "chatgate_websocket_connections",
        "gauge",
        "Open chat WebSocket connections.",
    );
    e.sample(
        "chatgate_websocket_connections",
        &[],
        snapshot.hub.connections as f64,
    );
    e.family(
        "chatgate_feed_subscribers",
        "gauge",
        "Admins subscribed to the live metrics feed.",
    );
    e.sample(
        "chatgate_feed_subscribers",
        &[],
        snapshot.hub.subscribers as f64,
    );
    e.family(
        "chatgate_flusher_buffered_rows",
        "gauge",
        "Rows waiting to be written to the database.",
    );
    e.sample(
        "chatgate_flusher_buffered_rows",
        &[],
        snapshot.flusher.buffered as f64,
    );
    e.family(
        "chatgate_flusher_written_rows_total",
        "counter",
        "Rows written to the database.",
    );
    e.sample(
        "chatgate_flusher_written_rows_total",
        &[],
        snapshot.flusher.written as f64,
    );
    e.family(
        "chatgate_flusher_dropped_rows_total",
        "counter",
        "Raw request rows dropped because the buffer was full.",
    );
    e.sample(
        "chatgate_flusher_dropped_rows_total",
        &[],
        snapshot.flusher.dropped as f64,
    );
    e.family(
        "chatgate_flusher_retries_total",
        "counter",
        "Batch writes retried after a transient database failure.",
    );
    e.sample(
        "chatgate_flusher_retries_total",
        &[],
        snapshot.flusher.retries as f64,
    );
    e.finish()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::actors::metrics::state::Stats;
    use crate::error::ErrorCode;

    fn snapshot() -> PrometheusSnapshot {
        let mut stats = Stats {
            requests: 5,
            errors: 1,
            cancelled: 1,
            errors_by_code: BTreeMap::from([(ErrorCode::UpstreamError, 1)]),
            tokens_in: 40,
            tokens_out: 90,
            latency_sum_ms: 1_500,
            ..Stats::default()
        };
        for ms in [100, 200, 300, 400, 500] {
            stats.latency.record(ms);
        }
        PrometheusSnapshot {
            lifetime: LifetimeCounters {
                models: BTreeMap::from([("echo".to_string(), stats)]),
                rejected: BTreeMap::from([(ErrorCode::RateLimited, 25)]),
            },
            sessions: SessionStats {
                active: 2,
                inactive: 1,
                total: 3,
            },
            flusher: FlusherStats {
                buffered: 4,
                written: 10,
                ..FlusherStats::default()
            },
            hub: HubStats {
                connections: 2,
                subscribers: 1,
                ..HubStats::default()
            },
        }
    }

    #[test]
    fn every_family_is_rendered_with_its_samples() {
        let text = render(&snapshot());
        for line in [
            "# TYPE chatgate_requests_total counter",
            "chatgate_requests_total{model=\"echo\",outcome=\"ok\"} 3",
            "chatgate_requests_total{model=\"echo\",outcome=\"cancelled\"} 1",
            "chatgate_requests_total{model=\"echo\",outcome=\"upstream_error\"} 1",
            "chatgate_tokens_total{model=\"echo\",direction=\"in\"} 40",
            "chatgate_tokens_total{model=\"echo\",direction=\"out\"} 90",
            "# TYPE chatgate_request_duration_seconds histogram",
            "chatgate_request_duration_seconds_sum{model=\"echo\"} 1.5",
            "chatgate_request_duration_seconds_count{model=\"echo\"} 5",
            "chatgate_rejected_total{code=\"rate_limited\"} 25",
            "chatgate_sessions{state=\"active\"} 2",
            "chatgate_sessions{state=\"inactive\"} 1",
            "chatgate_websocket_connections 2",
            "chatgate_feed_subscribers 1",
            "chatgate_flusher_buffered_rows 4",
            "chatgate_flusher_written_rows_total 10",
            "chatgate_flusher_dropped_rows_total 0",
            "chatgate_flusher_retries_total 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing line {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn the_same_snapshot_renders_the_same_text() {
        assert_eq!(render(&snapshot()), render(&snapshot()));
        let empty = PrometheusSnapshot {
            lifetime: LifetimeCounters::default(),
            sessions: SessionStats::default(),
            flusher: FlusherStats::default(),
            hub: HubStats::default(),
        };
        let text = render(&empty);
        assert!(text.contains("# HELP chatgate_requests_total "), "{text}");
        assert!(
            !text.contains("model="),
            "no model, no per-model sample: {text}"
        );
    }
}
