//! The options of `chatgate loadtest` and the run they settle into (`Plan`), checked once
//! before any connection opens.

use std::time::{Duration, Instant};

use clap::ArgGroup;

use crate::auth::{JwtKeys, Role};

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
--json). Exits 1 when no chat succeeded (with --idle: when no connection stayed open), or \
when a reply's deltas had a gap or a duplicate (--drop-rate)."
)]
pub struct LoadtestArgs {
    /// The gateway's base URL, e.g. http://127.0.0.1:8080. Repeat it for several instances:
    /// connections take them in turn.
    #[arg(long = "url", required = true)]
    pub urls: Vec<String>,
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
    /// Drop this share of replies (0 to 1) mid-way: the connection is cut without a close
    /// frame after some deltas, reopened with its `session_id` (at the next --url) and the
    /// reply resumed; the summary reports resumed replies, gaps and duplicates.
    #[arg(long, value_parser = parse_share, conflicts_with_all = ["openai", "idle"])]
    pub drop_rate: Option<f64>,
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

fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(share) if (0.0..=1.0).contains(&share) => Ok(share),
        _ => Err("expected a share between 0 and 1, e.g. 0.1".into()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    WebSocket,
    OpenAi,
    Idle,
}

impl Mode {
    pub(super) fn name(self) -> &'static str {
        match self {
            Mode::WebSocket => "websocket",
            Mode::OpenAi => "openai",
            Mode::Idle => "idle",
        }
    }
}

/// One gateway instance a run drives.
#[derive(Debug)]
pub(crate) struct Target {
    /// `http://host:port` without a trailing slash.
    pub base_url: String,
    /// `ws://host:port`.
    pub ws_url: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let base_url = url.trim_end_matches('/').to_string();
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
                "--url: expected the gateway's base URL, http://HOST:PORT (got {url:?})"
            ));
        };
        Ok(Target { base_url, ws_url })
    }
}

/// The run, settled from the options once.
#[derive(Debug)]
pub(crate) struct Plan {
    pub mode: Mode,
    /// Every `--url`, in the order given; connection n uses `targets[n % len]`.
    pub targets: Vec<Target>,
    tokens: Vec<String>,
    pub connections: u64,
    pub chats_per_connection: Option<u64>,
    pub duration: Option<Duration>,
    pub threads: u64,
    pub reply_timeout: Duration,
    pub model: String,
    /// The message every chat sends: `--words` short words.
    pub content: String,
    pub words: u32,
    /// `--drop-rate`, when given (0 included: the summary then reports the `seq` checks).
    pub drop_rate: Option<f64>,
}

/// Long enough for any run; the tokens never leave this process.
const TOKEN_TTL_SECS: u64 = 7 * 86_400 + 3_600;

impl Plan {
    pub(super) fn from_args(args: LoadtestArgs) -> Result<Plan, String> {
        let targets = args
            .urls
            .iter()
            .map(|url| Target::parse(url))
            .collect::<Result<Vec<_>, _>>()?;
        if targets.is_empty() {
            return Err("--url is needed".into());
        }
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
            targets,
            tokens,
            connections: args.connections,
            chats_per_connection: args.chats,
            duration: args.duration.map(Duration::from_secs_f64),
            threads: args.threads.min(args.connections),
            reply_timeout: Duration::from_secs_f64(args.reply_timeout),
            model: args.model,
            content,
            words: args.words,
            drop_rate: args.drop_rate,
        })
    }

    /// The instance connection `connection` drives: the `--url`s in turn.
    pub fn target_index(&self, connection: u64) -> usize {
        (connection % self.targets.len() as u64) as usize
    }

    pub fn target(&self, index: usize) -> &Target {
        &self.targets[index % self.targets.len()]
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
        assert_eq!(p.targets.len(), 1);
        assert_eq!(p.targets[0].base_url, "http://127.0.0.1:1");
        assert_eq!(p.targets[0].ws_url, "ws://127.0.0.1:1");
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
    fn repeated_urls_are_taken_in_turn() {
        let p = plan(&[
            "--url",
            "http://a:1/",
            "--url",
            "http://b:2",
            "--url",
            "http://c:3",
            "--token",
            "t",
            "--connections",
            "7",
            "--chats",
            "1",
        ])
        .expect("plan");
        let hosts: Vec<&str> = (0..7)
            .map(|c| p.target(p.target_index(c)).ws_url.as_str())
            .collect();
        assert_eq!(
            hosts,
            ["ws://a:1", "ws://b:2", "ws://c:3", "ws://a:1", "ws://b:2", "ws://c:3", "ws://a:1"]
        );
        assert_eq!(p.target(4).base_url, "http://b:2", "wraps around");
        let bad = plan(&[
            "--url",
            "http://a:1",
            "--url",
            "https://b:2",
            "--token",
            "t",
            "--connections",
            "1",
            "--chats",
            "1",
        ]);
        assert!(bad.expect_err("https").contains("https"));
    }

    #[test]
    fn drop_rate_is_a_share_for_websocket_chats() {
        let base = ["--url", "http://h:1", "--token", "t", "--connections", "1"];
        let with = |extra: &[&str]| plan(&[&base[..], extra].concat());
        let p = with(&["--chats", "1", "--drop-rate", "0.25"]).expect("plan");
        assert_eq!(p.drop_rate, Some(0.25));
        assert_eq!(with(&["--chats", "1"]).expect("plan").drop_rate, None);
        for bad in ["-0.1", "1.5", "x", "NaN"] {
            assert!(
                with(&["--chats", "1", "--drop-rate", bad]).is_err(),
                "{bad}"
            );
        }
        assert!(with(&["--chats", "1", "--drop-rate", "0.1", "--openai"]).is_err());
        assert!(with(&["--duration", "1", "--drop-rate", "0.1", "--idle"]).is_err());
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
