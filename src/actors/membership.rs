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

pub struct Membership {
    link: RedisLink,
    bus: Addr<ClusterBus>,
    own_snapshot: Option<String>,
    peers: Vec<PeerView>,
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
                .map(|((instance, seen_ms), snapshot)| PeerView {
                    instance,
                    seen_ms_ago: (now_ms - seen_ms).max(0) as u64,
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
        let redis = self.link.health();
        let instances = if redis == RedisHealth::Up {
            self.peers.clone()
        } else {
            // While Redis is down the others' snapshots are stale; show this instance alone.
            self.peers
                .iter()
                .filter(|peer| *peer.instance == **self.link.instance())
                .cloned()
                .collect()
        };
        MessageResult(ClusterView { redis, instances })
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
