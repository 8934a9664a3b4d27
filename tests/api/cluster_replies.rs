//! Resumable replies across a cluster: a reply streamed by one real `chatgate serve` process is
//! resumed through another after the client's connection dropped — its frames travel through
//! Redis, its owner keeps streaming it, and it is still one chat (one row, one quota unit).

use std::time::Duration;

use chatgate::db::schema::{quota_usage, request_log};
use diesel::prelude::*;
use serde_json::{json, Value};

use crate::cluster_support::Cluster;
use crate::helpers::eventually;
use crate::resume_replies::{
    listed, read, read_to_end, resume, resume_listed_reply_to_its_end, words, Received,
};
use crate::ws_client::{connect_url, WsClient};

/// Two instances serving `echo` and a `slow` echo that streams a word every `delay_ms`.
fn cluster_with_slow_echo(delay_ms: u64) -> (Cluster, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("models.toml");
    std::fs::write(
        &config,
        format!(
            "[[models]]\nname = \"echo\"\nprovider = \"echo\"\n\n\
             [[models]]\nname = \"slow\"\nprovider = \"echo\"\ndelay_ms = {delay_ms}\n"
        ),
    )
    .expect("write config");
    let config = config.to_string_lossy().to_string();
    let cluster = Cluster::start(
        2,
        &[
            ("CHATGATE_CONFIG", config.as_str()),
            ("CHATGATE_RESUME_GRACE_SECS", "30"),
        ],
    );
    (cluster, dir)
}

/// Opens a chat socket on instance `i` (resuming `session` if given) and reads its `session`
/// frame.
async fn open_on(
    cluster: &Cluster,
    i: usize,
    user: &str,
    session: Option<&str>,
) -> (WsClient, Value) {
    let query = session
        .map(|s| format!("&session_id={s}"))
        .unwrap_or_default();
    let token = cluster.user_token(user);
    let mut ws = connect_url(&cluster.ws_url(i, &token, &query), None)
        .await
        .expect("upgrade");
    let frame = ws.expect_json().await;
    assert_eq!(frame["type"], "session", "{frame}");
    assert_eq!(frame["resumed"], session.is_some(), "{frame}");
    (ws, frame)
}

fn session_id(frame: &Value) -> String {
    frame["session_id"]
        .as_str()
        .expect("session_id")
        .to_string()
}

/// Opens a session on instance 0 as `user`, starts chat `c1` on `slow` with `text`, and drops
/// the connection once `deltas` deltas arrived; the session id and what was received.
async fn chat_then_drop(
    cluster: &Cluster,
    user: &str,
    text: &str,
    deltas: usize,
) -> (String, Received) {
    let (mut ws, frame) = open_on(cluster, 0, user, None).await;
    ws.chat("c1", "slow", text).await;
    let mut got = Received::default();
    read(&mut ws, "c1", &mut got, deltas).await;
    drop(ws);
    (session_id(&frame), got)
}

/// The outcomes of `user`'s stored chats once `count` are stored (instances flush every
/// 100 ms); a second row for one chat would show as an extra outcome.
async fn outcomes(cluster: &Cluster, user: &str, count: usize) -> Vec<String> {
    let url = cluster.db.url.clone();
    let user = user.to_string();
    eventually(
        &format!("{count} stored chats of {user}"),
        Duration::from_secs(10),
        || {
            let (url, user) = (url.clone(), user.clone());
            async move {
                let mut pg = diesel::PgConnection::establish(&url).ok()?;
                let rows: Vec<String> = request_log::table
                    .filter(request_log::user_id.eq(&user))
                    .select(request_log::outcome)
                    .load(&mut pg)
                    .ok()?;
                (rows.len() >= count).then_some(rows)
            }
        },
    )
    .await
}

