//! The only writer of session and usage rows. Rows are buffered and written in batches on a
//! timer or when the buffer passes a threshold, one write in flight at most, each batch in one
//! transaction on the blocking pool. A batch that fails transiently is retried unchanged with
//! backoff, so its effects land once.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;
use serde::Serialize;
use tokio::sync::oneshot;

use crate::db::models::{RequestRow, RollupRow, SessionRow, MINUTE_MS};
use crate::db::queries::{now_ms, sessions, usage, write_transaction};
use crate::db::retry::{Backoff, Transience};
use crate::db::{DbError, DbPool};
use crate::error::AppError;

#[derive(Message)]
#[rtype(result = "()")]
pub struct EnqueueSession {
    pub row: SessionRow,
}

/// One admitted chat's row; also counted into its minute's rollup at once, so dropping the raw
/// row under pressure never loses it from the usage totals.
#[derive(Message)]
#[rtype(result = "()")]
pub struct EnqueueRequest {
    pub row: RequestRow,
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

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FlusherStats {
    pub buffered: usize,
    pub written: u64,
    pub dropped: u64,
    pub retries: u64,
    pub last_error: Option<String>,
    pub batches: u64,
}

/// One unit of work for the database, applied in one transaction. Kept whole across
/// retries; its id makes a retry after an unacknowledged commit a no-op.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    pub id: String,
    pub sessions: Vec<SessionRow>,
    pub requests: Vec<RequestRow>,
    pub rollups: Vec<RollupRow>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.sessions.len() + self.requests.len() + self.rollups.len()
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
                let now = now_ms();
                if !usage::claim_batch(conn, &batch.id, now)? {
                    log::warn!("event=flush_batch_already_applied batch={}", batch.id);
                    return Ok(());
                }
                sessions::upsert_sessions(conn, &batch.sessions)?;
                usage::insert_requests(conn, &batch.requests)?;
                usage::add_rollups(conn, &batch.rollups)?;
                // The ledger only has to outlive any retry of a batch.
                usage::prune_batches(conn, now - BATCH_LEDGER_KEEP_MS)?;
                Ok(())
            })
        })
    }
}

/// How long applied batch ids are remembered (far longer than any retry takes).
const BATCH_LEDGER_KEEP_MS: i64 = 24 * 3600 * 1000;

/// Rows waiting for the next batch. Session rows coalesce (only a session's latest state
/// matters); rollups accumulate per (minute, model) and are never dropped.
#[derive(Default)]
struct Buffer {
    sessions: HashMap<String, SessionRow>,
    requests: VecDeque<RequestRow>,
    rollups: HashMap<(i64, String), RollupRow>,
}

impl Buffer {
    fn len(&self) -> usize {
        self.sessions.len() + self.requests.len() + self.rollups.len()
    }

    fn add_request(&mut self, row: RequestRow) {
        let minute = row.started_at.div_euclid(MINUTE_MS) * MINUTE_MS;
        self.rollups
            .entry((minute, row.model.clone()))
            .or_insert_with(|| RollupRow {
                bucket_start: minute,
                model: row.model.clone(),
                ..RollupRow::default()
            })
            .add(&row);
        self.requests.push_back(row);
    }

