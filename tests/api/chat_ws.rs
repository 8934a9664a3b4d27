//! The chat WebSocket as a client sees it.

use std::time::Duration;

use chatgate::config::{ModelSettings, ProviderKind};
use chatgate::db::queries::{quota, users};
use diesel::prelude::*;
use futures_util::future::join_all;
use serde_json::json;

use crate::helpers::{
    eventually, require_postgres, spawn_app, spawn_app_with, spawn_with_settings, test_settings,
    Backend, TestApp,
};
use crate::ws_client::{connect_with, ConnectOptions, Incoming, WsClient};

async fn set_daily_limit(app: &TestApp, user: &'static str, limit: i64) {
    app.query(move |conn| {
        use chatgate::db::schema::users::dsl;
        users::insert_user_if_missing(conn, user, 0)?;
        diesel::update(dsl::users.find(user))
            .set(dsl::daily_limit.eq(Some(limit)))
            .execute(conn)
    })
    .await;
}

async fn used_today(app: &TestApp, user: &'static str) -> i64 {
    app.settle_quota().await;
    let day = chatgate::domain::QuotaDay::today().as_key();
    app.query(move |conn| quota::used_on(conn, user, &day))
        .await
}

fn slow_echo(delay_ms: u64) -> ModelSettings {
    ModelSettings {
        name: "slow".into(),
        provider: ProviderKind::Echo,
        delay_ms,
        ..ModelSettings::echo()
    }
}

#[actix_web::test]
async fn echo_deltas_reassemble_the_message_with_word_counts() {
    let app = spawn_app().await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "echo", "the quick brown fox").await;
    let reply = ws.reply("c1").await;
    assert_eq!(reply.deltas, vec!["the", " quick", " brown", " fox"]);
    assert_eq!(reply.text(), "the quick brown fox");
    let done = reply.done.expect("done");
    assert_eq!(
        done["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 4})
    );
    assert_eq!(done["cancelled"], false);
    assert!(done["latency_ms"].is_u64());
    ws.send_json(json!({"type":"ping"})).await;
    assert_eq!(ws.expect_json().await, json!({"type":"pong"}));
}

#[actix_web::test]
async fn resumed_session_keeps_its_history() {
    let app = spawn_app().await;
    let (mut ws, session) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "echo", "hello world").await;
    assert!(ws.reply("c1").await.done.is_some());
    ws.close().await;

    let token = app.user_token("alice");
    let mut ws = connect_with(
        &app,
        ConnectOptions {
            token: Some(&token),
            session_id: Some(&session),
            ..Default::default()
        },
    )
    .await
    .expect("upgrade");
    let frame = ws.expect_json().await;
    assert_eq!(
        frame,
        json!({"type":"session","session_id":session,"resumed":true,
               "replies":[{"id":"c1","state":"done","last_seq":2}]})
    );
    ws.chat("c2", "echo", "one two three").await;
    let done = ws.reply("c2").await.done.expect("done");
    // History: "hello world" (2) + its reply (2) + "one two three" (3).
    assert_eq!(done["usage"]["prompt_tokens"], 7);

    // Another user cannot resume it: they get a fresh session.
    let other = app.user_token("mallory");
    let mut ws = connect_with(
        &app,
        ConnectOptions {
            token: Some(&other),
            session_id: Some(&session),
            ..Default::default()
        },
    )
    .await
    .expect("upgrade");
    let frame = ws.expect_json().await;
    assert_eq!(frame["resumed"], false);
    assert_ne!(frame["session_id"], session.as_str());
}

#[actix_web::test]
async fn fourth_chat_over_a_limit_of_three_gets_quota_exceeded() {
    let app = spawn_app().await;
    set_daily_limit(&app, "alice", 3).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    for i in 0..3 {
        let id = format!("c{i}");
        ws.chat(&id, "echo", "hi").await;
        assert!(ws.reply(&id).await.done.is_some(), "chat {i}");
    }
    ws.chat("c3", "echo", "hi").await;
    let reply = ws.reply("c3").await;
    assert_eq!(reply.error_code(), Some("quota_exceeded"));
    assert!(
        reply.error.expect("error")["retry_after_ms"]
            .as_u64()
            .expect("retry_after_ms")
            > 0
    );
    assert_eq!(used_today(&app, "alice").await, 3);
}

