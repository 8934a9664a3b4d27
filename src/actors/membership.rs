//! Cluster membership: this instance's heartbeat, the list of live instances and their
//! latest metrics snapshots, and the health of the Redis link.
//!
//! Every [`HEARTBEAT`] one pipelined round trip records this instance as alive (a sorted set
//! scored by time), stores its snapshot with an expiry, drops instances not seen for
//! [`DEAD_AFTER`], and reads the others' snapshots. That round trip is also the probe: its
//! failure marks the link down (the link logs one warning per outage), its success after an
//! outage marks it up again (rejoin within a heartbeat), resubscribes the bus and tells the
//! actors that keep shared state to catch up.

use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use crate::actors::cluster_bus::{ClusterBus, Resubscribe};
use crate::cluster::{HealthTransition, RedisHealth, RedisLink};

pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// An instance whose heartbeat is older than this is dead: it leaves the views and its
/// sessions become resumable elsewhere. Five missed heartbeats, well inside the contract's 10 s.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// One instance as the last heartbeat saw it.
#[derive(Clone, Debug, Serialize)]
pub struct PeerView {
    pub instance: String,
    /// Since its last heartbeat, at the time of the [`GetClusterView`] (by this instance's
    /// clock against the one that wrote the heartbeat).
    pub seen_ms_ago: u64,
    /// What that instance last published (see [`SetOwnSnapshot`]); `None` if it expired.
    pub snapshot: Option<serde_json::Value>,
}

/// The cluster as this instance sees it, this instance included.
#[derive(Clone, Debug, Serialize)]
pub struct ClusterView {
    pub redis: RedisHealth,
    pub instances: Vec<PeerView>,
}

#[derive(Message)]
#[rtype(result = "ClusterView")]
pub struct GetClusterView;

/// This instance's snapshot, published with the next heartbeat.
#[derive(Message)]
#[rtype(result = "()")]
pub struct SetOwnSnapshot(pub serde_json::Value);

/// Redis answers again after an outage: shared state kept locally meanwhile may be written
/// back.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct RedisRejoined;

/// Registers an actor to be told [`RedisRejoined`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct NotifyOnRejoin(pub Recipient<RedisRejoined>);

/// An instance as read by the last successful heartbeat.
#[derive(Clone, Debug)]
struct Peer {
    instance: String,
    seen_at_ms: i64,
    snapshot: Option<serde_json::Value>,
}

/// The view at `now_ms`: instances not seen for [`DEAD_AFTER`] are left out even between
/// heartbeats, and while Redis is not up only `me` is shown (the others' entries are stale).
fn view_at(peers: &[Peer], redis: RedisHealth, me: &str, now_ms: i64) -> ClusterView {
    let dead_before = now_ms - DEAD_AFTER.as_millis() as i64;
    let instances = peers
        .iter()
        .filter(|peer| redis == RedisHealth::Up || peer.instance == me)
        .filter(|peer| peer.instance == me || peer.seen_at_ms >= dead_before)
        .map(|peer| PeerView {
            instance: peer.instance.clone(),
            seen_ms_ago: (now_ms - peer.seen_at_ms).max(0) as u64,
            snapshot: peer.snapshot.clone(),
        })
        .collect();
    ClusterView { redis, instances }
}

pub struct Membership {
    link: RedisLink,
    bus: Addr<ClusterBus>,
    own_snapshot: Option<String>,
    peers: Vec<Peer>,
    on_rejoin: Vec<Recipient<RedisRejoined>>,
    beating: bool,
}

impl Membership {
    pub fn new(link: RedisLink, bus: Addr<ClusterBus>) -> Membership {
        Membership {
            link,
            bus,
            own_snapshot: None,
            peers: Vec::new(),
            on_rejoin: Vec::new(),
            beating: false,
        }
    }

