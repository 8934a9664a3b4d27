//! One actor per concern; state lives inside its actor and leaves only as owned snapshots.

pub mod collector;
pub mod db_flusher;
pub mod history_cache;
pub mod metrics;
pub mod quota_leases;
pub mod rate_limiter;
pub mod session_registry;
pub mod ws_hub;
