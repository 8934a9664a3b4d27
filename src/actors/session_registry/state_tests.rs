//! Unit tests of the registry state.
use super::*;
use crate::actors::session_registry::store::{HistoryWrite, SessionWrite, StoredSession};
use proptest::prelude::*;
use std::collections::HashMap as Model;

/// A connection stand-in that accepts close requests and does nothing.
struct NullConnection;
impl Actor for NullConnection {
    type Context = Context<Self>;
}
impl Handler<CloseConnection> for NullConnection {
    type Result = ();
    fn handle(&mut self, _: CloseConnection, _: &mut Context<Self>) {}
}

fn limits() -> HistoryLimits {
    HistoryLimits {
        max_messages: 4,
        max_bytes: 20,
    }
}

fn user(name: &str) -> UserId {
    UserId::parse(name).expect("user")
}

#[actix::test]
async fn history_is_bounded_by_count_and_bytes_oldest_first() {
    let conn = NullConnection.start().recipient();
    let mut state = RegistryState::new(limits(), Duration::from_secs(60));
    let (opened, _, _) = state.open(user("u"), None, (1, conn), 0);
    for word in ["aaaa", "bbbb", "cccc", "dddd", "eeee"] {
        state
            .append_turn(&opened.id, user_turn(word))
            .expect("append");
    }
    let history = state
        .append_turn(&opened.id, user_turn("ffff"))
        .expect("append");
    let contents: Vec<&str> = history.iter().map(|m| &*m.content).collect();
    assert_eq!(contents, vec!["cccc", "dddd", "eeee", "ffff"]);
    let big = state
        .append_turn(&opened.id, user_turn(&"x".repeat(50)))
        .expect("append");
    assert_eq!(big.len(), 1, "an oversized message stays alone");
}

fn user_turn(text: &str) -> Turn {
    Turn {
        user: Some(ChatMessage::user(text)),
        ..Turn::default()
    }
}

#[actix::test]
async fn system_prompt_heads_the_history_and_outlives_the_bound() {
    let conn = NullConnection.start().recipient();
    let mut state = RegistryState::new(limits(), Duration::from_secs(60));
    let (opened, _, _) = state.open(user("u"), None, (1, conn), 0);
    let first = Turn {
        system: Some(ChatMessage::text(ChatRole::System, "be terse")),
        ..user_turn("aaaa")
    };
    state.append_turn(&opened.id, first).expect("append");
    let mut history = Vec::new();
    for word in ["bbbb", "cccc", "dddd", "eeee", "ffff"] {
        history = state
            .append_turn(&opened.id, user_turn(word))
            .expect("append");
    }
    let contents: Vec<&str> = history.iter().map(|m| &*m.content).collect();
    assert_eq!(contents, vec!["be terse", "cccc", "dddd", "eeee", "ffff"]);
}

#[actix::test]
async fn tool_results_must_answer_the_previous_replys_calls() {
    let conn = NullConnection.start().recipient();
    let mut state = RegistryState::new(limits(), Duration::from_secs(60));
    let (opened, _, _) = state.open(user("u"), None, (1, conn), 0);
    let result = |id: &str| {
        let content = serde_json::value::RawValue::from_string("\"17\"".into()).expect("json");
        let message = ChatMessage::tool_result(id, &content).expect("valid");
        Turn {
            tool_results: vec![(id.to_string(), message)],
            ..Turn::default()
        }
    };
    let err = state
        .append_turn(&opened.id, result("call_1"))
        .expect_err("no calls yet");
    assert!(
        err.to_string().contains("no unanswered tool calls"),
        "{err}"
    );
    state
        .append_turn(&opened.id, user_turn("add"))
        .expect("append");
    let call = ToolCall {
        id: "call_1".into(),
        kind: "function".into(),
        ..ToolCall::default()
    };
    state.record_reply(&opened.id, Arc::from(""), vec![call], 5);
    let err = state
        .append_turn(&opened.id, result("call_9"))
        .expect_err("unknown call");
    assert!(
        err.to_string().contains("\"call_9\"") && err.to_string().contains("call_1"),
        "{err}"
    );
    let history = state
        .append_turn(&opened.id, result("call_1"))
        .expect("answers call_1");
    let roles: Vec<ChatRole> = history.iter().map(|m| m.role).collect();
    assert_eq!(roles, [ChatRole::User, ChatRole::Assistant, ChatRole::Tool]);
    assert!(
        state.append_turn(&opened.id, result("call_1")).is_err(),
        "answered once"
    );
}

