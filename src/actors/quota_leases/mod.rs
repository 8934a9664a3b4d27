//! Admission against the daily quota from memory, backed by leases in the database (the
//! bookkeeping is [`state::LeaseBook`]). A chat with a free unit in its user's block is
//! admitted at once; the database is written in the background, one batch at a time:
//! reservations when a block runs low, settlements every flush interval, releases of idle
//! blocks. Only a user's first chat (or one after their block ran dry) waits for a write.

mod state;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::db::queries::quota::{self, LeaseState, LeaseWrite};
use crate::db::queries::{now_ms, write_transaction};
use crate::db::retry::Transience;
use crate::db::{DbConnection, DbError, DbPool};
use crate::domain::{QuotaDay, QuotaTake, UserId};
use crate::error::AppError;

pub use state::{Admission, Batch, LeaseBook, LeaseSettings};

/// Takes one unit of the user's quota for `day` (read once per chat by the caller).
#[derive(Message)]
#[rtype(result = "Result<QuotaTake, AppError>")]
pub struct TakeQuota {
    pub user: UserId,
    pub day: QuotaDay,
}

/// Gives back a unit taken for a chat that failed before the user got anything; `day` is the
/// one the unit was taken for.
#[derive(Message)]
#[rtype(result = "()")]
pub struct GiveBackQuota {
    pub user: UserId,
    pub day: QuotaDay,
}

/// Settles every consumed unit into the database now; answers when written.
#[derive(Message)]
#[rtype(result = "Result<(), AppError>")]
pub struct SettleNow;

/// Shutdown: refuses further reservations and hands every free unit back; answers when written.
#[derive(Message)]
#[rtype(result = "Result<(), AppError>")]
pub struct ReleaseAll;

/// The most units one reservation asks for: a busy user's block is refilled ahead of need
/// with few writes, and little sits idle when they stop (idle blocks go back anyway).
const MAX_BLOCK: i64 = 256;
/// Chats waiting for a reservation, all users together; more get `unavailable` at once.
const MAX_WAITERS: usize = 10_000;
/// How long after a failed write the database is tried again; meanwhile chats that need a
/// reservation get `unavailable` without waiting.
const PROBE_AFTER: Duration = Duration::from_secs(1);
/// A block unused this long hands its free units back, so another instance can have them.
const IDLE_AFTER: Duration = Duration::from_secs(10);
/// Attempts per batch before the database counts as down: one more covers a connection that
/// broke while idle in the pool.
const WRITE_ATTEMPTS: u32 = 2;

type Answer = Result<QuotaTake, AppError>;
type Waiter = oneshot::Sender<Answer>;

pub struct QuotaLeases {
    book: LeaseBook<Waiter>,
    db: DbPool,
    /// Names this instance's lease rows; new at every start, so a restarted instance never
    /// mistakes a dead one's leases for its own.
    holder: Arc<str>,
    default_limit: i64,
    settle_every: Duration,
    clock: Instant,
    /// Answered after the next settling write.
    settle_requests: Vec<oneshot::Sender<Result<(), AppError>>>,
    /// Answered when the write in flight is done.
    in_flight_requests: Vec<oneshot::Sender<Result<(), AppError>>>,
    pruned_for: Option<QuotaDay>,
}

impl QuotaLeases {
    pub fn new(db: DbPool, default_limit: i64, settle_every: Duration) -> QuotaLeases {
        QuotaLeases {
            book: LeaseBook::new(LeaseSettings {
                idle_after_ms: IDLE_AFTER.as_millis() as u64,
                max_block: MAX_BLOCK,
                max_waiters: MAX_WAITERS,
                probe_after_ms: PROBE_AFTER.as_millis() as u64,
            }),
            db,
            holder: Arc::from(uuid::Uuid::new_v4().simple().to_string()),
            default_limit,
            settle_every,
            clock: Instant::now(),
            settle_requests: Vec::new(),
            in_flight_requests: Vec::new(),
            pruned_for: None,
        }
    }

    fn now_ms(&self) -> u64 {
        self.clock.elapsed().as_millis() as u64
    }

    /// Starts the next write if one is due and none is in flight.
    fn write(&mut self, settle: bool, ctx: &mut Context<Self>) {
        let settle = settle || !self.settle_requests.is_empty();
        let now = self.now_ms();
        let today = QuotaDay::today();
        let Some(batch) = self.book.next_batch(today, now, settle) else {
            if !self.book.is_writing() {
                // Nothing to write: everything asked for is settled, or cannot be now.
                let down = self.book.is_down();
                for tx in self.settle_requests.drain(..) {
                    let _ = tx.send(if down {
                        Err(AppError::Unavailable("the database is unreachable".into()))
                    } else {
                        Ok(())
                    });
                }
            }
            return;
        };
        if settle {
            self.in_flight_requests.append(&mut self.settle_requests);
        }
        // Lease rows of days before yesterday are forgotten once a day.
        let prune = (self.pruned_for != Some(today)).then(|| {
            self.pruned_for = Some(today);
            today.previous().as_key()
        });
        let job = write_job(
            self.holder.clone(),
            batch.writes.clone(),
            self.default_limit,
            prune,
        );
        let db = self.db.clone();
        ctx.spawn(
            run_job(db, job)
                .into_actor(self)
                .map(move |result, act, ctx| {
                    if let Err(cause) = &result {
                        log::warn!(
                            "event=quota_write_failed writes={} error={cause}",
                            batch.writes.len()
                        );
                    }
                    let failed = result.as_ref().err().cloned();
                    let now = act.now_ms();
                    for (waiter, answer) in act.book.batch_done(batch, result, now) {
                        let _ = waiter.send(answer);
                    }
                    for tx in act.in_flight_requests.drain(..) {
                        let _ = tx.send(match &failed {
                            None => Ok(()),
                            Some(cause) => Err(AppError::Unavailable(format!(
                                "quota units could not be settled ({cause})"
                            ))),
                        });
                    }
                    if act.book.wants_write_now() || !act.settle_requests.is_empty() {
                        act.write(false, ctx);
                    }
                }),
        );
    }
}

