//! `chatgate loadtest`: a load generator in the box, for the gateway's users to check what it
//! holds on their own machines.
//!
//! It is built to saturate a server running on the same few cores, so it has to cost far less
//! than what it drives: a small number of threads (one by default), each running one actix
//! `System` whose connections are lightweight tasks; frames are parsed by borrowing from the
//! received bytes; counters are per thread, so the hot path never contends. The main thread
//! only coordinates: it starts the chat phase once every connection is open (or failed),
//! prints a progress line each second, and merges the threads' tallies into the summary.

mod openai;
mod plan;
mod report;
mod resume;
mod stats;
mod sys;
mod ws;

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Semaphore};

pub use plan::LoadtestArgs;
pub(crate) use plan::{Mode, Plan};
use stats::{Counters, Tally, Totals};

/// Handshakes one thread runs at once while opening: enough to open thousands of connections
/// in seconds, few enough not to overflow the server's accept backlog. Reconnects after a
/// `--drop-rate` drop do not take one (see `ws::resume`).
const CONNECT_CONCURRENCY: usize = 128;

/// How long opening one connection (TCP, upgrade, first frame) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// What the connections of one worker thread share.
pub(crate) struct ThreadContext {
    pub plan: Arc<Plan>,
    counters: Arc<[Counters]>,
    thread: usize,
    pub tally: RefCell<Tally>,
    start: watch::Receiver<Option<Instant>>,
    pub connect_slots: Semaphore,
    /// One client per thread: for HTTP its pool keeps one keep-alive connection per task.
    pub http: awc::Client,
    /// Whether this thread already printed why something failed (once is enough to act on).
    noted: Cell<bool>,
}

impl ThreadContext {
    pub fn counters(&self) -> &Counters {
        &self.counters[self.thread]
    }

    /// Prints the first failure's details; the summary counts them all by code.
    pub fn note_once(&self, detail: &str) {
        if !self.noted.replace(true) {
            progress(&format!("first failure: {detail}"));
        }
    }

    pub fn error(&self, code: &str) {
        self.tally.borrow_mut().error(code);
        Counters::add(&self.counters().errors, 1);
    }

    /// The connection's opening is over (either way): the chat phase may begin once all are.
    pub fn settled(&self, connected: bool) {
        if connected {
            self.tally.borrow_mut().connected += 1;
            Counters::add(&self.counters().open, 1);
        }
        Counters::add(&self.counters().settled, 1);
    }

    pub fn closed(&self) {
        Counters::sub(&self.counters().open, 1);
    }

    /// Waits until the main thread starts the chat phase; returns when that was.
    pub async fn started(&self) -> Instant {
        let mut start = self.start.clone();
        let at = match start.wait_for(Option::is_some).await {
            Ok(at) => *at,
            // The main thread is gone; nothing will coordinate, so go at once.
            Err(_) => None,
        };
        at.unwrap_or_else(Instant::now)
    }
}

