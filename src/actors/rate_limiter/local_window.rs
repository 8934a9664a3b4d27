//! The sliding log in this instance's memory: the whole limiter without cluster mode, and
//! the fallback of the Redis one while Redis is down.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;

use super::store::{Decision, RateStore};
use super::{Admission, RateLimiterStats};

/// The log of each key's admitted events, oldest first. A log holds at most `limit` entries,
/// so memory is bounded by `limit × active keys`, and idle keys are swept.
pub struct LocalWindow {
    limit: usize,
    window: Duration,
    keys: HashMap<Arc<str>, VecDeque<Instant>>,
}

impl LocalWindow {
    pub fn new(limit: u32, window: Duration) -> LocalWindow {
        LocalWindow {
            limit: limit.max(1) as usize,
            window,
            keys: HashMap::new(),
        }
    }

    pub fn check_at(&mut self, key: &Arc<str>, now: Instant) -> Admission {
        let window = self.window;
        let log = match self.keys.get_mut(&**key) {
            Some(log) => log,
            None => self.keys.entry(key.clone()).or_default(),
        };
        while log
            .front()
            .is_some_and(|&t| now.duration_since(t) >= window)
        {
            log.pop_front();
        }
        if log.len() < self.limit {
            log.push_back(now);
            return Admission::Allowed;
        }
        // Full: the next slot opens when the oldest event leaves the window.
        let oldest = log.front().copied().unwrap_or(now);
        let retry_after = (oldest + window).saturating_duration_since(now);
        Admission::Limited {
            retry_after: retry_after.max(Duration::from_millis(1)),
        }
    }
}

impl RateStore for LocalWindow {
    fn check(&mut self, key: &Arc<str>, now: Instant) -> Decision {
        Decision::Decided(self.check_at(key, now))
    }

    fn evict_idle(&mut self, now: Instant) -> usize {
        let before = self.keys.len();
        let window = self.window;
        self.keys
            .retain(|_, log| log.back().is_some_and(|&t| now.duration_since(t) < window));
        before - self.keys.len()
    }

    fn stats(&self) -> RateLimiterStats {
        RateLimiterStats {
            keys: self.keys.len(),
            events: self.keys.values().map(VecDeque::len).sum(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(s: &str) -> Arc<str> {
        Arc::from(s)
    }

    #[test]
    fn admits_limit_then_reports_when_the_oldest_leaves() {
        let start = Instant::now();
        let mut state = LocalWindow::new(3, Duration::from_secs(10));
        let k = key("u");
        for i in 0..3 {
            assert_eq!(
                state.check_at(&k, start + Duration::from_secs(i)),
                Admission::Allowed
            );
        }
        assert_eq!(
            state.check_at(&k, start + Duration::from_secs(4)),
            Admission::Limited {
                retry_after: Duration::from_secs(6)
            }
        );
        assert_eq!(
            state.check_at(&k, start + Duration::from_secs(10)),
            Admission::Allowed
        );
        assert_eq!(state.check_at(&key("other"), start), Admission::Allowed);
    }

    #[test]
    fn hundred_thousand_keys_are_all_swept_after_the_window() {
        let start = Instant::now();
        let mut state = LocalWindow::new(5, Duration::from_secs(60));
        for i in 0..100_000 {
            state.check_at(&key(&format!("user-{i}")), start);
        }
        assert_eq!(
            state.stats(),
            RateLimiterStats {
                keys: 100_000,
                events: 100_000
            }
        );
        assert_eq!(state.evict_idle(start + Duration::from_secs(30)), 0);
        assert_eq!(state.evict_idle(start + Duration::from_secs(61)), 100_000);
        assert_eq!(state.stats(), RateLimiterStats::default());
    }

    proptest! {
        /// In any window, never more admitted than the limit.
        #[test]
        fn never_more_than_limit_in_any_window(
            limit in 1u32..8,
            window_ms in 10u64..500,
            gaps in proptest::collection::vec(0u64..100, 1..300),
        ) {
            let start = Instant::now();
            let window = Duration::from_millis(window_ms);
            let mut state = LocalWindow::new(limit, window);
            let k = key("k");
            let mut now = start;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += Duration::from_millis(gap);
                if state.check_at(&k, now) == Admission::Allowed {
                    admitted.push(now);
                }
            }
            for (i, &t) in admitted.iter().enumerate() {
                let in_window = admitted[i..].iter().take_while(|&&u| u.duration_since(t) < window).count();
                prop_assert!(in_window <= limit as usize);
            }
        }

        /// A refusal's retry_after is exactly when the next event would be admitted: not
        /// before (still refused a millisecond earlier), and at that moment admitted.
        #[test]
        fn retry_after_is_when_the_next_event_fits(
            limit in 1u32..5,
            window_ms in 10u64..300,
            gaps in proptest::collection::vec(0u64..50, 1..100),
        ) {
            let start = Instant::now();
            let window = Duration::from_millis(window_ms);
            let mut state = LocalWindow::new(limit, window);
            let k = key("k");
            let mut now = start;
            for gap in gaps {
                now += Duration::from_millis(gap);
                if let Admission::Limited { retry_after } = state.check_at(&k, now) {
                    prop_assert!(retry_after <= window);
                    let mut probe = LocalWindow::new(limit, window);
                    probe.keys = state.keys.clone();
                    if retry_after > Duration::from_millis(1) {
                        let early = now + retry_after - Duration::from_millis(1);
                        prop_assert!(probe.check_at(&k, early) != Admission::Allowed);
                    }
                    prop_assert_eq!(probe.check_at(&k, now + retry_after), Admission::Allowed);
                }
            }
        }
    }
}
