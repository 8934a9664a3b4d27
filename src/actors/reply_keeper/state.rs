//! The kept replies and every rule about them, with no actix types: the running handle `R`
//! (what stops a reply, or hands it to a socket) and the waiting answer `W` are the actor's.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use actix::clock::Instant;
use serde::Serialize;

use super::frames::{ReplyEnd, ReplyFrames, ReplyState};
use crate::domain::{ChatId, SessionId, UserId};

/// What a kept reply costs besides its frames (keys, map slot, bookkeeping), so that many
/// short replies count for what they hold.
const ENTRY_OVERHEAD: usize = 256;

/// The connection id of a waiter that is not a socket (another instance asking).
const NOT_A_SOCKET: u64 = u64::MAX;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ReplyKey {
    pub session: SessionId,
    pub id: ChatId,
}

#[derive(Clone, Copy, Debug)]
pub struct KeeperLimits {
    /// How long a reply goes on without a socket, and how long an ended one stays resumable.
    pub grace: Duration,
    /// Cap of everything kept on this instance.
    pub kept_max_bytes: usize,
    /// How long a resumed session's listing waits for the socket it took over to hand over
    /// its replies.
    pub attach_wait: Duration,
}

/// One kept reply as the resumed session's `session` frame lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ReplySummary {
    pub id: ChatId,
    pub state: ReplyState,
    pub last_seq: u64,
}

/// What a resume finds.
#[derive(Debug)]
pub enum Resumed<R> {
    /// Unknown, no longer kept, or missing a delta after the asked `seq`.
    NotFound,
    /// It ended: the deltas after the asked `seq`, then its last frames. It stays kept, for
    /// another resume.
    Ended {
        deltas: Vec<(u64, String)>,
        end: ReplyEnd,
    },
    /// It runs: the caller takes it over, frames (whose deltas after the asked `seq` it sends
    /// first) and handle; the keeper forgets it.
    Running {
        frames: ReplyFrames,
        user: UserId,
        running: R,
    },
}

/// What a sweep found due.
pub struct Swept<R, W> {
    /// Replies nobody resumed within the grace: to stop.
    pub stop: Vec<R>,
    /// Listings that waited long enough.
    pub answers: Vec<(W, Vec<ReplySummary>)>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct KeeperStats {
    /// Replies running without a socket, waiting to be resumed.
    pub running: usize,
    /// Ended replies still resumable.
    pub ended: usize,
    pub bytes: usize,
}

enum Phase<R> {
    Running { handle: R },
    Ended(ReplyEnd),
}

struct Kept<R> {
    user: UserId,
    frames: ReplyFrames,
    phase: Phase<R>,
    /// Changes whenever the entry is (re)placed or ends, so deadlines and events of an
    /// earlier incarnation are recognised as stale.
    generation: u64,
    /// Cluster mode: copied to Redis, where its later frames follow it.
    exported: bool,
    /// Streamed by another instance (this one follows it through Redis): never exported here.
    foreign: bool,
    /// Sockets on other instances that resumed it (one may still hold it while the client
    /// already resumed it on a third): not stopped while any does.
    held_elsewhere: u32,
    /// A running reply is stopped at the first sweep from then on.
    stop_after: Instant,
}

/// A kept reply as the cluster mirror copies it.
#[derive(Debug)]
pub struct Export {
    pub key: ReplyKey,
    pub deltas: Vec<(u64, String)>,
    pub last_seq: u64,
    pub end: Option<ReplyEnd>,
}

impl<R> Kept<R> {
    fn cost(&self) -> usize {
        let end = match &self.phase {
            Phase::Running { .. } => 0,
            Phase::Ended(end) => end.frames.iter().map(String::len).sum(),
        };
        ENTRY_OVERHEAD + self.frames.bytes() + end
    }

