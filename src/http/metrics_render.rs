//! `/metrics` as Prometheus text: a pure function of one snapshot of the cluster's numbers,
//! so the exposition can be tested without a server and the handler stays a thin shell.
//!
//! Two sets of series:
//! - this instance's own, under the names chatgate always had, each with an `instance` label
//!   (`CHATGATE_INSTANCE_ID`); every instance exposes only its own, so scraping every
//!   instance and summing over `instance` counts each request once;
//! - the cluster's totals over every live instance, the same families prefixed
//!   `chatgate_cluster_` with no `instance` label, plus the instance count and Redis' state.
//!   Any one instance's scrape has them; they drop when an instance leaves (Prometheus
//!   reads that as a counter reset).

use crate::actors::metrics::MetricsParts;
use crate::actors::report::ClusterNumbers;
use crate::cluster::RedisHealth;
use crate::http::prometheus::Encoder;

type Labels<'a> = Vec<(&'a str, &'a str)>;

fn with<'a>(base: &[(&'a str, &'a str)], more: &[(&'a str, &'a str)]) -> Labels<'a> {
    base.iter().chain(more).copied().collect()
}

/// The text exposition (format 0.0.4) of `numbers`.
pub fn render(numbers: &ClusterNumbers) -> String {
    let mut e = Encoder::default();
    let own = numbers.own();
    let here: &[(&str, &str)] = &[("instance", own.id.as_str())];
    let snapshot = &own.snapshot;
    usage(&mut e, "", "on this instance", here, &snapshot.metrics);
    e.family(
        "chatgate_sessions",
        "gauge",
        "Chat sessions held by this instance.",
    );
    e.sample(
        "chatgate_sessions",
        &with(here, &[("state", "active")]),
        snapshot.sessions.active as f64,
    );
    e.sample(
        "chatgate_sessions",
        &with(here, &[("state", "inactive")]),
        snapshot.sessions.inactive as f64,
    );
    let gauges: [(&str, &str, &str, f64); 6] = [
        (
            "chatgate_websocket_connections",
            "gauge",
            "Open chat WebSocket connections.",
            snapshot.hub.connections as f64,
        ),
        (
            "chatgate_feed_subscribers",
            "gauge",
            "Admins subscribed to the live metrics feed.",
            snapshot.hub.subscribers as f64,
        ),
        (
            "chatgate_flusher_buffered_rows",
            "gauge",
            "Rows waiting to be written to the database.",
            snapshot.flusher.buffered as f64,
        ),
        (
            "chatgate_flusher_written_rows_total",
            "counter",
            "Rows written to the database.",
            snapshot.flusher.written as f64,
        ),
        (
            "chatgate_flusher_dropped_rows_total",
            "counter",
            "Raw request rows dropped because the buffer was full.",
            snapshot.flusher.dropped as f64,
        ),
        (
            "chatgate_flusher_retries_total",
            "counter",
            "Batch writes retried after a transient database failure.",
            snapshot.flusher.retries as f64,
        ),
    ];
    for (name, kind, help, value) in gauges {
        e.family(name, kind, help);
        e.sample(name, here, value);
    }

    usage(
        &mut e,
        "cluster_",
        "over every live instance",
        &[],
        &numbers.metrics(),
    );
    let sessions = numbers.sessions();
    e.family(
        "chatgate_cluster_sessions",
        "gauge",
        "Chat sessions held by every live instance.",
    );
    e.sample(
        "chatgate_cluster_sessions",
        &[("state", "active")],
        sessions.active as f64,
    );
    e.sample(
        "chatgate_cluster_sessions",
        &[("state", "inactive")],
        sessions.inactive as f64,
    );
    e.family(
        "chatgate_cluster_websocket_connections",
        "gauge",
        "Open chat WebSocket connections on every live instance.",
    );
    e.sample(
        "chatgate_cluster_websocket_connections",
        &[],
        numbers.hub().connections as f64,
    );
    e.family(
        "chatgate_cluster_instances",
        "gauge",
        "Live instances this instance counts (itself included).",
    );
    e.sample(
        "chatgate_cluster_instances",
        &[],
        numbers.members.len() as f64,
    );
    e.family(
        "chatgate_cluster_redis",
        "gauge",
        "Redis as this instance sees it: 1 for the current state (off = no cluster mode).",
    );
    for (state, health) in [
        ("off", RedisHealth::Off),
        ("up", RedisHealth::Up),
        ("down", RedisHealth::Down),
    ] {
        let current = if numbers.redis == health { 1.0 } else { 0.0 };
        e.sample("chatgate_cluster_redis", &[("state", state)], current);
    }
    e.finish()
}

