//! Registry actors of a simulated cluster: two or three instances in one process, sharing a
//! [`LocalCluster`] store and a bus that hands commands to the named instance's registry.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;

use super::*;
use crate::actors::cluster_bus::{AskInstance, RemoteCommand};
use crate::actors::db_flusher::{Batch, BatchWriter, DbFlusher, FlusherSettings};
use crate::cluster::protocol::Answer;
use crate::cluster::RedisUnavailable;
use crate::db::retry::Backoff;
use crate::db::DbError;
use crate::domain::message::Turn;
use crate::domain::UserId;

const TTL: Duration = Duration::from_secs(60);
const DEAD_AFTER: Duration = Duration::from_secs(5);

struct NullWriter;
impl BatchWriter for NullWriter {
    fn write(&self, _: &Batch) -> Result<(), DbError> {
        Ok(())
    }
}

fn flusher() -> Addr<DbFlusher> {
    DbFlusher::new(
        Arc::new(NullWriter),
        FlusherSettings {
            interval: Duration::from_secs(1),
            flush_threshold_rows: 1_000,
            max_batch_rows: 1_000,
            max_buffered_requests: 1_000,
            retry: Backoff::default(),
        },
    )
    .start()
}

/// The cluster bus of the simulation: a command reaches the registry registered under the
/// instance's name; one that is not (or is "silent") gets no answer.
#[derive(Default)]
struct FakeBus {
    instances: HashMap<String, Recipient<RemoteCommand>>,
}
impl Actor for FakeBus {
    type Context = Context<Self>;
}

#[derive(Message)]
#[rtype(result = "()")]
struct Join(String, Recipient<RemoteCommand>);

impl Handler<Join> for FakeBus {
    type Result = ();
    fn handle(&mut self, msg: Join, _: &mut Context<Self>) {
        self.instances.insert(msg.0, msg.1);
    }
}

impl Handler<AskInstance> for FakeBus {
    type Result = ResponseFuture<Result<Answer, RedisUnavailable>>;
    fn handle(&mut self, msg: AskInstance, _: &mut Context<Self>) -> Self::Result {
        let to = self.instances.get(&msg.instance).cloned();
        Box::pin(async move {
            match to {
                Some(to) => to
                    .send(RemoteCommand(msg.command))
                    .await
                    .map_err(|e| RedisUnavailable(e.to_string())),
                None => Err(RedisUnavailable("no answer".into())),
            }
        })
    }
}

/// A connection that records the close codes it is sent.
struct Socket(Rc<RefCell<Vec<u16>>>);
impl Actor for Socket {
    type Context = Context<Self>;
}
impl Handler<CloseConnection> for Socket {
    type Result = ();
    fn handle(&mut self, msg: CloseConnection, _: &mut Context<Self>) {
        self.0.borrow_mut().push(msg.code);
    }
}

fn socket() -> (Recipient<CloseConnection>, Rc<RefCell<Vec<u16>>>) {
    let closes = Rc::new(RefCell::new(Vec::new()));
    (Socket(closes.clone()).start().recipient(), closes)
}

struct Sim {
    cluster: Rc<RefCell<LocalCluster>>,
    bus: Addr<FakeBus>,
}

impl Sim {
    fn new() -> Sim {
        Sim {
            cluster: LocalCluster::new(),
            bus: FakeBus::default().start(),
        }
    }

    /// A live instance `name`, answering on the bus.
    async fn instance(&self, name: &str) -> Addr<SessionRegistry> {
        let registry = self.silent_instance(name);
        self.bus
            .send(Join(name.into(), registry.clone().recipient()))
            .await
            .expect("join");
        registry
    }

    /// A live instance (by heartbeat) that never answers the bus.
    fn silent_instance(&self, name: &str) -> Addr<SessionRegistry> {
        self.cluster.borrow_mut().beat(name, now_ms() + 3_600_000);
        let store = LocalSessionStore::new(name, TTL, DEAD_AFTER, self.cluster.clone());
        SessionRegistry::new(
            HistoryLimits {
                max_messages: 20,
                max_bytes: 10_000,
            },
            TTL,
            Duration::from_secs(300),
            flusher(),
        )
        .shared_through(Rc::new(store), Some(self.bus.clone().recipient()), TTL)
        .start()
    }
}

fn alice() -> UserId {
    UserId::parse("alice").expect("user")
}