    fn summary(&self, id: &ChatId) -> ReplySummary {
        ReplySummary {
            id: id.clone(),
            state: match &self.phase {
                Phase::Running { .. } => ReplyState::Running,
                Phase::Ended(end) => end.state,
            },
            last_seq: self.frames.last_seq(),
        }
    }
}

struct Waiter<W> {
    session: SessionId,
    conn_id: u64,
    answer: W,
    until: Instant,
}

pub struct ReplyKeeperState<R, W> {
    limits: KeeperLimits,
    replies: HashMap<ReplyKey, Kept<R>>,
    by_session: HashMap<SessionId, Vec<ChatId>>,
    /// Running replies by generation: their events name them by it.
    runs: HashMap<u64, ReplyKey>,
    /// (deadline, key, generation), in deadline order since the grace is one constant.
    stop_at: VecDeque<(Instant, ReplyKey, u64)>,
    forget_at: VecDeque<(Instant, ReplyKey, u64)>,
    bytes: usize,
    next_generation: u64,
    /// Sockets holding each session, by connection id.
    attached: HashMap<SessionId, Vec<u64>>,
    waiting: Vec<Waiter<W>>,
    /// Sessions ended and users disabled by an admin, for one grace: a reply handed over by
    /// their socket after the stop (the messages race) is stopped, not kept.
    stopped_sessions: HashMap<SessionId, Instant>,
    stopped_users: HashMap<UserId, Instant>,
}

impl<R, W> ReplyKeeperState<R, W> {
    pub fn new(limits: KeeperLimits) -> Self {
        ReplyKeeperState {
            limits,
            replies: HashMap::new(),
            by_session: HashMap::new(),
            runs: HashMap::new(),
            stop_at: VecDeque::new(),
            forget_at: VecDeque::new(),
            bytes: 0,
            next_generation: 1,
            attached: HashMap::new(),
            waiting: Vec::new(),
            stopped_sessions: HashMap::new(),
            stopped_users: HashMap::new(),
        }
    }

    pub fn limits(&self) -> &KeeperLimits {
        &self.limits
    }

    /// A fresh generation: the caller tags the events of a reply it is about to keep running.
    pub fn next_run(&mut self) -> u64 {
        let generation = self.next_generation;
        self.next_generation += 1;
        generation
    }

    /// Socket `conn_id` holds `session`. With `listing`, it resumed the session and wants the
    /// kept replies: answered now, or — while another socket still holds the session (the one
    /// it took the session from, about to hand its replies over) — once that one let go, or
    /// after `attach_wait`.
    pub fn attach(
        &mut self,
        session: SessionId,
        conn_id: u64,
        listing: Option<W>,
        now: Instant,
    ) -> Option<(W, Vec<ReplySummary>)> {
        let conns = self.attached.entry(session.clone()).or_default();
        if !conns.contains(&conn_id) {
            conns.push(conn_id);
        }
        let others = conns.iter().any(|c| *c != conn_id);
        let answer = listing?;
        if others {
            self.waiting.push(Waiter {
                session,
                conn_id,
                answer,
                until: now + self.limits.attach_wait,
            });
            return None;
        }
        Some((answer, self.summaries(&session)))
    }

    /// Socket `conn_id` let go of `session` (after handing over its replies); listings that
    /// waited for it are answered.
    pub fn detach(&mut self, session: &SessionId, conn_id: u64) -> Vec<(W, Vec<ReplySummary>)> {
        if let Some(conns) = self.attached.get_mut(session) {
            conns.retain(|c| *c != conn_id);
            if conns.is_empty() {
                self.attached.remove(session);
            }
        }
        let conns = self.attached.get(session).cloned().unwrap_or_default();
        let (ready, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| &w.session == session && conns.iter().all(|c| *c == w.conn_id));
        self.waiting = waiting;
        ready
            .into_iter()
            .map(|w| {
                let list = self.summaries(&w.session);
                (w.answer, list)
            })
            .collect()
    }

    /// The session's kept replies.
    pub fn summaries(&self, session: &SessionId) -> Vec<ReplySummary> {
        let Some(ids) = self.by_session.get(session) else {
            return Vec::new();
        };
        ids.iter()
            .filter_map(|id| {
                let key = ReplyKey {
                    session: session.clone(),
                    id: id.clone(),
                };
                self.replies.get(&key).map(|kept| kept.summary(id))
            })
            .collect()
    }

    /// A running reply whose socket went: it goes on under `handle` (its events tagged with
    /// `run`, from [`next_run`](Self::next_run)) until resumed, or stopped at the end of the
    /// grace. Returns handles to stop now: a reply this one replaces, or this one if an admin
    /// stopped its session or user.
    pub fn keep_running(
        &mut self,
        key: ReplyKey,
        user: UserId,
        frames: ReplyFrames,
        run: u64,
        handle: R,
        now: Instant,
    ) -> Vec<R> {
        if self.is_stopped(&key.session, &user) {
            return vec![handle];
        }
        self.stop_at
            .push_back((now + self.limits.grace, key.clone(), run));
        self.runs.insert(run, key.clone());
        let kept = Kept {
            user,
            frames,
            phase: Phase::Running { handle },
            generation: run,
            exported: false,
            foreign: false,
            held_elsewhere: 0,
            stop_after: now + self.limits.grace,
        };
        let displaced = self.insert(key, kept).into_iter().collect();
        self.enforce_cap();
        displaced
    }

