//! Adding the instances up: this instance's fresh numbers plus each live peer's latest
//! snapshot. Pure functions of their inputs, so merging is tested without Redis.
//!
//! What is exact and what is not: counters, token sums and latency sums add up exactly, and
//! latency histograms merge bucket by bucket, so a cluster p95/p99 is as exact as one
//! instance's (within one histogram bucket, ≤ 6.25 %). A peer's numbers are as old as its
//! last snapshot: published each second and read with each heartbeat, so up to about two
//! seconds behind this instance's own.

use std::collections::BTreeMap;

use super::{
    AdminMetrics, ClusterSummary, HubStats, InstanceSnapshot, InstanceView, SNAPSHOT_VERSION,
};
use crate::actors::db_flusher::FlusherStats;
use crate::actors::membership::ClusterView;
use crate::actors::metrics::MetricsParts;
use crate::actors::session_registry::SessionStats;
use crate::cluster::RedisHealth;

/// One live instance's numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct Member {
    pub id: String,
    pub seen_ms_ago: u64,
    pub snapshot: InstanceSnapshot,
}

/// Every live instance's numbers, this instance's first.
#[derive(Clone, Debug)]
pub struct ClusterNumbers {
    /// `Off` without cluster mode.
    pub redis: RedisHealth,
    /// Never empty: this instance is always the first member.
    pub members: Vec<Member>,
}

impl ClusterNumbers {
    /// `own` is this instance's fresh snapshot; `view` the membership's (`None` without
    /// cluster mode). This instance's entry in `view` is replaced by `own`; a peer whose
    /// snapshot is missing (it has not published yet, or it expired) or unreadable (another
    /// snapshot version) is left out until it publishes one this build reads.
    pub fn new(own_id: &str, own: InstanceSnapshot, view: Option<ClusterView>) -> ClusterNumbers {
        let mut members = vec![Member {
            id: own_id.to_string(),
            seen_ms_ago: 0,
            snapshot: own,
        }];
        let redis = match view {
            None => RedisHealth::Off,
            Some(view) => {
                for peer in view.instances {
                    if peer.instance == own_id {
                        continue;
                    }
                    match peer
                        .snapshot
                        .map(serde_json::from_value::<InstanceSnapshot>)
                    {
                        Some(Ok(snapshot)) if snapshot.v == SNAPSHOT_VERSION => {
                            members.push(Member {
                                id: peer.instance,
                                seen_ms_ago: peer.seen_ms_ago,
                                snapshot,
                            })
                        }
                        Some(Ok(snapshot)) => log::debug!(
                            "event=peer_snapshot_skipped instance={} version={}",
                            peer.instance,
                            snapshot.v
                        ),
                        Some(Err(err)) => log::debug!(
                            "event=peer_snapshot_skipped instance={} error={err}",
                            peer.instance
                        ),
                        None => {}
                    }
                }
                view.redis
            }
        };
        ClusterNumbers { redis, members }
    }

    /// This instance's own numbers.
    pub fn own(&self) -> &Member {
        &self.members[0]
    }

    /// Every member's mergeable metrics added up (`recent` left empty).
    pub fn metrics(&self) -> MetricsParts {
        let mut total = MetricsParts::default();
        for member in &self.members {
            total.merge_counts(&member.snapshot.metrics);
        }
        total
    }

    pub fn sessions(&self) -> SessionStats {
        let mut total = SessionStats::default();
        for s in self.members.iter().map(|m| &m.snapshot.sessions) {
            total.active += s.active;
            total.inactive += s.inactive;
            total.total += s.total;
        }
        total
    }

    pub fn hub(&self) -> HubStats {
        let mut total = HubStats::default();
        for h in self.members.iter().map(|m| &m.snapshot.hub) {
            total.connections += h.connections;
            total.subscribers += h.subscribers;
            total.frames_sent += h.frames_sent;
            total.frames_dropped += h.frames_dropped;
            total.subscribers_dropped += h.subscribers_dropped;
            total.replies_awaiting_resume += h.replies_awaiting_resume;
            total.replies_kept += h.replies_kept;
            total.replies_kept_bytes += h.replies_kept_bytes;
        }
        total
    }

    /// The flushers added up. `last_error` is the first one set, this instance's first; with
    /// several instances it names the instance, since the rows were lost there.
    pub fn flusher(&self) -> FlusherStats {
        let mut total = FlusherStats::default();
        for member in &self.members {
            let f = &member.snapshot.flusher;
            total.buffered += f.buffered;
            total.written += f.written;
            total.dropped += f.dropped;
            total.retries += f.retries;
            total.batches += f.batches;
            total.refused += f.refused;
            if total.last_error.is_none() {
                total.last_error = f.last_error.as_ref().map(|err| {
                    if self.members.len() == 1 {
                        err.clone()
                    } else {
                        format!("{}: {err}", member.id)
                    }
                });
            }
        }
        total
    }

