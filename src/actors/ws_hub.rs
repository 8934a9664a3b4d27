//! The open chat connections, the origin allow-list the handshake checks, and the admins'
//! live metrics feed. Everything goes out from here to each connection's mailbox without
//! waiting on any of them: a slow subscriber costs itself frames, never the hub its loop.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use serde::Serialize;

use crate::report::ReportSources;
use crate::ws::connection::{FeedFrame, SocketShutdown};

use crate::chat::CancelReason;
use crate::domain::UserId;
use crate::ws::connection::CloseConnection;

#[derive(Message)]
#[rtype(result = "()")]
pub struct RegisterConnection {
    pub conn_id: u64,
    pub user: UserId,
    pub connection: Recipient<CloseConnection>,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct UnregisterConnection {
    pub conn_id: u64,
}

/// Whether a browser page from `origin` may open a WebSocket. `own_origin` is the origin of
/// the request itself (same scheme, host and port), which is always allowed.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct CheckOrigin {
    pub origin: Option<String>,
    pub own_origin: String,
}

#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct GetOrigins;

#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct SetOrigins {
    pub origins: Vec<String>,
}

/// Closes every connection of `user` (e.g. the user was disabled); returns how many.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseUserConnections {
    pub user: UserId,
    pub code: u16,
    pub reason: String,
}

/// Closes every connection at once (shutdown): running replies end with `unavailable`
/// before the close. Returns how many were told.
#[derive(Message)]
#[rtype(result = "usize")]
pub struct CloseAllConnections {
    pub code: u16,
    pub reason: String,
}

