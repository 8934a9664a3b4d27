//! The `chatgate` command line: argument parsing and one function per subcommand. Each
//! returns the process exit code; `main` only dispatches.

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use rand::distr::{Alphanumeric, SampleString};

use crate::auth::{JwtKeys, Role};
use crate::config::{ConfigProblem, Secret, Settings};
use crate::db::{self, DatabaseUrl, DbPool};
use crate::logging;
use crate::startup::{self, Application};

mod dev;

#[derive(Debug, Parser)]
#[command(name = "chatgate", version, about = "Real-time LLM chat gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (applies pending migrations first).
    Serve {
        /// Development mode: random JWT secret (in a 0600 file) if none is set, prints ready
        /// tokens, lifts the user rate limit and daily quota unless configured.
        #[arg(long)]
        dev: bool,
    },
    /// Print a signed JWT made with CHATGATE_JWT_SECRET.
    Token {
        /// The user id (`sub` claim), 1–128 characters.
        #[arg(long)]
        sub: String,
        #[arg(long, value_enum, default_value_t = RoleArg::User)]
        role: RoleArg,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
    /// Apply migrations to DATABASE_URL and exit.
    Migrate,
    /// Validate the configuration, print every problem, exit non-zero if any.
    CheckConfig,
    /// Drive a running gateway with chats (or idle connections) and report what it held.
    Loadtest(crate::loadtest::LoadtestArgs),
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum RoleArg {
    User,
    Admin,
}

impl From<RoleArg> for Role {
    fn from(role: RoleArg) -> Role {
        match role {
            RoleArg::User => Role::User,
            RoleArg::Admin => Role::Admin,
        }
    }
}

/// Exit code for a configuration that cannot be used.
const EXIT_CONFIG: u8 = 2;

pub fn run(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Serve { dev } => serve(dev),
        Command::Token { sub, role, ttl } => token(&sub, role.into(), ttl),
        Command::Migrate => migrate(),
        Command::CheckConfig => check_config(),
        Command::Loadtest(args) => crate::loadtest::run(args),
    }
}

fn process_env(key: &str) -> Option<String> {
    std::env::var(key).ok()
}

fn report_problems(problems: &[ConfigProblem]) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(
        stderr,
        "chatgate: the configuration has {} problem(s):",
        problems.len()
    );
    for problem in problems {
        let _ = writeln!(stderr, "  - {problem}");
    }
}

/// Loads and validates; on any problem prints them all and yields the exit code.
fn load_valid(dev: bool) -> Result<Settings, ExitCode> {
    Settings::load_validated(&process_env, dev).map_err(|problems| {
        report_problems(&problems);
        ExitCode::from(EXIT_CONFIG)
    })
}

fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

