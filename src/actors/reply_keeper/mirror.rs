//! Cluster mode: kept replies copied to Redis, so a session resumed on another instance gets
//! the rest of its replies. The instance that streams a reply stays its owner; only its frames
//! travel, as one Redis stream per reply:
//!
//! - `0-1` `owner`: the header, written when the reply is exported;
//! - `1-<seq>` `d`: each delta, under its own `seq`, so "the deltas after `seq` n" is
//!   `XRANGE (1-n +` and a gap (trimmed entries) shows as a first `seq` above n + 1;
//! - `2-0` `state` `last_seq` `frames`: the end, its frames exactly as the owner sent them.
//!
//! A hash per session names the exported replies and their owner. Nothing is written per chat:
//! a reply is exported when it leaves its socket (the socket dropped) or when another instance
//! takes the session over, and from then on its deltas follow in batches (one write in flight,
//! what comes meanwhile goes with the next). Keys expire a grace after the last write.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use futures_util::Stream;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamId, StreamRangeReply, StreamReadReply};
use redis::AsyncConnectionConfig;

use super::frames::{ReplyEnd, ReplyEvent, ReplyState};
use super::state::{Export, ReplyKey, ReplySummary};
use crate::cluster::{RedisLink, RedisUnavailable};
use crate::domain::{ChatId, SessionId};

/// Entries kept per reply stream (approximately: Redis trims whole nodes). A resume on another
/// instance needing an older delta gets `not_found`, like one past the per-reply byte cap here.
pub const STREAM_MAX_ENTRIES: usize = 8_192;

/// How long a running reply's keys outlive their last write: its owner refreshes them with
/// every batch, so only a dead owner's linger.
const RUNNING_MARGIN: Duration = Duration::from_secs(60);

/// How long a follower's blocking read waits before it checks that the owner still lives.
const FOLLOW_BLOCK: Duration = Duration::from_secs(1);

/// Failed reads in a row after which a follower gives the reply up.
const FOLLOW_MAX_FAILURES: u32 = 3;

/// The end frames of a reply whose owner vanished (built by the transport, which owns the wire
/// format).
pub type GoneEnd = Arc<dyn Fn(&ChatId) -> ReplyEnd + Send + Sync>;

/// One write for the mirror.
pub enum MirrorOp {
    Export(Export),
    Delta {
        key: ReplyKey,
        seq: u64,
        text: String,
    },
    End {
        key: ReplyKey,
        last_seq: u64,
        end: ReplyEnd,
    },
}

/// The Redis side of the mirror: cheap to clone.
#[derive(Clone)]
pub struct ReplyMirror {
    link: RedisLink,
    grace: Duration,
    gone: GoneEnd,
}

/// A reply as another instance finds it in Redis.
pub struct Fetched {
    pub owner: String,
    /// Deltas kept, oldest first.
    pub deltas: Vec<(u64, String)>,
    /// `seq` of the first delta the stream still holds (last_seq + 1 when it holds none).
    pub first_seq: u64,
    pub end: Option<ReplyEnd>,
    /// Where a follower reads on from.
    pub last_entry: String,
}

impl ReplyMirror {
    pub fn new(link: RedisLink, grace: Duration, gone: GoneEnd) -> ReplyMirror {
        ReplyMirror { link, grace, gone }
    }

    pub fn instance(&self) -> &str {
        self.link.instance()
    }

    pub fn is_up(&self) -> bool {
        self.link.is_up()
    }

    fn stream_key(&self, key: &ReplyKey) -> String {
        // Length-prefixed: no session id can make two replies share a key.
        let session = key.session.as_str();
        self.link
            .keys()
            .key(&format!("reply:{}:{session}:{}", session.len(), key.id))
    }

    fn index_key(&self, session: &str) -> String {
        self.link.keys().key(&format!("replies:{session}"))
    }

