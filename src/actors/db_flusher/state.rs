//! The flusher's bookkeeping without actix: what is buffered, which batch is in flight, when
//! to retry, what was refused, and which `Flush` callers may be answered.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use actix::clock::Instant;

use super::messages::FlusherStats;
use super::writer::Batch;
use crate::db::models::{RequestRow, RollupRow, SessionRow, MINUTE_MS};
use crate::db::retry::{Backoff, Transience};
use crate::db::DbError;

/// Rows per transaction at most, whatever `max_batch_rows` says. Chats no longer wait on
/// SQLite's write lock (quota comes from leased blocks; only a user's first reservation
/// writes), so the cap is set for throughput: measured with 1,000 WebSocket clients on SQLite
/// (~25k chats/s), 500-row transactions wrote ~12k rows/s and the buffer grew without end,
/// 2,000 ~20k rows/s, 5,000 kept up; the one-client added p99 was the same (~3 ms) for all.
pub const MAX_ROWS_PER_TRANSACTION: usize = 5_000;

#[derive(Clone, Debug)]
pub struct FlusherSettings {
    pub interval: Duration,
    /// A buffer this large is written without waiting for the timer.
    pub flush_threshold_rows: usize,
    /// Rows per transaction (capped at [`MAX_ROWS_PER_TRANSACTION`]).
    pub max_batch_rows: usize,
    /// Raw request rows, and distinct session rows, held at most while the database is away;
    /// past it rows are dropped (and counted). Rollups are not bounded by this and never
    /// dropped.
    pub max_buffered_requests: usize,
    pub retry: Backoff,
}

/// What the actor should do once a write has returned.
#[derive(Debug, PartialEq, Eq)]
pub enum AfterWrite {
    /// Nothing is waiting to be written.
    Idle,
    /// More rows (or the halves of a refused batch) are ready: write again.
    WriteAgain,
    /// The database is away: try the same batch again after this long.
    RetryIn(Duration),
}

/// Rows waiting for the next batch. Session rows coalesce (only a session's latest state
/// matters); rollups accumulate per (minute, model). Both are ordered maps so every batch
/// carries them sorted, the lock order that keeps two instances from deadlocking.
#[derive(Default)]
struct Buffer {
    sessions: BTreeMap<String, SessionRow>,
    requests: VecDeque<RequestRow>,
    rollups: BTreeMap<(i64, String), RollupRow>,
}

impl Buffer {
    fn len(&self) -> usize {
        self.sessions.len() + self.requests.len() + self.rollups.len()
    }

    fn take(&mut self, max_rows: usize) -> Batch {
        let mut batch = Batch {
            id: uuid::Uuid::new_v4().to_string(),
            ..Batch::default()
        };
        while batch.len() < max_rows {
            let Some((_, row)) = self.rollups.pop_first() else {
                break;
            };
            batch.rollups.push(row);
        }
        let requests = self.requests.len().min(max_rows - batch.len());
        batch.requests.extend(self.requests.drain(..requests));
        while batch.len() < max_rows {
            let Some((_, row)) = self.sessions.pop_first() else {
                break;
            };
            batch.sessions.push(row);
        }
        batch
    }
}

/// A batch taken from the buffer; `mark` is the enqueue count it completes, if any.
struct Pending {
    batch: Batch,
    mark: Option<u64>,
}

pub struct FlusherState {
    settings: FlusherSettings,
    buffer: Buffer,
    /// Batches to write, front first: one taken from the buffer, or the halves of a refused one.
    pending: VecDeque<Pending>,
    writing: bool,
    retry_attempt: u32,
    retry_at: Option<Instant>,
    stats: FlusherStats,
    enqueued: u64,
    committed: u64,
}

impl FlusherState {
    pub fn new(settings: FlusherSettings) -> FlusherState {
        FlusherState {
            settings,
            buffer: Buffer::default(),
            pending: VecDeque::new(),
            writing: false,
            retry_attempt: 0,
            retry_at: None,
            stats: FlusherStats::default(),
            enqueued: 0,
            committed: 0,
        }
    }

    pub fn settings(&self) -> &FlusherSettings {
        &self.settings
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len() + self.pending.iter().map(|p| p.batch.len()).sum::<usize>()
    }

