//! The shared session store in Redis. Per session a hash (`sess:<id>`: writer, holder, user,
//! times, counts, system prompt, open tool calls, response times) and a list of its bounded
//! history (`sess:<id>:h`), both expiring the session TTL after their last write; two sorted
//! sets index them by start (listing) and by expiry (pruning the first). Each instance keeps
//! the count of sessions it holds (`sessions:attached:<instance>`) for the cluster's stats.
//! Every decision that reads and writes is one Lua script (`src/cluster/scripts/session_*.lua`).

use std::collections::HashSet;
use std::sync::LazyLock;
use std::time::Duration;

use redis::{Script, ScriptInvocation, Value};

use super::messages::{SessionStats, SessionSummary, StateFilter};
use super::store::{
    after_cursor, average_ms, decode_message, encode_message, wanted, Claim, Ending, HistoryWrite,
    Saved, SessionStore, SessionWrite, StoreFuture, StoredSession,
};
use crate::cluster::{KeySpace, RedisLink, RedisUnavailable};
use crate::domain::{SessionId, UserId};

static SAVE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../cluster/scripts/session_save.lua")));
static CLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../cluster/scripts/session_claim.lua")));
static END: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../cluster/scripts/session_end.lua")));
static PRUNE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../cluster/scripts/session_prune.lua")));
static STATS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../cluster/scripts/session_stats.lua")));

/// Index entries one prune looks at: bounded, so a backlog never blocks Redis for long.
const PRUNE_BATCH: usize = 5_000;
/// Sessions a listing reads per round trip while it looks for a page.
const LIST_BATCH: usize = 200;
/// How long an instance's count of held sessions outlives its last write. Only live
/// instances are counted, so this just keeps the keys of instances gone for good from piling
/// up.
const ATTACHED_COUNT_TTL: Duration = Duration::from_secs(24 * 3600);

pub struct RedisSessionStore {
    link: RedisLink,
    ttl: Duration,
    dead_after: Duration,
}

impl RedisSessionStore {
    /// `dead_after`: how old an instance's last heartbeat may be before its sessions count
    /// as detached.
    pub fn new(link: RedisLink, ttl: Duration, dead_after: Duration) -> RedisSessionStore {
        RedisSessionStore {
            link,
            ttl,
            dead_after,
        }
    }
}

struct Keys(KeySpace);

impl Keys {
    fn session(&self, id: &str) -> String {
        self.0.key(&format!("sess:{id}"))
    }
    fn history(&self, id: &str) -> String {
        self.0.key(&format!("sess:{id}:h"))
    }
    fn session_prefix(&self) -> String {
        self.0.key("sess:")
    }
    fn by_start(&self) -> String {
        self.0.key("sessions:by_start")
    }
    fn by_expiry(&self) -> String {
        self.0.key("sessions:by_expiry")
    }
    fn attached_prefix(&self) -> String {
        self.0.key("sessions:attached:")
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(n) => Some(n.to_string()),
        _ => None,
    }
}

fn items(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) | Value::Set(items) => items,
        _ => Vec::new(),
    }
}

fn number(value: Option<&Value>) -> Option<i64> {
    text(value?)?.parse().ok()
}

fn json_or_default<T: serde::de::DeserializeOwned + Default>(value: Option<&Value>) -> T {
    value
        .and_then(text)
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

fn optional_ms(value: Option<&Value>) -> Option<i64> {
    number(value)
}

/// An answer that is not what the script returns: a bug or a foreign key, never a reason to
/// take the link down.
fn unexpected(what: &str) -> RedisUnavailable {
    RedisUnavailable(format!("unexpected answer from {what}"))
}

/// Runs one script (loading it first if Redis does not have it).
async fn invoke(
    link: &RedisLink,
    invocation: ScriptInvocation<'static>,
) -> Result<Value, RedisUnavailable> {
    link.run(|mut conn| async move { invocation.invoke_async(&mut conn).await })
        .await
}

fn save_invocation(
    keys: &Keys,
    me: &str,
    ttl_ms: u64,
    now: i64,
    write: &SessionWrite,
) -> ScriptInvocation<'static> {
    let id = write.id.as_str();
    let (full, drop_front, push) = match &write.history {
        HistoryWrite::Full(all) => (true, 0, all),
        HistoryWrite::Append { drop_front, push } => (false, *drop_front, push),
    };
    let mut invocation = SAVE.prepare_invoke();
    invocation
        .key(keys.session(id))
        .key(keys.history(id))
        .key(keys.by_start())
        .key(keys.by_expiry())
        .arg(me)
        .arg(id)
        .arg(ttl_ms)
        .arg(now)
        .arg(if full { "1" } else { "0" })
        .arg(drop_front)
        .arg(write.user.as_str())
        .arg(write.started_at_ms)
        .arg(
            write
                .ended_at_ms
                .map(|ms| ms.to_string())
                .unwrap_or_default(),
        )
        .arg(write.messages)
        .arg(if write.attached { "1" } else { "0" })
        .arg(
            write
                .system
                .as_ref()
                .map(encode_message)
                .unwrap_or_default(),
        )
        .arg(serde_json::to_string(&write.open_calls).unwrap_or_default())
        .arg(serde_json::to_string(&write.response_ms).unwrap_or_default());
    for message in push {
        invocation.arg(encode_message(message));
    }
    invocation
}