type Job = Arc<dyn Fn(&mut DbConnection) -> diesel::QueryResult<Vec<LeaseState>> + Send + Sync>;

fn write_job(
    holder: Arc<str>,
    writes: Vec<LeaseWrite>,
    default_limit: i64,
    prune_before: Option<String>,
) -> Job {
    Arc::new(move |conn: &mut DbConnection| {
        write_transaction(conn, |conn| {
            let now = now_ms();
            let states = writes
                .iter()
                .map(|w| quota::apply_lease_write(conn, &holder, w, default_limit, now))
                .collect::<diesel::QueryResult<Vec<_>>>()?;
            if let Some(day) = &prune_before {
                quota::prune_leases(conn, day)?;
            }
            Ok(states)
        })
    })
}

/// Runs a batch's transaction off the async workers. A retry after a lost answer repeats the
/// same writes with the same sequence numbers, which the database applies at most once.
async fn run_job(db: DbPool, job: Job) -> Result<Vec<LeaseState>, String> {
    let mut attempt = 1;
    loop {
        let (pool, job_now) = (db.clone(), job.clone());
        let result = actix_web::web::block(move || {
            pool.run_blocking(&|conn: &mut DbConnection| job_now(conn))
        })
        .await
        .map_err(|_| DbError::Canceled)
        .and_then(|r| r);
        match result {
            Ok(states) => return Ok(states),
            Err(err) if err.transience() == Transience::Transient && attempt < WRITE_ATTEMPTS => {
                attempt += 1;
            }
            Err(err) => return Err(short(&err).to_string()),
        }
    }
}

fn short(err: &DbError) -> &'static str {
    match err {
        DbError::Pool(_) => "database unreachable",
        DbError::Query(_) => "database error",
        DbError::Canceled => "shutting down",
    }
}

impl Actor for QuotaLeases {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        ctx.run_interval(self.settle_every, |act, ctx| {
            act.book.tick();
            act.write(true, ctx);
        });
        log::info!("event=actor_started actor=quota_leases");
    }
}

impl Handler<TakeQuota> for QuotaLeases {
    type Result = actix::Response<Answer>;

    fn handle(&mut self, msg: TakeQuota, ctx: &mut Context<Self>) -> Self::Result {
        let now = self.now_ms();
        match self.book.admit(&msg.user, msg.day, now) {
            Admission::Taken(standing) => {
                if self.book.wants_write_now() {
                    self.write(false, ctx);
                }
                actix::Response::reply(Ok(QuotaTake::Taken(standing)))
            }
            Admission::Refused(err) => actix::Response::reply(Err(err)),
            Admission::NeedsReservation => {
                let (tx, rx) = oneshot::channel();
                self.book.wait(&msg.user, msg.day, tx, now);
                if self.book.wants_write_now() {
                    self.write(false, ctx);
                }
                actix::Response::fut(async move {
                    rx.await.unwrap_or_else(|_| {
                        Err(AppError::Unavailable("the quota keeper stopped".into()))
                    })
                })
            }
        }
    }
}

impl Handler<GiveBackQuota> for QuotaLeases {
    type Result = ();

    fn handle(&mut self, msg: GiveBackQuota, _: &mut Context<Self>) {
        if !self.book.give_back(&msg.user, msg.day) {
            log::warn!(
                "event=quota_give_back_unmatched user={} day={}",
                msg.user,
                msg.day.as_key()
            );
        }
    }
}

impl Handler<SettleNow> for QuotaLeases {
    type Result = actix::Response<Result<(), AppError>>;

    fn handle(&mut self, _: SettleNow, ctx: &mut Context<Self>) -> Self::Result {
        let (tx, rx) = oneshot::channel();
        self.settle_requests.push(tx);
        self.write(true, ctx);
        actix::Response::fut(async move {
            rx.await
                .unwrap_or_else(|_| Err(AppError::Unavailable("the quota keeper stopped".into())))
        })
    }
}

impl Handler<ReleaseAll> for QuotaLeases {
    type Result = actix::Response<Result<(), AppError>>;

    fn handle(&mut self, _: ReleaseAll, ctx: &mut Context<Self>) -> Self::Result {
        for (waiter, answer) in self.book.shut_down() {
            let _ = waiter.send(answer);
        }
        self.handle(SettleNow, ctx)
    }
}

/// How long a client over quota should wait: until the next UTC midnight.
pub fn quota_retry_after() -> Duration {
    QuotaDay::until_next_day(chrono::Utc::now())
}