/// Requests, tokens, latency and refusals since start: `chatgate_<prefix>…`, each sample
/// labelled with `base` first.
fn usage(e: &mut Encoder, prefix: &str, scope: &str, base: &[(&str, &str)], parts: &MetricsParts) {
    let requests = format!("chatgate_{prefix}requests_total");
    e.family(
        &requests,
        "counter",
        &format!("Admitted chat requests by model and outcome, {scope}."),
    );
    for (model, stats) in &parts.lifetime {
        let model = model.as_str();
        let ok = stats.requests - stats.errors - stats.cancelled;
        e.sample(
            &requests,
            &with(base, &[("model", model), ("outcome", "ok")]),
            ok as f64,
        );
        e.sample(
            &requests,
            &with(base, &[("model", model), ("outcome", "cancelled")]),
            stats.cancelled as f64,
        );
        for (code, n) in &stats.errors_by_code {
            e.sample(
                &requests,
                &with(base, &[("model", model), ("outcome", code.as_str())]),
                *n as f64,
            );
        }
    }
    let tokens = format!("chatgate_{prefix}tokens_total");
    e.family(
        &tokens,
        "counter",
        &format!("Tokens by model and direction, {scope}."),
    );
    for (model, stats) in &parts.lifetime {
        let model = model.as_str();
        e.sample(
            &tokens,
            &with(base, &[("model", model), ("direction", "in")]),
            stats.tokens_in as f64,
        );
        e.sample(
            &tokens,
            &with(base, &[("model", model), ("direction", "out")]),
            stats.tokens_out as f64,
        );
    }
    let duration = format!("chatgate_{prefix}request_duration_seconds");
    e.family(
        &duration,
        "histogram",
        &format!("Time from a chat's arrival to its last frame, {scope}."),
    );
    for (model, stats) in &parts.lifetime {
        let buckets: Vec<(f64, u64)> = stats
            .latency
            .cumulative_at_powers_of_two()
            .into_iter()
            .map(|(edge_ms, cumulative)| (edge_ms as f64 / 1000.0, cumulative))
            .collect();
        let sum = stats.latency_sum_ms as f64 / 1000.0;
        e.histogram(
            &duration,
            &with(base, &[("model", model.as_str())]),
            &buckets,
            sum,
            stats.latency.count(),
        );
    }
    let rejected = format!("chatgate_{prefix}rejected_total");
    e.family(
        &rejected,
        "counter",
        &format!("Chats refused at admission, by error code, {scope}."),
    );
    for (code, n) in &parts.rejected {
        e.sample(
            &rejected,
            &with(base, &[("code", code.as_str())]),
            *n as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::actors::db_flusher::FlusherStats;
    use crate::actors::membership::{ClusterView, PeerView};
    use crate::actors::metrics::{RawWindows, Stats};
    use crate::actors::report::{HubStats, InstanceSnapshot, SNAPSHOT_VERSION};
    use crate::actors::session_registry::SessionStats;
    use crate::error::ErrorCode;

    fn snapshot() -> InstanceSnapshot {
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
        InstanceSnapshot {
            v: SNAPSHOT_VERSION,
            generated_at_ms: 0,
            metrics: MetricsParts {
                models: BTreeMap::from([("echo".to_string(), RawWindows::default())]),
                lifetime: BTreeMap::from([("echo".to_string(), stats)]),
                rejected: BTreeMap::from([("rate_limited".to_string(), 25)]),
                recent: Vec::new(),
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

    fn alone() -> ClusterNumbers {
        ClusterNumbers::new("i0", snapshot(), None)
    }

    fn with_peer() -> ClusterNumbers {
        let view = ClusterView {
            redis: RedisHealth::Up,
            instances: vec![PeerView {
                instance: "i1".into(),
                seen_ms_ago: 300,
                snapshot: Some(serde_json::to_value(snapshot()).expect("json")),
            }],
        };
        ClusterNumbers::new("i0", snapshot(), Some(view))
    }

    fn assert_lines(text: &str, lines: &[&str]) {
        for line in lines {
            assert!(
                text.lines().any(|l| l == *line),
                "missing line {line:?} in:\n{text}"
            );
        }
    }

    #[test]
    fn every_family_is_rendered_with_its_samples_and_this_instance_label() {
        let text = render(&alone());
        assert_lines(
            &text,
            &[
                "# TYPE chatgate_requests_total counter",
                r#"chatgate_requests_total{instance="i0",model="echo",outcome="ok"} 3"#,
                r#"chatgate_requests_total{instance="i0",model="echo",outcome="cancelled"} 1"#,
                r#"chatgate_requests_total{instance="i0",model="echo",outcome="upstream_error"} 1"#,
                r#"chatgate_tokens_total{instance="i0",model="echo",direction="in"} 40"#,
                r#"chatgate_tokens_total{instance="i0",model="echo",direction="out"} 90"#,
                "# TYPE chatgate_request_duration_seconds histogram",
                r#"chatgate_request_duration_seconds_sum{instance="i0",model="echo"} 1.5"#,
                r#"chatgate_request_duration_seconds_count{instance="i0",model="echo"} 5"#,
                r#"chatgate_rejected_total{instance="i0",code="rate_limited"} 25"#,
                r#"chatgate_sessions{instance="i0",state="active"} 2"#,
                r#"chatgate_sessions{instance="i0",state="inactive"} 1"#,
                r#"chatgate_websocket_connections{instance="i0"} 2"#,
                r#"chatgate_feed_subscribers{instance="i0"} 1"#,
                r#"chatgate_flusher_buffered_rows{instance="i0"} 4"#,
                r#"chatgate_flusher_written_rows_total{instance="i0"} 10"#,
                r#"chatgate_flusher_dropped_rows_total{instance="i0"} 0"#,
                r#"chatgate_flusher_retries_total{instance="i0"} 0"#,
                // Alone, the cluster is this instance.
                r#"chatgate_cluster_requests_total{model="echo",outcome="ok"} 3"#,
                "chatgate_cluster_instances 1",
                r#"chatgate_cluster_redis{state="off"} 1"#,
                r#"chatgate_cluster_redis{state="up"} 0"#,
            ],
        );
    }

    #[test]
    fn cluster_families_add_up_every_instance_and_carry_no_instance_label() {
        let text = render(&with_peer());
        assert_lines(
            &text,
            &[
                r#"chatgate_requests_total{instance="i0",model="echo",outcome="ok"} 3"#,
                r#"chatgate_cluster_requests_total{model="echo",outcome="ok"} 6"#,
                r#"chatgate_cluster_requests_total{model="echo",outcome="upstream_error"} 2"#,
                r#"chatgate_cluster_tokens_total{model="echo",direction="out"} 180"#,
                r#"chatgate_cluster_request_duration_seconds_count{model="echo"} 10"#,
                r#"chatgate_cluster_request_duration_seconds_bucket{model="echo",le="0.256"} 4"#,
                r#"chatgate_cluster_rejected_total{code="rate_limited"} 50"#,
                r#"chatgate_cluster_sessions{state="active"} 4"#,
                "chatgate_cluster_websocket_connections 4",
                "chatgate_cluster_instances 2",
                r#"chatgate_cluster_redis{state="up"} 1"#,
                r#"chatgate_cluster_redis{state="off"} 0"#,
            ],
        );
        assert!(
            !text.contains(r#"instance="i1""#),
            "a peer's series are its own to expose: {text}"
        );
    }

    #[test]
    fn the_same_snapshot_renders_the_same_text() {
        assert_eq!(render(&with_peer()), render(&with_peer()));
        let empty = ClusterNumbers::new("i0", InstanceSnapshot::default(), None);
        let text = render(&empty);
        assert!(text.contains("# HELP chatgate_requests_total "), "{text}");
        assert!(
            !text.contains("model="),
            "no model, no per-model sample: {text}"
        );
    }
}