fn is_noscript(value: &Value) -> bool {
    matches!(value, Value::ServerError(err)
        if err.kind() == Some(redis::ServerErrorKind::NoScript))
}

/// `user` is the claimant's: the script claims only a session of that user.
fn decode_claim(value: Value, user: UserId) -> Result<Claim, RedisUnavailable> {
    let mut parts = items(value).into_iter();
    let status = parts.next().as_ref().and_then(text).unwrap_or_default();
    match status.as_str() {
        "missing" => Ok(Claim::Missing),
        "ended" => Ok(Claim::Ended),
        "held" => Ok(Claim::Held {
            instance: parts
                .next()
                .as_ref()
                .and_then(text)
                .ok_or_else(|| unexpected("session_claim"))?,
        }),
        "claimed" => {
            let previous_writer = parts.next().as_ref().and_then(text).unwrap_or_default();
            let fields = parts.next().map(items).unwrap_or_default();
            let history = parts.next().map(items).unwrap_or_default();
            Ok(
                stored_session(user, &fields, &history).map_or(Claim::Missing, |session| {
                    Claim::Claimed {
                        previous_writer,
                        session,
                    }
                }),
            )
        }
        _ => Err(unexpected("session_claim")),
    }
}

/// `fields`: started_at, messages, system, open_calls, response_ms (what the claim returns);
/// `None` when any of it is not what chatgate writes.
fn stored_session(user: UserId, fields: &[Value], history: &[Value]) -> Option<StoredSession> {
    let system = fields.get(2).and_then(text).filter(|s| !s.is_empty());
    Some(StoredSession {
        user,
        started_at_ms: number(fields.first())?,
        messages: number(fields.get(1))?,
        system: match system {
            Some(text) => Some(decode_message(&text)?),
            None => None,
        },
        history: history
            .iter()
            .map(|m| text(m).and_then(|t| decode_message(&t)))
            .collect::<Option<Vec<_>>>()?,
        open_calls: json_or_default(fields.get(3)),
        response_ms: json_or_default(fields.get(4)),
    })
}

impl SessionStore for RedisSessionStore {
    fn instance(&self) -> &str {
        self.link.instance()
    }

    fn is_up(&self) -> bool {
        self.link.is_up()
    }

    fn claim(&self, id: SessionId, user: UserId, force: bool) -> StoreFuture<Claim> {
        let link = self.link.clone();
        let keys = Keys(link.keys().clone());
        let (ttl, dead_after) = (self.ttl, self.dead_after);
        Box::pin(async move {
            let mut invocation = CLAIM.prepare_invoke();
            invocation
                .key(keys.session(id.as_str()))
                .key(keys.history(id.as_str()))
                .key(keys.0.instances())
                .key(keys.by_expiry())
                .arg(&**link.instance())
                .arg(user.as_str())
                .arg(now_ms())
                .arg(dead_after.as_millis() as u64)
                .arg(if force { "1" } else { "0" })
                .arg(ttl.as_millis() as u64)
                .arg(id.as_str());
            decode_claim(invoke(&link, invocation).await?, user)
        })
    }

