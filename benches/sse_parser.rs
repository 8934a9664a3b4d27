//! The incremental SSE parser (`chatgate::providers::sse::SseParser`) on a realistic OpenAI
//! `chat.completion.chunk` stream, fed in network-sized reads (1 KiB and 16 KiB, which split
//! events, lines and `\r\n` pairs anywhere) and in one piece. Throughput is in bytes of stream.

use std::hint::black_box;

use chatgate::providers::sse::SseParser;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

/// What an OpenAI-compatible upstream streams for a reply of `deltas` tokens: a role chunk, one
/// chunk per token, a `finish_reason` chunk, the usage chunk and `[DONE]`, each event ending in
/// a blank line (`line_end` is `\n` or `\r\n`), with an occasional keep-alive comment.
fn openai_stream(deltas: usize, line_end: &str) -> Vec<u8> {
    let head = r#"{"id":"chatcmpl-9xQeL2vQ7cTn1b3kq5Zr8sYdW4uHf","object":"chat.completion.chunk","created":1717171717,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1","choices":"#;
    let mut out = String::new();
    let event = |out: &mut String, data: &str| {
        out.push_str("data: ");
        out.push_str(data);
        out.push_str(line_end);
        out.push_str(line_end);
    };
    event(
        &mut out,
        &format!(
            r#"{head}[{{"index":0,"delta":{{"role":"assistant","content":"","refusal":null}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
        ),
    );
    let words = [
        "Hello", " there", ",", " the", " quick", " brown", " fox", " jumps", " é", " 🦀",
    ];
    for i in 0..deltas {
        let word = words[i % words.len()];
        event(
            &mut out,
            &format!(
                r#"{head}[{{"index":0,"delta":{{"content":"{word}"}},"logprobs":null,"finish_reason":null}}],"usage":null}}"#
            ),
        );
        if i % 64 == 63 {
            out.push_str(": keep-alive");
            out.push_str(line_end);
            out.push_str(line_end);
        }
    }
    event(
        &mut out,
        &format!(
            r#"{head}[{{"index":0,"delta":{{}},"logprobs":null,"finish_reason":"stop"}}],"usage":null}}"#
        ),
    );
    event(
        &mut out,
        &format!(
            r#"{head}[],"usage":{{"prompt_tokens":12,"completion_tokens":{deltas},"total_tokens":{}}}}}"#,
            deltas + 12
        ),
    );
    event(&mut out, "[DONE]");
    out.into_bytes()
}

/// Parses the whole stream in `read`-byte reads; returns the number of events.
fn parse(stream: &[u8], read: usize) -> usize {
    let mut parser = SseParser::default();
    let mut events = 0;
    for chunk in stream.chunks(read) {
        events += parser.feed(chunk).expect("valid stream").len();
    }
    events
}

fn sse(c: &mut Criterion) {
    let mut group = c.benchmark_group("sse_parse");
    for (name, line_end) in [("lf", "\n"), ("crlf", "\r\n")] {
        // ~1,000 tokens: about 260 KB of stream.
        let stream = openai_stream(1000, line_end);
        let expected = parse(&stream, stream.len());
        group.throughput(Throughput::Bytes(stream.len() as u64));
        for (label, read) in [
            ("1KiB", 1024),
            ("16KiB", 16 * 1024),
            ("whole", stream.len()),
        ] {
            assert_eq!(parse(&stream, read), expected, "{label} reads differ");
            group.bench_with_input(BenchmarkId::new(name, label), &read, |b, &read| {
                b.iter(|| black_box(parse(black_box(&stream), read)))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, sse);
criterion_main!(benches);
