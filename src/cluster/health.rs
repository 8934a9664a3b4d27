//! Whether the cluster's Redis answers: `"off"` (no cluster mode), `"up"` or `"down"`, as the
//! contract's `cluster.redis` field spells it.

use std::sync::atomic::{AtomicU8, Ordering};

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
#[derive(Debug)]
pub struct RedisHealthCell(AtomicU8);

const UP: u8 = 1;
const DOWN: u8 = 2;

impl RedisHealthCell {
    /// Starts up: the first request finds out. Starting down would make the first second of
    /// every instance per-instance only.
    pub fn new() -> Self {
        RedisHealthCell(AtomicU8::new(UP))
    }

    pub fn get(&self) -> RedisHealth {
        match self.0.load(Ordering::Relaxed) {
            UP => RedisHealth::Up,
            _ => RedisHealth::Down,
        }
    }

    /// Sets the health; returns the transition when it changed.
    pub fn set(&self, health: RedisHealth) -> Option<HealthTransition> {
        let value = if health == RedisHealth::Up { UP } else { DOWN };
        let before = self.0.swap(value, Ordering::Relaxed);
        match (before, value) {
            (UP, DOWN) => Some(HealthTransition::WentDown),
            (DOWN, UP) => Some(HealthTransition::CameBack),
            _ => None,
        }
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
    fn serializes_as_the_contract_spells_it() {
        let spelled: Vec<String> = [RedisHealth::Off, RedisHealth::Up, RedisHealth::Down]
            .iter()
            .map(|h| serde_json::to_string(h).unwrap_or_default())
            .collect();
        assert_eq!(spelled, ["\"off\"", "\"up\"", "\"down\""]);
    }
}
