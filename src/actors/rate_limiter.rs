//! Keyed sliding-window limiter: at most `limit` events per key in any `window`. One
//! instance serves chat users, another admins; each owns its state.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;

/// The decision for one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    Limited { retry_after: Duration },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RateLimiterStats {
    pub keys: usize,
    pub events: usize,
}

/// Asks whether one more event for `key` fits; an allowed event is counted.
#[derive(Message)]
#[rtype(result = "Admission")]
pub struct Check {
    pub key: Arc<str>,
}

#[derive(Message)]
#[rtype(result = "RateLimiterStats")]
pub struct GetRateLimiterStats;

/// The log of each key's admitted events, oldest first. A log holds at most `limit` entries,
/// so memory is bounded by `limit × active keys`, and idle keys are swept.
pub struct RateLimiterState {
    limit: usize,
    window: Duration,
    keys: HashMap<Arc<str>, VecDeque<Instant>>,
}

impl RateLimiterState {
    pub fn new(limit: u32, window: Duration) -> RateLimiterState {
        RateLimiterState {
            limit: limit.max(1) as usize,
            window,
            keys: HashMap::new(),
        }
    }

    pub fn check(&mut self, key: &Arc<str>, now: Instant) -> Admission {
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

    /// Drops keys with no event inside the window; returns how many were dropped.
    pub fn evict_idle(&mut self, now: Instant) -> usize {
        let before = self.keys.len();
        let window = self.window;
        self.keys
            .retain(|_, log| log.back().is_some_and(|&t| now.duration_since(t) < window));
        before - self.keys.len()
    }

    pub fn stats(&self) -> RateLimiterStats {
        RateLimiterStats {
            keys: self.keys.len(),
            events: self.keys.values().map(VecDeque::len).sum(),
        }
    }
}

pub struct RateLimiter {
    name: &'static str,
    state: RateLimiterState,
    cleanup_every: Duration,
}

impl RateLimiter {
    /// `cleanup_every` is how often idle keys are swept.
    pub fn new(name: &'static str, limit: u32, window: Duration, cleanup_every: Duration) -> Self {
        RateLimiter {
            name,
            state: RateLimiterState::new(limit, window),
            cleanup_every,
        }
    }
}

impl Actor for RateLimiter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(self.cleanup_every, |act, _ctx| {
            let evicted = act.state.evict_idle(Instant::now());
            if evicted > 0 {
                log::debug!(
                    "event=rate_limiter_evict limiter={} keys={evicted}",
                    act.name
                );
            }
        });
        log::info!(
            "event=actor_started actor=rate_limiter limiter={}",
            self.name
        );
    }
}

impl Handler<Check> for RateLimiter {
    type Result = MessageResult<Check>;

    fn handle(&mut self, msg: Check, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.check(&msg.key, Instant::now()))
    }
}

impl Handler<GetRateLimiterStats> for RateLimiter {
    type Result = MessageResult<GetRateLimiterStats>;

    fn handle(&mut self, _: GetRateLimiterStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.stats())
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
        let mut state = RateLimiterState::new(3, Duration::from_secs(10));
        let k = key("u");
        for i in 0..3 {
            assert_eq!(
                state.check(&k, start + Duration::from_secs(i)),
                Admission::Allowed
            );
        }
        assert_eq!(
            state.check(&k, start + Duration::from_secs(4)),
            Admission::Limited {
                retry_after: Duration::from_secs(6)
            }
        );
        assert_eq!(
            state.check(&k, start + Duration::from_secs(10)),
            Admission::Allowed
        );
        assert_eq!(state.check(&key("other"), start), Admission::Allowed);
    }

    #[test]
    fn hundred_thousand_keys_are_all_swept_after_the_window() {
        let start = Instant::now();
        let mut state = RateLimiterState::new(5, Duration::from_secs(60));
        for i in 0..100_000 {
            state.check(&key(&format!("user-{i}")), start);
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
            let mut state = RateLimiterState::new(limit, window);
            let k = key("k");
            let mut now = start;
            let mut admitted = Vec::new();
            for gap in gaps {
                now += Duration::from_millis(gap);
                if state.check(&k, now) == Admission::Allowed {
                    admitted.push(now);
                }
            }
            for (i, &t) in admitted.iter().enumerate() {
                let in_window = admitted[i..].iter().take_while(|&&u| u.duration_since(t) < window).count();
                prop_assert!(in_window <= limit as usize);
            }
        }
    }

    #[actix::test]
    async fn actor_sweeps_idle_keys_on_its_timer() {
        tokio::time::pause();
        let limiter =
            RateLimiter::new("test", 2, Duration::from_secs(1), Duration::from_secs(1)).start();
        for i in 0..100 {
            let admission = limiter
                .send(Check {
                    key: key(&format!("k{i}")),
                })
                .await
                .expect("send");
            assert_eq!(admission, Admission::Allowed);
        }
        assert_eq!(
            limiter.send(GetRateLimiterStats).await.expect("stats").keys,
            100
        );
        tokio::time::advance(Duration::from_millis(2100)).await;
        // Let the interval callback run.
        tokio::task::yield_now().await;
        assert_eq!(
            limiter.send(GetRateLimiterStats).await.expect("stats").keys,
            0
        );
    }
}
