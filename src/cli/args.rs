//! What the command line accepts: one struct per subcommand, parsed by clap. Declarations
//! only, with no I/O: each subcommand's `execute` lives beside the work it does (`running`,
//! `inspect`), and the job's own fields come from the job's schema (`job::JobArgs`).

use crate::job::JobArgs;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "fanout",
    version,
    about = "Run a WebAssembly function over every shard of a dataset, in parallel, with a manifest of what happened."
)]
pub(super) struct Cli {
    #[command(subcommand)]
    pub(super) command: Command,
}

#[derive(Subcommand, Debug)]
pub(super) enum Command {
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
    /// Run the job on objects as they arrive in its source, until Ctrl-C (or once: --once).
    Watch(WatchArgs),
    /// Run jobs on AWS Lambda: deploy the worker function, or serve as it.
    Lambda(LambdaArgs),
    /// Store a job's plan and shares in DEST and print a Kubernetes Indexed Job that runs
    /// them (`kubectl apply -f`); `fanout status DEST --follow` then commits what it does.
    K8s(K8sArgs),
    /// Serve the job's function over HTTP: POST /NAME runs it once on the body and answers
    /// with what it wrote (a fresh sandbox per request; GET /healthz).
    Serve(ServeArgs),
    /// Run one share of a job's attempts as a batch engine's task (a Slurm array task, a
    /// Kubernetes pod): read the share's request, store the answer beside it.
    Worker(WorkerArgs),
}

#[derive(Args, Debug)]
pub(super) struct WorkerArgs {
    /// Where the shares' requests are (a folder or an s3:// prefix), or with --job the
    /// job's DEST.
    #[arg(value_name = "REQUESTS|DEST")]
    pub(super) requests: String,
    /// The Kubernetes job (made by `fanout k8s`) in DEST whose share to run.
    #[arg(long = "job", value_name = "ID")]
    pub(super) job_id: Option<String>,
    /// Which share (default: the engine's own variable: $SLURM_ARRAY_TASK_ID,
    /// $JOB_COMPLETION_INDEX, $CLOUD_RUN_TASK_INDEX, Code Engine's $JOB_INDEX, $AWS_BATCH_JOB_ARRAY_INDEX).
    #[arg(long, value_name = "N")]
    pub(super) index: Option<usize>,
    /// The shares there are, checked against the job's (with --job; default: what the engine
    /// says, where it says).
    #[arg(long, value_name = "N", requires = "job_id")]
    pub(super) count: Option<usize>,
}

#[derive(Args, Debug)]
pub(super) struct ServeArgs {
    // The function, its args, env, side files, timeout and memory, and --max-workers and
    // --idle, as a job gives them; input and output are not needed.
    #[command(flatten)]
    pub(super) job: JobArgs,
    /// Where to listen (default: 0.0.0.0 on $FUNCTIONS_CUSTOMHANDLER_PORT, else $PORT, else 8080).
    #[arg(long, value_name = "ADDR:PORT", help_heading = "Serve")]
    pub(super) listen: Option<String>,
    /// Requests that may wait for a worker; past that, 503 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 1000, help_heading = "Serve")]
    pub(super) queue: usize,
    /// The largest request body (past it: 413).
    #[arg(long = "max-body", value_name = "SIZE", default_value = "6MiB", help_heading = "Serve")]
    pub(super) max_body: String,
    /// The largest answer: the function's outputs, or its stdout (past it: 500).
    #[arg(long = "max-output", value_name = "SIZE", default_value = "64MiB", help_heading = "Serve")]
    pub(super) max_output: String,
    /// Requests must carry `Authorization: Bearer $VAR` (else 401); /healthz never needs it.
    #[arg(long = "token-env", value_name = "VAR", help_heading = "Serve")]
    pub(super) token_env: Option<String>,
    /// One JSON object per request in the log (stderr).
    #[arg(long, help_heading = "Serve")]
    pub(super) json: bool,
    #[command(flatten)]
    pub(super) storage: StorageFlags,
}

