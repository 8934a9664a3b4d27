//! The actor with a stand-in shared store (claims, releases, fallbacks, resync, remote
//! closes), and the Redis store against a real Redis (`#[ignore]`d; fails without
//! `TEST_REDIS_URL`). The local state's own tests are in `state.rs`.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::LocalBoxFuture;

use super::*;
use crate::cluster::{RedisLink, RedisUnavailable};

fn user(name: &str) -> UserId {
    UserId::parse(name).expect("valid user id")
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Call {
    Claim(UserId, u64),
    Release(UserId, u64),
    Resync(Vec<(UserId, Vec<u64>)>),
}

/// What the stand-in store answers, and what it was asked.
#[derive(Default)]
struct Script {
    down: bool,
    full: bool,
    failing: bool,
    calls: Vec<Call>,
}

#[derive(Clone, Default)]
struct FakeSlots(Rc<RefCell<Script>>);

impl FakeSlots {
    fn set(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.0.borrow_mut());
    }
    fn calls(&self) -> Vec<Call> {
        self.0.borrow().calls.clone()
    }
    fn answer<T: 'static>(&self, ok: T) -> LocalBoxFuture<'static, Result<T, RedisUnavailable>> {
        let failing = self.0.borrow().failing;
        Box::pin(async move {
            if failing {
                Err(RedisUnavailable("cut".into()))
            } else {
                Ok(ok)
            }
        })
    }
}

impl SlotStore for FakeSlots {
    fn is_up(&self) -> bool {
        !self.0.borrow().down
    }
    fn claim(
        &self,
        user: &UserId,
        conn_id: u64,
        _cap: u32,
    ) -> LocalBoxFuture<'static, Result<ClusterSlot, RedisUnavailable>> {
        self.0
            .borrow_mut()
            .calls
            .push(Call::Claim(user.clone(), conn_id));
        let full = self.0.borrow().full;
        self.answer(if full {
            ClusterSlot::Full { open: 9 }
        } else {
            ClusterSlot::Claimed
        })
    }
    fn release(
        &self,
        user: &UserId,
        conn_id: u64,
    ) -> LocalBoxFuture<'static, Result<(), RedisUnavailable>> {
        self.0
            .borrow_mut()
            .calls
            .push(Call::Release(user.clone(), conn_id));
        self.answer(())
    }
    fn resync(&self, mut slots: OwnSlots) -> LocalBoxFuture<'static, Result<(), RedisUnavailable>> {
        slots.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
        for (_, ids) in &mut slots {
            ids.sort();
        }
        self.0.borrow_mut().calls.push(Call::Resync(slots));
        self.answer(())
    }
}

fn start(cap: u32, slots: &FakeSlots) -> Addr<Connections> {
    Connections::new(cap)
        .with_shared(Box::new(slots.clone()))
        .start()
}

/// Lets the actor run the futures it spawned.
async fn settle(connections: &Addr<Connections>) {
    for _ in 0..5 {
        connections.send(GetConnectionCount).await.expect("mailbox");
    }
}

#[actix::test]
async fn a_slot_is_claimed_in_the_cluster_and_a_full_cluster_refuses() {
    let slots = FakeSlots::default();
    let connections = start(16, &slots);
    let first = Reservation::take(&connections, user("alice"))
        .await
        .expect("mailbox")
        .expect("claimed");
    let first_id = first.conn_id();
    assert_eq!(slots.calls(), vec![Call::Claim(user("alice"), first_id)]);

    slots.set(|s| s.full = true);
    assert!(Reservation::take(&connections, user("alice"))
        .await
        .expect("mailbox")
        .is_none());
    settle(&connections).await;
    let calls = slots.calls();
    assert_eq!(
        calls.len(),
        2,
        "a refused claim leaves nothing to release: {calls:?}"
    );

    drop(first);
    settle(&connections).await;
    assert_eq!(
        slots.calls().last(),
        Some(&Call::Release(user("alice"), first_id)),
        "a freed slot is given back to the cluster"
    );
}

#[actix::test]
async fn the_local_cap_decides_while_the_cluster_cannot() {
    for (down, failing) in [(true, false), (false, true)] {
        let slots = FakeSlots::default();
        slots.set(|s| {
            s.down = down;
            s.failing = failing;
        });
        let connections = start(2, &slots);
        let a = Reservation::take(&connections, user("bob"))
            .await
            .expect("mailbox");
        let b = Reservation::take(&connections, user("bob"))
            .await
            .expect("mailbox");
        assert!(a.is_some() && b.is_some(), "down={down} failing={failing}");
        assert!(
            Reservation::take(&connections, user("bob"))
                .await
                .expect("mailbox")
                .is_none(),
            "the local cap still holds"
        );
        let claims = slots
            .calls()
            .iter()
            .filter(|c| matches!(c, Call::Claim(..)))
            .count();
        assert_eq!(
            claims,
            if down { 0 } else { 2 },
            "a down store is not asked"
        );
    }
}

