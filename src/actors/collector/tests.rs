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

    fn collect(&self, _: CollectPlan) -> LocalBoxFuture<'static, Result<CollectReport, DbError>> {
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
