//! Rate-limiter decisions per second: `LocalWindow::check_at`, which the users' limiter runs
//! for every chat without cluster mode (and while Redis is down), over many keys (each with
//! its sliding-window log) and on one hot key.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use chatgate::actors::rate_limiter::{Admission, LocalWindow};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

const BATCH: u64 = 10_000;

fn check(c: &mut Criterion) {
    let mut group = c.benchmark_group("rate_limiter");
    group.throughput(Throughput::Elements(BATCH));
    // The defaults (30 per 60 s) over many users: each check drops what left the window and
    // logs the new event. One millisecond of fake time per decision: 1,000 decisions/s.
    for keys in [1_000usize, 100_000] {
        let names: Vec<Arc<str>> = (0..keys).map(|i| Arc::from(format!("user-{i}"))).collect();
        let mut state = LocalWindow::new(30, Duration::from_secs(60));
        let mut now = Instant::now();
        let mut n = 0usize;
        group.bench_function(format!("check/{keys}_keys"), |b| {
            b.iter(|| {
                for _ in 0..BATCH {
                    now += Duration::from_millis(1);
                    black_box(state.check_at(&names[n % keys], now));
                    n += 1;
                }
            })
        });
    }
    // One user far over its limit: every decision is a refusal with a retry time.
    let hot: Arc<str> = Arc::from("hot-user");
    let mut state = LocalWindow::new(30, Duration::from_secs(60));
    let now = Instant::now();
    for _ in 0..30 {
        assert_eq!(state.check_at(&hot, now), Admission::Allowed);
    }
    group.bench_function("check/1_key_limited", |b| {
        b.iter(|| {
            for _ in 0..BATCH {
                black_box(state.check_at(&hot, now));
            }
        })
    });
    group.finish();
}

criterion_group!(benches, check);
criterion_main!(benches);
