//! The per-user connection cap for the whole cluster. This instance's own count is
//! [`ConnectionsState`](super::ConnectionsState) (the whole cap without cluster mode, and the
//! cap while Redis is down); a [`SlotStore`] adds every other instance's sockets to it.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::future::LocalBoxFuture;
use redis::Script;

use crate::actors::membership::DEAD_AFTER;
use crate::cluster::{RedisLink, RedisUnavailable};
use crate::domain::UserId;

/// The answer to a cluster-wide claim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClusterSlot {
    Claimed,
    /// The user has `open` live sockets on all instances together, the cap.
    Full {
        open: usize,
    },
}

/// This instance's slots of some users, by connection id: what a resync makes the shared
/// store hold for them (an empty list removes all of them).
pub type OwnSlots = Vec<(UserId, Vec<u64>)>;

/// Socket slots shared by the cluster's instances.
pub trait SlotStore: 'static {
    /// Whether the store can be asked now; while not, the local cap decides alone.
    fn is_up(&self) -> bool;

    /// Claims a slot for `conn_id` of `user` unless the user's live slots reach `cap`.
    fn claim(
        &self,
        user: &UserId,
        conn_id: u64,
        cap: u32,
    ) -> LocalBoxFuture<'static, Result<ClusterSlot, RedisUnavailable>>;

    /// Gives the slot back (the socket ended).
    fn release(
        &self,
        user: &UserId,
        conn_id: u64,
    ) -> LocalBoxFuture<'static, Result<(), RedisUnavailable>>;

    /// Makes the store hold exactly `slots` of this instance for those users.
    fn resync(&self, slots: OwnSlots) -> LocalBoxFuture<'static, Result<(), RedisUnavailable>>;
}

static CLAIM_SLOT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("claim_slot.lua")));
static RESYNC_SLOTS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("resync_slots.lua")));

/// How long a user's slot set lives in Redis without a claim or a resync of an instance
/// holding one of its sockets. Instances resync every [`RESYNC_EVERY`], so only sets whose
/// every holder died expire.
pub const SLOT_TTL: Duration = Duration::from_secs(120);
/// How often an instance rewrites its own slots: repairs claims and releases lost to a Redis
/// outage, and renews the sets' expiry.
pub const RESYNC_EVERY: Duration = Duration::from_secs(30);
// The resync is the backstop for lost releases and keeps live sets from expiring: it must
// come several times within a set's lifetime.
const _: () = assert!(RESYNC_EVERY.as_secs() * 3 < SLOT_TTL.as_secs());

/// Users per resync script call, so one call never keeps Redis busy for long.
const RESYNC_BATCH: usize = 256;

/// Slots in Redis: per user a set of `<instance>|<incarnation>|<conn_id>`, counted only while
/// the instance is live in Membership's heartbeat set (see `claim_slot.lua`).
pub struct RedisSlots {
    link: RedisLink,
    /// Random per process: a restarted instance under the same id does not count the sockets
    /// of its previous process.
    incarnation: Arc<str>,
}

impl RedisSlots {
    pub fn new(link: RedisLink) -> RedisSlots {
        RedisSlots {
            link,
            incarnation: Arc::from(format!("{:016x}", rand::random::<u64>())),
        }
    }

    fn user_key(&self, user: &UserId) -> String {
        self.link.keys().key(&format!("conns:{user}"))
    }

    fn incarnations_key(&self) -> String {
        self.link.keys().key("conns:incarnations")
    }

    fn member(&self, conn_id: u64) -> String {
        format!("{}|{}|{conn_id}", self.link.instance(), self.incarnation)
    }
}

impl SlotStore for RedisSlots {
    fn is_up(&self) -> bool {
        self.link.is_up()
    }

    fn claim(
        &self,
        user: &UserId,
        conn_id: u64,
        cap: u32,
    ) -> LocalBoxFuture<'static, Result<ClusterSlot, RedisUnavailable>> {
        let link = self.link.clone();
        let keys = [
            self.user_key(user),
            link.keys().instances(),
            self.incarnations_key(),
        ];
        let instance = link.instance().to_string();
        let incarnation = self.incarnation.clone();
        Box::pin(async move {
            let now_ms = chrono::Utc::now().timestamp_millis();
            let (claimed, open): (i64, i64) = link
                .run(|mut conn| async move {
                    CLAIM_SLOT
                        .key(&keys[..])
                        .arg(cap)
                        .arg(instance)
                        .arg(&*incarnation)
                        .arg(conn_id)
                        .arg(now_ms)
                        .arg(DEAD_AFTER.as_millis() as u64)
                        .arg(SLOT_TTL.as_millis() as u64)
                        .invoke_async(&mut conn)
                        .await
                })
                .await?;
            Ok(if claimed == 1 {
                ClusterSlot::Claimed
            } else {
                ClusterSlot::Full {
                    open: open.max(0) as usize,
                }
            })
        })
    }

    fn release(
        &self,
        user: &UserId,
        conn_id: u64,
    ) -> LocalBoxFuture<'static, Result<(), RedisUnavailable>> {
        let link = self.link.clone();
        let key = self.user_key(user);
        let member = self.member(conn_id);
        Box::pin(async move {
            link.run(|mut conn| async move {
                redis::cmd("SREM")
                    .arg(key)
                    .arg(member)
                    .query_async::<i64>(&mut conn)
                    .await
            })
            .await
            .map(|_| ())
        })
    }

    fn resync(&self, slots: OwnSlots) -> LocalBoxFuture<'static, Result<(), RedisUnavailable>> {
        let link = self.link.clone();
        let calls: Vec<(Vec<String>, Vec<String>)> = slots
            .chunks(RESYNC_BATCH)
            .map(|batch| {
                let mut keys = vec![self.incarnations_key()];
                let mut args = vec![
                    link.instance().to_string(),
                    self.incarnation.to_string(),
                    SLOT_TTL.as_millis().to_string(),
                ];
                for (user, ids) in batch {
                    keys.push(self.user_key(user));
                    args.push(ids.len().to_string());
                    args.extend(ids.iter().map(u64::to_string));
                }
                (keys, args)
            })
            .collect();
        Box::pin(async move {
            for (keys, args) in calls {
                link.run(|mut conn| async move {
                    RESYNC_SLOTS
                        .key(keys)
                        .arg(args)
                        .invoke_async::<i64>(&mut conn)
                        .await
                })
                .await?;
            }
            Ok(())
        })
    }
}
