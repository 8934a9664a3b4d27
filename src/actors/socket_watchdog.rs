//! Chat sockets watched from outside their actors. actix runs a WebSocket actor only while
//! its socket drains, so a client that stops reading freezes it: its heartbeat, backlog
//! cut-off and close requests all stop. The watchdog reads each socket's progress (reported
//! by the transport without the actor), cuts a socket that is frozen past the client timeout,
//! asked to close but still open, or closed but unable to flush its close frame, and ends the
//! session the socket held.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;

use super::session_registry::{DetachSession, SessionRegistry};
use crate::domain::{SessionId, UserId};

/// What the transport knows of a socket, read without its actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Since the HTTP layer last asked the socket for output (its actor ran then).
    pub idle: Duration,
    /// Since the socket's actor stopped, if it has.
    pub stopped_for: Option<Duration>,
    /// The connection is gone: nothing more to watch.
    pub finished: bool,
}

/// How long a socket told to close (admin, takeover) may take before it is cut: a live actor
/// closes at once.
pub const CLOSE_WITHIN: Duration = Duration::from_secs(1);

/// A socket as the watchdog sees it (the transport implements it).
pub trait WatchedSocket: Send + Sync {
    fn progress(&self) -> Progress;
    /// Shuts the socket down: the pending write fails and the connection, with its actor, goes.
    fn cut_off(&self);
}

/// A chat socket to watch from now on.
#[derive(Message)]
#[rtype(result = "()")]
pub struct WatchSocket {
    pub conn_id: u64,
    pub user: UserId,
    pub socket: Arc<dyn WatchedSocket>,
}

/// The socket's session is open (the watchdog ends it if it cuts the socket).
#[derive(Message)]
#[rtype(result = "()")]
pub struct SocketSession {
    pub conn_id: u64,
    pub session: SessionId,
}

/// Which sockets were told to close.
#[derive(Clone, Debug)]
pub enum CloseTarget {
    Session(SessionId),
    User(UserId),
    All,
}

/// Sockets matching `target` were told to close: any still open after `within` is cut.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ExpectClose {
    pub target: CloseTarget,
    pub within: Duration,
}

/// When the watchdog gives up on a socket.
#[derive(Clone, Copy, Debug)]
pub struct WatchdogLimits {
    /// A socket whose actor has not run for this long is frozen on a client that stopped
    /// reading (a live actor runs at least every heartbeat).
    pub frozen_after: Duration,
    /// A stopped actor's close frame gets this long to reach the client.
    pub close_flush: Duration,
}

/// Why a socket was cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutReason {
    Frozen,
    CloseNotFlushed,
    CloseIgnored,
}

struct Watched<S> {
    user: UserId,
    session: Option<SessionId>,
    socket: S,
    close_by: Option<Instant>,
}

/// The watched sockets and the rules for cutting them, tested directly.
pub struct WatchdogState<S> {
    sockets: HashMap<u64, Watched<S>>,
    /// Sockets by session, so that a resume (which expects the session's previous socket to
    /// close) finds them without scanning every socket. Ids of sockets gone are pruned when
    /// next looked up, and the whole index when it outgrows the sockets.
    by_session: HashMap<SessionId, Vec<u64>>,
    limits: WatchdogLimits,
}

/// A socket the state gave up on: cut it and end its session.
pub struct Cut<S> {
    pub conn_id: u64,
    pub session: Option<SessionId>,
    pub socket: S,
    pub reason: CutReason,
}

impl<S> WatchdogState<S> {
    pub fn new(limits: WatchdogLimits) -> Self {
        WatchdogState {
            sockets: HashMap::new(),
            by_session: HashMap::new(),
            limits,
        }
    }

    pub fn watch(&mut self, conn_id: u64, user: UserId, socket: S) {
        self.sockets.insert(
            conn_id,
            Watched {
                user,
                session: None,
                socket,
                close_by: None,
            },
        );
    }

    pub fn set_session(&mut self, conn_id: u64, session: SessionId) {
        if let Some(watched) = self.sockets.get_mut(&conn_id) {
            watched.session = Some(session.clone());
            self.by_session.entry(session).or_default().push(conn_id);
        }
        if self.by_session.len() > 2 * self.sockets.len() + 1024 {
            let sockets = &self.sockets;
            self.by_session.retain(|session, conns| {
                conns.retain(|c| {
                    sockets
                        .get(c)
                        .is_some_and(|w| w.session.as_ref() == Some(session))
                });
                !conns.is_empty()
            });
        }
    }

    pub fn len(&self) -> usize {
        self.sockets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sockets.is_empty()
    }
}

