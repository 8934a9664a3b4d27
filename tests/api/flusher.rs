//! The flusher under rows the database refuses and under an outage, seen from outside: what
//! persists, and what `/admin/metrics` reports as dropped.

use std::time::Duration;

use chatgate::actors::db_flusher::{EnqueueRequest, EnqueueSession, Flush, GetFlusherStats};
use chatgate::db::models::{RequestRow, SessionRow};
use chatgate::db::queries::{now_ms, usage};
use chatgate::db::schema::{request_log, sessions};
use diesel::connection::SimpleConnection;
use diesel::prelude::*;

use crate::helpers::{
    eventually, run_chats, spawn_with_settings, test_settings, Backend, TestApp, TestDatabase,
};

/// An app whose flusher writes only when asked, so everything enqueued meets in one batch.
async fn app_writing_on_flush(backend: Backend, max_buffered: usize) -> TestApp {
    let database = TestDatabase::new(backend);
    let mut settings = test_settings(&database.url);
    settings.timers.flush_interval_ms = 3_600_000;
    settings.telemetry.flush_max_buffered_rows = max_buffered;
    spawn_with_settings(settings, database).await
}

async fn flusher_metrics(app: &TestApp) -> serde_json::Value {
    let admin = app.admin_token("ops");
    let (status, body) = app.get("/admin/metrics", Some(&admin)).await;
    assert_eq!(status, 200, "{body}");
    body["flusher"].clone()
}

#[actix_web::test]
async fn a_refused_row_is_set_aside_and_the_rest_of_its_batch_persists() {
    let app = app_writing_on_flush(Backend::Sqlite, 10_000).await;
    // SQLite takes any text, so the refusal is a constraint of the database's own: a trigger
    // that aborts the insert of one user's rows, as a CHECK would.
    app.query(|conn| {
        conn.batch_execute(
            "CREATE TRIGGER refuse_user_1 BEFORE INSERT ON request_log \
             WHEN NEW.user_id = 'user-1' \
             BEGIN SELECT RAISE(ABORT, 'refused by the test trigger'); END;",
        )
    })
    .await;
    assert_eq!(run_chats(&app, 4, 3).await, 12);
    app.wait_for_records(12).await;
    app.state
        .flusher
        .send(Flush)
        .await
        .expect("mailbox")
        .expect("flush answers once the accepted rows are committed");

    let users: Vec<String> = app
        .query(|conn| {
            request_log::table
                .select(request_log::user_id)
                .order(request_log::user_id)
                .load(conn)
        })
        .await;
    assert_eq!(users.len(), 9, "every other chat persisted: {users:?}");
    assert!(!users.iter().any(|u| u == "user-1"), "{users:?}");
    let totals = app.query(usage::sum_rollup_requests).await;
    assert_eq!(totals, 12, "the per-minute totals are never set aside");
    let stored_sessions: i64 = app
        .query(|conn| sessions::table.count().get_result(conn))
        .await;
    assert_eq!(
        stored_sessions, 4,
        "session rows of the same batch persisted"
    );

    // A session's end row may arrive after the first flush (the socket closes on its own
    // schedule); write it too, so the counts below are final.
    app.state
        .flusher
        .send(Flush)
        .await
        .expect("mailbox")
        .expect("second flush");
    let flusher = flusher_metrics(&app).await;
    assert_eq!(flusher["dropped"], 3, "exactly the refused rows: {flusher}");
    assert_eq!(flusher["buffered"], 0, "{flusher}");
    let last_error = flusher["last_error"].as_str().unwrap_or_default();
    assert!(
        last_error.contains("refused by the test trigger"),
        "{flusher}"
    );
}

fn request(id: &str, session_id: &str) -> RequestRow {
    RequestRow {
        id: id.into(),
        user_id: "pg-user".into(),
        session_id: Some(session_id.into()),
        model: "echo".into(),
        started_at: now_ms(),
        latency_ms: 1,
        tokens_in: 1,
        tokens_out: 1,
        estimated: false,
        outcome: "ok".into(),
    }
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn postgres_refuses_a_nul_byte_and_only_that_row_is_set_aside() {
    let app = app_writing_on_flush(Backend::Postgres, 10_000).await;
    // PostgreSQL refuses a NUL byte in any text value ("invalid byte sequence for encoding
    // UTF8: 0x00"); SQLite stores it. Nothing a client sends reaches a row unvalidated, so the
    // row is handed to the flusher directly.
    for i in 0..40 {
        let session = if i == 7 { "bad\0session" } else { "s" };
        app.state.flusher.do_send(EnqueueRequest {
            row: request(&format!("r{i}"), session),
        });
    }
    app.state
        .flusher
        .send(Flush)
        .await
        .expect("mailbox")
        .expect("flush");
    let stored = app.query(usage::count_requests).await;
    assert_eq!(stored, 39);
    let flusher = flusher_metrics(&app).await;
    assert_eq!(flusher["dropped"], 1, "{flusher}");
    let last_error = flusher["last_error"].as_str().unwrap_or_default();
    assert!(last_error.contains("0x00"), "{flusher}");
}

fn session(i: usize) -> SessionRow {
    SessionRow {
        id: format!("outage-{i:03}"),
        user_id: "u".into(),
        started_at: now_ms(),
        ended_at: None,
        messages: 0,
        avg_response_ms: None,
    }
}

#[actix_web::test]
async fn the_session_buffer_is_bounded_during_an_outage() {
    let app = app_writing_on_flush(Backend::Sqlite, 20).await;
    // The outage: another connection holds SQLite's write lock, so every write waits out the
    // busy timeout and fails with "database is locked" (transient: retried).
    let mut holder = diesel::SqliteConnection::establish(&app.database.url).expect("open");
    holder.batch_execute("BEGIN EXCLUSIVE").expect("lock");
    for i in 0..30 {
        app.state
            .flusher
            .do_send(EnqueueSession { row: session(i) });
    }
    // This write takes the 20 kept rows and waits on the lock; the buffer fills again behind it.
    let first_flush = {
        let flusher = app.state.flusher.clone();
        actix_web::rt::spawn(async move { flusher.send(Flush).await })
    };
    eventually(
        "a write is waiting on the lock",
        Duration::from_secs(5),
        || async {
            let stats = app.state.flusher.send(GetFlusherStats).await.ok()?;
            (stats.batches == 0 && stats.buffered == 20).then_some(())
        },
    )
    .await;
    for i in 30..60 {
        app.state
            .flusher
            .do_send(EnqueueSession { row: session(i) });
    }
    let stats = app
        .state
        .flusher
        .send(GetFlusherStats)
        .await
        .expect("stats");
    assert_eq!((stats.buffered, stats.dropped), (40, 20), "{stats:?}");
    let flusher = flusher_metrics(&app).await;
    assert_eq!(flusher["dropped"], 20, "{flusher}");

    holder.batch_execute("COMMIT").expect("unlock");
    first_flush
        .await
        .expect("join")
        .expect("mailbox")
        .expect("first flush");
    app.state
        .flusher
        .send(Flush)
        .await
        .expect("mailbox")
        .expect("flush after the outage");
    let ids: Vec<String> = app
        .query(|conn| {
            sessions::table
                .select(sessions::id)
                .order(sessions::id)
                .load(conn)
        })
        .await;
    let expected: Vec<String> = (0..20).chain(30..50).map(|i| session(i).id).collect();
    assert_eq!(
        ids, expected,
        "the buffered sessions are written once it is back"
    );
}