    /// A reply that ended while its socket held it: kept for the grace. Returns the handle of
    /// a running reply it replaces (same id), to stop.
    pub fn keep_ended(
        &mut self,
        key: ReplyKey,
        user: UserId,
        frames: ReplyFrames,
        end: ReplyEnd,
        now: Instant,
    ) -> Vec<R> {
        if self.is_stopped(&key.session, &user) {
            return Vec::new();
        }
        let generation = self.next_run();
        self.forget_at
            .push_back((now + self.limits.grace, key.clone(), generation));
        let kept = Kept {
            user,
            frames,
            phase: Phase::Ended(end),
            generation,
            exported: false,
            foreign: false,
            held_elsewhere: 0,
            stop_after: now,
        };
        let displaced = self.insert(key, kept).into_iter().collect();
        self.enforce_cap();
        displaced
    }

    /// A delta of running reply `run`. Returns its key and `seq` when the reply is exported
    /// (the delta must follow it to the mirror).
    pub fn on_delta(&mut self, run: u64, content: &str) -> Option<(ReplyKey, u64)> {
        let key = self.runs.get(&run)?;
        let mut mirrored = None;
        if let Some(kept) = self.replies.get_mut(key) {
            let before = kept.frames.bytes();
            let seq = kept.frames.push(content);
            self.bytes = self.bytes + kept.frames.bytes() - before;
            if kept.exported {
                mirrored = Some((key.clone(), seq));
            }
        }
        self.enforce_cap();
        mirrored
    }

    /// Running reply `run`'s key and last `seq`, when it is exported (its end must follow).
    pub fn exported_run(&self, run: u64) -> Option<(ReplyKey, u64)> {
        let key = self.runs.get(&run)?;
        let kept = self.replies.get(key).filter(|kept| kept.exported)?;
        Some((key.clone(), kept.frames.last_seq()))
    }

    /// Marks the running reply `key` as streamed by another instance.
    pub fn mark_foreign(&mut self, key: &ReplyKey) {
        if let Some(kept) = self.replies.get_mut(key) {
            kept.foreign = true;
        }
    }

    /// The session's kept replies not yet exported (nor streamed elsewhere), now marked
    /// exported: the mirror copies them, and their later frames follow.
    pub fn export_session(&mut self, session: &SessionId) -> Vec<Export> {
        let Some(ids) = self.by_session.get(session) else {
            return Vec::new();
        };
        let mut exports = Vec::new();
        for id in ids {
            let key = ReplyKey {
                session: session.clone(),
                id: id.clone(),
            };
            let Some(kept) = self.replies.get_mut(&key) else {
                continue;
            };
            if kept.exported || kept.foreign {
                continue;
            }
            kept.exported = true;
            // The deltas still kept: a resume needing older ones is refused there as here.
            let deltas = kept
                .frames
                .kept()
                .map(|(seq, text)| (seq, text.to_string()))
                .collect();
            exports.push(Export {
                key,
                deltas,
                last_seq: kept.frames.last_seq(),
                end: match &kept.phase {
                    Phase::Ended(end) => Some(end.clone()),
                    Phase::Running { .. } => None,
                },
            });
        }
        exports
    }

    /// A socket on another instance took running reply `key` (`held`), or let it go again:
    /// once none holds it, it has the grace to be resumed. False when it is not running here.
    pub fn set_held_elsewhere(&mut self, key: &ReplyKey, held: bool, now: Instant) -> bool {
        let grace = self.limits.grace;
        let Some(kept) = self.replies.get_mut(key) else {
            return false;
        };
        if !matches!(kept.phase, Phase::Running { .. }) {
            return false;
        }
        if held {
            kept.held_elsewhere += 1;
        } else {
            kept.held_elsewhere = kept.held_elsewhere.saturating_sub(1);
        }
        if kept.held_elsewhere == 0 {
            kept.stop_after = now + grace;
            self.stop_at
                .push_back((now + grace, key.clone(), kept.generation));
        }
        true
    }

