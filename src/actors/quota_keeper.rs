//! The per-chat database touch: taking (and giving back) daily quota units, and creating or
//! reading a user's row at handshake. Requests arriving while a batch runs are queued and
//! written together in the next batch, one transaction, one batch in flight: under load the
//! database sees few large transactions instead of a storm of small ones, and SQLite's single
//! writer is never contended from inside the process.

use std::time::Duration;

use actix::prelude::*;
use tokio::sync::oneshot;

use crate::db::models::UserRow;
use crate::db::queries::quota::{self, QuotaTake};
use crate::db::queries::{now_ms, users, write_transaction};
use crate::db::{DbConnection, DbError, DbPool};
use crate::domain::{QuotaDay, UserId};
use crate::error::AppError;

/// Takes one unit of the user's quota for today.
#[derive(Message)]
#[rtype(result = "Result<QuotaTake, AppError>")]
pub struct TakeQuota {
    pub user: UserId,
    pub day: QuotaDay,
}

/// Gives back a unit taken for a request that failed before the user got anything.
#[derive(Message)]
#[rtype(result = "Result<(), AppError>")]
pub struct GiveBackQuota {
    pub user: UserId,
    pub day: QuotaDay,
}

/// The user's row, created with the default quota on first use.
#[derive(Message)]
#[rtype(result = "Result<UserRow, AppError>")]
pub struct EnsureUser {
    pub user: UserId,
}

#[derive(Clone, Debug)]
enum Op {
    Take { user: UserId, day: String },
    GiveBack { user: UserId, day: String },
    Ensure { user: UserId },
}

#[derive(Debug)]
enum OpResult {
    Taken(QuotaTake),
    GivenBack,
    User(UserRow),
}

type Reply = oneshot::Sender<Result<OpResult, AppError>>;

pub struct QuotaKeeper {
    db: DbPool,
    default_limit: i64,
    max_batch: usize,
    queue: Vec<(Op, Reply)>,
    writing: bool,
}

impl QuotaKeeper {
    pub fn new(db: DbPool, default_limit: i64) -> QuotaKeeper {
        QuotaKeeper {
            db,
            default_limit,
            max_batch: 512,
            queue: Vec::new(),
            writing: false,
        }
    }

    fn submit(
        &mut self,
        op: Op,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<OpResult, AppError>> {
        let (tx, rx) = oneshot::channel();
        self.queue.push((op, tx));
        self.write_next(ctx);
        rx
    }

    fn write_next(&mut self, ctx: &mut Context<Self>) {
        if self.writing || self.queue.is_empty() {
            return;
        }
        let take = self.queue.len().min(self.max_batch);
        let mut batch: Vec<(Op, Reply)> = self.queue.drain(..take).collect();
        // One lock order for every instance: two batches touching the same users cannot
        // deadlock on PostgreSQL.
        batch.sort_by(|a, b| op_user(&a.0).cmp(op_user(&b.0)));
        let (ops, replies): (Vec<Op>, Vec<Reply>) = batch.into_iter().unzip();
        self.writing = true;
        let db = self.db.clone();
        let default_limit = self.default_limit;
        let write = async move {
            db.run(move |conn| {
                write_transaction(conn, |conn| {
                    ops.iter()
                        .map(|op| apply(conn, op, default_limit))
                        .collect::<diesel::QueryResult<Vec<_>>>()
                })
            })
            .await
        };
        ctx.spawn(write.into_actor(self).map(
            |result: Result<Vec<OpResult>, DbError>, act, ctx| {
                act.writing = false;
                match result {
                    Ok(results) => {
                        for (reply, result) in replies.into_iter().zip(results) {
                            let _ = reply.send(Ok(result));
                        }
                    }
                    Err(err) => {
                        log::warn!("event=quota_batch_failed ops={} error={err}", replies.len());
                        for reply in replies {
                            let _ = reply.send(Err(fail_closed(&err)));
                        }
                    }
                }
                act.write_next(ctx);
            },
        ));
    }
}

/// Nobody passes a quota because the database is down: every failure is `unavailable`.
fn fail_closed(err: &DbError) -> AppError {
    AppError::Unavailable(format!(
        "the quota cannot be checked right now ({}); try again shortly",
        short(err)
    ))
}

fn short(err: &DbError) -> &'static str {
    match err {
        DbError::Pool(_) => "database unreachable",
        DbError::Query(_) => "database error",
        DbError::Canceled => "shutting down",
    }
}

fn op_user(op: &Op) -> &str {
    match op {
        Op::Take { user, .. } | Op::GiveBack { user, .. } | Op::Ensure { user } => user.as_str(),
    }
}

fn apply(conn: &mut DbConnection, op: &Op, default_limit: i64) -> diesel::QueryResult<OpResult> {
    match op {
        Op::Take { user, day } => {
            quota::take_unit(conn, user.as_str(), day, default_limit, now_ms()).map(OpResult::Taken)
        }
        Op::GiveBack { user, day } => {
            quota::give_back_unit(conn, user.as_str(), day).map(|_| OpResult::GivenBack)
        }
        Op::Ensure { user } => {
            users::ensure_user(conn, user.as_str(), now_ms()).map(OpResult::User)
        }
    }
}

async fn await_reply(
    rx: oneshot::Receiver<Result<OpResult, AppError>>,
) -> Result<OpResult, AppError> {
    rx.await
        .map_err(|_| AppError::Unavailable("the quota keeper stopped".into()))?
}

impl Actor for QuotaKeeper {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        log::info!("event=actor_started actor=quota_keeper");
    }
}

impl Handler<TakeQuota> for QuotaKeeper {
    type Result = ResponseFuture<Result<QuotaTake, AppError>>;

    fn handle(&mut self, msg: TakeQuota, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.submit(
            Op::Take {
                user: msg.user,
                day: msg.day.as_key(),
            },
            ctx,
        );
        Box::pin(async move {
            match await_reply(rx).await? {
                OpResult::Taken(take) => Ok(take),
                other => Err(AppError::internal(format!(
                    "quota keeper answered {other:?} to a take"
                ))),
            }
        })
    }
}

impl Handler<GiveBackQuota> for QuotaKeeper {
    type Result = ResponseFuture<Result<(), AppError>>;

    fn handle(&mut self, msg: GiveBackQuota, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.submit(
            Op::GiveBack {
                user: msg.user,
                day: msg.day.as_key(),
            },
            ctx,
        );
        Box::pin(async move { await_reply(rx).await.map(|_| ()) })
    }
}

impl Handler<EnsureUser> for QuotaKeeper {
    type Result = ResponseFuture<Result<UserRow, AppError>>;

    fn handle(&mut self, msg: EnsureUser, ctx: &mut Context<Self>) -> Self::Result {
        let rx = self.submit(Op::Ensure { user: msg.user }, ctx);
        Box::pin(async move {
            match await_reply(rx).await? {
                OpResult::User(row) => Ok(row),
                other => Err(AppError::internal(format!(
                    "quota keeper answered {other:?} to ensure"
                ))),
            }
        })
    }
}

/// How long a client over quota should wait: until the next UTC midnight.
pub fn quota_retry_after() -> Duration {
    QuotaDay::until_next_day(chrono::Utc::now())
}
