//! The bookkeeping of quota leases, without I/O: per (user, day) a block of units reserved in
//! the database, chats admitted from it, and the writes that reserve, settle and release.
//!
//! Per block, `granted` (the database's word), `used` (units chats kept) and `released`
//! (units handed back) are running totals for the day; the block's free units are
//! `granted - used - released`, never negative. Chats are admitted only from free units, so
//! the units this instance lets through never exceed what the database reserved for it.

use std::collections::HashMap;

use crate::db::queries::quota::{LeaseState, LeaseWrite};
use crate::domain::{QuotaDay, QuotaStanding, QuotaTake, UserId};
use crate::error::AppError;

/// How leases are sized and kept. All times are milliseconds on the caller's clock.
#[derive(Clone, Debug)]
pub struct LeaseSettings {
    /// A block unused this long hands its free units back.
    pub idle_after_ms: u64,
    /// The largest block one reservation asks for.
    pub max_block: i64,
    /// Chats waiting for a reservation, all users together; more are refused at once.
    pub max_waiters: usize,
    /// After a failed write, how long until the database is tried again. Meanwhile chats
    /// that need a reservation get `unavailable` at once.
    pub probe_after_ms: u64,
}

/// What `admit` decided.
#[derive(Debug)]
pub enum Admission {
    /// A free unit of the block is the chat's; the user's standing with it counted.
    Taken(QuotaStanding),
    /// No free unit: register a waiter with [`LeaseBook::wait`]; it is answered when the
    /// next reservation is written.
    NeedsReservation,
    /// No free unit and no way to get one now; nobody passes the quota unchecked.
    Refused(AppError),
}

#[derive(Debug)]
struct Block<W> {
    granted: i64,
    used: i64,
    released: i64,
    /// `used`/`released` as last acknowledged by the database.
    acked_used: i64,
    acked_released: i64,
    /// The last write for this block may have committed without our hearing of it: it is
    /// written again (with a newer sequence number) to learn the outcome.
    unsure: bool,
    waiters: Vec<W>,
    /// A reservation for this block is wanted in the next write.
    top_up: bool,
    /// The last reservation got nothing: no top-ups ahead of need until one succeeds.
    exhausted: bool,
    /// Part of the write in flight.
    in_flight: bool,
    /// Units asked for by the write in flight.
    asked: i64,
    last_admit_ms: u64,
    admits_since_settle: u32,
    /// Admissions per settle interval, smoothed.
    rate: f64,
    /// The user's standing at the last write: limit, units used or held by anyone, and
    /// units settled by anyone (this instance's `acked_used` among them).
    limit: i64,
    taken_by_all: i64,
    settled_by_all: i64,
    disabled: bool,
}

impl<W> Block<W> {
    fn new(now_ms: u64) -> Block<W> {
        Block {
            granted: 0,
            used: 0,
            released: 0,
            acked_used: 0,
            acked_released: 0,
            unsure: false,
            waiters: Vec::new(),
            top_up: false,
            exhausted: false,
            in_flight: false,
            asked: 0,
            last_admit_ms: now_ms,
            admits_since_settle: 0,
            rate: 0.0,
            limit: i64::MAX,
            taken_by_all: 0,
            settled_by_all: 0,
            disabled: false,
        }
    }

    fn free(&self) -> i64 {
        self.granted - self.used - self.released
    }

    /// The user's units for the day as this instance knows them: settled by every instance
    /// at the last write, plus what this instance's chats kept (or gave back) since. No
    /// database statement: it is what a chat's receipt says.
    fn standing(&self) -> QuotaStanding {
        QuotaStanding {
            used: self.settled_by_all + self.used - self.acked_used,
            limit: self.limit,
        }
    }

    fn dirty(&self) -> bool {
        self.unsure || self.used != self.acked_used || self.released != self.acked_released
    }

    /// Chats per settle interval to plan for. The smoothed rate only learns at a settle
    /// tick, so a user who just arrived or sped up would otherwise get blocks of one, a
    /// database round trip per chat, until the next tick; this interval's count so far is
    /// a floor that grows the block with every reservation (1, 2, 6, ...).
    fn demand(&self) -> f64 {
        self.rate.max(f64::from(self.admits_since_settle))
    }

