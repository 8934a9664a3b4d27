//! The usage collector: single-flight across requests and instances, dead leases taken over,
//! folding counted once, retention applied, runs listed.

use std::collections::HashSet;
use std::time::Duration;

use chatgate::db::models::{CollectorRunRow, RequestRow, RollupRow, SessionRow};
use chatgate::db::queries::{collector, now_ms, sessions, usage, users};
use chatgate::db::schema;
use chatgate::db::schema::{flush_batches, quota_usage, request_log, usage_rollup};
use chatgate::db::DbConnection;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use futures_util::future::join_all;
use serde_json::Value;

use crate::helpers::{
    eventually, require_postgres, spawn_app_with, spawn_with_settings, test_settings, Backend,
    TestApp, TestDatabase,
};

const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;

async fn post_collect(app: &TestApp, token: &str) -> (u16, Value) {
    let mut resp = app
        .client()
        .post(app.url("/admin/usage/collect"))
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let body = resp.body().await.expect("body");
    (
        resp.status().as_u16(),
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

async fn all_runs(app: &TestApp) -> Vec<CollectorRunRow> {
    app.query(|conn| collector::list_runs(conn, 10_000, None))
        .await
}

/// Every recorded run, once none is `running` any more.
async fn finished_runs(app: &TestApp) -> Vec<CollectorRunRow> {
    eventually(
        "every collector run finished",
        Duration::from_secs(30),
        || async {
            let runs = all_runs(app).await;
            runs.iter()
                .all(|run| run.status != "running")
                .then_some(runs)
        },
    )
    .await
}

/// Starts one run and waits for it to finish; returns its row.
async fn collect_once(app: &TestApp) -> CollectorRunRow {
    // The previous run's row can read finished a moment before its end reaches the collector
    // actor, which answers 409 for that moment: only 202 and that 409 are acceptable here.
    let token = app.admin_token("ops");
    let body = eventually(
        "the collector accepts a run",
        Duration::from_secs(10),
        || async {
            let (status, body) = post_collect(app, &token).await;
            match status {
                202 => Some(body),
                409 => None,
                other => panic!("POST /admin/usage/collect answered {other}: {body}"),
            }
        },
    )
    .await;
    let run_id = body["run_id"].as_str().expect("run_id").to_string();
    let run = finished_runs(app)
        .await
        .into_iter()
        .find(|run| run.run_id == run_id)
        .expect("the started run is recorded");
    assert_eq!(run.status, "ok", "{run:?}");
    run
}

fn raw(id: String, model: &str, started_at: i64, outcome: &str) -> RequestRow {
    RequestRow {
        id,
        user_id: "alice".into(),
        session_id: None,
        model: model.into(),
        started_at,
        latency_ms: 40 + started_at.rem_euclid(7),
        tokens_in: 3,
        tokens_out: 5,
        estimated: false,
        outcome: outcome.into(),
    }
}

/// Rows as the flusher writes them: raw rows, their sums in the rollups.
fn insert_flushed(conn: &mut DbConnection, rows: &[RequestRow]) -> QueryResult<()> {
    usage::insert_requests(conn, rows)?;
    let rollups: Vec<RollupRow> = rows
        .iter()
        .map(|row| {
            let mut rollup = RollupRow {
                bucket_start: row.started_at.div_euclid(MINUTE_MS) * MINUTE_MS,
                model: row.model.clone(),
                ..RollupRow::default()
            };
            rollup.add(row);
            rollup
        })
        .collect();
    usage::add_rollups(conn, &rollups)?;
    Ok(())
}

/// (requests, errors, latency_sum_ms, latency_count, tokens_in, tokens_out)
type Totals = (i64, i64, i64, i64, i64, i64);

fn rollup_totals(conn: &mut DbConnection) -> QueryResult<Totals> {
    let rows: Vec<RollupRow> = usage_rollup::table
        .select(RollupRow::as_select())
        .load(conn)?;
    Ok(rows.iter().fold((0, 0, 0, 0, 0, 0), |t, r| {
        (
            t.0 + r.requests,
            t.1 + r.errors,
            t.2 + r.latency_sum_ms,
            t.3 + r.latency_count,
            t.4 + r.tokens_in,
            t.5 + r.tokens_out,
        )
    }))
}

#[actix_web::test]
async fn parallel_collects_get_202_or_409_and_recorded_runs_never_overlap() {
    parallel_collects_get_202_or_409_and_recorded_runs_never_overlap_on(Backend::Sqlite).await;
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn parallel_collects_get_202_or_409_and_recorded_runs_never_overlap_postgres() {
    require_postgres();
    parallel_collects_get_202_or_409_and_recorded_runs_never_overlap_on(Backend::Postgres).await;
}

async fn parallel_collects_get_202_or_409_and_recorded_runs_never_overlap_on(backend: Backend) {
    let first = spawn_app_with(backend, |_| {}).await;
    // On PostgreSQL a second instance shares the first one's schema, and the requests
    // are split between them: the lease has to hold across processes, not just actors.
    let second = match backend {
        Backend::Postgres => Some(
            spawn_with_settings(
                test_settings(&first.database.url),
                TestDatabase::new(Backend::Sqlite),
            )
            .await,
        ),
        Backend::Sqlite => None,
    };
    let apps: Vec<&TestApp> = std::iter::once(&first).chain(second.as_ref()).collect();
    // Work for the runs: rows past the 7-day raw retention.
    let base = now_ms() - 8 * 24 * HOUR_MS;
    first
        .query(move |conn| {
            let rows: Vec<RequestRow> = (0..2_000)
                .map(|i| raw(format!("p{i}"), "echo", base + i * 997, "ok"))
                .collect();
            usage::insert_requests(conn, &rows)
        })
        .await;

    let token = first.admin_token("ops");
    let at_once = (0..10).map(|i| post_collect(apps[i % apps.len()], &token));
    let mut responses = join_all(at_once).await;
    // Then a staggered wave, so several runs follow each other closely (the check below
    // holds whatever the timing; the spread only makes back-to-back runs likely).
    let staggered = (0..10u64).map(|i| {
        let app = apps[i as usize % apps.len()];
        let token = &token;
        async move {
            actix_web::rt::time::sleep(Duration::from_millis(i * 5)).await;
            post_collect(app, token).await
        }
    });
    responses.extend(join_all(staggered).await);
    let mut started = HashSet::new();
    let mut refused_for = Vec::new();
    for (status, body) in &responses {
        match status {
            202 => {
                started.insert(body["run_id"].as_str().expect("run_id").to_string());
            }
            409 => {
                assert_eq!(body["error"]["code"], "already_running", "{body}");
                assert!(body["error"]["message"].is_string(), "{body}");
                let run_id = body["error"]["run_id"].as_str().expect("run_id");
                refused_for.push(run_id.to_string());
            }
            other => panic!("{backend:?}: status {other}: {body}"),
        }
    }
    assert!(!started.is_empty(), "{backend:?}: no run started");
    eprintln!(
        "DEBUG {backend:?} started={} refused={}",
        started.len(),
        refused_for.len()
    );

    let mut runs = finished_runs(&first).await;
    let recorded: HashSet<String> = runs.iter().map(|r| r.run_id.clone()).collect();
    assert_eq!(recorded, started, "{backend:?}: one recorded run per 202");
    for run_id in &refused_for {
        assert!(
            recorded.contains(run_id),
            "{backend:?}: 409 named {run_id}, not a run"
        );
    }
    runs.sort_by_key(|run| run.started_at);
    for run in &runs {
        assert_eq!(run.status, "ok", "{backend:?}: {run:?}");
    }
    for pair in runs.windows(2) {
        let finished = pair[0].finished_at.expect("finished_at");
        assert!(
            pair[1].started_at >= finished,
            "{backend:?}: runs overlap: {:?} and {:?}",
            pair[0],
            pair[1]
        );
    }
    let processed: i64 = runs.iter().map(|run| run.processed).sum();
    assert_eq!(
        processed, 2_000,
        "{backend:?}: every old row deleted once across the runs"
    );
    let lease = first
        .query(|conn| collector::find_lease(conn, collector::LEASE_NAME))
        .await;
    assert_eq!(lease, None, "{backend:?}: the last run released the lease");
}

#[actix_web::test]
async fn a_live_lease_held_elsewhere_gets_409_with_its_run_id() {
    a_live_lease_held_elsewhere_gets_409_with_its_run_id_on(Backend::Sqlite).await;
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn a_live_lease_held_elsewhere_gets_409_with_its_run_id_postgres() {
    require_postgres();
    a_live_lease_held_elsewhere_gets_409_with_its_run_id_on(Backend::Postgres).await;
}

async fn a_live_lease_held_elsewhere_gets_409_with_its_run_id_on(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let expires = now_ms() + HOUR_MS;
    app.query(move |conn| {
        conn.batch_execute(&format!(
            "INSERT INTO collector_lease (name, holder, run_id, expires_at) \
             VALUES ('usage_collector', 'other-instance', 'their-run', {expires})"
        ))
    })
    .await;
    let (status, body) = post_collect(&app, &app.admin_token("ops")).await;
    assert_eq!(status, 409, "{backend:?}: {body}");
    assert_eq!(body["error"]["code"], "already_running");
    assert_eq!(body["error"]["run_id"], "their-run");
    assert!(
        all_runs(&app).await.is_empty(),
        "{backend:?}: nothing started"
    );
}

#[actix_web::test]
async fn an_expired_lease_left_by_a_killed_process_does_not_block_the_next_run() {
    an_expired_lease_left_by_a_killed_process_does_not_block_the_next_run_on(Backend::Sqlite).await;
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn an_expired_lease_left_by_a_killed_process_does_not_block_the_next_run_postgres() {
    require_postgres();
    an_expired_lease_left_by_a_killed_process_does_not_block_the_next_run_on(Backend::Postgres)
        .await;
}

async fn an_expired_lease_left_by_a_killed_process_does_not_block_the_next_run_on(
    backend: Backend,
) {
    let app = spawn_app_with(backend, |_| {}).await;
    let started = now_ms() - 10 * MINUTE_MS;
    let expired = now_ms() - MINUTE_MS;
    // What a process killed mid-run leaves behind: its lease and its unfinished run.
    app.query(move |conn| {
        conn.batch_execute(&format!(
            "INSERT INTO collector_lease (name, holder, run_id, expires_at) \
             VALUES ('usage_collector', 'killed-instance', 'dead-run', {expired}); \
             INSERT INTO collector_runs (run_id, holder, started_at, status) \
             VALUES ('dead-run', 'killed-instance', {started}, 'running');"
        ))
    })
    .await;
    let run = collect_once(&app).await;
    assert_ne!(run.run_id, "dead-run");
    let runs = all_runs(&app).await;
    let dead = runs
        .iter()
        .find(|r| r.run_id == "dead-run")
        .expect("dead run");
    assert_eq!(dead.status, "abandoned", "{backend:?}");
    let lease = app
        .query(|conn| collector::find_lease(conn, collector::LEASE_NAME))
        .await;
    assert_eq!(lease, None, "{backend:?}");
}

#[actix_web::test]
async fn collecting_twice_leaves_the_usage_totals_alone() {
    collecting_twice_leaves_the_usage_totals_alone_on(Backend::Sqlite).await;
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn collecting_twice_leaves_the_usage_totals_alone_postgres() {
    require_postgres();
    collecting_twice_leaves_the_usage_totals_alone_on(Backend::Postgres).await;
}

async fn collecting_twice_leaves_the_usage_totals_alone_on(backend: Backend) {
    let app = spawn_app_with(backend, |_| {}).await;
    let now = now_ms();
    let old = (now - 2 * HOUR_MS).div_euclid(MINUTE_MS) * MINUTE_MS;
    let outcomes = [
        "ok",
        "upstream_error",
        "cancelled",
        "ok",
        "upstream_timeout",
    ];
    app.query(move |conn| {
        // Flushed (and so counted) rows over three minutes and two models.
        let flushed: Vec<RequestRow> = (0..30)
            .map(|i| {
                let model = if i % 2 == 0 { "echo" } else { "small" };
                let outcome = outcomes[i as usize % outcomes.len()];
                raw(format!("f{i}"), model, old + i * 6_000, outcome)
            })
            .collect();
        insert_flushed(conn, &flushed)
    })
    .await;
    let before = app.query(rollup_totals).await;
    assert_eq!((before.0, before.1), (30, 12), "{backend:?}");
    for _ in 0..2 {
        let run = collect_once(&app).await;
        // Nothing is past the 7-day retention and nothing is left to fold.
        assert_eq!(
            (run.processed, run.stored, run.skipped),
            (0, 0, 0),
            "{backend:?}"
        );
        let totals = app.query(rollup_totals).await;
        assert_eq!(totals, before, "{backend:?}: nothing counted twice");
        let raw_rows = app.query(usage::count_requests).await;
        assert_eq!(raw_rows, 30, "{backend:?}");
    }
}

#[actix_web::test]
async fn retention_prunes_sessions_that_ended_before_the_raw_retention() {
    retention_prunes_sessions_that_ended_before_the_raw_retention_on(Backend::Sqlite).await;
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn retention_prunes_sessions_that_ended_before_the_raw_retention_postgres() {
    require_postgres();
    retention_prunes_sessions_that_ended_before_the_raw_retention_on(Backend::Postgres).await;
}

async fn retention_prunes_sessions_that_ended_before_the_raw_retention_on(backend: Backend) {
    let app = spawn_app_with(backend, |s| s.collector.raw_retention_secs = 3_600).await;
    let now = now_ms();
    app.query(move |conn| {
        let session = |id: &str, ended_at: Option<i64>| SessionRow {
            id: id.into(),
            user_id: "alice".into(),
            started_at: now - 5 * HOUR_MS,
            ended_at,
            messages: 1,
            avg_response_ms: None,
        };
        sessions::upsert_sessions(
            conn,
            &[
                session("ended-2h-ago", Some(now - 2 * HOUR_MS)),
                session("ended-10min-ago", Some(now - 10 * MINUTE_MS)),
                session("still-open", None),
            ],
        )
    })
    .await;
    let run = collect_once(&app).await;
    assert_eq!(run.processed, 1, "{backend:?}: {run:?}");
    let kept: Vec<String> = app
        .query(|conn| {
            schema::sessions::table
                .select(schema::sessions::id)
                .order(schema::sessions::id)
                .load(conn)
        })
        .await;
    assert_eq!(kept, ["ended-10min-ago", "still-open"], "{backend:?}");
}

#[actix_web::test]
async fn retention_deletes_old_raw_rows_and_prunes_old_quota_days() {
    retention_deletes_old_raw_rows_and_prunes_old_quota_days_on(Backend::Sqlite).await;
}

#[actix_web::test]
#[ignore = "needs TEST_POSTGRES_URL"]
async fn retention_deletes_old_raw_rows_and_prunes_old_quota_days_postgres() {
    require_postgres();
    retention_deletes_old_raw_rows_and_prunes_old_quota_days_on(Backend::Postgres).await;
}

async fn retention_deletes_old_raw_rows_and_prunes_old_quota_days_on(backend: Backend) {
    let app = spawn_app_with(backend, |s| {
        s.collector.raw_retention_secs = 3_600;
        s.collector.quota_retention_days = 35;
    })
    .await;
    let now = now_ms();
    let today = chrono::Utc::now().date_naive();
    let day = |back: u64| {
        today
            .checked_sub_days(chrono::Days::new(back))
            .expect("day")
            .format("%Y-%m-%d")
            .to_string()
    };
    let days: Vec<String> = [0, 10, 35, 36, 40].into_iter().map(day).collect();
    let seeded_days = days.clone();
    app.query(move |conn| {
        insert_flushed(
            conn,
            &[
                raw("old-flushed".into(), "echo", now - 2 * HOUR_MS, "ok"),
                raw("new-flushed".into(), "echo", now - 10 * MINUTE_MS, "ok"),
            ],
        )?;
        users::insert_user_if_missing(conn, "alice", now)?;
        for day in &seeded_days {
            diesel::insert_into(quota_usage::table)
                .values((
                    quota_usage::user_id.eq("alice"),
                    quota_usage::day.eq(day),
                    quota_usage::used.eq(3i64),
                ))
                .execute(conn)?;
        }
        usage::claim_batch(conn, "old-batch", now - 2 * 24 * HOUR_MS)?;
        usage::claim_batch(conn, "new-batch", now)?;
        Ok(())
    })
    .await;

    collect_once(&app).await;
    let (ids, kept_days, batches, rollups) = app
        .query(|conn| {
            let ids: Vec<String> = request_log::table
                .select(request_log::id)
                .order(request_log::id)
                .load(conn)?;
            let kept_days: Vec<String> = quota_usage::table
                .select(quota_usage::day)
                .order(quota_usage::day.desc())
                .load(conn)?;
            let batches: Vec<String> = flush_batches::table.select(flush_batches::id).load(conn)?;
            Ok((ids, kept_days, batches, rollup_totals(conn)?))
        })
        .await;
    assert_eq!(ids, ["new-flushed"], "{backend:?}");
    assert_eq!(rollups.0, 2, "{backend:?}: deleted rows stay counted");
    assert_eq!(kept_days, days[..3], "{backend:?}: 35 days back are kept");
    assert_eq!(batches, ["new-batch"], "{backend:?}");
}

#[actix_web::test]
async fn runs_are_listed_newest_first_page_by_page() {
    let app = spawn_app_with(Backend::Sqlite, |_| {}).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(collect_once(&app).await.run_id);
    }
    ids.reverse();
    let token = app.admin_token("ops");
    let mut listed = Vec::new();
    let mut path = "/admin/usage/collect/runs?limit=1".to_string();
    loop {
        let (status, body) = app.get(&path, Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        let items = body["items"].as_array().expect("items");
        assert_eq!(items.len(), 1, "{body}");
        let item = &items[0];
        for field in [
            "processed",
            "stored",
            "skipped",
            "duration_ms",
            "lock_wait_ms",
        ] {
            assert!(item[field].is_i64(), "{field}: {item}");
        }
        assert_eq!(item["status"], "ok");
        for field in ["started_at", "finished_at"] {
            let text = item[field].as_str().expect("time");
            chrono::DateTime::parse_from_rfc3339(text).expect("RFC 3339");
        }
        listed.push(item["run_id"].as_str().expect("run_id").to_string());
        match body["next_cursor"].as_str() {
            Some(cursor) => path = format!("/admin/usage/collect/runs?limit=1&cursor={cursor}"),
            None => {
                assert!(body["next_cursor"].is_null(), "{body}");
                break;
            }
        }
    }
    assert_eq!(listed, ids, "newest first, each once");
    let (status, body) = app.get("/admin/usage/collect/runs", Some(&token)).await;
    assert_eq!(
        (status, body["items"].as_array().map(Vec::len)),
        (200, Some(3))
    );
    assert!(body["next_cursor"].is_null());

    for bad in ["limit=0", "limit=1001", "limit=abc", "cursor=not-a-cursor"] {
        let (status, body) = app
            .get(&format!("/admin/usage/collect/runs?{bad}"), Some(&token))
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}");
    }
    let user = app.user_token("alice");
    assert_eq!(
        app.get("/admin/usage/collect/runs", Some(&user)).await.0,
        403
    );
    assert_eq!(app.get("/admin/usage/collect/runs", None).await.0, 401);
    assert_eq!(post_collect(&app, &user).await.0, 403);
}