    pub fn stats(&self) -> FlusherStats {
        let mut stats = self.stats.clone();
        stats.buffered = self.buffered();
        stats
    }

    /// Buffers a session's latest state; `true` when the buffer is big enough to write now.
    pub fn enqueue_session(&mut self, row: SessionRow) -> bool {
        self.enqueued += 1;
        let full = self.buffer.sessions.len() >= self.settings.max_buffered_requests;
        if full && !self.buffer.sessions.contains_key(&row.id) {
            // A known session still takes its newer state; a new one has no room. Dropping
            // the newcomer rather than an older row keeps the end rows already buffered.
            self.count_dropped("session_buffer_full");
        } else {
            self.buffer.sessions.insert(row.id.clone(), row);
        }
        self.threshold_reached()
    }

    /// Buffers a request row and counts it into its minute's rollup; `true` when the buffer is
    /// big enough to write now.
    pub fn enqueue_request(&mut self, row: RequestRow) -> bool {
        self.enqueued += 1;
        let minute = row.started_at.div_euclid(MINUTE_MS) * MINUTE_MS;
        self.buffer
            .rollups
            .entry((minute, row.model.clone()))
            .or_insert_with(|| RollupRow {
                bucket_start: minute,
                model: row.model.clone(),
                ..RollupRow::default()
            })
            .add(&row);
        self.buffer.requests.push_back(row);
        if self.buffer.requests.len() > self.settings.max_buffered_requests {
            self.buffer.requests.pop_front();
            self.count_dropped("buffer_full");
        }
        self.threshold_reached()
    }

    fn threshold_reached(&self) -> bool {
        self.buffer.len() >= self.settings.flush_threshold_rows
    }

    fn count_dropped(&mut self, reason: &str) {
        self.stats.dropped += 1;
        if self.stats.dropped.is_power_of_two() {
            log::warn!(
                "event=flusher_dropped_rows total={} reason={reason}",
                self.stats.dropped
            );
        }
    }

    /// The batch to write now, if no write runs, no backoff is pending and there is work.
    pub fn next_write(&mut self, now: Instant) -> Option<Batch> {
        if self.writing || self.retry_at.is_some_and(|at| now < at) {
            return None;
        }
        self.retry_at = None;
        if self.pending.is_empty() {
            let cap = self
                .settings
                .max_batch_rows
                .clamp(1, MAX_ROWS_PER_TRANSACTION);
            let batch = self.buffer.take(cap);
            if batch.is_empty() {
                return None;
            }
            // The batch completes everything enqueued so far only if nothing is left behind it.
            let mark = (self.buffer.len() == 0).then_some(self.enqueued);
            self.pending.push_back(Pending { batch, mark });
        }
        let batch = self.pending.front()?.batch.clone();
        self.writing = true;
        Some(batch)
    }

    /// Records how the batch from [`next_write`](Self::next_write) fared.
    pub fn write_done(&mut self, result: Result<(), DbError>, now: Instant) -> AfterWrite {
        self.writing = false;
        self.stats.batches += 1;
        let Err(err) = result else {
            self.retry_attempt = 0;
            if let Some(done) = self.pending.pop_front() {
                self.stats.written += done.batch.len() as u64;
                self.complete(done.mark);
            }
            return self.what_next();
        };
        self.stats.last_error = Some(err.to_string());
        if is_transient(&err) {
            // Keep retrying while the database is away: the rows are the usage record.
            let retry = &self.settings.retry;
            let attempt = self.retry_attempt.min(retry.max_retries.saturating_sub(1));
            let delay = retry.delay(attempt).unwrap_or(retry.cap);
            self.stats.retries += 1;
            self.retry_attempt += 1;
            log::warn!(
                "event=flush_retry attempt={} delay_ms={} error={err}",
                self.retry_attempt,
                delay.as_millis()
            );
            self.retry_at = Some(now + delay);
            return AfterWrite::RetryIn(delay);
        }
        self.refused(err);
        self.what_next()
    }