    /// The handle of running reply `key`.
    pub fn running_mut(&mut self, key: &ReplyKey) -> Option<&mut R> {
        match &mut self.replies.get_mut(key)?.phase {
            Phase::Running { handle } => Some(handle),
            Phase::Ended(_) => None,
        }
    }

    /// Waits for no socket here to hold `session` (one about to hand its replies over): the
    /// answer comes back now when none does, otherwise with the listing once it let go (or
    /// after `attach_wait`).
    pub fn when_unattached(&mut self, session: &SessionId, answer: W, now: Instant) -> Option<W> {
        if !self.attached.contains_key(session) {
            return Some(answer);
        }
        self.waiting.push(Waiter {
            session: session.clone(),
            conn_id: NOT_A_SOCKET,
            answer,
            until: now + self.limits.attach_wait,
        });
        None
    }

    /// Running reply `run` ended: its frames stay for the grace from now. Returns its handle
    /// (its stream is spent) to let go of.
    pub fn on_end(&mut self, run: u64, end: ReplyEnd, now: Instant) -> Option<R> {
        let key = self.runs.remove(&run)?;
        let kept = self.replies.get_mut(&key)?;
        let generation = self.next_generation;
        self.next_generation += 1;
        let added: usize = end.frames.iter().map(String::len).sum();
        let previous = std::mem::replace(&mut kept.phase, Phase::Ended(end));
        kept.generation = generation;
        self.bytes += added;
        self.forget_at
            .push_back((now + self.limits.grace, key, generation));
        self.enforce_cap();
        match previous {
            Phase::Running { handle } => Some(handle),
            Phase::Ended(_) => None,
        }
    }

    /// A socket of the session asks for reply `key` from after `after_seq`.
    pub fn resume(&mut self, key: &ReplyKey, after_seq: u64) -> Resumed<R> {
        let Some(kept) = self.replies.get(key) else {
            return Resumed::NotFound;
        };
        if let Phase::Ended(end) = &kept.phase {
            return match kept.frames.after(after_seq) {
                Some(deltas) => Resumed::Ended {
                    deltas: deltas.map(|(seq, text)| (seq, text.to_string())).collect(),
                    end: end.clone(),
                },
                None => Resumed::NotFound,
            };
        }
        if kept.frames.after(after_seq).is_none() {
            return Resumed::NotFound;
        }
        match self.remove(key) {
            Some(Kept {
                user,
                frames,
                phase: Phase::Running { handle },
                ..
            }) => Resumed::Running {
                frames,
                user,
                running: handle,
            },
            _ => Resumed::NotFound,
        }
    }

    /// Stops every reply of `session` (an admin ended it); returns their handles.
    pub fn stop_session(&mut self, session: &SessionId, now: Instant) -> Vec<R> {
        self.stopped_sessions
            .insert(session.clone(), now + self.limits.grace);
        let ids = self.by_session.get(session).cloned().unwrap_or_default();
        ids.into_iter()
            .filter_map(|id| {
                self.remove(&ReplyKey {
                    session: session.clone(),
                    id,
                })
            })
            .filter_map(Kept::into_handle)
            .collect()
    }

    /// Stops every reply of `user` (an admin disabled them); returns their handles.
    pub fn stop_user(&mut self, user: &UserId, now: Instant) -> Vec<R> {
        self.stopped_users
            .insert(user.clone(), now + self.limits.grace);
        let keys: Vec<ReplyKey> = self
            .replies
            .iter()
            .filter(|(_, kept)| &kept.user == user)
            .map(|(key, _)| key.clone())
            .collect();
        keys.iter()
            .filter_map(|key| self.remove(key))
            .filter_map(Kept::into_handle)
            .collect()
    }

