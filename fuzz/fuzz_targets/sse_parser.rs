//! `SseParser::feed` on arbitrary bytes split at arbitrary points: it must never panic, and
//! however the stream is split into reads (here: at fuzzer-chosen cuts, and one byte at a
//! time) it must give exactly the events of feeding it whole — or, when the whole stream is
//! refused as too large, refuse the split one too.
//!
//! Input layout: byte 0 picks the event size limit (small limits exercise `TooLarge`), byte 1
//! the number of cuts `n` (0–15), then `n` two-byte cut positions, then the stream itself.

#![no_main]

use chatgate::providers::sse::{SseError, SseParser, DEFAULT_MAX_EVENT_BYTES};
use libfuzzer_sys::fuzz_target;

/// Feeds `stream` in the pieces between `cuts` (sorted offsets); the events, or the first error.
fn feed_split(limit: usize, stream: &[u8], cuts: &[usize]) -> Result<Vec<String>, SseError> {
    let mut parser = SseParser::new(limit);
    let mut events = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&stream.len())) {
        events.extend(parser.feed(&stream[start..cut])?);
        start = cut;
    }
    Ok(events)
}

fuzz_target!(|data: &[u8]| {
    let [limit_byte, cut_byte, rest @ ..] = data else {
        return;
    };
    let limit = match limit_byte % 4 {
        0 => DEFAULT_MAX_EVENT_BYTES,
        _ => usize::from(*limit_byte),
    };
    let n_cuts = usize::from(cut_byte % 16);
    if rest.len() < 2 * n_cuts {
        return;
    }
    let (cut_bytes, stream) = rest.split_at(2 * n_cuts);
    let mut cuts: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])) % (stream.len() + 1))
        .collect();
    cuts.sort_unstable();

    let whole = SseParser::new(limit).feed(stream);
    let split = feed_split(limit, stream, &cuts);
    let bytewise: Vec<usize> = (1..stream.len()).collect();
    let one_by_one = feed_split(limit, stream, &bytewise);
    match &whole {
        Ok(events) => {
            assert_eq!(split.as_ref(), Ok(events), "split at {cuts:?} differs");
            assert_eq!(one_by_one.as_ref(), Ok(events), "byte-by-byte differs");
            for event in events {
                assert!(event.len() <= limit, "event of {} bytes over {limit}", event.len());
            }
        }
        Err(err) => {
            assert_eq!(split.as_ref().err(), Some(err), "split at {cuts:?} not refused");
            assert_eq!(one_by_one.as_ref().err(), Some(err), "byte-by-byte not refused");
        }
    }
});
