//! One behaviour suite for [`RateStore`], run against both implementations. The Redis runs
//! are `#[ignore]`d by default and fail (rather than pass untested) without `TEST_REDIS_URL`.

use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use futures_util::future::join_all;

use super::*;

type Make = Box<dyn Fn(u32, Duration) -> Box<dyn RateStore>>;

fn key(s: &str) -> Arc<str> {
    Arc::from(s)
}

async fn decide(store: &mut dyn RateStore, key: &Arc<str>) -> Admission {
    match store.check(key, Instant::now()) {
        Decision::Decided(admission) => admission,
        Decision::Asked(decision) => decision.await.expect("the store answers"),
        Decision::Unavailable => panic!("the store is unavailable"),
    }
}

fn local() -> Make {
    Box::new(|limit, window| Box::new(LocalWindow::new(limit, window)))
}

fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|url| !url.is_empty())
        .expect("this test needs Redis: set TEST_REDIS_URL (e.g. redis://127.0.0.1:6379)")
}

/// A link of its own per "instance", all under `prefix`.
fn link(prefix: &str, instance: &str) -> RedisLink {
    RedisLink::connect(&redis_url(), instance, Some(prefix)).expect("redis url")
}

fn fresh_prefix() -> String {
    format!("cgtest:rl:{}:", uuid::Uuid::new_v4().simple())
}

fn redis(prefix: &str) -> Make {
    let link = link(prefix, "i0");
    Box::new(move |limit, window| Box::new(RedisWindow::new(link.clone(), "t", limit, window)))
}

fn drop_keys(prefix: &str) {
    let Ok(client) = ::redis::Client::open(redis_url()) else {
        return;
    };
    if let Ok(mut conn) = client.get_connection() {
        let keys: Vec<String> = ::redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query(&mut conn)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: Result<i64, _> = ::redis::cmd("DEL").arg(keys).query(&mut conn);
        }
    }
}

async fn admits_the_limit_then_refuses_until_the_oldest_leaves(make: &Make) {
    let window = Duration::from_secs(60);
    let mut store = make(3, window);
    let u = key("u");
    for _ in 0..3 {
        assert_eq!(decide(&mut *store, &u).await, Admission::Allowed);
    }
    match decide(&mut *store, &u).await {
        Admission::Limited { retry_after } => {
            assert!(
                retry_after > window - Duration::from_secs(5) && retry_after <= window,
                "{retry_after:?}"
            );
        }
        other => panic!("the fourth event got {other:?}"),
    }
    assert_eq!(
        decide(&mut *store, &key("other")).await,
        Admission::Allowed,
        "keys are counted apart"
    );
}

async fn the_window_slides(make: &Make) {
    let window = Duration::from_millis(400);
    let mut store = make(2, window);
    let u = key("slide");
    assert_eq!(decide(&mut *store, &u).await, Admission::Allowed);
    assert_eq!(decide(&mut *store, &u).await, Admission::Allowed);
    let Admission::Limited { retry_after } = decide(&mut *store, &u).await else {
        panic!("the third event in the window was admitted");
    };
    assert!(retry_after <= window, "{retry_after:?}");
    // Waiting out the window is the behaviour under test, not synchronisation.
    tokio::time::sleep(retry_after + Duration::from_millis(5)).await;
    assert_eq!(decide(&mut *store, &u).await, Admission::Allowed);
}

/// Checks sent before any answer came back (as many chats at once): exactly the limit is
/// admitted, however they are spread over `stores` that share one window.
async fn burst_admits_exactly(stores: &mut [Box<dyn RateStore>], key: &Arc<str>, limit: usize) {
    let count = stores.len();
    let decisions: Vec<Decision> = (0..40)
        .map(|i| stores[i % count].check(key, Instant::now()))
        .collect();
    let admissions = join_all(decisions.into_iter().map(|decision| async move {
        match decision {
            Decision::Decided(admission) => admission,
            Decision::Asked(decision) => decision.await.expect("the store answers"),
            Decision::Unavailable => panic!("the store is unavailable"),
        }
    }))
    .await;
    let admitted = admissions
        .iter()
        .filter(|a| **a == Admission::Allowed)
        .count();
    assert_eq!(admitted, limit, "{admissions:?}");
}

async fn a_burst_admits_exactly_the_limit(make: &Make) {
    let mut stores = [make(7, Duration::from_secs(60))];
    burst_admits_exactly(&mut stores, &key("burst"), 7).await;
}

async fn suite(make: Make) {
    admits_the_limit_then_refuses_until_the_oldest_leaves(&make).await;
    the_window_slides(&make).await;
    a_burst_admits_exactly_the_limit(&make).await;
}

#[actix::test]
async fn local_window_keeps_the_store_contract() {
    suite(local()).await;
}

#[actix::test]
#[ignore = "needs TEST_REDIS_URL"]
async fn redis_window_keeps_the_store_contract() {
    let prefix = fresh_prefix();
    suite(redis(&prefix)).await;
    drop_keys(&prefix);
}

/// Two instances (two links, one key space): the limit holds for both together, and Redis
/// keeps no more than the limit per key, expiring with the window.
#[actix::test]
#[ignore = "needs TEST_REDIS_URL"]
async fn two_instances_share_one_window_in_redis() {
    let prefix = fresh_prefix();
    let window = Duration::from_secs(30);
    let mut stores: Vec<Box<dyn RateStore>> = ["i0", "i1"]
        .iter()
        .map(|instance| {
            Box::new(RedisWindow::new(link(&prefix, instance), "t", 5, window))
                as Box<dyn RateStore>
        })
        .collect();
    burst_admits_exactly(&mut stores, &key("shared"), 5).await;

    let client = ::redis::Client::open(redis_url()).expect("redis url");
    let mut conn = client.get_connection().expect("redis");
    let log = format!("{prefix}rl:t:shared");
    let held: i64 = ::redis::cmd("ZCARD")
        .arg(&log)
        .query(&mut conn)
        .expect("zcard");
    let ttl_ms: i64 = ::redis::cmd("PTTL")
        .arg(&log)
        .query(&mut conn)
        .expect("pttl");
    drop_keys(&prefix);
    assert_eq!(held, 5);
    assert!(ttl_ms > 0 && ttl_ms <= 30_000, "{ttl_ms}");
}

/// A link that is down is not asked: the decision is local and immediate.
#[actix::test]
async fn a_down_link_is_not_asked() {
    let link =
        RedisLink::connect("redis://127.0.0.1:1", "i0", Some("cgtest:down:")).expect("a lazy link");
    link.record_probe(false, link.faults(), Some("test: Redis marked down"));
    let mut store = RedisWindow::new(link, "t", 1, Duration::from_secs(1));
    assert!(matches!(
        store.check(&key("u"), Instant::now()),
        Decision::Unavailable
    ));
}
