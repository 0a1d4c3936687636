//! What the subcommands share: finding a job in a DEST, turning a planning error into the
//! line that points at the job file, and printing a command a user can paste back.

use super::exit::{usage, Failure};
use crate::executor::shell_quote;
use crate::job::Origins;
use crate::location::Location;
use crate::manifest::{self, JobDocument};
use crate::source::PlanError;
use crate::storage::{self, DynStorage, StorageOptions};

/// Opens DEST and finds the job named (or the latest): a usage error when there is none.
pub(super) async fn open_job(
    dest: &str,
    job_id: Option<&str>,
    options: &StorageOptions,
) -> Result<(DynStorage, JobDocument), Failure> {
    let location = Location::parse(dest).map_err(usage)?;
    let storage = storage::open(&location, options).await.map_err(usage)?;
    let no_jobs = || usage(manifest::ManifestError::NoJobs { dest: location.to_string() });
    match storage.check(false).await {
        // A folder that is not there holds no job: say that, not "no such object".
        Err(e) if e.is_not_found() => return Err(no_jobs()),
        checked => checked.map_err(usage)?,
    }
    let document = manifest::find_job(&storage, job_id, None).await.map_err(usage)?.ok_or_else(no_jobs)?;
    Ok((storage, document))
}

/// A planning error found before any work: exit 2, pointing at the job file's line.
pub(super) fn plan_failure(error: PlanError, origins: &Origins) -> Failure {
    crate::launch::LaunchError::plan(error, origins).into()
}

/// The command that finishes a job, ready to paste into a shell.
pub(super) fn redrive_command(dest: &str, job_id: &str) -> String {
    format!("fanout redrive {} --job {}", shell_quote(dest), shell_quote(job_id))
}

/// A job whose workers the user's tools start is finished by its committer, not run again
/// here: a second coordinator would run its shards twice and race the committer's commits.
pub(super) fn refuse_followed(document: &JobDocument, dest: &str) -> Result<(), Failure> {
    if !document.is_followed() {
        return Ok(());
    }
    Err(usage(anyhow::anyhow!(
        "job {}: its workers are started by your own tools ({}, from what `fanout k8s` or `--emit` printed), \
         so fanout does not run its shards again; commit what they do with: {}",
        document.job_id,
        document.job.executor.kind(),
        follow_command(dest, &document.job_id)
    )))
}

/// The command that commits what a Kubernetes job's pods do, ready to paste into a shell.
pub(super) fn follow_command(dest: &str, job_id: &str) -> String {
    format!("fanout status {} --job {} --follow", shell_quote(dest), shell_quote(job_id))
}

/// `text` as one shell word: as it is when that is safe, else in single quotes.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_with_spaces_or_quotes_are_quoted_for_a_shell() {
        assert_eq!(redrive_command("out/x", "j-1"), "fanout redrive out/x --job j-1");
        assert_eq!(redrive_command("out dir", "j"), "fanout redrive 'out dir' --job j");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("s3://b/p/"), "s3://b/p/");
    }
}