    /// Writes `ops` in one round trip, in order.
    pub async fn write(&self, ops: Vec<MirrorOp>) -> Result<(), RedisUnavailable> {
        let running_ttl = (self.grace + RUNNING_MARGIN).as_millis() as u64;
        let ended_ttl = self.grace.as_millis().max(1) as u64;
        let mut pipe = redis::pipe();
        let mut touched: HashMap<String, (String, u64)> = HashMap::new();
        for op in ops {
            match op {
                MirrorOp::Export(export) => {
                    let stream = self.stream_key(&export.key);
                    let index = self.index_key(export.key.session.as_str());
                    pipe.cmd("DEL").arg(&stream).ignore();
                    pipe.cmd("XADD")
                        .arg(&stream)
                        .arg("0-1")
                        .arg("owner")
                        .arg(self.instance())
                        .ignore();
                    for (seq, text) in &export.deltas {
                        self.add_delta(&mut pipe, &stream, *seq, text);
                    }
                    let ttl = match &export.end {
                        Some(end) => {
                            self.add_end(&mut pipe, &stream, export.last_seq, end);
                            ended_ttl
                        }
                        None => running_ttl,
                    };
                    pipe.cmd("HSET")
                        .arg(&index)
                        .arg(export.key.id.as_str())
                        .arg(self.instance())
                        .ignore();
                    pipe.cmd("PEXPIRE").arg(&index).arg(running_ttl).ignore();
                    touched.insert(stream, (index, ttl));
                }
                MirrorOp::Delta { key, seq, text } => {
                    let stream = self.stream_key(&key);
                    self.add_delta(&mut pipe, &stream, seq, &text);
                    let index = self.index_key(key.session.as_str());
                    touched.entry(stream).or_insert((index, running_ttl));
                }
                MirrorOp::End { key, last_seq, end } => {
                    let stream = self.stream_key(&key);
                    self.add_end(&mut pipe, &stream, last_seq, &end);
                    let index = self.index_key(key.session.as_str());
                    touched.insert(stream, (index, ended_ttl));
                }
            }
        }
        for (stream, (index, ttl)) in touched {
            pipe.cmd("PEXPIRE").arg(stream).arg(ttl).ignore();
            // The index outlives its replies a little; a name whose stream expired is skipped.
            pipe.cmd("PEXPIRE").arg(index).arg(running_ttl).ignore();
        }
        self.link
            .run(|mut conn| async move { pipe.query_async::<()>(&mut conn).await })
            .await
    }

    fn add_delta(&self, pipe: &mut redis::Pipeline, stream: &str, seq: u64, text: &str) {
        pipe.cmd("XADD")
            .arg(stream)
            .arg("MAXLEN")
            .arg("~")
            .arg(STREAM_MAX_ENTRIES)
            .arg(format!("1-{seq}"))
            .arg("d")
            .arg(text)
            .ignore();
    }

    fn add_end(&self, pipe: &mut redis::Pipeline, stream: &str, last_seq: u64, end: &ReplyEnd) {
        // Serializing a list of strings cannot fail.
        let frames = serde_json::to_string(&end.frames).unwrap_or_default();
        pipe.cmd("XADD")
            .arg(stream)
            .arg("2-0")
            .arg("state")
            .arg(end.state.as_str())
            .arg("last_seq")
            .arg(last_seq)
            .arg("frames")
            .arg(frames)
            .ignore();
    }

