//! The origin allow-list the WebSocket handshakes check.
//!
//! The list is stored in the database (`db::queries::origins`), in every mode; this actor is
//! each instance's copy of it, so a handshake asks memory and never the database. The copy
//! follows the database: at once for a change made on this instance ([`ApplyOrigins`] after
//! the write), within the bus's delivery for one made on another instance
//! (`Command::OriginsChanged`, cluster mode), and otherwise on the next periodic reload or
//! when Redis answers again — which catches a notice lost while Redis was away.

use std::time::Duration;

use actix::prelude::*;

use crate::actors::cluster_bus::RemoteCommand;
use crate::actors::membership::RedisRejoined;
use crate::cluster::protocol::{Answer, Command};
use crate::db::queries::now_ms;
use crate::db::queries::origins::{load_origins, seed_origins_if_unset, StoredOrigins};
use crate::db::{DbError, DbPool};

/// Whether a browser page from `origin` may open a WebSocket. `own_origin` is the origin of
/// the request itself (same scheme, host and port), which is always allowed.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct CheckOrigin {
    pub origin: Option<String>,
    pub own_origin: String,
}

/// The list this instance applies now.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct GetOrigins;

/// A list read from or just written to the database. It replaces the one held unless it is
/// older (a lower version): a reload that read before this instance's own write must not
/// undo it. Answers the list in force afterwards.
#[derive(Message)]
#[rtype(result = "Vec<String>")]
pub struct ApplyOrigins(pub StoredOrigins);

/// Origins compare case-insensitively and without a trailing slash, as browsers send them.
pub fn normalize_origin(origin: &str) -> String {
    origin.trim().trim_end_matches('/').to_ascii_lowercase()
}

/// A list as it is stored and shown: each entry normalized, duplicates dropped, `*` last.
pub fn normalize_list(origins: &[String]) -> Vec<String> {
    OriginsState::new(origins).list()
}

#[derive(Default)]
pub struct OriginsState {
    allow_any: bool,
    allowed: Vec<String>,
    /// The stored version this list came from (0: none yet).
    version: i64,
}

impl OriginsState {
    pub fn new(origins: &[String]) -> OriginsState {
        let mut allowed: Vec<String> = Vec::with_capacity(origins.len());
        for origin in origins.iter().filter(|o| o.trim() != "*") {
            let origin = normalize_origin(origin);
            if !allowed.contains(&origin) {
                allowed.push(origin);
            }
        }
        OriginsState {
            allow_any: origins.iter().any(|o| o.trim() == "*"),
            allowed,
            version: 0,
        }
    }

    pub fn from_stored(stored: &StoredOrigins) -> OriginsState {
        OriginsState {
            version: stored.version,
            ..OriginsState::new(&stored.origins)
        }
    }

    pub fn version(&self) -> i64 {
        self.version
    }