/// Quota units `user` used today, as stored (each instance settles every flush interval).
async fn stored_quota(cluster: &Cluster, user: &str, expected: i64) -> i64 {
    let url = cluster.db.url.clone();
    let user = user.to_string();
    let day = chatgate::domain::QuotaDay::today().as_key();
    eventually(
        &format!("{expected} quota units of {user} stored"),
        Duration::from_secs(10),
        || {
            let (url, user, day) = (url.clone(), user.clone(), day.clone());
            async move {
                let mut pg = diesel::PgConnection::establish(&url).ok()?;
                let used: i64 = quota_usage::table
                    .filter(quota_usage::user_id.eq(&user))
                    .filter(quota_usage::day.eq(&day))
                    .select(quota_usage::used)
                    .first(&mut pg)
                    .ok()?;
                (used >= expected).then_some(used)
            }
        },
    )
    .await
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn a_reply_dropped_on_one_instance_is_resumed_complete_on_another() {
    let (cluster, _config) = cluster_with_slow_echo(30);
    let (text, deltas) = words(40);
    let (session, got) = chat_then_drop(&cluster, "alice", &text, 3).await;

    let (mut ws, frame) = open_on(&cluster, 1, "alice", Some(&session)).await;
    let done = resume_listed_reply_to_its_end(&mut ws, &frame, got, &deltas).await;
    assert_eq!(done["quota"]["used"], 1, "{done}");

    assert_eq!(outcomes(&cluster, "alice", 1).await, ["ok"]);
    assert_eq!(stored_quota(&cluster, "alice", 1).await, 1);
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn a_reply_that_ended_while_away_is_fetched_from_another_instance() {
    let (cluster, _config) = cluster_with_slow_echo(20);
    let (text, deltas) = words(6);
    let (session, mut got) = chat_then_drop(&cluster, "bob", &text, 2).await;
    // The reply ends on instance 0 while nobody holds the session.
    assert_eq!(outcomes(&cluster, "bob", 1).await, ["ok"]);

    let (mut ws, frame) = open_on(&cluster, 1, "bob", Some(&session)).await;
    let kept = listed(&frame, "c1");
    assert_eq!(
        (kept["state"].as_str(), kept["last_seq"].as_u64()),
        (Some("done"), Some(6))
    );
    resume(&mut ws, "c1", got.last_seq()).await;
    read_to_end(&mut ws, "c1", &mut got).await;
    assert_eq!(got.seqs(), (1..=6).collect::<Vec<_>>());
    assert_eq!(got.texts(), deltas);
    assert_eq!(got.end.expect("end")["type"], "done");

    // Unknown there as here.
    resume(&mut ws, "nope", 0).await;
    let frame = ws.expect_json().await;
    assert_eq!(
        (
            frame["type"].as_str(),
            frame["code"].as_str(),
            frame["id"].as_str()
        ),
        (Some("error"), Some("not_found"), Some("nope")),
        "{frame}"
    );
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn cancelling_on_another_instance_stops_the_reply_at_its_owner() {
    let (cluster, _config) = cluster_with_slow_echo(50);
    let (session, mut got) = chat_then_drop(&cluster, "carol", &words(100).0, 2).await;

    let (mut ws, _) = open_on(&cluster, 1, "carol", Some(&session)).await;
    resume(&mut ws, "c1", got.last_seq()).await;
    let one_more = got.deltas.len() + 1;
    read(&mut ws, "c1", &mut got, one_more).await;
    ws.send_json(json!({"type": "cancel", "id": "c1"})).await;
    read_to_end(&mut ws, "c1", &mut got).await;
    let done = got.end.clone().expect("end");
    assert_eq!(
        (done["type"].as_str(), done["cancelled"].as_bool()),
        (Some("done"), Some(true)),
        "{done}"
    );
    assert!(got.deltas.len() < 100);
    let expected: Vec<u64> = (1..=got.deltas.len() as u64).collect();
    assert_eq!(got.seqs(), expected, "no gap, no duplicate");
    assert_eq!(outcomes(&cluster, "carol", 1).await, ["cancelled"]);
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn ending_the_session_elsewhere_stops_the_reply_its_first_instance_keeps() {
    // 200 words at 50 ms: 10 s to finish, 30 s of grace; stopped, it is recorded cancelled
    // within a few seconds.
    let (cluster, _config) = cluster_with_slow_echo(50);
    let (session, _) = chat_then_drop(&cluster, "dave", &words(200).0, 2).await;
    // The session moves to instance 1; the reply stays with instance 0, unresumed.
    let (_ws, frame) = open_on(&cluster, 1, "dave", Some(&session)).await;
    assert_eq!(listed(&frame, "c1")["state"], "running", "{frame}");

    let status = cluster
        .client()
        .delete(format!("{}/admin/sessions/{session}", cluster.base(1)))
        .bearer_auth(cluster.admin_token("root"))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16();
    assert_eq!(status, 204);
    let started = std::time::Instant::now();
    assert_eq!(outcomes(&cluster, "dave", 1).await, ["cancelled"]);
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "stopped at once, not run to its end: {:?}",
        started.elapsed()
    );
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn a_reply_whose_owner_dies_ends_with_unavailable_on_the_instance_relaying_it() {
    let (mut cluster, _config) = cluster_with_slow_echo(50);
    let (session, mut got) = chat_then_drop(&cluster, "erin", &words(400).0, 2).await;
    let (mut ws, _) = open_on(&cluster, 1, "erin", Some(&session)).await;
    resume(&mut ws, "c1", got.last_seq()).await;
    let one_more = got.deltas.len() + 1;
    read(&mut ws, "c1", &mut got, one_more).await;

    cluster.kill(0);
    read_to_end(&mut ws, "c1", &mut got).await;
    let end = got.end.clone().expect("end");
    assert_eq!(
        (end["type"].as_str(), end["code"].as_str()),
        (Some("error"), Some("unavailable")),
        "{end}"
    );
    assert!(got.deltas.len() < 400);
    let expected: Vec<u64> = (1..=got.deltas.len() as u64).collect();
    assert_eq!(got.seqs(), expected, "no gap, no duplicate up to the loss");
    // The relaying instance goes on serving.
    ws.chat("c2", "echo", "still here").await;
    assert_eq!(ws.reply("c2").await.text(), "still here");
}
