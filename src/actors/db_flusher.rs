//! The only writer of session and usage rows. Rows are buffered and written in batches on a
//! timer or when the buffer passes a threshold, one write in flight at most, each batch in one
//! transaction on the blocking pool. A batch that fails transiently is retried unchanged with
//! backoff, so its effects land once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::db::models::SessionRow;
use crate::db::queries::{sessions, write_transaction};
use crate::db::retry::{Backoff, Transience};
use crate::db::{DbError, DbPool};
use crate::error::AppError;

#[derive(Message)]
#[rtype(result = "()")]
pub struct EnqueueSession {
    pub row: SessionRow,
}

/// Resolves once every row enqueued before it is committed (or the flusher gave up on them).
#[derive(Message)]
#[rtype(result = "Result<(), AppError>")]
pub struct Flush;

/// Final flush at shutdown; safe to send twice.
#[derive(Message)]
#[rtype(result = "Result<(), AppError>")]
pub struct Shutdown;

#[derive(Message)]
#[rtype(result = "FlusherStats")]
pub struct GetFlusherStats;

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FlusherStats {
    pub buffered: usize,
    pub written: u64,
    pub dropped: u64,
    pub retries: u64,
    pub last_error: Option<String>,
    pub batches: u64,
}

/// One unit of work for the database. Kept whole across retries.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub sessions: Vec<SessionRow>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Where batches go. The real one writes to the database; tests substitute their own.
pub trait BatchWriter: Send + Sync + 'static {
    fn write(&self, batch: &Batch) -> Result<(), DbError>;
}

pub struct DbBatchWriter {
    pub db: DbPool,
}

impl BatchWriter for DbBatchWriter {
    fn write(&self, batch: &Batch) -> Result<(), DbError> {
        self.db.run_blocking(&|conn: &mut crate::db::DbConnection| {
            write_transaction(conn, |conn| {
                sessions::upsert_sessions(conn, &batch.sessions)?;
                Ok(())
            })
        })
    }
}

/// Rows waiting for the next batch. Session rows coalesce: only a session's latest state
/// matters.
#[derive(Default)]
struct Buffer {
    sessions: HashMap<String, SessionRow>,
}

impl Buffer {
    fn len(&self) -> usize {
        self.sessions.len()
    }

    fn take(&mut self, max_rows: usize) -> Batch {
        let mut batch = Batch::default();
        let keys: Vec<String> = self.sessions.keys().take(max_rows).cloned().collect();
        for key in keys {
            if let Some(row) = self.sessions.remove(&key) {
                batch.sessions.push(row);
            }
        }
        batch
    }
}

#[derive(Clone, Debug)]
pub struct FlusherSettings {
    pub interval: Duration,
    /// A buffer this large is written without waiting for the timer.
    pub flush_threshold_rows: usize,
    pub max_batch_rows: usize,
    pub retry: Backoff,
}

pub struct DbFlusher {
    writer: Arc<dyn BatchWriter>,
    settings: FlusherSettings,
    buffer: Buffer,
    /// The batch being written or waiting to be retried.
    pending: Option<Batch>,
    writing: bool,
    retry_attempt: u32,
    retry_at: Option<Instant>,
    stats: FlusherStats,
    /// Each enqueue bumps `enqueued`; a waiter is released once `committed` reaches its mark.
    enqueued: u64,
    committed: u64,
    waiters: Vec<(u64, oneshot::Sender<Result<(), AppError>>)>,
}

impl DbFlusher {
    pub fn new(writer: Arc<dyn BatchWriter>, settings: FlusherSettings) -> DbFlusher {
        DbFlusher {
            writer,
            settings,
            buffer: Buffer::default(),
            pending: None,
            writing: false,
            retry_attempt: 0,
            retry_at: None,
            stats: FlusherStats::default(),
            enqueued: 0,
            committed: 0,
            waiters: Vec::new(),
        }
    }

    fn buffered(&self) -> usize {
        self.buffer.len() + self.pending.as_ref().map_or(0, Batch::len)
    }

    /// Starts a write if none runs and there is something to write (and no backoff pending).
    fn flush_due(&mut self, ctx: &mut Context<Self>) {
        if self.writing {
            return;
        }
        if self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        if self.pending.is_none() {
            let batch = self.buffer.take(self.settings.max_batch_rows);
            if batch.is_empty() {
                self.release_waiters();
                return;
            }
            self.pending = Some(batch);
        }
        let Some(batch) = self.pending.clone() else {
            return;
        };
        // Everything enqueued up to now is either in this batch or still buffered; record the
        // mark this batch completes only when the buffer is empty behind it.
        let mark = if self.buffer.len() == 0 {
            self.enqueued
        } else {
            self.committed
        };
        self.writing = true;
        let writer = self.writer.clone();
        let rows = batch.len();
        let write = async move {
            actix_web::rt::task::spawn_blocking(move || writer.write(&batch))
                .await
                .map_err(|_| DbError::Canceled)
                .and_then(|r| r)
        };
        ctx.spawn(write.into_actor(self).map(move |result, act, ctx| {
            act.writing = false;
            act.stats.batches += 1;
            match result {
                Ok(()) => {
                    act.pending = None;
                    act.retry_attempt = 0;
                    act.retry_at = None;
                    act.stats.written += rows as u64;
                    act.committed = act.committed.max(mark);
                    act.release_waiters();
                    if act.buffer.len() > 0 {
                        act.flush_due(ctx);
                    }
                }
                Err(err) => act.write_failed(err, ctx),
            }
        }));
    }