    /// Forgets what is past its time: running replies past the grace (returned, to stop),
    /// ended ones, listings that waited long enough, admin stops.
    pub fn sweep(&mut self, now: Instant) -> Swept<R, W> {
        let mut stop = Vec::new();
        while let Some((at, key, generation)) = self.stop_at.front() {
            if *at > now {
                break;
            }
            if self.is_current(key, *generation, true) && self.is_due(key, now) {
                let key = key.clone();
                if let Some(handle) = self.remove(&key).and_then(Kept::into_handle) {
                    stop.push(handle);
                }
            }
            self.stop_at.pop_front();
        }
        while let Some((at, key, generation)) = self.forget_at.front() {
            if *at > now {
                break;
            }
            if self.is_current(key, *generation, false) {
                let key = key.clone();
                self.remove(&key);
            }
            self.forget_at.pop_front();
        }
        let (due, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.waiting)
            .into_iter()
            .partition(|w| w.until <= now);
        self.waiting = waiting;
        let answers = due
            .into_iter()
            .map(|w| {
                let list = self.summaries(&w.session);
                (w.answer, list)
            })
            .collect();
        self.stopped_sessions.retain(|_, until| *until > now);
        self.stopped_users.retain(|_, until| *until > now);
        if self.replies.is_empty() && self.replies.capacity() > 1024 {
            self.replies.shrink_to_fit();
            self.by_session.shrink_to_fit();
            self.runs.shrink_to_fit();
            self.stop_at.shrink_to_fit();
            self.forget_at.shrink_to_fit();
        }
        Swept { stop, answers }
    }

    pub fn stats(&self) -> KeeperStats {
        let held_elsewhere = self
            .runs
            .values()
            .filter(|key| {
                self.replies
                    .get(key)
                    .is_some_and(|kept| kept.held_elsewhere > 0)
            })
            .count();
        KeeperStats {
            running: self.runs.len() - held_elsewhere,
            ended: self.replies.len() - self.runs.len(),
            bytes: self.bytes,
        }
    }

    /// Not held by another instance's socket, and past its deadline.
    fn is_due(&self, key: &ReplyKey, now: Instant) -> bool {
        self.replies
            .get(key)
            .is_some_and(|kept| kept.held_elsewhere == 0 && kept.stop_after <= now)
    }

    fn is_stopped(&self, session: &SessionId, user: &UserId) -> bool {
        self.stopped_sessions.contains_key(session) || self.stopped_users.contains_key(user)
    }

    fn is_current(&self, key: &ReplyKey, generation: u64, running: bool) -> bool {
        self.replies.get(key).is_some_and(|kept| {
            kept.generation == generation && matches!(kept.phase, Phase::Running { .. }) == running
        })
    }

    fn insert(&mut self, key: ReplyKey, kept: Kept<R>) -> Option<R> {
        let displaced = self.remove(&key).and_then(Kept::into_handle);
        self.bytes += kept.cost();
        self.by_session
            .entry(key.session.clone())
            .or_default()
            .push(key.id.clone());
        self.replies.insert(key, kept);
        displaced
    }

    fn remove(&mut self, key: &ReplyKey) -> Option<Kept<R>> {
        let kept = self.replies.remove(key)?;
        self.bytes -= kept.cost();
        if let Some(ids) = self.by_session.get_mut(&key.session) {
            ids.retain(|id| id != &key.id);
            if ids.is_empty() {
                self.by_session.remove(&key.session);
            }
        }
        if matches!(kept.phase, Phase::Running { .. }) {
            self.runs.remove(&kept.generation);
        }
        Some(kept)
    }

    /// Keeps the total under `kept_max_bytes`: ended replies go, oldest first; if running
    /// ones alone are over, the biggest lose their oldest deltas (they go on; a resume that
    /// needs those deltas is refused). Nothing is stopped for room.
    fn enforce_cap(&mut self) {
        while self.bytes > self.limits.kept_max_bytes {
            let Some((_, key, generation)) = self.forget_at.pop_front() else {
                break;
            };
            if self.is_current(&key, generation, false) {
                self.remove(&key);
            }
        }
        while self.bytes > self.limits.kept_max_bytes {
            let biggest = self
                .runs
                .values()
                .filter_map(|key| self.replies.get(key).map(|kept| (kept.frames.bytes(), key)))
                .max_by_key(|(bytes, _)| *bytes);
            let Some((bytes, key)) = biggest.filter(|(bytes, _)| *bytes > 0) else {
                break;
            };
            let key = key.clone();
            let over = self.bytes - self.limits.kept_max_bytes;
            if let Some(kept) = self.replies.get_mut(&key) {
                kept.frames
                    .trim_to(bytes.saturating_sub(over.max(bytes / 2)));
                self.bytes = self.bytes - bytes + kept.frames.bytes();
            }
        }
    }
}

impl<R> Kept<R> {
    fn into_handle(self) -> Option<R> {
        match self.phase {
            Phase::Running { handle } => Some(handle),
            Phase::Ended(_) => None,
        }
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