async fn open(
    registry: &Addr<SessionRegistry>,
    resume: Option<&SessionId>,
    conn_id: u64,
    connection: Recipient<CloseConnection>,
) -> SessionOpened {
    registry
        .send(OpenSession {
            user: alice(),
            resume: resume.cloned(),
            conn_id,
            connection,
        })
        .await
        .expect("open")
}

/// One chat as the pipeline records it: the user's message, then the echo reply.
async fn chat(registry: &Addr<SessionRegistry>, id: &SessionId, text: &str) -> Vec<String> {
    let seen = registry
        .send(AppendUserMessage {
            id: id.clone(),
            turn: Turn {
                user: Some(ChatMessage::user(text)),
                ..Turn::default()
            },
        })
        .await
        .expect("append")
        .expect("session");
    registry.do_send(RecordReply {
        id: id.clone(),
        content: Arc::from(text),
        tool_calls: Vec::new(),
        latency_ms: 5,
    });
    seen.iter().map(|m| m.content.to_string()).collect()
}

/// Waits until the registry's writes behind have landed (the local store answers at once,
/// so a few turns of the actor's loop do it).
async fn settle(registry: &Addr<SessionRegistry>) {
    for _ in 0..5 {
        registry.send(GetSessionStats).await.expect("stats");
        actix::clock::sleep(Duration::from_millis(1)).await;
    }
}

#[actix::test]
async fn a_session_resumes_on_another_instance_with_its_history() {
    let sim = Sim::new();
    let (a, b) = (sim.instance("a").await, sim.instance("b").await);
    let (conn, _) = socket();
    let opened = open(&a, None, 1, conn).await;
    chat(&a, &opened.id, "hello world").await;
    a.do_send(DetachSession {
        id: opened.id.clone(),
        conn_id: 1,
    });
    settle(&a).await;

    let (conn, _) = socket();
    let resumed = open(&b, Some(&opened.id), 2, conn).await;
    assert_eq!(
        resumed,
        SessionOpened {
            id: opened.id.clone(),
            resumed: true,
            previous_instance: Some("a".into()),
        }
    );
    let seen = chat(&b, &opened.id, "one two").await;
    assert_eq!(seen, ["hello world", "hello world", "one two"]);
}

#[actix::test]
async fn resuming_an_attached_session_elsewhere_takes_it_over() {
    let sim = Sim::new();
    let (a, b) = (sim.instance("a").await, sim.instance("b").await);
    let (conn, a_closes) = socket();
    let opened = open(&a, None, 1, conn).await;
    chat(&a, &opened.id, "hello").await;

    let (conn, b_closes) = socket();
    let resumed = open(&b, Some(&opened.id), 2, conn).await;
    assert!(resumed.resumed);
    settle(&a).await;
    assert_eq!(
        *a_closes.borrow(),
        [1008],
        "the old socket is closed with 1008"
    );
    assert_eq!(a.send(GetSessionStats).await.expect("stats").active, 0);
    // Not ended: the history came along, and b holds it.
    assert_eq!(
        chat(&b, &opened.id, "again").await,
        ["hello", "hello", "again"]
    );
    settle(&b).await;
    let listed = a
        .send(ListSessions {
            filter: StateFilter::Active,
            after: None,
            limit: 10,
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].messages, 4);
    assert!(b_closes.borrow().is_empty());
}

#[actix::test]
async fn a_holder_that_does_not_answer_loses_the_session_at_its_next_write() {
    let sim = Sim::new();
    let a = sim.silent_instance("a");
    let b = sim.instance("b").await;
    let (conn, a_closes) = socket();
    let opened = open(&a, None, 1, conn).await;
    chat(&a, &opened.id, "hello").await;
    settle(&a).await;

    let (conn, _) = socket();
    assert!(open(&b, Some(&opened.id), 2, conn).await.resumed);
    assert!(a_closes.borrow().is_empty(), "a was never asked");
    // a's next write finds the session taken: it lets go of its socket.
    chat(&a, &opened.id, "late").await;
    settle(&a).await;
    assert_eq!(*a_closes.borrow(), [1008]);
    assert_eq!(a.send(GetSessionStats).await.expect("stats").total, 0);
    assert_eq!(chat(&b, &opened.id, "b").await, ["hello", "hello", "b"]);
}