#[actix::test]
async fn hundred_thousand_ended_sessions_are_all_swept() {
    let conn = NullConnection.start().recipient::<CloseConnection>();
    let start = Instant::now();
    let mut state = RegistryState::new(limits(), Duration::from_secs(10));
    for i in 0..100_000u64 {
        let (opened, _, _) = state.open(user("u"), None, (i, conn.clone()), 0);
        state.detach(&opened.id, i, start, 0);
    }
    assert_eq!(
        state.stats(),
        SessionStats {
            active: 0,
            inactive: 100_000,
            total: 100_000
        }
    );
    assert_eq!(state.evict_expired(start + Duration::from_secs(5)), 0);
    assert_eq!(
        state.evict_expired(start + Duration::from_secs(11)),
        100_000
    );
    assert_eq!(state.stats(), SessionStats::default());
}

/// The listing as it was before the bounded heap: filter, full sort, take.
fn list_by_full_sort(
    state: &RegistryState,
    filter: StateFilter,
    after: Option<&(i64, String)>,
    limit: usize,
) -> Vec<String> {
    let mut all: Vec<(i64, String, bool)> = state
        .sessions
        .iter()
        .map(|(id, s)| (s.started_at_ms, id.to_string(), s.attachment.is_some()))
        .filter(|(_, _, active)| match filter {
            StateFilter::All => true,
            StateFilter::Active => *active,
            StateFilter::Inactive => !*active,
        })
        .filter(|(started, id, _)| {
            after.is_none_or(|(s, last)| (*started, id.as_str()) < (*s, last.as_str()))
        })
        .collect();
    all.sort_by(|a, b| (b.0, &b.1).cmp(&(a.0, &a.1)));
    all.into_iter().take(limit).map(|(_, id, _)| id).collect()
}

#[actix::test]
async fn pages_are_the_same_as_with_a_full_sort() {
    let conn = NullConnection.start().recipient::<CloseConnection>();
    let mut state = RegistryState::new(limits(), Duration::from_secs(60));
    for i in 0..500u64 {
        // Many equal start times, so the id decides the order within them.
        let (opened, _, _) = state.open(user("u"), None, (i, conn.clone()), (i % 37) as i64);
        if i % 3 == 0 {
            state.detach(&opened.id, i, Instant::now(), 0);
        }
    }
    for filter in [StateFilter::All, StateFilter::Active, StateFilter::Inactive] {
        for limit in [0, 1, 7, 50, 1000] {
            let mut after: Option<(i64, String)> = None;
            let mut seen = 0;
            loop {
                let page = state.list(filter, after.as_ref(), limit);
                let ids: Vec<String> = page.iter().map(|s| s.id.clone()).collect();
                assert_eq!(
                    ids,
                    list_by_full_sort(&state, filter, after.as_ref(), limit),
                    "{filter:?} limit {limit} after {after:?}"
                );
                seen += page.len();
                match page.last() {
                    Some(last) if limit > 0 => after = Some((last.started_at_ms, last.id.clone())),
                    _ => break,
                }
            }
            let total = list_by_full_sort(&state, filter, None, usize::MAX).len();
            assert_eq!(
                seen,
                if limit == 0 { 0 } else { total },
                "{filter:?} limit {limit}"
            );
        }
    }
}

#[derive(Clone, Debug)]
enum Step {
    Open { user: u8 },
    Resume { session: usize, user: u8 },
    Detach { session: usize },
    End { session: usize },
    Sweep { after_secs: u64 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3).prop_map(|user| Step::Open { user }),
        (0usize..8, 0u8..3).prop_map(|(session, user)| Step::Resume { session, user }),
        (0usize..8).prop_map(|session| Step::Detach { session }),
        (0usize..8).prop_map(|session| Step::End { session }),
        (0u64..20).prop_map(|after_secs| Step::Sweep { after_secs }),
    ]
}

/// What a session is, in the model: owner, attached connection, when it ended.
#[derive(Clone, Debug)]
struct ModelSession {
    user: u8,
    conn: Option<u64>,
    ended_at: Option<u64>,
}

