//! Rows as they are stored.

use diesel::prelude::*;

use super::schema::{collector_lease, collector_runs, request_log, sessions, usage_rollup, users};

#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = users)]
pub struct UserRow {
    pub id: String,
    pub daily_limit: Option<i64>,
    pub disabled: bool,
    pub version: i64,
    pub created_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable, AsChangeset)]
#[diesel(table_name = sessions)]
#[diesel(treat_none_as_null = true)]
pub struct SessionRow {
    pub id: String,
    pub user_id: String,
    pub started_at: i64,
    pub ended_at: Option<i64>,
    pub messages: i64,
    pub avg_response_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = request_log)]
// NULL rather than DEFAULT for `None`, so many rows can go in one INSERT on SQLite too.
#[diesel(treat_none_as_default_value = false)]
pub struct RequestRow {
    pub id: String,
    pub user_id: String,
    pub session_id: Option<String>,
    pub model: String,
    pub started_at: i64,
    pub latency_ms: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub estimated: bool,
    pub outcome: String,
}

impl RequestRow {
    pub fn is_error(&self) -> bool {
        self.outcome != "ok" && self.outcome != "cancelled"
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = usage_rollup)]
pub struct RollupRow {
    pub bucket_start: i64,
    pub model: String,
    pub requests: i64,
    pub errors: i64,
    pub latency_sum_ms: i64,
    pub latency_count: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
}

pub const MINUTE_MS: i64 = 60_000;

impl RollupRow {
    pub fn add(&mut self, row: &RequestRow) {
        self.requests += 1;
        self.errors += i64::from(row.is_error());
        self.latency_sum_ms += row.latency_ms;
        self.latency_count += 1;
        self.tokens_in += row.tokens_in;
        self.tokens_out += row.tokens_out;
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = collector_lease)]
pub struct LeaseRow {
    pub name: String,
    pub holder: String,
    pub run_id: String,
    pub expires_at: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, Queryable, Selectable, Insertable)]
#[diesel(table_name = collector_runs)]
// NULL rather than DEFAULT for `None`, so the insert reads the same on both backends.
#[diesel(treat_none_as_default_value = false)]
pub struct CollectorRunRow {
    pub run_id: String,
    pub holder: String,
    pub started_at: i64,
    pub finished_at: Option<i64>,
    pub processed: i64,
    pub stored: i64,
    pub skipped: i64,
    pub duration_ms: Option<i64>,
    pub lock_wait_ms: i64,
    pub status: String,
    pub error: Option<String>,
}
