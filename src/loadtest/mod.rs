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
mod report;
mod stats;
mod sys;
mod ws;

use std::cell::{Cell, RefCell};
use std::io::Write;
use std::process::ExitCode;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::ArgGroup;
use tokio::sync::{watch, Semaphore};

use crate::auth::{JwtKeys, Role};
use stats::{Counters, Tally, Totals};

/// Options of `chatgate loadtest` (the contract's flags plus a few tuning knobs).
#[derive(Debug, clap::Args)]
#[command(
    group(ArgGroup::new("auth").required(true).args(["token", "secret"])),
    group(ArgGroup::new("amount").required(true).args(["chats", "duration"])),
    after_help = "\
At start the soft open-file limit (RLIMIT_NOFILE) is raised to the hard limit: every \
connection is one file descriptor. For more connections than the hard limit allows, raise it \
first (`ulimit -Hn`, `LimitNOFILE=` in systemd, `--ulimit nofile=` in docker) — the server \
needs the same.

Progress goes to stderr once a second; the summary goes to stdout (one JSON object with \
--json). Exits 1 when no chat succeeded (with --idle: when no connection stayed open)."
)]
pub struct LoadtestArgs {
    /// The gateway's base URL, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    pub url: String,
    /// A JWT every connection uses.
    #[arg(long)]
    pub token: Option<String>,
    /// The gateway's CHATGATE_JWT_SECRET: tokens are minted for users loadtest-user-1..N.
    #[arg(long)]
    pub secret: Option<String>,
    /// How many users to mint tokens for (with --secret; default 1); connections take them
    /// in turn.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub users: Option<u32>,
    /// Concurrent WebSocket connections (with --openai: concurrent HTTP requests).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub connections: u64,
    /// Chats per connection, each sent after the previous reply ended.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub chats: Option<u64>,
    /// Run for this many seconds (replies in flight at the end still finish and count).
    #[arg(long, value_parser = parse_secs)]
    pub duration: Option<f64>,
    /// The model to chat with.
    #[arg(long, default_value = "echo")]
    pub model: String,
    /// Words per message (with `echo`, one delta per word).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub words: u32,
    /// Drive POST /v1/chat/completions (streamed) instead of WebSockets.
    #[arg(long, conflicts_with = "idle")]
    pub openai: bool,
    /// Only open the connections and hold them for --duration (answering pings).
    #[arg(long, requires = "duration", conflicts_with = "chats")]
    pub idle: bool,
    /// Print the summary as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Worker threads, each driving its share of the connections.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub threads: u64,
    /// Seconds one reply may take before it counts as a `timeout` error.
    #[arg(long, default_value_t = 60.0, value_parser = parse_secs)]
    pub reply_timeout: f64,
}

fn parse_secs(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(secs) if secs.is_finite() && secs > 0.0 && secs <= 7.0 * 86_400.0 => Ok(secs),
        _ => Err("expected a number of seconds greater than 0 (at most a week)".into()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    WebSocket,
    OpenAi,
    Idle,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::WebSocket => "websocket",
            Mode::OpenAi => "openai",
            Mode::Idle => "idle",
        }
    }
}

/// The run, settled from the options once.
#[derive(Debug)]
pub(crate) struct Plan {
    pub mode: Mode,
    /// `http://host:port` without a trailing slash.
    pub base_url: String,
    /// `ws://host:port`.
    pub ws_url: String,
    tokens: Vec<String>,
    pub connections: u64,
    pub chats_per_connection: Option<u64>,
    pub duration: Option<Duration>,
    pub threads: u64,
    pub reply_timeout: Duration,
    pub model: String,
    /// The message every chat sends: `--words` short words.
    pub content: String,
}

/// Long enough for any run; the tokens never leave this process.
const TOKEN_TTL_SECS: u64 = 7 * 86_400 + 3_600;

