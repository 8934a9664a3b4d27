//! The WebSocket wire format, per frame: parsing what clients send (`ClientFrame::parse`)
//! and encoding what the server sends (`ServerFrame::to_json`, one per delta).
//! The SSE parser has its own benchmark, `benches/sse_parser.rs`.

use std::borrow::Cow;
use std::hint::black_box;

use chatgate::domain::{QuotaDay, QuotaReceipt, QuotaStanding};
use chatgate::error::ErrorCode;
use chatgate::providers::Usage;
use chatgate::ws::protocol::{ClientFrame, ServerFrame};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn parse(c: &mut Criterion) {
    let words: Vec<String> = (0..170).map(|i| format!("w{}", i % 100)).collect();
    let kilobyte = words.join(" ");
    let chat_1k = format!(r#"{{"type":"chat","id":"c42","model":"echo","content":"{kilobyte}"}}"#);
    let frames = [
        (
            "chat_10_words",
            r#"{"type":"chat","id":"c42","model":"echo","content":"w0 w1 w2 w3 w4 w5 w6 w7 w8 w9"}"#
                .to_string(),
        ),
        ("chat_1kb", chat_1k),
        (
            "chat_escaped",
            r#"{"type":"chat","id":"c42","model":"echo","content":"line one\nline \"two\"\u00e9"}"#
                .to_string(),
        ),
        ("cancel", r#"{"type":"cancel","id":"c42"}"#.to_string()),
        ("ping", r#"{"type":"ping"}"#.to_string()),
        ("malformed", r#"{"type":"chat","id":"c42","model":"#.to_string()),
    ];
    let mut group = c.benchmark_group("client_frame_parse");
    for (name, text) in &frames {
        group.throughput(Throughput::Bytes(text.len() as u64));
        group.bench_function(*name, |b| {
            b.iter(|| black_box(ClientFrame::parse(black_box(text))))
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("server_frame_encode");
    group.throughput(Throughput::Elements(1));
    let delta = ServerFrame::Delta {
        id: "c42",
        seq: 17,
        content: " hello",
    };
    group.bench_function("delta", |b| {
        b.iter(|| black_box(black_box(&delta).to_json()))
    });
    let done = ServerFrame::Done {
        id: "c42",
        usage: Usage {
            prompt_tokens: 10,
            completion_tokens: 10,
        },
        latency_ms: 3,
        cancelled: false,
        finish_reason: "stop",
        quota: QuotaReceipt::new(
            QuotaDay::today(),
            QuotaStanding {
                used: 2,
                limit: 1_000,
            },
        ),
    };
    group.bench_function("done", |b| b.iter(|| black_box(black_box(&done).to_json())));
    let error = ServerFrame::Error {
        id: Some("c42"),
        code: ErrorCode::RateLimited,
        message: Cow::Borrowed("rate limit reached: 30 chats per 60 s"),
        retry_after_ms: Some(1234),
    };
    group.bench_function("error", |b| {
        b.iter(|| black_box(black_box(&error).to_json()))
    });
    group.finish();
}

criterion_group!(benches, parse, encode);
criterion_main!(benches);
