//! Aggregator records per second: the cost of `AggregatorState::record`, which the metrics
//! actor runs once for every reply served (three rolling windows, lifetime totals, the
//! recent-requests ring).

use std::hint::black_box;
use std::sync::Arc;

use chatgate::actors::metrics::messages::{Outcome, RecordRequest};
use chatgate::actors::metrics::state::AggregatorState;
use chatgate::domain::UserId;
use chatgate::error::ErrorCode;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// Records per iteration: enough that the one-second slot turns over inside a batch.
const BATCH: u64 = 10_000;

fn records(models: &[&str]) -> Vec<RecordRequest> {
    (0..1_000u64)
        .map(|i| RecordRequest {
            id: uuid::Uuid::new_v4(),
            user: UserId::parse(&format!("user-{}", i % 100)).expect("user id"),
            session: None,
            model: Arc::from(models[i as usize % models.len()]),
            started_at_ms: 0,
            latency_ms: 1 + (i * 37) % 400,
            tokens_in: 10,
            tokens_out: 10,
            estimated: false,
            outcome: if i % 50 == 0 {
                Outcome::Error(ErrorCode::UpstreamTimeout)
            } else {
                Outcome::Ok
            },
        })
        .collect()
}

fn record(c: &mut Criterion) {
    let mut group = c.benchmark_group("aggregator");
    group.throughput(Throughput::Elements(BATCH));
    for (name, models, recent) in [
        ("record/1_model", &["echo"][..], 1_000),
        (
            "record/8_models",
            &["m0", "m1", "m2", "m3", "m4", "m5", "m6", "m7"][..],
            1_000,
        ),
        ("record/1_model_no_recent", &["echo"][..], 0),
    ] {
        let records = records(models);
        let mut state = AggregatorState::new(recent);
        // Warm every ring so the measured work is the steady state.
        for (i, r) in records.iter().enumerate() {
            state.record(1_000_000 + i as u64, r);
        }
        let mut now = 2_000_000u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                for i in 0..BATCH {
                    // 5,000 records per second of (fake) time.
                    let r = &records[(i % records.len() as u64) as usize];
                    state.record(black_box(now + i / 5_000), r);
                }
                now += BATCH / 5_000;
            })
        });
    }
    group.finish();
}

criterion_group!(benches, record);
criterion_main!(benches);