#[derive(Args, Debug)]
pub(super) struct K8sArgs {
    #[command(flatten)]
    pub(super) job: JobArgs,
    /// Shares of the shards, one pod each: the Job's completions (default: --concurrency,
    /// at most one per shard).
    #[arg(long, value_name = "N", help_heading = "Kubernetes")]
    pub(super) shares: Option<usize>,
    /// Times a share's pod is started again after it fails (the Job's backoffLimitPerIndex).
    #[arg(long, value_name = "N", default_value_t = 3, help_heading = "Kubernetes")]
    pub(super) backoff_limit_per_index: u32,
    /// CPUs of each pod: the guests it runs side by side (memory follows: function.memory each).
    #[arg(long, value_name = "N", default_value_t = 1, help_heading = "Kubernetes")]
    pub(super) cpus: u32,
    /// The namespace the Job goes to (default: kubectl's).
    #[arg(long, value_name = "NAME", help_heading = "Kubernetes")]
    pub(super) namespace: Option<String>,
    /// The Job's name (default: fanout-<job id>).
    #[arg(long = "job-name", value_name = "NAME", help_heading = "Kubernetes")]
    pub(super) job_name: Option<String>,
    #[command(flatten)]
    pub(super) storage: StorageFlags,
    // --json prints the Job as JSON instead of YAML; --quiet leaves out the note on stderr.
    #[command(flatten)]
    pub(super) output: OutputFlags,
}

#[derive(Args, Debug)]
pub(super) struct WatchArgs {
    #[command(flatten)]
    pub(super) job: JobArgs,
    /// Take what is new now, wait for it to be done, and exit (for cron).
    #[arg(long, help_heading = "Run")]
    pub(super) once: bool,
    #[command(flatten)]
    pub(super) control: RunControl,
    #[command(flatten)]
    pub(super) storage: StorageFlags,
    #[command(flatten)]
    pub(super) output: OutputFlags,
}

#[derive(Args, Debug)]
pub(super) struct LambdaArgs {
    #[command(subcommand)]
    pub(super) command: LambdaCommand,
}

#[derive(Subcommand, Debug)]
pub(super) enum LambdaCommand {
    /// Create the worker function, or update its code and settings (aws-sdk-lambda).
    Deploy(DeployArgs),
    /// Serve the Lambda Runtime API at $AWS_LAMBDA_RUNTIME_API: what the deployment's
    /// `bootstrap` runs (a binary named `bootstrap` started without arguments does this).
    Worker,
}

#[derive(Args, Debug)]
pub(super) struct DeployArgs {
    /// The function's name.
    #[arg(long, value_name = "NAME")]
    pub(super) name: String,
    /// The IAM role the function runs as (needed to create it; S3 read on inputs, write on DEST).
    #[arg(long, value_name = "ARN")]
    pub(super) role: Option<String>,
    /// A deployment zip with `bootstrap` at its top (e.g. from `cargo lambda build`).
    #[arg(long, value_name = "FILE", conflicts_with = "bootstrap")]
    pub(super) zip: Option<PathBuf>,
    /// A Linux build of fanout to zip as `bootstrap` (default: this executable).
    #[arg(long, value_name = "FILE")]
    pub(super) bootstrap: Option<PathBuf>,
    /// The binary is built for arm64 (Graviton) rather than x86_64.
    #[arg(long)]
    pub(super) arm64: bool,
    /// Configured memory in MB (Lambda gives CPU in proportion: 1,769 MB is one vCPU).
    #[arg(long, value_name = "MB", default_value_t = 2048)]
    pub(super) memory: i32,
    /// The size of its /tmp in MB (512 to 10240): where workers cache compiled functions; a
    /// Python function with numpy or pandas needs ~360 MB there.
    #[arg(long, value_name = "MB", default_value_t = 1024)]
    pub(super) ephemeral_storage: i32,
    /// The function's timeout in seconds (at most 900).
    #[arg(long, value_name = "SECONDS", default_value_t = 900)]
    pub(super) timeout: i32,
    #[command(flatten)]
    pub(super) output: OutputFlags,
}

/// Connection settings shared by every command that opens storage.
#[derive(Args, Debug, Default, Clone)]
pub(super) struct StorageFlags {
    /// S3 endpoint (overrides AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL; implies path-style addressing).
    #[arg(long, value_name = "URL", global = true, help_heading = "S3")]
    pub(super) endpoint_url: Option<String>,
}

