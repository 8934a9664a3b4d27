use std::collections::HashMap;

use chrono::TimeZone;
use proptest::prelude::*;

use super::*;

/// (holder, user, day)
type LeaseKey = (u32, String, String);
/// (seq, granted, used, released)
type LeaseTotals = (i64, i64, i64, i64);

/// The database side of leases, in memory, with the semantics of `apply_lease_write`.
#[derive(Default)]
struct FakeDb {
    limit: i64,
    disabled: bool,
    used: i64,
    reserved: i64,
    leases: HashMap<LeaseKey, LeaseTotals>,
}

impl FakeDb {
    fn with_limit(limit: i64) -> FakeDb {
        FakeDb {
            limit,
            ..FakeDb::default()
        }
    }

    fn apply(&mut self, holder: u32, w: &LeaseWrite) -> LeaseState {
        let lease = self
            .leases
            .entry((holder, w.user.clone(), w.day.clone()))
            .or_insert((0, 0, 0, 0));
        if lease.0 < w.seq {
            let (du, dr) = (w.used - lease.2, w.released - lease.3);
            self.used += du;
            self.reserved -= du + dr;
            let mut grant = 0;
            if w.reserve > 0 && !self.disabled {
                let left = self.limit - self.used - self.reserved;
                grant = w.reserve.min(left).max(0);
                self.reserved += grant;
            }
            *lease = (w.seq, lease.1 + grant, w.used, w.released);
        }
        LeaseState {
            granted: lease.1,
            limit: self.limit,
            disabled: self.disabled,
            used: self.used,
            reserved: self.reserved,
        }
    }

    fn write(&mut self, holder: u32, batch: &Batch) -> Vec<LeaseState> {
        batch.writes.iter().map(|w| self.apply(holder, w)).collect()
    }
}

fn settings() -> LeaseSettings {
    LeaseSettings {
        idle_after_ms: 10_000,
        max_block: 64,
        max_waiters: 100,
        probe_after_ms: 1_000,
    }
}

fn day(d: u32) -> QuotaDay {
    QuotaDay::of(
        chrono::Utc
            .with_ymd_and_hms(2026, 11, d, 12, 0, 0)
            .single()
            .expect("date"),
    )
}

fn user() -> UserId {
    UserId::parse("alice").expect("user")
}

type Answers = Vec<(u32, Result<QuotaTake, AppError>)>;

/// Runs one batch of `book` against `db` if one is due.
fn round(book: &mut LeaseBook<u32>, db: &mut FakeDb, today: QuotaDay, now: u64) -> Answers {
    book.tick();
    match book.next_batch(today, now, true) {
        Some(batch) => {
            let states = db.write(1, &batch);
            book.batch_done(batch, Ok(states), now)
        }
        None => Vec::new(),
    }
}

#[test]
fn first_chat_waits_for_one_reservation_and_the_next_do_not() {
    let (mut book, mut db) = (LeaseBook::new(settings()), FakeDb::with_limit(100));
    let (u, d) = (user(), day(10));
    assert!(matches!(book.admit(&u, d, 0), Admission::NeedsReservation));
    book.wait(&u, d, 7, 0);
    assert!(book.wants_write_now());
    let answers = round(&mut book, &mut db, d, 0);
    assert!(matches!(answers[..], [(7, Ok(QuotaTake::Taken(_)))]));
    // A rare user gets a block of one; it is used up, so the next chat asks again, and the
    // block grows with the user's rate.
    for i in 0..20u32 {
        match book.admit(&u, d, u64::from(i)) {
            Admission::Taken(_) => {}
            Admission::NeedsReservation => {
                book.wait(&u, d, i, u64::from(i));
                let answers = round(&mut book, &mut db, d, u64::from(i));
                assert!(matches!(answers[..], [(_, Ok(QuotaTake::Taken(_)))]));
            }
            Admission::Refused(err) => panic!("refused: {err:?}"),
        }
        // Top-ups go ahead of need.
        if book.wants_write_now() {
            round(&mut book, &mut db, d, u64::from(i));
        }
    }
    assert!(book.free(&u, d) > 1, "a busy user's block grows");
    assert!(db.reserved + db.used <= 100);
}

/// The `used` of a chat's receipt, however it was admitted.
fn receipt(book: &mut LeaseBook<u32>, db: &mut FakeDb, u: &UserId, d: QuotaDay, now: u64) -> i64 {
    let standing = match book.admit(u, d, now) {
        Admission::Taken(standing) => standing,
        Admission::NeedsReservation => {
            book.wait(u, d, 0, now);
            match &round(book, db, d, now)[..] {
                [(_, Ok(QuotaTake::Taken(standing)))] => *standing,
                other => panic!("not admitted: {other:?}"),
            }
        }
        Admission::Refused(err) => panic!("refused: {err:?}"),
    };
    assert_eq!(standing.limit, db.limit);
    standing.used
}

