//! The command line: parsing (clap, `args`), the exit-code contract (`exit`) and the
//! translation of every error into one clear line. Each subcommand is a struct with an
//! `execute`, beside the work it does: `running` (run, redrive) and `inspect` (plan,
//! status, report); `common` holds what they share. This is the only place that
//! prints errors; the work itself lives in the library modules.

mod args;
mod common;
mod exit;
mod inspect;
mod running;

use args::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;

/// Parses the command line, runs the command, and turns its result into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fanout: error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::EXIT_JOB_FAILED);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => args.execute().await,
            Command::Redrive(args) => args.execute().await,
            Command::Plan(args) => args.execute().await,
            Command::Status(args) => args.execute().await,
            Command::Report(args) => args.execute().await,
        }
    });
    // Worker threads may still be waiting out their idle time; nothing they hold matters now.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("fanout: error: {:#}", failure.error());
            ExitCode::from(failure.code())
        }
    }
}
