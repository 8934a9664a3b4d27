//! The shared session store's rules in process memory: several registries of one process (one
//! per simulated instance) share a [`LocalCluster`]. It keeps messages encoded as the Redis
//! store does and expires sessions by the wall clock, so the behaviour suite that runs against
//! both holds each to the same contract; registry actor tests use it to run takeovers, dead
//! instances and outages without Redis.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::rc::Rc;
use std::time::Duration;

use super::messages::{SessionStats, SessionSummary, StateFilter};
use super::store::{
    after_cursor, average_ms, decode_message, encode_message, wanted, Claim, Ending, HistoryWrite,
    Saved, SessionStore, SessionWrite, StoreFuture, StoredSession,
};
use crate::cluster::RedisUnavailable;
use crate::domain::{SessionId, UserId};

struct Entry {
    /// The instance that claimed or wrote it last; empty once an admin ended it.
    writer: String,
    /// The instance whose connection holds it; empty when detached.
    holder: String,
    user: String,
    started_at_ms: i64,
    ended_at_ms: Option<i64>,
    messages: i64,
    system: Option<String>,
    open_calls: Vec<String>,
    response_ms: Vec<u64>,
    history: VecDeque<String>,
    expires_at_ms: i64,
}

/// What every instance of one simulated cluster shares.
pub struct LocalCluster {
    sessions: HashMap<String, Entry>,
    /// Last heartbeat of each instance (ms since the epoch).
    heartbeats: HashMap<String, i64>,
    attached: HashMap<String, usize>,
    up: bool,
}

impl LocalCluster {
    pub fn new() -> Rc<RefCell<LocalCluster>> {
        Rc::new(RefCell::new(LocalCluster {
            sessions: HashMap::new(),
            heartbeats: HashMap::new(),
            attached: HashMap::new(),
            up: true,
        }))
    }

    /// Records `instance`'s heartbeat at `at_ms` (what the membership actor does in Redis).
    pub fn beat(&mut self, instance: &str, at_ms: i64) {
        self.heartbeats.insert(instance.to_string(), at_ms);
    }

    /// Simulates an outage (`false`) and the recovery (`true`).
    pub fn set_up(&mut self, up: bool) {
        self.up = up;
    }

    fn alive(&self, instance: &str, now_ms: i64, dead_after: Duration) -> bool {
        self.heartbeats
            .get(instance)
            .is_some_and(|seen| *seen >= now_ms - dead_after.as_millis() as i64)
    }

    fn live(&mut self, id: &str, now_ms: i64) -> Option<&mut Entry> {
        if self
            .sessions
            .get(id)
            .is_some_and(|e| e.expires_at_ms <= now_ms)
        {
            self.sessions.remove(id);
        }
        self.sessions.get_mut(id)
    }
}

pub struct LocalSessionStore {
    instance: String,
    ttl: Duration,
    dead_after: Duration,
    cluster: Rc<RefCell<LocalCluster>>,
}

impl LocalSessionStore {
    pub fn new(
        instance: &str,
        ttl: Duration,
        dead_after: Duration,
        cluster: Rc<RefCell<LocalCluster>>,
    ) -> LocalSessionStore {
        LocalSessionStore {
            instance: instance.to_string(),
            ttl,
            dead_after,
            cluster,
        }
    }

    fn run<T: 'static>(&self, f: impl FnOnce(&mut LocalCluster, i64) -> T) -> StoreFuture<T> {
        let mut cluster = self.cluster.borrow_mut();
        let result = if cluster.up {
            Ok(f(&mut cluster, now_ms()))
        } else {
            Err(RedisUnavailable("the local cluster store is down".into()))
        };
        Box::pin(std::future::ready(result))
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn summary(id: &str, e: &Entry, active: bool) -> SessionSummary {
    SessionSummary {
        id: id.to_string(),
        user: e.user.clone(),
        active,
        started_at_ms: e.started_at_ms,
        ended_at_ms: e.ended_at_ms,
        messages: e.messages,
        avg_response_ms: average_ms(&e.response_ms),
    }
}

fn stored(e: &Entry) -> Option<StoredSession> {
    Some(StoredSession {
        user: UserId::parse(&e.user).ok()?,
        started_at_ms: e.started_at_ms,
        messages: e.messages,
        system: match &e.system {
            Some(text) => Some(decode_message(text)?),
            None => None,
        },
        history: e
            .history
            .iter()
            .map(|m| decode_message(m))
            .collect::<Option<Vec<_>>>()?,
        open_calls: e.open_calls.clone(),
        response_ms: e.response_ms.clone(),
    })
}

impl SessionStore for LocalSessionStore {
    fn instance(&self) -> &str {
        &self.instance
    }

    fn is_up(&self) -> bool {
        self.cluster.borrow().up
    }

    fn claim(&self, id: SessionId, user: UserId, force: bool) -> StoreFuture<Claim> {
        let me = self.instance.clone();
        let (ttl, dead_after) = (self.ttl, self.dead_after);
        self.run(move |cluster, now| {
            let alive = |c: &LocalCluster, holder: &str| c.alive(holder, now, dead_after);
            let Some(entry) = cluster.live(id.as_str(), now) else {
                return Claim::Missing;
            };
            if entry.writer.is_empty() {
                return Claim::Ended;
            }
            if entry.user != user.as_str() {
                return Claim::Missing;
            }
            let holder = entry.holder.clone();
            if !force && !holder.is_empty() && holder != me && alive(cluster, &holder) {
                return Claim::Held { instance: holder };
            }
            let Some(entry) = cluster.live(id.as_str(), now) else {
                return Claim::Missing;
            };
            let previous_writer = std::mem::replace(&mut entry.writer, me.clone());
            entry.holder = me;
            entry.ended_at_ms = None;
            entry.expires_at_ms = now + ttl.as_millis() as i64;
            match stored(entry) {
                Some(session) => Claim::Claimed {
                    previous_writer,
                    session,
                },
                None => Claim::Missing,
            }
        })
    }

