//! Sessions across a cluster: 2–3 real `chatgate serve` processes on one PostgreSQL and one
//! Redis. A session resumes on any instance with its history (the echo model's prompt token
//! count proves what the model saw), is taken over from the instance holding it, survives
//! that instance being killed, is ended by an admin on any instance, and is counted by all.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::cluster_support::Cluster;
use crate::helpers::eventually;
use crate::tcp_proxy::TcpProxy;
use crate::ws_client::{connect_url, WsClient};

/// Opens a chat socket on instance `i` (resuming `session` if given); the socket, its session
/// id and whether it was resumed.
async fn open_on(
    cluster: &Cluster,
    i: usize,
    token: &str,
    session: Option<&str>,
) -> (WsClient, String, bool) {
    let query = session
        .map(|s| format!("&session_id={s}"))
        .unwrap_or_default();
    let mut ws = connect_url(&cluster.ws_url(i, token, &query), None)
        .await
        .expect("upgrade");
    let frame = ws.expect_json().await;
    assert_eq!(frame["type"], "session", "{frame}");
    let id = frame["session_id"]
        .as_str()
        .expect("session_id")
        .to_string();
    let resumed = frame["resumed"].as_bool().expect("resumed");
    (ws, id, resumed)
}

/// Sends one echo chat; its prompt token count (every word of the history the model saw).
async fn prompt_tokens(ws: &mut WsClient, chat_id: &str, text: &str) -> u64 {
    ws.chat(chat_id, "echo", text).await;
    let done = ws.reply(chat_id).await.done.expect("done");
    done["usage"]["prompt_tokens"]
        .as_u64()
        .expect("prompt_tokens")
}

/// How many messages of the session's history Redis holds.
async fn stored_history(cluster: &Cluster, session: &str) -> usize {
    let client = redis::Client::open(cluster.redis_url.as_str()).expect("redis url");
    let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
        return 0;
    };
    redis::cmd("LLEN")
        .arg(format!("{}sess:{session}:h", cluster.prefix))
        .query_async(&mut conn)
        .await
        .unwrap_or(0)
}