    /// Units a reservation asks for: enough for about two settle intervals at the user's
    /// rate, but near the limit only a small share of what is left, so other instances
    /// serving the same user are not starved; at least one per waiting chat.
    fn block_size(&self, max_block: i64) -> i64 {
        let by_rate = (self.demand() * 2.0).ceil() as i64;
        let left = self.limit.saturating_sub(self.taken_by_all);
        let ahead = by_rate.min(left / NEAR_LIMIT_SHARE).max(1);
        // Chats already waiting are demand, not a forecast: all of them are asked for.
        ahead.max(self.waiters.len() as i64).min(max_block)
    }
}

/// Near the limit a reservation takes at most this fraction (1/n) of the units left.
const NEAR_LIMIT_SHARE: i64 = 4;

/// One write to the database: every block's reservation and settlement, one transaction.
#[derive(Debug)]
pub struct Batch {
    pub writes: Vec<LeaseWrite>,
    keys: Vec<(UserId, QuotaDay)>,
}

impl Batch {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }
}

pub struct LeaseBook<W> {
    settings: LeaseSettings,
    blocks: HashMap<(UserId, QuotaDay), Block<W>>,
    waiting: usize,
    /// Some block wants a reservation: kept so the per-chat check is not a scan.
    top_up_wanted: bool,
    seq: i64,
    writing: bool,
    /// Set after a failed write: when the database may be tried again.
    down_until_ms: Option<u64>,
    shutting_down: bool,
}

impl<W> LeaseBook<W> {
    pub fn new(settings: LeaseSettings) -> LeaseBook<W> {
        LeaseBook {
            settings,
            blocks: HashMap::new(),
            waiting: 0,
            top_up_wanted: false,
            seq: 0,
            writing: false,
            down_until_ms: None,
            shutting_down: false,
        }
    }

    /// Admits a chat from the block of (user, day) when it has a free unit. Taking the last
    /// free units asks for a top-up in the background.
    pub fn admit(&mut self, user: &UserId, day: QuotaDay, now_ms: u64) -> Admission {
        let known_down = self.known_down();
        let key = (user.clone(), day);
        let block = self.blocks.entry(key).or_insert_with(|| Block::new(now_ms));
        block.last_admit_ms = now_ms;
        if block.free() > 0 && !block.disabled {
            block.used += 1;
            block.admits_since_settle += 1;
            // About one settle interval of chats left: the top-up lands before they run out.
            let low_water = block.demand().ceil() as i64;
            if block.free() <= low_water && !block.exhausted {
                block.top_up = true;
                self.top_up_wanted = true;
            }
            return Admission::Taken(block.standing());
        }
        if self.shutting_down {
            return Admission::Refused(AppError::Unavailable(
                "the server is shutting down; reconnect shortly".into(),
            ));
        }
        if known_down {
            return Admission::Refused(unavailable("database unreachable"));
        }
        if self.waiting >= self.settings.max_waiters {
            return Admission::Refused(unavailable("too many chats waiting for it"));
        }
        Admission::NeedsReservation
    }

    /// Registers a chat that got [`Admission::NeedsReservation`].
    pub fn wait(&mut self, user: &UserId, day: QuotaDay, waiter: W, now_ms: u64) {
        let block = self
            .blocks
            .entry((user.clone(), day))
            .or_insert_with(|| Block::new(now_ms));
        block.waiters.push(waiter);
        block.top_up = true;
        self.top_up_wanted = true;
        self.waiting += 1;
    }

    /// A chat that failed before any delta returns its unit to the block it came from; the
    /// next settlement takes it out of `used`.
    pub fn give_back(&mut self, user: &UserId, day: QuotaDay) -> bool {
        match self.blocks.get_mut(&(user.clone(), day)) {
            Some(block) if block.used > 0 => {
                block.used -= 1;
                true
            }
            _ => false,
        }
    }