/// 60 chats at once over 6 connections for one user with limit 25, against each app in `apps`
/// (round robin): exactly 25 done, 35 refused, 25 stored.
async fn quota_race(apps: &[&TestApp]) {
    set_daily_limit(apps[0], "racer", 25).await;
    let mut clients = Vec::new();
    for i in 0..6 {
        clients.push(WsClient::open(apps[i % apps.len()], "racer").await.0);
    }
    for (i, ws) in clients.iter_mut().enumerate() {
        for j in 0..10 {
            ws.chat(&format!("c{i}-{j}"), "echo", "race").await;
        }
    }
    let results = join_all(clients.iter_mut().enumerate().map(|(i, ws)| async move {
        let ids: Vec<String> = (0..10).map(|j| format!("c{i}-{j}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        ws.replies(&refs).await
    }))
    .await;
    let (mut done, mut exceeded) = (0, 0);
    for replies in results {
        for reply in replies.values() {
            if reply.done.is_some() {
                done += 1;
            } else if reply.error_code() == Some("quota_exceeded") {
                exceeded += 1;
            } else {
                panic!("unexpected reply: {reply:?}");
            }
        }
    }
    assert_eq!((done, exceeded), (25, 35));
    for app in apps {
        app.settle_quota().await;
    }
    assert_eq!(used_today(apps[0], "racer").await, 25);
}

#[actix_web::test]
async fn concurrent_chats_never_pass_the_quota() {
    concurrent_chats_never_pass_the_quota_on(Backend::Sqlite).await;
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn concurrent_chats_never_pass_the_quota_postgres() {
    require_postgres();
    concurrent_chats_never_pass_the_quota_on(Backend::Postgres).await;
}

async fn concurrent_chats_never_pass_the_quota_on(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.limits.user_rate_limit = 1000).await;
    quota_race(&[&app]).await;
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn two_instances_on_one_postgres_never_pass_the_quota() {
    require_postgres();
    let first = spawn_app_with(Backend::Postgres, |s| s.limits.user_rate_limit = 1000).await;
    let mut settings = test_settings(&first.database.url);
    settings.limits.user_rate_limit = 1000;
    // The second instance shares the first one's schema; its own TestDatabase is unused.
    let second =
        spawn_with_settings(settings, crate::helpers::TestDatabase::new(Backend::Sqlite)).await;
    quota_race(&[&first, &second]).await;
}

#[actix_web::test]
async fn twelve_chats_at_once_with_limit_five_admit_exactly_five() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.limits.user_rate_limit = 5;
        s.limits.user_rate_window_secs = 60;
    })
    .await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    let ids: Vec<String> = (0..12).map(|i| format!("r{i}")).collect();
    for id in &ids {
        ws.chat(id, "echo", "hello").await;
    }
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let replies = ws.replies(&refs).await;
    let accepted = replies.values().filter(|r| r.done.is_some()).count();
    let limited: Vec<_> = replies
        .values()
        .filter(|r| r.error_code() == Some("rate_limited"))
        .collect();
    assert_eq!((accepted, limited.len()), (5, 7));
    for reply in limited {
        let retry = reply.error.as_ref().expect("error")["retry_after_ms"]
            .as_u64()
            .expect("retry_after_ms");
        assert!(retry > 0 && retry <= 60_000, "{retry}");
    }
    assert_eq!(
        used_today(&app, "alice").await,
        5,
        "refused chats take no quota"
    );
}