proptest! {
    /// After any sequence of open/resume/detach/end/sweep the registry agrees with a plain
    /// map, and active + inactive = total.
    #[test]
    fn registry_matches_a_simple_model(steps in proptest::collection::vec(step(), 1..60)) {
        let system = actix::System::new();
        system.block_on(async move {
            let conn = NullConnection.start().recipient::<CloseConnection>();
            let ttl = 10u64;
            let start = Instant::now();
            let mut now = 0u64;
            let mut state = RegistryState::new(limits(), Duration::from_secs(ttl));
            let mut model: Model<SessionId, ModelSession> = Model::new();
            let mut ids: Vec<SessionId> = Vec::new();
            let mut next_conn = 0u64;
            for step in steps {
                next_conn += 1;
                match step {
                    Step::Open { user: u } => {
                        let (opened, _, _) = state.open(user(&format!("u{u}")), None, (next_conn, conn.clone()), 0);
                        assert!(!opened.resumed);
                        model.insert(opened.id.clone(), ModelSession { user: u, conn: Some(next_conn), ended_at: None });
                        ids.push(opened.id);
                    }
                    Step::Resume { session, user: u } => {
                        let Some(id) = ids.get(session).cloned() else { continue };
                        let (opened, _, _) = state.open(user(&format!("u{u}")), Some(id.clone()), (next_conn, conn.clone()), 0);
                        let expect_resume = model.get(&id).is_some_and(|s| s.user == u);
                        assert_eq!(opened.resumed, expect_resume);
                        if expect_resume {
                            let s = model.get_mut(&id).expect("model");
                            s.conn = Some(next_conn);
                            s.ended_at = None;
                        } else {
                            model.insert(opened.id.clone(), ModelSession { user: u, conn: Some(next_conn), ended_at: None });
                            ids.push(opened.id);
                        }
                    }
                    Step::Detach { session } => {
                        let Some(id) = ids.get(session).cloned() else { continue };
                        let conn_id = model.get(&id).and_then(|s| s.conn);
                        if let Some(conn_id) = conn_id {
                            state.detach(&id, conn_id, start + Duration::from_secs(now), 0);
                            let s = model.get_mut(&id).expect("model");
                            s.conn = None;
                            s.ended_at = Some(now);
                        }
                    }
                    Step::End { session } => {
                        let Some(id) = ids.get(session).cloned() else { continue };
                        let existed = state.end(&id, 0).is_some();
                        assert_eq!(existed, model.remove(&id).is_some());
                    }
                    Step::Sweep { after_secs } => {
                        now += after_secs;
                        state.evict_expired(start + Duration::from_secs(now));
                        model.retain(|_, s| s.ended_at.is_none_or(|ended| now - ended < ttl));
                    }
                }
                let stats = state.stats();
                let active = model.values().filter(|s| s.conn.is_some()).count();
                assert_eq!(stats.total, model.len());
                assert_eq!(stats.active, active);
                assert_eq!(stats.active + stats.inactive, stats.total);
            }
        });
    }
}

/// The shared store as the writes describe it: what a session's history is after them.
fn apply(stored: &mut Vec<String>, write: &SessionWrite) {
    match &write.history {
        HistoryWrite::Full(all) => *stored = all.iter().map(|m| m.content.to_string()).collect(),
        HistoryWrite::Append { drop_front, push } => {
            stored.extend(push.iter().map(|m| m.content.to_string()));
            stored.drain(..(*drop_front).min(stored.len()));
        }
    }
}

fn history_of(state: &mut RegistryState, id: &SessionId) -> Vec<String> {
    // An empty turn changes nothing and returns what the model would see.
    state
        .append_turn(id, Turn::default())
        .expect("session")
        .iter()
        .map(|m| m.content.to_string())
        .collect()
}

#[actix::test]
async fn without_a_shared_store_nothing_is_tracked() {
    let conn = NullConnection.start().recipient();
    let mut state = RegistryState::new(limits(), Duration::from_secs(60));
    let (opened, _, _) = state.open(user("u"), None, (1, conn), 0);
    state
        .append_turn(&opened.id, user_turn("a"))
        .expect("append");
    assert!(state.take_writes(10, &HashSet::new()).is_empty());
}

