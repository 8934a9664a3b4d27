//! The atomic quota statement under real contention: many threads, one pool, one user.

use std::sync::Arc;

use chatgate::db::queries::quota::QuotaTake;
use chatgate::db::queries::{quota, users};
use diesel::prelude::*;

use crate::helpers::{require_postgres, Backend, TestDatabase};

fn set_limit(conn: &mut chatgate::db::DbConnection, user: &str, limit: i64) {
    use chatgate::db::schema::users::dsl;
    users::insert_user_if_missing(conn, user, 0).expect("insert user");
    diesel::update(dsl::users.find(user))
        .set(dsl::daily_limit.eq(Some(limit)))
        .execute(conn)
        .expect("set limit");
}

#[test]
fn two_hundred_concurrent_takes_with_limit_fifty_take_exactly_fifty() {
    two_hundred_concurrent_takes_with_limit_fifty_take_exactly_fifty_on(Backend::Sqlite);
}

#[test]
#[ignore = "needs TEST_POSTGRES_URL"]
fn two_hundred_concurrent_takes_with_limit_fifty_take_exactly_fifty_postgres() {
    require_postgres();
    two_hundred_concurrent_takes_with_limit_fifty_take_exactly_fifty_on(Backend::Postgres);
}

fn two_hundred_concurrent_takes_with_limit_fifty_take_exactly_fifty_on(backend: Backend) {
    let database = TestDatabase::new(backend);
    let pool = database.pool();
    {
        let mut conn = pool.checkout().expect("connect");
        chatgate::db::migrations::run_pending(&mut conn).expect("migrate");
        set_limit(&mut conn, "alice", 50);
    }
    let pool = Arc::new(pool);
    let barrier = Arc::new(std::sync::Barrier::new(200));
    let threads: Vec<_> = (0..200)
        .map(|_| {
            let pool = pool.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                // Same retry policy the server uses, on this thread.
                let mut attempt = 0;
                loop {
                    let result = pool.run_blocking(&|conn: &mut chatgate::db::DbConnection| {
                        quota::take_unit(conn, "alice", "2026-11-25", 1000, 0)
                    });
                    match result {
                        Err(err)
                            if err.transience() == chatgate::db::retry::Transience::Transient =>
                        {
                            attempt += 1;
                            assert!(attempt < 50, "gave up: {err}");
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                        other => return other.expect("take"),
                    }
                }
            })
        })
        .collect();
    let outcomes: Vec<QuotaTake> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let taken = outcomes
        .iter()
        .filter(|o| matches!(o, QuotaTake::Taken { .. }))
        .count();
    let exceeded = outcomes
        .iter()
        .filter(|o| matches!(o, QuotaTake::Exceeded { limit: 50 }))
        .count();
    assert_eq!((taken, exceeded), (50, 150), "{backend:?}");
    let mut used: Vec<i64> = outcomes
        .iter()
        .filter_map(|o| match o {
            QuotaTake::Taken { used } => Some(*used),
            _ => None,
        })
        .collect();
    used.sort_unstable();
    assert_eq!(
        used,
        (1..=50).collect::<Vec<_>>(),
        "{backend:?}: each count handed out once"
    );
    let mut conn = pool.checkout().expect("connect");
    assert_eq!(
        quota::used_on(&mut conn, "alice", "2026-11-25").expect("read"),
        50,
        "{backend:?}"
    );
}

#[test]
fn give_back_returns_a_unit_and_never_goes_negative() {
    give_back_returns_a_unit_and_never_goes_negative_on(Backend::Sqlite);
}

#[test]
#[ignore = "needs TEST_POSTGRES_URL"]
fn give_back_returns_a_unit_and_never_goes_negative_postgres() {
    require_postgres();
    give_back_returns_a_unit_and_never_goes_negative_on(Backend::Postgres);
}

fn give_back_returns_a_unit_and_never_goes_negative_on(backend: Backend) {
    let database = TestDatabase::new(backend);
    let pool = database.pool();
    let mut conn = pool.checkout().expect("connect");
    chatgate::db::migrations::run_pending(&mut conn).expect("migrate");
    set_limit(&mut conn, "bob", 1);
    assert!(matches!(
        quota::take_unit(&mut conn, "bob", "d", 1000, 0),
        Ok(QuotaTake::Taken { used: 1 })
    ));
    assert!(matches!(
        quota::take_unit(&mut conn, "bob", "d", 1000, 0),
        Ok(QuotaTake::Exceeded { limit: 1 })
    ));
    assert!(quota::give_back_unit(&mut conn, "bob", "d").expect("give back"));
    assert!(!quota::give_back_unit(&mut conn, "bob", "d").expect("second give back"));
    assert_eq!(quota::used_on(&mut conn, "bob", "d").expect("read"), 0);
    assert!(matches!(
        quota::take_unit(&mut conn, "bob", "d", 1000, 0),
        Ok(QuotaTake::Taken { used: 1 })
    ));
}

#[test]
fn disabled_user_and_zero_limit_take_nothing() {
    disabled_user_and_zero_limit_take_nothing_on(Backend::Sqlite);
}

#[test]
#[ignore = "needs TEST_POSTGRES_URL"]
fn disabled_user_and_zero_limit_take_nothing_postgres() {
    require_postgres();
    disabled_user_and_zero_limit_take_nothing_on(Backend::Postgres);
}

fn disabled_user_and_zero_limit_take_nothing_on(backend: Backend) {
    let database = TestDatabase::new(backend);
    let pool = database.pool();
    let mut conn = pool.checkout().expect("connect");
    chatgate::db::migrations::run_pending(&mut conn).expect("migrate");
    use chatgate::db::schema::users::dsl;
    users::insert_user_if_missing(&mut conn, "carol", 0).expect("insert");
    diesel::update(dsl::users.find("carol"))
        .set(dsl::disabled.eq(true))
        .execute(&mut conn)
        .expect("disable");
    assert_eq!(
        quota::take_unit(&mut conn, "carol", "d", 1000, 0).expect("take"),
        QuotaTake::Disabled
    );
    set_limit(&mut conn, "dave", 0);
    assert_eq!(
        quota::take_unit(&mut conn, "dave", "d", 1000, 0).expect("take"),
        QuotaTake::Exceeded { limit: 0 }
    );
    // The default applies to users without their own limit, created on first take.
    assert!(matches!(
        quota::take_unit(&mut conn, "erin", "d", 2, 0),
        Ok(QuotaTake::Taken { used: 1 })
    ));
    assert_eq!(quota::used_on(&mut conn, "carol", "d").expect("read"), 0);
}
