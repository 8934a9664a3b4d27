//! The only writer of session and usage rows. Rows are buffered and written in batches on a
//! timer or when the buffer passes a threshold, one write in flight at most, each batch in one
//! transaction on the blocking pool. A batch that fails transiently is retried unchanged with
//! backoff, so its effects land once; one the database refuses is bisected until only the
//! refused rows are left out. The bookkeeping lives in [`FlusherState`].

mod messages;
mod state;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;
use tokio::sync::oneshot;

pub use messages::{
    EnqueueRequest, EnqueueSession, Flush, FlusherStats, GetFlusherStats, Shutdown,
};
pub use state::{AfterWrite, FlusherSettings, FlusherState, MAX_ROWS_PER_TRANSACTION};
pub use writer::{write_batch, Batch, BatchWriter, DbBatchWriter};

use crate::db::DbError;
use crate::error::AppError;

/// Pause between two transactions while a backlog drains. SQLite has one write lock and no
/// queue for it: a quota reservation that found it taken sleeps in its busy handler and would
/// lose the race to a flusher that starts its next transaction at once. A short gap lets it
/// in; next to a transaction of thousands of rows it costs nothing measurable.
const YIELD_BETWEEN_TRANSACTIONS: Duration = Duration::from_millis(2);

pub struct DbFlusher {
    writer: Arc<dyn BatchWriter>,
    state: FlusherState,
    waiters: Vec<(u64, oneshot::Sender<Result<(), AppError>>)>,
}

impl DbFlusher {
    pub fn new(writer: Arc<dyn BatchWriter>, settings: FlusherSettings) -> DbFlusher {
        DbFlusher {
            writer,
            state: FlusherState::new(settings),
            waiters: Vec::new(),
        }
    }

    /// Starts a write if none runs and there is something to write (and no backoff pending).
    fn flush_due(&mut self, ctx: &mut Context<Self>) {
        let Some(batch) = self.state.next_write(Instant::now()) else {
            self.release_waiters();
            return;
        };
        let writer = self.writer.clone();
        let write = async move {
            actix_web::rt::task::spawn_blocking(move || writer.write(&batch))
                .await
                .map_err(|_| DbError::Canceled)
                .and_then(|r| r)
        };
        ctx.spawn(write.into_actor(self).map(|result, act, ctx| {
            let next = act.state.write_done(result, Instant::now());
            act.release_waiters();
            match next {
                AfterWrite::Idle => {}
                AfterWrite::WriteAgain => {
                    ctx.run_later(YIELD_BETWEEN_TRANSACTIONS, |act, ctx| act.flush_due(ctx));
                }
                AfterWrite::RetryIn(delay) => {
                    ctx.run_later(delay, |act, ctx| act.flush_due(ctx));
                }
            }
        }));
    }

    fn release_waiters(&mut self) {
        let done = self.state.done_through();
        let (ready, waiting): (Vec<_>, Vec<_>) =
            self.waiters.drain(..).partition(|(mark, _)| *mark <= done);
        self.waiters = waiting;
        for (_, tx) in ready {
            let _ = tx.send(Ok(()));
        }
    }

    fn wait_for_commit(&mut self, ctx: &mut Context<Self>) -> ResponseFuture<Result<(), AppError>> {
        let (tx, rx) = oneshot::channel();
        self.waiters.push((self.state.flush_mark(), tx));
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
        ctx.run_interval(self.state.settings().interval, |act, ctx| {
            act.flush_due(ctx)
        });
        log::info!(
            "event=actor_started actor=db_flusher interval_ms={}",
            self.state.settings().interval.as_millis()
        );
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        let left = self.state.buffered();
        if left > 0 {
            log::warn!("event=flusher_stopped rows_not_written={left}");
        }
    }
}

impl Handler<EnqueueSession> for DbFlusher {
    type Result = ();

    fn handle(&mut self, msg: EnqueueSession, ctx: &mut Context<Self>) {
        if self.state.enqueue_session(msg.row) {
            self.flush_due(ctx);
        }
    }
}

impl Handler<EnqueueRequest> for DbFlusher {
    type Result = ();

    fn handle(&mut self, msg: EnqueueRequest, ctx: &mut Context<Self>) {
        if self.state.enqueue_request(msg.row) {
            self.flush_due(ctx);
        }
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
        log::info!("event=flusher_shutdown buffered={}", self.state.buffered());
        self.wait_for_commit(ctx)
    }
}

impl Handler<GetFlusherStats> for DbFlusher {
    type Result = MessageResult<GetFlusherStats>;

    fn handle(&mut self, _: GetFlusherStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::models::RequestRow;
    use crate::db::retry::Backoff;
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
