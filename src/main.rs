use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    chatgate::cli::run(chatgate::cli::Cli::parse())
}
