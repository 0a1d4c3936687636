//! The command line: parsing (clap, `args`), the exit-code contract (`exit`) and the
//! translation of every error into one clear line. Each subcommand is a struct with an
//! `execute`, beside the work it does: `running` (run, redrive), `watching` (watch), `inspect` (plan,
//! status, report), `serving` (serve), `lambda`, `followed` (jobs whose workers the user's tools start: k8s, run --emit,
//! status --follow) and `worker` (the engines' side); `common` holds what they share. This is
//! the only place that prints errors; the work itself lives in the library modules.

mod args;
mod common;
mod exit;
mod followed;
mod inspect;
mod lambda;
mod running;
mod serving;
mod watching;
mod worker;

use args::{Cli, Command};
use clap::Parser;
use std::process::ExitCode;

/// Parses the command line, runs the command, and turns its result into an exit code.
pub fn main() -> ExitCode {
    let mut argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    // Lambda starts a deployment's `bootstrap` without arguments: that is the worker.
    if argv.len() == 1 && std::path::Path::new(&argv[0]).file_name().is_some_and(|name| name == "bootstrap") {
        argv.extend(["lambda".into(), "worker".into()]);
    }
    let cli = Cli::parse_from(argv);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fanout: error: cannot start the async runtime: {e}");
            return ExitCode::from(exit::EXIT_JOB_FAILED);
        }
    };
    let command = async {
        match cli.command {
            // Stored for the user's tools to start, not run: `followed`.
            Command::Run(args) if args.emit => followed::emit(args).await,
            Command::Run(args) => args.execute().await,
            Command::Redrive(args) => args.execute().await,
            Command::Plan(args) => args.execute().await,
            Command::Status(args) => args.execute().await,
            Command::Report(args) => args.execute().await,
            Command::Watch(args) => args.execute().await,
            Command::Lambda(args) => args.execute().await,
            Command::K8s(args) => args.execute().await,
            Command::Serve(args) => args.execute().await,
            Command::Worker(args) => args.execute().await,
        }
    };
    // A panic that reached the command itself (its line was told to a run, not printed).
    let Ok(result) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(command))) else {
        match crate::panics::last() {
            Some(line) => eprintln!("fanout: error: an internal error (a bug in fanout): panicked {line}"),
            None => eprintln!("fanout: error: an internal error (a bug in fanout) stopped the command"),
        }
        runtime.shutdown_background();
        return ExitCode::from(exit::EXIT_JOB_FAILED);
    };
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
