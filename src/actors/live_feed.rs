//! The admins' live metrics feed: who subscribes, one report a tick serialized once and
//! offered to every subscriber's mailbox without waiting; a slow subscriber costs itself
//! frames, never the feed its loop.
//!
//! In cluster mode the same tick also hands this instance's snapshot to `Membership`, which
//! publishes it with its next heartbeat: the numbers every instance's reports add up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use super::connections::CloseConnection;
use super::membership::SetOwnSnapshot;
use super::report::{AdminMetrics, ClusterNumbers, ReportSources, PUBLISHED_RECENT};

/// One frame of the live metrics feed, serialized once for every subscriber.
#[derive(Message, Clone)]
#[rtype(result = "()")]
pub struct FeedFrame(pub Arc<str>);

/// Cuts a subscriber's socket from outside its actor, which a client that stopped reading
/// can freeze (the transport implements it).
pub trait SocketCutOff: Send + Sync {
    fn cut_off(&self);
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub id: u64,
    pub frames: Recipient<FeedFrame>,
    pub close: Recipient<CloseConnection>,
    /// Lets the feed cut a subscriber off even when its actor is frozen on a stalled socket.
    pub socket: Option<Arc<dyn SocketCutOff>>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Unsubscribe {
    pub id: u64,
}

/// A subscriber's report on one frame: written to its socket, or dropped because the
/// client is not reading. `disconnected` when it gave up on the client.
#[derive(Message)]
#[rtype(result = "()")]
pub struct FeedDelivery {
    pub written: bool,
    pub disconnected: bool,
}

/// Closes every subscriber (shutdown); returns how many were told.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseSubscribers {
    pub code: u16,
    pub reason: String,
}

#[derive(Message)]
#[rtype(result = "FeedStats")]
pub struct GetFeedStats;

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct FeedStats {
    pub subscribers: usize,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub subscribers_dropped: u64,
}

#[derive(Clone, Debug)]
pub struct FeedSettings {
    pub interval: Duration,
    pub recent_requests: usize,
    /// Frames in a row a subscriber may fail to take before it is cut off.
    pub max_missed_frames: u32,
}

struct Subscriber<S> {
    handle: S,
    /// Frames in a row that did not fit its mailbox.
    missed: u32,
}

/// Subscribers (each behind a handle `S`) and the delivery counters.
pub struct LiveFeedState<S> {
    subscribers: HashMap<u64, Subscriber<S>>,
    stats: FeedStats,
    max_missed_frames: u32,
}

impl<S> LiveFeedState<S> {
    pub fn new(max_missed_frames: u32) -> Self {
        LiveFeedState {
            subscribers: HashMap::new(),
            stats: FeedStats::default(),
            max_missed_frames,
        }
    }

    pub fn subscribe(&mut self, id: u64, handle: S) {
        self.subscribers
            .insert(id, Subscriber { handle, missed: 0 });
    }

    pub fn unsubscribe(&mut self, id: u64) {
        self.subscribers.remove(&id);
    }

    pub fn is_empty(&self) -> bool {
        self.subscribers.is_empty()
    }

    pub fn handles(&self) -> impl Iterator<Item = &S> {
        self.subscribers.values().map(|s| &s.handle)
    }

    /// Offers one frame to every subscriber through `deliver` (false: its mailbox is full).
    /// Returns the subscribers given up on after too many misses in a row, already removed.
    pub fn offer(&mut self, mut deliver: impl FnMut(&S) -> bool) -> Vec<(u64, S)> {
        let mut given_up = Vec::new();
        for (id, subscriber) in self.subscribers.iter_mut() {
            if deliver(&subscriber.handle) {
                subscriber.missed = 0;
                continue;
            }
            // Its mailbox is full: it has not even taken the previous frames.
            self.stats.frames_dropped += 1;
            subscriber.missed += 1;
            if subscriber.missed >= self.max_missed_frames {
                given_up.push(*id);
            }
        }
        given_up
            .into_iter()
            .filter_map(|id| {
                let subscriber = self.subscribers.remove(&id)?;
                self.stats.subscribers_dropped += 1;
                Some((id, subscriber.handle))
            })
            .collect()
    }

    /// Counts a subscriber's own report on a frame it was handed.
    pub fn delivered(&mut self, written: bool, disconnected: bool) {
        if written {
            self.stats.frames_sent += 1;
        } else {
            self.stats.frames_dropped += 1;
        }
        if disconnected {
            self.stats.subscribers_dropped += 1;
        }
    }

    pub fn stats(&self) -> FeedStats {
        FeedStats {
            subscribers: self.subscribers.len(),
            ..self.stats.clone()
        }
    }
}

/// What the feed holds of one subscriber.
pub struct SubscriberHandle {
    frames: Recipient<FeedFrame>,
    close: Recipient<CloseConnection>,
    socket: Option<Arc<dyn SocketCutOff>>,
}

pub struct LiveFeed {
    state: LiveFeedState<SubscriberHandle>,
    sources: ReportSources,
    settings: FeedSettings,
    /// A tick is skipped while the previous report is still being gathered.
    gathering: bool,
}

impl LiveFeed {
    pub fn new(sources: ReportSources, settings: FeedSettings) -> LiveFeed {
        LiveFeed {
            state: LiveFeedState::new(settings.max_missed_frames),
            sources,
            settings,
            gathering: false,
        }
    }

