//! `/admin/usage/collect`: starting the usage collector and listing its runs.

use actix_web::{get, post, web, HttpResponse};
use chrono::{DateTime, SecondsFormat};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::actors::collector::StartCollection;
use crate::app_state::AppState;
use crate::auth::AdminIdentity;
use crate::db::models::CollectorRunRow;
use crate::db::queries::collector;
use crate::error::{AppError, ErrorBody};
use crate::http::openapi::AdminRefusals;
use crate::http::pagination::{decode_cursor, encode_cursor};

const DEFAULT_LIMIT: u32 = 50;
const MAX_LIMIT: u32 = 1_000;

#[derive(Debug, Serialize, ToSchema)]
pub struct Started {
    pub run_id: String,
}

/// 202 with the new run's id, or 409 `already_running` with the running one's.
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    responses(
        (status = 202, description = "The compaction and retention run started", body = Started),
        (status = 409, description = "`already_running`: a run holds the lease on some instance; \
            `error.run_id` names it", body = ErrorBody),
        AdminRefusals,
    )
)]
#[post("/admin/usage/collect")]
pub async fn start_collection(
    admin: AdminIdentity,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let run_id = state
        .collector
        .send(StartCollection)
        .await
        .map_err(|err| AppError::unavailable_mailbox("collector", err))??;
    log::info!(
        "event=collector_requested admin={} run_id={run_id}",
        admin.0.user
    );
    Ok(HttpResponse::Accepted().json(Started { run_id }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RunsQuery {
    /// Page size, 1–1000 (default 50).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// One run as listed; times are RFC 3339 (UTC, milliseconds).
#[derive(Debug, Serialize, ToSchema)]
pub struct RunView {
    pub run_id: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    pub processed: i64,
    pub stored: i64,
    pub skipped: i64,
    pub duration_ms: Option<i64>,
    pub lock_wait_ms: i64,
    /// `running`, `ok`, `error`, or `abandoned` (its instance died mid-run).
    pub status: String,
    pub error: Option<String>,
}

impl From<CollectorRunRow> for RunView {
    fn from(row: CollectorRunRow) -> RunView {
        RunView {
            started_at: rfc3339(row.started_at),
            finished_at: row.finished_at.map(rfc3339),
            run_id: row.run_id,
            processed: row.processed,
            stored: row.stored,
            skipped: row.skipped,
            duration_ms: row.duration_ms,
            lock_wait_ms: row.lock_wait_ms,
            status: row.status,
            error: row.error,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunList {
    pub items: Vec<RunView>,
    pub next_cursor: Option<String>,
}

/// Newest first, `limit` (1–1000, default 50) per page.
#[utoipa::path(
    tag = "admin",
    security(("bearer_jwt" = [])),
    params(RunsQuery),
    responses(
        (status = 200, description = "A page of collector runs, newest first", body = RunList),
        (status = 400, description = "`bad_request`: bad `limit` or `cursor`", body = ErrorBody),
        AdminRefusals,
    )
)]
#[get("/admin/usage/collect/runs")]
pub async fn list_runs(
    _admin: AdminIdentity,
    state: web::Data<AppState>,
    query: web::Query<RunsQuery>,
) -> Result<HttpResponse, AppError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(AppError::BadRequest(format!(
            "limit must be from 1 to {MAX_LIMIT}"
        )));
    }
    let before = match query.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(cursor) => Some(RunCursor::decode(cursor)?),
        None => None,
    };
    // One extra row says whether another page follows.
    let mut rows = state
        .db
        .run(move |conn| {
            let before = before.as_ref().map(|c| (c.started_at, c.run_id.as_str()));
            collector::list_runs(conn, i64::from(limit) + 1, before)
        })
        .await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = rows
        .last()
        .filter(|_| more)
        .map(|last| RunCursor::after(last).encode());
    let items = rows.into_iter().map(RunView::from).collect();
    Ok(HttpResponse::Ok().json(RunList { items, next_cursor }))
}

fn rfc3339(epoch_ms: i64) -> String {
    DateTime::from_timestamp_millis(epoch_ms)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        // Out of chrono's range only through a corrupt row; show the raw number then.
        .unwrap_or_else(|| epoch_ms.to_string())
}

/// Where the next page starts: the sort key of the previous page's last run. Opaque to
/// clients, in the one cursor format of every admin list ([`encode_cursor`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunCursor {
    pub started_at: i64,
    pub run_id: String,
}

impl RunCursor {
    pub fn after(row: &CollectorRunRow) -> RunCursor {
        RunCursor {
            started_at: row.started_at,
            run_id: row.run_id.clone(),
        }
    }

    pub fn encode(&self) -> String {
        encode_cursor(self)
    }

    pub fn decode(raw: &str) -> Result<RunCursor, AppError> {
        match decode_cursor::<RunCursor>(Some(raw))? {
            Some(cursor) if !cursor.run_id.is_empty() => Ok(cursor),
            _ => Err(AppError::BadRequest(
                "cursor is not one this server issued".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;

    #[test]
    fn cursor_round_trips_and_rejects_anything_else() {
        let cursor = RunCursor {
            started_at: 1_764_000_000_123,
            run_id: "5b0c3e1e-8f7a-4c1e-9d2a-1f0e9c8b7a6d".into(),
        };
        let encoded = cursor.encode();
        assert!(encoded
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert_eq!(RunCursor::decode(&encoded).expect("decode"), cursor);
        for bad in [
            "!!!",
            "bm9jb2xvbg",                    // "nocolon"
            &URL_SAFE_NO_PAD.encode("x:id"), // not a number
            &URL_SAFE_NO_PAD.encode("12:"),  // no run id
        ] {
            let err = RunCursor::decode(bad).expect_err(bad);
            assert_eq!(err.code(), crate::error::ErrorCode::BadRequest, "{bad}");
        }
    }

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(rfc3339(1_764_000_000_123), "2025-11-24T16:00:00.123Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
    }
}
