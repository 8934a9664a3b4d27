use super::*;
use crate::db::models::RequestRow;
use crate::db::queries::usage;
use crate::db::schema::{quota_usage, request_log, sessions};
use crate::db::{migrations, DatabaseUrl, DbConnectionManager};
use diesel::connection::SimpleConnection;
use diesel::r2d2::ManageConnection;

fn sqlite() -> DbConnection {
    let mut conn = DbConnectionManager::new(DatabaseUrl::parse(":memory:"))
        .connect()
        .expect("open in-memory SQLite");
    migrations::run_pending(&mut conn).expect("migrate");
    conn
}

fn begin(run_id: &str, holder: &str) -> BeginRun {
    BeginRun {
        holder: holder.into(),
        run_id: run_id.into(),
        lease_ttl_ms: 60_000,
        min_gap_ms: None,
    }
}

fn finish(run_id: &str) -> RunFinish {
    RunFinish {
        run_id: run_id.into(),
        processed: 0,
        stored: 0,
        skipped: 0,
        lock_wait_ms: 0,
        status: status::OK,
        error: None,
    }
}

fn raw(id: &str, model: &str, started_at: i64, outcome: &str) -> RequestRow {
    RequestRow {
        id: id.into(),
        user_id: "u".into(),
        session_id: None,
        model: model.into(),
        started_at,
        latency_ms: 10,
        tokens_in: 2,
        tokens_out: 3,
        estimated: false,
        outcome: outcome.into(),
    }
}

#[test]
fn a_live_lease_is_exclusive_and_a_released_one_is_free() {
    let mut conn = sqlite();
    assert!(matches!(
        begin_run(&mut conn, &begin("r1", "a")),
        Ok(Begun::Started { .. })
    ));
    assert_eq!(
        begin_run(&mut conn, &begin("r2", "b")).expect("begin"),
        Begun::Held {
            run_id: "r1".into()
        }
    );
    // Repeating the holder's own attempt is harmless (a retry after a lost commit ack).
    assert!(matches!(
        begin_run(&mut conn, &begin("r1", "a")),
        Ok(Begun::Started { .. })
    ));
    let row = end_run(&mut conn, &finish("r1"))
        .expect("end")
        .expect("row");
    assert_eq!(row.status, "ok");
    assert!(row.finished_at.is_some_and(|f| f >= row.started_at));
    assert_eq!(find_lease(&mut conn, LEASE_NAME).expect("lease"), None);
    assert!(matches!(
        begin_run(&mut conn, &begin("r2", "b")),
        Ok(Begun::Started { .. })
    ));
}

#[test]
fn an_expired_lease_is_taken_over_and_its_run_marked_abandoned() {
    let mut conn = sqlite();
    conn.batch_execute(
        "INSERT INTO collector_lease VALUES ('usage_collector', 'dead', 'old', 1000); \
         INSERT INTO collector_runs (run_id, holder, started_at, status) \
         VALUES ('old', 'dead', 500, 'running');",
    )
    .expect("seed");
    assert!(matches!(
        begin_run(&mut conn, &begin("new", "alive")),
        Ok(Begun::Started { .. })
    ));
    let lease = find_lease(&mut conn, LEASE_NAME)
        .expect("lease")
        .expect("row");
    assert_eq!(
        (lease.holder.as_str(), lease.run_id.as_str()),
        ("alive", "new")
    );
    let runs = list_runs(&mut conn, 10, None).expect("runs");
    let old = runs.iter().find(|r| r.run_id == "old").expect("old run");
    assert_eq!(old.status, status::ABANDONED);
    // The dead holder's late release cannot free the new holder's lease.
    assert!(!release_lease(&mut conn, LEASE_NAME, "old").expect("release"));
    assert!(!renew_lease(&mut conn, LEASE_NAME, "old", 1000).expect("renew"));
    assert!(renew_lease(&mut conn, LEASE_NAME, "new", 1000).expect("renew"));
}

#[test]
fn a_timer_run_is_skipped_when_a_run_started_recently() {
    let mut conn = sqlite();
    begin_run(&mut conn, &begin("r1", "a")).expect("begin");
    end_run(&mut conn, &finish("r1")).expect("end");
    let mut timer = begin("r2", "b");
    timer.min_gap_ms = Some(3_600_000);
    assert!(matches!(
        begin_run(&mut conn, &timer).expect("begin"),
        Begun::NotDue { .. }
    ));
    assert_eq!(
        find_lease(&mut conn, LEASE_NAME).expect("lease"),
        None,
        "a skipped timer run leaves no lease behind"
    );
    timer.min_gap_ms = Some(0);
    assert!(matches!(
        begin_run(&mut conn, &timer).expect("begin"),
        Begun::Started { .. }
    ));
}

#[test]
fn retention_deletes_old_raw_rows_ended_sessions_and_old_quota_days() {
    let mut conn = sqlite();
    usage::insert_requests(
        &mut conn,
        &[
            raw("old", "echo", 1_000, "ok"),
            raw("new", "echo", 9_000_000, "ok"),
        ],
    )
    .expect("insert");
    conn.batch_execute(
        "INSERT INTO users (id, created_at) VALUES ('u', 0); \
         INSERT INTO quota_usage (user_id, day, used) VALUES ('u', '2026-01-01', 1), ('u', '2026-01-02', 1), \
         ('u', '2026-02-10', 1); \
         INSERT INTO sessions (id, user_id, started_at, ended_at) VALUES \
         ('ended-long-ago', 'u', 0, 4000), ('ended-lately', 'u', 0, 6000), \
         ('still-open', 'u', 0, NULL);",
    )
    .expect("seed");
    let plan = CollectPlan {
        delete_raw_before_ms: 5_000,
        keep_quota_from_day: "2026-01-02".into(),
        forget_batches_before_ms: 0,
    };
    let report = collect(&mut conn, &plan).expect("collect");
    assert_eq!(
        (
            report.raw_deleted,
            report.sessions_deleted,
            report.quota_pruned
        ),
        (1, 1, 1)
    );
    assert_eq!((report.processed, report.stored, report.skipped), (2, 0, 0));
    let ids: Vec<String> = request_log::table
        .select(request_log::id)
        .load(&mut conn)
        .expect("ids");
    assert_eq!(ids, ["new"]);
    let kept: Vec<String> = sessions::table
        .select(sessions::id)
        .order(sessions::id)
        .load(&mut conn)
        .expect("sessions");
    assert_eq!(kept, ["ended-lately", "still-open"]);
    let days: Vec<String> = quota_usage::table
        .select(quota_usage::day)
        .order(quota_usage::day)
        .load(&mut conn)
        .expect("days");
    assert_eq!(days, ["2026-01-02", "2026-02-10"]);
}

#[test]
fn runs_are_listed_newest_first_in_pages() {
    let mut conn = sqlite();
    conn.batch_execute(
        "INSERT INTO collector_runs (run_id, holder, started_at, status) VALUES \
         ('a', 'h', 1, 'ok'), ('b', 'h', 2, 'ok'), ('c', 'h', 2, 'ok'), ('d', 'h', 3, 'ok');",
    )
    .expect("seed");
    let mut seen = Vec::new();
    let mut before: Option<(i64, String)> = None;
    loop {
        let page = list_runs(
            &mut conn,
            2,
            before.as_ref().map(|(s, id)| (*s, id.as_str())),
        )
        .expect("page");
        let Some(last) = page.last() else { break };
        before = Some((last.started_at, last.run_id.clone()));
        seen.extend(page.into_iter().map(|r| r.run_id));
    }
    assert_eq!(seen, ["d", "c", "b", "a"]);
}