    /// The database refused the front batch for what it holds, not because it was away: write
    /// each half on its own until the refused rows stand alone, and set only those aside.
    fn refused(&mut self, err: DbError) {
        let Some(Pending { batch, mark }) = self.pending.pop_front() else {
            return;
        };
        if batch.len() > 1 {
            let (first, second) = batch.split();
            self.pending.push_front(Pending {
                batch: second,
                mark,
            });
            self.pending.push_front(Pending {
                batch: first,
                mark: None,
            });
            return;
        }
        self.stats.refused += batch.len() as u64;
        self.stats.dropped += batch.len() as u64;
        log::error!(
            "event=flush_row_refused row={} dropped_total={} error={err}",
            batch.describe(),
            self.stats.dropped
        );
        self.complete(mark);
    }

    fn complete(&mut self, mark: Option<u64>) {
        if let Some(mark) = mark {
            self.committed = self.committed.max(mark);
        }
    }

    fn what_next(&self) -> AfterWrite {
        if self.pending.is_empty() && self.buffer.len() == 0 {
            AfterWrite::Idle
        } else {
            AfterWrite::WriteAgain
        }
    }

    /// The mark a `Flush` sent now waits for.
    pub fn flush_mark(&self) -> u64 {
        self.enqueued
    }

    /// Every `Flush` whose mark is at most this may be answered.
    pub fn done_through(&self) -> u64 {
        if self.pending.is_empty() && self.buffer.len() == 0 && !self.writing {
            self.enqueued
        } else {
            self.committed
        }
    }
}