#[actix_web::test]
async fn bad_frames_get_bad_request_and_the_connection_stays_usable() {
    let app = spawn_app().await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.send_binary(b"\x00\x01").await;
    ws.send_text("{").await;
    ws.send_json(json!({"type":"nope"})).await;
    ws.send_json(json!({"type":"chat","model":"echo","content":"no id"}))
        .await;
    ws.send_json(json!({"type":"chat","id":"x".repeat(65),"model":"echo","content":"long id"}))
        .await;
    for case in ["binary", "{", "unknown type", "no id", "65-char id"] {
        let frame = ws.expect_json().await;
        assert_eq!(frame["type"], "error", "{case}: {frame}");
        assert_eq!(frame["code"], "bad_request", "{case}: {frame}");
        assert!(
            frame["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}"
        );
    }
    ws.chat("ok", "echo", "still works").await;
    assert_eq!(ws.reply("ok").await.text(), "still works");

    ws.chat("m", "no-such-model", "hi").await;
    assert_eq!(ws.reply("m").await.error_code(), Some("unsupported_model"));
}

#[actix_web::test]
async fn reused_id_of_a_running_reply_is_refused_and_the_reply_goes_on() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.models.push(slow_echo(30))).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("dup", "slow", "one two three four five").await;
    ws.chat("dup", "slow", "again").await;
    let mut deltas = Vec::new();
    let mut refused = 0;
    loop {
        let frame = ws.expect_json().await;
        assert_eq!(frame["id"], "dup");
        match frame["type"].as_str() {
            Some("delta") => deltas.push(frame["content"].as_str().expect("content").to_string()),
            Some("error") => {
                assert_eq!(frame["code"], "bad_request");
                refused += 1;
            }
            Some("done") => break,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(refused, 1);
    assert_eq!(deltas.concat(), "one two three four five");
}

#[actix_web::test]
async fn frame_over_the_limit_closes_with_1009() {
    let app = spawn_app().await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    let content = "x".repeat(70 * 1024);
    ws.chat("big", "echo", &content).await;
    assert_eq!(ws.expect_close(Duration::from_secs(5)).await, Some(1009));
}

#[actix_web::test]
async fn handshake_checks_token_and_origin_before_upgrading() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.server.allowed_origins = vec!["https://app.test".into()]
    })
    .await;
    assert_eq!(
        connect_with(&app, ConnectOptions::default()).await.err(),
        Some(401)
    );
    let token = app.user_token("alice");
    let evil = connect_with(
        &app,
        ConnectOptions {
            token: Some(&token),
            origin: Some("https://evil.test"),
            ..Default::default()
        },
    );
    assert_eq!(evil.await.err(), Some(403));
    let good = connect_with(
        &app,
        ConnectOptions {
            token: Some(&token),
            origin: Some("https://app.test"),
            ..Default::default()
        },
    );
    assert!(good.await.is_ok(), "allowed origin upgrades (101)");
    let own = format!("http://{}", app.addr);
    let same = connect_with(
        &app,
        ConnectOptions {
            token: Some(&token),
            origin: Some(&own),
            ..Default::default()
        },
    );
    assert!(
        same.await.is_ok(),
        "the server's own origin is always allowed"
    );
}

#[actix_web::test]
async fn disabled_user_gets_403_at_the_handshake() {
    let app = spawn_app().await;
    app.query(|conn| {
        use chatgate::db::schema::users::dsl;
        users::insert_user_if_missing(conn, "banned", 0)?;
        diesel::update(dsl::users.find("banned"))
            .set(dsl::disabled.eq(true))
            .execute(conn)
    })
    .await;
    let token = app.user_token("banned");
    assert_eq!(
        connect_with(
            &app,
            ConnectOptions {
                token: Some(&token),
                ..Default::default()
            }
        )
        .await
        .err(),
        Some(403)
    );
}