    fn save(&self, writes: Vec<SessionWrite>, attached_here: usize) -> StoreFuture<Vec<Saved>> {
        let me = self.instance.clone();
        let ttl = self.ttl;
        self.run(move |cluster, now| {
            cluster.attached.insert(me.clone(), attached_here);
            writes
                .into_iter()
                .map(|write| {
                    let full = matches!(write.history, HistoryWrite::Full(_));
                    let entry = match cluster.live(write.id.as_str(), now) {
                        None if !full => return Saved::Missing,
                        None => cluster
                            .sessions
                            .entry(write.id.to_string())
                            .or_insert_with(|| Entry {
                                writer: me.clone(),
                                holder: String::new(),
                                user: String::new(),
                                started_at_ms: 0,
                                ended_at_ms: None,
                                messages: 0,
                                system: None,
                                open_calls: Vec::new(),
                                response_ms: Vec::new(),
                                history: VecDeque::new(),
                                expires_at_ms: 0,
                            }),
                        Some(entry) if entry.writer != me => return Saved::Lost,
                        Some(entry) => entry,
                    };
                    match write.history {
                        HistoryWrite::Full(all) => {
                            entry.history = all.iter().map(encode_message).collect();
                        }
                        HistoryWrite::Append { drop_front, push } => {
                            entry.history.extend(push.iter().map(encode_message));
                            let drop = drop_front.min(entry.history.len());
                            entry.history.drain(..drop);
                        }
                    }
                    entry.holder = if write.attached {
                        me.clone()
                    } else {
                        String::new()
                    };
                    entry.user = write.user.to_string();
                    entry.started_at_ms = write.started_at_ms;
                    entry.ended_at_ms = write.ended_at_ms;
                    entry.messages = write.messages;
                    entry.system = write.system.as_ref().map(encode_message);
                    entry.open_calls = write.open_calls;
                    entry.response_ms = write.response_ms;
                    entry.expires_at_ms = now + ttl.as_millis() as i64;
                    Saved::Saved
                })
                .collect()
        })
    }

    fn end(&self, id: SessionId, force: bool) -> StoreFuture<Ending> {
        let me = self.instance.clone();
        let (ttl, dead_after) = (self.ttl, self.dead_after);
        self.run(move |cluster, now| {
            let Some(entry) = cluster.live(id.as_str(), now) else {
                return Ending::Missing;
            };
            if entry.writer.is_empty() {
                return Ending::Missing;
            }
            let holder = entry.holder.clone();
            if !force
                && !holder.is_empty()
                && holder != me
                && cluster.alive(&holder, now, dead_after)
            {
                return Ending::Held { instance: holder };
            }
            let Some(entry) = cluster.live(id.as_str(), now) else {
                return Ending::Missing;
            };
            let ended = summary(id.as_str(), entry, false);
            // A tombstone for the TTL: claims see it ended, its holder's writes see it lost.
            *entry = Entry {
                writer: String::new(),
                holder: String::new(),
                user: String::new(),
                started_at_ms: 0,
                ended_at_ms: None,
                messages: 0,
                system: None,
                open_calls: Vec::new(),
                response_ms: Vec::new(),
                history: VecDeque::new(),
                expires_at_ms: now + ttl.as_millis() as i64,
            };
            Ending::Ended(ended)
        })
    }

    fn list(
        &self,
        filter: StateFilter,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> StoreFuture<Vec<SessionSummary>> {
        let dead_after = self.dead_after;
        self.run(move |cluster, now| {
            let mut page: Vec<SessionSummary> = cluster
                .sessions
                .iter()
                .filter(|(_, e)| e.expires_at_ms > now && !e.writer.is_empty())
                .filter(|(id, e)| after_cursor(e.started_at_ms, id, after.as_ref()))
                .map(|(id, e)| {
                    let active = !e.holder.is_empty() && cluster.alive(&e.holder, now, dead_after);
                    summary(id, e, active)
                })
                .filter(|s| wanted(filter, s.active))
                .collect();
            page.sort_by(|a, b| (b.started_at_ms, &b.id).cmp(&(a.started_at_ms, &a.id)));
            page.truncate(limit);
            page
        })
    }

    fn stats(&self) -> StoreFuture<SessionStats> {
        let dead_after = self.dead_after;
        self.run(move |cluster, now| {
            let total = cluster
                .sessions
                .values()
                .filter(|e| e.expires_at_ms > now && !e.writer.is_empty())
                .count();
            let active: usize = cluster
                .attached
                .iter()
                .filter(|(instance, _)| cluster.alive(instance, now, dead_after))
                .map(|(_, n)| *n)
                .sum();
            let active = active.min(total);
            SessionStats {
                active,
                inactive: total - active,
                total,
            }
        })
    }

    fn prune(&self) -> StoreFuture<usize> {
        self.run(|cluster, now| {
            let before = cluster.sessions.len();
            cluster.sessions.retain(|_, e| e.expires_at_ms > now);
            before - cluster.sessions.len()
        })
    }
}
