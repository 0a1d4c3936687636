//! `fanout run` and `fanout redrive`: resolve the job, launch it (the library opens and
//! checks everything before any work starts, so a wrong address is exit 2 with nothing
//! written), draw progress while it runs, and print the outcome.

use super::args::{OutputFlags, RedriveArgs, RunArgs};
use super::common::{follow_command, open_job, plan_failure, redrive_command, refuse_followed};
use super::exit::{usage, Failure, EXIT_JOB_FAILED, EXIT_OK};
use crate::events::EventSink;
use crate::job::{self, Job, Origins};
use crate::launch::{self, Opened, Starter, Workers};
use crate::manifest::{self, JobDocument, Manifest};
use crate::report::{self, ProgressMode, Summary};
use crate::run::RunResult;
use crate::source::PlanError;
use crate::storage::StorageOptions;
use anyhow::anyhow;
use std::path::PathBuf;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Failures printed after the summary line; the rest are in `fanout status`.
const FAILURES_SHOWN: usize = 5;

/// Opens what the job needs (see `launch::open`) and prints its warnings unless quiet.
pub(super) async fn open_everything(
    job: &mut Job,
    origins: &Origins,
    options: &StorageOptions,
    quiet: bool,
    starter: Starter,
) -> Result<Opened, Failure> {
    let opened = launch::open(job, origins, options, quiet, starter).await?;
    for warning in opened.warnings.iter().filter(|_| !quiet) {
        eprintln!("fanout: warning: {warning}");
    }
    Ok(opened)
}

pub(super) fn grace_of(text: &str) -> Result<Duration, Failure> {
    crate::units::parse_duration(text).map_err(|m| usage(anyhow!("--grace: {m}")))
}

impl RunArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        let quiet = self.output.quiet || self.output.json;
        let (mut job, origins) = job::resolve(&self.job).map_err(usage)?;
        launch::refuse_kubernetes(&job)?;
        if self.job_id.is_some() && !self.resume {
            return Err(usage(anyhow!("--job goes with --resume (or use `fanout redrive DEST --job ID`)")));
        }
        let grace = grace_of(&self.control.grace)?;
        let options = self.storage.options();
        let opened = open_everything(&mut job, &origins, &options, quiet, Starter::Fanout).await?;
        let mut continuing = None;
        if self.resume {
            continuing =
                manifest::find_job(&opened.dest, self.job_id.as_deref(), Some(&job.name)).await.map_err(usage)?;
            match &continuing {
                Some(document) => {
                    refuse_followed(document, &job.output.dest.to_string())?;
                    launch::check_compatible(document, &job, &opened.load)?
                }
                None if !quiet => {
                    eprintln!(
                        "fanout: no earlier job named \"{}\" in {}: starting a new one",
                        job.name, job.output.dest
                    )
                }
                None => {}
            }
        }
        Launch { job, origins, opened, continuing, staging: self.control.staging, grace, output: self.output, options }
            .run()
            .await
    }
}

impl RedriveArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        let quiet = self.output.quiet || self.output.json;
        let grace = grace_of(&self.control.grace)?;
        let options = self.storage.options();
        let (_, document) = open_job(&self.target.dest, self.target.job_id.as_deref(), &options).await?;
        refuse_followed(&document, &self.target.dest)?;
        let mut job = document.job.clone();
        let opened = open_everything(&mut job, &Origins::default(), &options, quiet, Starter::Fanout).await?;
        if opened.load.sha256 != document.function.sha256 {
            return Err(usage(anyhow!(
                "{}: {} changed since job {} ran (sha256 {} then, {} now); run it as a new job instead",
                job.function.field(),
                job.function.shown(),
                document.job_id,
                &document.function.sha256[..12],
                &opened.load.sha256[..12]
            )));
        }
        let origins = Origins::default();
        let continuing = Some(document);
        Launch { job, origins, opened, continuing, staging: self.control.staging, grace, output: self.output, options }
            .run()
            .await
    }
}

/// A job about to run, with how its outcome is printed.
pub(super) struct Launch {
    pub(super) job: Job,
    pub(super) origins: Origins,
    pub(super) opened: Opened,
    pub(super) continuing: Option<JobDocument>,
    pub(super) staging: Option<PathBuf>,
    pub(super) grace: Duration,
    pub(super) output: OutputFlags,
    pub(super) options: StorageOptions,
}

impl Launch {
    /// Runs the job while its progress is drawn, then prints its outcome.
    pub(super) async fn run(self) -> Result<u8, Failure> {
        let Launch { job, origins, opened, continuing, staging, grace, output, options } = self;
        let quiet = output.quiet || output.json;
        let followed = matches!(opened.workers, Workers::Elsewhere(_));
        let (events, event_rx) = EventSink::channel();
        let progress_done = CancellationToken::new();
        let progress =
            tokio::spawn(report::drive_progress(ProgressMode::detect(quiet), event_rx, progress_done.clone()));
        let launch = launch::Launch { job, opened, continuing, staging, grace, options, quiet };
        let ran = launch.run(events).await;
        progress_done.cancel();
        let _ = progress.await;
        let launch::Ran { job, manifest, result, summary, reduce_ok } = ran?;
        let Some(summary) = summary else {
            // Planning failed before the first shard: nothing ran and nothing was written.
            if nothing_new(&result, quiet) {
                return Ok(EXIT_OK);
            }
            return Err(match result.plan_failure {
                Some(error) => plan_failure(error, &origins),
                None => usage(anyhow!("input.source: the plan is empty")),
            });
        };
        print_outcome(&summary, &manifest, &job, output);
        if result.stats.stopped_early || summary.shards.pending > 0 {
            let (dest, job_id) = (job.output.dest.to_string(), manifest.job_id());
            match followed {
                true => eprintln!(
                    "fanout: stopped following; the {} workers go on. To commit what they do, run: {}",
                    job.executor.kind(),
                    follow_command(&dest, job_id)
                ),
                false => eprintln!("fanout: to finish this job, run: {}", redrive_command(&dest, job_id)),
            }
        }
        Ok(if result.succeeded && reduce_ok { EXIT_OK } else { EXIT_JOB_FAILED })
    }
}

/// A topic read up to its end is not a mistake: a scheduled job finds nothing new, says so,
/// and writes nothing.
fn nothing_new(result: &RunResult, quiet: bool) -> bool {
    let Some(PlanError::NoRecords(topic)) = &result.plan_failure else { return false };
    if !quiet {
        eprintln!("fanout: {topic}: no records after the start position: nothing to do");
    }
    true
}

/// The summary line (or JSON), then the first failures with where their logs are.
pub(super) fn print_outcome(summary: &Summary, manifest: &Manifest, job: &Job, output: OutputFlags) {
    if output.json {
        println!("{}", serde_json::to_string_pretty(summary).expect("a summary serializes"));
        return;
    }
    if output.quiet {
        return;
    }
    println!("{}", report::summary_line(summary));
    if let Some(error) = &summary.plan_error {
        eprintln!("fanout: planning failed: {error}");
    }
    for failure in summary.failures.iter().take(FAILURES_SHOWN) {
        eprintln!(
            "fanout: shard {:05} failed after {}: {} (log: {})",
            failure.shard,
            report::attempts_phrase(failure.attempts),
            failure.error,
            manifest.storage().root().join(&manifest.log_key(failure.shard))
        );
    }
    if summary.shards.failed > FAILURES_SHOWN as u64 {
        eprintln!(
            "fanout: ... {} failed shards in all; see `fanout status {}`",
            summary.shards.failed, job.output.dest
        );
    }
}
