//! One reply's frames as a resume needs them: the deltas numbered 1, 2, 3, … (`seq`), the
//! oldest dropped past a byte cap, and, once it ended, its last frames.

use std::collections::VecDeque;
use std::pin::Pin;

use futures_util::Stream;
use serde::Serialize;

/// What a reply's consumer (its socket, or the keeper while no socket holds it) is handed, in
/// order; nothing follows `End`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplyEvent {
    Delta(String),
    End(ReplyEnd),
}

/// How a reply ended and the frames that say so, serialized once by the transport (the keeper
/// stores and replays them as they are, so it needs nothing of the wire format).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplyEnd {
    pub state: ReplyState,
    pub frames: Vec<String>,
}

/// The `state` of a reply in the resumed session's `replies` list.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplyState {
    Running,
    Done,
    Error,
    Cancelled,
}

impl ReplyState {
    pub fn as_str(self) -> &'static str {
        match self {
            ReplyState::Running => "running",
            ReplyState::Done => "done",
            ReplyState::Error => "error",
            ReplyState::Cancelled => "cancelled",
        }
    }

    pub fn parse(name: &str) -> Option<ReplyState> {
        [
            ReplyState::Running,
            ReplyState::Done,
            ReplyState::Error,
            ReplyState::Cancelled,
        ]
        .into_iter()
        .find(|state| state.as_str() == name)
    }
}

/// A running reply's events; `Send`, so it can move between a socket's worker and the keeper.
pub type ReplyStream = Pin<Box<dyn Stream<Item = ReplyEvent> + Send>>;

/// What each kept delta costs besides its text (its end offset), so many tiny deltas cannot
/// pass as free.
const FRAME_OVERHEAD: usize = std::mem::size_of::<usize>();

/// A reply's deltas, numbered from 1. The texts sit end to end in one string (a kept reply
/// costs one allocation, not one per delta). Past `max_bytes` the oldest go; a resume that
/// needs one of them cannot be served.
#[derive(Debug)]
pub struct ReplyFrames {
    text: String,
    /// End offset in `text` of each kept delta, oldest first.
    ends: VecDeque<usize>,
    /// Bytes of `text` before the first kept delta (already dropped from the front).
    base: usize,
    /// `seq` of the first kept delta.
    first_seq: u64,
    max_bytes: usize,
}

impl ReplyFrames {
    pub fn new(max_bytes: usize) -> ReplyFrames {
        ReplyFrames {
            text: String::new(),
            ends: VecDeque::new(),
            base: 0,
            first_seq: 1,
            max_bytes,
        }
    }

    /// Frames of a reply whose deltas before `first_seq` are elsewhere (another instance
    /// streamed them): the next delta kept is `first_seq`.
    pub fn starting_at(first_seq: u64, max_bytes: usize) -> ReplyFrames {
        ReplyFrames {
            first_seq: first_seq.max(1),
            ..ReplyFrames::new(max_bytes)
        }
    }

    /// Keeps `content` as the next delta; returns its `seq`.
    pub fn push(&mut self, content: &str) -> u64 {
        if self.max_bytes == 0 {
            // Numbering only (nothing is resumable): no copy at all.
            self.first_seq += 1;
            return self.first_seq - 1;
        }
        self.text.push_str(content);
        self.ends.push_back(self.base + self.text.len());
        let seq = self.last_seq();
        if self.bytes() > self.max_bytes {
            // Down to three quarters, so a reply at its cap does not shift its text per delta.
            self.trim_to(self.max_bytes / 4 * 3);
        }
        seq
    }

    /// `seq` of the newest delta; 0 before the first.
    pub fn last_seq(&self) -> u64 {
        self.first_seq + self.ends.len() as u64 - 1
    }

    /// What the kept deltas cost.
    pub fn bytes(&self) -> usize {
        self.text.len() + self.ends.len() * FRAME_OVERHEAD
    }

    /// Drops the oldest deltas until at most `target` bytes are kept.
    pub fn trim_to(&mut self, target: usize) {
        let mut drop = 0;
        let mut cut = self.base;
        while self.bytes_without(drop, cut) > target {
            match self.ends.get(drop) {
                Some(end) => {
                    cut = *end;
                    drop += 1;
                }
                None => break,
            }
        }
        if drop == 0 {
            return;
        }
        self.ends.drain(..drop);
        self.text.drain(..cut - self.base);
        self.base = cut;
        self.first_seq += drop as u64;
        if self.text.capacity() > 2 * self.text.len() + 64 {
            self.text.shrink_to_fit();
        }
    }

    fn bytes_without(&self, frames: usize, cut: usize) -> usize {
        (self.text.len() - (cut - self.base)) + (self.ends.len() - frames) * FRAME_OVERHEAD
    }

