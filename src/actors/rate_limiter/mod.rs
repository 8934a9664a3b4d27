//! Keyed sliding-window limiter: at most `limit` events per key in any `window`. One
//! instance serves chat users, one admins, one failed authentications; each owns its state.
//!
//! Behind the actor, a [`RateStore`]: the [`LocalWindow`] in memory, or in cluster mode the
//! [`RedisWindow`], which holds the limit for all instances together. While Redis cannot be
//! asked, a decision falls back to a local window at once: the request is never failed or
//! held up for Redis, and limits are per instance until it answers again.

mod local_window;
mod redis_window;
mod store;

use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;

pub use local_window::LocalWindow;
pub use redis_window::RedisWindow;
pub use store::{Decision, RateStore};

use crate::cluster::RedisLink;

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

/// Keys and events held in this instance's memory (the Redis store's live in Redis).
#[derive(Message)]
#[rtype(result = "RateLimiterStats")]
pub struct GetRateLimiterStats;

pub struct RateLimiter {
    name: &'static str,
    store: Box<dyn RateStore>,
    /// Decides while `store` cannot (Redis down). Unused, and so empty, while it can.
    fallback: LocalWindow,
    cleanup_every: Duration,
}

impl RateLimiter {
    /// A limiter in this instance's memory. `cleanup_every` is how often idle keys are swept.
    pub fn new(name: &'static str, limit: u32, window: Duration, cleanup_every: Duration) -> Self {
        RateLimiter::with_store(
            name,
            Box::new(LocalWindow::new(limit, window)),
            LocalWindow::new(limit, window),
            cleanup_every,
        )
    }

    /// In cluster mode (`link` set) the window lives in Redis, else in memory.
    pub fn for_cluster(
        name: &'static str,
        limit: u32,
        window: Duration,
        cleanup_every: Duration,
        link: Option<&RedisLink>,
    ) -> Self {
        match link {
            Some(link) => RateLimiter::with_store(
                name,
                Box::new(RedisWindow::new(link.clone(), name, limit, window)),
                LocalWindow::new(limit, window),
                cleanup_every,
            ),
            None => RateLimiter::new(name, limit, window, cleanup_every),
        }
    }

    pub fn with_store(
        name: &'static str,
        store: Box<dyn RateStore>,
        fallback: LocalWindow,
        cleanup_every: Duration,
    ) -> Self {
        RateLimiter {
            name,
            store,
            fallback,
            cleanup_every,
        }
    }
}

impl Actor for RateLimiter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(4096);
        ctx.run_interval(self.cleanup_every, |act, _ctx| {
            let now = Instant::now();
            let evicted = act.store.evict_idle(now) + act.fallback.evict_idle(now);
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
    type Result = ActorResponse<Self, Admission>;

    fn handle(&mut self, msg: Check, _: &mut Context<Self>) -> Self::Result {
        let now = Instant::now();
        match self.store.check(&msg.key, now) {
            Decision::Decided(admission) => ActorResponse::reply(admission),
            Decision::Unavailable => ActorResponse::reply(self.fallback.check_at(&msg.key, now)),
            // Spawned, not awaited in the mailbox: checks of other keys (other chats) go on
            // while this one is with Redis.
            Decision::Asked(decision) => {
                ActorResponse::r#async(decision.into_actor(self).map(move |decided, act, _| {
                    decided.unwrap_or_else(|err| {
                        log::debug!(
                            "event=rate_limiter_fallback limiter={} error={err}",
                            act.name
                        );
                        act.fallback.check_at(&msg.key, Instant::now())
                    })
                }))
            }
        }
    }
}

impl Handler<GetRateLimiterStats> for RateLimiter {
    type Result = MessageResult<GetRateLimiterStats>;

