//! Whether the cluster's Redis answers: `"off"` (no cluster mode), `"up"` or `"down"`, as the
//! contract's `cluster.redis` field spells it.

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum RedisHealth {
    Off,
    Up,
    Down,
}

/// A change worth one log line: the start or the end of an outage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthTransition {
    WentDown,
    CameBack,
}

/// The link's health, read on every cluster request. It is one atomic flag rather than an
/// actor's state because every request path reads it and only a probe result or a failed
/// command writes it; a mailbox round trip per read would put an actor hop on the chat path.
/// Next to it, a count of the connection faults requests met, so a probe whose answer left
/// Redis before a request saw it fail cannot bring the link back up.
#[derive(Debug)]
pub struct RedisHealthCell {
    state: AtomicU8,
    faults: AtomicU64,
}

const UP: u8 = 1;
const DOWN: u8 = 2;

impl RedisHealthCell {
    /// Starts up: the first request finds out. Starting down would make the first second of
    /// every instance per-instance only.
    pub fn new() -> Self {
        RedisHealthCell {
            state: AtomicU8::new(UP),
            faults: AtomicU64::new(0),
        }
    }

    pub fn get(&self) -> RedisHealth {
        match self.state.load(Ordering::SeqCst) {
            UP => RedisHealth::Up,
            _ => RedisHealth::Down,
        }
    }

    /// Sets the health; returns the transition when it changed. Of many callers racing to
    /// the same change exactly one gets it (one swap), so it is logged once.
    pub fn set(&self, health: RedisHealth) -> Option<HealthTransition> {
        let value = if health == RedisHealth::Up { UP } else { DOWN };
        let before = self.state.swap(value, Ordering::SeqCst);
        match (before, value) {
            (UP, DOWN) => Some(HealthTransition::WentDown),
            (DOWN, UP) => Some(HealthTransition::CameBack),
            _ => None,
        }
    }

    /// A request met a connection fault: down.
    pub fn fault(&self) -> Option<HealthTransition> {
        self.faults.fetch_add(1, Ordering::SeqCst);
        self.set(RedisHealth::Down)
    }

    /// Faults so far; a probe reads it before it asks Redis.
    pub fn faults(&self) -> u64 {
        self.faults.load(Ordering::SeqCst)
    }

    /// A probe's result. `faults_before` is [`faults`](Self::faults) from before it asked: an
    /// answer does not bring the link up when a request met a fault meanwhile (the answer may
    /// have left Redis before the connection broke); the next probe decides.
    pub fn probed(&self, answered: bool, faults_before: u64) -> Option<HealthTransition> {
        if !answered {
            return self.set(RedisHealth::Down);
        }
        if self.faults() != faults_before {
            return None;
        }
        self.set(RedisHealth::Up)
    }
}

impl Default for RedisHealthCell {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions_are_reported_once_per_change() {
        let cell = RedisHealthCell::new();
        assert_eq!(cell.set(RedisHealth::Up), None);
        assert_eq!(
            cell.set(RedisHealth::Down),
            Some(HealthTransition::WentDown)
        );
        assert_eq!(cell.set(RedisHealth::Down), None);
        assert_eq!(cell.get(), RedisHealth::Down);
        assert_eq!(cell.set(RedisHealth::Up), Some(HealthTransition::CameBack));
        assert_eq!(cell.get(), RedisHealth::Up);
    }

    #[test]
    fn a_fault_during_a_probe_keeps_the_link_down() {
        let cell = RedisHealthCell::new();
        let before = cell.faults();
        assert_eq!(cell.fault(), Some(HealthTransition::WentDown));
        // The probe started before the fault: its answer is no evidence Redis is back.
        assert_eq!(cell.probed(true, before), None);
        assert_eq!(cell.get(), RedisHealth::Down);
        // A later probe is.
        let before = cell.faults();
        assert_eq!(cell.probed(true, before), Some(HealthTransition::CameBack));
        // A fault already counted as down is no new outage.
        assert_eq!(
            cell.probed(false, cell.faults()),
            Some(HealthTransition::WentDown)
        );
        assert_eq!(cell.fault(), None);
    }

    #[test]
    fn serializes_as_the_contract_spells_it() {
        let spelled: Vec<String> = [RedisHealth::Off, RedisHealth::Up, RedisHealth::Down]
            .iter()
            .map(|h| serde_json::to_string(h).unwrap_or_default())
            .collect();
        assert_eq!(spelled, ["\"off\"", "\"up\"", "\"down\""]);
    }
}
