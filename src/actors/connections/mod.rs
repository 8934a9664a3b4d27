//! The open chat connections: who is connected, so an admin can close a user's sockets and
//! shutdown can close them all, and the per-user connection cap. Closes go out to each
//! connection's mailbox without waiting on any of them.
//!
//! In cluster mode the cap counts the user's sockets on every instance: a slot reserved here
//! (the local cap, [`ConnectionsState`]) is then claimed in a [`SlotStore`] shared through
//! Redis. While Redis cannot be asked the local cap decides alone, and a periodic resync
//! repairs what the shared store missed meanwhile. A disabled user's sockets are closed here
//! when another instance says so over the cluster bus.

mod slots;
mod state;

use std::collections::{HashMap, HashSet};

use actix::prelude::*;

pub use slots::{ClusterSlot, OwnSlots, RedisSlots, SlotStore, RESYNC_EVERY, SLOT_TTL};
pub use state::ConnectionsState;

use crate::actors::cluster_bus::RemoteCommand;
use crate::actors::membership::RedisRejoined;
use crate::actors::socket_watchdog::{CloseTarget, ExpectClose, CLOSE_WITHIN};
use crate::cluster::protocol::{Answer, Command};
use crate::domain::{CancelReason, UserId};

/// Told to a socket actor (chat or feed): close with `code`. With `cancel_replies`, running
/// replies are cancelled first and their final frames sent before the close (bounded by a
/// grace period). Defined here, below the sockets, so the actors that close them need
/// nothing from the transport.
#[derive(Message, Clone, Debug)]
#[rtype(result = "()")]
pub struct CloseConnection {
    pub code: u16,
    pub reason: String,
    pub cancel_replies: Option<CancelReason>,
}

/// Holds a slot for `user` before the upgrade, so the per-user cap is decided once, here,
/// and two concurrent handshakes cannot both take the last slot.
#[derive(Message)]
#[rtype(result = "LocalReservation")]
pub struct ReserveConnection {
    pub user: UserId,
}

/// The local decision, and whether the slot must still be claimed cluster-wide
/// ([`ClaimClusterSlot`]) before the upgrade.
#[derive(Debug, PartialEq, Eq)]
pub struct LocalReservation {
    pub admission: ConnectionAdmission,
    pub claim_cluster: bool,
}

/// Claims the reserved slot `conn_id` of `user` in the cluster: `false` when the user's
/// sockets on all instances already reach the cap (the caller then frees the slot). `true`
/// also when Redis cannot be asked: the local cap has decided.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct ClaimClusterSlot {
    pub conn_id: u64,
    pub user: UserId,
}

#[derive(Debug, PartialEq, Eq)]
pub enum ConnectionAdmission {
    /// The slot is held under `conn_id` until `UnregisterConnection`.
    Reserved { conn_id: u64 },
    /// `user` already has `open` connections (open or being opened), the cap.
    Full { open: usize },
}

/// The socket under a reserved `conn_id` is running; without a reservation it is counted
/// all the same.
#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterConnection {
    pub conn_id: u64,
    pub user: UserId,
    pub connection: Recipient<CloseConnection>,
}

/// The socket ended, or its handshake did not upgrade: its slot is free.
#[derive(Message)]
#[rtype(result = "()")]
pub struct UnregisterConnection {
    pub conn_id: u64,
}

/// Closes every connection of `user` (e.g. the user was disabled); returns how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseUserConnections {
    pub user: UserId,
    pub code: u16,
    pub reason: String,
}

/// Closes every connection at once (shutdown): running replies end with `unavailable`
/// before the close. Returns how many were told.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAllConnections {
    pub code: u16,
    pub reason: String,
}

/// Open sockets (reserved slots of handshakes still in progress not included).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct GetConnectionCount;

/// A slot reserved for a handshake. Dropped before `hand_over` — the upgrade failed, or the
/// handshake was abandoned — it frees the slot; after `hand_over` the socket actor frees it
/// when it stops.
pub struct Reservation {
    conn_id: u64,
    connections: Option<Addr<Connections>>,
}

impl Reservation {
    /// Asks `connections` for a slot of `user`; `None` when the user is at the cap (in
    /// cluster mode, the cap over all instances).
    pub async fn take(
        connections: &Addr<Connections>,
        user: UserId,
    ) -> Result<Option<Reservation>, MailboxError> {
        let reserved = connections
            .send(ReserveConnection { user: user.clone() })
            .await?;
        let ConnectionAdmission::Reserved { conn_id } = reserved.admission else {
            return Ok(None);
        };
        // Held from here on: if this future is dropped while the claim is out, the slot is
        // still freed, here and in the cluster.
        let reservation = Reservation {
            conn_id,
            connections: Some(connections.clone()),
        };
        if reserved.claim_cluster && !connections.send(ClaimClusterSlot { conn_id, user }).await? {
            return Ok(None);
        }
        Ok(Some(reservation))
    }

