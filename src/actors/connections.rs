//! The open chat connections: who is connected, so an admin can close a user's sockets and
//! shutdown can close them all. Closes go out to each connection's mailbox without waiting
//! on any of them.

use std::collections::HashMap;

use actix::prelude::*;

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
#[rtype(result = "ConnectionAdmission")]
pub struct ReserveConnection {
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
    /// Asks `connections` for a slot of `user`; `None` when the user is at the cap.
    pub async fn take(
        connections: &Addr<Connections>,
        user: UserId,
    ) -> Result<Option<Reservation>, MailboxError> {
        Ok(match connections.send(ReserveConnection { user }).await? {
            ConnectionAdmission::Reserved { conn_id } => Some(Reservation {
                conn_id,
                connections: Some(connections.clone()),
            }),
            ConnectionAdmission::Full { .. } => None,
        })
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

struct Slot<C> {
    user: UserId,
    /// `None` while the handshake that reserved the slot has not started its socket.
    connection: Option<C>,
}

/// The connections by id, each with its user and the handle that closes it (`C`, a
/// `Recipient<CloseConnection>` in the actor; anything in tests), and the per-user cap.
pub struct ConnectionsState<C> {
    max_per_user: usize,
    open: HashMap<u64, Slot<C>>,
    by_user: HashMap<UserId, Vec<u64>>,
    registered: usize,
    next_id: u64,
}

impl<C> ConnectionsState<C> {
    pub fn new(max_per_user: u32) -> Self {
        ConnectionsState {
            max_per_user: max_per_user as usize,
            open: HashMap::new(),
            by_user: HashMap::new(),
            registered: 0,
            // Random, so ids in logs of different runs or instances do not line up.
            next_id: rand::random(),
        }
    }

    /// The cap decision: a slot for `user` unless their open and opening connections already
    /// reach the cap.
    pub fn reserve(&mut self, user: &UserId) -> ConnectionAdmission {
        let open = self.open_of(user);
        if open >= self.max_per_user {
            return ConnectionAdmission::Full { open };
        }
        let conn_id = self.fresh_id();
        self.insert(conn_id, user.clone());
        ConnectionAdmission::Reserved { conn_id }
    }

    pub fn register(&mut self, conn_id: u64, user: UserId, connection: C) {
        if !self.open.contains_key(&conn_id) {
            self.insert(conn_id, user);
        }
        if let Some(slot) = self.open.get_mut(&conn_id) {
            if slot.connection.replace(connection).is_none() {
                self.registered += 1;
            }
        }
    }

    pub fn unregister(&mut self, conn_id: u64) {
        let Some(slot) = self.open.remove(&conn_id) else {
            return;
        };
        if slot.connection.is_some() {
            self.registered -= 1;
        }
        if let Some(ids) = self.by_user.get_mut(&slot.user) {
            ids.retain(|id| *id != conn_id);
            if ids.is_empty() {
                self.by_user.remove(&slot.user);
            }
        }
        // After a crowd leaves, the map's peak capacity is memory nobody uses; halving
        // whenever it is under a quarter full keeps this amortised O(1).
        if self.open.capacity() > 1024 && self.open.len() < self.open.capacity() / 4 {
            self.open.shrink_to(self.open.capacity() / 2);
        }
    }

    /// Connections of `user`, open or being opened.
    pub fn open_of(&self, user: &UserId) -> usize {
        self.by_user.get(user).map_or(0, Vec::len)
    }

    pub fn of_user<'a>(&'a self, user: &UserId) -> impl Iterator<Item = &'a C> + 'a {
        self.by_user
            .get(user)
            .into_iter()
            .flatten()
            .filter_map(|id| self.open.get(id))
            .filter_map(|slot| slot.connection.as_ref())
    }

    pub fn all(&self) -> impl Iterator<Item = &C> {
        self.open
            .values()
            .filter_map(|slot| slot.connection.as_ref())
    }

    /// Running sockets.
    pub fn count(&self) -> usize {
        self.registered
    }

    pub fn capacity(&self) -> usize {
        self.open.capacity()
    }

    fn fresh_id(&mut self) -> u64 {
        loop {
            let id = self.next_id;
            self.next_id = self.next_id.wrapping_add(1);
            if !self.open.contains_key(&id) {
                return id;
            }
        }
    }

    fn insert(&mut self, conn_id: u64, user: UserId) {
        self.by_user.entry(user.clone()).or_default().push(conn_id);
        self.open.insert(
            conn_id,
            Slot {
                user,
                connection: None,
            },
        );
    }
}

pub struct Connections {
    state: ConnectionsState<Recipient<CloseConnection>>,
}

impl Connections {
    /// `max_per_user`: `limits.user_max_connections`.
    pub fn new(max_per_user: u32) -> Connections {
        Connections {
            state: ConnectionsState::new(max_per_user),
        }
    }
}

impl Actor for Connections {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        log::info!("event=actor_started actor=connections");
    }
}

impl Handler<ReserveConnection> for Connections {
    type Result = MessageResult<ReserveConnection>;

    fn handle(&mut self, msg: ReserveConnection, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.reserve(&msg.user))
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

    fn handle(&mut self, msg: UnregisterConnection, _: &mut Context<Self>) {
        self.state.unregister(msg.conn_id);
    }
}

impl Handler<CloseUserConnections> for Connections {
    type Result = usize;

