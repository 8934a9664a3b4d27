//! The conditional reservation under real contention: many threads, one pool, one user; and
//! the idempotency of lease writes.

use std::sync::Arc;

use chatgate::db::queries::quota::{LeaseState, LeaseWrite};
use chatgate::db::queries::{quota, users, write_transaction};
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

fn write(user: &str, seq: i64, used: i64, released: i64, reserve: i64) -> LeaseWrite {
    LeaseWrite {
        user: user.into(),
        day: "d".into(),
        seq,
        used,
        released,
        reserve,
    }
}

fn apply(
    conn: &mut chatgate::db::DbConnection,
    holder: &str,
    w: &LeaseWrite,
    default_limit: i64,
) -> LeaseState {
    write_transaction(conn, |conn| {
        quota::apply_lease_write(conn, holder, w, default_limit, 0)
    })
    .expect("lease write")
}

#[test]
fn two_hundred_concurrent_reservations_with_limit_fifty_grant_exactly_fifty() {
    two_hundred_concurrent_reservations_with_limit_fifty_grant_exactly_fifty_on(Backend::Sqlite);
}

#[test]
#[ignore = "needs TEST_POSTGRES_URL"]
fn two_hundred_concurrent_reservations_with_limit_fifty_grant_exactly_fifty_postgres() {
    require_postgres();
    two_hundred_concurrent_reservations_with_limit_fifty_grant_exactly_fifty_on(Backend::Postgres);
}

fn two_hundred_concurrent_reservations_with_limit_fifty_grant_exactly_fifty_on(backend: Backend) {
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
        .map(|i| {
            let pool = pool.clone();
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                barrier.wait();
                // Each thread is its own instance reserving one unit.
                let holder = format!("holder-{i}");
                let lease = LeaseWrite {
                    user: "alice".into(),
                    day: "2026-11-25".into(),
                    seq: 1,
                    used: 0,
                    released: 0,
                    reserve: 1,
                };
                let mut attempt = 0;
                loop {
                    let result = pool.run_blocking(&|conn: &mut chatgate::db::DbConnection| {
                        write_transaction(conn, |conn| {
                            quota::apply_lease_write(conn, &holder, &lease, 1000, 0)
                        })
                    });
                    match result {
                        Err(err)
                            if err.transience() == chatgate::db::retry::Transience::Transient =>
                        {
                            attempt += 1;
                            assert!(attempt < 50, "gave up: {err}");
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                        other => return other.expect("reserve"),
                    }
                }
            })
        })
        .collect();
    let outcomes: Vec<LeaseState> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let granted = outcomes.iter().filter(|o| o.granted == 1).count();
    let refused = outcomes
        .iter()
        .filter(|o| o.granted == 0 && o.limit == 50)
        .count();
    assert_eq!((granted, refused), (50, 150), "{backend:?}");
    let mut conn = pool.checkout().expect("connect");
    assert_eq!(
        quota::reserved_on(&mut conn, "alice", "2026-11-25").expect("read"),
        50,
        "{backend:?}"
    );
    assert_eq!(
        quota::used_on(&mut conn, "alice", "2026-11-25").expect("read"),
        0,
        "{backend:?}: reserved is not used until settled"
    );
}

#[test]
fn give_back_returns_a_unit_and_retried_writes_apply_once() {
    give_back_returns_a_unit_and_retried_writes_apply_once_on(Backend::Sqlite);
}

#[test]
#[ignore = "needs TEST_POSTGRES_URL"]
fn give_back_returns_a_unit_and_retried_writes_apply_once_postgres() {
    require_postgres();
    give_back_returns_a_unit_and_retried_writes_apply_once_on(Backend::Postgres);
}

fn give_back_returns_a_unit_and_retried_writes_apply_once_on(backend: Backend) {
    let database = TestDatabase::new(backend);
    let pool = database.pool();
    let mut conn = pool.checkout().expect("connect");
    chatgate::db::migrations::run_pending(&mut conn).expect("migrate");
    set_limit(&mut conn, "bob", 1);
    assert_eq!(
        apply(&mut conn, "a", &write("bob", 1, 0, 0, 1), 1000).granted,
        1
    );
    // A second instance finds nothing left.
    assert_eq!(
        apply(&mut conn, "b", &write("bob", 1, 0, 0, 1), 1000).granted,
        0
    );
    // The chat kept its unit: settled into `used`; the retry of the same write is a no-op.
    let settle = write("bob", 2, 1, 0, 0);
    apply(&mut conn, "a", &settle, 1000);
    let again = apply(&mut conn, "a", &settle, 1000);
    assert_eq!((again.used, again.reserved), (1, 0));
    // Given back after settling: out of `used`, back into the block, then released.
    let give_back = write("bob", 3, 0, 1, 0);
    apply(&mut conn, "a", &give_back, 1000);
    let again = apply(&mut conn, "a", &give_back, 1000);
    assert_eq!((again.used, again.reserved), (0, 0));
    // A stale write (older seq) changes nothing.
    let stale = apply(&mut conn, "a", &write("bob", 2, 1, 0, 0), 1000);
    assert_eq!((stale.used, stale.reserved), (0, 0));
    assert_eq!(quota::used_on(&mut conn, "bob", "d").expect("read"), 0);
    // A retried reservation does not reserve twice: the lease's total is the answer.
    let reserve = write("bob", 4, 0, 1, 1);
    assert_eq!(apply(&mut conn, "a", &reserve, 1000).granted, 2);
    let again = apply(&mut conn, "a", &reserve, 1000);
    assert_eq!((again.granted, again.reserved), (2, 1));
}

#[test]
fn disabled_user_and_zero_limit_reserve_nothing() {
    disabled_user_and_zero_limit_reserve_nothing_on(Backend::Sqlite);
}

#[test]
#[ignore = "needs TEST_POSTGRES_URL"]
fn disabled_user_and_zero_limit_reserve_nothing_postgres() {
    require_postgres();
    disabled_user_and_zero_limit_reserve_nothing_on(Backend::Postgres);
}

fn disabled_user_and_zero_limit_reserve_nothing_on(backend: Backend) {
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
    let carol = apply(&mut conn, "a", &write("carol", 1, 0, 0, 1), 1000);
    assert_eq!((carol.granted, carol.disabled), (0, true));
    set_limit(&mut conn, "dave", 0);
    let dave = apply(&mut conn, "a", &write("dave", 1, 0, 0, 1), 1000);
    assert_eq!((dave.granted, dave.limit), (0, 0));
    // The default applies to users without their own limit, created on first reservation;
    // a block larger than what is left gets what is left.
    let erin = apply(&mut conn, "a", &write("erin", 1, 0, 0, 5), 2);
    assert_eq!((erin.granted, erin.limit, erin.reserved), (2, 2, 2));
    assert_eq!(quota::used_on(&mut conn, "carol", "d").expect("read"), 0);
}
