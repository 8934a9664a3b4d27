//! One behaviour suite for the shared session store, run against both implementations: the
//! in-process one always, the Redis one when `TEST_REDIS_URL` is set (else it says it skips).

use std::rc::Rc;
use std::time::Duration;

use super::store::*;
use super::{LocalCluster, LocalSessionStore, RedisSessionStore, SessionStats, StateFilter};
use crate::cluster::RedisLink;
use crate::domain::message::{ChatMessage, ChatRole};
use crate::domain::{SessionId, UserId};

const TTL: Duration = Duration::from_secs(60);
const DEAD_AFTER: Duration = Duration::from_secs(5);

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// A cluster of stores, one per instance name, sharing one backend.
trait Backend {
    fn store(&self, instance: &str, ttl: Duration) -> Rc<dyn SessionStore>;
    /// Records `instance`'s heartbeat at `at_ms`.
    async fn beat(&self, instance: &str, at_ms: i64);
}

struct Local(Rc<std::cell::RefCell<LocalCluster>>);

impl Backend for Local {
    fn store(&self, instance: &str, ttl: Duration) -> Rc<dyn SessionStore> {
        Rc::new(LocalSessionStore::new(
            instance,
            ttl,
            DEAD_AFTER,
            self.0.clone(),
        ))
    }
    async fn beat(&self, instance: &str, at_ms: i64) {
        self.0.borrow_mut().beat(instance, at_ms);
    }
}

/// Its own key prefix per test, deleted afterwards.
struct Redis {
    url: String,
    prefix: String,
}

impl Redis {
    fn from_env() -> Option<Redis> {
        match std::env::var("TEST_REDIS_URL")
            .ok()
            .filter(|u| !u.is_empty())
        {
            Some(url) => Some(Redis {
                url,
                prefix: format!("cgunit:{}:", uuid::Uuid::new_v4().simple()),
            }),
            None => {
                eprintln!("skipping the Redis session store: TEST_REDIS_URL is not set");
                None
            }
        }
    }
}

impl Backend for Redis {
    fn store(&self, instance: &str, ttl: Duration) -> Rc<dyn SessionStore> {
        let link = RedisLink::connect(&self.url, instance, Some(&self.prefix)).expect("link");
        Rc::new(RedisSessionStore::new(link, ttl, DEAD_AFTER))
    }
    async fn beat(&self, instance: &str, at_ms: i64) {
        let client = redis::Client::open(self.url.as_str()).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let _: i64 = redis::cmd("ZADD")
            .arg(format!("{}instances", self.prefix))
            .arg(at_ms)
            .arg(instance)
            .query_async(&mut conn)
            .await
            .expect("zadd");
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Ok(client) = redis::Client::open(self.url.as_str()) {
            if let Ok(mut conn) = client.get_connection() {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", self.prefix))
                    .query(&mut conn)
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut conn);
                }
            }
        }
    }
}

fn user(name: &str) -> UserId {
    UserId::parse(name).expect("user")
}

fn write(id: &SessionId, owner: &str, started_at_ms: i64, attached: bool) -> SessionWrite {
    SessionWrite {
        id: id.clone(),
        user: user(owner),
        started_at_ms,
        ended_at_ms: (!attached).then_some(started_at_ms + 5),
        messages: 2,
        attached,
        system: Some(ChatMessage::text(ChatRole::System, "be terse")),
        open_calls: vec!["call_1".into()],
        response_ms: vec![10, 30],
        history: HistoryWrite::Full(vec![
            ChatMessage::user("hello there"),
            ChatMessage::assistant("hello there"),
        ]),
    }
}

async fn save_one(store: &Rc<dyn SessionStore>, w: SessionWrite) -> Saved {
    let saved = store.save(vec![w], 1).await.expect("save");
    assert_eq!(saved.len(), 1);
    saved[0]
}

/// Runs `suite` against every backend available.
macro_rules! both {
    ($name:ident, $suite:ident) => {
        #[actix::test]
        async fn $name() {
            $suite(&Local(LocalCluster::new())).await;
            if let Some(redis) = Redis::from_env() {
                $suite(&redis).await;
            }
        }
    };
}