    pub fn conn_id(&self) -> u64 {
        self.conn_id
    }

    /// The socket actor now owns the slot: it registers under `conn_id` when it starts and
    /// unregisters when it stops.
    pub fn hand_over(mut self) {
        self.connections = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(connections) = self.connections.take() {
            // do_send: a release must not be lost to a full mailbox, or the slot leaks.
            connections.do_send(UnregisterConnection {
                conn_id: self.conn_id,
            });
        }
    }
}

pub struct Connections {
    state: ConnectionsState<Recipient<CloseConnection>>,
    max_per_user: u32,
    /// The cluster's count of sockets per user (cluster mode only).
    shared: Option<Box<dyn SlotStore>>,
    /// Told about sockets closed on another instance's word, so a frozen one is cut.
    watchdog: Option<Recipient<ExpectClose>>,
    /// Slots whose cluster claim is still out, with their user.
    claiming: HashMap<u64, UserId>,
    /// Users whose slots in the shared store may be wrong (a release that did not reach it,
    /// a slot freed while its claim was out): the next resync rewrites them.
    unsynced: HashSet<UserId>,
}

impl Connections {
    /// `max_per_user`: `limits.user_max_connections`; this instance alone.
    pub fn new(max_per_user: u32) -> Connections {
        Connections {
            state: ConnectionsState::new(max_per_user),
            max_per_user,
            shared: None,
            watchdog: None,
            claiming: HashMap::new(),
            unsynced: HashSet::new(),
        }
    }

    /// The cap over every instance, counted in `shared`.
    pub fn with_shared(mut self, shared: Box<dyn SlotStore>) -> Connections {
        self.shared = Some(shared);
        self
    }

    /// Sockets closed on another instance's word are reported to `watchdog`, which cuts
    /// the ones that cannot close themselves.
    pub fn with_watchdog(mut self, watchdog: Recipient<ExpectClose>) -> Connections {
        self.watchdog = Some(watchdog);
        self
    }

    fn close_user(&self, user: &UserId, code: u16, reason: String) -> usize {
        let close = CloseConnection {
            code,
            reason,
            cancel_replies: None,
        };
        // try_send: a connection with a full mailbox is already overwhelmed; its heartbeat
        // (or the watchdog) will close it, and this actor must not wait on it.
        self.state
            .of_user(user)
            .filter(|connection| connection.try_send(close.clone()).is_ok())
            .count()
    }

    /// Gives `conn_id`'s cluster slot back; one that cannot be given back now is left to
    /// the next resync.
    fn release(&mut self, conn_id: u64, user: UserId, ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.as_ref() else {
            return;
        };
        if !shared.is_up() {
            self.unsynced.insert(user);
            return;
        }
        ctx.spawn(
            shared
                .release(&user, conn_id)
                .into_actor(self)
                .map(move |released, act, _| {
                    if released.is_err() {
                        act.unsynced.insert(user);
                    }
                }),
        );
    }

    /// Rewrites this instance's slots in the shared store for every user it holds a socket
    /// of, and for the users marked unsynced.
    fn resync(&mut self, ctx: &mut Context<Self>) {
        let Some(shared) = self.shared.as_ref().filter(|shared| shared.is_up()) else {
            return;
        };
        let mut users: HashSet<UserId> = std::mem::take(&mut self.unsynced);
        users.extend(self.state.users().cloned());
        if users.is_empty() {
            return;
        }
        let slots: OwnSlots = users
            .into_iter()
            .map(|user| {
                let ids = self.state.ids_of(&user);
                (user, ids)
            })
            .collect();
        let retry: Vec<UserId> = slots.iter().map(|(user, _)| user.clone()).collect();
        ctx.spawn(
            shared
                .resync(slots)
                .into_actor(self)
                .map(move |done, act, _| {
                    if let Err(err) = done {
                        log::debug!("event=connection_slots_resync_failed error={err}");
                        act.unsynced.extend(retry);
                    }
                }),
        );
    }
}

impl Actor for Connections {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        if self.shared.is_some() {
            ctx.run_interval(RESYNC_EVERY, |act, ctx| act.resync(ctx));
        }
        log::info!("event=actor_started actor=connections");
    }
}

impl Handler<ReserveConnection> for Connections {
    type Result = MessageResult<ReserveConnection>;

    fn handle(&mut self, msg: ReserveConnection, _: &mut Context<Self>) -> Self::Result {
        let admission = self.state.reserve(&msg.user);
        let claim_cluster =
            self.shared.is_some() && matches!(admission, ConnectionAdmission::Reserved { .. });
        MessageResult(LocalReservation {
            admission,
            claim_cluster,
        })
    }
}

impl Handler<ClaimClusterSlot> for Connections {
    type Result = ActorResponse<Self, bool>;

