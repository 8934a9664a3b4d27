//! Exponential backoff with "equal jitter", the one used for every retry: the database (pool
//! checkouts, flusher batches) and upstream model calls.

use std::time::Duration;

use rand::Rng;

/// Retry number `attempt` (0-based) waits between half and all of `min(cap, base * 2^attempt)`,
/// so retries from many callers spread out but never collapse to zero.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_retries: u32,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_millis(25),
            cap: Duration::from_secs(1),
            max_retries: 4,
        }
    }
}

impl Backoff {
    /// The ceiling for attempt `attempt` (0-based), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The wait before retry number `attempt`, or `None` once the retries are used up.
    /// `jitter` is uniform in [0, 1].
    pub fn delay_with_jitter(&self, attempt: u32, jitter: f64) -> Option<Duration> {
        if attempt >= self.max_retries {
            return None;
        }
        let jitter = jitter.clamp(0.0, 1.0);
        Some(self.ceiling(attempt).mul_f64(0.5 + jitter / 2.0))
    }

    /// [`delay_with_jitter`](Self::delay_with_jitter) with a random jitter.
    pub fn delay(&self, attempt: u32) -> Option<Duration> {
        self.delay_with_jitter(attempt, rand::rng().random_range(0.0..=1.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap_then_stops() {
        let backoff = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(100),
            max_retries: 6,
        };
        let ceilings: Vec<u64> = (0..6)
            .map(|n| backoff.ceiling(n).as_millis() as u64)
            .collect();
        assert_eq!(ceilings, vec![10, 20, 40, 80, 100, 100]);
        for attempt in 0..6 {
            for _ in 0..50 {
                let delay = backoff.delay(attempt).expect("within budget");
                let ceiling = backoff.ceiling(attempt);
                assert!(
                    delay >= ceiling / 2 && delay <= ceiling,
                    "{attempt}: {delay:?}"
                );
            }
        }
        assert_eq!(backoff.delay(6), None);
        assert_eq!(backoff.ceiling(200), Duration::from_millis(100));
    }

    #[test]
    fn jitter_spans_half_to_all_of_the_ceiling() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            max_retries: 3,
        };
        assert_eq!(
            backoff.delay_with_jitter(0, 0.0),
            Some(Duration::from_millis(50))
        );
        assert_eq!(
            backoff.delay_with_jitter(2, 0.5),
            Some(Duration::from_millis(300))
        );
        assert_eq!(
            backoff.delay_with_jitter(1, 7.0),
            Some(Duration::from_millis(200)),
            "jitter is clamped"
        );
        assert_eq!(backoff.delay_with_jitter(3, 0.0), None);
    }
}