#[derive(Message)]
#[rtype(result = "HubStats")]
pub struct GetHubStats;

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct HubStats {
    pub connections: usize,
    pub subscribers: usize,
    pub frames_sent: u64,
    pub frames_dropped: u64,
    pub subscribers_dropped: u64,
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Subscribe {
    pub id: u64,
    pub frames: Recipient<FeedFrame>,
    pub close: Recipient<CloseConnection>,
    /// Lets the hub cut a subscriber off even when its actor is frozen on a stalled socket.
    pub socket: Option<Arc<SocketShutdown>>,
}

struct Subscriber {
    frames: Recipient<FeedFrame>,
    close: Recipient<CloseConnection>,
    socket: Option<Arc<SocketShutdown>>,
    /// Frames in a row that did not fit its mailbox.
    missed: u32,
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

#[derive(Clone, Debug)]
pub struct FeedSettings {
    pub interval: Duration,
    pub recent_requests: usize,
    /// Frames in a row a subscriber may fail to take before it is cut off.
    pub max_missed_frames: u32,
}

/// Origins compare case-insensitively and without a trailing slash, as browsers send them.
pub fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[derive(Default)]
pub struct OriginPolicy {
    allow_any: bool,
    allowed: Vec<String>,
}

impl OriginPolicy {
    pub fn new(origins: &[String]) -> OriginPolicy {
        OriginPolicy {
            allow_any: origins.iter().any(|o| o.trim() == "*"),
            allowed: origins
                .iter()
                .filter(|o| o.trim() != "*")
                .map(|o| normalize_origin(o))
                .collect(),
        }
    }

    pub fn list(&self) -> Vec<String> {
        let mut list = self.allowed.clone();
        if self.allow_any {
            list.push("*".into());
        }
        list
    }

    pub fn allows(&self, origin: Option<&str>, own_origin: &str) -> bool {
        let Some(origin) = origin else {
            // No Origin header: not a browser, so no cross-site risk to guard against.
            return true;
        };
        let origin = normalize_origin(origin);
        self.allow_any || origin == normalize_origin(own_origin) || self.allowed.contains(&origin)
    }
}

pub struct WsHub {
    origins: OriginPolicy,
    connections: HashMap<u64, (UserId, Recipient<CloseConnection>)>,
    subscribers: HashMap<u64, Subscriber>,
    sources: ReportSources,
    feed: FeedSettings,
    stats: HubStats,
    /// A tick is skipped while the previous report is still being gathered.
    gathering: bool,
}

impl WsHub {
    pub fn new(origins: &[String], sources: ReportSources, feed: FeedSettings) -> WsHub {
        WsHub {
            origins: OriginPolicy::new(origins),
            connections: HashMap::new(),
            subscribers: HashMap::new(),
            sources,
            feed,
            stats: HubStats::default(),
            gathering: false,
        }
    }

    fn current_stats(&self) -> HubStats {
        HubStats {
            connections: self.connections.len(),
            subscribers: self.subscribers.len(),
            ..self.stats.clone()
        }
    }

    /// Gathers one report and offers the same serialized frame to every subscriber.
    fn broadcast(&mut self, ctx: &mut Context<Self>) {
        if self.subscribers.is_empty() || self.gathering {
            return;
        }
        self.gathering = true;
        let sources = self.sources.clone();
        let hub_stats = self.current_stats();
        let recent = self.feed.recent_requests;
        let gather = async move { sources.gather(recent, hub_stats).await };
        ctx.spawn(gather.into_actor(self).map(|report, act, _| {
            act.gathering = false;
            let report = match report {
                Ok(report) => report,
                Err(err) => return log::warn!("event=feed_gather_failed error={err}"),
            };
            let frame = match serde_json::to_value(&report) {
                Ok(serde_json::Value::Object(mut object)) => {
                    object.insert("type".into(), serde_json::Value::from("metrics"));
                    serde_json::Value::Object(object).to_string()
                }
                _ => return log::error!("event=feed_encode_failed"),
            };
            let frame: Arc<str> = Arc::from(frame);
            let mut given_up = Vec::new();
            for (id, subscriber) in act.subscribers.iter_mut() {
                if subscriber.frames.try_send(FeedFrame(frame.clone())).is_ok() {
                    subscriber.missed = 0;
                    continue;
                }
                // Its mailbox is full: it has not even taken the previous frames.
                act.stats.frames_dropped += 1;
                subscriber.missed += 1;
                if subscriber.missed >= act.feed.max_missed_frames {
                    given_up.push(*id);
                }
            }
            for id in given_up {
                if let Some(subscriber) = act.subscribers.remove(&id) {
                    log::warn!("event=feed_subscriber_dropped id={id} reason=not_reading");
                    act.stats.subscribers_dropped += 1;
                    if let Some(socket) = subscriber.socket {
                        socket.shutdown();
                    }
                }
            }
        }));
    }
}

impl Actor for WsHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        ctx.run_interval(self.feed.interval, |act, ctx| act.broadcast(ctx));
        log::info!("event=actor_started actor=ws_hub");
    }
}

impl Handler<Subscribe> for WsHub {
    type Result = ();

    fn handle(&mut self, msg: Subscribe, _: &mut Context<Self>) {
        self.subscribers.insert(
            msg.id,
            Subscriber {
                frames: msg.frames,
                close: msg.close,
                socket: msg.socket,
                missed: 0,
            },
        );
    }
}

impl Handler<Unsubscribe> for WsHub {
    type Result = ();

    fn handle(&mut self, msg: Unsubscribe, _: &mut Context<Self>) {
        self.subscribers.remove(&msg.id);
    }
}

impl Handler<FeedDelivery> for WsHub {
    type Result = ();

    fn handle(&mut self, msg: FeedDelivery, _: &mut Context<Self>) {
        if msg.written {
            self.stats.frames_sent += 1;
        } else {
            self.stats.frames_dropped += 1;
        }
        if msg.disconnected {
            self.stats.subscribers_dropped += 1;
        }
    }
}

impl Handler<RegisterConnection> for WsHub {
    type Result = ();

    fn handle(&mut self, msg: RegisterConnection, _: &mut Context<Self>) {
        self.connections
            .insert(msg.conn_id, (msg.user, msg.connection));
    }
}

