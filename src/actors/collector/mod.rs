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
mod tests;