    fn beat(&mut self, ctx: &mut Context<Self>) {
        // One heartbeat at a time: a hanging one must not pile up behind itself.
        if self.beating {
            return;
        }
        self.beating = true;
        let link = self.link.clone();
        let keys = link.keys().clone();
        let me = link.instance().to_string();
        let snapshot = self.own_snapshot.clone();
        let faults_before = link.faults();
        let beat = async move {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let dead_before = now_ms - DEAD_AFTER.as_millis() as i64;
            let mut write = redis::pipe();
            write
                .zadd(keys.instances(), &me, now_ms)
                .ignore()
                .zrembyscore(keys.instances(), "-inf", dead_before)
                .ignore();
            if let Some(snapshot) = snapshot {
                write
                    .pset_ex(keys.snapshot(&me), snapshot, DEAD_AFTER.as_millis() as u64)
                    .ignore();
            }
            write.zrange_withscores(keys.instances(), 0, -1);
            let live: Vec<(String, i64)> = link
                .run_even_if_down(|mut conn| async move {
                    let (live,): (Vec<(String, i64)>,) = write.query_async(&mut conn).await?;
                    Ok(live)
                })
                .await?;
            let snapshot_keys: Vec<String> = live.iter().map(|(id, _)| keys.snapshot(id)).collect();
            let snapshots: Vec<Option<String>> = if snapshot_keys.is_empty() {
                Vec::new()
            } else {
                link.run_even_if_down(|mut conn| async move {
                    redis::cmd("MGET")
                        .arg(&snapshot_keys)
                        .query_async(&mut conn)
                        .await
                })
                .await?
            };
            let peers = live
                .into_iter()
                .zip(snapshots.into_iter().chain(std::iter::repeat(None)))
                .map(|((instance, seen_at_ms), snapshot)| Peer {
                    instance,
                    seen_at_ms,
                    snapshot: snapshot.and_then(|json| serde_json::from_str(&json).ok()),
                })
                .collect::<Vec<_>>();
            Ok::<_, crate::cluster::RedisUnavailable>(peers)
        };
        ctx.spawn(beat.into_actor(self).map(move |result, act, _| {
            act.beating = false;
            let error = result.as_ref().err().map(|err| err.0.clone());
            // The link logs the outage's start and end (once, whoever notices first).
            let transition = act
                .link
                .record_probe(result.is_ok(), faults_before, error.as_deref());
            match result {
                Ok(peers) => act.peers = peers,
                Err(ref err) => {
                    log::debug!("event=cluster_heartbeat_failed error={err}");
                }
            }
            if transition == Some(HealthTransition::CameBack) {
                act.bus.do_send(Resubscribe);
                for recipient in &act.on_rejoin {
                    recipient.do_send(RedisRejoined);
                }
            }
        }));
    }
}

impl Actor for Membership {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.beat(ctx);
        ctx.run_interval(HEARTBEAT, |act, ctx| act.beat(ctx));
        log::info!(
            "event=actor_started actor=membership instance={}",
            self.link.instance()
        );
    }
}

impl Handler<GetClusterView> for Membership {
    type Result = MessageResult<GetClusterView>;

    fn handle(&mut self, _: GetClusterView, _: &mut Context<Self>) -> Self::Result {
        MessageResult(view_at(
            &self.peers,
            self.link.health(),
            self.link.instance(),
            chrono::Utc::now().timestamp_millis(),
        ))
    }
}

impl Handler<SetOwnSnapshot> for Membership {
    type Result = ();

    fn handle(&mut self, msg: SetOwnSnapshot, _: &mut Context<Self>) {
        self.own_snapshot = serde_json::to_string(&msg.0).ok();
    }
}

impl Handler<NotifyOnRejoin> for Membership {
    type Result = ();

    fn handle(&mut self, msg: NotifyOnRejoin, _: &mut Context<Self>) {
        self.on_rejoin.push(msg.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(instance: &str, seen_at_ms: i64) -> Peer {
        Peer {
            instance: instance.into(),
            seen_at_ms,
            snapshot: Some(serde_json::json!({ "from": instance })),
        }
    }

    fn names(view: &ClusterView) -> Vec<(&str, u64)> {
        view.instances
            .iter()
            .map(|p| (p.instance.as_str(), p.seen_ms_ago))
            .collect()
    }

    #[test]
    fn seen_ms_ago_is_counted_at_the_query_and_the_dead_leave_between_heartbeats() {
        let peers = [peer("me", 10_000), peer("a", 9_500), peer("b", 6_000)];
        let view = view_at(&peers, RedisHealth::Up, "me", 10_400);
        assert_eq!(names(&view), [("me", 400), ("a", 900), ("b", 4_400)]);
        // 5 s after its heartbeat "b" is dead, even though no heartbeat removed it yet.
        let later = view_at(&peers, RedisHealth::Up, "me", 11_001);
        assert_eq!(names(&later), [("me", 1_001), ("a", 1_501)]);
    }

    #[test]
    fn while_redis_is_down_only_this_instance_is_shown() {
        let peers = [peer("me", 10_000), peer("a", 10_000)];
        let view = view_at(&peers, RedisHealth::Down, "me", 30_000);
        assert_eq!(view.redis, RedisHealth::Down);
        assert_eq!(names(&view), [("me", 20_000)]);
    }
}