#[actix::test]
async fn sessions_of_a_dead_instance_resume_without_asking_it() {
    let sim = Sim::new();
    let a = sim.silent_instance("a");
    let b = sim.instance("b").await;
    let (conn, _) = socket();
    let opened = open(&a, None, 1, conn).await;
    chat(&a, &opened.id, "hello").await;
    settle(&a).await;
    // a's heartbeat stops: after DEAD_AFTER it is dead.
    sim.cluster
        .borrow_mut()
        .beat("a", now_ms() - DEAD_AFTER.as_millis() as i64 - 1);
    assert_eq!(
        b.send(CountSessions).await.expect("count"),
        SessionStats {
            active: 0,
            inactive: 1,
            total: 1
        }
    );
    let (conn, _) = socket();
    assert!(open(&b, Some(&opened.id), 2, conn).await.resumed);
}

#[actix::test]
async fn an_admin_ends_a_session_held_on_another_instance() {
    let sim = Sim::new();
    let (a, b) = (sim.instance("a").await, sim.instance("b").await);
    let (conn, a_closes) = socket();
    let opened = open(&a, None, 1, conn).await;
    settle(&a).await;
    assert_eq!(b.send(CountSessions).await.expect("count").active, 1);

    b.send(EndSession {
        id: opened.id.clone(),
    })
    .await
    .expect("end")
    .expect("ended by its holder");
    settle(&a).await;
    assert_eq!(*a_closes.borrow(), [1008]);
    let again = b
        .send(EndSession {
            id: opened.id.clone(),
        })
        .await
        .expect("end");
    assert!(matches!(again, Err(AppError::NotFound(_))));
    let (conn, _) = socket();
    assert!(!open(&b, Some(&opened.id), 2, conn).await.resumed);
}

#[actix::test]
async fn a_detached_session_is_ended_in_the_store_by_any_instance() {
    let sim = Sim::new();
    let (a, b) = (sim.instance("a").await, sim.instance("b").await);
    let (conn, _) = socket();
    let opened = open(&a, None, 1, conn).await;
    a.do_send(DetachSession {
        id: opened.id.clone(),
        conn_id: 1,
    });
    settle(&a).await;
    b.send(EndSession {
        id: opened.id.clone(),
    })
    .await
    .expect("end")
    .expect("ended");
    // Not even a's own copy resumes it.
    let (conn, _) = socket();
    assert!(!open(&a, Some(&opened.id), 2, conn).await.resumed);
}

#[actix::test]
async fn sessions_opened_during_an_outage_are_written_back_on_rejoin() {
    let sim = Sim::new();
    let (a, b) = (sim.instance("a").await, sim.instance("b").await);
    sim.cluster.borrow_mut().set_up(false);
    let (conn, _) = socket();
    let opened = open(&a, None, 1, conn).await;
    chat(&a, &opened.id, "offline").await;
    a.do_send(DetachSession {
        id: opened.id.clone(),
        conn_id: 1,
    });
    settle(&a).await;
    // Meanwhile it resumes only where it was opened.
    let (conn, _) = socket();
    assert!(!open(&b, Some(&opened.id), 2, conn).await.resumed);

    sim.cluster.borrow_mut().set_up(true);
    a.send(RedisRejoined).await.expect("rejoin");
    settle(&a).await;
    let (conn, _) = socket();
    assert!(open(&b, Some(&opened.id), 3, conn).await.resumed);
    assert_eq!(
        chat(&b, &opened.id, "online").await,
        ["offline", "offline", "online"]
    );
}

#[actix::test]
async fn a_resume_on_the_same_instance_keeps_unwritten_changes() {
    let sim = Sim::new();
    let a = sim.instance("a").await;
    let (conn, _) = socket();
    let opened = open(&a, None, 1, conn).await;
    // The user's message alone is not written yet; the detach carries it.
    a.send(AppendUserMessage {
        id: opened.id.clone(),
        turn: Turn {
            user: Some(ChatMessage::user("failed chat")),
            ..Turn::default()
        },
    })
    .await
    .expect("append")
    .expect("session");
    a.do_send(DetachSession {
        id: opened.id.clone(),
        conn_id: 1,
    });
    let (conn, _) = socket();
    assert!(open(&a, Some(&opened.id), 2, conn).await.resumed);
    assert_eq!(chat(&a, &opened.id, "next").await, ["failed chat", "next"]);
}
