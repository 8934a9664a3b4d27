//! The usage collector: folds raw request rows the rollups do not count yet, deletes raw rows
//! past retention and prunes old quota rows. One run at a time across every instance, through
//! a lease row in the database. Runs start on an admin's request (`StartCollection`) or on the
//! timer; each is recorded in `collector_runs` and logged as one `event=collector_run` line.
//!
//! A run holds the lease from `begin` to `finish`, renewing it every third of its TTL while the
//! work runs on the blocking pool. Whatever the work does — succeed, fail, or panic (the
//! blocking pool turns a panic into an error) — the run is finished and the lease released. If
//! the process dies instead, the lease simply expires and the next run takes it over.

use std::rc::Rc;
use std::time::Duration;

use actix::clock::Instant;
use actix::prelude::*;
use chrono::{DateTime, Days};
use futures_util::future::LocalBoxFuture;

use crate::config::CollectorSettings;
use crate::db::models::CollectorRunRow;
use crate::db::queries::collector::{
    self as queries, status, BeginRun, Begun, CollectPlan, CollectReport, RunFinish,
};
use crate::db::{DbError, DbPool};
use crate::domain::QuotaDay;
use crate::error::AppError;

/// Starts a run unless one is running on any instance. Answers with the run's id as soon as
/// the lease is taken; the work goes on in the background.
#[derive(Message)]
#[rtype(result = "Result<String, AppError>")]
pub struct StartCollection;

/// Flush batch ids only have to outlive a retried batch (see `DbFlusher`).
const BATCH_LEDGER_KEEP_MS: i64 = 24 * 3600 * 1000;

/// Where runs are coordinated and done. The real one is the database (each call on the
/// blocking pool); actor tests substitute their own.
pub trait CollectorStore: 'static {
    fn begin(&self, req: BeginRun) -> LocalBoxFuture<'static, Result<Begun, DbError>>;
    fn renew(&self, run_id: String, ttl_ms: i64) -> LocalBoxFuture<'static, Result<bool, DbError>>;
    fn collect(&self, plan: CollectPlan)
        -> LocalBoxFuture<'static, Result<CollectReport, DbError>>;
    fn finish(
        &self,
        fin: RunFinish,
    ) -> LocalBoxFuture<'static, Result<Option<CollectorRunRow>, DbError>>;
}

pub struct DbCollectorStore {
    pub db: DbPool,
}

impl CollectorStore for DbCollectorStore {
    fn begin(&self, req: BeginRun) -> LocalBoxFuture<'static, Result<Begun, DbError>> {
        let db = self.db.clone();
        Box::pin(async move { db.run(move |conn| queries::begin_run(conn, &req)).await })
    }

    fn renew(&self, run_id: String, ttl_ms: i64) -> LocalBoxFuture<'static, Result<bool, DbError>> {
        let db = self.db.clone();
        Box::pin(async move {
            db.run(move |conn| queries::renew_lease(conn, queries::LEASE_NAME, &run_id, ttl_ms))
                .await
        })
    }

    fn collect(
        &self,
        plan: CollectPlan,
    ) -> LocalBoxFuture<'static, Result<CollectReport, DbError>> {
        let db = self.db.clone();
        Box::pin(async move { db.run(move |conn| queries::collect(conn, &plan)).await })
    }

    fn finish(
        &self,
        fin: RunFinish,
    ) -> LocalBoxFuture<'static, Result<Option<CollectorRunRow>, DbError>> {
        let db = self.db.clone();
        Box::pin(async move { db.run(move |conn| queries::end_run(conn, &fin)).await })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    Manual,
    Timer,
}

impl Trigger {
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Manual => "manual",
            Trigger::Timer => "timer",
        }
    }
}

/// A run that holds the lease, from the moment it was taken until it is released.
#[derive(Clone, Debug)]
pub struct ActiveRun {
    pub run_id: String,
    pub trigger: Trigger,
    /// Database clock, epoch ms.
    pub started_at_ms: i64,
    /// How long taking the lease took (pool, locks, retries).
    pub lease_wait_ms: i64,
    pub began: Instant,
}