impl Plan {
    fn from_args(args: LoadtestArgs) -> Result<Plan, String> {
        let base_url = args.url.trim_end_matches('/').to_string();
        let ws_url = if let Some(rest) = base_url.strip_prefix("http://") {
            format!("ws://{rest}")
        } else if base_url.starts_with("https://") {
            return Err(
                "--url: https is not supported by the built-in client; run the load \
                        test against the gateway's plain-HTTP address"
                    .into(),
            );
        } else {
            return Err(format!(
                "--url: expected the gateway's base URL, http://HOST:PORT (got {:?})",
                args.url
            ));
        };
        let tokens = match (args.token, args.secret) {
            // Checked here: clap's `requires` is not enforced next to the required group.
            (Some(_), _) if args.users.is_some() => {
                return Err("--users mints tokens, so it needs --secret, not --token".into())
            }
            (Some(token), _) => vec![token],
            (None, Some(secret)) => {
                let keys = JwtKeys::new(secret.as_bytes());
                (1..=args.users.unwrap_or(1))
                    .map(|n| {
                        keys.mint(&format!("loadtest-user-{n}"), Role::User, TOKEN_TTL_SECS)
                            .map_err(|err| format!("cannot mint a token: {err}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?
            }
            (None, None) => return Err("either --token or --secret is needed".into()),
        };
        let mode = match (args.openai, args.idle) {
            (true, _) => Mode::OpenAi,
            (false, true) => Mode::Idle,
            (false, false) => Mode::WebSocket,
        };
        let content = (0..args.words)
            .map(|i| format!("w{}", i % 100))
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Plan {
            mode,
            base_url,
            ws_url,
            tokens,
            connections: args.connections,
            chats_per_connection: args.chats,
            duration: args.duration.map(Duration::from_secs_f64),
            threads: args.threads.min(args.connections),
            reply_timeout: Duration::from_secs_f64(args.reply_timeout),
            model: args.model,
            content,
        })
    }

    pub fn token_for(&self, connection: u64) -> &str {
        &self.tokens[(connection % self.tokens.len() as u64) as usize]
    }

    /// Whether a connection that has sent `sent` chats starts another one now.
    pub fn another_chat(&self, sent: u64, deadline: Option<Instant>) -> bool {
        match (self.chats_per_connection, deadline) {
            (Some(chats), _) => sent < chats,
            (None, Some(deadline)) => Instant::now() < deadline,
            (None, None) => false,
        }
    }

    pub fn deadline(&self, start: Instant) -> Option<Instant> {
        self.duration.map(|d| start + d)
    }
}

/// Handshakes one thread runs at once: enough to open thousands of connections in seconds,
/// few enough not to overflow the server's accept backlog.
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Wrapper {
        #[command(flatten)]
        args: LoadtestArgs,
    }

    fn plan(args: &[&str]) -> Result<Plan, String> {
        let wrapper =
            Wrapper::try_parse_from(std::iter::once("loadtest").chain(args.iter().copied()))
                .map_err(|e| e.to_string())?;
        Plan::from_args(wrapper.args)
    }

    #[test]
    fn secret_mints_one_token_per_user_taken_in_turn() {
        let secret = "0123456789abcdef0123456789abcdef-test";
        let p = plan(&[
            "--url",
            "http://127.0.0.1:1/",
            "--secret",
            secret,
            "--users",
            "3",
            "--connections",
            "5",
            "--chats",
            "1",
        ])
        .expect("plan");
        assert_eq!(p.base_url, "http://127.0.0.1:1");
        assert_eq!(p.ws_url, "ws://127.0.0.1:1");
        let keys = JwtKeys::new(secret.as_bytes());
        let user = |c| keys.verify(p.token_for(c)).expect("valid").user.to_string();
        assert_eq!(user(0), "loadtest-user-1");
        assert_eq!(user(2), "loadtest-user-3");
        assert_eq!(user(3), "loadtest-user-1");
    }

    #[test]
    fn amount_and_auth_are_required_and_exclusive() {
        let base = ["--url", "http://h:1", "--connections", "1"];
        let with = |extra: &[&str]| plan(&[&base[..], extra].concat());
        assert!(
            with(&["--token", "t"]).is_err(),
            "needs --chats or --duration"
        );
        assert!(
            with(&["--chats", "1"]).is_err(),
            "needs --token or --secret"
        );
        assert!(with(&["--token", "t", "--chats", "1", "--duration", "1"]).is_err());
        assert!(with(&["--token", "t", "--idle", "--chats", "1"]).is_err());
        assert!(with(&["--token", "t", "--users", "2", "--chats", "1"]).is_err());
        assert!(with(&["--token", "t", "--duration", "0"]).is_err());
        assert!(with(&["--token", "t", "--chats", "0"]).is_err());
        let idle = with(&["--token", "t", "--idle", "--duration", "1.5"]).expect("idle");
        assert_eq!(idle.mode, Mode::Idle);
        assert_eq!(idle.duration, Some(Duration::from_millis(1500)));
        assert!(plan(&[
            "--url",
            "ftp://h",
            "--connections",
            "1",
            "--token",
            "t",
            "--chats",
            "1"
        ])
        .is_err());
    }

    #[test]
    fn content_has_the_requested_number_of_words() {
        let p = plan(&[
            "--url",
            "http://h:1",
            "--token",
            "t",
            "--connections",
            "1",
            "--chats",
            "1",
            "--words",
            "250",
        ])
        .expect("plan");
        assert_eq!(p.content.split_whitespace().count(), 250);
    }

    #[test]
    fn chats_or_deadline_decide_whether_to_go_on() {
        let p = plan(&[
            "--url",
            "http://h:1",
            "--token",
            "t",
            "--connections",
            "1",
            "--chats",
            "2",
        ])
        .expect("plan");
        assert!(p.another_chat(1, None));
        assert!(!p.another_chat(2, None));
        let p = plan(&[
            "--url",
            "http://h:1",
            "--token",
            "t",
            "--connections",
            "1",
            "--duration",
            "5",
        ])
        .expect("plan");
        let now = Instant::now();
        assert!(p.another_chat(1_000, p.deadline(now)));
        assert!(!p.another_chat(0, Some(now)));
    }
}