#[test]
fn receipts_count_every_kept_chat_of_the_day_without_a_write() {
    let (mut book, mut db) = (LeaseBook::new(settings()), FakeDb::with_limit(50));
    let (u, d) = (user(), day(10));
    let mut seen = Vec::new();
    for i in 0..30u64 {
        seen.push(receipt(&mut book, &mut db, &u, d, i));
        if i % 7 == 6 {
            // Settlements move units from the book to the database's `used`: the count
            // stays the same.
            round(&mut book, &mut db, d, i);
        }
    }
    assert_eq!(seen, (1..=30).collect::<Vec<i64>>());
    // A unit given back is not counted any more, settled or not.
    assert!(book.give_back(&u, d));
    assert_eq!(receipt(&mut book, &mut db, &u, d, 40), 30);
    round(&mut book, &mut db, d, 41);
    assert!(book.give_back(&u, d));
    assert_eq!(receipt(&mut book, &mut db, &u, d, 42), 30);
    // Waiters served by one reservation each count the ones before them.
    let (mut book, mut db) = (LeaseBook::new(settings()), FakeDb::with_limit(50));
    for w in 0..3 {
        assert!(matches!(book.admit(&u, d, 0), Admission::NeedsReservation));
        book.wait(&u, d, w, 0);
    }
    let used: Vec<i64> = round(&mut book, &mut db, d, 0)
        .into_iter()
        .map(|(_, answer)| match answer {
            Ok(QuotaTake::Taken(standing)) => standing.used,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(used, [1, 2, 3]);
}

#[test]
fn another_instances_chats_show_in_receipts_once_settled_and_seen() {
    let mut db = FakeDb::with_limit(100);
    let mut a: LeaseBook<u32> = LeaseBook::new(settings());
    let mut b: LeaseBook<u32> = LeaseBook::new(settings());
    let (u, d) = (user(), day(10));
    let on = |book: &mut LeaseBook<u32>, db: &mut FakeDb, holder: u32, now: u64| {
        let standing = match book.admit(&u, d, now) {
            Admission::Taken(standing) => standing,
            Admission::NeedsReservation => {
                book.wait(&u, d, 0, now);
                let batch = book.next_batch(d, now, true).expect("batch");
                let states = db.write(holder, &batch);
                match &book.batch_done(batch, Ok(states), now)[..] {
                    [(_, Ok(QuotaTake::Taken(standing)))] => *standing,
                    other => panic!("{other:?}"),
                }
            }
            Admission::Refused(err) => panic!("{err:?}"),
        };
        standing.used
    };
    assert_eq!(on(&mut a, &mut db, 1, 0), 1);
    assert_eq!(on(&mut a, &mut db, 1, 1), 2);
    // B's first chat reserves: the database has A's first chat (A's second reservation
    // settled it) but not its second (settled at A's next write), so B's receipt lags by one.
    assert_eq!(on(&mut b, &mut db, 2, 2), 2);
    let batch = a.next_batch(d, 3, true).expect("A settles");
    let states = db.write(1, &batch);
    a.batch_done(batch, Ok(states), 3);
    assert_eq!(db.used, 2);
    // B learns the settled count with its own next write.
    let batch = b.next_batch(d, 4, true).expect("B settles");
    let states = db.write(2, &batch);
    b.batch_done(batch, Ok(states), 4);
    assert_eq!(on(&mut b, &mut db, 2, 5), 4);
    // A admits from its block without a write: it knows its own 3 chats and nothing of B's
    // since its last write (5 in truth) — the lag of at most a flush interval.
    assert_eq!(on(&mut a, &mut db, 1, 6), 3);
}

/// A user chatting back to back, one chat every `gap_ms`, with the actor's timing: a settle
/// tick (and settling write) every `settle_ms`, a chat without a free unit waits for its
/// reservation, and a background top-up lands one chat later. Returns, per chat, whether it
/// waited for the database, and every reservation size asked for.
fn back_to_back(chats: u32, gap_ms: u64, settle_ms: u64, limit: i64) -> (Vec<bool>, Vec<i64>) {
    let (mut book, mut db) = (LeaseBook::new(settings()), FakeDb::with_limit(limit));
    let (u, d) = (user(), day(10));
    let (mut waited, mut asked) = (Vec::new(), Vec::new());
    let mut in_flight: Option<Batch> = None;
    let mut next_tick = settle_ms;
    let mut write = |book: &mut LeaseBook<u32>, batch: Batch, now: u64| {
        asked.extend(batch.writes.iter().map(|w| w.reserve).filter(|&r| r > 0));
        let states = db.write(1, &batch);
        book.batch_done(batch, Ok(states), now)
    };
    for i in 0..chats {
        let now = u64::from(i) * gap_ms;
        if let Some(batch) = in_flight.take() {
            assert!(write(&mut book, batch, now).is_empty());
        }
        let mut settle = false;
        while now >= next_tick {
            book.tick();
            next_tick += settle_ms;
            settle = true;
        }
        match book.admit(&u, d, now) {
            Admission::Taken(_) => {
                waited.push(false);
                if book.wants_write_now() || settle {
                    in_flight = book.next_batch(d, now, settle);
                }
            }
            Admission::NeedsReservation => {
                waited.push(true);
                book.wait(&u, d, i, now);
                let batch = book.next_batch(d, now, settle).expect("a reservation");
                let answers = write(&mut book, batch, now);
                assert!(matches!(answers[..], [(w, Ok(QuotaTake::Taken(_)))] if w == i));
            }
            Admission::Refused(err) => panic!("chat {i} refused: {err:?}"),
        }
    }
    (waited, asked)
}

#[test]
fn a_steady_back_to_back_user_gets_blocks_larger_than_one_before_the_first_settle_tick() {
    // 40 chats 1 ms apart with a 100 ms settle interval: all before the first tick, as a
    // fast server serves a user chatting one chat after another.
    let (waited, asked) = back_to_back(40, 1, 100, 1_000);
    let waits = waited.iter().filter(|w| **w).count();
    assert!(
        waits <= 3,
        "{waits} of 40 chats waited for the database: {waited:?}"
    );
    assert!(asked.iter().any(|&k| k > 1), "blocks asked for: {asked:?}");
    // Over a few settle intervals the blocks keep up without chats waiting.
    let (waited, asked) = back_to_back(400, 1, 100, 100_000);
    let waits = waited.iter().filter(|w| **w).count();
    assert!(waits <= 3, "{waits} of 400 chats waited: {asked:?}");
    assert!(
        asked.iter().any(|&k| k >= 64),
        "blocks reach the cap: {asked:?}"
    );
    // A rare user (a chat every ten settle intervals) still gets blocks of one.
    let (_, asked) = back_to_back(20, 1_000, 100, 1_000);
    assert!(
        asked.iter().all(|&k| k == 1),
        "rare user asked for {asked:?}"
    );
}

#[test]
fn the_limit_holds_and_the_rest_are_refused_with_it() {
    let (mut book, mut db) = (LeaseBook::new(settings()), FakeDb::with_limit(3));
    let (u, d) = (user(), day(10));
    for i in 0..5 {
        assert!(matches!(book.admit(&u, d, 0), Admission::NeedsReservation));
        book.wait(&u, d, i, 0);
    }
    let answers = round(&mut book, &mut db, d, 0);
    let taken = answers
        .iter()
        .filter(|a| matches!(a.1, Ok(QuotaTake::Taken(_))))
        .count();
    let exceeded = answers
        .iter()
        .filter(|a| matches!(a.1, Ok(QuotaTake::Exceeded { limit: 3 })))
        .count();
    assert_eq!((taken, exceeded), (3, 2));
    assert_eq!(book.waiting(), 0);
}

#[test]
fn give_back_returns_the_unit_to_the_block_without_a_write() {
    let (mut book, mut db) = (LeaseBook::new(settings()), FakeDb::with_limit(1));
    let (u, d) = (user(), day(10));
    book.admit(&u, d, 0);
    book.wait(&u, d, 1, 0);
    round(&mut book, &mut db, d, 0);
    assert!(matches!(book.admit(&u, d, 1), Admission::NeedsReservation));
    assert!(book.give_back(&u, d));
    assert!(!book.wants_write_now());
    assert!(matches!(book.admit(&u, d, 2), Admission::Taken(_)));
    round(&mut book, &mut db, d, 3);
    assert_eq!((db.used, db.reserved), (1, 0));
}

#[test]
fn midnight_a_unit_taken_before_is_given_back_to_its_own_day() {
    let (mut book, mut db) = (LeaseBook::new(settings()), FakeDb::with_limit(10));
    let u = user();
    let (before, after) = (day(10), day(11));
    book.admit(&u, before, 0);
    book.wait(&u, before, 1, 0);
    round(&mut book, &mut db, before, 0);
    // Midnight passes while the chat runs; it fails and gives its unit back to day 10.
    let answers = round(&mut book, &mut db, after, 1);
    assert!(answers.is_empty());
    assert!(book.give_back(&u, before));
    assert!(!book.give_back(&u, after), "nothing was taken on day 11");
    round(&mut book, &mut db, after, 2);
    let lease = db.leases[&(1, "alice".to_string(), before.as_key())];
    assert_eq!(
        (lease.2, db.used, db.reserved),
        (0, 0, 0),
        "day 10 settled to zero"
    );
    assert!(!db
        .leases
        .contains_key(&(1, "alice".to_string(), after.as_key())));
}

#[test]
fn an_old_day_releases_its_free_units_at_the_next_write() {
    let (mut book, mut db) = (LeaseBook::new(settings()), FakeDb::with_limit(10));
    let (u, d) = (user(), day(10));
    for i in 0..3 {
        book.admit(&u, d, 0);
        book.wait(&u, d, i, 0);
    }
    round(&mut book, &mut db, d, 0);
    assert_eq!(book.free(&u, d), 0);
    book.give_back(&u, d);
    round(&mut book, &mut db, day(11), 1);
    assert_eq!((db.used, db.reserved, book.free(&u, d)), (2, 0, 0));
}

#[test]
fn a_failed_write_fails_waiters_fast_until_a_probe_succeeds() {
    let (mut book, mut db) = (LeaseBook::new(settings()), FakeDb::with_limit(10));
    let (u, d) = (user(), day(10));
    let other = UserId::parse("bob").expect("user");
    book.admit(&u, d, 0);
    book.wait(&u, d, 1, 0);
    round(&mut book, &mut db, d, 0);
    let free = book.free(&u, d);
    assert!(matches!(
        book.admit(&other, d, 1),
        Admission::NeedsReservation
    ));
    book.wait(&other, d, 2, 1);
    let batch = book.next_batch(d, 1, false).expect("batch");
    let answers = book.batch_done(batch, Err("database unreachable".into()), 1);
    assert!(matches!(answers[..], [(2, Err(AppError::Unavailable(_)))]));
    // Known down: no wait, no write, but a user with free units keeps chatting.
    assert!(matches!(
        book.admit(&other, d, 2),
        Admission::Refused(AppError::Unavailable(_))
    ));
    if free > 0 {
        assert!(matches!(book.admit(&u, d, 2), Admission::Taken(_)));
    }
    assert!(
        book.next_batch(d, 500, true).is_none(),
        "no probe before it is due"
    );
    let probe = book.next_batch(d, 1_001, true).expect("probe due");
    let states = db.write(1, &probe);
    book.batch_done(probe, Ok(states), 1_001);
    let after = book.admit(&other, d, 1_002);
    assert!(matches!(after, Admission::NeedsReservation), "{after:?}");
}

#[test]
fn a_lost_answer_is_learned_from_the_database_totals() {
    let (mut book, mut db) = (LeaseBook::new(settings()), FakeDb::with_limit(10));
    let (u, d) = (user(), day(10));
    book.admit(&u, d, 0);
    book.wait(&u, d, 1, 0);
    // The write commits, but its answer is lost.
    let batch = book.next_batch(d, 0, true).expect("batch");
    db.write(1, &batch);
    book.batch_done(batch, Err("connection lost".into()), 0);
    assert_eq!(db.reserved, 1);
    // The next write learns the grant, and the unit is released as the block sits unused.
    let probe = book.next_batch(d, 20_000, true).expect("probe");
    let states = db.write(1, &probe);
    book.batch_done(probe, Ok(states), 20_000);
    let again = book.next_batch(d, 20_001, true).expect("release");
    let states = db.write(1, &again);
    book.batch_done(again, Ok(states), 20_001);
    assert_eq!((db.used, db.reserved), (0, 0));
}

#[test]
fn shutdown_releases_free_units_and_refuses_waiting() {
    let (mut book, mut db) = (LeaseBook::new(settings()), FakeDb::with_limit(100));
    let (u, d) = (user(), day(10));
    for i in 0..10 {
        if let Admission::NeedsReservation = book.admit(&u, d, 0) {
            book.wait(&u, d, i, 0);
            round(&mut book, &mut db, d, 0);
        }
    }
    round(&mut book, &mut db, d, 0);
    book.wait(&u, d, 99, 0);
    let answers = book.shut_down();
    assert!(matches!(answers[..], [(99, Err(AppError::Unavailable(_)))]));
    round(&mut book, &mut db, d, 1);
    assert_eq!((db.used, db.reserved), (10, 0));
    assert!(matches!(book.admit(&u, d, 2), Admission::Refused(_)));
}

#[derive(Clone, Debug)]
enum Op {
    Admit(u8),
    GiveBack(u8),
    Write {
        instance: u8,
        settle: bool,
        fail: bool,
        lose_answer: bool,
    },
    Tick(u16),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..2).prop_map(Op::Admit),
        1 => (0u8..2).prop_map(Op::GiveBack),
        2 => (0u8..2, any::<bool>(), prop::bool::weighted(0.1), prop::bool::weighted(0.1))
            .prop_map(|(instance, settle, fail, lose_answer)| Op::Write { instance, settle, fail, lose_answer }),
        1 => (0u16..15_000).prop_map(Op::Tick),
    ]
}

