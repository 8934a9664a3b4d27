//! Test harness: a real chatgate on port 0 with its own database (a temp SQLite file, or a
//! fresh PostgreSQL schema under `TEST_POSTGRES_URL` for the tests that need one).

// Shared by every test module; not each module uses every helper.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use actix_web::web;
use chatgate::auth::{JwtKeys, Role};
use chatgate::config::{Secret, Settings};
use chatgate::db::{DatabaseUrl, DbConnection, DbPool};
use chatgate::startup::{AppState, Application, ShutdownTrigger};
use diesel::connection::SimpleConnection;
use diesel::Connection;

pub const TEST_SECRET: &str = "5f0c8e2b9d1a7c3e6b4f0a9d8c7e6f5a4b3c2d1e0f9a8b7c";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// The PostgreSQL URL for a test marked `#[ignore = "needs TEST_POSTGRES_URL"]`; such a test run
/// with `--include-ignored` and no URL fails here rather than passing without testing anything.
pub fn require_postgres() -> String {
    match postgres_url() {
        Some(url) => url,
        None => panic!(
            "this test needs PostgreSQL: set TEST_POSTGRES_URL \
             (e.g. postgres://postgres@127.0.0.1:5432/test) or run it through .ci/run"
        ),
    }
}

pub fn postgres_url() -> Option<String> {
    std::env::var("TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A database of its own for one test; dropped with it.
pub struct TestDatabase {
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

impl TestDatabase {
    pub fn new(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("temp dir");
                let url = dir
                    .path()
                    .join("chatgate.db")
                    .to_string_lossy()
                    .into_owned();
                TestDatabase {
                    url,
                    _dir: Some(dir),
                    pg_schema: None,
                }
            }
            Backend::Postgres => {
                let base = postgres_url().expect("TEST_POSTGRES_URL");
                let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
                let mut admin =
                    diesel::PgConnection::establish(&base).expect("connect to TEST_POSTGRES_URL");
                admin
                    .batch_execute(&format!("CREATE SCHEMA {schema}"))
                    .expect("create schema");
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options=-csearch_path%3D{schema}");
                TestDatabase {
                    url,
                    _dir: None,
                    pg_schema: Some((base, schema)),
                }
            }
        }
    }

    pub fn pool(&self) -> DbPool {
        DbPool::new(
            &DatabaseUrl::parse(&self.url),
            &chatgate::db::PoolSettings {
                max_size: 16,
                connection_timeout: Duration::from_secs(10),
                retry: Default::default(),
            },
        )
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        if let Some((base, schema)) = self.pg_schema.take() {
            if let Ok(mut admin) = diesel::PgConnection::establish(&base) {
                let _ = admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
            }
        }
    }
}

/// Settings for tests: port 0, short timers, a valid secret.
pub fn test_settings(db_url: &str) -> Settings {
    let mut settings = Settings::defaults();
    settings.server.bind = "127.0.0.1:0".into();
    settings.database.url = db_url.to_string();
    settings.auth.jwt_secret = Some(Secret::new(TEST_SECRET.to_string()));
    settings.timers.flush_interval_ms = 100;
    // Tests poll admin endpoints while waiting on conditions; the admin limit has its own test.
    settings.limits.admin_rate_limit = 100_000;
    settings.server.shutdown_timeout_secs = 5;
    settings
}

pub struct TestApp {
    pub addr: std::net::SocketAddr,
    pub base_url: String,
    pub ws_url: String,
    pub jwt: JwtKeys,
    pub db: DbPool,
    pub state: web::Data<AppState>,
    pub shutdown: ShutdownTrigger,
    pub stopped: tokio::sync::oneshot::Receiver<anyhow::Result<()>>,
    pub database: TestDatabase,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(Backend::Sqlite, |_| {}).await
}

pub async fn spawn_app_with(backend: Backend, configure: impl FnOnce(&mut Settings)) -> TestApp {
    chatgate::logging::init_for_tests();
    let database = TestDatabase::new(backend);
    let mut settings = test_settings(&database.url);
    configure(&mut settings);
    let problems = settings.validate(false);
    assert!(problems.is_empty(), "test settings invalid: {problems:?}");
    spawn_with_settings(settings, database).await
}

pub async fn spawn_with_settings(settings: Settings, database: TestDatabase) -> TestApp {
    let secret = settings
        .auth
        .jwt_secret
        .as_ref()
        .expect("secret")
        .expose()
        .to_string();
    let app = Application::build(settings).await.expect("build app");
    let addr = app.local_addr();
    let state = app.state();
    let shutdown = app.shutdown_trigger();
    let (stopped_tx, stopped) = tokio::sync::oneshot::channel();
    actix_web::rt::spawn(async move {
        let _ = stopped_tx.send(app.run_until_stopped().await);
    });
    TestApp {
        addr,
        base_url: format!("http://{addr}"),
        ws_url: format!("ws://{addr}"),
        jwt: JwtKeys::new(secret.as_bytes()),
        db: state.db.clone(),
        state,
        shutdown,
        stopped,
        database,
    }
}

impl TestApp {
    pub fn user_token(&self, sub: &str) -> String {
        self.jwt.mint(sub, Role::User, 3600).expect("mint")
    }

    pub fn admin_token(&self, sub: &str) -> String {
        self.jwt.mint(sub, Role::Admin, 3600).expect("mint")
    }

    pub fn client(&self) -> awc::Client {
        awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base_url, path)
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = self.client().get(self.url(path));
        if let Some(token) = token {
            req = req.bearer_auth(token);
        }
        let mut resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let body = resp.body().limit(16 * 1024 * 1024).await.expect("body");
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }

    /// Runs a blocking closure against the app's database (for assertions).
    pub async fn query<T: Send + 'static>(
        &self,
        f: impl Fn(&mut DbConnection) -> diesel::QueryResult<T> + Send + Sync + 'static,
    ) -> T {
        self.db.run(f).await.expect("test query")
    }
}

