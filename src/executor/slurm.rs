//! Slurm as an engine of the array executor (`array`): each wave of attempts is one job
//! array (`sbatch --array=0-(K-1)%concurrency`) whose tasks each run `fanout worker` on a
//! share (Slurm sets `SLURM_ARRAY_TASK_ID`); `squeue` says which tasks run and which ended,
//! `scancel` stops them. Owns the conversation with Slurm's commands and nothing of the
//! waves or the run's state.

use super::array::{ArrayApi, Submission, TaskState};
use super::shell_quote;
use async_trait::async_trait;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// How often a wave's answers and its array's tasks are looked at.
const FOLLOW_EVERY: Duration = Duration::from_millis(400);
/// A Slurm command that does not answer within this long counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, thiserror::Error)]
pub enum SlurmError {
    #[error(
        "`{command}` is not on the PATH: the slurm executor needs Slurm's client commands (sbatch, squeue, scancel)"
    )]
    NoCommand { command: String },
    #[error("the Slurm controller does not answer (`squeue` {0})")]
    Controller(String),
}

/// How the job's arrays are submitted.
#[derive(Debug, Clone)]
pub struct SlurmSettings {
    /// Extra `sbatch` arguments (partition, account, time...).
    pub args: Vec<String>,
    /// The fanout binary the tasks run: this one, which the nodes must see at this path.
    pub worker: PathBuf,
}

/// Runs a Slurm command with a deadline; its stdout, or what went wrong.
async fn slurm_command(program: &str, args: &[String]) -> Result<String, String> {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null()).kill_on_drop(true);
    let output = tokio::time::timeout(COMMAND_TIMEOUT, command.output())
        .await
        .map_err(|_| format!("did not answer in {}s", COMMAND_TIMEOUT.as_secs()))?
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(stderr.lines().next().unwrap_or("failed without a word").trim().to_string());
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Before anything is written: Slurm's commands are here and the controller answers.
pub async fn check() -> Result<(), SlurmError> {
    for command in ["sbatch", "squeue", "scancel"] {
        if which(command).is_none() {
            return Err(SlurmError::NoCommand { command: command.to_string() });
        }
    }
    slurm_command("squeue", &["-h".into(), "-o".into(), "%i".into()]).await.map_err(SlurmError::Controller)?;
    Ok(())
}

fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|candidate| candidate.is_file())
}

/// Slurm's commands as an [`ArrayApi`]: `sbatch --array`, `squeue`, `scancel`.
pub struct SlurmApi {
    pub settings: SlurmSettings,
}

#[async_trait]
impl ArrayApi for SlurmApi {
    fn kind(&self) -> &'static str {
        "slurm"
    }

    fn task_name(&self, array: &str, index: usize) -> String {
        format!("slurm array task {array}_{index}")
    }

    fn follow_every(&self) -> Duration {
        FOLLOW_EVERY
    }

    /// The CPUs of the partition the arrays go to: more array tasks than that wait for
    /// later scheduling passes (about a second each), so a wave has no more shares.
    async fn most_tasks(&self) -> Option<usize> {
        let mut args = vec!["-h".to_string(), "-o".into(), "%C".into()];
        let mut given = self.settings.args.iter();
        while let Some(arg) = given.next() {
            match arg.strip_prefix("--partition=") {
                Some(partition) => args.extend(["-p".into(), partition.to_string()]),
                None if arg == "-p" || arg == "--partition" => args.extend(["-p".into(), given.next()?.clone()]),
                None => {}
            }
        }
        // "allocated/idle/other/total", a line per partition listed.
        slurm_command("sinfo", &args).await.ok().and_then(|out| {
            let totals = out.lines().filter_map(|line| line.trim().rsplit('/').next()?.parse::<usize>().ok());
            totals.max().filter(|&cpus| cpus > 0)
        })
    }

    async fn submit(&self, submission: &Submission<'_>) -> Result<String, String> {
        let mut args = vec![
            "--parsable".to_string(),
            format!("--array=0-{}%{}", submission.count - 1, submission.concurrency),
            format!("--job-name=fanout-{}", submission.job_id),
            "--output=/dev/null".into(),
            "--cpus-per-task=1".into(),
            format!("--mem={}M", submission.memory_mb),
        ];
        args.extend(self.settings.args.iter().cloned());
        let worker = shell_quote(&self.settings.worker.to_string_lossy());
        let command: Vec<String> = submission.args.iter().map(|arg| shell_quote(arg)).collect();
        args.push(format!("--wrap=exec {worker} {}", command.join(" ")));
        match slurm_command("sbatch", &args).await {
            Ok(out) => Ok(out.trim().split(';').next().unwrap_or_default().to_string()),
            Err(e) => Err(format!("sbatch: {e}")),
        }
    }

    /// Each array task's state, by index (`squeue -r` lists one line a task).
    async fn states(&self, array: &str, _count: usize) -> Result<BTreeMap<usize, TaskState>, String> {
        let args = ["-h", "-r", "-t", "all", "-j", array, "-o", "%i %T"].map(String::from);
        let listed = slurm_command("squeue", &args).await;
        // A job the controller has forgotten is an error to squeue: every task has ended.
        let listed = match listed {
            Err(e) if e.contains("Invalid job id") => return Ok(BTreeMap::new()),
            other => other?,
        };
        Ok(listed
            .lines()
            .filter_map(|line| {
                let (id, state) = line.trim().split_once(' ')?;
                let index = id.rsplit_once('_')?.1.parse().ok()?;
                let state = state.trim();
                let state = match state {
                    "RUNNING" => TaskState::Running,
                    _ if is_final(state) => TaskState::Ended(state.to_string()),
                    _ => TaskState::Waiting,
                };
                Some((index, state))
            })
            .collect())
    }

    async fn cancel(&self, array: &str, pending_only: bool) {
        let mut args = vec![array.to_string()];
        if pending_only {
            args.insert(0, "--state=PENDING".to_string());
        }
        let _ = slurm_command("scancel", &args).await;
    }
}

fn is_final(state: &str) -> bool {
    matches!(
        state,
        "COMPLETED"
            | "FAILED"
            | "CANCELLED"
            | "TIMEOUT"
            | "NODE_FAIL"
            | "OUT_OF_MEMORY"
            | "PREEMPTED"
            | "BOOT_FAIL"
            | "DEADLINE"
            | "REVOKED"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn odd_words_are_quoted_for_the_shell() {
        assert_eq!(shell_quote("/usr/bin/fanout"), "/usr/bin/fanout");
        assert_eq!(shell_quote("s3://b/a b/"), "'s3://b/a b/'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
