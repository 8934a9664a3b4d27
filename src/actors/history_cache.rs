//! A few seconds of memory for usage-history answers: dashboards and scripts ask the same
//! question repeatedly, and each answer is a database aggregation. O(1) LRU, one owner.

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;
use lru::LruCache;

/// A cached answer for `key` if it is younger than the cache's TTL.
#[derive(Message)]
#[rtype(result = "Option<Arc<str>>")]
pub struct GetCached {
    pub key: String,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct PutCached {
    pub key: String,
    pub body: Arc<str>,
}

pub struct HistoryCache {
    entries: LruCache<String, (Instant, Arc<str>)>,
    ttl: Duration,
}

impl HistoryCache {
    pub fn new(capacity: NonZeroUsize, ttl: Duration) -> HistoryCache {
        HistoryCache {
            entries: LruCache::new(capacity),
            ttl,
        }
    }
}

impl Actor for HistoryCache {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(1024);
    }
}

impl Handler<GetCached> for HistoryCache {
    type Result = Option<Arc<str>>;

    fn handle(&mut self, msg: GetCached, _: &mut Context<Self>) -> Self::Result {
        let ttl = self.ttl;
        match self.entries.get(&msg.key) {
            Some((stored, body)) if stored.elapsed() < ttl => Some(body.clone()),
            Some(_) => {
                self.entries.pop(&msg.key);
                None
            }
            None => None,
        }
    }
}

impl Handler<PutCached> for HistoryCache {
    type Result = ();

    fn handle(&mut self, msg: PutCached, _: &mut Context<Self>) {
        self.entries.put(msg.key, (Instant::now(), msg.body));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix::test]
    async fn answers_expire_after_the_ttl_and_the_oldest_goes_first() {
        tokio::time::pause();
        let cap = NonZeroUsize::new(2).expect("non-zero");
        let cache = HistoryCache::new(cap, Duration::from_secs(5)).start();
        for key in ["a", "b", "c"] {
            cache
                .send(PutCached {
                    key: key.into(),
                    body: Arc::from(key),
                })
                .await
                .expect("put");
        }
        assert_eq!(
            cache
                .send(GetCached { key: "a".into() })
                .await
                .expect("get"),
            None,
            "evicted as least recent"
        );
        assert_eq!(
            cache
                .send(GetCached { key: "c".into() })
                .await
                .expect("get")
                .as_deref(),
            Some("c")
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            cache
                .send(GetCached { key: "c".into() })
                .await
                .expect("get"),
            None,
            "expired"
        );
    }
}
