//! `fanout watch`: resolve the job, launch a watch of its source (the library opens what it
//! needs as `run` does, and continues the watch's earlier runs: a restart resumes by
//! itself), draw progress while shards run as objects arrive, and print the outcome when
//! Ctrl-C or SIGTERM stops it (or, with `--once`, when what was new at the start is done).

use super::args::{OutputFlags, WatchArgs};
use super::common::plan_failure;
use super::exit::{usage, Failure, EXIT_JOB_FAILED, EXIT_OK};
use super::running::{grace_of, open_everything, print_outcome};
use crate::events::EventSink;
use crate::job;
use crate::launch::watch::{refuse_one_object, refuse_unwatchable, Reporter, WatchLaunch};
use crate::launch::Starter;
use crate::report::{self, ProgressMode};
use crate::run::RunResult;
use tokio_util::sync::CancellationToken;

impl WatchArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        let quiet = self.output.quiet || self.output.json;
        let (mut job, origins) = job::resolve(&self.job).map_err(usage)?;
        refuse_unwatchable(&job, &origins)?;
        let grace = grace_of(&self.control.grace)?;
        let options = self.storage.options();
        let opened = open_everything(&mut job, &origins, &options, quiet, Starter::Fanout).await?;
        refuse_one_object(&opened.source, &job, &origins)?;
        let (events, event_rx) = EventSink::channel();
        let progress_done = CancellationToken::new();
        let progress =
            tokio::spawn(report::drive_progress(ProgressMode::detect(quiet), event_rx, progress_done.clone()));
        let staging = self.control.staging;
        let launch = WatchLaunch { job, opened, staging, grace, options, quiet, once: self.once };
        let watched = launch.run(events).await;
        progress_done.cancel();
        let _ = progress.await;
        let (result, mut reporter) = watched?;
        finish(result, &mut reporter, &origins, self.output).await
    }
}

/// The last reports (and reduce), the summary line, and the exit code.
async fn finish(
    result: RunResult,
    reporter: &mut Reporter,
    origins: &job::Origins,
    output: OutputFlags,
) -> Result<u8, Failure> {
    if let Some(error) = &result.plan_failure {
        // The source could not be watched (or, with --once, listed): nothing more can come.
        if result.records.is_empty() {
            let error = result.plan_failure.expect("checked above");
            return Err(plan_failure(error, origins));
        }
        eprintln!("fanout: watching stopped: {error}");
    }
    let summary = reporter.update(&result).await?;
    print_outcome(&summary, &reporter.manifest, &reporter.job, output);
    let reduce_ok = summary.reduce.as_ref().is_none_or(|reduce| reduce.succeeded);
    let map_ok = reporter.job.retry.tolerated.allows(summary.shards.failed, summary.shards.total);
    Ok(if map_ok && reduce_ok { EXIT_OK } else { EXIT_JOB_FAILED })
}