#[actix::test]
async fn slots_missed_while_down_are_rewritten_when_redis_rejoins() {
    let slots = FakeSlots::default();
    slots.set(|s| s.down = true);
    let connections = start(16, &slots);
    let kept = Reservation::take(&connections, user("carol"))
        .await
        .expect("mailbox")
        .expect("local slot");
    let gone = Reservation::take(&connections, user("dave"))
        .await
        .expect("mailbox")
        .expect("local slot");
    drop(gone);
    settle(&connections).await;
    assert_eq!(slots.calls(), vec![], "nothing is sent while down");

    slots.set(|s| s.down = false);
    connections.send(RedisRejoined).await.expect("mailbox");
    settle(&connections).await;
    assert_eq!(
        slots.calls(),
        vec![Call::Resync(vec![
            (user("carol"), vec![kept.conn_id()]),
            (user("dave"), vec![]),
        ])],
        "the held slot is added and the missed release removed"
    );
    // Rewritten once: the next resync covers only the users still held here.
    connections.send(RedisRejoined).await.expect("mailbox");
    settle(&connections).await;
    assert_eq!(
        slots.calls().last(),
        Some(&Call::Resync(vec![(user("carol"), vec![kept.conn_id()])]))
    );
}

/// Records the closes it is told.
struct Socket(Rc<RefCell<Vec<u16>>>);

impl Actor for Socket {
    type Context = Context<Self>;
}

impl Handler<CloseConnection> for Socket {
    type Result = ();

    fn handle(&mut self, msg: CloseConnection, _: &mut Context<Self>) {
        self.0.borrow_mut().push(msg.code);
    }
}

#[actix::test]
async fn another_instances_word_closes_the_users_sockets_with_1008() {
    let connections = Connections::new(16).start();
    let closes = Rc::new(RefCell::new(Vec::new()));
    let others = Rc::new(RefCell::new(Vec::new()));
    for (id, name, log) in [
        (1, "erin", &closes),
        (2, "erin", &closes),
        (3, "frank", &others),
    ] {
        connections
            .send(RegisterConnection {
                conn_id: id,
                user: user(name),
                connection: Socket(log.clone()).start().recipient(),
            })
            .await
            .expect("mailbox");
    }
    let answer = connections
        .send(RemoteCommand(Command::CloseUserSockets {
            user_id: "erin".into(),
        }))
        .await
        .expect("mailbox");
    assert_eq!(answer, Answer::Done);
    eventually(|| closes.borrow().len() == 2).await;
    assert_eq!(*closes.borrow(), vec![1008, 1008]);
    assert!(others.borrow().is_empty(), "only the named user's sockets");
    let unknown = connections
        .send(RemoteCommand(Command::CloseUserSockets {
            user_id: "nobody".into(),
        }))
        .await
        .expect("mailbox");
    assert_eq!(unknown, Answer::NotFound);
}

async fn eventually(mut done: impl FnMut() -> bool) {
    let deadline = actix::clock::Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(actix::clock::Instant::now() < deadline, "not within 5 s");
        tokio::task::yield_now().await;
    }
}

// ---- RedisSlots against a real Redis ---------------------------------------------------

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .expect("this test needs Redis: set TEST_REDIS_URL (e.g. redis://127.0.0.1:6379)")
}

struct Space {
    prefix: String,
    conn: redis::Connection,
}

impl Space {
    fn new() -> Space {
        let client = redis::Client::open(redis_url()).expect("redis url");
        Space {
            prefix: format!("cgtest:slots:{}:", uuid::Uuid::new_v4().simple()),
            conn: client.get_connection().expect("redis"),
        }
    }

    fn instance(&mut self, id: &str) -> RedisSlots {
        self.heartbeat(id, 0);
        RedisSlots::new(RedisLink::connect(&redis_url(), id, Some(&self.prefix)).expect("link"))
    }

    /// Records `id`'s heartbeat `ago_ms` ago, as Membership does.
    fn heartbeat(&mut self, id: &str, ago_ms: i64) {
        let at = chrono::Utc::now().timestamp_millis() - ago_ms;
        let _: i64 = redis::cmd("ZADD")
            .arg(format!("{}instances", self.prefix))
            .arg(at)
            .arg(id)
            .query(&mut self.conn)
            .expect("zadd");
    }