impl<S: std::ops::Deref<Target = dyn WatchedSocket>> WatchdogState<S> {
    /// Sets a close deadline on the matching sockets (an earlier one stays); returns those
    /// whose actor still runs (one that stopped is cut by the sweeps if its close does not go
    /// out). A session's sockets that are gone already are forgotten here, so a resume after
    /// a dropped connection — the usual case — matches none.
    pub fn expect_close(&mut self, target: &CloseTarget, by: Instant) -> Vec<u64> {
        let set = |watched: &mut Watched<S>| {
            watched.close_by = Some(watched.close_by.map_or(by, |old| old.min(by)));
        };
        let mut matched = Vec::new();
        if let CloseTarget::Session(id) = target {
            let Some(conns) = self.by_session.get_mut(id) else {
                return matched;
            };
            let sockets = &mut self.sockets;
            conns.retain(|conn_id| match sockets.get_mut(conn_id) {
                Some(watched) if watched.session.as_ref() == Some(id) => {
                    let progress = watched.socket.progress();
                    if progress.finished {
                        sockets.remove(conn_id);
                        return false;
                    }
                    set(watched);
                    if progress.stopped_for.is_none() {
                        matched.push(*conn_id);
                    }
                    true
                }
                _ => false,
            });
            if conns.is_empty() {
                self.by_session.remove(id);
            }
            return matched;
        }
        for (conn_id, watched) in self.sockets.iter_mut() {
            let matches = match target {
                CloseTarget::User(user) => &watched.user == user,
                _ => true,
            };
            if matches {
                set(watched);
                matched.push(*conn_id);
            }
        }
        matched
    }

    /// Forgets finished sockets and takes out the ones to cut.
    pub fn sweep(&mut self, now: Instant) -> Vec<Cut<S>> {
        let limits = self.limits;
        let mut verdicts = Vec::new();
        self.sockets.retain(|conn_id, watched| {
            let progress = watched.socket.progress();
            if progress.finished {
                return false;
            }
            let reason = if progress.idle > limits.frozen_after {
                Some(CutReason::Frozen)
            } else if progress.stopped_for.is_some_and(|d| d > limits.close_flush) {
                Some(CutReason::CloseNotFlushed)
            } else if watched.close_by.is_some_and(|by| now >= by) {
                Some(CutReason::CloseIgnored)
            } else {
                None
            };
            if let Some(reason) = reason {
                verdicts.push((*conn_id, reason));
            }
            true
        });
        // After a crowd leaves, the map's peak capacity is memory nobody uses.
        if self.sockets.capacity() > 1024 && self.sockets.len() < self.sockets.capacity() / 4 {
            self.sockets.shrink_to(self.sockets.capacity() / 2);
        }
        verdicts
            .into_iter()
            .filter_map(|(conn_id, reason)| {
                let watched = self.sockets.remove(&conn_id)?;
                Some(Cut {
                    conn_id,
                    session: watched.session,
                    socket: watched.socket,
                    reason,
                })
            })
            .collect()
    }
}

pub struct SocketWatchdog {
    state: WatchdogState<Arc<dyn WatchedSocket>>,
    registry: Addr<SessionRegistry>,
    every: Duration,
}

impl SocketWatchdog {
    /// Checks every `every`; `limits` say when a socket is given up.
    pub fn new(limits: WatchdogLimits, every: Duration, registry: Addr<SessionRegistry>) -> Self {
        SocketWatchdog {
            state: WatchdogState::new(limits),
            registry,
            every,
        }
    }

    fn sweep(&mut self) {
        for cut in self.state.sweep(Instant::now()) {
            log::warn!(
                "event=ws_cut_off conn_id={} session={} reason={:?}",
                cut.conn_id,
                cut.session.as_ref().map(SessionId::as_str).unwrap_or("-"),
                cut.reason
            );
            cut.socket.cut_off();
            // The actor detaches too once the connection drops it; this one does not wait on
            // that (a detach of a connection no longer attached is ignored).
            if let Some(id) = cut.session {
                self.registry.do_send(DetachSession {
                    id,
                    conn_id: cut.conn_id,
                });
            }
        }
    }
}

impl Actor for SocketWatchdog {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(65_536);
        ctx.run_interval(self.every, |act, _| act.sweep());
        log::info!("event=actor_started actor=socket_watchdog");
    }
}

impl Handler<WatchSocket> for SocketWatchdog {
    type Result = ();

    fn handle(&mut self, msg: WatchSocket, _: &mut Context<Self>) {
        self.state.watch(msg.conn_id, msg.user, msg.socket);
    }
}

impl Handler<SocketSession> for SocketWatchdog {
    type Result = ();

    fn handle(&mut self, msg: SocketSession, _: &mut Context<Self>) {
        self.state.set_session(msg.conn_id, msg.session);
    }
}

impl Handler<ExpectClose> for SocketWatchdog {
    type Result = ();

