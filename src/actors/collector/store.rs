//! Where collector runs are coordinated and done.

use futures_util::future::LocalBoxFuture;

use crate::db::models::CollectorRunRow;
use crate::db::queries::collector::{
    self as queries, BeginRun, Begun, CollectPlan, CollectReport, RunFinish,
};
use crate::db::{DbError, DbPool};

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
