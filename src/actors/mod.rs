//! One actor per concern; state lives inside its actor and leaves only as owned snapshots.

pub mod cluster_bus;
pub mod collector;
pub mod connections;
pub mod db_flusher;
pub mod history_cache;
pub mod live_feed;
pub mod membership;
pub mod metrics;
pub mod origins;
pub mod quota_leases;
pub mod rate_limiter;
pub mod reply_keeper;
pub mod report;
pub mod session_registry;
pub mod socket_watchdog;
