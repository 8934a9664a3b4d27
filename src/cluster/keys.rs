//! Every Redis key chatgate writes: `chatgate:<db>:` + a name. The database index is in the
//! prefix so two deployments sharing one Redis server on different databases (or a test per
//! database) never meet; tests add their own prefix with [`KeySpace::with_prefix`].

use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct KeySpace {
    prefix: Arc<str>,
}

impl KeySpace {
    pub fn for_database(db: i64) -> KeySpace {
        KeySpace {
            prefix: Arc::from(format!("chatgate:{db}:")),
        }
    }

    /// A key space under another prefix (tests run in parallel against one Redis).
    pub fn with_prefix(prefix: &str) -> KeySpace {
        KeySpace {
            prefix: Arc::from(prefix),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// `<prefix><name>`, e.g. `chatgate:0:rl:users:42`.
    pub fn key(&self, name: &str) -> String {
        let mut key = String::with_capacity(self.prefix.len() + name.len());
        key.push_str(&self.prefix);
        key.push_str(name);
        key
    }

    /// The pub/sub channel every instance listens to.
    pub fn broadcast_channel(&self) -> String {
        self.key("bus:all")
    }

    /// The pub/sub channel only `instance` listens to (commands for it, answers to it).
    pub fn instance_channel(&self, instance: &str) -> String {
        self.key(&format!("bus:to:{instance}"))
    }

    /// Sorted set of live instances, scored by their last heartbeat (ms since the epoch).
    pub fn instances(&self) -> String {
        self.key("instances")
    }

    /// An instance's latest metrics snapshot (JSON), expiring with its heartbeat.
    pub fn snapshot(&self, instance: &str) -> String {
        self.key(&format!("snapshot:{instance}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_the_database_index() {
        let keys = KeySpace::for_database(3);
        assert_eq!(keys.key("rl:users:7"), "chatgate:3:rl:users:7");
        assert_eq!(keys.instance_channel("a-1"), "chatgate:3:bus:to:a-1");
        assert_ne!(
            KeySpace::for_database(0).instances(),
            KeySpace::for_database(1).instances()
        );
    }
}