/// Polls `check` until it returns `Some`, failing with `what` after `deadline`.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = std::time::Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for: {what}"
        );
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

impl TestApp {
    /// Settles this instance's consumed quota units into the database now (otherwise done
    /// every flush interval).
    pub async fn settle_quota(&self) {
        use chatgate::actors::quota_leases::SettleNow;
        self.state
            .quota
            .send(SettleNow)
            .await
            .expect("quota actor")
            .expect("quota settled");
    }

    /// Quota units `user` has used today, as stored once this instance has settled.
    pub async fn used_today(&self, user: &'static str) -> i64 {
        self.settle_quota().await;
        let day = chatgate::domain::QuotaDay::today().as_key();
        self.query(move |conn| chatgate::db::queries::quota::used_on(conn, user, &day))
            .await
    }

    /// Waits until `count` chats have been recorded, then until the quota keeper has handled
    /// everything sent to it before (a chat gives its unit back before it is recorded).
    pub async fn wait_for_records(&self, count: u64) {
        use chatgate::actors::metrics::GetMetricsSnapshot;
        eventually(
            &format!("{count} recorded chats"),
            Duration::from_secs(10),
            || async {
                let snapshot = self
                    .state
                    .metrics
                    .send(GetMetricsSnapshot { recent_limit: 0 })
                    .await
                    .ok()?;
                (snapshot.totals.day.requests >= count).then_some(())
            },
        )
        .await;
        // Give-backs reach the quota actor before the chat is recorded; settling now puts
        // them, and every kept unit, into `used`.
        self.settle_quota().await;
    }
}

/// `per_connection` echo chats, one after another, on each of `connections` connections (user
/// `user-N` each); returns how many ended with `done`.
pub async fn run_chats(app: &TestApp, connections: usize, per_connection: usize) -> usize {
    let runs = (0..connections).map(|c| async move {
        let (mut ws, _) = crate::ws_client::WsClient::open(app, &format!("user-{c}")).await;
        let mut done = 0;
        for i in 0..per_connection {
            let id = format!("c{i}");
            ws.chat(&id, "echo", "count me once").await;
            if ws.reply(&id).await.done.is_some() {
                done += 1;
            }
        }
        ws.close().await;
        done
    });
    futures_util::future::join_all(runs).await.into_iter().sum()
}