    fn save(&self, writes: Vec<SessionWrite>, attached_here: usize) -> StoreFuture<Vec<Saved>> {
        let link = self.link.clone();
        let keys = Keys(link.keys().clone());
        let ttl_ms = self.ttl.as_millis() as u64;
        Box::pin(async move {
            let me = link.instance().to_string();
            let now = now_ms();
            let invocations: Vec<ScriptInvocation<'static>> = writes
                .iter()
                .map(|write| save_invocation(&keys, &me, ttl_ms, now, write))
                .collect();
            let mut outcomes: Vec<Option<Saved>> = vec![None; writes.len()];
            let mut pending: Vec<usize> = (0..writes.len()).collect();
            // Twice at most: the second time only for writes Redis refused because it did not
            // have the script yet (it restarted), which therefore changed nothing.
            for _ in 0..2 {
                let mut pipe = redis::pipe();
                pipe.ignore_errors();
                pipe.cmd("SET")
                    .arg(keys.attached_prefix() + &me)
                    .arg(attached_here)
                    .arg("PX")
                    .arg(ATTACHED_COUNT_TTL.as_millis() as u64)
                    .ignore();
                for &i in &pending {
                    pipe.invoke_script(&invocations[i]);
                }
                let answers: Vec<Value> = link
                    .run(|mut conn| async move { pipe.query_async(&mut conn).await })
                    .await?;
                let mut unloaded = Vec::new();
                for (&i, answer) in pending.iter().zip(answers) {
                    if is_noscript(&answer) {
                        unloaded.push(i);
                        continue;
                    }
                    outcomes[i] = Some(match text(&answer).as_deref() {
                        Some("saved") => Saved::Saved,
                        Some("missing") => Saved::Missing,
                        Some("lost") => Saved::Lost,
                        _ => {
                            log::warn!("event=session_save_refused answer={answer:?}");
                            return Err(unexpected("session_save"));
                        }
                    });
                }
                if unloaded.is_empty() {
                    break;
                }
                link.run(|mut conn| async move { SAVE.load_async(&mut conn).await })
                    .await?;
                pending = unloaded;
            }
            outcomes
                .into_iter()
                .map(|o| o.ok_or_else(|| unexpected("session_save")))
                .collect()
        })
    }

    fn end(&self, id: SessionId, force: bool) -> StoreFuture<Ending> {
        let link = self.link.clone();
        let keys = Keys(link.keys().clone());
        let (ttl, dead_after) = (self.ttl, self.dead_after);
        Box::pin(async move {
            let mut invocation = END.prepare_invoke();
            invocation
                .key(keys.session(id.as_str()))
                .key(keys.history(id.as_str()))
                .key(keys.0.instances())
                .key(keys.by_start())
                .key(keys.by_expiry())
                .arg(&**link.instance())
                .arg(now_ms())
                .arg(dead_after.as_millis() as u64)
                .arg(if force { "1" } else { "0" })
                .arg(ttl.as_millis() as u64)
                .arg(id.as_str());
            let answer = items(invoke(&link, invocation).await?);
            match answer.first().and_then(text).as_deref() {
                Some("missing") => Ok(Ending::Missing),
                Some("held") => Ok(Ending::Held {
                    instance: answer
                        .get(1)
                        .and_then(text)
                        .ok_or_else(|| unexpected("session_end"))?,
                }),
                Some("ended") => {
                    let response_ms: Vec<u64> = json_or_default(answer.get(5));
                    Ok(Ending::Ended(SessionSummary {
                        id: id.to_string(),
                        user: answer.get(1).and_then(text).unwrap_or_default(),
                        active: false,
                        started_at_ms: number(answer.get(2)).unwrap_or_default(),
                        ended_at_ms: optional_ms(answer.get(3)),
                        messages: number(answer.get(4)).unwrap_or_default(),
                        avg_response_ms: average_ms(&response_ms),
                    }))
                }
                _ => Err(unexpected("session_end")),
            }
        })
    }

