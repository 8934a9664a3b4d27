//! `--drop-rate`: which replies to drop mid-way, and the check that a reply's deltas arrive
//! exactly once across a drop and its resume, by their `seq` (1, 2, 3, … within a reply).

/// The `seq` numbers of one reply's deltas as they arrive, before and after a resume.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct SeqCheck {
    /// The highest `seq` seen: what a resume asks to continue after.
    last: u64,
    /// Deltas that never came (numbers skipped, or missing before the reply's announced end).
    pub gaps: u64,
    /// Deltas that came again (a number not above `last`).
    pub duplicates: u64,
}

impl SeqCheck {
    /// One delta. A delta without `seq` (a server without resumable replies) is taken as the
    /// next number, so it is never reported as a gap or a duplicate.
    pub fn delta(&mut self, seq: Option<u64>) {
        let seq = seq.unwrap_or(self.last + 1);
        if seq <= self.last {
            self.duplicates += 1;
        } else {
            self.gaps += seq - self.last - 1;
            self.last = seq;
        }
    }

    /// What a `resume` sends as `after_seq`.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// The reply ended (`done` or `error`). `announced_last` is the `last_seq` the resumed
    /// `session` frame gave for it when it had already ended: deltas up to there are due.
    pub fn ended(&mut self, announced_last: Option<u64>) {
        if let Some(announced) = announced_last {
            if announced > self.last {
                self.gaps += announced - self.last;
                self.last = announced;
            }
        }
    }
}

/// Decides, per chat, whether to drop its connection mid-reply and after how many deltas.
/// Seeded by the connection's number, so a run is repeatable.
#[derive(Debug)]
pub(super) struct DropDice {
    state: u64,
    rate: f64,
}

impl DropDice {
    pub fn new(connection: u64, rate: f64) -> DropDice {
        DropDice {
            state: connection ^ 0x6a09_e667_f3bc_c909,
            rate,
        }
    }

    /// splitmix64: tiny, and good enough to spread drops evenly.
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// `Some(n)`: drop the connection once the reply's `n`th delta arrived, `n` in
    /// 1..=`expected_deltas` (a reply shorter than `n` ends before it and is not dropped).
    pub fn roll(&mut self, expected_deltas: u64) -> Option<u64> {
        if self.rate <= 0.0 {
            return None;
        }
        // The top 53 bits as a fraction in [0, 1).
        let chance = (self.next() >> 11) as f64 / (1u64 << 53) as f64;
        (chance < self.rate).then(|| 1 + self.next() % expected_deltas.max(1))
    }
}

/// The client frame that asks for the rest of reply `id`.
pub(super) fn resume_frame(id: &str, after_seq: u64) -> String {
    serde_json::json!({"type": "resume", "id": id, "after_seq": after_seq}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(seqs: &[u64]) -> SeqCheck {
        let mut check = SeqCheck::default();
        for &seq in seqs {
            check.delta(Some(seq));
        }
        check
    }

    #[test]
    fn in_order_deltas_are_clean() {
        let c = check(&[1, 2, 3, 4]);
        assert_eq!((c.last(), c.gaps, c.duplicates), (4, 0, 0));
    }

    #[test]
    fn a_resume_that_continues_after_the_last_seen_is_clean() {
        // Deltas 1..3 before the drop; the resume asks after 3 and gets 4..6.
        let mut c = check(&[1, 2, 3]);
        assert_eq!(c.last(), 3);
        for seq in [4, 5, 6] {
            c.delta(Some(seq));
        }
        c.ended(None);
        assert_eq!((c.gaps, c.duplicates), (0, 0));
    }

    #[test]
    fn skipped_numbers_are_gaps_counted_in_deltas() {
        let c = check(&[1, 2, 5, 6, 8]);
        assert_eq!((c.last(), c.gaps, c.duplicates), (8, 3, 0));
    }

    #[test]
    fn repeated_or_older_numbers_are_duplicates() {
        // A resume that replays from the start: 1..3 again, then the rest.
        let c = check(&[1, 2, 3, 1, 2, 3, 4]);
        assert_eq!((c.last(), c.gaps, c.duplicates), (4, 0, 3));
        let c = check(&[1, 3, 2]);
        assert_eq!(
            (c.gaps, c.duplicates),
            (1, 1),
            "2 came late: a gap, then a duplicate"
        );
    }

    #[test]
    fn a_reply_that_ended_short_of_its_announced_last_seq_has_a_gap() {
        let mut c = check(&[1, 2, 3]);
        c.ended(Some(7));
        assert_eq!(c.gaps, 4);
        let mut c = check(&[1, 2, 3]);
        c.ended(Some(3));
        assert_eq!(c.gaps, 0, "all there");
        let mut c = check(&[]);
        c.ended(None);
        assert_eq!((c.gaps, c.duplicates), (0, 0), "an empty reply is clean");
    }

    #[test]
    fn deltas_without_seq_count_as_the_next_number() {
        let mut c = SeqCheck::default();
        c.delta(None);
        c.delta(None);
        c.delta(Some(3));
        assert_eq!((c.last(), c.gaps, c.duplicates), (3, 0, 0));
    }

    #[test]
    fn the_dice_drop_about_the_rate_and_within_the_reply() {
        let mut dropped = 0;
        for connection in 0..100u64 {
            let mut dice = DropDice::new(connection, 0.1);
            for _ in 0..100 {
                if let Some(after) = dice.roll(10) {
                    assert!((1..=10).contains(&after), "{after}");
                    dropped += 1;
                }
            }
        }
        // 10,000 rolls at 10 %: 1,000 expected; ±200 is over six standard deviations.
        assert!((800..=1_200).contains(&dropped), "{dropped}");
        assert_eq!(DropDice::new(1, 0.0).roll(10), None);
        let mut always = DropDice::new(3, 1.0);
        assert!((0..50).all(|_| always.roll(1) == Some(1)));
        // Repeatable: the same connection drops the same chats.
        let rolls = |c| {
            let mut dice = DropDice::new(c, 0.5);
            (0..20).map(|_| dice.roll(5)).collect::<Vec<_>>()
        };
        assert_eq!(rolls(7), rolls(7));
    }

    #[test]
    fn the_resume_frame_is_the_contracts() {
        let frame: serde_json::Value =
            serde_json::from_str(&resume_frame("c\"1", 5)).expect("JSON");
        assert_eq!(
            frame,
            serde_json::json!({"type": "resume", "id": "c\"1", "after_seq": 5})
        );
    }
}