    /// Once per settle interval, whether or not a write is in flight: each block's rate is
    /// what sizes its next reservation.
    pub fn tick(&mut self) {
        for block in self.blocks.values_mut() {
            block.rate = (block.rate + f64::from(block.admits_since_settle)) / 2.0;
            block.admits_since_settle = 0;
        }
    }

    /// Whether a write should start now rather than at the next settle tick: chats wait for
    /// a reservation or a block runs low.
    pub fn wants_write_now(&self) -> bool {
        !self.writing && !self.known_down() && self.top_up_wanted
    }

    /// Ends every waiting chat with `unavailable` and releases all free units at the next
    /// write; later admissions need a reservation and are refused.
    pub fn shut_down(&mut self) -> Vec<(W, Result<QuotaTake, AppError>)> {
        self.shutting_down = true;
        self.top_up_wanted = false;
        let mut answers = Vec::new();
        for block in self.blocks.values_mut() {
            block.top_up = false;
            for w in block.waiters.drain(..) {
                answers.push((
                    w,
                    Err(AppError::Unavailable(
                        "the server is shutting down; reconnect shortly".into(),
                    )),
                ));
            }
        }
        self.waiting = 0;
        answers
    }

    /// Builds the next write: settlements of dirty blocks, releases of idle, old, disabled
    /// or over-limit blocks (or all at shutdown), and reservations where wanted. `None` while
    /// a write is in flight, or while the database is known down and no probe is due. A
    /// probe may be an empty batch: the transaction alone tells whether the database answers.
    pub fn next_batch(&mut self, today: QuotaDay, now_ms: u64, settle: bool) -> Option<Batch> {
        if self.writing {
            return None;
        }
        let probing = match self.down_until_ms {
            Some(until) if now_ms < until => return None,
            Some(_) => true,
            None => false,
        };
        let settings = &self.settings;
        let mut seq_used = false;
        let mut batch = Batch {
            writes: Vec::new(),
            keys: Vec::new(),
        };
        let next_seq = self.seq + 1;
        self.blocks.retain(|(_, day), block| {
            // Blocks of days before yesterday have no chat left that could give a unit
            // back; once settled they are forgotten.
            let stale = day.next() < today;
            !stale || block.dirty() || block.in_flight || !block.waiters.is_empty()
        });
        for ((user, day), block) in &mut self.blocks {
            let idle = now_ms.saturating_sub(block.last_admit_ms) >= settings.idle_after_ms;
            let over = block.disabled || block.taken_by_all > block.limit;
            if (self.shutting_down || *day != today || idle || over) && block.free() > 0 {
                block.released += block.free();
                block.top_up = false;
            }
            let reserve = if block.top_up && !self.shutting_down {
                block.block_size(settings.max_block)
            } else {
                0
            };
            let settle_due = (settle || probing || self.shutting_down) && block.dirty();
            if reserve == 0 && !settle_due {
                continue;
            }
            block.top_up = false;
            block.in_flight = true;
            block.asked = reserve;
            seq_used = true;
            batch.writes.push(LeaseWrite {
                user: user.as_str().to_string(),
                day: day.as_key(),
                seq: next_seq,
                used: block.used,
                released: block.released,
                reserve,
            });
            batch.keys.push((user.clone(), *day));
        }
        // Every wanted reservation is in this batch.
        self.top_up_wanted = false;
        if batch.writes.is_empty() && !probing {
            return None;
        }
        if seq_used {
            self.seq = next_seq;
        }
        // One lock order for every instance: two batches over the same users cannot
        // deadlock on PostgreSQL.
        let mut order: Vec<usize> = (0..batch.writes.len()).collect();
        order.sort_by(|&a, &b| {
            (&batch.writes[a].user, &batch.writes[a].day)
                .cmp(&(&batch.writes[b].user, &batch.writes[b].day))
        });
        let writes = order.iter().map(|&i| batch.writes[i].clone()).collect();
        let keys = order.iter().map(|&i| batch.keys[i].clone()).collect();
        self.writing = true;
        Some(Batch { writes, keys })
    }

