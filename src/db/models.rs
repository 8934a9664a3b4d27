//! Rows as they are stored.

use diesel::prelude::*;

use super::schema::{sessions, users};

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