    /// Gathers this instance's numbers once: publishes them to the cluster (cluster mode),
    /// and, when someone watches, adds the peers' and offers the same serialized frame to
    /// every subscriber.
    fn tick(&mut self, ctx: &mut Context<Self>) {
        let publish = self.sources.membership.is_some();
        let watched = !self.state.is_empty();
        if !(publish || watched) || self.gathering {
            return;
        }
        self.gathering = true;
        let sources = self.sources.clone();
        let feed_stats = self.state.stats();
        let recent = self.settings.recent_requests;
        let gather = async move {
            let own = sources.local(recent, feed_stats).await?;
            if let Some(membership) = &sources.membership {
                let mut published = own.clone();
                published.metrics.recent.truncate(PUBLISHED_RECENT);
                match serde_json::to_value(&published) {
                    // do_send: a lost snapshot is replaced by the next one a second later.
                    Ok(json) => membership.do_send(SetOwnSnapshot(json)),
                    Err(err) => log::error!("event=snapshot_encode_failed error={err}"),
                }
            }
            if !watched {
                return Ok(None);
            }
            let view = sources.cluster_view().await?;
            Ok::<_, crate::error::AppError>(Some(
                ClusterNumbers::new(&sources.instance, own, view).report(recent),
            ))
        };
        ctx.spawn(gather.into_actor(self).map(|report, act, _| {
            act.gathering = false;
            let report = match report {
                Ok(Some(report)) => report,
                Ok(None) => return,
                Err(err) => return log::warn!("event=feed_gather_failed error={err}"),
            };
            match feed_frame(&report) {
                Some(frame) => act.offer(frame),
                None => log::error!("event=feed_encode_failed"),
            }
        }));
    }

    fn offer(&mut self, frame: Arc<str>) {
        let given_up = self
            .state
            .offer(|s| s.frames.try_send(FeedFrame(frame.clone())).is_ok());
        for (id, subscriber) in given_up {
            log::warn!("event=feed_subscriber_dropped id={id} reason=not_reading");
            if let Some(socket) = subscriber.socket {
                socket.cut_off();
            }
        }
    }
}

/// The report as a feed frame: its JSON object with `"type":"metrics"` added.
fn feed_frame(report: &AdminMetrics) -> Option<Arc<str>> {
    match serde_json::to_value(report) {
        Ok(serde_json::Value::Object(mut object)) => {
            object.insert("type".into(), serde_json::Value::from("metrics"));
            Some(Arc::from(serde_json::Value::Object(object).to_string()))
        }
        _ => None,
    }
}

impl Actor for LiveFeed {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        ctx.run_interval(self.settings.interval, |act, ctx| act.tick(ctx));
        log::info!("event=actor_started actor=live_feed");
    }
}

impl Handler<Subscribe> for LiveFeed {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        let handle = SubscriberHandle {
            frames: msg.frames,
            close: msg.close,
            socket: msg.socket,
        };
        self.state.subscribe(msg.id, handle);
    }
}

impl Handler<Unsubscribe> for LiveFeed {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.state.unsubscribe(msg.id);
    }
}

impl Handler<FeedDelivery> for LiveFeed {
    type Result = ();

    fn handle(&mut self, msg: FeedDelivery, _: &mut Context<Self>) {
        self.state.delivered(msg.written, msg.disconnected);
    }
}

impl Handler<CloseSubscribers> for LiveFeed {
    type Result = usize;

    fn handle(&mut self, msg: CloseSubscribers, _: &mut Context<Self>) -> usize {
        // do_send: a shutdown close must reach even a subscriber whose mailbox is full.
        for subscriber in self.state.handles() {
            subscriber.close.do_send(CloseConnection {
                code: msg.code,
                reason: msg.reason.clone(),
                cancel_replies: None,
            });
        }
        self.state.stats().subscribers
    }
}

impl Handler<GetFeedStats> for LiveFeed {
    type Result = MessageResult<GetFeedStats>;

    fn handle(&mut self, _: GetFeedStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subscriber_that_keeps_missing_frames_is_given_up() {
        let mut state = LiveFeedState::new(3);
        state.subscribe(1, "reader");
        state.subscribe(2, "stalled");
        for round in 1..=2 {
            let given_up = state.offer(|s| *s == "reader");
            assert!(given_up.is_empty(), "round {round}");
        }
        let given_up = state.offer(|s| *s == "reader");
        assert_eq!(given_up, vec![(2, "stalled")]);
        let stats = state.stats();
        assert_eq!(stats.subscribers, 1);
        assert_eq!(stats.frames_dropped, 3);
        assert_eq!(stats.subscribers_dropped, 1);
    }

    #[test]
    fn one_frame_taken_resets_the_misses() {
        let mut state = LiveFeedState::new(2);
        state.subscribe(7, ());
        assert!(state.offer(|_| false).is_empty());
        assert!(state.offer(|_| true).is_empty());
        assert!(
            state.offer(|_| false).is_empty(),
            "the miss count started again"
        );
        assert_eq!(state.offer(|_| false).len(), 1);
        assert!(state.is_empty());
    }

    #[test]
    fn subscriber_reports_are_counted() {
        let mut state: LiveFeedState<()> = LiveFeedState::new(3);
        state.delivered(true, false);
        state.delivered(true, false);
        state.delivered(false, true);
        assert_eq!(
            state.stats(),
            FeedStats {
                subscribers: 0,
                frames_sent: 2,
                frames_dropped: 1,
                subscribers_dropped: 1,
            }
        );
        state.subscribe(1, ());
        state.unsubscribe(1);
        assert!(state.is_empty());
    }
}