pub fn run(args: LoadtestArgs) -> ExitCode {
    let json = args.json;
    let plan = match Plan::from_args(args) {
        Ok(plan) => Arc::new(plan),
        Err(message) => {
            let _ = writeln!(std::io::stderr(), "chatgate loadtest: {message}");
            return ExitCode::from(2);
        }
    };
    match sys::raise_open_file_limit() {
        Ok(limit) if limit < plan.connections + 64 => progress(&format!(
            "warning: the open-file limit is {limit}, too low for {} connections; raise the \
             hard limit (ulimit -Hn) first",
            plan.connections
        )),
        Ok(_) => {}
        Err(err) => progress(&format!("warning: cannot raise the open-file limit: {err}")),
    }
    let cpu_before = sys::process_cpu_secs();

    let counters: Arc<[Counters]> = (0..plan.threads).map(|_| Counters::default()).collect();
    let (start_tx, start_rx) = watch::channel(None::<Instant>);
    let mut workers = Vec::with_capacity(plan.threads as usize);
    for thread in 0..plan.threads {
        let connections: Vec<u64> = (thread..plan.connections)
            .step_by(plan.threads as usize)
            .collect();
        let (plan, counters, start) = (plan.clone(), counters.clone(), start_rx.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("loadtest-{thread}"))
            .spawn(move || worker(plan, counters, thread as usize, start, connections));
        match spawned {
            Ok(handle) => workers.push(handle),
            Err(err) => {
                let _ = writeln!(std::io::stderr(), "chatgate loadtest: no thread: {err}");
                return ExitCode::FAILURE;
            }
        }
    }

    let start = coordinate(&plan, &counters, &start_tx, &workers);
    let mut tally = Tally::default();
    for handle in workers {
        match handle.join() {
            Ok(thread_tally) => tally.merge(thread_tally),
            Err(_) => tally.error("worker_panicked"),
        }
    }
    let end = match plan.mode {
        // Idle holds for exactly the duration; chats run until their last reply ended.
        Mode::Idle => plan.deadline(start).unwrap_or(start).min(Instant::now()),
        _ => tally.last_reply_at.unwrap_or_else(Instant::now).max(start),
    };
    let cpu_secs = match (cpu_before, sys::process_cpu_secs()) {
        (Some(before), Some(after)) => after - before,
        _ => 0.0,
    };
    let summary =
        report::Summary::new(&plan, &tally, Totals::sum(&counters), end - start, cpu_secs);
    let text = if json {
        summary.to_json()
    } else {
        summary.to_text()
    };
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
    if summary.succeeded() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn progress(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// The main thread's part: start the chat phase once every connection has settled, print
/// progress each second, return when the workers are done (with the start of the phase).
fn coordinate(
    plan: &Plan,
    counters: &[Counters],
    start_tx: &watch::Sender<Option<Instant>>,
    workers: &[std::thread::JoinHandle<Tally>],
) -> Instant {
    let launched = Instant::now();
    let mut start: Option<Instant> = None;
    let mut last = (launched, Totals::default());
    let mut next_line = launched + Duration::from_secs(1);
    loop {
        let totals = Totals::sum(counters);
        let finished = workers.iter().all(|w| w.is_finished());
        if start.is_none() && (totals.settled >= plan.connections || finished) {
            let now = Instant::now();
            start = Some(now);
            let _ = start_tx.send(Some(now));
            progress(&format!(
                "opened {}/{} connections in {:.1} s; {}",
                totals.open,
                plan.connections,
                (now - launched).as_secs_f64(),
                match plan.mode {
                    Mode::Idle => "holding them",
                    _ => "chatting",
                }
            ));
            last = (now, totals);
            next_line = now + Duration::from_secs(1);
        }
        if finished {
            return start.unwrap_or(launched);
        }
        let now = Instant::now();
        if now >= next_line {
            let line = match start {
                None => format!(
                    "[connecting] open {}/{}  errors {}",
                    totals.open, plan.connections, totals.errors
                ),
                Some(start) if plan.mode == Mode::Idle => format!(
                    "[{:>4.0}s] open {}  errors {}",
                    (now - start).as_secs_f64(),
                    totals.open,
                    totals.errors
                ),
                Some(start) => {
                    let secs = (now - last.0).as_secs_f64().max(1e-3);
                    format!(
                        "[{:>4.0}s] {:>8.0} chats/s {:>9.0} deltas/s  errors {}  open {}",
                        (now - start).as_secs_f64(),
                        (totals.chats - last.1.chats) as f64 / secs,
                        (totals.deltas - last.1.deltas) as f64 / secs,
                        totals.errors,
                        totals.open
                    )
                }
            };
            progress(&line);
            last = (now, totals);
            next_line += Duration::from_secs(1);
            if next_line < now {
                next_line = now + Duration::from_secs(1);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One worker thread: its own actix `System`, every one of its connections a task on it.
fn worker(
    plan: Arc<Plan>,
    counters: Arc<[Counters]>,
    thread: usize,
    start: watch::Receiver<Option<Instant>>,
    connections: Vec<u64>,
) -> Tally {
    let system = actix_web::rt::System::new();
    system.block_on(async move {
        let connector = awc::Connector::new()
            // No cap: a WebSocket holds its pool slot for its whole life (default cap 100).
            .limit(0)
            .timeout(CONNECT_TIMEOUT);
        let http = awc::Client::builder()
            .connector(connector)
            .timeout(plan.reply_timeout)
            .finish();
        let ctx = Rc::new(ThreadContext {
            plan,
            counters,
            thread,
            tally: RefCell::new(Tally::default()),
            start,
            connect_slots: Semaphore::new(CONNECT_CONCURRENCY),
            http,
            noted: Cell::new(false),
        });
        let tasks: Vec<_> = connections
            .into_iter()
            .map(|connection| {
                let ctx = ctx.clone();
                actix_web::rt::spawn(async move {
                    match ctx.plan.mode {
                        Mode::WebSocket | Mode::Idle => ws::drive(connection, &ctx).await,
                        Mode::OpenAi => openai::drive(connection, &ctx).await,
                    }
                })
            })
            .collect();
        for task in tasks {
            if task.await.is_err() {
                ctx.error("task_panicked");
            }
        }
        ctx.tally.take()
    })
}
