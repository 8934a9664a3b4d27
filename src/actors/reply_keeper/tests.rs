//! The keeper actor with real event streams: hand-over without gap or duplicate, and the
//! grace stop as a running reply's producer sees it.

use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::*;
use crate::domain::{ChatId, SessionId, UserId};

fn limits(grace: Duration) -> KeeperLimits {
    KeeperLimits {
        grace,
        kept_max_bytes: KEPT_MAX_BYTES,
        attach_wait: ATTACH_WAIT,
    }
}

fn events(rx: mpsc::Receiver<ReplyEvent>) -> ReplyStream {
    Box::pin(futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (event, rx))
    }))
}

fn detached(id: &str, rx: mpsc::Receiver<ReplyEvent>) -> DetachedReply {
    DetachedReply {
        id: ChatId::parse(id).expect("id"),
        frames: ReplyFrames::new(REPLY_MAX_BYTES),
        events: events(rx),
        cancel: None,
        owner: None,
    }
}

fn session() -> SessionId {
    SessionId::parse("s1").expect("session")
}

fn detach(replies: Vec<DetachedReply>) -> DetachSocket {
    DetachSocket {
        session: session(),
        conn_id: 1,
        user: UserId::parse("u").expect("user"),
        replies,
    }
}

fn resume(id: &str, after_seq: u64) -> ResumeReply {
    ResumeReply {
        session: session(),
        id: ChatId::parse(id).expect("id"),
        after_seq,
    }
}

#[actix::test]
async fn a_reply_resumed_mid_stream_continues_without_gap_or_duplicate() {
    let keeper = ReplyKeeper::new(limits(Duration::from_secs(30))).start();
    let (tx, rx) = mpsc::channel(8);
    const N: u64 = 2_000;
    let producer = actix::spawn(async move {
        for i in 1..=N {
            if tx.send(ReplyEvent::Delta(format!("{i},"))).await.is_err() {
                return;
            }
        }
        let _ = tx
            .send(ReplyEvent::End(ReplyEnd {
                state: ReplyState::Done,
                frames: vec!["done".into()],
            }))
            .await;
    });
    keeper
        .send(detach(vec![detached("c1", rx)]))
        .await
        .expect("keeper");
    // Let the keeper read some of it, then take it back while it is still being produced.
    loop {
        let list = keeper
            .send(AttachSocket {
                session: session(),
                conn_id: 2,
                listing: true,
                previous_instance: None,
            })
            .await
            .expect("keeper");
        if list.first().is_some_and(|r| r.last_seq >= 10) {
            break;
        }
        tokio::task::yield_now().await;
    }
    let ResumeAnswer::Running(reply) = keeper.send(resume("c1", 3)).await.expect("keeper") else {
        panic!("still running")
    };
    let mut seen: Vec<u64> = reply
        .frames
        .after(3)
        .expect("kept")
        .map(|(seq, text)| {
            assert_eq!(text, format!("{seq},"));
            seq
        })
        .collect();
    let mut frames = reply.frames;
    let mut events = reply.events;
    let mut ended = false;
    while let Some(event) = events.next().await {
        match event {
            ReplyEvent::Delta(text) => {
                let seq = frames.push(&text);
                assert_eq!(text, format!("{seq},"));
                seen.push(seq);
            }
            ReplyEvent::End(_) => ended = true,
        }
    }
    producer.await.expect("producer");
    assert!(ended);
    assert_eq!(seen, (4..=N).collect::<Vec<_>>());
}

#[actix::test]
async fn an_unresumed_reply_is_stopped_at_the_grace_and_an_ended_one_replayed() {
    tokio::time::pause();
    let grace = Duration::from_secs(5);
    let keeper = ReplyKeeper::new(limits(grace)).start();
    let (running_tx, running_rx) = mpsc::channel(8);
    let (ending_tx, ending_rx) = mpsc::channel(8);
    keeper
        .send(detach(vec![
            detached("run", running_rx),
            detached("end", ending_rx),
        ]))
        .await
        .expect("keeper");
    running_tx
        .send(ReplyEvent::Delta("a".into()))
        .await
        .expect("open");
    ending_tx
        .send(ReplyEvent::Delta("b".into()))
        .await
        .expect("open");
    ending_tx
        .send(ReplyEvent::End(ReplyEnd {
            state: ReplyState::Error,
            frames: vec!["error".into()],
        }))
        .await
        .expect("open");
    drop(ending_tx);
    while keeper.send(GetKeeperStats).await.expect("keeper").ended == 0 {
        tokio::task::yield_now().await;
    }
    match keeper.send(resume("end", 0)).await.expect("keeper") {
        ResumeAnswer::Ended { deltas, end } => {
            assert_eq!(deltas, vec![(1, "b".to_string())]);
            assert_eq!(end.frames, vec!["error".to_string()]);
        }
        _ => panic!("ended"),
    }
    tokio::time::advance(grace - Duration::from_secs(1)).await;
    assert!(!running_tx.is_closed(), "stopped before the grace");
    tokio::time::advance(Duration::from_secs(2)).await;
    // The producer sees its consumer gone, as the pipeline does (and then stops upstream).
    tokio::time::timeout(Duration::from_secs(1), running_tx.closed())
        .await
        .expect("stopped after the grace");
    // Both forgotten: the running one stopped, the ended one a grace after its end.
    for id in ["run", "end"] {
        assert!(matches!(
            keeper.send(resume(id, 0)).await.expect("keeper"),
            ResumeAnswer::NotFound
        ));
    }
    let stats = keeper.send(GetKeeperStats).await.expect("keeper");
    assert_eq!(stats, KeeperStats::default());
}

#[actix::test]
async fn an_admin_stop_drops_a_kept_reply_at_once() {
    let keeper = ReplyKeeper::new(limits(Duration::from_secs(30))).start();
    let (tx, rx) = mpsc::channel(8);
    keeper
        .send(detach(vec![detached("c1", rx)]))
        .await
        .expect("keeper");
    keeper
        .send(StopReplies::Session(session()))
        .await
        .expect("keeper");
    tokio::time::timeout(Duration::from_secs(1), tx.closed())
        .await
        .expect("stopped at once");
}
