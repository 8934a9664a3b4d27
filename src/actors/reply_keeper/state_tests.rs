use std::time::Duration;

use actix::clock::Instant;
use proptest::prelude::*;

use super::*;

const GRACE: Duration = Duration::from_secs(30);

fn limits(kept_max_bytes: usize) -> KeeperLimits {
    KeeperLimits {
        grace: GRACE,
        kept_max_bytes,
        attach_wait: Duration::from_secs(2),
    }
}

type State = ReplyKeeperState<&'static str, u32>;

fn state() -> State {
    ReplyKeeperState::new(limits(1 << 30))
}

fn session(s: &str) -> SessionId {
    SessionId::parse(s).expect("session")
}

fn key(s: &str, id: &str) -> ReplyKey {
    ReplyKey {
        session: session(s),
        id: ChatId::parse(id).expect("id"),
    }
}

fn user(u: &str) -> UserId {
    UserId::parse(u).expect("user")
}

fn frames(deltas: &[&str]) -> ReplyFrames {
    let mut frames = ReplyFrames::new(1 << 20);
    for delta in deltas {
        frames.push(delta);
    }
    frames
}

fn end(state: ReplyState) -> ReplyEnd {
    ReplyEnd {
        state,
        frames: vec![format!(r#"{{"type":"end","state":"{state:?}"}}"#)],
    }
}

fn summary(id: &str, state: ReplyState, last_seq: u64) -> ReplySummary {
    ReplySummary {
        id: ChatId::parse(id).expect("id"),
        state,
        last_seq,
    }
}

fn keep_running(
    state: &mut State,
    k: ReplyKey,
    deltas: &[&str],
    handle: &'static str,
    now: Instant,
) -> u64 {
    let run = state.next_run();
    assert!(state
        .keep_running(k, user("u"), frames(deltas), run, handle, now)
        .is_empty());
    run
}

#[test]
fn a_running_reply_goes_on_until_the_grace_then_is_stopped() {
    let mut state = state();
    let now = Instant::now();
    let run = keep_running(&mut state, key("s", "c1"), &["a", "b"], "c1", now);
    state.on_delta(run, "c");
    assert_eq!(
        state.summaries(&session("s")),
        vec![summary("c1", ReplyState::Running, 3)]
    );
    assert!(state
        .sweep(now + GRACE - Duration::from_millis(1))
        .stop
        .is_empty());
    assert_eq!(state.sweep(now + GRACE).stop, vec!["c1"]);
    assert!(state.summaries(&session("s")).is_empty());
    assert!(matches!(
        state.resume(&key("s", "c1"), 0),
        Resumed::NotFound
    ));
    assert_eq!(state.stats(), KeeperStats::default());
}

#[test]
fn a_reply_ending_without_a_socket_stays_resumable_for_the_grace_from_its_end() {
    let mut state = state();
    let now = Instant::now();
    let run = keep_running(&mut state, key("s", "c1"), &["a"], "c1", now);
    state.on_delta(run, "b");
    let later = now + Duration::from_secs(10);
    assert_eq!(state.on_end(run, end(ReplyState::Done), later), Some("c1"));
    // A late event of the run is ignored.
    state.on_delta(run, "x");
    assert!(state.sweep(now + GRACE).stop.is_empty());
    assert_eq!(
        state.summaries(&session("s")),
        vec![summary("c1", ReplyState::Done, 2)]
    );
    for _ in 0..2 {
        match state.resume(&key("s", "c1"), 1) {
            Resumed::Ended { deltas, end: e } => {
                assert_eq!(deltas, vec![(2, "b".to_string())]);
                assert_eq!(e, end(ReplyState::Done));
            }
            other => panic!("{other:?}"),
        }
    }
    state.sweep(later + GRACE);
    assert!(state.summaries(&session("s")).is_empty());
}

#[test]
fn resuming_a_running_reply_hands_it_over_whole() {
    let mut state = state();
    let now = Instant::now();
    keep_running(&mut state, key("s", "c1"), &["a", "b", "c"], "c1", now);
    match state.resume(&key("s", "c1"), 1) {
        Resumed::Running {
            frames,
            running,
            user: u,
        } => {
            assert_eq!(running, "c1");
            assert_eq!(u, user("u"));
            assert_eq!(frames.last_seq(), 3);
            let rest: Vec<_> = frames.after(1).expect("kept").collect();
            assert_eq!(rest, vec![(2, "b"), (3, "c")]);
        }
        other => panic!("{other:?}"),
    }
    // Now the socket's: neither listed, nor stopped at the grace.
    assert!(state.summaries(&session("s")).is_empty());
    assert!(state.sweep(now + GRACE).stop.is_empty());
    assert_eq!(state.stats(), KeeperStats::default());
}

#[test]
fn unknown_replies_other_sessions_and_dropped_deltas_are_not_found() {
    let mut state = state();
    let now = Instant::now();
    let mut small = ReplyFrames::new(40);
    for delta in ["0123456789", "0123456789", "0123456789", "0123456789"] {
        small.push(delta);
    }
    state.keep_ended(key("s", "c1"), user("u"), small, end(ReplyState::Done), now);
    assert!(matches!(
        state.resume(&key("s", "nope"), 0),
        Resumed::NotFound
    ));
    assert!(matches!(
        state.resume(&key("other", "c1"), 0),
        Resumed::NotFound
    ));
    assert!(matches!(
        state.resume(&key("s", "c1"), 0),
        Resumed::NotFound
    ));
    assert!(matches!(
        state.resume(&key("s", "c1"), 3),
        Resumed::Ended { .. }
    ));
}

#[test]
fn a_listing_waits_for_the_socket_it_took_the_session_from() {
    let mut state = state();
    let now = Instant::now();
    assert!(state.attach(session("s"), 1, None, now).is_none());
    // The new socket (2) asks before the old one (1) handed over: it waits.
    assert!(state.attach(session("s"), 2, Some(7), now).is_none());
    keep_running(&mut state, key("s", "c1"), &["a"], "c1", now);
    let answers = state.detach(&session("s"), 1);
    assert_eq!(
        answers,
        vec![(7, vec![summary("c1", ReplyState::Running, 1)])]
    );
    // Alone now: answered at once.
    let (answer, list) = state
        .attach(session("s"), 2, Some(8), now)
        .expect("at once");
    assert_eq!((answer, list.len()), (8, 1));
}

#[test]
fn a_listing_waits_no_longer_than_attach_wait() {
    let mut state = state();
    let now = Instant::now();
    state.attach(session("s"), 1, None, now);
    assert!(state.attach(session("s"), 2, Some(7), now).is_none());
    assert!(state.sweep(now + Duration::from_secs(1)).answers.is_empty());
    let swept = state.sweep(now + Duration::from_secs(2));
    assert_eq!(swept.answers, vec![(7, vec![])]);
    // Another session's detach answers nobody twice.
    assert!(state.detach(&session("s"), 1).is_empty());
}

#[test]
fn an_ended_reply_under_a_running_ones_id_replaces_and_stops_it() {
    let mut state = state();
    let now = Instant::now();
    keep_running(&mut state, key("s", "c1"), &["a"], "old", now);
    let stop = state.keep_ended(
        key("s", "c1"),
        user("u"),
        frames(&["x"]),
        end(ReplyState::Done),
        now,
    );
    assert_eq!(stop, vec!["old"]);
    assert_eq!(
        state.summaries(&session("s")),
        vec![summary("c1", ReplyState::Done, 1)]
    );
    assert!(state.sweep(now + GRACE).stop.is_empty());
}

#[test]
fn an_admin_stop_ends_the_sessions_replies_and_those_handed_over_after_it() {
    let mut state = state();
    let now = Instant::now();
    keep_running(&mut state, key("s", "c1"), &["a"], "c1", now);
    keep_running(&mut state, key("t", "c1"), &["a"], "t1", now);
    state.keep_ended(
        key("s", "c2"),
        user("u"),
        frames(&[]),
        end(ReplyState::Error),
        now,
    );
    assert_eq!(state.stop_session(&session("s"), now), vec!["c1"]);
    assert!(state.summaries(&session("s")).is_empty());
    // Its socket's hand-over raced the stop: stopped, not kept.
    let run = state.next_run();
    assert_eq!(
        state.keep_running(key("s", "c3"), user("u"), frames(&[]), run, "c3", now),
        vec!["c3"]
    );
    assert_eq!(state.summaries(&session("t")).len(), 1);
    // The stop lasts one grace.
    state.sweep(now + GRACE);
    let run = state.next_run();
    assert!(state
        .keep_running(
            key("s", "c4"),
            user("u"),
            frames(&[]),
            run,
            "c4",
            now + GRACE
        )
        .is_empty());
}

#[test]
fn disabling_a_user_stops_all_their_replies() {
    let mut state = state();
    let now = Instant::now();
    keep_running(&mut state, key("s", "c1"), &["a"], "c1", now);
    let run = state.next_run();
    state.keep_running(key("t", "c1"), user("other"), frames(&[]), run, "t1", now);
    assert_eq!(state.stop_user(&user("u"), now), vec!["c1"]);
    assert_eq!(state.stats().running, 1);
    state.keep_ended(
        key("s", "c9"),
        user("u"),
        frames(&[]),
        end(ReplyState::Done),
        now,
    );
    assert!(state.summaries(&session("s")).is_empty());
}

#[test]
fn a_session_is_exported_once_and_later_deltas_follow_only_exported_replies() {
    let mut state = state();
    let now = Instant::now();
    let run = keep_running(&mut state, key("s", "c1"), &["a", "b"], "c1", now);
    let foreign = keep_running(&mut state, key("s", "c2"), &["x"], "c2", now);
    state.mark_foreign(&key("s", "c2"));
    let other = keep_running(&mut state, key("t", "c1"), &["z"], "t1", now);
    state.keep_ended(
        key("s", "c0"),
        user("u"),
        frames(&["p"]),
        end(ReplyState::Done),
        now,
    );
    assert_eq!(state.on_delta(run, "c"), None, "not exported yet");

    let mut exports = state.export_session(&session("s"));
    exports.sort_by(|a, b| a.key.id.as_str().cmp(b.key.id.as_str()));
    let seen: Vec<_> = exports
        .iter()
        .map(|e| {
            (
                e.key.id.as_str(),
                e.deltas.len(),
                e.last_seq,
                e.end.is_some(),
            )
        })
        .collect();
    // The reply another instance streams is never exported from here.
    assert_eq!(seen, vec![("c0", 1, 1, true), ("c1", 3, 3, false)]);
    assert_eq!(exports[1].deltas[2], (3, "c".to_string()));
    assert!(state.export_session(&session("s")).is_empty(), "once");

    assert_eq!(state.on_delta(run, "d"), Some((key("s", "c1"), 4)));
    assert_eq!(state.on_delta(foreign, "y"), None);
    assert_eq!(state.on_delta(other, "y"), None);
    assert_eq!(state.exported_run(run), Some((key("s", "c1"), 4)));
    assert_eq!(state.exported_run(other), None);
}

#[test]
fn a_reply_held_on_another_instance_is_not_stopped_until_it_lets_go_and_a_grace_passes() {
    let mut state = state();
    let now = Instant::now();
    keep_running(&mut state, key("s", "c1"), &["a"], "c1", now);
    assert!(state.set_held_elsewhere(&key("s", "c1"), true, now));
    assert_eq!(state.stats().running, 0, "not waiting for a resume");
    assert!(state.sweep(now + GRACE * 3).stop.is_empty());
    // Resumed on a third instance before the second let go: held until both did.
    assert!(state.set_held_elsewhere(&key("s", "c1"), true, now + GRACE));
    assert!(state.set_held_elsewhere(&key("s", "c1"), false, now + GRACE * 2));
    assert!(state.sweep(now + GRACE * 3).stop.is_empty());

    let released = now + GRACE * 3;
    assert!(state.set_held_elsewhere(&key("s", "c1"), false, released));
    assert_eq!(state.stats().running, 1);
    assert!(state
        .sweep(released + GRACE - Duration::from_millis(1))
        .stop
        .is_empty());
    assert_eq!(state.sweep(released + GRACE).stop, vec!["c1"]);
    assert!(!state.set_held_elsewhere(&key("s", "c1"), true, released));
}

#[test]
fn a_waiter_for_an_unattached_session_is_answered_at_once_otherwise_when_it_lets_go() {
    let mut state = state();
    let now = Instant::now();
    assert_eq!(state.when_unattached(&session("s"), 7, now), Some(7));
    assert!(state.attach(session("s"), 1, None, now).is_none());
    assert_eq!(state.when_unattached(&session("s"), 8, now), None);
    let answered: Vec<u32> = state
        .detach(&session("s"), 1)
        .into_iter()
        .map(|(w, _)| w)
        .collect();
    assert_eq!(answered, vec![8]);
}

#[test]
fn past_the_instance_cap_ended_replies_go_oldest_first_then_running_ones_shrink() {
    let text = "x".repeat(1000);
    let deltas = [text.as_str(); 4];
    let one = ENTRY_OVERHEAD + frames(&deltas).bytes() + end(ReplyState::Done).frames[0].len();
    let mut state: State = ReplyKeeperState::new(limits(one * 3));
    let now = Instant::now();
    for id in ["c1", "c2", "c3"] {
        state.keep_ended(
            key("s", id),
            user("u"),
            frames(&deltas),
            end(ReplyState::Done),
            now,
        );
    }
    assert_eq!(state.stats().ended, 3);
    state.keep_ended(
        key("s", "c4"),
        user("u"),
        frames(&deltas),
        end(ReplyState::Done),
        now,
    );
    let ids: Vec<String> = state
        .summaries(&session("s"))
        .into_iter()
        .map(|s| s.id.to_string())
        .collect();
    assert_eq!(ids, ["c2", "c3", "c4"]);
    // Running replies alone over the cap: nothing is stopped, their oldest deltas go.
    let run = keep_running(&mut state, key("s", "r1"), &deltas, "r1", now);
    for _ in 0..16 {
        state.on_delta(run, &text);
    }
    let stats = state.stats();
    assert!(stats.bytes <= one * 3, "{stats:?}");
    assert_eq!(stats.running, 1);
    assert!(matches!(
        state.resume(&key("s", "r1"), 0),
        Resumed::NotFound
    ));
    match state.resume(&key("s", "r1"), 19) {
        Resumed::Running { frames, .. } => assert_eq!(frames.last_seq(), 20),
        other => panic!("{other:?}"),
    }
}

#[derive(Clone, Debug)]
enum Op {
    KeepRunning(u8),
    KeepEnded(u8),
    Delta(u8, u8),
    End(u8),
    Resume(u8, u8),
    StopSession,
    Sweep(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u8..4).prop_map(Op::KeepRunning),
        (0u8..4).prop_map(Op::KeepEnded),
        (0u8..8, 0u8..200).prop_map(|(r, n)| Op::Delta(r, n)),
        (0u8..8).prop_map(Op::End),
        (0u8..4, 0u8..6).prop_map(|(i, s)| Op::Resume(i, s)),
        Just(Op::StopSession),
        (0u8..40).prop_map(Op::Sweep),
    ]
}

impl<R, W> ReplyKeeperState<R, W> {
    fn recount(&self) -> usize {
        self.replies.values().map(Kept::cost).sum()
    }
}

proptest! {
    #[test]
    fn the_byte_count_always_matches_what_is_kept(ops in proptest::collection::vec(op(), 1..80)) {
        let mut state: State = ReplyKeeperState::new(limits(4_000));
        let start = Instant::now();
        let mut now = start;
        let mut runs = Vec::new();
        for op in ops {
            match op {
                Op::KeepRunning(i) => {
                    let run = state.next_run();
                    runs.push(run);
                    let k = key("s", &format!("c{i}"));
                    state.keep_running(k, user("u"), frames(&["ab", "cd"]), run, "h", now);
                }
                Op::KeepEnded(i) => {
                    let k = key("s", &format!("c{i}"));
                    state.keep_ended(k, user("u"), frames(&["ef"]), end(ReplyState::Done), now);
                }
                Op::Delta(r, n) => {
                    if let Some(run) = runs.get(r as usize) {
                        state.on_delta(*run, &"y".repeat(n as usize));
                    }
                }
                Op::End(r) => {
                    if let Some(run) = runs.get(r as usize) {
                        state.on_end(*run, end(ReplyState::Cancelled), now);
                    }
                }
                Op::Resume(i, s) => {
                    let _ = state.resume(&key("s", &format!("c{i}")), s as u64);
                }
                Op::StopSession => {
                    state.stop_session(&session("s"), now);
                }
                Op::Sweep(secs) => {
                    now += Duration::from_secs(secs as u64);
                    state.sweep(now);
                }
            }
            prop_assert_eq!(state.stats().bytes, state.recount());
            let listed = state.summaries(&session("s")).len();
            prop_assert_eq!(listed, state.stats().running + state.stats().ended);
        }
    }
}
