//! Builds the application (database, actors, HTTP server) and runs it until shutdown.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::{Server, ServerHandle};
use actix_web::{middleware, web, App, HttpRequest, HttpServer};
use anyhow::Context;
use tokio::sync::watch;

use actix::{Actor, Addr};

use crate::actors::collector::{Collector, DbCollectorStore};
use crate::actors::db_flusher::{DbBatchWriter, DbFlusher, FlusherSettings, Shutdown};
use crate::actors::history_cache::HistoryCache;
use crate::actors::metrics::{GetMetricsSnapshot, MetricsAggregator};
use crate::actors::quota_leases::{QuotaLeases, ReleaseAll};
use crate::actors::rate_limiter::RateLimiter;
use crate::actors::session_registry::{HistoryLimits, SessionRegistry};
use crate::actors::ws_hub::{CloseAllConnections, FeedSettings, GetHubStats, WsHub};
use crate::auth::JwtKeys;
use crate::chat::ChatPipeline;
use crate::config::Settings;
use crate::db::{self, retry::Backoff, DatabaseUrl, DbPool, PoolSettings};
use crate::error::AppError;
use crate::http::{self, guard, guard::GuardLimiters};
use crate::providers::ModelCatalog;
use crate::report::ReportSources;
use crate::ws::connection::FeedLimits;

/// What handlers share: immutable settings and actor addresses. Nothing in here is locked;
/// all mutable state lives inside the actors.
pub struct AppState {
    pub settings: Arc<Settings>,
    pub db: DbPool,
    pub jwt: JwtKeys,
    pub pipeline: Arc<ChatPipeline>,
    pub registry: Addr<SessionRegistry>,
    pub hub: Addr<WsHub>,
    pub quota: Addr<QuotaLeases>,
    pub flusher: Addr<DbFlusher>,
    pub metrics: Addr<MetricsAggregator>,
    pub user_limiter: Addr<RateLimiter>,
    pub guard: GuardLimiters,
    pub history_cache: Addr<HistoryCache>,
    pub feed: FeedLimits,
    /// Turns true when shutdown starts; streamed HTTP replies end with `unavailable` then.
    pub shutdown: watch::Receiver<bool>,
    pub collector: Addr<Collector>,
}

/// Failed token verifications allowed per client address per window: plenty for a client
/// with an expired token to notice, far too few to guess a token.
const AUTH_FAILURES_PER_WINDOW: u32 = 30;
const AUTH_FAILURE_WINDOW: Duration = Duration::from_secs(60);

/// Usage-history answers kept, and for how long: enough for dashboards refreshing together,
/// short enough that new usage shows up within seconds.
const HISTORY_CACHE_ENTRIES: std::num::NonZeroUsize = match std::num::NonZeroUsize::new(256) {
    Some(n) => n,
    None => std::num::NonZeroUsize::MIN,
};
const HISTORY_CACHE_TTL: Duration = Duration::from_secs(3);