    fn write_failed(&mut self, err: DbError, ctx: &mut Context<Self>) {
        self.stats.last_error = Some(err.to_string());
        let delay = match err.transience() {
            Transience::Transient => {
                // Keep retrying while the database is away: the rows are the usage record.
                let attempt = self
                    .retry_attempt
                    .min(self.settings.retry.max_retries.saturating_sub(1));
                self.settings
                    .retry
                    .delay(attempt)
                    .unwrap_or(self.settings.retry.cap)
            }
            Transience::Permanent => {
                log::error!(
                    "event=flush_failed permanent=true rows={} error={err}",
                    self.pending.as_ref().map_or(0, Batch::len)
                );
                if let Some(batch) = self.pending.take() {
                    self.stats.dropped += batch.len() as u64;
                }
                self.release_waiters_with_error(&err);
                return;
            }
        };
        self.stats.retries += 1;
        self.retry_attempt += 1;
        log::warn!(
            "event=flush_retry attempt={} delay_ms={} error={err}",
            self.retry_attempt,
            delay.as_millis()
        );
        self.retry_at = Some(Instant::now() + delay);
        ctx.run_later(delay, |act, ctx| {
            act.retry_at = None;
            act.flush_due(ctx);
        });
    }

    fn release_waiters(&mut self) {
        let idle = self.pending.is_none() && self.buffer.len() == 0;
        let committed = if idle { self.enqueued } else { self.committed };
        let (done, waiting): (Vec<_>, Vec<_>) = self
            .waiters
            .drain(..)
            .partition(|(mark, _)| *mark <= committed);
        self.waiters = waiting;
        for (_, tx) in done {
            let _ = tx.send(Ok(()));
        }
    }

    fn release_waiters_with_error(&mut self, err: &DbError) {
        for (_, tx) in self.waiters.drain(..) {
            let _ = tx.send(Err(AppError::Internal(format!("flush failed: {err}"))));
        }
    }

    fn after_enqueue(&mut self, ctx: &mut Context<Self>) {
        self.enqueued += 1;
        if self.buffer.len() >= self.settings.flush_threshold_rows {
            self.flush_due(ctx);
        }
    }

    fn wait_for_commit(&mut self, ctx: &mut Context<Self>) -> ResponseFuture<Result<(), AppError>> {
        let (tx, rx) = oneshot::channel();
        self.waiters.push((self.enqueued, tx));
        // Write now instead of waiting for the timer; a backoff in progress is honoured.
        self.flush_due(ctx);
        Box::pin(async move {
            rx.await
                .map_err(|_| AppError::Unavailable("the flusher stopped".into()))?
        })
    }
}

impl Actor for DbFlusher {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        ctx.run_interval(self.settings.interval, |act, ctx| act.flush_due(ctx));
        log::info!(
            "event=actor_started actor=db_flusher interval_ms={}",
            self.settings.interval.as_millis()
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let left = self.buffered();
        if left > 0 {
            log::warn!("event=flusher_stopped rows_not_written={left}");
        }
    }
}

impl Handler<EnqueueSession> for DbFlusher {
    type Result = ();

    fn handle(&mut self, msg: EnqueueSession, ctx: &mut Context<Self>) {
        self.buffer.sessions.insert(msg.row.id.clone(), msg.row);
        self.after_enqueue(ctx);
    }
}

impl Handler<Flush> for DbFlusher {
    type Result = ResponseFuture<Result<(), AppError>>;

    fn handle(&mut self, _: Flush, ctx: &mut Context<Self>) -> Self::Result {
        self.wait_for_commit(ctx)
    }
}

impl Handler<Shutdown> for DbFlusher {
    type Result = ResponseFuture<Result<(), AppError>>;

    fn handle(&mut self, _: Shutdown, ctx: &mut Context<Self>) -> Self::Result {
        log::info!("event=flusher_shutdown buffered={}", self.buffered());
        self.wait_for_commit(ctx)
    }
}

impl Handler<GetFlusherStats> for DbFlusher {
    type Result = MessageResult<GetFlusherStats>;

    fn handle(&mut self, _: GetFlusherStats, _: &mut Context<Self>) -> Self::Result {
        let mut stats = self.stats.clone();
        stats.buffered = self.buffered();
        MessageResult(stats)
    }
}
