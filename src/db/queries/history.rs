//! Usage history, aggregated in the database: `GROUP BY` bucket and model over the per-minute
//! rollups (plus raw rows not yet folded into them), or over raw rows when filtered by user.
//! Averages come back as sums so the caller divides once: weighted, never averaged averages.

use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};

use crate::db::DbConnection;
use crate::with_backend;

#[derive(Clone, Debug)]
pub struct HistoryQuery {
    pub from_ms: i64,
    pub to_ms: i64,
    pub bucket_ms: i64,
    pub model: Option<String>,
    pub user: Option<String>,
    /// Keyset position: buckets strictly after (bucket, model).
    pub after: Option<(i64, String)>,
    pub limit: i64,
}

#[derive(Clone, Debug, PartialEq, Eq, QueryableByName, serde::Serialize, serde::Deserialize)]
pub struct HistoryRow {
    #[diesel(sql_type = BigInt)]
    pub bucket: i64,
    #[diesel(sql_type = Text)]
    pub model: String,
    #[diesel(sql_type = BigInt)]
    pub requests: i64,
    #[diesel(sql_type = BigInt)]
    pub errors: i64,
    #[diesel(sql_type = BigInt)]
    pub latency_sum_ms: i64,
    #[diesel(sql_type = BigInt)]
    pub latency_count: i64,
    #[diesel(sql_type = BigInt)]
    pub tokens_in: i64,
    #[diesel(sql_type = BigInt)]
    pub tokens_out: i64,
}

/// One bound value, in the order placeholders were written.
enum Bind {
    Int(i64),
    Text(String),
}

/// SQL text with numbered placeholders in the style of the backend (`$n` or `?n`).
struct Sql {
    text: String,
    binds: Vec<Bind>,
    postgres: bool,
}

impl Sql {
    fn push(&mut self, fragment: &str) {
        self.text.push_str(fragment);
    }

    fn bind(&mut self, value: Bind) {
        self.binds.push(value);
        let n = self.binds.len();
        self.text.push_str(&if self.postgres {
            format!("${n}")
        } else {
            format!("?{n}")
        });
    }
}

const ERROR_CASE: &str = "CASE WHEN outcome IN ('ok', 'cancelled') THEN 0 ELSE 1 END";

fn build(query: &HistoryQuery, postgres: bool) -> Sql {
    let mut sql = Sql {
        text: String::new(),
        binds: Vec::new(),
        postgres,
    };
    sql.push("SELECT bucket, model, CAST(SUM(requests) AS BIGINT) AS requests, CAST(SUM(errors) AS BIGINT) AS errors, \
              CAST(SUM(latency_sum_ms) AS BIGINT) AS latency_sum_ms, CAST(SUM(latency_count) AS BIGINT) AS latency_count, \
              CAST(SUM(tokens_in) AS BIGINT) AS tokens_in, CAST(SUM(tokens_out) AS BIGINT) AS tokens_out FROM (");
    let source = |sql: &mut Sql, time_col: &str, select: &str, table_filter: &str| {
        sql.push("SELECT (");
        sql.push(time_col);
        sql.push(" / ");
        sql.bind(Bind::Int(query.bucket_ms));
        sql.push(") * ");
        sql.bind(Bind::Int(query.bucket_ms));
        sql.push(" AS bucket, ");
        sql.push(select);
        sql.push(" WHERE ");
        sql.push(time_col);
        sql.push(" >= ");
        sql.bind(Bind::Int(query.from_ms));
        sql.push(" AND ");
        sql.push(time_col);
        sql.push(" < ");
        sql.bind(Bind::Int(query.to_ms));
        sql.push(table_filter);
        if let Some(model) = &query.model {
            sql.push(" AND model = ");
            sql.bind(Bind::Text(model.clone()));
        }
    };
    let raw_select = format!(
        "model, 1 AS requests, {ERROR_CASE} AS errors, latency_ms AS latency_sum_ms, 1 AS latency_count, \
         tokens_in, tokens_out FROM request_log"
    );
    match &query.user {
        Some(user) => {
            // Per-user history exists only in the raw log (until retention removes it).
            source(&mut sql, "started_at", &raw_select, "");
            sql.push(" AND user_id = ");
            sql.bind(Bind::Text(user.clone()));
        }
        // Every raw row is counted in the rollups as it is written, so they are the whole
        // record per model.
        None => {
            source(
                &mut sql,
                "bucket_start",
                "model, requests, errors, latency_sum_ms, latency_count, tokens_in, tokens_out FROM usage_rollup",
                "",
            );
        }
    }
    sql.push(") AS usage GROUP BY bucket, model");
    if let Some((bucket, model)) = &query.after {
        sql.push(" HAVING bucket > ");
        sql.bind(Bind::Int(*bucket));
        sql.push(" OR (bucket = ");
        sql.bind(Bind::Int(*bucket));
        sql.push(" AND model > ");
        sql.bind(Bind::Text(model.clone()));
        sql.push(")");
    }
    sql.push(" ORDER BY bucket, model LIMIT ");
    sql.bind(Bind::Int(query.limit));
    sql
}

pub fn usage_history(
    conn: &mut DbConnection,
    query: &HistoryQuery,
) -> QueryResult<Vec<HistoryRow>> {
    let sql = build(query, matches!(conn, DbConnection::Postgres(_)));
    with_backend!(conn, |c| {
        let mut q = diesel::sql_query(&sql.text).into_boxed();
        for bind in &sql.binds {
            q = match bind {
                Bind::Int(v) => q.bind::<BigInt, _>(*v),
                Bind::Text(v) => q.bind::<Text, _>(v.clone()),
            };
        }
        q.load(c)
    })
}

/// The plan PostgreSQL picks for a history query (for checking index use).
pub fn explain_postgres(conn: &mut DbConnection, query: &HistoryQuery) -> QueryResult<Vec<String>> {
    #[derive(QueryableByName)]
    struct PlanLine {
        #[diesel(sql_type = Text, column_name = "QUERY PLAN")]
        line: String,
    }
    let DbConnection::Postgres(c) = conn else {
        return Ok(Vec::new());
    };
    let sql = build(query, true);
    let mut q = diesel::sql_query(format!("EXPLAIN {}", sql.text)).into_boxed();
    for bind in sql.binds {
        q = match bind {
            Bind::Int(v) => q.bind::<BigInt, _>(v),
            Bind::Text(v) => q.bind::<Text, _>(v),
        };
    }
    Ok(q.load::<PlanLine>(c)?.into_iter().map(|l| l.line).collect())
}
