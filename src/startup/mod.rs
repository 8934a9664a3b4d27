//! Builds the application (database, actors, HTTP server) and runs it until shutdown.

mod server;
mod shutdown;
mod wiring;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::Server;
use actix_web::web;
use anyhow::Context;
use tokio::sync::watch;

use crate::auth::JwtKeys;
use crate::config::Settings;
use crate::db::{self, retry::Backoff, DatabaseUrl, DbPool, PoolSettings};

/// Handlers' shared state; kept reachable here for callers that build an `Application`.
pub use crate::app_state::AppState;

use server::build_server;
use shutdown::shutdown;
use wiring::start_actors;

/// Cloneable trigger for a graceful shutdown, for callers that do not send signals (tests,
/// embedding). Signals go through the same path.
#[derive(Clone)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    pub fn trigger(&self) {
        let _ = self.0.send(true);
    }
}

pub struct Application {
    local_addr: SocketAddr,
    server: Server,
    state: web::Data<AppState>,
    shutdown_tx: watch::Sender<bool>,
    shutdown_rx: watch::Receiver<bool>,
}

pub fn pool_settings(settings: &Settings) -> PoolSettings {
    PoolSettings {
        max_size: settings.database.pool_max_size,
        connection_timeout: Duration::from_millis(settings.database.connection_timeout_ms),
        retry: Backoff::default(),
    }
}

/// Applies pending migrations on a pooled connection, off the async workers.
pub async fn migrate(pool: &DbPool) -> anyhow::Result<Vec<String>> {
    let pool = pool.clone();
    web::block(move || -> anyhow::Result<Vec<String>> {
        let mut attempt = 0;
        // The database may still be starting (containers come up together): retry the
        // connection a few times before giving up.
        loop {
            match pool.checkout() {
                Ok(mut conn) => {
                    return db::migrations::run_pending(&mut conn)
                        .map_err(|err| anyhow::anyhow!("migration failed: {err}"))
                }
                Err(err) => match Backoff::default().delay(attempt) {
                    Some(delay) if attempt < 4 => {
                        log::warn!("event=migrate_wait attempt={attempt} error={err}");
                        attempt += 1;
                        std::thread::sleep(delay);
                    }
                    _ => return Err(anyhow::anyhow!("cannot connect to the database: {err}")),
                },
            }
        }
    })
    .await
    .context("migration task was cancelled")?
}

impl Application {
    pub async fn build(settings: Settings) -> anyhow::Result<Application> {
        let settings = Arc::new(settings);
        let url = DatabaseUrl::parse(&settings.database.url);
        let pool = DbPool::new(&url, &pool_settings(&settings));
        let applied = migrate(&pool).await?;
        log::info!(
            "event=migrations_applied database={} applied={}",
            url.redacted(),
            applied.len()
        );

        let secret = settings
            .auth
            .jwt_secret
            .as_ref()
            .context("no JWT secret configured")?;
        let jwt = JwtKeys::expecting(
            secret.expose().as_bytes(),
            settings.auth.jwt_audience.as_deref(),
            settings.auth.jwt_issuer.as_deref(),
        );

        // Before the first handshake can be checked: the stored list, seeded from the setting
        // on the first start.
        let origins =
            crate::actors::origins::load_at_start(&pool, &settings.server.allowed_origins)
                .await
                .context("cannot load the allowed origins from the database")?;

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = web::Data::new(start_actors(
            settings.clone(),
            pool,
            jwt.clone(),
            shutdown_rx.clone(),
            &origins,
        )?);

        let listener = TcpListener::bind(settings.bind_addr())
            .with_context(|| format!("cannot listen on {}", settings.server.bind))?;
        let local_addr = listener.local_addr()?;
        let server = build_server(listener, state.clone(), jwt, &settings)?;
        Ok(Application {
            local_addr,
            server,
            state,
            shutdown_tx,
            shutdown_rx,
        })
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    pub fn state(&self) -> web::Data<AppState> {
        self.state.clone()
    }

    pub fn shutdown_trigger(&self) -> ShutdownTrigger {
        ShutdownTrigger(self.shutdown_tx.clone())
    }

    /// SIGTERM/SIGINT start the graceful shutdown; a second one exits at once with code 1.
    /// The handlers are installed before this returns, so no signal slips past them.
    pub fn with_signal_handling(self) -> anyhow::Result<Application> {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
        let int = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
        actix_web::rt::spawn(forward_signals(term, int, self.shutdown_tx.clone()));
        Ok(self)
    }

    pub async fn run_until_stopped(self) -> anyhow::Result<()> {
        let Application {
            local_addr,
            server,
            state,
            shutdown_tx: _,
            mut shutdown_rx,
        } = self;
        log::info!("listening on http://{local_addr}");
        let handle = server.handle();
        let mut server_task = actix_web::rt::spawn(server);
        tokio::select! {
            result = &mut server_task => {
                return result.context("server task panicked")?.context("server failed");
            }
            _ = shutdown_rx.wait_for(|stop| *stop) => {}
        }
        let deadline = Duration::from_secs(state.settings.server.shutdown_timeout_secs);
        log::info!(
            "event=shutdown_started deadline_secs={}",
            deadline.as_secs()
        );
        shutdown(&state, handle, deadline).await;
        let _ = server_task.await;
        log::info!("event=shutdown_finished");
        Ok(())
    }
}

async fn forward_signals(
    mut term: tokio::signal::unix::Signal,
    mut int: tokio::signal::unix::Signal,
    trigger: watch::Sender<bool>,
) {
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    log::info!("event=signal_received action=graceful_shutdown");
    let _ = trigger.send(true);
    tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
    log::warn!("event=signal_received action=exit_now");
    std::process::exit(1);
}