    /// Takes `stored` if it is newer than the list held; whether it did. Versions only go up
    /// (each change adds one in the same transaction), and one read returns one version's
    /// list, so an equal version is the same list and a lower one a stale read.
    pub fn apply(&mut self, stored: &StoredOrigins) -> bool {
        if stored.version <= self.version {
            return false;
        }
        *self = OriginsState::from_stored(stored);
        true
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

/// The list in force when the instance starts: the stored one, or on the very first start
/// (nothing stored yet) `configured` — `CHATGATE_ALLOWED_ORIGINS` — which is stored then.
/// After that the setting no longer counts; `PUT /admin/origins` changes the list.
pub async fn load_at_start(db: &DbPool, configured: &[String]) -> Result<StoredOrigins, DbError> {
    let configured = normalize_list(configured);
    let seed = configured.clone();
    let (stored, seeded) = db
        .run(move |conn| seed_origins_if_unset(conn, &seed, now_ms()))
        .await?;
    if seeded {
        log::info!(
            "event=origins_seeded source=CHATGATE_ALLOWED_ORIGINS count={}",
            stored.origins.len()
        );
    } else {
        log::info!(
            "event=origins_loaded source=database version={} count={} setting_differs={}{}",
            stored.version,
            stored.origins.len(),
            stored.origins != configured,
            if stored.origins != configured {
                " detail=\"CHATGATE_ALLOWED_ORIGINS only seeds the list on the first start; \
                 the stored list is in force (PUT /admin/origins changes it)\""
            } else {
                ""
            }
        );
    }
    Ok(stored)
}

pub struct Origins {
    state: OriginsState,
    db: DbPool,
    reload_every: Duration,
    loading: bool,
    /// A reload was asked for while one ran: it may have read before the change it was asked
    /// for, so one more follows.
    load_again: bool,
}

impl Origins {
    /// `initial` is the list [`load_at_start`] returned; it is reloaded every `reload_every`.
    pub fn new(initial: &StoredOrigins, db: DbPool, reload_every: Duration) -> Origins {
        Origins {
            state: OriginsState::from_stored(initial),
            db,
            reload_every,
            loading: false,
            load_again: false,
        }
    }

    fn apply(&mut self, stored: &StoredOrigins) {
        if self.state.apply(stored) {
            log::info!(
                "event=origins_updated version={} count={}",
                stored.version,
                stored.origins.len()
            );
        }
    }

    /// Reads the list from the database (blocking pool) and applies it; one read at a time.
    fn reload(&mut self, ctx: &mut Context<Self>) {
        if self.loading {
            self.load_again = true;
            return;
        }
        self.loading = true;
        let db = self.db.clone();
        let read = async move { db.run(load_origins).await };
        ctx.spawn(read.into_actor(self).map(|result, act, ctx| {
            act.loading = false;
            match result {
                Ok(Some(stored)) => act.apply(&stored),
                Ok(None) => log::warn!("event=origins_reload_failed error=\"no list stored\""),
                // The list held stays in force; the next reload tries again.
                Err(err) => log::warn!(
                    "event=origins_reload_failed error=\"{err}\" version={}",
                    act.state.version()
                ),
            }
            if std::mem::take(&mut act.load_again) {
                act.reload(ctx);
            }
        }));
    }
}

impl Actor for Origins {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // Every handshake asks; a burst of reconnects must not find the mailbox full.
        ctx.set_mailbox_capacity(65_536);
        ctx.run_interval(self.reload_every, |act, ctx| act.reload(ctx));
        log::info!(
            "event=actor_started actor=origins version={}",
            self.state.version()
        );
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

impl Handler<ApplyOrigins> for Origins {
    type Result = MessageResult<ApplyOrigins>;

    fn handle(&mut self, msg: ApplyOrigins, _: &mut Context<Self>) -> Self::Result {
        self.apply(&msg.0);
        MessageResult(self.state.list())
    }
}

/// Another instance changed the list: read it from the database.
impl Handler<RemoteCommand> for Origins {
    type Result = MessageResult<RemoteCommand>;

    fn handle(&mut self, msg: RemoteCommand, ctx: &mut Context<Self>) -> Self::Result {
        match msg.0 {
            Command::OriginsChanged => {
                self.reload(ctx);
                MessageResult(Answer::Done)
            }
            other => {
                log::debug!("event=origins_skipped_command command={other:?}");
                MessageResult(Answer::NotFound)
            }
        }
    }
}

/// Redis is back: a change announced while it was away never arrived here.
impl Handler<RedisRejoined> for Origins {
    type Result = ();

    fn handle(&mut self, _: RedisRejoined, ctx: &mut Context<Self>) {
        self.reload(ctx);
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

    fn stored(version: i64, origins: &[&str]) -> StoredOrigins {
        StoredOrigins {
            version,
            origins: origins.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_newer_list_replaces_and_an_older_or_equal_one_does_not() {
        let mut state = OriginsState::from_stored(&stored(3, &["https://a.test"]));
        assert!(
            !state.apply(&stored(2, &["https://old.test"])),
            "stale read"
        );
        assert!(
            !state.apply(&stored(3, &["https://a.test"])),
            "same version"
        );
        assert_eq!(state.list(), vec!["https://a.test".to_string()]);
        assert!(state.apply(&stored(4, &["https://b.test", "*"])));
        assert_eq!(state.version(), 4);
        assert!(state.allows(Some("https://anything.test"), "http://gw"));
        assert!(state.apply(&stored(5, &[])));
        assert!(!state.allows(Some("https://b.test"), "http://gw"));
        assert!(state.list().is_empty());
    }

    #[test]
    fn normalizing_a_list_drops_duplicates_and_keeps_the_first_order() {
        let list: Vec<String> = [
            "https://B.test/",
            "*",
            "https://a.test",
            "https://b.test",
            "*",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            normalize_list(&list),
            vec![
                "https://b.test".to_string(),
                "https://a.test".to_string(),
                "*".to_string()
            ]
        );
    }
}
