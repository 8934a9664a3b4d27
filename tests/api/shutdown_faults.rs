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
        .run(|conn| Ok((usage::count_requests(conn)?, usage::sum_rollup_requests(conn)?)))
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
        assert!(row.ended_at.is_some(), "session {id} persisted without its end: {row:?}");
    }
}