/// Starts every actor on the current arbiter and returns the shared state.
fn start_actors(
    settings: Arc<Settings>,
    pool: DbPool,
    jwt: JwtKeys,
    shutdown: watch::Receiver<bool>,
) -> anyhow::Result<AppState> {
    let timers = &settings.timers;
    let limits = &settings.limits;
    let flusher = DbFlusher::new(
        Arc::new(DbBatchWriter { db: pool.clone() }),
        FlusherSettings {
            interval: Duration::from_millis(timers.flush_interval_ms),
            flush_threshold_rows: 2_000,
            max_batch_rows: 5_000,
            max_buffered_requests: settings.telemetry.flush_max_buffered_rows,
            retry: Backoff::default(),
        },
    )
    .start();
    let registry = SessionRegistry::new(
        HistoryLimits {
            max_messages: limits.history_max_messages,
            max_bytes: limits.history_max_bytes,
        },
        Duration::from_secs(timers.session_ttl_secs),
        Duration::from_secs(timers.session_cleanup_secs),
        flusher.clone(),
    )
    .start();
    let user_window = Duration::from_secs(limits.user_rate_window_secs);
    let user_limiter =
        RateLimiter::new("users", limits.user_rate_limit, user_window, user_window).start();
    let admin_window = Duration::from_secs(limits.admin_rate_window_secs);
    let guard = GuardLimiters {
        admins: RateLimiter::new(
            "admins",
            limits.admin_rate_limit,
            admin_window,
            admin_window,
        )
        .start(),
        auth_failures: RateLimiter::new(
            "auth_failures",
            AUTH_FAILURES_PER_WINDOW,
            AUTH_FAILURE_WINDOW,
            AUTH_FAILURE_WINDOW,
        )
        .start(),
    };
    let quota = QuotaLeases::new(
        pool.clone(),
        limits.daily_quota,
        Duration::from_millis(timers.flush_interval_ms),
    )
    .start();
    let metrics =
        MetricsAggregator::new(settings.telemetry.recent_requests, flusher.clone()).start();
    let sources = ReportSources {
        metrics: metrics.clone(),
        registry: registry.clone(),
        flusher: flusher.clone(),
    };
    let hub = WsHub::new(
        &settings.server.allowed_origins,
        sources,
        FeedSettings {
            interval: Duration::from_secs(1),
            recent_requests: settings.telemetry.feed_recent_requests,
            max_missed_frames: settings.telemetry.feed_max_drops,
        },
    )
    .start();
    let models = ModelCatalog::from_settings(&settings).map_err(|err| anyhow::anyhow!("{err}"))?;
    let pipeline = Arc::new(ChatPipeline::new(
        user_limiter.clone(),
        quota.clone(),
        registry.clone(),
        metrics.clone(),
        models,
    ));
    let feed = FeedLimits {
        max_backlog_bytes: settings.telemetry.feed_max_backlog_bytes,
        max_consecutive_drops: settings.telemetry.feed_max_drops,
    };
    // Names this instance in the collector's lease, so an operator can tell instances apart.
    let holder = format!(
        "pid{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let collector = Collector::new(
        holder,
        settings.collector.clone(),
        std::rc::Rc::new(DbCollectorStore { db: pool.clone() }),
    )
    .start();
    Ok(AppState {
        settings,
        db: pool,
        jwt,
        pipeline,
        registry,
        hub,
        quota,
        flusher,
        metrics,
        user_limiter,
        guard,
        history_cache: HistoryCache::new(HISTORY_CACHE_ENTRIES, HISTORY_CACHE_TTL).start(),
        feed,
        shutdown,
        collector,
    })
}

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
        let jwt = JwtKeys::new(secret.expose().as_bytes());

        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let state = web::Data::new(start_actors(
            settings.clone(),
            pool,
            jwt.clone(),
            shutdown_rx.clone(),
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

/// The part of the shutdown deadline kept for the final flush: a quarter, at most 2 s.
fn flush_reserve(deadline: Duration) -> Duration {
    (deadline / 4).min(Duration::from_secs(2))
}

/// Whole seconds actix may drain connections for: the deadline less the flush reserve.
fn http_drain_secs(deadline_secs: u64) -> u64 {
    let deadline = Duration::from_secs(deadline_secs);
    (deadline - flush_reserve(deadline)).as_secs()
}

/// Stop accepting; end every running reply with `unavailable` and close every WebSocket with
/// 1001, all at once; let in-flight HTTP requests finish; then write everything buffered. All
/// within `deadline`: the final flush keeps a reserve of it, and whatever is still open when
/// its phase runs out is named in a warning and left behind.
async fn shutdown(state: &AppState, handle: ServerHandle, deadline: Duration) {
    let start = tokio::time::Instant::now();
    let until = start + deadline;
    let close_until = until - flush_reserve(deadline);
    handle.pause().await;
    // Graceful stop starts now, alongside the WebSocket closes: actix lets open connections
    // finish for at most its own drain timeout (set from the same budget at build time), so a
    // socket stuck behind a client that stopped reading cannot stretch shutdown.
    let http_stopped = handle.stop(true);
    state.pipeline.begin_shutdown();
    let told = state
        .hub
        .send(CloseAllConnections {
            code: 1001,
            reason: "server shutting down".into(),
        })
        .await
        .unwrap_or(0);
    log::info!("event=shutdown_closing_websockets connections={told}");
    loop {
        let stats = state.hub.send(GetHubStats).await.ok();
        let open = stats.map_or(0, |s| s.connections + s.subscribers);
        let replies = state.pipeline.in_flight();
        if open == 0 && replies == 0 {
            break;
        }
        if tokio::time::Instant::now() >= close_until {
            // A client that stopped reading can freeze its connection; actix drops it when
            // its drain timeout runs out.
            log::warn!("event=shutdown_deadline_passed what=websockets open={open} replies_in_flight={replies}");
            break;
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
    let http_left = close_until.saturating_duration_since(tokio::time::Instant::now());
    if tokio::time::timeout(http_left, http_stopped).await.is_err() {
        log::warn!("event=shutdown_deadline_passed what=http_connections");
    }
    // Records of the replies just ended pass through the aggregator first; a round trip
    // there guarantees they reached the flusher before its final flush.
    let _ = state
        .metrics
        .send(GetMetricsSnapshot { recent_limit: 0 })
        .await;
    let flush_left = until
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_millis(100));
    // Alongside the final flush: settle consumed quota units and hand free ones back, so
    // other instances may use them.
    let quota_release = tokio::time::timeout(flush_left, state.quota.send(ReleaseAll));
    let quota_release = actix_web::rt::spawn(quota_release);
    match tokio::time::timeout(flush_left, state.flusher.send(Shutdown)).await {
        Ok(Ok(Ok(()))) => log::info!(
            "event=shutdown_flushed elapsed_ms={}",
            start.elapsed().as_millis()
        ),
        Ok(Ok(Err(err))) => log::error!("event=shutdown_flush_failed error={err}"),
        Ok(Err(err)) => log::error!("event=shutdown_flush_failed error={err}"),
        Err(_) => log::warn!("event=shutdown_deadline_passed what=final_flush"),
    }
    match quota_release.await {
        Ok(Ok(Ok(Ok(())))) => log::info!("event=shutdown_quota_released"),
        Ok(Ok(Ok(Err(err)))) => log::warn!("event=shutdown_quota_release_failed error={err}"),
        Ok(Ok(Err(err))) => log::warn!("event=shutdown_quota_release_failed error={err}"),
        Ok(Err(_)) => log::warn!("event=shutdown_deadline_passed what=quota_release"),
        Err(err) => log::warn!("event=shutdown_quota_release_failed error={err}"),
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

fn build_server(
    listener: TcpListener,
    state: web::Data<AppState>,
    jwt: JwtKeys,
    settings: &Settings,
) -> anyhow::Result<Server> {
    let jwt = web::Data::new(jwt);
    let guard = web::Data::new(state.guard.clone());
    let max_body = settings.server.max_frame_bytes;
    let shutdown_secs = settings.server.shutdown_timeout_secs;
    let server = HttpServer::new(move || {
        App::new()
            // Registered first, so it runs inside the access log: refusals are logged too.
            .wrap(middleware::from_fn(guard::guard))
            .wrap(
                // Path only: query strings carry tokens, and headers carry secrets.
                middleware::Logger::new(
                    "event=http remote=%a method=%{METHOD}xi path=%U status=%s bytes=%b ms=%D",
                )
                .custom_request_replace("METHOD", |req| req.method().to_string())
                .log_target("chatgate::access"),
            )
            .app_data(state.clone())
            .app_data(jwt.clone())
            .app_data(guard.clone())
            .app_data(json_config(max_body))
            .app_data(web::PayloadConfig::new(max_body))
            .app_data(query_config())
            .app_data(path_config())
            .configure(http::configure)
            .default_service(web::to(not_found))
    })
    .on_connect(on_connect)
    .disable_signals()
    // A client that closes its connection mid-request is gone: its handler and response
    // stream are dropped at once, which stops the chat and its upstream call, instead of
    // streaming on until a write fails.
    .h1_allow_half_closed(false)
    .shutdown_timeout(http_drain_secs(shutdown_secs))
    .listen(listener)?
    .run();
    Ok(server)
}

/// Kernel send buffer per connection. Linux otherwise grows it up to `tcp_wmem` max (often
/// 4 MiB) for a client that stops reading, which pins memory per stalled socket before any of
/// our own backpressure (the WebSocket backlog limits) can see it. Chat frames are small, so
/// this costs nothing in throughput.
const SOCKET_SEND_BUFFER_BYTES: usize = 128 * 1024;

/// Caps the send buffer and notes the socket's descriptor, so a WebSocket whose client stops
/// reading can be shut down from outside its (then frozen) actor.
fn on_connect(connection: &dyn std::any::Any, extensions: &mut actix_web::dev::Extensions) {
    if let Some(stream) = connection.downcast_ref::<actix_web::rt::net::TcpStream>() {
        if let Err(err) =
            socket2::SockRef::from(stream).set_send_buffer_size(SOCKET_SEND_BUFFER_BYTES)
        {
            log::debug!("event=socket_option_failed option=SO_SNDBUF error={err}");
        }
        use std::os::fd::AsRawFd;
        extensions.insert(crate::ws::connection::ConnectionFd(stream.as_raw_fd()));
    }
}

async fn not_found(req: HttpRequest) -> Result<actix_web::HttpResponse, AppError> {
    Err(AppError::NotFound(format!(
        "no route for {} {}",
        req.method(),
        req.path()
    )))
}

fn json_config(limit: usize) -> web::JsonConfig {
    web::JsonConfig::default()
        .limit(limit)
        .error_handler(move |err, _req| {
            use actix_web::error::JsonPayloadError;
            let app_err = match &err {
                JsonPayloadError::Overflow { .. }
                | JsonPayloadError::OverflowKnownLength { .. } => {
                    AppError::TooLarge(format!("request body is larger than {limit} bytes"))
                }
                JsonPayloadError::ContentType => {
                    AppError::BadRequest("Content-Type must be application/json".into())
                }
                other => AppError::BadRequest(format!("invalid JSON body: {other}")),
            };
            app_err.into()
        })
}

fn query_config() -> web::QueryConfig {
    web::QueryConfig::default()
        .error_handler(|err, _req| AppError::BadRequest(format!("invalid query: {err}")).into())
}

fn path_config() -> web::PathConfig {
    web::PathConfig::default()
        .error_handler(|err, _req| AppError::BadRequest(format!("invalid path: {err}")).into())
}
