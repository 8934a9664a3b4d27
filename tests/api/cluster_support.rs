//! Cluster fixture: 2–3 real `chatgate serve` processes on one PostgreSQL schema and one
//! Redis key prefix of their own, so cluster tests run in parallel with each other.

// Shared by every cluster test module; not each module uses every helper.
#![allow(dead_code)]

use std::time::Duration;

use chatgate::auth::{JwtKeys, Role};

use crate::helpers::{Backend, TestDatabase, TEST_SECRET};
use crate::process::ServerProcess;

/// The Redis URL for a test marked `#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]`;
/// run without it, such a test fails here instead of passing without testing anything.
pub fn require_redis() -> String {
    match std::env::var("TEST_REDIS_URL")
        .ok()
        .filter(|u| !u.is_empty())
    {
        Some(url) => url,
        None => panic!(
            "this test needs Redis: set TEST_REDIS_URL (e.g. redis://127.0.0.1:6379) \
             or run it through .ci/run"
        ),
    }
}

pub struct Cluster {
    pub db: TestDatabase,
    pub redis_url: String,
    /// The key prefix every instance of this cluster uses (`CHATGATE_REDIS_KEY_PREFIX`).
    pub prefix: String,
    /// `None` once killed.
    pub instances: Vec<Option<ServerProcess>>,
    /// Extra environment every instance gets.
    env: Vec<(String, String)>,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// `n` instances named `i0`, `i1`, …; `env` on top of the defaults (generous limits).
    pub fn start(n: usize, env: &[(&str, &str)]) -> Cluster {
        Cluster::start_with_redis(n, &require_redis(), env)
    }

    /// Like [`start`](Self::start) with another Redis URL (e.g. a cuttable proxy's).
    pub fn start_with_redis(n: usize, redis_url: &str, env: &[(&str, &str)]) -> Cluster {
        crate::helpers::require_postgres();
        let mut cluster = Cluster {
            db: TestDatabase::new(Backend::Postgres),
            redis_url: redis_url.to_string(),
            prefix: format!("cgtest:{}:", uuid::Uuid::new_v4().simple()),
            instances: Vec::new(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        for _ in 0..n {
            cluster.add_instance(&[]);
        }
        cluster
    }

    /// Starts one more instance (`extra` on top of the cluster's environment); returns its
    /// index.
    pub fn add_instance(&mut self, extra: &[(&str, &str)]) -> usize {
        let index = self.instances.len();
        let id = format!("i{index}");
        let mut env: Vec<(String, String)> = vec![
            ("DATABASE_URL".into(), self.db.url.clone()),
            ("CHATGATE_REDIS_URL".into(), self.redis_url.clone()),
            ("CHATGATE_REDIS_KEY_PREFIX".into(), self.prefix.clone()),
            ("CHATGATE_INSTANCE_ID".into(), id),
            ("CHATGATE_USER_RATE_LIMIT".into(), "100000".into()),
            ("CHATGATE_ADMIN_RATE_LIMIT".into(), "100000".into()),
            ("CHATGATE_FLUSH_INTERVAL_MS".into(), "100".into()),
            ("CHATGATE_HEARTBEAT_SECS".into(), "1".into()),
            ("CHATGATE_CLIENT_TIMEOUT_SECS".into(), "5".into()),
        ];
        env.extend(self.env.iter().cloned());
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let dir = self.dir.path().join(format!("i{index}"));
        std::fs::create_dir_all(&dir).expect("instance dir");
        self.instances.push(Some(ServerProcess::start(&dir, &env)));
        index
    }

    fn instance(&self, index: usize) -> &ServerProcess {
        self.instances[index]
            .as_ref()
            .unwrap_or_else(|| panic!("instance {index} was killed"))
    }

    /// `http://host:port` of instance `index`.
    pub fn base(&self, index: usize) -> String {
        format!("http://{}", self.instance(index).addr)
    }

    /// `ws://host:port/ws?token=…` of instance `index`, plus `query` (e.g. `&session_id=…`).
    pub fn ws_url(&self, index: usize, token: &str, query: &str) -> String {
        format!("ws://{}/ws?token={token}{query}", self.instance(index).addr)
    }

    /// Kills instance `index` with SIGKILL: no shutdown, no goodbye to the cluster.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut process) = self.instances[index].take() {
            process.signal("-KILL");
            process.wait_exit(Duration::from_secs(10));
        }
    }

    pub fn user_token(&self, sub: &str) -> String {
        JwtKeys::new(TEST_SECRET.as_bytes())
            .mint(sub, Role::User, 3600)
            .expect("mint")
    }

    pub fn admin_token(&self, sub: &str) -> String {
        JwtKeys::new(TEST_SECRET.as_bytes())
            .mint(sub, Role::Admin, 3600)
            .expect("mint")
    }

    /// A plain client for the HTTP API.
    pub fn client(&self) -> awc::Client {
        awc::Client::builder()
            .timeout(Duration::from_secs(30))
            .finish()
    }

    /// GET `path` on instance `index` as `token`; (status, JSON body or Null).
    pub async fn get(&self, index: usize, path: &str, token: &str) -> (u16, serde_json::Value) {
        let mut response = self
            .client()
            .get(format!("{}{path}", self.base(index)))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let status = response.status().as_u16();
        let body = response.body().limit(8 << 20).await.expect("body");
        (
            status,
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Processes first (their Drop kills them), then this cluster's keys.
        self.instances.clear();
        if let Ok(client) = redis::Client::open(self.redis_url.as_str()) {
            if let Ok(mut conn) = client.get_connection() {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", self.prefix))
                    .query(&mut conn)
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<i64, _> = redis::cmd("DEL").arg(keys).query(&mut conn);
                }
            }
        }
    }
}

/// A smoke test of the fixture itself: two instances see each other in Redis.
#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn two_instances_register_in_redis() {
    let cluster = Cluster::start(2, &[]);
    let client = redis::Client::open(cluster.redis_url.as_str()).expect("redis url");
    let key = format!("{}instances", cluster.prefix);
    crate::helpers::eventually("both instances heartbeat", Duration::from_secs(10), || {
        let client = client.clone();
        let key = key.clone();
        async move {
            let mut conn = client.get_connection().ok()?;
            let live: Vec<String> = redis::cmd("ZRANGE")
                .arg(&key)
                .arg(0)
                .arg(-1)
                .query(&mut conn)
                .ok()?;
            (live.len() == 2).then_some(live)
        }
    })
    .await;
}
