//! The command line: parsing (clap), the exit-code contract and the translation of every
//! library error into one clear line. Each subcommand is a struct with an `execute`; the
//! work itself lives in the library modules. This is the only place that prints errors.

mod inspect;
mod running;

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Every shard succeeded, or the failures are within `retry.tolerated`.
pub const EXIT_OK: u8 = 0;
/// The job failed (too many failed shards, stopped early, or an error during the run).
pub const EXIT_JOB_FAILED: u8 = 1;
/// Bad usage or a bad job file, found before any work started; nothing was written.
pub const EXIT_USAGE: u8 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "fanout",
    version,
    about = "Run a WebAssembly function over every shard of a dataset, in parallel, with a manifest of what happened."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Plan, run and gather a job (from a job file, flags, or both).
    Run(RunArgs),
    /// Print the shard plan of a job and run nothing.
    Plan(PlanArgs),
    /// What a job's manifest says: done, failed and pending shards.
    Status(StatusArgs),
    /// Run again only the failed or pending shards of a job in DEST.
    Redrive(RedriveArgs),
    /// Print a job's report (table, CSV, JSON) or draw its timeline as SVG.
    Report(ReportArgs),
}

/// The job fields every command that builds a job accepts; each overrides its field.
#[derive(Args, Debug, Default, Clone)]
pub struct JobFlags {
    /// The job file (TOML). Optional when --input, --function and --output are given.
    #[arg(value_name = "JOB.toml")]
    job: Option<PathBuf>,
    /// Job name (default: the job file's name).
    #[arg(long)]
    name: Option<String>,
    /// Input: a folder, s3://bucket/prefix/, file:///path, or one CSV/JSONL/text object.
    #[arg(long, value_name = "SRC")]
    input: Option<String>,
    /// Keep only keys matching this glob (repeatable).
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,
    /// Shard rule: object, objects=N, bytes=SIZE, rows=N, chunk=SIZE.
    #[arg(long, value_name = "RULE")]
    shard: Option<String>,
    /// The function: a .wasm file, an s3:// object, or a crate folder to build.
    #[arg(long, value_name = "F")]
    function: Option<String>,
    /// Per-invocation time limit (e.g. 30s), or a share of the median shard (e.g. 200%).
    #[arg(long)]
    timeout: Option<String>,
    /// Per-invocation memory limit (e.g. 256MiB).
    #[arg(long)]
    memory: Option<String>,
    /// An environment variable for the function (repeatable).
    #[arg(long, value_name = "K=V")]
    env: Vec<String>,
    /// Output: a folder or s3://bucket/prefix/.
    #[arg(long, value_name = "DEST")]
    output: Option<String>,
    /// Most workers at once (0 = one per core).
    #[arg(long, value_name = "N")]
    max_workers: Option<usize>,
    /// A worker idle this long exits (e.g. 1s).
    #[arg(long)]
    idle: Option<String>,
    /// Attempts per shard (1 = no retry).
    #[arg(long, value_name = "N")]
    attempts: Option<u32>,
    /// Wait before the first retry; doubles for each next one (e.g. 200ms).
    #[arg(long)]
    backoff: Option<String>,
    /// Failed shards the job tolerates: a share ("5%") or a count ("3").
    #[arg(long)]
    tolerated: Option<String>,
    /// Most output files per shard.
    #[arg(long, value_name = "N")]
    max_files: Option<u64>,
    /// Most output bytes per shard (e.g. 1GiB).
    #[arg(long, value_name = "SIZE")]
    max_bytes: Option<String>,
    /// The hard limit of a relative timeout (--timeout 200%), e.g. 10m.
    #[arg(long, value_name = "DURATION")]
    timeout_cap: Option<String>,
    /// No backup attempts for stragglers.
    #[arg(long)]
    no_backup: bool,
    /// Start backup attempts once this share of shards is done (e.g. 90%).
    #[arg(long, value_name = "SHARE")]
    backup_after: Option<String>,
    /// A straggler runs longer than this many times the median shard (e.g. 3).
    #[arg(long, value_name = "N")]
    backup_factor: Option<f64>,
    /// Arguments appended to the function's arguments.
    #[arg(last = true, value_name = "ARGS")]
    args: Vec<String>,
}