impl Handler<UnregisterConnection> for WsHub {
    type Result = ();

    fn handle(&mut self, msg: UnregisterConnection, _: &mut Context<Self>) {
        self.connections.remove(&msg.conn_id);
        // After a crowd leaves, the map's peak capacity is memory nobody uses; halving
        // whenever it is under a quarter full keeps this amortised O(1).
        if self.connections.capacity() > 1024
            && self.connections.len() < self.connections.capacity() / 4
        {
            self.connections.shrink_to(self.connections.capacity() / 2);
        }
    }
}

impl Handler<CheckOrigin> for WsHub {
    type Result = bool;

    fn handle(&mut self, msg: CheckOrigin, _: &mut Context<Self>) -> bool {
        self.origins.allows(msg.origin.as_deref(), &msg.own_origin)
    }
}

impl Handler<GetOrigins> for WsHub {
    type Result = MessageResult<GetOrigins>;

    fn handle(&mut self, _: GetOrigins, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.origins.list())
    }
}

impl Handler<SetOrigins> for WsHub {
    type Result = MessageResult<SetOrigins>;

    fn handle(&mut self, msg: SetOrigins, _: &mut Context<Self>) -> Self::Result {
        self.origins = OriginPolicy::new(&msg.origins);
        log::info!("event=origins_updated count={}", msg.origins.len());
        MessageResult(self.origins.list())
    }
}

impl Handler<CloseUserConnections> for WsHub {
    type Result = usize;

    fn handle(&mut self, msg: CloseUserConnections, _: &mut Context<Self>) -> usize {
        let mut closed = 0;
        for (user, connection) in self.connections.values() {
            if *user == msg.user {
                // try_send: a connection with a full mailbox is already overwhelmed; its
                // heartbeat will close it, and the hub must not wait on it.
                if connection
                    .try_send(CloseConnection {
                        code: msg.code,
                        reason: msg.reason.clone(),
                        cancel_replies: None,
                    })
                    .is_ok()
                {
                    closed += 1;
                }
            }
        }
        closed
    }
}

impl Handler<CloseAllConnections> for WsHub {
    type Result = usize;

    fn handle(&mut self, msg: CloseAllConnections, _: &mut Context<Self>) -> usize {
        // do_send: a shutdown close must reach even a connection whose mailbox is full. No
        // connection is awaited, so one slow client cannot hold up the others.
        for subscriber in self.subscribers.values() {
            subscriber.close.do_send(CloseConnection {
                code: msg.code,
                reason: msg.reason.clone(),
                cancel_replies: None,
            });
        }
        for (_, connection) in self.connections.values() {
            connection.do_send(CloseConnection {
                code: msg.code,
                reason: msg.reason.clone(),
                cancel_replies: Some(CancelReason::Shutdown),
            });
        }
        self.connections.len() + self.subscribers.len()
    }
}

impl Handler<GetHubStats> for WsHub {
    type Result = MessageResult<GetHubStats>;

    fn handle(&mut self, _: GetHubStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.current_stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_policy() {
        let policy = OriginPolicy::new(&["https://app.test".into()]);
        assert!(policy.allows(None, "http://gw:8080"));
        assert!(policy.allows(Some("https://app.test"), "http://gw:8080"));
        assert!(policy.allows(Some("HTTPS://APP.TEST/"), "http://gw:8080"));
        assert!(!policy.allows(Some("https://evil.test"), "http://gw:8080"));
        assert!(
            policy.allows(Some("http://gw:8080"), "http://gw:8080"),
            "own origin"
        );
        assert!(
            !policy.allows(Some("http://gw:8081"), "http://gw:8080"),
            "other port"
        );
        let any = OriginPolicy::new(&["*".into()]);
        assert!(any.allows(Some("https://evil.test"), "http://gw:8080"));
        assert_eq!(any.list(), vec!["*".to_string()]);
    }
}