    /// Every delta still kept, oldest first.
    pub fn kept(&self) -> impl Iterator<Item = (u64, &str)> + '_ {
        self.after(self.first_seq - 1).into_iter().flatten()
    }

    /// The deltas after `after_seq`, oldest first, or `None` when one of them was dropped.
    pub fn after(&self, after_seq: u64) -> Option<impl Iterator<Item = (u64, &str)> + '_> {
        if after_seq.saturating_add(1) < self.first_seq {
            return None;
        }
        let skip = (after_seq.saturating_add(1) - self.first_seq) as usize;
        Some(
            self.ends
                .iter()
                .enumerate()
                .skip(skip)
                .map(move |(i, end)| {
                    let start = if i == 0 { self.base } else { self.ends[i - 1] };
                    let seq = self.first_seq + i as u64;
                    (seq, &self.text[start - self.base..end - self.base])
                }),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(frames: &ReplyFrames, after: u64) -> Option<Vec<(u64, String)>> {
        frames
            .after(after)
            .map(|it| it.map(|(seq, text)| (seq, text.to_string())).collect())
    }

    #[test]
    fn deltas_are_numbered_from_one_and_replayed_after_a_seq() {
        let mut frames = ReplyFrames::new(1 << 20);
        assert_eq!(frames.last_seq(), 0);
        assert_eq!(frames.push("the"), 1);
        assert_eq!(frames.push(" quick"), 2);
        assert_eq!(frames.push(" fox"), 3);
        assert_eq!(
            texts(&frames, 1),
            Some(vec![(2, " quick".into()), (3, " fox".into())])
        );
        assert_eq!(texts(&frames, 0).map(|v| v.len()), Some(3));
        assert_eq!(texts(&frames, 3), Some(vec![]));
        assert_eq!(texts(&frames, 99), Some(vec![]));
    }

    #[test]
    fn past_the_cap_the_oldest_go_and_a_resume_needing_them_fails() {
        let per = 10 + FRAME_OVERHEAD;
        let mut frames = ReplyFrames::new(per * 4);
        for i in 0..5 {
            frames.push(&format!("{i:010}"));
        }
        // Over the cap at the fifth: trimmed to three quarters of it (3 deltas).
        assert!(frames.bytes() <= per * 3, "{}", frames.bytes());
        assert_eq!(frames.last_seq(), 5);
        assert!(frames.after(0).is_none());
        assert!(frames.after(1).is_none());
        assert_eq!(
            texts(&frames, 2),
            Some(vec![
                (3, "0000000002".into()),
                (4, "0000000003".into()),
                (5, "0000000004".into())
            ])
        );
        assert_eq!(frames.push("x"), 6);
        assert_eq!(texts(&frames, 5), Some(vec![(6, "x".into())]));
    }

    #[test]
    fn trimming_to_nothing_keeps_the_numbering() {
        let mut frames = ReplyFrames::new(1 << 20);
        frames.push("a");
        frames.push("b");
        frames.trim_to(0);
        assert_eq!(frames.bytes(), 0);
        assert_eq!(frames.last_seq(), 2);
        assert!(frames.after(1).is_none());
        assert_eq!(texts(&frames, 2), Some(vec![]));
        assert_eq!(frames.push("c"), 3);
        assert_eq!(texts(&frames, 2), Some(vec![(3, "c".into())]));
    }

    #[test]
    fn frames_can_start_past_the_first_seq() {
        let mut frames = ReplyFrames::starting_at(5, 1 << 20);
        assert_eq!(frames.last_seq(), 4);
        assert!(frames.after(3).is_none());
        assert_eq!(texts(&frames, 4), Some(vec![]));
        assert_eq!(frames.push("e"), 5);
        assert_eq!(texts(&frames, 4), Some(vec![(5, "e".into())]));
        for state in [ReplyState::Running, ReplyState::Done, ReplyState::Cancelled] {
            assert_eq!(ReplyState::parse(state.as_str()), Some(state));
        }
        assert_eq!(ReplyState::parse("paused"), None);
    }

    #[test]
    fn a_zero_cap_only_numbers() {
        let mut frames = ReplyFrames::new(0);
        assert_eq!((frames.push("a"), frames.push("b")), (1, 2));
        assert_eq!((frames.bytes(), frames.last_seq()), (0, 2));
        assert!(frames.after(1).is_none());
        assert_eq!(texts(&frames, 2), Some(vec![]));
    }

    #[test]
    fn a_single_delta_over_the_cap_is_not_kept() {
        let mut frames = ReplyFrames::new(16);
        assert_eq!(frames.push(&"x".repeat(100)), 1);
        assert_eq!(frames.bytes(), 0);
        assert!(frames.after(0).is_none());
        assert_eq!(texts(&frames, 1), Some(vec![]));
    }
}