    fn handle(&mut self, msg: ExpectClose, ctx: &mut Context<Self>) {
        let matched = self
            .state
            .expect_close(&msg.target, Instant::now() + msg.within);
        // Checked right at the deadline, not at the next tick; nothing to check when no socket
        // matched (a resume whose previous socket is gone already, the usual case).
        if !matched.is_empty() {
            ctx.run_later(msg.within, |act, _| act.sweep());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Mutex;

    #[derive(Default)]
    struct FakeSocket {
        progress: Mutex<Option<Progress>>,
        cut: AtomicBool,
    }

    impl FakeSocket {
        fn set(&self, idle_ms: u64, stopped_ms: Option<u64>, finished: bool) {
            *self.progress.lock().expect("lock") = Some(Progress {
                idle: Duration::from_millis(idle_ms),
                stopped_for: stopped_ms.map(Duration::from_millis),
                finished,
            });
        }
    }

    impl WatchedSocket for FakeSocket {
        fn progress(&self) -> Progress {
            self.progress.lock().expect("lock").unwrap_or(Progress {
                idle: Duration::ZERO,
                stopped_for: None,
                finished: false,
            })
        }
        fn cut_off(&self) {
            self.cut.store(true, Ordering::SeqCst);
        }
    }

    fn limits() -> WatchdogLimits {
        WatchdogLimits {
            frozen_after: Duration::from_secs(2),
            close_flush: Duration::from_secs(1),
        }
    }

    fn user(name: &str) -> UserId {
        UserId::parse(name).expect("user")
    }

    fn state_with(n: u64) -> (WatchdogState<Arc<dyn WatchedSocket>>, Vec<Arc<FakeSocket>>) {
        let mut state = WatchdogState::new(limits());
        let sockets: Vec<Arc<FakeSocket>> = (0..n).map(|_| Arc::default()).collect();
        for (i, socket) in sockets.iter().enumerate() {
            let name = if i % 2 == 0 { "even" } else { "odd" };
            state.watch(
                i as u64,
                user(name),
                socket.clone() as Arc<dyn WatchedSocket>,
            );
        }
        (state, sockets)
    }

    fn cut_ids(cuts: &[Cut<Arc<dyn WatchedSocket>>]) -> Vec<u64> {
        let mut ids: Vec<u64> = cuts.iter().map(|c| c.conn_id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_frozen_socket_is_cut_with_its_session_and_a_live_one_is_kept() {
        let (mut state, sockets) = state_with(2);
        let session = SessionId::new_random();
        state.set_session(0, session.clone());
        sockets[0].set(2_001, None, false);
        sockets[1].set(1_999, None, false);
        let cuts = state.sweep(Instant::now());
        assert_eq!(cut_ids(&cuts), vec![0]);
        assert_eq!(cuts[0].reason, CutReason::Frozen);
        assert_eq!(cuts[0].session, Some(session));
        assert_eq!(state.len(), 1, "a cut socket is no longer watched");
    }

    #[test]
    fn finished_sockets_are_forgotten_and_never_cut() {
        let (mut state, sockets) = state_with(1);
        sockets[0].set(60_000, Some(60_000), true);
        assert!(state.sweep(Instant::now()).is_empty());
        assert!(state.is_empty());
    }

    #[test]
    fn a_stopped_socket_that_cannot_flush_its_close_is_cut() {
        let (mut state, sockets) = state_with(2);
        sockets[0].set(0, Some(1_001), false);
        sockets[1].set(0, Some(500), false);
        let cuts = state.sweep(Instant::now());
        assert_eq!(cut_ids(&cuts), vec![0]);
        assert_eq!(cuts[0].reason, CutReason::CloseNotFlushed);
    }

    #[test]
    fn a_resume_expects_nothing_of_a_sessions_socket_that_is_gone_or_closing() {
        let (mut state, sockets) = state_with(3);
        let session = SessionId::new_random();
        for conn_id in 0..3 {
            state.set_session(conn_id, session.clone());
        }
        sockets[0].set(0, Some(10), true);
        sockets[1].set(0, Some(10), false);
        let now = Instant::now();
        let matched = state.expect_close(&CloseTarget::Session(session), now);
        assert_eq!(matched, vec![2], "only the one still running");
        assert_eq!(state.len(), 2, "the finished one is forgotten");
    }

    #[test]
    fn close_deadlines_reach_the_named_session_user_or_everyone() {
        let (mut state, _sockets) = state_with(5);
        let session = SessionId::new_random();
        state.set_session(4, session.clone());
        let now = Instant::now();
        state.expect_close(
            &CloseTarget::User(user("odd")),
            now + Duration::from_secs(1),
        );
        let matched = state.expect_close(
            &CloseTarget::Session(session.clone()),
            now + Duration::from_secs(1),
        );
        assert_eq!(matched, vec![4]);
        let other = SessionId::new_random();
        assert!(state
            .expect_close(&CloseTarget::Session(other), now)
            .is_empty());
        assert!(state.sweep(now).is_empty(), "not before the deadline");
        let cuts = state.sweep(now + Duration::from_secs(1));
        assert_eq!(cut_ids(&cuts), vec![1, 3, 4]);
        assert!(cuts.iter().all(|c| c.reason == CutReason::CloseIgnored));
        state.expect_close(&CloseTarget::All, now + Duration::from_secs(3));
        // A later deadline does not postpone an earlier one.
        state.expect_close(&CloseTarget::All, now + Duration::from_secs(9));
        assert_eq!(
            cut_ids(&state.sweep(now + Duration::from_secs(3))),
            vec![0, 2]
        );
        // The session's socket is gone: a resume expects nothing of it any more.
        assert!(state
            .expect_close(&CloseTarget::Session(session), now)
            .is_empty());
    }
}
