//! Shutdown against slow upstreams and clients that stopped reading: a whole HTTP reply
//! still running at the deadline ends with 503 and is recorded; sessions of sockets closed
//! at shutdown are persisted as ended.

use std::time::Duration;

use chatgate::db::queries::{sessions, usage};
use serde_json::{json, Value};

use crate::helpers::{spawn_app_with, Backend, TestApp, TestDatabase};
use crate::mock_upstream::{MockUpstream, Step};
use crate::stalled_sockets::frozen_client;
use crate::ws_client::WsClient;

/// Shuts the app down cleanly; its database stays for the assertions.
async fn stop(app: TestApp) -> TestDatabase {
    app.shutdown.trigger();
    let result = tokio::time::timeout(Duration::from_secs(15), app.stopped).await;
    assert!(matches!(result, Ok(Ok(Ok(())))), "clean shutdown");
    app.database
}

#[actix_web::test]
async fn a_whole_reply_running_at_the_shutdown_deadline_gets_503_and_is_recorded() {
    let mock = MockUpstream::start(Step::HangBeforeFirstByte);
    let model = mock.model("slow");
    let app = spawn_app_with(Backend::Sqlite, move |s| {
        s.models.push(model);
        s.server.shutdown_timeout_secs = 3;
    })
    .await;
    let request = app
        .client()
        .post(app.url("/v1/chat/completions"))
        .bearer_auth(app.user_token("alice"))
        .send_json(&json!({"model": "slow", "messages": [{"role": "user", "content": "hi"}]}));
    let reply = actix_web::rt::spawn(async move {
        let mut resp = request.await.expect("a response, not a reset");
        let body: Value = resp.json().await.expect("json body");
        (resp.status().as_u16(), body)
    });
    mock.wait_for_open_reply().await;
    let database = stop(app).await;
    let pool = database.pool();
    let (status, body) = reply.await.expect("client task");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    let counts = pool
        .run(|conn| {
            Ok((
                usage::count_requests(conn)?,
                usage::sum_rollup_requests(conn)?,
            ))
        })
        .await
        .expect("count");
    assert_eq!(counts, (1, 1), "the cut reply is one request in the usage");
}

#[actix_web::test]
async fn sessions_of_sockets_closed_at_shutdown_are_persisted_as_ended() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.server.shutdown_timeout_secs = 3;
        // Only the final flush writes: the ends must make it into that one.
        s.timers.flush_interval_ms = 60_000;
    })
    .await;
    let admin = app.admin_token("ops");
    let (_stalled, _, _) = frozen_client(&app, "stalled").await;
    let (_healthy, _) = WsClient::open(&app, "healthy").await;
    let (_, page) = app.get("/admin/sessions", Some(&admin)).await;
    let ids: Vec<String> = page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|s| s["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{page}");
    let database = stop(app).await;
    let pool = database.pool();
    for id in ids {
        let row = pool
            .run({
                let id = id.clone();
                move |conn| sessions::find_session(conn, &id)
            })
            .await
            .expect("query")
            .expect("session row");
        assert!(
            row.ended_at.is_some(),
            "session {id} persisted without its end: {row:?}"
        );
    }
}

/// The same through SIGTERM on the real binary, where the process exits right after the
/// final flush: a socket actix drops late must not lose its session's end.
#[actix_web::test]
async fn sigterm_persists_the_end_of_a_frozen_sockets_session() {
    use chatgate::auth::{JwtKeys, Role};
    let dir = tempfile::tempdir().expect("tempdir");
    let mut server = crate::process::ServerProcess::start(
        dir.path(),
        &[
            ("CHATGATE_SHUTDOWN_TIMEOUT_SECS", "3"),
            ("CHATGATE_FLUSH_INTERVAL_MS", "60000"),
            ("RUST_LOG", "warn,chatgate::startup=info"),
        ],
    );
    let keys = JwtKeys::new(crate::helpers::TEST_SECRET.as_bytes());
    let user = keys.mint("stalled", Role::User, 600).expect("mint");
    let admin = keys.mint("ops", Role::Admin, 600).expect("mint");
    let (_stalled, port) = crate::shutdown::stalled_chatter(&server.addr, &user).await;
    let server_port: u16 = server
        .addr
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let client = awc::Client::default();
    let id = crate::helpers::eventually(
        "the stalled session is listed",
        Duration::from_secs(10),
        || async {
            let mut resp = client
                .get(format!(
                    "http://{}/admin/sessions?state=active",
                    server.addr
                ))
                .bearer_auth(&admin)
                .send()
                .await
                .ok()?;
            let page: Value = resp.json().await.ok()?;
            page["items"][0]["id"].as_str().map(str::to_string)
        },
    )
    .await;
    crate::helpers::eventually(
        "the server's send queue fills",
        Duration::from_secs(10),
        || async {
            (crate::shutdown::server_send_queue(server_port, port) >= 64 * 1024).then_some(())
        },
    )
    .await;
    server.signal("-TERM");
    assert_eq!(server.wait_exit(Duration::from_secs(8)).code(), Some(0));
    let pool = chatgate::db::DbPool::new(
        &chatgate::db::DatabaseUrl::parse(dir.path().join("serve.db").to_str().expect("utf8")),
        &chatgate::db::PoolSettings {
            max_size: 1,
            connection_timeout: Duration::from_secs(5),
            retry: Default::default(),
        },
    );
    let row = pool
        .run(move |conn| sessions::find_session(conn, &id))
        .await
        .expect("query")
        .expect("session row");
    assert!(row.ended_at.is_some(), "persisted without its end: {row:?}");
}