    fn members(&mut self, user: &str) -> Vec<String> {
        let mut members: Vec<String> = redis::cmd("SMEMBERS")
            .arg(format!("{}conns:{user}", self.prefix))
            .query(&mut self.conn)
            .expect("smembers");
        members.sort();
        members
    }
}

impl Drop for Space {
    fn drop(&mut self) {
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", self.prefix))
            .query(&mut self.conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut self.conn);
        }
    }
}

async fn claim(slots: &RedisSlots, who: &str, conn_id: u64, cap: u32) -> ClusterSlot {
    slots
        .claim(&user(who), conn_id, cap)
        .await
        .expect("redis answers")
}

#[actix::test]
#[ignore = "needs TEST_REDIS_URL"]
async fn redis_slots_count_every_live_instance() {
    let mut space = Space::new();
    let i0 = space.instance("i0");
    let i1 = space.instance("i1");
    assert_eq!(claim(&i0, "u", 1, 3).await, ClusterSlot::Claimed);
    assert_eq!(claim(&i1, "u", 1, 3).await, ClusterSlot::Claimed);
    assert_eq!(claim(&i1, "u", 2, 3).await, ClusterSlot::Claimed);
    assert_eq!(claim(&i0, "u", 2, 3).await, ClusterSlot::Full { open: 3 });
    assert_eq!(claim(&i0, "other", 2, 3).await, ClusterSlot::Claimed);

    i1.release(&user("u"), 2).await.expect("release");
    assert_eq!(claim(&i0, "u", 3, 3).await, ClusterSlot::Claimed);
    assert_eq!(space.members("u").len(), 3);
    let ttl_ms: i64 = redis::cmd("PTTL")
        .arg(format!("{}conns:u", space.prefix))
        .query(&mut space.conn)
        .expect("pttl");
    assert!(
        ttl_ms > 0 && ttl_ms <= SLOT_TTL.as_millis() as i64,
        "{ttl_ms}"
    );
}

#[actix::test]
#[ignore = "needs TEST_REDIS_URL"]
async fn redis_slots_of_a_dead_or_restarted_instance_stop_counting() {
    let mut space = Space::new();
    let i0 = space.instance("i0");
    let i1 = space.instance("i1");
    assert_eq!(claim(&i1, "u", 1, 2).await, ClusterSlot::Claimed);
    assert_eq!(claim(&i1, "u", 2, 2).await, ClusterSlot::Claimed);
    assert_eq!(claim(&i0, "u", 1, 2).await, ClusterSlot::Full { open: 2 });

    // i1's last heartbeat is now older than DEAD_AFTER.
    space.heartbeat("i1", DEAD_AFTER_MS + 1_000);
    assert_eq!(claim(&i0, "u", 1, 2).await, ClusterSlot::Claimed);
    assert_eq!(
        space
            .members("u")
            .iter()
            .filter(|m| m.starts_with("i1|"))
            .count(),
        0,
        "a dead instance's slots are removed as they are met"
    );

    // i0 restarts under the same id: its earlier process's slot no longer counts.
    let i0_again = space.instance("i0");
    assert_eq!(claim(&i0_again, "u", 7, 1).await, ClusterSlot::Claimed);
    assert_eq!(space.members("u").len(), 1);
}

const DEAD_AFTER_MS: i64 = crate::actors::membership::DEAD_AFTER.as_millis() as i64;

#[actix::test]
#[ignore = "needs TEST_REDIS_URL"]
async fn redis_resync_rewrites_only_this_instances_slots() {
    let mut space = Space::new();
    let i0 = space.instance("i0");
    let i1 = space.instance("i1");
    assert_eq!(claim(&i0, "u", 1, 16).await, ClusterSlot::Claimed);
    assert_eq!(claim(&i0, "u", 2, 16).await, ClusterSlot::Claimed);
    assert_eq!(claim(&i1, "u", 9, 16).await, ClusterSlot::Claimed);

    // Here: conn 2 is gone (its release was lost), conn 5 was opened while Redis was down.
    i0.resync(vec![(user("u"), vec![1, 5]), (user("v"), vec![3])])
        .await
        .expect("resync");
    let mine: Vec<String> = space
        .members("u")
        .into_iter()
        .filter(|m| m.starts_with("i0|"))
        .map(|m| m.rsplit('|').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(mine, vec!["1", "5"]);
    assert_eq!(space.members("u").len(), 3, "i1's slot is left alone");
    assert_eq!(space.members("v").len(), 1);

    i0.resync(vec![(user("v"), vec![])]).await.expect("resync");
    assert!(space.members("v").is_empty());
}