    fn handle(&mut self, _: GetRateLimiterStats, _: &mut Context<Self>) -> Self::Result {
        let (store, fallback) = (self.store.stats(), self.fallback.stats());
        MessageResult(RateLimiterStats {
            keys: store.keys + fallback.keys,
            events: store.events + fallback.events,
        })
    }
}

#[cfg(test)]
mod store_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn key(s: &str) -> Arc<str> {
        Arc::from(s)
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

    /// A store that is asked (like Redis) and fails: every decision falls back to the local
    /// window, which then holds the limit.
    struct FailingStore;

    impl RateStore for FailingStore {
        fn check(&mut self, _: &Arc<str>, _: Instant) -> Decision {
            Decision::Asked(Box::pin(async {
                Err(crate::cluster::RedisUnavailable("cut".into()))
            }))
        }
        fn evict_idle(&mut self, _: Instant) -> usize {
            0
        }
        fn stats(&self) -> RateLimiterStats {
            RateLimiterStats::default()
        }
    }

    /// A store that cannot be asked (Redis known down).
    struct DownStore;

    impl RateStore for DownStore {
        fn check(&mut self, _: &Arc<str>, _: Instant) -> Decision {
            Decision::Unavailable
        }
        fn evict_idle(&mut self, _: Instant) -> usize {
            0
        }
        fn stats(&self) -> RateLimiterStats {
            RateLimiterStats::default()
        }
    }

    async fn admitted(limiter: &Addr<RateLimiter>, n: usize) -> usize {
        let mut allowed = 0;
        for _ in 0..n {
            if limiter.send(Check { key: key("u") }).await.expect("send") == Admission::Allowed {
                allowed += 1;
            }
        }
        allowed
    }

    #[actix::test]
    async fn a_store_that_fails_or_is_down_falls_back_to_the_local_window() {
        let window = Duration::from_secs(60);
        for store in [
            Box::new(FailingStore) as Box<dyn RateStore>,
            Box::new(DownStore) as Box<dyn RateStore>,
        ] {
            let limiter =
                RateLimiter::with_store("test", store, LocalWindow::new(3, window), window).start();
            assert_eq!(admitted(&limiter, 10).await, 3);
            assert_eq!(
                limiter.send(GetRateLimiterStats).await.expect("stats"),
                RateLimiterStats { keys: 1, events: 3 }
            );
        }
    }

    /// A store whose answers come only when released: a check waiting on it must not hold up
    /// checks behind it in the mailbox.
    struct GatedStore(tokio::sync::watch::Receiver<bool>);

    impl RateStore for GatedStore {
        fn check(&mut self, key: &Arc<str>, _: Instant) -> Decision {
            if &**key != "slow" {
                return Decision::Decided(Admission::Allowed);
            }
            let mut gate = self.0.clone();
            Decision::Asked(Box::pin(async move {
                let _ = gate.wait_for(|open| *open).await;
                Ok(Admission::Allowed)
            }))
        }
        fn evict_idle(&mut self, _: Instant) -> usize {
            0
        }
        fn stats(&self) -> RateLimiterStats {
            RateLimiterStats::default()
        }
    }

    #[actix::test]
    async fn a_pending_decision_does_not_hold_up_the_mailbox() {
        let (open, gate) = tokio::sync::watch::channel(false);
        let window = Duration::from_secs(60);
        let limiter = RateLimiter::with_store(
            "test",
            Box::new(GatedStore(gate)),
            LocalWindow::new(1, window),
            window,
        )
        .start();
        let slow = limiter.send(Check { key: key("slow") });
        let slow = actix::spawn(slow);
        // Decided while the first check is still with its store.
        let fast = tokio::time::timeout(
            Duration::from_secs(5),
            limiter.send(Check { key: key("fast") }),
        )
        .await
        .expect("not held up")
        .expect("send");
        assert_eq!(fast, Admission::Allowed);
        assert!(!slow.is_finished());
        let _ = open.send(true);
        assert_eq!(slow.await.expect("join").expect("send"), Admission::Allowed);
    }
}