impl StorageFlags {
    pub(super) fn options(&self) -> crate::storage::StorageOptions {
        crate::storage::StorageOptions { endpoint_url: self.endpoint_url.clone() }
    }
}

/// How much a command prints.
#[derive(Args, Debug, Default, Clone, Copy)]
pub(super) struct OutputFlags {
    /// Print nothing but errors.
    #[arg(long, short, help_heading = "Printing")]
    pub(super) quiet: bool,
    /// Print the result as JSON on stdout (progress stays off stdout).
    #[arg(long, help_heading = "Printing")]
    pub(super) json: bool,
}

#[derive(Args, Debug)]
pub(super) struct RunArgs {
    #[command(flatten)]
    pub(super) job: JobArgs,
    /// Continue the latest job of this name in DEST: committed shards are not run again.
    #[arg(long, help_heading = "Run")]
    pub(super) resume: bool,
    /// With --resume: the job to continue (default: the latest of this name).
    #[arg(long = "job", value_name = "ID", help_heading = "Run")]
    pub(super) job_id: Option<String>,
    /// Store the job and print the array that runs it (cloud-run, code-engine, aws-batch: the
    /// API request and the CLI command) instead of submitting it; `fanout status DEST --follow`
    /// then commits what its tasks do.
    #[arg(long, help_heading = "Run", conflicts_with = "resume")]
    pub(super) emit: bool,
    #[command(flatten)]
    pub(super) control: RunControl,
    #[command(flatten)]
    pub(super) storage: StorageFlags,
    #[command(flatten)]
    pub(super) output: OutputFlags,
}

#[derive(Args, Debug)]
pub(super) struct PlanArgs {
    #[command(flatten)]
    pub(super) job: JobArgs,
    #[command(flatten)]
    pub(super) storage: StorageFlags,
    #[command(flatten)]
    pub(super) output: OutputFlags,
}

/// A job that is already in a DEST.
#[derive(Args, Debug)]
pub(super) struct JobInDest {
    /// The job's output location.
    #[arg(value_name = "DEST")]
    pub(super) dest: String,
    /// The job (default: the latest in DEST).
    #[arg(long = "job", value_name = "ID")]
    pub(super) job_id: Option<String>,
}

/// How a run stages its shards and how it stops.
#[derive(Args, Debug)]
pub(super) struct RunControl {
    /// Where inputs and outputs are staged (default: inside DEST for local outputs, else the temp dir).
    #[arg(long, value_name = "DIR", help_heading = "Run")]
    pub(super) staging: Option<PathBuf>,
    /// Seconds running attempts get to finish after Ctrl-C before they are cancelled.
    #[arg(long, value_name = "DURATION", default_value = "30s", help_heading = "Run")]
    pub(super) grace: String,
}

#[derive(Args, Debug)]
pub(super) struct StatusArgs {
    #[command(flatten)]
    pub(super) target: JobInDest,
    /// Commit what a Kubernetes job's pods answer, as they answer, until every shard is
    /// done or failed; then write the report (one follower at a time).
    #[arg(long)]
    pub(super) follow: bool,
    #[command(flatten)]
    pub(super) storage: StorageFlags,
    #[command(flatten)]
    pub(super) output: OutputFlags,
}

#[derive(Args, Debug)]
pub(super) struct RedriveArgs {
    #[command(flatten)]
    pub(super) target: JobInDest,
    #[command(flatten)]
    pub(super) control: RunControl,
    #[command(flatten)]
    pub(super) storage: StorageFlags,
    #[command(flatten)]
    pub(super) output: OutputFlags,
}

#[derive(Args, Debug)]
pub(super) struct ReportArgs {
    #[command(flatten)]
    pub(super) target: JobInDest,
    /// Print report.csv.
    #[arg(long, conflicts_with_all = ["json", "plot"])]
    pub(super) csv: bool,
    /// Print summary.json.
    #[arg(long, conflicts_with = "plot")]
    pub(super) json: bool,
    /// Draw every attempt on a timeline, one lane per worker, into an SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub(super) plot: Option<PathBuf>,
    #[command(flatten)]
    pub(super) storage: StorageFlags,
}
