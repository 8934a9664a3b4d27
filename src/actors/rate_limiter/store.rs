//! Where a limiter's windows live: this instance's memory ([`LocalWindow`](super::LocalWindow))
//! or the cluster's Redis ([`RedisWindow`](super::RedisWindow)). The actor is written once
//! against [`RateStore`].

use std::sync::Arc;

use actix::clock::Instant;
use futures_util::future::LocalBoxFuture;

use super::{Admission, RateLimiterStats};
use crate::cluster::RedisUnavailable;

/// A store's answer to one `check`.
pub enum Decision {
    /// Decided on the spot (the local window).
    Decided(Admission),
    /// Being decided elsewhere (Redis): the future resolves to the decision, or to `Err` when
    /// the store could not decide; the caller then decides locally.
    Asked(LocalBoxFuture<'static, Result<Admission, RedisUnavailable>>),
    /// The store cannot be asked right now (Redis is down): decide locally at once, without
    /// waiting on anything.
    Unavailable,
}

/// At most `limit` events per key in any `window`; an admitted event is counted.
pub trait RateStore: 'static {
    /// Decides one event for `key`; `now` is the actor's clock (the local window's time).
    fn check(&mut self, key: &Arc<str>, now: Instant) -> Decision;

    /// Drops keys with no event inside the window; returns how many were dropped. A store
    /// whose keys expire on their own drops none.
    fn evict_idle(&mut self, now: Instant) -> usize;

    /// What this instance holds in memory for the store.
    fn stats(&self) -> RateLimiterStats;
}