async fn delete_session(cluster: &Cluster, i: usize, session: &str) -> u16 {
    cluster
        .client()
        .delete(format!("{}/admin/sessions/{session}", cluster.base(i)))
        .bearer_auth(cluster.admin_token("root"))
        .send()
        .await
        .expect("request")
        .status()
        .as_u16()
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn a_session_resumes_on_another_instance_with_its_history() {
    let cluster = Cluster::start(2, &[]);
    let token = cluster.user_token("alice");
    let (mut ws, session, resumed) = open_on(&cluster, 0, &token, None).await;
    assert!(!resumed);
    assert_eq!(prompt_tokens(&mut ws, "c1", "hello world").await, 2);
    ws.close().await;

    let (mut ws, id, resumed) = open_on(&cluster, 1, &token, Some(&session)).await;
    assert_eq!((id.as_str(), resumed), (session.as_str(), true));
    // History: "hello world" (2) + its reply (2) + "one two three" (3).
    assert_eq!(prompt_tokens(&mut ws, "c2", "one two three").await, 7);
    ws.close().await;

    // And back on the first instance, with what was added on the second.
    let (mut ws, _, resumed) = open_on(&cluster, 0, &token, Some(&session)).await;
    assert!(resumed);
    assert_eq!(prompt_tokens(&mut ws, "c3", "four").await, 7 + 3 + 1);

    // Another user cannot resume it on any instance.
    let mallory = cluster.user_token("mallory");
    let (_, id, resumed) = open_on(&cluster, 1, &mallory, Some(&session)).await;
    assert!(!resumed);
    assert_ne!(id, session);
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn resuming_a_session_attached_elsewhere_takes_it_over() {
    let cluster = Cluster::start(2, &[]);
    let token = cluster.user_token("alice");
    let (mut old, session, _) = open_on(&cluster, 0, &token, None).await;
    assert_eq!(prompt_tokens(&mut old, "c1", "hello world").await, 2);

    let started = Instant::now();
    let (mut new, id, resumed) = open_on(&cluster, 1, &token, Some(&session)).await;
    assert_eq!((id.as_str(), resumed), (session.as_str(), true));
    let left = Duration::from_secs(1).saturating_sub(started.elapsed());
    assert_eq!(
        old.expect_close(left).await,
        Some(1008),
        "the old socket closes with 1008 within 1 s of the resume"
    );
    assert_eq!(prompt_tokens(&mut new, "c2", "one two three").await, 7);
    // Taken over, not ended: it is active, on the second instance.
    let admin = cluster.admin_token("root");
    eventually(
        "the session listed active once",
        Duration::from_secs(5),
        || {
            let (cluster, admin, session) = (&cluster, &admin, &session);
            async move {
                let (_, page) = cluster.get(0, "/admin/sessions?state=active", admin).await;
                let items = page["items"].as_array()?;
                (items.len() == 1 && items[0]["id"] == session.as_str()).then_some(())
            }
        },
    )
    .await;
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn sessions_of_a_killed_instance_resume_elsewhere_within_ten_seconds() {
    let mut cluster = Cluster::start(2, &[]);
    let token = cluster.user_token("alice");
    let (mut ws, session, _) = open_on(&cluster, 0, &token, None).await;
    assert_eq!(prompt_tokens(&mut ws, "c1", "hello world").await, 2);
    // The reply is written behind; only what reached Redis can outlive the instance.
    eventually("the history in Redis", Duration::from_secs(5), || {
        let (cluster, session) = (&cluster, &session);
        async move { (stored_history(cluster, session).await == 2).then_some(()) }
    })
    .await;

    cluster.kill(0);
    let killed = Instant::now();
    let (mut ws, id, resumed) = open_on(&cluster, 1, &token, Some(&session)).await;
    assert_eq!((id.as_str(), resumed), (session.as_str(), true));
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "resumed {:?} after the kill",
        killed.elapsed()
    );
    assert_eq!(prompt_tokens(&mut ws, "c2", "one two three").await, 7);
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn deleting_a_session_on_another_instance_closes_its_socket() {
    let cluster = Cluster::start(2, &[]);
    let token = cluster.user_token("alice");
    let admin = cluster.admin_token("root");
    let (mut ws, session, _) = open_on(&cluster, 0, &token, None).await;
    eventually(
        "the session visible on the other instance",
        Duration::from_secs(5),
        || {
            let (cluster, admin, session) = (&cluster, &admin, &session);
            async move {
                let (_, page) = cluster.get(1, "/admin/sessions?state=active", admin).await;
                let items = page["items"].as_array()?;
                items
                    .iter()
                    .any(|s| s["id"] == session.as_str())
                    .then_some(())
            }
        },
    )
    .await;

    let started = Instant::now();
    assert_eq!(delete_session(&cluster, 1, &session).await, 204);
    let left = Duration::from_secs(1).saturating_sub(started.elapsed());
    assert_eq!(ws.expect_close(left).await, Some(1008));
    assert_eq!(delete_session(&cluster, 1, &session).await, 404);
    assert_eq!(delete_session(&cluster, 0, &session).await, 404);
    // Ended, not resumable anywhere.
    let (_, id, resumed) = open_on(&cluster, 0, &token, Some(&session)).await;
    assert!(!resumed);
    assert_ne!(id, session);

    // A detached session is ended by any instance, in Redis.
    let (ws, detached, _) = open_on(&cluster, 0, &token, None).await;
    ws.close().await;
    eventually(
        "the session detached in Redis",
        Duration::from_secs(5),
        || {
            let (cluster, admin, detached) = (&cluster, &admin, &detached);
            async move {
                let (_, page) = cluster
                    .get(1, "/admin/sessions?state=inactive", admin)
                    .await;
                let items = page["items"].as_array()?;
                items
                    .iter()
                    .any(|s| s["id"] == detached.as_str())
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(delete_session(&cluster, 1, &detached).await, 204);
    let (_, _, resumed) = open_on(&cluster, 0, &token, Some(&detached)).await;
    assert!(!resumed, "not even its own instance resumes it");
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn admin_lists_and_stats_count_every_instance() {
    let cluster = Cluster::start(2, &[]);
    let admin = cluster.admin_token("root");
    let (_alice, alice, _) = open_on(&cluster, 0, &cluster.user_token("alice"), None).await;
    let (_bob, bob, _) = open_on(&cluster, 1, &cluster.user_token("bob"), None).await;
    let (carol_ws, carol, _) = open_on(&cluster, 1, &cluster.user_token("carol"), None).await;
    carol_ws.close().await;

    for i in 0..2 {
        eventually(
            &format!("stats of both on instance {i}"),
            Duration::from_secs(5),
            || {
                let (cluster, admin) = (&cluster, &admin);
                async move {
                    let (_, stats) = cluster.get(i, "/admin/sessions/stats", admin).await;
                    (stats == json!({"active": 2, "inactive": 1, "total": 3})).then_some(())
                }
            },
        )
        .await;
    }
    let ids = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_string())
            .collect()
    };
    let (_, active) = cluster.get(0, "/admin/sessions?state=active", &admin).await;
    let mut active_ids = ids(&active);
    active_ids.sort();
    let mut expected = vec![alice.clone(), bob.clone()];
    expected.sort();
    assert_eq!(active_ids, expected);
    let (_, inactive) = cluster
        .get(1, "/admin/sessions?state=inactive", &admin)
        .await;
    assert_eq!(ids(&inactive), std::slice::from_ref(&carol));
    assert_eq!(inactive["items"][0]["user"], "carol");
    assert!(inactive["items"][0]["ended_at"].is_string());

    // Pages of one, newest first, cover all three once.
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/admin/sessions?limit=1&cursor={c}"),
            None => "/admin/sessions?limit=1".to_string(),
        };
        let (status, page) = cluster.get(0, &path, &admin).await;
        assert_eq!(status, 200, "{page}");
        seen.extend(ids(&page));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen, [carol, bob, alice]);
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn sessions_opened_while_redis_is_away_resume_elsewhere_once_it_is_back() {
    let redis_url = crate::cluster_support::require_redis();
    let target = redis_url
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .expect("host:port")
        .parse()
        .expect("TEST_REDIS_URL must name an IP address and port");
    let proxy = TcpProxy::start(target);
    let cluster = Cluster::start_with_redis(2, &format!("redis://{}", proxy.addr), &[]);
    let token = cluster.user_token("alice");

    proxy.cut();
    // Chats go on; the session lives on its instance.
    let (mut ws, session, _) = open_on(&cluster, 0, &token, None).await;
    assert_eq!(prompt_tokens(&mut ws, "c1", "hello world").await, 2);
    ws.close().await;
    let (ws, _, resumed) = open_on(&cluster, 1, &token, Some(&session)).await;
    assert!(
        !resumed,
        "without Redis it resumes only where it was opened"
    );
    ws.close().await;
    let (ws, _, resumed) = open_on(&cluster, 0, &token, Some(&session)).await;
    assert!(resumed);
    ws.close().await;

    proxy.restore();
    let mut ws = eventually(
        "resumable on the other instance",
        Duration::from_secs(10),
        || {
            let (cluster, token, session) = (&cluster, &token, &session);
            async move {
                let (ws, _, resumed) = open_on(cluster, 1, token, Some(session)).await;
                resumed.then_some(ws)
            }
        },
    )
    .await;
    assert_eq!(prompt_tokens(&mut ws, "c2", "one two three").await, 7);
}

#[actix_web::test]
#[ignore = "needs TEST_REDIS_URL and TEST_POSTGRES_URL"]
async fn a_stopping_instance_leaves_its_sessions_detached_in_redis() {
    let mut cluster = Cluster::start(2, &[]);
    let token = cluster.user_token("alice");
    let (mut ws, session, _) = open_on(&cluster, 0, &token, None).await;
    assert_eq!(prompt_tokens(&mut ws, "c1", "hello world").await, 2);

    let mut stopping = cluster.instances[0].take().expect("instance 0");
    stopping.signal("-TERM");
    assert_eq!(ws.expect_close(Duration::from_secs(10)).await, Some(1001));
    stopping.wait_exit(Duration::from_secs(15));
    // Written before it exited: no holder, so no instance waits for it to answer.
    let client = redis::Client::open(cluster.redis_url.as_str()).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let holder: Option<String> = redis::cmd("HGET")
        .arg(format!("{}sess:{session}", cluster.prefix))
        .arg("holder")
        .query_async(&mut conn)
        .await
        .expect("hget");
    assert_eq!(holder.as_deref(), Some(""));

    let (mut ws, _, resumed) = open_on(&cluster, 1, &token, Some(&session)).await;
    assert!(resumed);
    assert_eq!(prompt_tokens(&mut ws, "c2", "one two three").await, 7);
}
