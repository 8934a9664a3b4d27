//! Resumable replies as a client sees them: a reply belongs to the session, not the socket.

use std::time::{Duration, Instant};

use chatgate::config::{ModelSettings, ProviderKind};
use chatgate::db::schema::request_log;
use diesel::prelude::*;
use serde_json::{json, Value};

use crate::helpers::{eventually, spawn_app_with, Backend, TestApp};
use crate::mock_upstream::{strings, MockUpstream, Step};
use crate::ws_client::{connect_with, ConnectOptions, Incoming, WsClient};

fn slow_echo(delay_ms: u64) -> ModelSettings {
    ModelSettings {
        name: "slow".into(),
        provider: ProviderKind::Echo,
        delay_ms,
        ..ModelSettings::echo()
    }
}

async fn app(grace_secs: u64, models: Vec<ModelSettings>) -> TestApp {
    spawn_app_with(Backend::Sqlite, move |s| {
        s.timers.resume_grace_secs = grace_secs;
        s.models.extend(models);
    })
    .await
}

/// `w1 w2 … wn`, and the deltas echo streams for it.
pub(crate) fn words(n: usize) -> (String, Vec<String>) {
    let text = (1..=n)
        .map(|i| format!("w{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let deltas = (1..=n)
        .map(|i| {
            if i == 1 {
                "w1".into()
            } else {
                format!(" w{i}")
            }
        })
        .collect();
    (text, deltas)
}

/// What a client received of one reply.
#[derive(Debug, Default)]
pub(crate) struct Received {
    pub deltas: Vec<(u64, String)>,
    pub end: Option<Value>,
}

impl Received {
    pub fn seqs(&self) -> Vec<u64> {
        self.deltas.iter().map(|(seq, _)| *seq).collect()
    }

    pub fn last_seq(&self) -> u64 {
        self.deltas.last().map_or(0, |(seq, _)| *seq)
    }

    pub fn texts(&self) -> Vec<String> {
        self.deltas.iter().map(|(_, text)| text.clone()).collect()
    }
}

/// Reads frames of reply `id` into `into` until it holds `deltas` deltas or the reply ended.
pub(crate) async fn read(ws: &mut WsClient, id: &str, into: &mut Received, deltas: usize) {
    while into.end.is_none() && into.deltas.len() < deltas {
        let frame = ws.expect_json().await;
        assert_eq!(frame["id"], id, "a frame of another reply: {frame}");
        match frame["type"].as_str() {
            Some("delta") => {
                let seq = frame["seq"].as_u64().expect("every delta has a seq");
                let text = frame["content"].as_str().expect("content").to_string();
                into.deltas.push((seq, text));
            }
            Some("done") | Some("error") => into.end = Some(frame),
            other => panic!("unexpected frame {other:?}: {frame}"),
        }
    }
}

pub(crate) async fn read_to_end(ws: &mut WsClient, id: &str, into: &mut Received) {
    read(ws, id, into, usize::MAX).await;
}

/// Connects as `user` resuming `session`; returns the socket and its `session` frame.
async fn reconnect(app: &TestApp, user: &str, session: &str) -> (WsClient, Value) {
    let token = app.user_token(user);
    let mut ws = connect_with(
        app,
        ConnectOptions {
            token: Some(&token),
            session_id: Some(session),
            ..Default::default()
        },
    )
    .await
    .expect("upgrade");
    let frame = ws.expect_json().await;
    assert_eq!(frame["type"], "session", "{frame}");
    assert_eq!(frame["session_id"], session, "{frame}");
    assert_eq!(frame["resumed"], true, "{frame}");
    (ws, frame)
}

pub(crate) async fn resume(ws: &mut WsClient, id: &str, after_seq: u64) {
    ws.send_json(json!({"type": "resume", "id": id, "after_seq": after_seq}))
        .await;
}

/// The outcomes of `user`'s recorded chats, once `count` are recorded.
async fn outcomes(app: &TestApp, user: &'static str, count: u64) -> Vec<String> {
    app.wait_for_records(count).await;
    chatgate_flush(app).await;
    app.query(move |conn| {
        request_log::table
            .filter(request_log::user_id.eq(user))
            .select(request_log::outcome)
            .load::<String>(conn)
    })
    .await
}

async fn chatgate_flush(app: &TestApp) {
    app.state
        .flusher
        .send(chatgate::actors::db_flusher::Flush)
        .await
        .expect("flusher")
        .expect("flushed");
}

pub(crate) fn listed(session_frame: &Value, id: &str) -> Value {
    session_frame["replies"]
        .as_array()
        .unwrap_or_else(|| panic!("a resumed session lists its replies: {session_frame}"))
        .iter()
        .find(|r| r["id"] == id)
        .cloned()
        .unwrap_or_else(|| panic!("{id} is listed: {session_frame}"))
}

/// The resumed session lists `c1` (running or done, past the deltas `got` holds); resuming it
/// after the last of them brings exactly the rest: `deltas` complete, in order, then a `done`
/// that is not cancelled, which is returned.
pub(crate) async fn resume_listed_reply_to_its_end(
    ws: &mut WsClient,
    session_frame: &Value,
    mut got: Received,
    deltas: &[String],
) -> Value {
    let kept = listed(session_frame, "c1");
    assert!(
        kept["last_seq"].as_u64() >= Some(got.last_seq()),
        "{session_frame}"
    );
    assert!(
        kept["state"] == "running" || kept["state"] == "done",
        "{session_frame}"
    );
    resume(ws, "c1", got.last_seq()).await;
    read_to_end(ws, "c1", &mut got).await;
    let expected: Vec<u64> = (1..=deltas.len() as u64).collect();
    assert_eq!(got.seqs(), expected);
    assert_eq!(got.texts(), deltas);
    let done = got.end.expect("end");
    assert_eq!(
        (done["type"].as_str(), done["cancelled"].as_bool()),
        (Some("done"), Some(false)),
        "{done}"
    );
    done
}

#[actix_web::test]
async fn deltas_are_numbered_from_one_within_each_reply() {
    let app = app(30, vec![]).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    for (id, n) in [("c1", 4), ("c2", 2)] {
        let (text, deltas) = words(n);
        ws.chat(id, "echo", &text).await;
        let mut got = Received::default();
        read_to_end(&mut ws, id, &mut got).await;
        assert_eq!(got.seqs(), (1..=n as u64).collect::<Vec<_>>());
        assert_eq!(got.texts(), deltas);
        assert_eq!(got.end.expect("end")["type"], "done");
    }
}

#[actix_web::test]
async fn a_reply_dropped_mid_stream_resumes_complete_and_is_charged_once() {
    let app = app(30, vec![slow_echo(30)]).await;
    let (mut ws, session) = WsClient::open(&app, "alice").await;
    let (text, deltas) = words(40);
    ws.chat("c1", "slow", &text).await;
    let mut got = Received::default();
    read(&mut ws, "c1", &mut got, 3).await;
    drop(ws);

    let (mut ws, frame) = reconnect(&app, "alice", &session).await;
    resume_listed_reply_to_its_end(&mut ws, &frame, got, &deltas).await;

    assert_eq!(outcomes(&app, "alice", 1).await, ["ok"]);
    assert_eq!(app.used_today("alice").await, 1);
}

#[actix_web::test]
async fn a_reply_that_ended_while_away_is_replayed_after_the_last_seq_received() {
    let app = app(30, vec![slow_echo(20)]).await;
    let (mut ws, session) = WsClient::open(&app, "alice").await;
    let (text, deltas) = words(10);
    ws.chat("c1", "slow", &text).await;
    let mut got = Received::default();
    read(&mut ws, "c1", &mut got, 2).await;
    drop(ws);
    // Recorded means ended, without anyone reading it.
    assert_eq!(outcomes(&app, "alice", 1).await, ["ok"]);
    // The dashboard's numbers: one ended reply kept, nothing running without its socket.
    let admin = app.admin_token("ops");
    let (status, metrics) = app.get("/admin/metrics", Some(&admin)).await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(metrics["hub"]["replies_kept"], 1, "{metrics}");
    assert_eq!(metrics["hub"]["replies_awaiting_resume"], 0, "{metrics}");
    assert!(
        metrics["hub"]["replies_kept_bytes"].as_u64() > Some(0),
        "{metrics}"
    );

    let (mut ws, frame) = reconnect(&app, "alice", &session).await;
    assert_eq!(
        frame["replies"],
        json!([{"id": "c1", "state": "done", "last_seq": 10}])
    );
    resume(&mut ws, "c1", got.last_seq()).await;
    read_to_end(&mut ws, "c1", &mut got).await;
    assert_eq!(got.seqs(), (1..=10).collect::<Vec<_>>());
    assert_eq!(got.texts(), deltas);
    assert_eq!(got.end.expect("end")["finish_reason"], "stop");
    // Still kept: a second resume from the start gets it all again.
    resume(&mut ws, "c1", 0).await;
    let mut again = Received::default();
    read_to_end(&mut ws, "c1", &mut again).await;
    assert_eq!(again.texts(), deltas);
    assert_eq!(app.used_today("alice").await, 1);
}

#[actix_web::test]
async fn resuming_an_unknown_reply_is_not_found_and_a_finished_one_can_be_fetched_again() {
    let app = app(30, vec![]).await;
    let (mut ws, _) = WsClient::open(&app, "alice").await;
    resume(&mut ws, "nope", 0).await;
    let frame = ws.expect_json().await;
    assert_eq!(
        (
            frame["type"].as_str(),
            frame["id"].as_str(),
            frame["code"].as_str()
        ),
        (Some("error"), Some("nope"), Some("not_found")),
        "{frame}"
    );
    ws.chat("c1", "echo", "one two three").await;
    let mut got = Received::default();
    read_to_end(&mut ws, "c1", &mut got).await;
    resume(&mut ws, "c1", 1).await;
    let mut again = Received::default();
    read_to_end(&mut ws, "c1", &mut again).await;
    assert_eq!(again.deltas, got.deltas[1..]);
    assert_eq!(again.end, got.end);
    // Another session does not see it.
    let (mut other, _) = WsClient::open(&app, "alice").await;
    resume(&mut other, "c1", 0).await;
    assert_eq!(other.expect_json().await["code"], "not_found");
}

#[actix_web::test]
async fn an_unresumed_reply_is_stopped_upstream_after_the_grace_and_recorded_cancelled() {
    let mock = MockUpstream::start(Step::HangAfter(strings(&["a", " b"])));
    let app = app(2, vec![mock.model("mock")]).await;
    let (mut ws, session) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "mock", "hi").await;
    let mut got = Received::default();
    read(&mut ws, "c1", &mut got, 2).await;
    assert_eq!((mock.open_replies(), mock.open_connections()), (1, 1));
    let dropped = Instant::now();
    drop(ws);
    mock.wait_until_closed(Duration::from_secs(10)).await;
    let went_on = dropped.elapsed();
    assert!(
        went_on >= Duration::from_millis(1_900),
        "the reply went on for the 2 s grace, not {went_on:?}"
    );
    assert_eq!(outcomes(&app, "alice", 1).await, ["cancelled"]);
    assert_eq!(app.used_today("alice").await, 1);

    let (mut ws, frame) = reconnect(&app, "alice", &session).await;
    assert_eq!(frame["replies"], json!([]));
    resume(&mut ws, "c1", 2).await;
    assert_eq!(ws.expect_json().await["code"], "not_found");
}

#[actix_web::test]
async fn with_no_grace_a_dropped_reply_stops_with_its_socket() {
    let mock = MockUpstream::start(Step::HangAfter(strings(&["a", " b"])));
    let app = app(0, vec![mock.model("mock")]).await;
    let (mut ws, session) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "mock", "hi").await;
    let mut got = Received::default();
    read(&mut ws, "c1", &mut got, 2).await;
    assert_eq!(got.seqs(), [1, 2]);
    drop(ws);
    mock.wait_until_closed(Duration::from_secs(1)).await;
    assert_eq!(outcomes(&app, "alice", 1).await, ["cancelled"]);

    let (mut ws, frame) = reconnect(&app, "alice", &session).await;
    assert_eq!(frame["replies"], json!([]));
    resume(&mut ws, "c1", 2).await;
    assert_eq!(ws.expect_json().await["code"], "not_found");
    // Nor is an ended reply kept.
    ws.chat("c2", "echo", "x y").await;
    read_to_end(&mut ws, "c2", &mut Received::default()).await;
    resume(&mut ws, "c2", 0).await;
    assert_eq!(ws.expect_json().await["code"], "not_found");
}