/// A lost connection (`UnableToSendCommand` included: libpq could not send the statement) or a
/// busy database passes; anything else the database says is about the rows themselves.
fn is_transient(err: &DbError) -> bool {
    use diesel::result::{DatabaseErrorKind, Error};
    match err {
        DbError::Query(Error::DatabaseError(DatabaseErrorKind::UnableToSendCommand, _)) => true,
        // The blocking pool going away is the process stopping, not a verdict on the rows.
        DbError::Canceled => true,
        other => other.transience() == Transience::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::result::{DatabaseErrorKind, Error};

    fn settings() -> FlusherSettings {
        FlusherSettings {
            interval: Duration::from_millis(50),
            flush_threshold_rows: 500,
            max_batch_rows: 5_000,
            max_buffered_requests: 1_000,
            retry: Backoff {
                base: Duration::from_millis(5),
                cap: Duration::from_millis(20),
                max_retries: 3,
            },
        }
    }

    fn request(id: &str, model: &str, started_at: i64) -> RequestRow {
        RequestRow {
            id: id.into(),
            user_id: "u".into(),
            session_id: None,
            model: model.into(),
            started_at,
            latency_ms: 1,
            tokens_in: 1,
            tokens_out: 1,
            estimated: false,
            outcome: "ok".into(),
        }
    }

    fn session(id: &str) -> SessionRow {
        SessionRow {
            id: id.into(),
            user_id: "u".into(),
            started_at: 0,
            ended_at: None,
            messages: 0,
            avg_response_ms: None,
        }
    }

    fn db_error(kind: DatabaseErrorKind, message: &str) -> DbError {
        DbError::Query(Error::DatabaseError(kind, Box::new(message.to_string())))
    }

    /// Drives the state against a database that refuses every batch holding a request whose
    /// id is in `refuse`; returns the batches it committed.
    fn drain(state: &mut FlusherState, refuse: &[&str]) -> Vec<Batch> {
        let mut committed = Vec::new();
        let now = Instant::now();
        for _ in 0..10_000 {
            let Some(batch) = state.next_write(now) else {
                return committed;
            };
            let bad = batch
                .requests
                .iter()
                .any(|r| refuse.contains(&r.id.as_str()));
            let result = if bad {
                Err(db_error(DatabaseErrorKind::CheckViolation, "row refused"))
            } else {
                committed.push(batch);
                Ok(())
            };
            assert_ne!(
                state.write_done(result, now),
                AfterWrite::RetryIn(Duration::ZERO)
            );
        }
        panic!("the flusher never went idle");
    }

    #[test]
    fn a_refused_row_is_set_aside_and_the_rest_of_its_batch_is_written() {
        let mut state = FlusherState::new(settings());
        for i in 0..300 {
            state.enqueue_request(request(&format!("r{i}"), "echo", 0));
        }
        state.enqueue_session(session("s1"));
        let committed = drain(&mut state, &["r17", "r250"]);
        let mut ids: Vec<String> = committed
            .iter()
            .flat_map(|b| b.requests.iter().map(|r| r.id.clone()))
            .collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), 298, "every accepted request written once");
        assert!(!ids.contains(&"r17".to_string()) && !ids.contains(&"r250".to_string()));
        let rollups: i64 = committed
            .iter()
            .flat_map(|b| b.rollups.iter().map(|r| r.requests))
            .sum();
        assert_eq!(
            rollups, 300,
            "the totals are never set aside with a raw row"
        );
        assert_eq!(committed.iter().map(|b| b.sessions.len()).sum::<usize>(), 1);
        let stats = state.stats();
        assert_eq!((stats.dropped, stats.refused, stats.buffered), (2, 2, 0));
        assert!(stats.last_error.is_some_and(|e| e.contains("row refused")));
        assert_eq!(
            state.done_through(),
            state.flush_mark(),
            "Flush is answered"
        );
    }

    #[test]
    fn a_lost_connection_is_retried_with_the_same_batch() {
        let mut state = FlusherState::new(settings());
        state.enqueue_request(request("r1", "echo", 0));
        let now = Instant::now();
        let first = state.next_write(now).expect("a batch");
        let lost = db_error(DatabaseErrorKind::UnableToSendCommand, "no connection");
        let AfterWrite::RetryIn(delay) = state.write_done(Err(lost), now) else {
            panic!("a lost connection must be retried");
        };
        assert_eq!(state.next_write(now), None, "backoff is honoured");
        let again = state.next_write(now + delay).expect("the retry");
        assert_eq!(again, first, "retried unchanged, same ledger id");
        assert_eq!(state.write_done(Ok(()), now + delay), AfterWrite::Idle);
        let stats = state.stats();
        assert_eq!((stats.retries, stats.dropped, stats.written), (1, 0, 2));
    }

    #[test]
    fn transactions_are_capped_and_carry_rollups_and_sessions_sorted() {
        let mut s = settings();
        // Two full transactions and a bit: the cap, not a number, decides the split.
        let requests = 2 * MAX_ROWS_PER_TRANSACTION + 200;
        s.max_buffered_requests = 2 * requests;
        let mut state = FlusherState::new(s);
        for i in 0..requests {
            // Three models over five minutes, enqueued out of order.
            let model = ["zeta", "alpha", "mid"][i % 3];
            state.enqueue_request(request(
                &format!("r{i}"),
                model,
                ((i * 7) % 5) as i64 * MINUTE_MS,
            ));
        }
        for i in (0..20).rev() {
            state.enqueue_session(session(&format!("s{i:02}")));
        }
        let committed = drain(&mut state, &[]);
        assert!(committed
            .iter()
            .all(|b| b.len() <= MAX_ROWS_PER_TRANSACTION));
        assert_eq!(
            committed.len(),
            3,
            "{requests} rows (+ rollups, sessions) in three"
        );
        for batch in &committed {
            let keys: Vec<(i64, &str)> = batch
                .rollups
                .iter()
                .map(|r| (r.bucket_start, r.model.as_str()))
                .collect();
            assert!(keys.windows(2).all(|w| w[0] < w[1]), "{keys:?}");
            assert!(batch.sessions.windows(2).all(|w| w[0].id < w[1].id));
        }
        let written: usize = committed.iter().map(|b| b.requests.len()).sum();
        assert_eq!(written, requests);
    }

    #[test]
    fn the_session_buffer_is_bounded_and_counts_what_it_drops() {
        let mut s = settings();
        s.max_buffered_requests = 10;
        let mut state = FlusherState::new(s);
        for i in 0..25 {
            state.enqueue_session(session(&format!("s{i}")));
        }
        // A buffered session still takes its newer state when the buffer is full.
        let mut ended = session("s3");
        ended.ended_at = Some(5);
        state.enqueue_session(ended.clone());
        let stats = state.stats();
        assert_eq!((stats.buffered, stats.dropped), (10, 15));
        let committed = drain(&mut state, &[]);
        let rows: Vec<&SessionRow> = committed.iter().flat_map(|b| &b.sessions).collect();
        assert_eq!(rows.len(), 10);
        assert!(rows.contains(&&ended));
    }
}