    fn take(&mut self, max_rows: usize) -> Batch {
        let mut batch = Batch {
            id: uuid::Uuid::new_v4().to_string(),
            ..Batch::default()
        };
        let take_requests = self.requests.len().min(max_rows);
        batch.requests.extend(self.requests.drain(..take_requests));
        // Rollups are few (minutes × models) and always go whole, so the totals they carry
        // are never split across batches.
        batch
            .rollups
            .extend(self.rollups.drain().map(|(_, row)| row));
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
    /// Raw request rows held at most while the database is away; past it the oldest are
    /// dropped (and counted). Rollups are not bounded by this and never dropped.
    pub max_buffered_requests: usize,
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

impl Handler<EnqueueRequest> for DbFlusher {
    type Result = ();

    fn handle(&mut self, msg: EnqueueRequest, ctx: &mut Context<Self>) {
        self.buffer.add_request(msg.row);
        if self.buffer.requests.len() > self.settings.max_buffered_requests {
            self.buffer.requests.pop_front();
            self.stats.dropped += 1;
            if self.stats.dropped.is_power_of_two() {
                log::warn!(
                    "event=flusher_dropped_rows total={} reason=buffer_full",
                    self.stats.dropped
                );
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Mutex;

    /// Records what it is asked to write; optionally fails the first attempts. The Mutex is
    /// the test's own ledger, not shared application state.
    #[derive(Default)]
    struct RecordingWriter {
        in_flight: AtomicUsize,
        overlapped: AtomicBool,
        batches: AtomicUsize,
        fail_first: AtomicUsize,
        seen: Mutex<Vec<(String, usize)>>,
    }

    impl BatchWriter for RecordingWriter {
        fn write(&self, batch: &Batch) -> Result<(), DbError> {
            if self.in_flight.fetch_add(1, Ordering::SeqCst) > 0 {
                self.overlapped.store(true, Ordering::SeqCst);
            }
            std::thread::sleep(Duration::from_millis(2));
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            self.seen
                .lock()
                .map(|mut seen| seen.push((batch.id.clone(), batch.requests.len())))
                .ok();
            if self.fail_first.load(Ordering::SeqCst) > 0 {
                self.fail_first.fetch_sub(1, Ordering::SeqCst);
                return Err(DbError::Query(diesel::result::Error::DatabaseError(
                    diesel::result::DatabaseErrorKind::ClosedConnection,
                    Box::new("connection closed".to_string()),
                )));
            }
            self.batches.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    }

    fn row(i: usize) -> RequestRow {
        RequestRow {
            id: format!("r{i}"),
            user_id: "u".into(),
            session_id: None,
            model: "echo".into(),
            started_at: 0,
            latency_ms: 1,
            tokens_in: 1,
            tokens_out: 1,
            estimated: false,
            outcome: "ok".into(),
            rolled_up: true,
        }
    }

    fn settings() -> FlusherSettings {
        FlusherSettings {
            interval: Duration::from_millis(50),
            flush_threshold_rows: 500,
            max_batch_rows: 1_000,
            max_buffered_requests: 1_000_000,
            retry: Backoff {
                base: Duration::from_millis(5),
                cap: Duration::from_millis(20),
                max_retries: 3,
            },
        }
    }

    #[actix::test]
    async fn ten_thousand_records_never_overlap_writes_and_batch_together() {
        let writer = Arc::new(RecordingWriter::default());
        let flusher = DbFlusher::new(writer.clone(), settings()).start();
        for i in 0..10_000 {
            flusher.do_send(EnqueueRequest { row: row(i) });
        }
        flusher.send(Flush).await.expect("mailbox").expect("flush");
        let stats = flusher.send(GetFlusherStats).await.expect("stats");
        assert!(
            !writer.overlapped.load(Ordering::SeqCst),
            "two writes ran at once"
        );
        let batches = writer.batches.load(Ordering::SeqCst);
        assert!((10..10_000).contains(&batches), "{batches} batches");
        let written_requests: usize = writer
            .seen
            .lock()
            .map(|s| s.iter().map(|(_, n)| n).sum())
            .unwrap_or(0);
        assert_eq!(written_requests, 10_000, "every row written once");
        assert_eq!(stats.buffered, 0);
        assert_eq!(stats.dropped, 0);
    }

    #[actix::test]
    async fn a_failed_batch_is_retried_unchanged() {
        let writer = Arc::new(RecordingWriter::default());
        writer.fail_first.store(2, Ordering::SeqCst);
        let flusher = DbFlusher::new(writer.clone(), settings()).start();
        for i in 0..10 {
            flusher.do_send(EnqueueRequest { row: row(i) });
        }
        flusher.send(Flush).await.expect("mailbox").expect("flush");
        let seen = writer.seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(seen.len(), 3, "two failures then success: {seen:?}");
        assert!(
            seen.iter().all(|(id, n)| *id == seen[0].0 && *n == 10),
            "same batch each time: {seen:?}"
        );
        let stats = flusher.send(GetFlusherStats).await.expect("stats");
        assert_eq!(stats.retries, 2);
        assert!(stats.last_error.is_some());
    }

    #[actix::test]
    async fn full_buffer_drops_oldest_raw_rows_but_keeps_their_rollups() {
        let writer = Arc::new(RecordingWriter::default());
        // Stop writes from draining the buffer during the test: fail until told otherwise.
        writer.fail_first.store(usize::MAX / 2, Ordering::SeqCst);
        let mut s = settings();
        s.max_buffered_requests = 100;
        s.flush_threshold_rows = usize::MAX;
        s.interval = Duration::from_secs(3600);
        let flusher = DbFlusher::new(writer.clone(), s).start();
        for i in 0..150 {
            flusher.do_send(EnqueueRequest { row: row(i) });
        }
        let stats = flusher.send(GetFlusherStats).await.expect("stats");
        assert_eq!(stats.dropped, 50);
        // 100 raw rows plus one rollup row for (minute 0, echo) that still counts all 150.
        assert_eq!(stats.buffered, 101);
    }
}