    /// The replies of `session` other instances exported (owner, summary), leaving out
    /// `except` (the ones this instance keeps itself) and replies this instance owns.
    pub async fn summaries(
        &self,
        session: &SessionId,
        except: &HashSet<ChatId>,
    ) -> Result<Vec<(String, ReplySummary)>, RedisUnavailable> {
        let index = self.index_key(session.as_str());
        let owners: HashMap<String, String> = self
            .link
            .run(|mut conn| async move {
                redis::cmd("HGETALL")
                    .arg(index)
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let mut wanted = Vec::new();
        for (id, owner) in owners {
            let Ok(id) = ChatId::parse(&id) else { continue };
            if owner != self.instance() && !except.contains(&id) {
                wanted.push((id, owner));
            }
        }
        if wanted.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for (id, _) in &wanted {
            let key = ReplyKey {
                session: session.clone(),
                id: id.clone(),
            };
            pipe.cmd("XREVRANGE")
                .arg(self.stream_key(&key))
                .arg("+")
                .arg("-")
                .arg("COUNT")
                .arg(1);
        }
        let lasts: Vec<StreamRangeReply> = self
            .link
            .run(|mut conn| async move { pipe.query_async(&mut conn).await })
            .await?;
        let mut found: Vec<(String, ReplySummary)> = wanted
            .into_iter()
            .zip(lasts)
            .filter_map(|((id, owner), last)| {
                let entry = last.ids.into_iter().next()?;
                let (state, last_seq) = match parse_entry(&entry)? {
                    Entry::Header => (ReplyState::Running, 0),
                    Entry::Delta(seq, _) => (ReplyState::Running, seq),
                    Entry::End(last_seq, end) => (end.state, last_seq),
                };
                Some((
                    owner,
                    ReplySummary {
                        id,
                        state,
                        last_seq,
                    },
                ))
            })
            .collect();
        found.sort_by(|a, b| a.1.id.as_str().cmp(b.1.id.as_str()));
        Ok(found)
    }

    /// Reply `key` as exported by another instance, or `None` when no other instance exported
    /// it (or its stream expired).
    pub async fn fetch(&self, key: &ReplyKey) -> Result<Option<Fetched>, RedisUnavailable> {
        let index = self.index_key(key.session.as_str());
        let stream = self.stream_key(key);
        let id = key.id.as_str().to_string();
        let (owner, entries): (Option<String>, StreamRangeReply) = self
            .link
            .run(|mut conn| async move {
                redis::pipe()
                    .cmd("HGET")
                    .arg(index)
                    .arg(id)
                    .cmd("XRANGE")
                    .arg(stream)
                    .arg("-")
                    .arg("+")
                    .query_async(&mut conn)
                    .await
            })
            .await?;
        let Some(owner) = owner.filter(|owner| owner != self.instance()) else {
            return Ok(None);
        };
        let Some(last_entry) = entries.ids.last().map(|entry| entry.id.clone()) else {
            return Ok(None);
        };
        let mut deltas = Vec::new();
        let mut end = None;
        let mut last_seq = 0;
        for entry in &entries.ids {
            match parse_entry(entry) {
                Some(Entry::Delta(seq, text)) => {
                    last_seq = seq;
                    deltas.push((seq, text));
                }
                Some(Entry::End(seq, ended)) => {
                    last_seq = seq;
                    end = Some(ended);
                }
                Some(Entry::Header) | None => {}
            }
        }
        let first_seq = deltas.first().map_or(last_seq + 1, |(seq, _)| *seq);
        Ok(Some(Fetched {
            owner,
            deltas,
            first_seq,
            end,
            last_entry,
        }))
    }

    /// The events of a reply another instance streams, from after `last_entry` until its end.
    /// It reads on a connection of its own (a blocking read would hold up every other request
    /// on the shared one). An owner that stops answering (dead for the membership) or a
    /// stream that vanished ends the reply with the transport's `unavailable` error.
    pub fn follow(&self, key: &ReplyKey, owner: String, last_entry: String) -> FollowStream {
        let follower = Follower {
            client: self.link.client().clone(),
            conn: None,
            stream: self.stream_key(key),
            instances: self.link.keys().instances(),
            owner,
            last_entry,
            pending: VecDeque::new(),
            failures: 0,
            gone: (self.gone)(&key.id),
            done: false,
        };
        Box::pin(futures_util::stream::unfold(
            follower,
            |mut follower| async move {
                loop {
                    if let Some(event) = follower.pending.pop_front() {
                        return Some((event, follower));
                    }
                    if follower.done {
                        return None;
                    }
                    follower.read().await;
                }
            },
        ))
    }
}

pub type FollowStream = std::pin::Pin<Box<dyn Stream<Item = ReplyEvent> + Send>>;

enum Entry {
    Header,
    Delta(u64, String),
    End(u64, ReplyEnd),
}

fn parse_entry(entry: &StreamId) -> Option<Entry> {
    let (major, minor) = entry.id.split_once('-')?;
    match major {
        "0" => Some(Entry::Header),
        "1" => Some(Entry::Delta(minor.parse().ok()?, entry.get("d")?)),
        "2" => {
            let state: String = entry.get("state")?;
            let last_seq: u64 = entry.get("last_seq")?;
            let frames: String = entry.get("frames")?;
            Some(Entry::End(
                last_seq,
                ReplyEnd {
                    state: ReplyState::parse(&state)?,
                    frames: serde_json::from_str(&frames).ok()?,
                },
            ))
        }
        _ => None,
    }
}

struct Follower {
    client: redis::Client,
    conn: Option<MultiplexedConnection>,
    stream: String,
    instances: String,
    owner: String,
    last_entry: String,
    pending: VecDeque<ReplyEvent>,
    failures: u32,
    gone: ReplyEnd,
    done: bool,
}

impl Follower {
    /// One blocking read; what it brings lands in `pending`.
    async fn read(&mut self) {
        match self.read_once().await {
            Ok(()) => self.failures = 0,
            Err(err) => {
                self.conn = None;
                self.failures += 1;
                log::debug!(
                    "event=reply_follow_failed stream={} failures={} error={err}",
                    self.stream,
                    self.failures
                );
                if self.failures >= FOLLOW_MAX_FAILURES {
                    self.give_up("redis unreachable");
                } else {
                    actix::clock::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn read_once(&mut self) -> redis::RedisResult<()> {
        let mut conn = match self.conn.take() {
            Some(conn) => conn,
            None => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(Duration::from_millis(500)))
                    .set_response_timeout(Some(FOLLOW_BLOCK * 3));
                self.client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?
            }
        };
        let read: Option<StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1024)
            .arg("BLOCK")
            .arg(FOLLOW_BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(&self.last_entry)
            .query_async(&mut conn)
            .await?;
        let entries: Vec<StreamId> = read
            .map(|reply| reply.keys.into_iter().flat_map(|key| key.ids).collect())
            .unwrap_or_default();
        if entries.is_empty() {
            self.check_owner(&mut conn).await?;
        }
        for entry in &entries {
            self.last_entry = entry.id.clone();
            match parse_entry(entry) {
                Some(Entry::Delta(_, text)) => self.pending.push_back(ReplyEvent::Delta(text)),
                Some(Entry::End(_, end)) => {
                    self.pending.push_back(ReplyEvent::End(end));
                    self.done = true;
                    break;
                }
                // The owner exported the reply again (its socket there dropped once more): the
                // stream starts over with the same numbering; read on after what was read.
                Some(Entry::Header) | None => {}
            }
        }
        self.conn = Some(conn);
        Ok(())
    }

    /// Nothing came within the block: the reply goes on only while its owner lives and its
    /// stream exists.
    async fn check_owner(&mut self, conn: &mut MultiplexedConnection) -> redis::RedisResult<()> {
        let (seen_ms, exists): (Option<f64>, bool) = redis::pipe()
            .cmd("ZSCORE")
            .arg(&self.instances)
            .arg(&self.owner)
            .cmd("EXISTS")
            .arg(&self.stream)
            .query_async(conn)
            .await?;
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as f64)
            .unwrap_or(0.0);
        let dead_after = crate::actors::membership::DEAD_AFTER.as_millis() as f64;
        if !exists {
            self.give_up("its frames expired");
        } else if seen_ms.is_none_or(|seen| now_ms - seen > dead_after) {
            self.give_up("the instance streaming it is gone");
        }
        Ok(())
    }

    fn give_up(&mut self, why: &str) {
        log::warn!(
            "event=reply_follow_lost stream={} owner={} reason=\"{why}\"",
            self.stream,
            self.owner
        );
        self.pending.push_back(ReplyEvent::End(self.gone.clone()));
        self.done = true;
    }
}