#[actix::test]
async fn writes_carry_only_what_changed_and_presence() {
    let conn = NullConnection.start().recipient();
    let mut state = RegistryState::new(limits(), Duration::from_secs(60));
    state.track_changes();
    let none = HashSet::new();
    let (opened, _, _) = state.open(user("u"), None, (1, conn), 5);
    let first = state.take_writes(10, &none);
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].history, HistoryWrite::Full(Vec::new()));
    assert!(first[0].attached);
    assert!(
        state.take_writes(10, &none).is_empty(),
        "nothing changed since"
    );

    state
        .append_turn(&opened.id, user_turn("aaaa"))
        .expect("append");
    state.record_reply(&opened.id, Arc::from("bbbb"), Vec::new(), 7);
    let writes = state.take_writes(10, &none);
    assert_eq!(
        writes[0].history,
        HistoryWrite::Append {
            drop_front: 0,
            push: vec![ChatMessage::user("aaaa"), ChatMessage::assistant("bbbb")]
        }
    );
    assert_eq!(
        (writes[0].messages, writes[0].response_ms.clone()),
        (2, vec![7])
    );

    // Skipped sessions (being claimed) stay dirty.
    state.detach(&opened.id, 1, Instant::now(), 9);
    let skip: HashSet<SessionId> = [opened.id.clone()].into();
    assert!(state.take_writes(10, &skip).is_empty());
    let writes = state.take_writes(10, &none);
    assert!(!writes[0].attached);
    assert_eq!(writes[0].ended_at_ms, Some(9));
    assert_eq!(
        writes[0].history,
        HistoryWrite::Append {
            drop_front: 0,
            push: Vec::new()
        }
    );
    state.rewrite_whole(&opened.id);
    assert!(matches!(
        &state.take_writes(10, &none)[0].history,
        HistoryWrite::Full(all) if all.len() == 2
    ));
}

#[actix::test]
async fn an_adopted_session_is_the_stored_one_attached_here() {
    let conn = NullConnection.start().recipient();
    let mut state = RegistryState::new(limits(), Duration::from_secs(60));
    state.track_changes();
    let id = SessionId::new_random();
    let stored = StoredSession {
        user: user("u"),
        started_at_ms: 3,
        messages: 2,
        system: Some(ChatMessage::text(ChatRole::System, "sys")),
        history: vec![ChatMessage::user("aaaa"), ChatMessage::assistant("bbbb")],
        open_calls: Vec::new(),
        response_ms: vec![4],
    };
    let (opened, previous, row) = state.adopt(id.clone(), stored, (1, conn));
    assert_eq!(
        opened,
        SessionOpened {
            id: id.clone(),
            resumed: true,
            previous_instance: None,
        }
    );
    assert!(previous.is_none());
    assert_eq!((row.started_at, row.messages, row.ended_at), (3, 2, None));
    assert_eq!(state.stats().active, 1);
    assert_eq!(history_of(&mut state, &id), ["sys", "aaaa", "bbbb"]);
    // The store has all of it: the write after the claim changes no history.
    let writes = state.take_writes(10, &HashSet::new());
    assert_eq!(
        writes[0].history,
        HistoryWrite::Append {
            drop_front: 0,
            push: Vec::new()
        }
    );
    assert!(state.let_go(&id, Instant::now(), 4).is_some());
    assert_eq!(
        state.stats(),
        SessionStats {
            active: 0,
            inactive: 1,
            total: 1
        }
    );
    assert!(state.forget(&id).is_none(), "no connection left to close");
    assert_eq!(state.stats().total, 0);
}

proptest! {
    /// Whatever is appended (and dropped by the bound) between writes, applying the writes in
    /// order gives exactly the history the model sees.
    #[test]
    fn applying_the_writes_rebuilds_the_history(
        rounds in proptest::collection::vec(proptest::collection::vec(1usize..12, 0..6), 1..12)
    ) {
        let system = actix::System::new();
        system.block_on(async move {
            let conn = NullConnection.start().recipient::<CloseConnection>();
            let mut state = RegistryState::new(limits(), Duration::from_secs(60));
            state.track_changes();
            let (opened, _, _) = state.open(user("u"), None, (1, conn), 0);
            let mut stored: Vec<String> = Vec::new();
            let mut n = 0;
            for round in rounds {
                for len in round {
                    n += 1;
                    let text = format!("{n}{}", "x".repeat(len));
                    if n % 2 == 0 {
                        state.record_reply(&opened.id, Arc::from(text.as_str()), Vec::new(), 1);
                    } else {
                        state.append_turn(&opened.id, user_turn(&text)).expect("append");
                    }
                }
                for write in state.take_writes(10, &HashSet::new()) {
                    apply(&mut stored, &write);
                }
                assert_eq!(stored, history_of(&mut state, &opened.id));
            }
        });
    }
}