#[actix_web::test]
async fn resuming_again_and_again_while_it_streams_leaves_no_gap_or_duplicate() {
    let app = app(30, vec![slow_echo(3)]).await;
    let (mut ws, session) = WsClient::open(&app, "alice").await;
    let (text, deltas) = words(300);
    ws.chat("c1", "slow", &text).await;
    let mut got = Received::default();
    let mut hops = 0;
    for stop_at in [5, 60, 120, 180, 240] {
        read(&mut ws, "c1", &mut got, stop_at).await;
        if got.end.is_some() {
            break;
        }
        drop(ws);
        let (next, _) = reconnect(&app, "alice", &session).await;
        ws = next;
        resume(&mut ws, "c1", got.last_seq()).await;
        hops += 1;
    }
    read_to_end(&mut ws, "c1", &mut got).await;
    assert!(
        hops >= 2,
        "the reply ended before it could be resumed twice"
    );
    assert_eq!(got.seqs(), (1..=300).collect::<Vec<_>>());
    assert_eq!(got.texts(), deltas);
    assert_eq!(got.end.expect("end")["type"], "done");
    assert_eq!(outcomes(&app, "alice", 1).await, ["ok"]);
    assert_eq!(app.used_today("alice").await, 1);
}

#[actix_web::test]
async fn a_session_taken_over_mid_reply_lists_the_reply_and_resumes_it() {
    let app = app(30, vec![slow_echo(20)]).await;
    let (mut first, session) = WsClient::open(&app, "alice").await;
    let (text, deltas) = words(50);
    first.chat("c1", "slow", &text).await;
    let mut got = Received::default();
    read(&mut first, "c1", &mut got, 2).await;
    // The first socket is still open: the resume takes the session (and the reply) over.
    let (mut ws, frame) = reconnect(&app, "alice", &session).await;
    assert!(
        listed(&frame, "c1")["last_seq"].as_u64() >= Some(2),
        "{frame}"
    );
    resume(&mut ws, "c1", got.last_seq()).await;
    // What the first socket still got before it closed is the client's too.
    loop {
        match first.next().await {
            Incoming::Json(frame) if frame["type"] == "delta" => {}
            Incoming::Json(frame) => panic!("{frame}"),
            Incoming::Close(code) => {
                assert_eq!(code, Some(1008));
                break;
            }
        }
    }
    read_to_end(&mut ws, "c1", &mut got).await;
    assert_eq!(got.seqs(), (1..=50).collect::<Vec<_>>());
    assert_eq!(got.texts(), deltas);
    assert_eq!(outcomes(&app, "alice", 1).await, ["ok"]);
}