    fn handle(&mut self, msg: CloseUserConnections, _: &mut Context<Self>) -> usize {
        let close = CloseConnection {
            code: msg.code,
            reason: msg.reason,
            cancel_replies: None,
        };
        // try_send: a connection with a full mailbox is already overwhelmed; its heartbeat
        // will close it, and this actor must not wait on it.
        self.state
            .of_user(&msg.user)
            .filter(|connection| connection.try_send(close.clone()).is_ok())
            .count()
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
mod tests {
    use super::*;

    fn user(name: &str) -> UserId {
        UserId::parse(name).expect("valid user id")
    }

    #[test]
    fn closes_reach_only_the_named_users_connections() {
        let mut state = ConnectionsState::new(16);
        state.register(1, user("alice"), "a1");
        state.register(2, user("bob"), "b1");
        state.register(3, user("alice"), "a2");
        let alice_id = user("alice");
        let mut alice: Vec<_> = state.of_user(&alice_id).copied().collect();
        alice.sort();
        assert_eq!(alice, vec!["a1", "a2"]);
        assert_eq!(state.all().count(), 3);
        assert_eq!(state.count(), 3);
        state.unregister(1);
        assert_eq!(
            state.of_user(&user("alice")).copied().collect::<Vec<_>>(),
            vec!["a2"]
        );
        assert_eq!(state.count(), 2);
        state.unregister(99);
        assert_eq!(state.count(), 2, "unknown ids are ignored");
    }

    #[test]
    fn memory_is_returned_after_a_crowd_leaves() {
        let mut state = ConnectionsState::new(16);
        for id in 0..10_000 {
            state.register(id, user("crowd"), ());
        }
        let peak = state.capacity();
        for id in 0..10_000 {
            state.unregister(id);
        }
        assert_eq!(state.count(), 0);
        assert!(
            state.capacity() < peak / 4,
            "capacity {} of peak {peak}",
            state.capacity()
        );
    }

    fn reserved_id(admission: ConnectionAdmission) -> u64 {
        match admission {
            ConnectionAdmission::Reserved { conn_id } => conn_id,
            other => panic!("expected a reservation, got {other:?}"),
        }
    }

    #[test]
    fn cap_counts_open_and_opening_connections_per_user() {
        let mut state = ConnectionsState::new(2);
        let a1 = reserved_id(state.reserve(&user("alice")));
        let a2 = reserved_id(state.reserve(&user("alice")));
        assert_ne!(a1, a2);
        assert_eq!(
            state.reserve(&user("alice")),
            ConnectionAdmission::Full { open: 2 },
            "two handshakes in progress already hold the slots"
        );
        reserved_id(state.reserve(&user("bob")));
        assert_eq!(state.count(), 0, "reservations are not running sockets");

        state.register(a1, user("alice"), "a1");
        assert_eq!(state.count(), 1);
        assert_eq!(state.of_user(&user("alice")).count(), 1);
        // A handshake that did not upgrade gives its slot back.
        state.unregister(a2);
        let a3 = reserved_id(state.reserve(&user("alice")));
        state.register(a3, user("alice"), "a3");
        assert_eq!(state.open_of(&user("alice")), 2);
        state.unregister(a1);
        state.unregister(a1);
        assert_eq!(
            state.open_of(&user("alice")),
            1,
            "a repeated release frees one slot"
        );
        assert_eq!(state.count(), 1);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Reserve(u8),
        Register(usize),
        Unregister(usize),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            (0u8..3).prop_map(Op::Reserve),
            any::<usize>().prop_map(Op::Register),
            any::<usize>().prop_map(Op::Unregister),
        ]
    }

    proptest::proptest! {
        /// Against a plain model (id -> (user, registered)): the cap is never passed, and
        /// counts and per-user views agree with the model after any sequence.
        #[test]
        fn matches_a_simple_model(ops in proptest::collection::vec(op(), 0..200)) {
            const CAP: usize = 3;
            let mut state = ConnectionsState::new(CAP as u32);
            let mut model: HashMap<u64, (UserId, bool)> = HashMap::new();
            let mut ids: Vec<u64> = Vec::new();
            for op in ops {
                match op {
                    Op::Reserve(u) => {
                        let who = user(&format!("u{u}"));
                        let open = model.values().filter(|(o, _)| *o == who).count();
                        match state.reserve(&who) {
                            ConnectionAdmission::Reserved { conn_id } => {
                                proptest::prop_assert!(open < CAP);
                                proptest::prop_assert!(model.insert(conn_id, (who, false)).is_none());
                                ids.push(conn_id);
                            }
                            ConnectionAdmission::Full { open: said } => {
                                proptest::prop_assert_eq!(open, CAP);
                                proptest::prop_assert_eq!(said, CAP);
                            }
                        }
                    }
                    Op::Register(i) if !ids.is_empty() => {
                        let id = ids[i % ids.len()];
                        if let Some((who, registered)) = model.get_mut(&id) {
                            state.register(id, who.clone(), id);
                            *registered = true;
                        }
                    }
                    Op::Unregister(i) if !ids.is_empty() => {
                        let id = ids[i % ids.len()];
                        state.unregister(id);
                        model.remove(&id);
                    }
                    _ => {}
                }
                proptest::prop_assert_eq!(state.count(), model.values().filter(|(_, r)| *r).count());
                for u in 0..3u8 {
                    let who = user(&format!("u{u}"));
                    let mut expected: Vec<u64> = model
                        .iter()
                        .filter(|(_, (o, r))| *o == who && *r)
                        .map(|(id, _)| *id)
                        .collect();
                    expected.sort();
                    let mut got: Vec<u64> = state.of_user(&who).copied().collect();
                    got.sort();
                    proptest::prop_assert_eq!(got, expected);
                    proptest::prop_assert_eq!(
                        state.open_of(&who),
                        model.values().filter(|(o, _)| *o == who).count()
                    );
                }
            }
        }
    }
}
