//! The origin allow-list the WebSocket handshakes check, changeable at runtime by admins.

use actix::prelude::*;

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

/// Origins compare case-insensitively and without a trailing slash, as browsers send them.
pub fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

#[derive(Default)]
pub struct OriginsState {
    allow_any: bool,
    allowed: Vec<String>,
}

impl OriginsState {
    pub fn new(origins: &[String]) -> OriginsState {
        OriginsState {
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

pub struct Origins {
    state: OriginsState,
}

impl Origins {
    pub fn new(origins: &[String]) -> Origins {
        Origins {
            state: OriginsState::new(origins),
        }
    }
}

impl Actor for Origins {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Every handshake asks; a burst of reconnects must not find the mailbox full.
        ctx.set_mailbox_capacity(65_536);
        log::info!("event=actor_started actor=origins");
    }
}

impl Handler<CheckOrigin> for Origins {
    type Result = bool;

    fn handle(&mut self, msg: CheckOrigin, _: &mut Context<Self>) -> bool {
        self.state.allows(msg.origin.as_deref(), &msg.own_origin)
    }
}

impl Handler<GetOrigins> for Origins {
    type Result = MessageResult<GetOrigins>;

    fn handle(&mut self, _: GetOrigins, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.state.list())
    }
}

impl Handler<SetOrigins> for Origins {
    type Result = MessageResult<SetOrigins>;

    fn handle(&mut self, msg: SetOrigins, _: &mut Context<Self>) -> Self::Result {
        self.state = OriginsState::new(&msg.origins);
        log::info!("event=origins_updated count={}", msg.origins.len());
        MessageResult(self.state.list())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origin_policy() {
        let policy = OriginsState::new(&["https://app.test".into()]);
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
        let any = OriginsState::new(&["*".into()]);
        assert!(any.allows(Some("https://evil.test"), "http://gw:8080"));
        assert_eq!(any.list(), vec!["*".to_string()]);
    }

    #[test]
    fn the_list_is_normalized_and_keeps_the_wildcard_last() {
        let state = OriginsState::new(&["https://A.test/".into(), "*".into()]);
        assert_eq!(
            state.list(),
            vec!["https://a.test".to_string(), "*".to_string()]
        );
        assert!(OriginsState::default().list().is_empty());
    }
}