#[actix_web::test]
async fn cancel_of_a_resumed_reply_ends_it_cancelled() {
    let app = app(30, vec![slow_echo(50)]).await;
    let (mut ws, session) = WsClient::open(&app, "alice").await;
    ws.chat("c1", "slow", &words(100).0).await;
    let mut got = Received::default();
    read(&mut ws, "c1", &mut got, 2).await;
    drop(ws);
    let (mut ws, _) = reconnect(&app, "alice", &session).await;
    resume(&mut ws, "c1", got.last_seq()).await;
    ws.send_json(json!({"type": "cancel", "id": "c1"})).await;
    read_to_end(&mut ws, "c1", &mut got).await;
    let done = got.end.expect("end");
    assert_eq!(
        (done["type"].as_str(), done["cancelled"].as_bool()),
        (Some("done"), Some(true))
    );
    assert!(got.deltas.len() < 100);
    assert_eq!(outcomes(&app, "alice", 1).await, ["cancelled"]);
    assert_eq!(app.used_today("alice").await, 1);
}

#[actix_web::test]
async fn ending_the_session_or_disabling_the_user_stops_kept_replies_at_once() {
    let mock = MockUpstream::start(Step::HangAfter(strings(&["a"])));
    let app = app(600, vec![mock.model("mock")]).await;
    let admin = app.admin_token("ops");
    for (user, how) in [("alice", "end"), ("bob", "disable")] {
        let (mut ws, session) = WsClient::open(&app, user).await;
        ws.chat("c1", "mock", "hi").await;
        read(&mut ws, "c1", &mut Received::default(), 1).await;
        drop(ws);
        eventually(
            "the reply handed to the keeper",
            Duration::from_secs(5),
            || async {
                let stats = app
                    .state
                    .reply_keeper
                    .send(chatgate::actors::reply_keeper::GetKeeperStats)
                    .await
                    .ok()?;
                (stats.running == 1).then_some(())
            },
        )
        .await;
        assert_eq!(mock.open_replies(), 1);
        let request = match how {
            "end" => app
                .client()
                .delete(app.url(&format!("/admin/sessions/{session}"))),
            _ => app.client().put(app.url(&format!("/admin/users/{user}"))),
        }
        .bearer_auth(&admin);
        let status = match how {
            "end" => request.send().await,
            _ => {
                request
                    .send_json(&json!({"daily_limit": null, "disabled": true}))
                    .await
            }
        }
        .expect("admin request")
        .status();
        assert!(status.is_success(), "{how}: {status}");
        mock.wait_until_closed(Duration::from_secs(2)).await;
    }
}
