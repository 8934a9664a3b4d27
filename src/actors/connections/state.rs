//! This instance's open connections and the per-user cap counted over them.

use std::collections::HashMap;

use super::ConnectionAdmission;
use crate::domain::UserId;

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

    /// Frees the slot; returns its user, or `None` for an id not held (already freed).
    pub fn unregister(&mut self, conn_id: u64) -> Option<UserId> {
        let slot = self.open.remove(&conn_id)?;
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
        Some(slot.user)
    }

    /// Whether `conn_id` holds a slot (reserved or running).
    pub fn holds(&self, conn_id: u64) -> bool {
        self.open.contains_key(&conn_id)
    }

    /// The slot ids (reserved or running) of `user`.
    pub fn ids_of(&self, user: &UserId) -> Vec<u64> {
        self.by_user.get(user).cloned().unwrap_or_default()
    }

    /// Every user with a slot here.
    pub fn users(&self) -> impl Iterator<Item = &UserId> {
        self.by_user.keys()
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