    fn handle(&mut self, msg: ClaimClusterSlot, _: &mut Context<Self>) -> Self::Result {
        let Some(shared) = self.shared.as_ref().filter(|shared| shared.is_up()) else {
            return ActorResponse::reply(true);
        };
        if !self.state.holds(msg.conn_id) {
            // Freed before its claim: nothing to claim.
            return ActorResponse::reply(false);
        }
        let claim = shared.claim(&msg.user, msg.conn_id, self.max_per_user);
        self.claiming.insert(msg.conn_id, msg.user.clone());
        // Spawned, not awaited in the mailbox: other handshakes, registrations and closes go
        // on while this claim is with Redis.
        ActorResponse::r#async(claim.into_actor(self).map(move |claimed, act, ctx| {
            act.claiming.remove(&msg.conn_id);
            match claimed {
                Ok(ClusterSlot::Claimed) => {
                    if !act.state.holds(msg.conn_id) {
                        // Freed while the claim was out (the handshake went away): give
                        // the cluster slot back now rather than at the next resync.
                        act.release(msg.conn_id, msg.user, ctx);
                    }
                    true
                }
                Ok(ClusterSlot::Full { open }) => {
                    log::debug!(
                        "event=connection_cap_cluster conn_id={} open={open}",
                        msg.conn_id
                    );
                    // Freed here so the reservation's release has nothing to send.
                    act.state.unregister(msg.conn_id);
                    false
                }
                Err(err) => {
                    // It may have been claimed all the same (a lost answer): the next resync
                    // settles it, as it rewrites every user with a slot here, and those
                    // marked unsynced.
                    log::debug!(
                        "event=connection_claim_fallback conn_id={} error={err}",
                        msg.conn_id
                    );
                    if !act.state.holds(msg.conn_id) {
                        act.unsynced.insert(msg.user);
                    }
                    true
                }
            }
        }))
    }
}

impl Handler<RegisterConnection> for Connections {
    type Result = ();

    fn handle(&mut self, msg: RegisterConnection, _: &mut Context<Self>) {
        self.state.register(msg.conn_id, msg.user, msg.connection);
    }
}

impl Handler<UnregisterConnection> for Connections {
    type Result = ();

    fn handle(&mut self, msg: UnregisterConnection, ctx: &mut Context<Self>) {
        let Some(user) = self.state.unregister(msg.conn_id) else {
            return;
        };
        if self.shared.is_none() {
            return;
        }
        if self.claiming.contains_key(&msg.conn_id) {
            // The claim is still out; its answer releases the slot (see ClaimClusterSlot).
            return;
        }
        self.release(msg.conn_id, user, ctx);
    }
}

impl Handler<CloseUserConnections> for Connections {
    type Result = usize;

    fn handle(&mut self, msg: CloseUserConnections, _: &mut Context<Self>) -> usize {
        self.close_user(&msg.user, msg.code, msg.reason)
    }
}

/// Commands from other instances: `CloseUserSockets` (a user was disabled there).
impl Handler<RemoteCommand> for Connections {
    type Result = MessageResult<RemoteCommand>;

    fn handle(&mut self, msg: RemoteCommand, _: &mut Context<Self>) -> Self::Result {
        let Command::CloseUserSockets { user_id } = msg.0 else {
            return MessageResult(Answer::NotFound);
        };
        let Ok(user) = UserId::parse(&user_id) else {
            return MessageResult(Answer::NotFound);
        };
        let closed = self.close_user(&user, 1008, "user disabled".into());
        log::info!("event=user_sockets_closed_remote user={user} sockets={closed}");
        if let Some(watchdog) = &self.watchdog {
            watchdog.do_send(ExpectClose {
                target: CloseTarget::User(user),
                within: CLOSE_WITHIN,
            });
        }
        MessageResult(if closed > 0 {
            Answer::Done
        } else {
            Answer::NotFound
        })
    }
}

/// Redis answers again: claims and releases made meanwhile did not reach it.
impl Handler<RedisRejoined> for Connections {
    type Result = ();

    fn handle(&mut self, _: RedisRejoined, ctx: &mut Context<Self>) {
        self.resync(ctx);
    }
}

impl Handler<CloseAllConnections> for Connections {
    type Result = usize;

    fn handle(&mut self, msg: CloseAllConnections, _: &mut Context<Self>) -> usize {
        // do_send: a shutdown close must reach even a connection whose mailbox is full. No
        // connection is awaited, so one slow client cannot hold up the others.
        for connection in self.state.all() {
            connection.do_send(CloseConnection {
                code: msg.code,
                reason: msg.reason.clone(),
                cancel_replies: Some(CancelReason::Shutdown),
            });
        }
        self.state.count()
    }
}

impl Handler<GetConnectionCount> for Connections {
    type Result = usize;

    fn handle(&mut self, _: GetConnectionCount, _: &mut Context<Self>) -> usize {
        self.state.count()
    }
}

#[cfg(test)]
mod tests;