fn serve(dev: bool) -> ExitCode {
    let mut settings = match load_valid(dev) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    logging::init(settings.log_filter.as_deref());
    let mut dev_mode = None;
    if dev {
        let mut secret_file = None;
        if settings.auth.jwt_secret.is_none() {
            let secret = Alphanumeric.sample_string(&mut rand::rng(), 48);
            match dev::DevSecretFile::create(&std::env::temp_dir(), &secret) {
                Ok(file) => secret_file = Some(file),
                // Dev mode still works; only minting more tokens from the shell does not.
                Err(err) => log::warn!("event=dev_secret_file_failed error={err}"),
            }
            settings.auth.jwt_secret = Some(Secret::new(secret));
        }
        let limits = dev::lift_user_limits(&mut settings, &process_env);
        dev_mode = Some((secret_file, limits));
    }
    log::info!(
        "event=config_loaded settings={}",
        settings.dump_lines().join("; ")
    );
    let system = actix_web::rt::System::new();
    let result = system.block_on(async move {
        let app = Application::build(settings).await?.with_signal_handling()?;
        if let Some((secret_file, limits)) = &dev_mode {
            print_dev_banner(&app, secret_file.as_ref(), limits)?;
        }
        let stopped = app.run_until_stopped().await;
        drop(dev_mode);
        stopped
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            log::error!("event=fatal error={err:#}");
            let _ = writeln!(std::io::stderr(), "chatgate: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn print_dev_banner(
    app: &Application,
    secret_file: Option<&dev::DevSecretFile>,
    limits: &[String],
) -> anyhow::Result<()> {
    let state = app.state();
    let admin = state.jwt.mint("dev-admin", Role::Admin, 86_400)?;
    let user = state.jwt.mint("dev-user", Role::User, 86_400)?;
    let base = format!("http://{}", app.local_addr());
    log::warn!(
        "DEVELOPMENT MODE: tokens below are printed in clear; never run --dev in production"
    );
    // The secret itself is never printed: a file only this user can read hands it to
    // `chatgate token` and `chatgate loadtest --secret`.
    let secret = match secret_file {
        Some(file) => format!("\"$(cat {})\"", file.path().display()),
        None => "\"$CHATGATE_JWT_SECRET\"".to_string(),
    };
    let secret_line = match secret_file {
        Some(file) => format!(
            "secret file: {} (mode 0600, removed at exit)\n",
            file.path().display()
        ),
        None => "secret:      your CHATGATE_JWT_SECRET\n".to_string(),
    };
    out(&format!(
        "\n=== chatgate DEVELOPMENT MODE — not for production ===\n\
         gateway:     {base}\n\
         dashboard:   {base}/admin#token={admin}\n\
         admin token: {admin}\n\
         user token:  {user}\n\
         try:         websocat '{ws}/ws?token={user}'\n\
         {secret_line}\
         more tokens: CHATGATE_JWT_SECRET={secret} chatgate token --sub alice\n\
         load test:   chatgate loadtest --url {base} --secret {secret} --connections 4 --chats 25\n\
         limits:      {limits}\n",
        ws = base.replacen("http", "ws", 1),
        limits = limits.join("; "),
    ));
    Ok(())
}

fn token(sub: &str, role: Role, ttl: u64) -> ExitCode {
    let settings = match Settings::load(&process_env) {
        Ok(settings) => settings,
        Err(problems) => {
            report_problems(&problems);
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let secret_problems: Vec<ConfigProblem> = settings
        .validate(false)
        .into_iter()
        .filter(|p| p.key == "CHATGATE_JWT_SECRET")
        .collect();
    let Some(secret) = settings
        .auth
        .jwt_secret
        .as_ref()
        .filter(|_| secret_problems.is_empty())
    else {
        report_problems(&secret_problems);
        return ExitCode::from(EXIT_CONFIG);
    };
    if let Err(err) = crate::domain::UserId::parse(sub) {
        let _ = writeln!(std::io::stderr(), "chatgate: --sub: {err}");
        return ExitCode::from(EXIT_CONFIG);
    }
    match JwtKeys::new(secret.expose().as_bytes()).mint(sub, role, ttl) {
        Ok(token) => {
            out(&token);
            ExitCode::SUCCESS
        }
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "chatgate: cannot sign token: {err}");
            ExitCode::FAILURE
        }
    }
}

fn migrate() -> ExitCode {
    let settings = match load_valid(true) {
        Ok(settings) => settings,
        Err(code) => return code,
    };
    logging::init(settings.log_filter.as_deref());
    let url = DatabaseUrl::parse(&settings.database.url);
    let pool = DbPool::new(&url, &startup::pool_settings(&settings));
    let applied = pool
        .checkout()
        .map_err(|err| format!("cannot connect to {}: {err}", url.redacted()))
        .and_then(|mut conn| {
            db::migrations::run_pending(&mut conn).map_err(|err| format!("migration failed: {err}"))
        });
    match applied {
        Ok(applied) if applied.is_empty() => {
            out(&format!("{}: up to date", url.redacted()));
            ExitCode::SUCCESS
        }
        Ok(applied) => {
            out(&format!(
                "{}: applied {}",
                url.redacted(),
                applied.join(", ")
            ));
            ExitCode::SUCCESS
        }
        Err(err) => {
            let _ = writeln!(std::io::stderr(), "chatgate: {err}");
            ExitCode::FAILURE
        }
    }
}

fn check_config() -> ExitCode {
    match load_valid(false) {
        Ok(settings) => {
            out(&format!(
                "configuration OK: bind={} database={} models={}",
                settings.server.bind,
                DatabaseUrl::parse(&settings.database.url).redacted(),
                settings
                    .models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            ));
            // Every resolved value, secrets and URL passwords redacted.
            for line in settings.dump_lines() {
                out(&format!("  {line}"));
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}
