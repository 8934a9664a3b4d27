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

#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterConnection {
    pub conn_id: u64,
    pub user: UserId,
    pub connection: Recipient<CloseConnection>,
}

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

#[derive(Message)]
#[rtype(result = "usize")]
pub struct GetConnectionCount;

/// The connections by id, each with its user and the handle that closes it (`C`, a
/// `Recipient<CloseConnection>` in the actor; anything in tests).
pub struct ConnectionsState<C> {
    open: HashMap<u64, (UserId, C)>,
}

impl<C> Default for ConnectionsState<C> {
    fn default() -> Self {
        ConnectionsState {
            open: HashMap::new(),
        }
    }
}

impl<C> ConnectionsState<C> {
    pub fn register(&mut self, conn_id: u64, user: UserId, connection: C) {
        self.open.insert(conn_id, (user, connection));
    }

    pub fn unregister(&mut self, conn_id: u64) {
        self.open.remove(&conn_id);
        // After a crowd leaves, the map's peak capacity is memory nobody uses; halving
        // whenever it is under a quarter full keeps this amortised O(1).
        if self.open.capacity() > 1024 && self.open.len() < self.open.capacity() / 4 {
            self.open.shrink_to(self.open.capacity() / 2);
        }
    }

    pub fn of_user<'a>(&'a self, user: &'a UserId) -> impl Iterator<Item = &'a C> + 'a {
        self.open
            .values()
            .filter(move |(owner, _)| owner == user)
            .map(|(_, connection)| connection)
    }

    pub fn all(&self) -> impl Iterator<Item = &C> {
        self.open.values().map(|(_, connection)| connection)
    }

    pub fn count(&self) -> usize {
        self.open.len()
    }

    pub fn capacity(&self) -> usize {
        self.open.capacity()
    }
}

#[derive(Default)]
pub struct Connections {
    state: ConnectionsState<Recipient<CloseConnection>>,
}

impl Actor for Connections {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        log::info!("event=actor_started actor=connections");
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
        let mut state = ConnectionsState::default();
        state.register(1, user("alice"), "a1");
        state.register(2, user("bob"), "b1");
        state.register(3, user("alice"), "a2");
        let mut alice: Vec<_> = state.of_user(&user("alice")).copied().collect();
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
        let mut state = ConnectionsState::default();
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
}