async fn resume_elsewhere_sees_everything_and_the_old_holder_is_locked_out(b: &impl Backend) {
    let (a, c) = (b.store("a", TTL), b.store("c", TTL));
    b.beat("a", now_ms()).await;
    let id = SessionId::new_random();
    assert_eq!(
        save_one(&a, write(&id, "alice", 1_000, true)).await,
        Saved::Saved
    );

    let held = c
        .claim(id.clone(), user("alice"), false)
        .await
        .expect("claim");
    assert_eq!(
        held,
        Claim::Held {
            instance: "a".into()
        }
    );
    let Claim::Claimed {
        previous_writer,
        session,
    } = c
        .claim(id.clone(), user("alice"), true)
        .await
        .expect("claim")
    else {
        panic!("a forced claim takes it");
    };
    assert_eq!(previous_writer, "a");
    assert_eq!(
        session,
        StoredSession {
            user: user("alice"),
            started_at_ms: 1_000,
            messages: 2,
            system: Some(ChatMessage::text(ChatRole::System, "be terse")),
            history: vec![
                ChatMessage::user("hello there"),
                ChatMessage::assistant("hello there")
            ],
            open_calls: vec!["call_1".into()],
            response_ms: vec![10, 30],
        }
    );
    // The old holder's next write must not clobber what the new one has.
    let mut late = write(&id, "alice", 1_000, false);
    late.history = HistoryWrite::Append {
        drop_front: 0,
        push: vec![ChatMessage::user("late")],
    };
    assert_eq!(save_one(&a, late).await, Saved::Lost);
    // The new holder writes on.
    let mut next = write(&id, "alice", 1_000, true);
    next.history = HistoryWrite::Append {
        drop_front: 1,
        push: vec![ChatMessage::user("again")],
    };
    assert_eq!(save_one(&c, next).await, Saved::Saved);
    let Claim::Claimed { session, .. } = a.claim(id, user("alice"), true).await.expect("claim")
    else {
        panic!("claimed back");
    };
    let texts: Vec<&str> = session.history.iter().map(|m| &*m.content).collect();
    assert_eq!(texts, ["hello there", "again"]);
}
both!(
    resume_elsewhere_sees_everything_and_the_old_holder_is_locked_out_in_both,
    resume_elsewhere_sees_everything_and_the_old_holder_is_locked_out
);

async fn a_dead_holder_counts_as_detached(b: &impl Backend) {
    let (a, c) = (b.store("a", TTL), b.store("c", TTL));
    let id = SessionId::new_random();
    assert_eq!(
        save_one(&a, write(&id, "alice", 1, true)).await,
        Saved::Saved
    );
    // Never beat at all: not alive.
    assert!(matches!(
        c.claim(id.clone(), user("alice"), false)
            .await
            .expect("claim"),
        Claim::Claimed { .. }
    ));
    // Beat, but longer ago than DEAD_AFTER.
    let id = SessionId::new_random();
    assert_eq!(
        save_one(&a, write(&id, "alice", 1, true)).await,
        Saved::Saved
    );
    b.beat("a", now_ms() - 6_000).await;
    assert!(matches!(
        c.claim(id, user("alice"), false).await.expect("claim"),
        Claim::Claimed { .. }
    ));
}
both!(
    a_dead_holder_counts_as_detached_in_both,
    a_dead_holder_counts_as_detached
);

async fn appends_need_the_session_and_other_users_cannot_claim(b: &impl Backend) {
    let a = b.store("a", TTL);
    let id = SessionId::new_random();
    let mut append = write(&id, "alice", 1, true);
    append.history = HistoryWrite::Append {
        drop_front: 0,
        push: vec![ChatMessage::user("x")],
    };
    assert_eq!(save_one(&a, append).await, Saved::Missing);
    assert_eq!(
        a.claim(id.clone(), user("alice"), false)
            .await
            .expect("claim"),
        Claim::Missing
    );
    assert_eq!(
        save_one(&a, write(&id, "alice", 1, false)).await,
        Saved::Saved
    );
    assert_eq!(
        a.claim(id, user("mallory"), true).await.expect("claim"),
        Claim::Missing
    );
}
both!(
    appends_need_the_session_and_other_users_cannot_claim_in_both,
    appends_need_the_session_and_other_users_cannot_claim
);

