//! MetricsAggregator: consumes one request record per admitted chat, keeps the numbers
//! operators read (see `state`), and hands each record to the DB flusher as a row.

pub mod histogram;
pub mod messages;
pub mod state;

use actix::prelude::*;

pub use messages::{GetMetricsParts, GetMetricsSnapshot, Outcome, RecordRejection, RecordRequest};
pub use state::{
    AggregatorState, MetricsParts, MetricsSnapshot, RawWindows, Stats, WindowSummary, Windows,
};

use crate::actors::db_flusher::{DbFlusher, EnqueueRequest};
use crate::db::models::RequestRow;

pub struct MetricsAggregator {
    state: AggregatorState,
    flusher: Addr<DbFlusher>,
}

impl MetricsAggregator {
    pub fn new(recent_capacity: usize, flusher: Addr<DbFlusher>) -> MetricsAggregator {
        MetricsAggregator {
            state: AggregatorState::new(recent_capacity),
            flusher,
        }
    }
}

fn now_secs() -> u64 {
    chrono::Utc::now().timestamp().max(0) as u64
}

impl Actor for MetricsAggregator {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        log::info!("event=actor_started actor=metrics_aggregator");
    }
}

impl Handler<RecordRequest> for MetricsAggregator {
    type Result = ();

    fn handle(&mut self, record: RecordRequest, _: &mut Context<Self>) {
        log::debug!(
            "event=request_done user={} session={} model={} ms={} tokens_in={} tokens_out={} estimated={} outcome={}",
            record.user,
            record.session.as_ref().map(|s| s.as_str()).unwrap_or("-"),
            record.model,
            record.latency_ms,
            record.tokens_in,
            record.tokens_out,
            record.estimated,
            record.outcome.as_str()
        );
        self.state.record(now_secs(), &record);
        // do_send: the flusher's buffer is bounded and counts what it must drop; usage rows
        // must not be lost to a momentarily full mailbox.
        self.flusher.do_send(EnqueueRequest {
            row: RequestRow::from_record(&record),
        });
    }
}

impl Handler<RecordRejection> for MetricsAggregator {
    type Result = ();

    fn handle(&mut self, msg: RecordRejection, _: &mut Context<Self>) {
        self.state.reject(msg.code);
    }
}

impl Handler<GetMetricsSnapshot> for MetricsAggregator {
    type Result = MessageResult<GetMetricsSnapshot>;

    fn handle(&mut self, msg: GetMetricsSnapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.snapshot(now_secs(), msg.recent_limit))
    }
}

impl Handler<GetMetricsParts> for MetricsAggregator {
    type Result = MessageResult<GetMetricsParts>;

    fn handle(&mut self, msg: GetMetricsParts, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.parts(now_secs(), msg.recent_limit))
    }
}