/// What the run log line says about one finished run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunSummary {
    pub run_id: String,
    pub trigger: Trigger,
    pub status: &'static str,
    pub processed: i64,
    pub stored: i64,
    pub skipped: i64,
    pub duration_ms: i64,
    pub lock_wait_ms: i64,
    pub raw_deleted: i64,
    pub quota_pruned: i64,
    pub error: Option<String>,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "event=collector_run run_id={} status={} processed={} stored={} skipped={} \
             duration_ms={} lock_wait_ms={} trigger={} raw_deleted={} quota_pruned={}",
            self.run_id,
            self.status,
            self.processed,
            self.stored,
            self.skipped,
            self.duration_ms,
            self.lock_wait_ms,
            self.trigger.as_str(),
            self.raw_deleted,
            self.quota_pruned,
        )?;
        if let Some(error) = &self.error {
            // Debug-quoted so the line stays one line and parseable.
            write!(f, " error={error:?}")?;
        }
        Ok(())
    }
}

/// The cutoffs of a run that started at `started_at_ms` (database clock).
pub fn plan_at(started_at_ms: i64, settings: &CollectorSettings) -> CollectPlan {
    let secs_ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let keep_quota_from_day = DateTime::from_timestamp_millis(started_at_ms)
        .and_then(|now| now.checked_sub_days(Days::new(settings.quota_retention_days.into())))
        .map(|day| QuotaDay::of(day).as_key())
        // A start outside chrono's range cannot happen with a sane clock; prune nothing then.
        .unwrap_or_else(|| "0000-01-01".to_string());
    CollectPlan {
        fold_before_ms: started_at_ms.saturating_sub(secs_ms(settings.fold_age_secs)),
        delete_raw_before_ms: started_at_ms.saturating_sub(secs_ms(settings.raw_retention_secs)),
        keep_quota_from_day,
        forget_batches_before_ms: started_at_ms.saturating_sub(BATCH_LEDGER_KEEP_MS),
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn already_running(run_id: String) -> AppError {
    AppError::AlreadyRunning {
        message: "a usage collection is already running; wait for it to finish".into(),
        run_id,
    }
}

/// Everything the collector decides, without actix: which run this instance has going, what
/// to ask the store, and what a finished run amounts to.
pub struct CollectorState {
    holder: String,
    settings: CollectorSettings,
    running: Option<String>,
}

impl CollectorState {
    pub fn new(holder: String, settings: CollectorSettings) -> CollectorState {
        CollectorState {
            holder,
            settings,
            running: None,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.settings.interval_secs)
    }

    pub fn lease_ttl_ms(&self) -> i64 {
        i64::try_from(self.settings.lease_secs.saturating_mul(1000)).unwrap_or(i64::MAX)
    }

    /// Three renewals per TTL, so two can fail in a row before the lease lapses.
    pub fn renew_every(&self) -> Duration {
        Duration::from_millis(self.settings.lease_secs.saturating_mul(1000) / 3).max(
            // Never a zero period, whatever the settings say.
            Duration::from_millis(1),
        )
    }

    /// The run this instance holds the lease for, if any.
    pub fn running(&self) -> Option<&str> {
        self.running.as_deref()
    }

    pub fn begin_request(&self, trigger: Trigger) -> BeginRun {
        BeginRun {
            holder: self.holder.clone(),
            run_id: uuid::Uuid::new_v4().to_string(),
            lease_ttl_ms: self.lease_ttl_ms(),
            // Nine tenths: a timer that fires a little early still runs once per interval.
            min_gap_ms: match trigger {
                Trigger::Manual => None,
                Trigger::Timer => Some(millis(self.interval()) / 10 * 9),
            },
        }
    }

    /// The lease was taken: remember the run and return its cutoffs.
    pub fn started(&mut self, run: &ActiveRun) -> CollectPlan {
        self.running = Some(run.run_id.clone());
        plan_at(run.started_at_ms, &self.settings)
    }

    /// The work ended: what to record for it.
    pub fn outcome(&self, run: &ActiveRun, result: &Result<CollectReport, DbError>) -> RunFinish {
        let (report, status, error) = match result {
            Ok(report) => (report.clone(), status::OK, None),
            // The blocking pool reports a panicking task this way.
            Err(DbError::Canceled) => (
                CollectReport::default(),
                status::ERROR,
                Some(
                    "the run stopped unexpectedly (it panicked); the server log has details".into(),
                ),
            ),
            Err(err) => (
                CollectReport::default(),
                status::ERROR,
                Some(err.to_string()),
            ),
        };
        RunFinish {
            run_id: run.run_id.clone(),
            processed: report.processed,
            stored: report.stored,
            skipped: report.skipped,
            lock_wait_ms: run.lease_wait_ms.saturating_add(report.lock_wait_ms),
            status,
            error,
        }
    }

    /// The run is finished and its lease released (or left to expire).
    pub fn ended(&mut self, run_id: &str) {
        if self.running.as_deref() == Some(run_id) {
            self.running = None;
        }
    }
}

pub struct Collector {
    state: CollectorState,
    store: Rc<dyn CollectorStore>,
}

impl Collector {
    pub fn new(holder: String, settings: CollectorSettings, store: Rc<dyn CollectorStore>) -> Self {
        Collector {
            state: CollectorState::new(holder, settings),
            store,
        }
    }

    /// Takes the lease and launches the work. `Ok(None)`: a timer run found a recent run.
    fn start_run(
        &mut self,
        trigger: Trigger,
    ) -> ResponseActFuture<Self, Result<Option<String>, AppError>> {
        if let Some(run_id) = self.state.running() {
            return Box::pin(fut::ready(Err(already_running(run_id.to_string()))));
        }
        let req = self.state.begin_request(trigger);
        let asked = Instant::now();
        let begin = self.store.begin(req.clone());
        Box::pin(
            begin
                .into_actor(self)
                .map(move |result, act, ctx| match result {
                    Ok(Begun::Started { started_at }) => {
                        let run = ActiveRun {
                            run_id: req.run_id.clone(),
                            trigger,
                            started_at_ms: started_at,
                            lease_wait_ms: millis(asked.elapsed()),
                            began: asked,
                        };
                        act.launch(run, ctx);
                        Ok(Some(req.run_id))
                    }
                    Ok(Begun::Held { run_id }) => Err(already_running(run_id)),
                    Ok(Begun::NotDue { last_started_at }) => {
                        log::debug!("event=collector_not_due last_started_at={last_started_at}");
                        Ok(None)
                    }
                    Err(err) => Err(AppError::from(err)),
                }),
        )
    }

    fn launch(&mut self, run: ActiveRun, ctx: &mut Context<Self>) {
        let plan = self.state.started(&run);
        log::info!(
            "event=collector_run_started run_id={} trigger={} holder={} fold_before_ms={} \
             delete_raw_before_ms={} keep_quota_from_day={}",
            run.run_id,
            run.trigger.as_str(),
            self.state.holder,
            plan.fold_before_ms,
            plan.delete_raw_before_ms,
            plan.keep_quota_from_day
        );
        let ttl_ms = self.state.lease_ttl_ms();
        let renewing = run.run_id.clone();
        let renewal = ctx.run_interval(self.state.renew_every(), move |act, ctx| {
            let run_id = renewing.clone();
            let renew = act.store.renew(run_id.clone(), ttl_ms);
            ctx.spawn(renew.into_actor(act).map(move |result, _, _| match result {
                Ok(true) => log::debug!("event=collector_lease_renewed run_id={run_id}"),
                // Only after the lease expired and another run took it: that run's work and
                // this one serialise in the database, and folding is idempotent.
                Ok(false) => log::warn!("event=collector_lease_lost run_id={run_id}"),
                Err(err) => log::warn!("event=collector_renew_failed run_id={run_id} error={err}"),
            }));
        });
        let work = self.store.collect(plan);
        ctx.spawn(work.into_actor(self).then(move |result, act, ctx| {
            ctx.cancel_future(renewal);
            if let Err(err) = &result {
                log::warn!(
                    "event=collector_work_failed run_id={} error={err}",
                    run.run_id
                );
            }
            let fin = act.state.outcome(&run, &result);
            let report = result.unwrap_or_default();
            act.store
                .finish(fin.clone())
                .into_actor(act)
                .map(move |finished, act, _| {
                    act.state.ended(&run.run_id);
                    let duration_ms = match &finished {
                        Ok(Some(row)) => row.duration_ms.unwrap_or(0),
                        _ => millis(run.began.elapsed()),
                    };
                    if let Err(err) = &finished {
                        // The lease expires on its own after its TTL; the run row stays
                        // `running` until the next run marks it abandoned.
                        log::error!(
                            "event=collector_release_failed run_id={} error={err}",
                            run.run_id
                        );
                    }
                    let summary = RunSummary {
                        run_id: run.run_id.clone(),
                        trigger: run.trigger,
                        status: fin.status,
                        processed: fin.processed,
                        stored: fin.stored,
                        skipped: fin.skipped,
                        duration_ms,
                        lock_wait_ms: fin.lock_wait_ms,
                        raw_deleted: report.raw_deleted,
                        quota_pruned: report.quota_pruned,
                        error: fin.error.clone(),
                    };
                    if fin.status == status::OK {
                        log::info!("{summary}");
                    } else {
                        log::warn!("{summary}");
                    }
                })
        }));
    }

    fn run_due(&mut self, ctx: &mut Context<Self>) {
        if let Some(run_id) = self.state.running() {
            log::debug!("event=collector_timer_skipped reason=running run_id={run_id}");
            return;
        }
        ctx.spawn(
            self.start_run(Trigger::Timer)
                .map(|result, _, _| match result {
                    Ok(_) => {}
                    Err(AppError::AlreadyRunning { run_id, .. }) => {
                        log::debug!("event=collector_timer_skipped reason=held run_id={run_id}")
                    }
                    Err(err) => {
                        log::warn!("event=collector_start_failed trigger=timer error={err}")
                    }
                }),
        );
    }
}

impl Actor for Collector {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        ctx.set_mailbox_capacity(256);
        ctx.run_interval(self.state.interval(), |act, ctx| act.run_due(ctx));
        log::info!(
            "event=actor_started actor=collector holder={} interval_secs={} lease_secs={}",
            self.state.holder,
            self.state.settings.interval_secs,
            self.state.settings.lease_secs
        );
    }
}

impl Handler<StartCollection> for Collector {
    type Result = ResponseActFuture<Self, Result<String, AppError>>;

    fn handle(&mut self, _: StartCollection, _: &mut Context<Self>) -> Self::Result {
        Box::pin(self.start_run(Trigger::Manual).map(|result, _, _| {
            result?.ok_or_else(|| AppError::internal("a manual collection was refused as not due"))
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    use chrono::TimeZone;
    use tokio::sync::oneshot;

    use crate::db::{DatabaseUrl, PoolSettings};

    type WorkEnd = oneshot::Sender<Result<CollectReport, DbError>>;

    /// A scripted store. It records every call, answers `begin` as told, and leaves each run's
    /// work pending until the test ends it. The RefCells are the test's own ledger (one
    /// thread), not shared application state.
    #[derive(Default)]
    struct FakeStore {
        begins: RefCell<Vec<BeginRun>>,
        held_by: RefCell<Option<String>>,
        renewals: RefCell<usize>,
        work: RefCell<Vec<WorkEnd>>,
        finished: RefCell<Vec<RunFinish>>,
        /// When set, the work runs on this real pool and panics there.
        panic_on: Option<DbPool>,
    }

    impl CollectorStore for Rc<FakeStore> {
        fn begin(&self, req: BeginRun) -> LocalBoxFuture<'static, Result<Begun, DbError>> {
            self.begins.borrow_mut().push(req);
            let answer = match self.held_by.borrow().clone() {
                Some(run_id) => Begun::Held { run_id },
                None => Begun::Started { started_at: 1_000 },
            };
            Box::pin(async move { Ok(answer) })
        }

        fn renew(&self, _: String, _: i64) -> LocalBoxFuture<'static, Result<bool, DbError>> {
            *self.renewals.borrow_mut() += 1;
            Box::pin(async { Ok(true) })
        }

        fn collect(
            &self,
            _: CollectPlan,
        ) -> LocalBoxFuture<'static, Result<CollectReport, DbError>> {
            if let Some(pool) = self.panic_on.clone() {
                return Box::pin(async move {
                    pool.run(|_| -> diesel::QueryResult<CollectReport> {
                        panic!("injected panic in the collector's blocking work")
                    })
                    .await
                });
            }
            let (tx, rx) = oneshot::channel();
            self.work.borrow_mut().push(tx);
            Box::pin(async move { rx.await.unwrap_or(Err(DbError::Canceled)) })
        }

        fn finish(
            &self,
            fin: RunFinish,
        ) -> LocalBoxFuture<'static, Result<Option<CollectorRunRow>, DbError>> {
            self.finished.borrow_mut().push(fin);
            Box::pin(async { Ok(None) })
        }
    }

    impl FakeStore {
        fn end_work(&self, result: Result<CollectReport, DbError>) {
            let tx = self.work.borrow_mut().remove(0);
            let _ = tx.send(result);
        }
    }

    fn settings(interval_secs: u64, lease_secs: u64) -> CollectorSettings {
        CollectorSettings {
            interval_secs,
            fold_age_secs: 300,
            raw_retention_secs: 7 * 24 * 3600,
            quota_retention_days: 35,
            lease_secs,
        }
    }

    fn start(store: &Rc<FakeStore>, settings: CollectorSettings) -> Addr<Collector> {
        Collector::new("test-holder".into(), settings, Rc::new(store.clone())).start()
    }

    /// Lets the actor run until `done` holds (no timers involved, so no clock needed).
    async fn until(what: &str, done: impl Fn() -> bool) {
        for _ in 0..10_000 {
            if done() {
                return;
            }
            tokio::task::yield_now().await;
        }
        panic!("never happened: {what}");
    }

    fn run_id_of_refusal(result: Result<String, AppError>) -> String {
        match result {
            Err(AppError::AlreadyRunning { run_id, .. }) => run_id,
            other => panic!("expected already_running, got {other:?}"),
        }
    }

    #[test]
    fn plan_cutoffs_follow_the_settings() {
        let start = chrono::Utc
            .with_ymd_and_hms(2026, 3, 10, 0, 0, 30)
            .single()
            .expect("time")
            .timestamp_millis();
        let plan = plan_at(start, &settings(3600, 60));
        assert_eq!(plan.fold_before_ms, start - 300_000);
        assert_eq!(plan.delete_raw_before_ms, start - 7 * 24 * 3_600_000);
        assert_eq!(plan.forget_batches_before_ms, start - 24 * 3_600_000);
        // 35 days back from 2026-03-10 (a UTC day, like the quota's own key).
        assert_eq!(plan.keep_quota_from_day, "2026-02-03");
    }

    #[test]
    fn only_timer_runs_ask_for_a_gap_since_the_last_run() {
        let state = CollectorState::new("h".into(), settings(3600, 60));
        assert_eq!(state.begin_request(Trigger::Manual).min_gap_ms, None);
        let timer = state.begin_request(Trigger::Timer);
        assert_eq!(timer.min_gap_ms, Some(3_240_000));
        assert_eq!((timer.holder.as_str(), timer.lease_ttl_ms), ("h", 60_000));
        assert_ne!(timer.run_id, state.begin_request(Trigger::Timer).run_id);
        assert_eq!(state.renew_every(), Duration::from_secs(20));
    }

    #[test]
    fn the_run_line_carries_every_recorded_field() {
        let summary = RunSummary {
            run_id: "r1".into(),
            trigger: Trigger::Timer,
            status: status::ERROR,
            processed: 7,
            stored: 3,
            skipped: 4,
            duration_ms: 12,
            lock_wait_ms: 2,
            raw_deleted: 1,
            quota_pruned: 0,
            error: Some("database is locked\nagain".into()),
        };
        assert_eq!(
            summary.to_string(),
            "event=collector_run run_id=r1 status=error processed=7 stored=3 skipped=4 \
             duration_ms=12 lock_wait_ms=2 trigger=timer raw_deleted=1 quota_pruned=0 \
             error=\"database is locked\\nagain\""
        );
    }

    #[actix::test]
    async fn a_running_run_refuses_others_until_it_is_finished_and_released() {
        let store = Rc::new(FakeStore::default());
        let collector = start(&store, settings(3600, 60));
        let first = collector
            .send(StartCollection)
            .await
            .expect("mailbox")
            .expect("started");
        let second = collector.send(StartCollection).await.expect("mailbox");
        assert_eq!(run_id_of_refusal(second), first);
        assert_eq!(
            store.begins.borrow().len(),
            1,
            "refused locally, no DB trip"
        );
        assert_eq!(store.begins.borrow()[0].min_gap_ms, None);

        store.end_work(Ok(CollectReport {
            processed: 5,
            stored: 3,
            skipped: 2,
            lock_wait_ms: 4,
            ..CollectReport::default()
        }));
        until("the run is finished", || store.finished.borrow().len() == 1).await;
        let fin = store.finished.borrow()[0].clone();
        assert_eq!((fin.run_id.as_str(), fin.status), (first.as_str(), "ok"));
        assert_eq!((fin.processed, fin.stored, fin.skipped), (5, 3, 2));
        assert!(fin.lock_wait_ms >= 4 && fin.error.is_none(), "{fin:?}");

        let third = collector
            .send(StartCollection)
            .await
            .expect("mailbox")
            .expect("started again");
        assert_ne!(third, first);
    }

    #[actix::test]
    async fn a_lease_held_elsewhere_is_refused_with_the_holders_run_id() {
        let store = Rc::new(FakeStore::default());
        *store.held_by.borrow_mut() = Some("their-run".into());
        let collector = start(&store, settings(3600, 60));
        let result = collector.send(StartCollection).await.expect("mailbox");
        assert_eq!(run_id_of_refusal(result), "their-run");
        assert!(store.finished.borrow().is_empty(), "nothing to finish");
    }

    #[actix::test]
    async fn a_failed_run_is_finished_as_error_and_released() {
        let store = Rc::new(FakeStore::default());
        let collector = start(&store, settings(3600, 60));
        let run_id = collector
            .send(StartCollection)
            .await
            .expect("mailbox")
            .expect("started");
        store.end_work(Err(DbError::Query(diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::CheckViolation,
            Box::new("check failed".to_string()),
        ))));
        until("the run is finished", || store.finished.borrow().len() == 1).await;
        let fin = store.finished.borrow()[0].clone();
        assert_eq!(
            (fin.run_id.as_str(), fin.status),
            (run_id.as_str(), "error")
        );
        assert!(
            fin.error
                .as_deref()
                .is_some_and(|e| e.contains("check failed")),
            "{fin:?}"
        );
        collector
            .send(StartCollection)
            .await
            .expect("mailbox")
            .expect("the next run starts");
    }

    #[actix::test]
    async fn a_panicking_run_is_finished_as_error_and_released() {
        let pool = DbPool::new(
            &DatabaseUrl::parse(":memory:"),
            &PoolSettings {
                max_size: 1,
                connection_timeout: Duration::from_secs(5),
                retry: Default::default(),
            },
        );
        let store = Rc::new(FakeStore {
            panic_on: Some(pool),
            ..FakeStore::default()
        });
        let collector = start(&store, settings(3600, 60));
        let run_id = collector
            .send(StartCollection)
            .await
            .expect("mailbox")
            .expect("started");
        for _ in 0..500 {
            if !store.finished.borrow().is_empty() {
                break;
            }
            actix::clock::sleep(Duration::from_millis(10)).await;
        }
        let fin = store.finished.borrow().first().cloned().expect("finished");
        assert_eq!(
            (fin.run_id.as_str(), fin.status),
            (run_id.as_str(), "error")
        );
        assert!(
            fin.error.as_deref().is_some_and(|e| e.contains("panicked")),
            "{fin:?}"
        );
        // The actor survived and no longer counts the run as its own.
        assert!(collector
            .send(StartCollection)
            .await
            .expect("mailbox")
            .is_ok());
    }

    #[actix::test]
    async fn the_lease_is_renewed_while_the_work_runs_and_not_after() {
        tokio::time::pause();
        let store = Rc::new(FakeStore::default());
        let collector = start(&store, settings(3600, 3));
        collector
            .send(StartCollection)
            .await
            .expect("mailbox")
            .expect("started");
        for _ in 0..7 {
            tokio::time::advance(Duration::from_millis(500)).await;
            tokio::task::yield_now().await;
        }
        let renewed = *store.renewals.borrow();
        assert_eq!(renewed, 3, "one renewal per second (a third of 3 s)");
        store.end_work(Ok(CollectReport::default()));
        until("the run is finished", || store.finished.borrow().len() == 1).await;
        for _ in 0..10 {
            tokio::time::advance(Duration::from_millis(500)).await;
            tokio::task::yield_now().await;
        }
        assert_eq!(
            *store.renewals.borrow(),
            renewed,
            "no renewal after the end"
        );
    }

    #[actix::test]
    async fn the_timer_tries_a_run_each_interval_through_the_lease() {
        tokio::time::pause();
        let store = Rc::new(FakeStore::default());
        let _collector = start(&store, settings(10, 60));
        tokio::task::yield_now().await;
        assert!(
            store.begins.borrow().is_empty(),
            "nothing before the first tick"
        );
        tokio::time::advance(Duration::from_millis(10_100)).await;
        until("the timer asked for the lease", || {
            store.begins.borrow().len() == 1
        })
        .await;
        assert_eq!(store.begins.borrow()[0].min_gap_ms, Some(9_000));
        // While its run lasts, the next tick does not ask again.
        tokio::time::advance(Duration::from_secs(10)).await;
        for _ in 0..100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(store.begins.borrow().len(), 1);
        store.end_work(Ok(CollectReport::default()));
        until("the run is finished", || store.finished.borrow().len() == 1).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        until("the next tick asked again", || {
            store.begins.borrow().len() == 2
        })
        .await;
    }
}
