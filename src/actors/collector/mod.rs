//! The usage collector: folds raw request rows the rollups do not count yet, deletes raw rows
//! past retention and prunes old quota rows. One run at a time across every instance, through
//! a lease row in the database. Runs start on an admin's request (`StartCollection`) or on the
//! timer; each is recorded in `collector_runs` and logged as one `event=collector_run` line.
//!
//! A run holds the lease from `begin` to `finish`, renewing it every third of its TTL while the
//! work runs on the blocking pool. Whatever the work does — succeed, fail, or panic (the
//! blocking pool turns a panic into an error) — the run is finished and the lease released. If
//! the process dies instead, the lease simply expires and the next run takes it over.

pub mod messages;
pub mod state;
pub mod store;

use std::rc::Rc;

use actix::clock::Instant;
use actix::prelude::*;

pub use messages::StartCollection;
pub use state::{ActiveRun, CollectorState, RunSummary, Trigger};
pub use store::{CollectorStore, DbCollectorStore};

use crate::config::CollectorSettings;
use crate::db::queries::collector::{status, Begun};
use crate::error::AppError;
use state::millis;

fn already_running(run_id: String) -> AppError {
    AppError::AlreadyRunning {
        message: "a usage collection is already running; wait for it to finish".into(),
        run_id,
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
        // Debug: the run's one info line is its `event=collector_run` summary at the end.
        log::debug!(
            "event=collector_run_started run_id={} trigger={} holder={} \
             delete_raw_before_ms={} keep_quota_from_day={}",
            run.run_id,
            run.trigger.as_str(),
            self.state.holder(),
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
                        sessions_deleted: report.sessions_deleted,
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
            self.state.holder(),
            self.state.interval().as_secs(),
            self.state.lease_ttl_ms() / 1000
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
    use std::time::Duration;

    use futures_util::future::LocalBoxFuture;
    use tokio::sync::oneshot;

    use crate::db::models::CollectorRunRow;
    use crate::db::queries::collector::{BeginRun, CollectPlan, CollectReport, RunFinish};
    use crate::db::DbError;

    use crate::db::{DatabaseUrl, DbPool, PoolSettings};

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
