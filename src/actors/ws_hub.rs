//! The open chat connections and the origin allow-list the handshake checks. Closing
//! connections (a disabled user, shutdown) goes out from here to each connection's mailbox
//! without waiting on any of them.

use std::collections::HashMap;

use actix::prelude::*;
use serde::Serialize;

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

#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct HubStats {
    pub connections: usize,
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
}

impl WsHub {
    pub fn new(origins: &[String]) -> WsHub {
        WsHub {
            origins: OriginPolicy::new(origins),
            connections: HashMap::new(),
        }
    }
}

impl Actor for WsHub {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        log::info!("event=actor_started actor=ws_hub");
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
        for (_, connection) in self.connections.values() {
            connection.do_send(CloseConnection {
                code: msg.code,
                reason: msg.reason.clone(),
                cancel_replies: Some(CancelReason::Shutdown),
            });
        }
        self.connections.len()
    }
}

impl Handler<GetHubStats> for WsHub {
    type Result = MessageResult<GetHubStats>;

    fn handle(&mut self, _: GetHubStats, _: &mut Context<Self>) -> Self::Result {
        MessageResult(HubStats {
            connections: self.connections.len(),
        })
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