proptest! {
    /// Two instances share one user: each admits only from what the database granted it,
    /// and together they never pass the limit; once everything is settled and released,
    /// `used` equals the chats that kept their unit.
    #[test]
    fn admissions_never_exceed_reserved_units(limit in 0i64..40, ops in prop::collection::vec(op(), 1..300)) {
        let mut db = FakeDb::with_limit(limit);
        let mut books: Vec<LeaseBook<u32>> = (0..2).map(|_| LeaseBook::new(settings())).collect();
        let (u, d) = (user(), day(10));
        let mut kept = [0i64; 2];
        let mut receipts: Vec<(usize, i64, QuotaStanding)> = Vec::new();
        let mut now = 0u64;
        for op in ops {
            match op {
                Op::Admit(i) => {
                    let book = &mut books[usize::from(i)];
                    match book.admit(&u, d, now) {
                        Admission::Taken(standing) => {
                            kept[usize::from(i)] += 1;
                            receipts.push((usize::from(i), kept[usize::from(i)], standing));
                        }
                        Admission::NeedsReservation => book.wait(&u, d, 0, now),
                        Admission::Refused(_) => {}
                    }
                }
                Op::GiveBack(i) => {
                    if kept[usize::from(i)] > 0 && books[usize::from(i)].give_back(&u, d) {
                        kept[usize::from(i)] -= 1;
                    }
                }
                Op::Write { instance, settle, fail, lose_answer } => {
                    let i = usize::from(instance);
                    if settle {
                        books[i].tick();
                    }
                    if let Some(batch) = books[i].next_batch(d, now, settle) {
                        let result = if fail {
                            Err("down".to_string())
                        } else {
                            let states = db.write(instance.into(), &batch);
                            if lose_answer { Err("answer lost".to_string()) } else { Ok(states) }
                        };
                        for (_, answer) in books[i].batch_done(batch, result, now) {
                            if let Ok(QuotaTake::Taken(standing)) = answer {
                                kept[i] += 1;
                                receipts.push((i, kept[i], standing));
                            }
                        }
                    }
                }
                Op::Tick(ms) => now += u64::from(ms),
            }
            prop_assert!(kept[0] + kept[1] <= limit, "kept {kept:?} over limit {limit}");
            for (i, book) in books.iter().enumerate() {
                let block = book.blocks.get(&(u.clone(), d));
                let granted = block.map_or(0, |b| b.granted - b.released);
                prop_assert!(kept[i] <= granted.max(0), "instance {i} kept {} of {granted}", kept[i]);
            }
            prop_assert!(db.used + db.reserved <= limit.max(0));
            // A receipt counts at least the chats its own instance kept (this one among
            // them) and never more than the limit.
            for (i, kept_then, standing) in receipts.drain(..) {
                prop_assert!(
                    kept_then <= standing.used && standing.used <= limit && standing.limit == limit,
                    "instance {i}: receipt {standing:?} with {kept_then} kept, limit {limit}"
                );
            }
        }
        // Settle and release everything; the database then says exactly what was kept.
        now += 1_000_000;
        for (i, book) in books.iter_mut().enumerate() {
            for _ in 0..20 {
                if let Some(batch) = book.next_batch(d, now, true) {
                    let states = db.write(i as u32, &batch);
                    for (_, answer) in book.batch_done(batch, Ok(states), now) {
                        if let Ok(QuotaTake::Taken(_)) = answer {
                            kept[i] += 1;
                        }
                    }
                }
                now += 20_000;
            }
        }
        prop_assert_eq!(db.used, kept[0] + kept[1]);
        prop_assert_eq!(db.reserved, 0);
    }
}