#[actix_web::test]
async fn cancel_stops_the_reply_with_a_cancelled_done() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.models.push(slow_echo(50))).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    let words: Vec<String> = (0..40).map(|i| format!("w{i}")).collect();
    ws.chat("c1", "slow", &words.join(" ")).await;
    let first = ws.expect_json().await;
    assert_eq!(first["type"], "delta");
    ws.send_json(json!({"type":"cancel","id":"c1"})).await;
    let rest = ws.reply("c1").await;
    let done = rest.done.expect("done after cancel");
    assert_eq!(done["cancelled"], true);
    assert!(
        rest.deltas.len() + 1 < 40,
        "{} deltas",
        rest.deltas.len() + 1
    );
    // A cancel for a reply that already ended is ignored: nothing more for that id.
    ws.send_json(json!({"type":"cancel","id":"c1"})).await;
    ws.send_json(json!({"type":"ping"})).await;
    assert_eq!(ws.expect_json().await, json!({"type":"pong"}));
}

#[actix_web::test]
async fn silent_client_is_closed_after_the_client_timeout() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.timers.heartbeat_secs = 1;
        s.timers.client_timeout_secs = 2;
    })
    .await;
    // The server counts silence from the upgrade, so the stopwatch starts before the connect:
    // started after it, a slow machine made a correct close look early (1.98 s).
    let started = std::time::Instant::now();
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.auto_pong = false;
    ws.expect_close(Duration::from_secs(6)).await;
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2),
        "closed too early: {elapsed:?}"
    );

    // A client that answers pings stays.
    let (mut ws, _) = WsClient::open(&app, "bob").await;
    assert!(
        ws.next_with_timeout(Duration::from_secs(4)).await.is_none(),
        "a polite client is kept"
    );
}

#[actix_web::test]
async fn ended_sessions_are_swept_after_the_ttl() {
    let app = spawn_app_with(Backend::Sqlite, |s| {
        s.timers.session_ttl_secs = 1;
        s.timers.session_cleanup_secs = 1;
    })
    .await;
    let admin = app.admin_token("root");
    let stats = |app: &TestApp, admin: String| {
        let url = app.url("/admin/sessions/stats");
        let client = app.client();
        async move {
            let mut resp = client
                .get(url)
                .bearer_auth(admin)
                .send()
                .await
                .expect("stats");
            assert_eq!(resp.status(), 200);
            let body: serde_json::Value = resp.json().await.expect("json");
            let (a, i, t) = (
                body["active"].as_u64(),
                body["inactive"].as_u64(),
                body["total"].as_u64(),
            );
            let (a, i, t) = (a.expect("active"), i.expect("inactive"), t.expect("total"));
            assert_eq!(a + i, t, "active + inactive = total: {body}");
            (a, i, t)
        }
    };
    let (ws, _) = WsClient::open(&app, "alice").await;
    assert_eq!(stats(&app, admin.clone()).await, (1, 0, 1));
    ws.close().await;
    eventually(
        "the session becomes inactive",
        Duration::from_secs(5),
        || {
            let fut = stats(&app, admin.clone());
            async move { (fut.await == (0, 1, 1)).then_some(()) }
        },
    )
    .await;
    eventually("the sweep drops it", Duration::from_secs(5), || {
        let fut = stats(&app, admin.clone());
        async move { (fut.await == (0, 0, 0)).then_some(()) }
    })
    .await;
}

#[actix_web::test]
async fn several_chats_run_at_once_on_one_connection() {
    let app = spawn_app_with(Backend::Sqlite, |s| s.models.push(slow_echo(10))).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.chat("a", "slow", "alpha beta gamma").await;
    ws.chat("b", "slow", "one two three").await;
    let replies = ws.replies(&["a", "b"]).await;
    assert_eq!(replies["a"].text(), "alpha beta gamma");
    assert_eq!(replies["b"].text(), "one two three");
}

#[actix_web::test]
async fn empty_text_frame_gets_bad_request() {
    let app = spawn_app().await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    ws.send_text("").await;
    match ws.next().await {
        Incoming::Json(frame) => assert_eq!(frame["code"], "bad_request", "{frame}"),
        Incoming::Close(code) => panic!("closed with {code:?}"),
    }
}