async fn an_ended_session_cannot_be_resumed_or_written(b: &impl Backend) {
    let (a, c) = (b.store("a", TTL), b.store("c", TTL));
    b.beat("a", now_ms()).await;
    let id = SessionId::new_random();
    assert_eq!(
        save_one(&a, write(&id, "alice", 7, true)).await,
        Saved::Saved
    );
    assert_eq!(
        c.end(id.clone(), false).await.expect("end"),
        Ending::Held {
            instance: "a".into()
        }
    );
    let Ending::Ended(ended) = a.end(id.clone(), false).await.expect("end") else {
        panic!("the holder ends it");
    };
    assert_eq!(
        (
            ended.user.as_str(),
            ended.started_at_ms,
            ended.messages,
            ended.avg_response_ms
        ),
        ("alice", 7, 2, Some(20))
    );
    assert_eq!(
        c.claim(id.clone(), user("alice"), true)
            .await
            .expect("claim"),
        Claim::Ended
    );
    assert_eq!(
        save_one(&a, write(&id, "alice", 7, true)).await,
        Saved::Lost
    );
    assert_eq!(c.end(id, true).await.expect("end"), Ending::Missing);
    assert_eq!(c.stats().await.expect("stats").total, 0);
}
both!(
    an_ended_session_cannot_be_resumed_or_written_in_both,
    an_ended_session_cannot_be_resumed_or_written
);

async fn lists_and_counts_cover_every_live_instance(b: &impl Backend) {
    let (a, c) = (b.store("a", TTL), b.store("c", TTL));
    let now = now_ms();
    b.beat("a", now).await;
    b.beat("c", now).await;
    let ids: Vec<SessionId> = (0..3).map(|_| SessionId::new_random()).collect();
    let saved = a
        .save(
            vec![
                write(&ids[0], "alice", 100, true),
                write(&ids[1], "bob", 200, false),
            ],
            1,
        )
        .await
        .expect("save");
    assert_eq!(saved, [Saved::Saved, Saved::Saved]);
    assert_eq!(
        c.save(vec![write(&ids[2], "carol", 300, true)], 1)
            .await
            .expect("save"),
        [Saved::Saved]
    );
    assert_eq!(
        a.stats().await.expect("stats"),
        SessionStats {
            active: 2,
            inactive: 1,
            total: 3
        }
    );
    let all = c.list(StateFilter::All, None, 10).await.expect("list");
    let listed: Vec<(&str, bool)> = all.iter().map(|s| (s.id.as_str(), s.active)).collect();
    assert_eq!(
        listed,
        [
            (ids[2].as_str(), true),
            (ids[1].as_str(), false),
            (ids[0].as_str(), true)
        ]
    );
    assert_eq!(all[1].user, "bob");
    assert_eq!(all[1].ended_at_ms, Some(205));
    assert_eq!(all[1].avg_response_ms, Some(20));
    // Pages follow the cursor.
    let first = a.list(StateFilter::All, None, 2).await.expect("list");
    let cursor = first.last().map(|s| (s.started_at_ms, s.id.clone()));
    let rest = a.list(StateFilter::All, cursor, 2).await.expect("list");
    assert_eq!(rest.len(), 1);
    assert_eq!(rest[0].id, ids[0].as_str());
    // Instance c dies: its session is no longer active.
    b.beat("c", now - 10_000).await;
    let active = a.list(StateFilter::Active, None, 10).await.expect("list");
    assert_eq!(active.len(), 1);
    assert_eq!(active[0].id, ids[0].as_str());
    let stats = a.stats().await.expect("stats");
    assert_eq!((stats.active, stats.total), (1, 3));
}
both!(
    lists_and_counts_cover_every_live_instance_in_both,
    lists_and_counts_cover_every_live_instance
);

async fn sessions_expire_with_the_ttl(b: &impl Backend) {
    let a = b.store("a", Duration::from_millis(300));
    let id = SessionId::new_random();
    assert_eq!(
        save_one(&a, write(&id, "alice", 1, false)).await,
        Saved::Saved
    );
    assert_eq!(a.stats().await.expect("stats").total, 1);
    // Polled through the count (a claim would renew it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.stats().await.expect("stats").total != 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not expired within 5 s of a 300 ms TTL"
        );
        actix::clock::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        a.claim(id, user("alice"), false).await.expect("claim"),
        Claim::Missing
    );
}
both!(
    sessions_expire_with_the_ttl_in_both,
    sessions_expire_with_the_ttl
);
