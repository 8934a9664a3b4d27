//! The sliding log in the cluster's Redis: one sorted set per key, and one script call
//! (EVALSHA, one round trip) per decision, so the limit holds for all instances together.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use actix::clock::Instant;
use redis::Script;

use super::store::{Decision, RateStore};
use super::{Admission, RateLimiterStats};
use crate::cluster::RedisLink;

/// Loaded once per process; `invoke_async` sends EVALSHA and loads the script on NOSCRIPT
/// (a Redis restart), so the script costs one round trip per decision.
static SLIDING_WINDOW: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("sliding_window.lua")));

/// One limiter's windows in Redis, under `rl:<name>:<key>`.
pub struct RedisWindow {
    link: RedisLink,
    prefix: Arc<str>,
    limit: u32,
    window_ms: u64,
}

impl RedisWindow {
    /// `name` separates limiters (`users`, `admins`, …) that share a key space.
    pub fn new(link: RedisLink, name: &str, limit: u32, window: Duration) -> RedisWindow {
        let prefix = Arc::from(link.keys().key(&format!("rl:{name}:")));
        RedisWindow {
            link,
            prefix,
            limit: limit.max(1),
            // A zero window would expire the log at once (PEXPIRE 0); one millisecond is the
            // shortest window Redis can keep.
            window_ms: (window.as_millis() as u64).max(1),
        }
    }
}

impl RateStore for RedisWindow {
    fn check(&mut self, key: &Arc<str>, _now: Instant) -> Decision {
        // Checked here rather than left to `link.run` so a down link costs no future at all.
        if !self.link.is_up() {
            return Decision::Unavailable;
        }
        let link = self.link.clone();
        let mut redis_key = String::with_capacity(self.prefix.len() + key.len());
        redis_key.push_str(&self.prefix);
        redis_key.push_str(key);
        let (limit, window_ms) = (self.limit, self.window_ms);
        let nonce: u64 = rand::random();
        Decision::Asked(Box::pin(async move {
            let (admitted, retry_after_ms): (i64, i64) = link
                .run(|mut conn| async move {
                    SLIDING_WINDOW
                        .key(redis_key)
                        .arg(limit)
                        .arg(window_ms)
                        .arg(nonce)
                        .invoke_async(&mut conn)
                        .await
                })
                .await?;
            Ok(if admitted == 1 {
                Admission::Allowed
            } else {
                Admission::Limited {
                    retry_after: Duration::from_millis(retry_after_ms.max(1) as u64),
                }
            })
        }))
    }

    fn evict_idle(&mut self, _now: Instant) -> usize {
        // Every log expires in Redis one window after its last event.
        0
    }

    fn stats(&self) -> RateLimiterStats {
        RateLimiterStats::default()
    }
}
