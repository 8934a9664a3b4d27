//! `GET /admin/usage/history`: usage per bucket and model, aggregated in the database.

use std::sync::Arc;

use actix_web::{get, web, HttpResponse};
use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::actors::history_cache::{GetCached, PutCached};
use crate::app_state::AppState;
use crate::auth::AdminIdentity;
use crate::db::queries::history::{self, HistoryQuery, HistoryRow};
use crate::error::{AppError, ErrorBody};
use crate::http::openapi::AdminRefusals;
use crate::http::pagination::{decode_cursor, encode_cursor, page_limit};

#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Bucket {
    Minute,
    Hour,
    Day,
}

impl Bucket {
    fn millis(self) -> i64 {
        match self {
            Bucket::Minute => 60_000,
            Bucket::Hour => 3_600_000,
            Bucket::Day => 86_400_000,
        }
    }

    /// The widest window each bucket size may span (CONTRACT.md).
    fn max_window_ms(self) -> i64 {
        match self {
            Bucket::Minute => 24 * 3_600_000,
            Bucket::Hour => 31 * 86_400_000,
            Bucket::Day => 366 * 86_400_000,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HistoryParams {
    /// Window start, RFC 3339.
    #[param(format = DateTime, example = "2026-11-25T00:00:00Z")]
    from: String,
    /// Window end, RFC 3339; at most 24 h after `from` for minute buckets, 31 days for hour,
    /// 366 days for day.
    #[param(format = DateTime, example = "2026-11-26T00:00:00Z")]
    to: String,
    #[param(inline)]
    bucket: Bucket,
    /// Only this model.
    model: Option<String>,
    /// Only this user.
    user: Option<String>,
    /// Page size, 1–1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<usize>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BucketItem {
    /// The bucket's start, RFC 3339.
    start: String,
    model: String,
    requests: i64,
    errors: i64,
    /// Weighted by request count.
    avg_latency_ms: f64,
    tokens_in: i64,
    tokens_out: i64,
}

#[derive(Serialize, ToSchema)]
pub struct HistoryPage {
    buckets: Vec<BucketItem>,
    next_cursor: Option<String>,
}

fn parse_time(name: &str, value: &str) -> Result<i64, AppError> {
    DateTime::parse_from_rfc3339(value)
        .map(|t| t.timestamp_millis())
        .map_err(|_| {
            AppError::BadRequest(format!(
                "{name} must be an RFC 3339 time, e.g. 2026-11-25T00:00:00Z"
            ))
        })
}

fn to_query(params: &HistoryParams) -> Result<HistoryQuery, AppError> {
    let from_ms = parse_time("from", &params.from)?;
    let to_ms = parse_time("to", &params.to)?;
    if to_ms <= from_ms {
        return Err(AppError::BadRequest("to must be after from".into()));
    }
    if to_ms - from_ms > params.bucket.max_window_ms() {
        return Err(AppError::BadRequest(format!(
            "window too wide for {:?} buckets: at most 24 h for minute, 31 days for hour, 366 days for day",
            params.bucket
        )));
    }
    Ok(HistoryQuery {
        from_ms,
        to_ms,
        bucket_ms: params.bucket.millis(),
        model: params.model.clone().filter(|m| !m.is_empty()),
        user: params.user.clone().filter(|u| !u.is_empty()),
        after: decode_cursor(params.cursor.as_deref())?,
        limit: page_limit(params.limit)? as i64,
    })
}

fn page(rows: Vec<HistoryRow>, limit: usize) -> HistoryPage {
    let more = rows.len() > limit;
    let rows = &rows[..rows.len().min(limit)];
    let next_cursor = if more {
        rows.last()
            .map(|r| encode_cursor(&(r.bucket, r.model.clone())))
    } else {
        None
    };
    let buckets = rows
        .iter()
        .map(|r| BucketItem {
            start: DateTime::from_timestamp_millis(r.bucket)
                .map(|t| t.to_rfc3339_opts(SecondsFormat::Secs, true))
                .unwrap_or_default(),
            model: r.model.clone(),
            requests: r.requests,
            errors: r.errors,
            // Weighted: total latency over total count, never an average of averages.
            avg_latency_ms: if r.latency_count > 0 {
                (r.latency_sum_ms as f64 / r.latency_count as f64 * 10.0).round() / 10.0
            } else {
                0.0
            },
            tokens_in: r.tokens_in,
            tokens_out: r.tokens_out,
        })
        .collect();
    HistoryPage {
        buckets,
        next_cursor,
    }
}

/// Usage per bucket and model (and user, when filtered), aggregated in the database.
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    params(HistoryParams),
    responses(
        (status = 200, description = "A page of buckets", body = HistoryPage),
        (status = 400, description = "`bad_request`: bad bounds, a window too wide for the \
            bucket, or a bad `limit` or `cursor`", body = ErrorBody),
        AdminRefusals,
    )
)]
#[get("/admin/usage/history")]
pub async fn usage_history(
    _admin: AdminIdentity,
    state: web::Data<AppState>,
    params: web::Query<HistoryParams>,
) -> Result<HttpResponse, AppError> {
    let query = to_query(&params)?;
    let limit = query.limit as usize;
    // Normalised: the same question in other words (time zones, omitted defaults) shares an entry.
    let key = format!("{query:?}");
    if let Ok(Some(body)) = state
        .history_cache
        .send(GetCached { key: key.clone() })
        .await
    {
        return Ok(HttpResponse::Ok()
            .content_type("application/json")
            .body(body.to_string()));
    }
    let mut fetch = query.clone();
    fetch.limit += 1;
    let rows = state
        .db
        .run(move |conn| history::usage_history(conn, &fetch))
        .await?;
    let body: Arc<str> =
        Arc::from(serde_json::to_string(&page(rows, limit)).map_err(AppError::internal)?);
    state.history_cache.do_send(PutCached {
        key,
        body: body.clone(),
    });
    Ok(HttpResponse::Ok()
        .content_type("application/json")
        .body(body.to_string()))
}