impl JobFlags {
    fn overrides(&self) -> crate::job::Overrides {
        crate::job::Overrides {
            name: self.name.clone(),
            input: self.input.clone(),
            include: self.include.clone(),
            shard: self.shard.clone(),
            function: self.function.clone(),
            extra_args: self.args.clone(),
            timeout: self.timeout.clone(),
            memory: self.memory.clone(),
            env: self.env.clone(),
            output: self.output.clone(),
            max_workers: self.max_workers,
            idle: self.idle.clone(),
            attempts: self.attempts,
            backoff: self.backoff.clone(),
            tolerated: self.tolerated.clone(),
            max_files: self.max_files,
            max_bytes: self.max_bytes.clone(),
            timeout_cap: self.timeout_cap.clone(),
            backup: self.no_backup.then_some(false),
            backup_after: self.backup_after.clone(),
            backup_factor: self.backup_factor,
        }
    }
}

/// Connection settings shared by every command that opens storage.
#[derive(Args, Debug, Default, Clone)]
pub struct StorageFlags {
    /// S3 endpoint (overrides AWS_ENDPOINT_URL; implies path-style addressing).
    #[arg(long, value_name = "URL", global = true)]
    endpoint_url: Option<String>,
}

impl StorageFlags {
    fn options(&self) -> crate::storage::StorageOptions {
        crate::storage::StorageOptions { endpoint_url: self.endpoint_url.clone() }
    }
}

/// How much a command prints.
#[derive(Args, Debug, Default, Clone, Copy)]
pub struct OutputFlags {
    /// Print nothing but errors.
    #[arg(long, short)]
    quiet: bool,
    /// Print the result as JSON on stdout (progress stays off stdout).
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    job: JobFlags,
    /// Continue the latest job of this name in DEST: committed shards are not run again.
    #[arg(long)]
    resume: bool,
    /// With --resume: the job to continue (default: the latest of this name).
    #[arg(long = "job", value_name = "ID")]
    job_id: Option<String>,
    /// Where inputs and outputs are staged (default: inside DEST for local outputs, else the temp dir).
    #[arg(long, value_name = "DIR")]
    staging: Option<PathBuf>,
    /// Seconds running attempts get to finish after Ctrl-C before they are cancelled.
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    grace: String,
    #[command(flatten)]
    storage: StorageFlags,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(Args, Debug)]
pub struct PlanArgs {
    #[command(flatten)]
    job: JobFlags,
    #[command(flatten)]
    storage: StorageFlags,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(Args, Debug)]
pub struct StatusArgs {
    /// The job's output location.
    #[arg(value_name = "DEST")]
    dest: String,
    /// The job (default: the latest in DEST).
    #[arg(long = "job", value_name = "ID")]
    job_id: Option<String>,
    #[command(flatten)]
    storage: StorageFlags,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(Args, Debug)]
pub struct RedriveArgs {
    #[arg(value_name = "DEST")]
    dest: String,
    #[arg(long = "job", value_name = "ID")]
    job_id: Option<String>,
    #[arg(long, value_name = "DIR")]
    staging: Option<PathBuf>,
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    grace: String,
    #[command(flatten)]
    storage: StorageFlags,
    #[command(flatten)]
    output: OutputFlags,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    #[arg(value_name = "DEST")]
    dest: String,
    #[arg(long = "job", value_name = "ID")]
    job_id: Option<String>,
    /// Print report.csv.
    #[arg(long, conflicts_with_all = ["json", "plot"])]
    csv: bool,
    /// Print summary.json.
    #[arg(long, conflicts_with = "plot")]
    json: bool,
    /// Draw the shards on a timeline, one lane per worker, into an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    plot: Option<PathBuf>,
    #[command(flatten)]
    storage: StorageFlags,
}

/// An error with the exit code it deserves.
#[derive(Debug)]
pub enum Failure {
    /// Found before any work started: exit 2.
    Usage(anyhow::Error),
    /// The job ran and failed, or a command failed after it started: exit 1.
    Job(anyhow::Error),
}

pub fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure::Usage(error.into())
}

pub fn failed(error: impl Into<anyhow::Error>) -> Failure {
    Failure::Job(error.into())
}

/// Parses the command line, runs the command, and turns its result into an exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("fanout: error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_JOB_FAILED);
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Run(args) => running::run(args).await,
            Command::Redrive(args) => running::redrive(args).await,
            Command::Plan(args) => inspect::plan(args).await,
            Command::Status(args) => inspect::status(args).await,
            Command::Report(args) => inspect::report(args).await,
        }
    });
    // Worker threads may still be waiting out their idle time; nothing they hold matters now.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code),
        Err(Failure::Usage(error)) => {
            eprintln!("fanout: error: {error:#}");
            ExitCode::from(EXIT_USAGE)
        }
        Err(Failure::Job(error)) => {
            eprintln!("fanout: error: {error:#}");
            ExitCode::from(EXIT_JOB_FAILED)
        }
    }
}