    /// The `/admin/metrics` object: `recent_limit` newest requests of all instances (each
    /// peer contributes the newest ones it published).
    pub fn report(self, recent_limit: usize) -> AdminMetrics {
        let metrics = self.metrics();
        let mut recent: Vec<_> = self
            .members
            .iter()
            .flat_map(|m| m.snapshot.metrics.recent.iter().cloned())
            .collect();
        // Stable: equal times keep this instance's requests first.
        recent.sort_by_key(|r| std::cmp::Reverse(r.at_ms));
        recent.truncate(recent_limit);
        let instances: BTreeMap<String, InstanceView> = self
            .members
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    InstanceView {
                        sessions: m.snapshot.sessions,
                        flusher: m.snapshot.flusher.clone(),
                        hub: m.snapshot.hub.clone(),
                        seen_ms_ago: m.seen_ms_ago,
                    },
                )
            })
            .collect();
        AdminMetrics {
            totals: metrics.totals().summary(),
            models: metrics
                .models
                .iter()
                .map(|(name, windows)| (name.clone(), windows.summary()))
                .collect(),
            sessions: self.sessions(),
            flusher: self.flusher(),
            hub: self.hub(),
            rejected: metrics.rejected,
            recent,
            generated_at_ms: self.own().snapshot.generated_at_ms,
            cluster: ClusterSummary {
                redis: self.redis,
                instances: instances.len(),
            },
            instances,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;
    use std::sync::Arc;

    use super::*;
    use crate::actors::membership::PeerView;
    use crate::actors::metrics::state::RecentRequest;
    use crate::actors::metrics::{AggregatorState, Outcome, RecordRequest};
    use crate::domain::UserId;
    use crate::error::ErrorCode;

    const NOW: u64 = 1_000_000;

    fn record(model: &str, latency_ms: u64, at_ms: i64) -> RecordRequest {
        RecordRequest {
            id: uuid::Uuid::new_v4(),
            user: UserId::parse("u").expect("user"),
            session: None,
            model: Arc::from(model),
            started_at_ms: at_ms,
            latency_ms,
            tokens_in: 1,
            tokens_out: 10,
            estimated: false,
            outcome: Outcome::Ok,
        }
    }

    /// An instance that served `records` (and `connections` sockets), as it would publish.
    fn instance(
        records: &[RecordRequest],
        connections: usize,
    ) -> (AggregatorState, InstanceSnapshot) {
        let mut state = AggregatorState::new(100);
        for r in records {
            state.record(NOW, r);
        }
        let snapshot = InstanceSnapshot {
            v: SNAPSHOT_VERSION,
            generated_at_ms: 42,
            metrics: state.parts(NOW, 100),
            sessions: SessionStats {
                active: connections,
                inactive: 1,
                total: connections + 1,
            },
            flusher: FlusherStats {
                written: 10,
                ..FlusherStats::default()
            },
            hub: HubStats {
                connections,
                ..HubStats::default()
            },
        };
        (state, snapshot)
    }

    fn peer(id: &str, seen_ms_ago: u64, snapshot: Option<serde_json::Value>) -> PeerView {
        PeerView {
            instance: id.into(),
            seen_ms_ago,
            snapshot,
        }
    }

    fn as_json(snapshot: &InstanceSnapshot) -> Option<serde_json::Value> {
        Some(serde_json::to_value(snapshot).expect("serialize"))
    }

    #[test]
    fn totals_models_and_percentiles_count_every_instance_once() {
        let mine: Vec<_> = (0..40)
            .map(|i| record("echo", 10 + i * 7, i as i64))
            .collect();
        let theirs: Vec<_> = (0..25)
            .map(|i| {
                record(
                    if i % 2 == 0 { "echo" } else { "gpt" },
                    900 + i * 31,
                    100 + i as i64,
                )
            })
            .collect();
        let (_, own) = instance(&mine, 2);
        let (_, peer_snapshot) = instance(&theirs, 3);
        // What one instance serving every request would report.
        let (all, _) = instance(&[mine.clone(), theirs.clone()].concat(), 0);
        let expected = all.snapshot(NOW, 0);

        let view = ClusterView {
            redis: RedisHealth::Up,
            instances: vec![
                // This instance's own published snapshot is stale: it must be replaced, not added.
                peer("i0", 900, as_json(&own)),
                peer("i1", 700, as_json(&peer_snapshot)),
            ],
        };
        let report = ClusterNumbers::new("i0", own, Some(view)).report(100);
        assert_eq!(report.totals, expected.totals);
        assert_eq!(report.totals.minute.requests, 65);
        assert_eq!(report.models, expected.models);
        assert!(
            report.totals.day.p99_latency_ms > 900.0,
            "the peer's slow requests count"
        );
        assert_eq!(report.hub.connections, 5);
        assert_eq!(report.sessions.total, 2 + 1 + 3 + 1);
        assert_eq!(report.flusher.written, 20);
        assert_eq!(
            report.cluster,
            ClusterSummary {
                redis: RedisHealth::Up,
                instances: 2
            }
        );
        assert_eq!(report.instances["i0"].seen_ms_ago, 0);
        assert_eq!(report.instances["i1"].seen_ms_ago, 700);
        assert_eq!(report.instances["i1"].hub.connections, 3);
        // Newest first across both instances.
        assert_eq!(report.recent.len(), 65);
        assert_eq!(report.recent[0].at_ms, 124);
        assert!(report.recent.windows(2).all(|w| w[0].at_ms >= w[1].at_ms));
    }

    #[test]
    fn without_redis_the_one_instance_is_the_cluster_and_redis_is_off() {
        let (state, own) = instance(&[record("echo", 5, 1)], 1);
        let report = ClusterNumbers::new("solo", own, None).report(10);
        assert_eq!(report.totals, state.snapshot(NOW, 0).totals);
        assert_eq!(report.instances.keys().collect::<Vec<_>>(), ["solo"]);
        assert_eq!(report.instances["solo"].seen_ms_ago, 0);
        assert_eq!(
            report.cluster,
            ClusterSummary {
                redis: RedisHealth::Off,
                instances: 1
            }
        );
    }

    #[test]
    fn peers_without_a_readable_snapshot_are_left_out() {
        let (_, own) = instance(&[record("echo", 5, 1)], 0);
        let (_, other) = instance(&[record("echo", 5, 2)], 0);
        let future = InstanceSnapshot {
            v: SNAPSHOT_VERSION + 1,
            ..other.clone()
        };
        let view = ClusterView {
            redis: RedisHealth::Up,
            instances: vec![
                peer("starting", 100, None),
                peer("garbled", 100, Some(serde_json::json!({"metrics": 3}))),
                peer("newer", 100, as_json(&future)),
                peer("fine", 100, as_json(&other)),
            ],
        };
        let report = ClusterNumbers::new("me", own, Some(view)).report(10);
        assert_eq!(report.instances.keys().collect::<Vec<_>>(), ["fine", "me"]);
        assert_eq!(report.cluster.instances, 2);
        assert_eq!(report.totals.minute.requests, 2);
    }

    #[test]
    fn while_redis_is_down_the_report_says_so_and_counts_this_instance() {
        let (_, own) = instance(&[record("echo", 5, 1)], 0);
        let view = ClusterView {
            redis: RedisHealth::Down,
            instances: vec![],
        };
        let report = ClusterNumbers::new("me", own, Some(view)).report(10);
        assert_eq!(report.cluster.redis, RedisHealth::Down);
        assert_eq!(report.instances.keys().collect::<Vec<_>>(), ["me"]);
        assert_eq!(report.totals.minute.requests, 1);
    }

    #[test]
    fn rejections_add_up_and_a_flusher_error_names_its_instance() {
        let (mut a, _) = instance(&[], 0);
        a.reject(ErrorCode::RateLimited);
        let mut own = instance(&[], 0).1;
        own.metrics = a.parts(NOW, 0);
        let mut other = own.clone();
        other.flusher.last_error = Some("database refused".into());
        other.flusher.dropped = 3;
        let view = ClusterView {
            redis: RedisHealth::Up,
            instances: vec![peer("b", 10, as_json(&other))],
        };
        let numbers = ClusterNumbers::new("a", own, Some(view));
        assert_eq!(numbers.metrics().rejected["rate_limited"], 2);
        let flusher = numbers.flusher();
        assert_eq!(flusher.dropped, 3);
        assert_eq!(flusher.last_error.as_deref(), Some("b: database refused"));
    }

    #[test]
    fn recent_is_cut_to_the_limit_after_merging() {
        let (_, mut own) = instance(&[], 0);
        let line = |at_ms| RecentRequest {
            at_ms,
            user: "u".into(),
            model: Arc::from("echo"),
            latency_ms: 1,
            outcome: Cow::Borrowed("ok"),
            tokens_in: 0,
            tokens_out: 0,
        };
        own.metrics.recent = vec![line(50), line(10)];
        let mut other = own.clone();
        other.metrics.recent = vec![line(40), line(30), line(20)];
        let view = ClusterView {
            redis: RedisHealth::Up,
            instances: vec![peer("b", 10, as_json(&other))],
        };
        let report = ClusterNumbers::new("a", own, Some(view)).report(3);
        let times: Vec<i64> = report.recent.iter().map(|r| r.at_ms).collect();
        assert_eq!(times, [50, 40, 30]);
    }
}