    /// Takes in the database's answer to a batch and answers the chats it settles. On
    /// failure the database counts as down until the probe time; every waiting chat gets
    /// `unavailable`, and the batch's blocks are written again once it answers.
    pub fn batch_done(
        &mut self,
        batch: Batch,
        result: Result<Vec<LeaseState>, String>,
        now_ms: u64,
    ) -> Vec<(W, Result<QuotaTake, AppError>)> {
        self.writing = false;
        let mut answers = Vec::new();
        match result {
            Ok(states) => {
                self.down_until_ms = None;
                for ((key, write), state) in batch.keys.iter().zip(&batch.writes).zip(states) {
                    if let Some(block) = self.blocks.get_mut(key) {
                        self.waiting -= block.apply(write, &state, &mut answers);
                        self.top_up_wanted |= block.top_up;
                    }
                }
            }
            Err(cause) => {
                self.down_until_ms = Some(now_ms + self.settings.probe_after_ms);
                self.top_up_wanted = false;
                for key in &batch.keys {
                    if let Some(block) = self.blocks.get_mut(key) {
                        block.in_flight = false;
                        block.unsure = true;
                    }
                }
                for block in self.blocks.values_mut() {
                    block.top_up = false;
                    for w in block.waiters.drain(..) {
                        answers.push((w, Err(unavailable(&cause))));
                    }
                }
                self.waiting = 0;
            }
        }
        answers
    }

    fn known_down(&self) -> bool {
        // Until a probe succeeds the database counts as down, even when the probe is due.
        self.down_until_ms.is_some()
    }

    /// Free units of (user, day) in this instance's block.
    pub fn free(&self, user: &UserId, day: QuotaDay) -> i64 {
        self.blocks.get(&(user.clone(), day)).map_or(0, Block::free)
    }

    /// Units this instance's chats kept, not yet acknowledged as settled.
    pub fn unsettled(&self) -> i64 {
        self.blocks.values().map(|b| b.used - b.acked_used).sum()
    }

    pub fn is_down(&self) -> bool {
        self.known_down()
    }

    pub fn is_writing(&self) -> bool {
        self.writing
    }

    pub fn waiting(&self) -> usize {
        self.waiting
    }
}

impl<W> Block<W> {
    /// Applies the database's answer for this block; returns how many waiters it answered.
    fn apply(
        &mut self,
        write: &LeaseWrite,
        state: &LeaseState,
        answers: &mut Vec<(W, Result<QuotaTake, AppError>)>,
    ) -> usize {
        self.in_flight = false;
        self.unsure = false;
        self.acked_used = write.used;
        self.acked_released = write.released;
        let grant = state.granted - self.granted;
        // The database's total wins: a grant whose answer was lost is learned here.
        self.granted = state.granted;
        self.limit = state.limit;
        self.taken_by_all = state.used + state.reserved;
        self.settled_by_all = state.used;
        self.disabled = state.disabled;
        if self.asked > 0 {
            self.exhausted = grant < self.asked;
        }
        let served = if self.disabled {
            0
        } else {
            (self.free().max(0) as usize).min(self.waiters.len())
        };
        let before = self.standing();
        self.used += served as i64;
        self.admits_since_settle += served as u32;
        let mut answered = served;
        // Each waiter's receipt counts the ones served before it.
        answers.extend(self.waiters.drain(..served).zip(1..).map(|(w, n)| {
            let standing = QuotaStanding {
                used: before.used + n,
                ..before
            };
            (w, Ok(QuotaTake::Taken(standing)))
        }));
        if !self.waiters.is_empty() {
            if self.disabled {
                for w in self.waiters.drain(..) {
                    answered += 1;
                    answers.push((w, Ok(QuotaTake::Disabled)));
                }
            } else if self.asked > 0 && self.exhausted {
                let limit = self.limit;
                for w in self.waiters.drain(..) {
                    answered += 1;
                    answers.push((w, Ok(QuotaTake::Exceeded { limit })));
                }
            } else {
                // The block fit but more chats arrived meanwhile: reserve again.
                self.top_up = true;
            }
        }
        self.asked = 0;
        answered
    }
}

fn unavailable(cause: &str) -> AppError {
    AppError::Unavailable(format!(
        "the quota cannot be checked right now ({cause}); try again shortly"
    ))
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