    fn list(
        &self,
        filter: StateFilter,
        after: Option<(i64, String)>,
        limit: usize,
    ) -> StoreFuture<Vec<SessionSummary>> {
        let link = self.link.clone();
        let keys = Keys(link.keys().clone());
        let dead_after = self.dead_after;
        Box::pin(async move {
            let now = now_ms();
            let live: Vec<String> = link
                .run(|mut conn| {
                    let key = keys.0.instances();
                    async move {
                        redis::cmd("ZRANGEBYSCORE")
                            .arg(key)
                            .arg(now - dead_after.as_millis() as i64)
                            .arg("+inf")
                            .query_async(&mut conn)
                            .await
                    }
                })
                .await?;
            let live: HashSet<String> = live.into_iter().collect();
            let max = after
                .as_ref()
                .map_or_else(|| "+inf".to_string(), |(started, _)| started.to_string());
            let mut page = Vec::new();
            let mut offset = 0;
            // Batches newest first until the page is full; sessions that expired meanwhile
            // (no hash any more) are skipped.
            while page.len() < limit {
                let cmd = redis::cmd("ZREVRANGEBYSCORE")
                    .arg(keys.by_start())
                    .arg(&max)
                    .arg("-inf")
                    .arg("WITHSCORES")
                    .arg("LIMIT")
                    .arg(offset)
                    .arg(LIST_BATCH)
                    .clone();
                let batch: Vec<(String, f64)> = link
                    .run(|mut conn| async move { cmd.query_async(&mut conn).await })
                    .await?;
                offset += batch.len();
                let candidates: Vec<(String, i64)> = batch
                    .iter()
                    .map(|(id, score)| (id.clone(), *score as i64))
                    .filter(|(id, started)| after_cursor(*started, id, after.as_ref()))
                    .collect();
                if !candidates.is_empty() {
                    let mut pipe = redis::pipe();
                    for (id, _) in &candidates {
                        pipe.cmd("HMGET").arg(keys.session(id)).arg(&[
                            "writer",
                            "holder",
                            "user",
                            "started_at",
                            "ended_at",
                            "messages",
                            "response_ms",
                        ]);
                    }
                    let rows: Vec<Vec<Value>> = link
                        .run(|mut conn| async move { pipe.query_async(&mut conn).await })
                        .await?;
                    for ((id, _), row) in candidates.iter().zip(rows) {
                        let writer = row.first().and_then(text).unwrap_or_default();
                        let Some(user) = row.get(2).and_then(text) else {
                            continue;
                        };
                        if writer.is_empty() {
                            continue;
                        }
                        let holder = row.get(1).and_then(text).unwrap_or_default();
                        let active = !holder.is_empty() && live.contains(&holder);
                        if !wanted(filter, active) {
                            continue;
                        }
                        let response_ms: Vec<u64> = json_or_default(row.get(6));
                        page.push(SessionSummary {
                            id: id.clone(),
                            user,
                            active,
                            started_at_ms: number(row.get(3)).unwrap_or_default(),
                            ended_at_ms: optional_ms(row.get(4)),
                            messages: number(row.get(5)).unwrap_or_default(),
                            avg_response_ms: average_ms(&response_ms),
                        });
                        if page.len() == limit {
                            break;
                        }
                    }
                }
                if batch.len() < LIST_BATCH {
                    break;
                }
            }
            Ok(page)
        })
    }

    fn stats(&self) -> StoreFuture<SessionStats> {
        let link = self.link.clone();
        let keys = Keys(link.keys().clone());
        let dead_after = self.dead_after;
        let prune = self.prune();
        Box::pin(async move {
            // Expired sessions leave the count first.
            prune.await?;
            let mut invocation = STATS.prepare_invoke();
            invocation
                .key(keys.by_start())
                .key(keys.0.instances())
                .arg(now_ms())
                .arg(dead_after.as_millis() as u64)
                .arg(keys.attached_prefix());
            let answer = items(invoke(&link, invocation).await?);
            let total = number(answer.first()).ok_or_else(|| unexpected("session_stats"))?;
            let active = number(answer.get(1)).ok_or_else(|| unexpected("session_stats"))?;
            let (total, active) = (total.max(0) as usize, active.max(0) as usize);
            Ok(SessionStats {
                active,
                inactive: total.saturating_sub(active),
                total,
            })
        })
    }

    fn prune(&self) -> StoreFuture<usize> {
        let link = self.link.clone();
        let keys = Keys(link.keys().clone());
        Box::pin(async move {
            let mut invocation = PRUNE.prepare_invoke();
            invocation
                .key(keys.by_start())
                .key(keys.by_expiry())
                .arg(now_ms())
                .arg(PRUNE_BATCH)
                .arg(keys.session_prefix());
            let dropped = invoke(&link, invocation).await?;
            Ok(number(Some(&dropped)).unwrap_or_default().max(0) as usize)
        })
    }
}
