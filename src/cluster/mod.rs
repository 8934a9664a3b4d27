//! Cluster mode's link to Redis: one multiplexed connection (redis-rs `ConnectionManager`,
//! which reconnects on its own), the key namespace, and whether Redis answers right now.
//!
//! Redis is never the system of record. Every concern that keeps shared state there has a
//! local fallback, and asks [`RedisLink::is_up`] before each use: while Redis is down no
//! request waits on a timeout, and the membership heartbeat (`actors::membership`) flips the
//! link back up within a second of Redis answering again.

pub mod health;
pub mod keys;
pub mod protocol;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::RedisError;

pub use health::{HealthTransition, RedisHealth, RedisHealthCell};
pub use keys::KeySpace;

/// How long one Redis command may take before the link counts as down. Redis answers a
/// healthy request in well under a millisecond; a quarter second means a cut network, not load.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_millis(250);
/// How long a (re)connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// Redis was not asked (it is down) or did not answer in time; the caller uses its local
/// fallback.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis unavailable: {0}")]
pub struct RedisUnavailable(pub String);

impl From<RedisError> for RedisUnavailable {
    fn from(err: RedisError) -> Self {
        RedisUnavailable(err.to_string())
    }
}

/// A handle to the cluster's Redis; cheap to clone (the connection is multiplexed).
#[derive(Clone)]
pub struct RedisLink {
    conn: Arc<Connection>,
    client: redis::Client,
    keys: KeySpace,
    instance: Arc<str>,
    health: Arc<RedisHealthCell>,
}

/// The multiplexed connection, replaceable. `ConnectionManager` reconnects when its
/// connection breaks (EOF, reset) but not when a request merely times out, and a connection
/// whose peer vanished without closing it (a dead host, a partition, a proxy that keeps the
/// socket) only ever times out: kept, it would keep the link down after Redis is back. So a
/// timeout replaces the manager with a fresh one; requests still running on the old one end
/// on their own timeouts and drop it.
struct Connection {
    client: redis::Client,
    /// `(generation, manager)`; the lock is held only to clone or swap the handle, never
    /// across a request.
    current: RwLock<(u64, ConnectionManager)>,
}

impl Connection {
    fn new(client: redis::Client) -> anyhow::Result<Connection> {
        let manager = Connection::manager(&client)?;
        Ok(Connection {
            client,
            current: RwLock::new((0, manager)),
        })
    }

    /// A manager that connects on first use, so an instance starts while Redis is down.
    fn manager(client: &redis::Client) -> anyhow::Result<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|err| anyhow::anyhow!("CHATGATE_REDIS_URL: {err}"))
    }

    fn get(&self) -> (u64, ConnectionManager) {
        match self.current.read() {
            Ok(current) => current.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces generation `used` (the one that timed out) with a fresh manager; a no-op when
    /// another request replaced it already, so a burst of timeouts makes one new connection.
    fn renew(&self, used: u64) {
        let Ok(fresh) = Connection::manager(&self.client) else {
            return;
        };
        let mut current = match self.current.write() {
            Ok(current) => current,
            Err(poisoned) => poisoned.into_inner(),
        };
        if current.0 == used {
            *current = (used + 1, fresh);
            log::debug!("event=redis_connection_renewed generation={}", used + 1);
        }
    }
}

impl RedisLink {
    /// Builds the link without waiting for Redis: an instance starts (degraded) while Redis
    /// is down and joins when it answers.
    /// `prefix` replaces the default key prefix `chatgate:<db>:`.
    pub fn connect(url: &str, instance: &str, prefix: Option<&str>) -> anyhow::Result<RedisLink> {
        let client =
            redis::Client::open(url).map_err(|err| anyhow::anyhow!("CHATGATE_REDIS_URL: {err}"))?;
        let keys = match prefix {
            Some(prefix) => KeySpace::with_prefix(prefix),
            None => KeySpace::for_database(client.get_connection_info().redis_settings().db()),
        };
        let conn = Arc::new(Connection::new(client.clone())?);
        Ok(RedisLink {
            conn,
            client,
            keys,
            instance: Arc::from(instance),
            health: Arc::new(RedisHealthCell::new()),
        })
    }

    pub fn keys(&self) -> &KeySpace {
        &self.keys
    }

    /// This instance's id (`CHATGATE_INSTANCE_ID`).
    pub fn instance(&self) -> &Arc<str> {
        &self.instance
    }

    /// A fresh client for connections that cannot share the multiplexed one (pub/sub).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    pub fn health(&self) -> RedisHealth {
        self.health.get()
    }

    pub fn is_up(&self) -> bool {
        self.health.get() == RedisHealth::Up
    }

    /// Connection faults requests met so far: a prober reads it before it asks Redis and
    /// hands it to [`record_probe`](Self::record_probe).
    pub fn faults(&self) -> u64 {
        self.health.faults()
    }

    /// Records what a probe learned (see [`RedisHealthCell::probed`]) and logs the start or
    /// end of an outage; returns the transition, if any, so the prober can act on a rejoin.
    pub fn record_probe(
        &self,
        answered: bool,
        faults_before: u64,
        error: Option<&str>,
    ) -> Option<HealthTransition> {
        let transition = self.health.probed(answered, faults_before);
        self.log_transition(transition, error.unwrap_or("no answer"));
        transition
    }

    /// The one warning per outage and the one line at its end, whoever noticed: a request
    /// that met the fault or the heartbeat. The health cell hands each transition to exactly
    /// one caller.
    fn log_transition(&self, transition: Option<HealthTransition>, error: &str) {
        match transition {
            Some(HealthTransition::WentDown) => log::warn!(
                "event=redis_down instance={} error=\"{error}\" detail=\"cluster state is per \
                 instance until Redis answers again: per-instance limits, sessions resume only \
                 here\"",
                self.instance
            ),
            Some(HealthTransition::CameBack) => {
                log::info!("event=redis_up instance={}", self.instance)
            }
            None => {}
        }
    }

    /// Runs one request (a command, a pipeline, a script) if Redis is up:
    /// `link.run(|mut conn| async move { cmd.query_async(&mut conn).await })`.
    /// A connection fault marks the link down at once, so the following requests take their
    /// fallback without waiting; the membership heartbeat brings it back up.
    pub async fn run<T, F, Fut>(&self, request: F) -> Result<T, RedisUnavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.is_up() {
            return Err(RedisUnavailable("redis is down".into()));
        }
        self.run_even_if_down(request).await
    }

    /// Like [`run`](Self::run), also while the link is down: for the heartbeat probe.
    pub async fn run_even_if_down<T, F, Fut>(&self, request: F) -> Result<T, RedisUnavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let (generation, conn) = self.conn.get();
        match request(conn).await {
            Ok(value) => Ok(value),
            Err(err) => {
                if is_connection_fault(&err) {
                    let transition = self.health.fault();
                    self.log_transition(transition, &err.to_string());
                    if err.is_timeout() {
                        self.conn.renew(generation);
                    }
                }
                Err(err.into())
            }
        }
    }
}

/// Errors that say Redis is unreachable, as opposed to a bad script or a wrong type.
fn is_connection_fault(err: &RedisError) -> bool {
    err.is_io_error()
        || err.is_timeout()
        || err.is_connection_dropped()
        || err.is_connection_refusal()
        || err.is_unrecoverable_error()
}
