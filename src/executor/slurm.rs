//! Slurm as an executor: the attempts the coordinator hands over are gathered into waves;
//! each wave is one job array (`sbatch --array=0-(K-1)%concurrency`) whose tasks each run
//! `fanout worker` on a share of the wave's attempts. A share is a request stored in DEST
//! (`_fanout/<job>/slurm/<wave>/<task>.json`), in the Lambda worker's protocol; the task
//! stores its answer beside it. The executor follows the array (`squeue`) and the answers,
//! and sends one [`AttemptDone`] per attempt: from the answer, or a failure when a task
//! ended without answering (cancelled, killed, its node lost), which the coordinator
//! retries in a later wave. Publishing and commits stay in the coordinator. Owns the
//! conversation with Slurm's commands and nothing of the run's state.
//!
//! [`AttemptDone`]: crate::executor::AttemptDone

use super::remote::protocol::{Request, ShardResult};
use super::remote::{self, JobBase, Stored, WORKER_OVERHEAD_MB};
use super::{AttemptDone, Executor, Task};
use crate::events::{Event, EventSink};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::process::Command;
use tokio::sync::mpsc::UnboundedSender;

/// Attempts handed over within this long of each other share a wave (one array).
const GATHER: Duration = Duration::from_millis(200);
/// How often a wave's answers and its array's tasks are looked at.
const FOLLOW_EVERY: Duration = Duration::from_millis(400);
/// A Slurm command that does not answer within this long counts as failed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);
/// The controller may be unreachable this long before a wave's attempts are given up on.
const CONTROLLER_PATIENCE: Duration = Duration::from_secs(120);
/// Beside a wave's requests: the id of the array that runs them.
const ARRAY_ID: &str = "array-id";

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
    /// Array tasks running at once at most (`%N`).
    pub concurrency: usize,
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

/// A shell word: quoted unless it is plainly safe.
fn shell_quote(word: &str) -> String {
    if !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || "/._-:=@%+,".contains(c)) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[derive(Default, serde::Serialize)]
struct SlurmStats {
    kind: &'static str,
    arrays: Vec<String>,
    array_tasks: u64,
    /// Array tasks that ended without answering (their attempts were failed and retried).
    tasks_lost: u64,
}

/// What earlier runs of the job left with Slurm, found when a resumed job submits its first
/// attempts: successful answers, and array tasks still running, so that the job takes them
/// instead of running their shards again.
#[derive(Default)]
struct Recovered {
    /// A successful answer for a shard, and the worker that gave it.
    answered: HashMap<u64, (ShardResult, String)>,
    /// Shards in the share of an array task that has not ended: (wave, share).
    running: HashMap<u64, (usize, usize)>,
    /// Earlier waves with a live array task: prefix, array, shares.
    waves: Vec<(String, String, usize)>,
}

struct State {
    queue: Vec<Task>,
    recovered: Option<Recovered>,
    /// The partition's CPUs (`sinfo`), once asked; `None` when Slurm would not say.
    partition_cpus: Option<Option<usize>>,
    gathering: bool,
    stopping: bool,
    waves: u64,
    /// Array tasks running now, by array.
    running: HashMap<String, usize>,
    peak: usize,
    /// Lanes of the timeline: one per array task that answered.
    lanes: HashMap<String, u32>,
    /// When each answering worker ran its guests (Unix ms): tasks too quick for `squeue`
    /// to see running still count towards the peak.
    spans: Vec<(u64, u64)>,
    stats: SlurmStats,
}

struct Inner {
    base: JobBase,
    settings: SlurmSettings,
    events: EventSink,
    results: UnboundedSender<AttemptDone>,
    state: Mutex<State>,
    nonce: AtomicU64,
}

/// The executor; cheap to clone.
#[derive(Clone)]
pub struct SlurmExecutor(Arc<Inner>);

impl SlurmExecutor {
    pub fn new(
        base: JobBase,
        settings: SlurmSettings,
        results: UnboundedSender<AttemptDone>,
        events: EventSink,
    ) -> SlurmExecutor {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let state = State {
            queue: Vec::new(),
            recovered: None,
            partition_cpus: None,
            gathering: false,
            stopping: false,
            waves: 0,
            running: HashMap::new(),
            peak: 0,
            lanes: HashMap::new(),
            spans: Vec::new(),
            stats: SlurmStats { kind: "slurm", ..Default::default() },
        };
        SlurmExecutor(Arc::new(Inner {
            base,
            settings,
            events,
            results,
            state: Mutex::new(state),
            nonce: AtomicU64::new(seed ^ ((std::process::id() as u64) << 32)),
        }))
    }
}

/// One array: its shares, who is still owed an answer, and where the requests are.
struct Wave {
    /// Under DEST: `<task>.json` requests, `<task>.answer-<worker>.json` answers.
    prefix: String,
    array: String,
    /// Each array task's tasks not yet answered for, by shard (a wave holds a shard once;
    /// an adopted wave answers for an attempt of an earlier run, under its own number).
    owed: Vec<HashMap<u64, Task>>,
    /// The workers' files read whole so far.
    seen: HashSet<String>,
    /// What a worker that could not answer said (`<task>.error-<worker>.txt`), by task.
    errors: HashMap<usize, String>,
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("slurm state")
    }

    /// Takes what gathered during `GATHER` as one wave.
    async fn gather_then_submit(self: Arc<Self>) {
        tokio::time::sleep(GATHER).await;
        let (tasks, wave) = {
            let mut state = self.state();
            state.gathering = false;
            state.waves += 1;
            (std::mem::take(&mut state.queue), state.waves)
        };
        if tasks.is_empty() {
            return;
        }
        if self.state().recovered.is_none() {
            let recovered = self.recover().await;
            self.state().recovered = Some(recovered);
        }
        let tasks = self.take_recovered(tasks);
        if tasks.is_empty() {
            return;
        }
        if self.state().stopping {
            for task in tasks {
                let _ = self.results.send(AttemptDone::not_run(&task));
            }
            return;
        }
        let prefix = format!(
            "{}/{}/slurm/w{wave:04}-{:08x}/",
            crate::storage::FANOUT_DIR,
            self.base.job_id,
            self.nonce.fetch_add(1, Ordering::Relaxed) as u32
        );
        let submitted = SystemTime::now();
        match self.submit_wave(&prefix, tasks).await {
            Ok(wave) => self.follow(wave).await,
            Err((tasks, message)) => {
                for task in tasks {
                    let _ = self.results.send(remote::failed(&task, submitted, message.clone()));
                }
            }
        }
    }

    /// Earlier arrays of this job (a coordinator killed and resumed): their successful
    /// answers, and which shards their still-running tasks hold.
    async fn recover(&self) -> Recovered {
        let mut recovered = Recovered::default();
        let root = format!("{}/{}/slurm/", crate::storage::FANOUT_DIR, self.base.job_id);
        let mut waves: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut listing = self.base.dest.list(&root);
        while let Some(Ok(object)) = listing.next().await {
            if let Some((prefix, name)) = object.key.rsplit_once('/') {
                waves.entry(format!("{prefix}/")).or_default().push(name.to_string());
            }
        }
        if waves.is_empty() {
            return recovered;
        }
        let name = format!("fanout-{}", self.base.job_id);
        let args = ["-h", "-r", "-t", "all", "-n", &name, "-o", "%i %T"].map(String::from);
        let live: HashSet<String> = slurm_command("squeue", &args)
            .await
            .unwrap_or_default()
            .lines()
            .filter_map(|line| line.trim().split_once(' '))
            .filter(|(_, state)| !is_final(state.trim()))
            .map(|(id, _)| id.to_string())
            .collect();
        for (prefix, names) in waves {
            for (result, environment) in remote::succeeded_under(&self.base.dest, &prefix).await {
                recovered.answered.insert(result.shard, (result, environment));
            }
            let Ok(array) = self.base.dest.get(&format!("{prefix}{ARRAY_ID}")).await else { continue };
            let array = String::from_utf8_lossy(&array).trim().to_string();
            let shares =
                names.iter().filter(|n| n.ends_with(".json") && remote::StoredFile::parse(n).is_none()).count();
            let wave = recovered.waves.len();
            for share in (0..shares).filter(|share| live.contains(&format!("{array}_{share}"))) {
                let Ok(bytes) = self.base.dest.get(&format!("{prefix}{share}.json")).await else { continue };
                let Ok(request) = serde_json::from_slice::<Request>(&bytes) else { continue };
                for order in request.orders {
                    recovered.running.insert(order.shard.id, (wave, share));
                }
            }
            recovered.waves.push((prefix, array, shares));
        }
        recovered
    }

    /// Attempts an earlier array answered for are answered now; those a live earlier array
    /// task holds are followed there; the rest are returned, for a new wave.
    fn take_recovered(self: &Arc<Self>, tasks: Vec<Task>) -> Vec<Task> {
        let mut fresh = Vec::new();
        let mut adopted: BTreeMap<usize, Vec<HashMap<u64, Task>>> = BTreeMap::new();
        let mut state = self.state();
        let State { recovered, lanes, .. } = &mut *state;
        let recovered = recovered.as_mut().expect("recovered first");
        for task in tasks {
            if let Some((result, environment)) = recovered.answered.remove(&task.shard.id) {
                let result = ShardResult { attempt: task.attempt, ..result };
                let next = lanes.len() as u32;
                let lane = *lanes.entry(environment.clone()).or_insert(next);
                let _ = self.results.send(remote::attempt_done(result, lane, &environment));
            } else if let Some((wave, share)) = recovered.running.remove(&task.shard.id) {
                let shares = recovered.waves[wave].2;
                let owed = adopted.entry(wave).or_insert_with(|| (0..shares).map(|_| HashMap::new()).collect());
                owed[share].insert(task.shard.id, task);
            } else {
                fresh.push(task);
            }
        }
        for (wave, owed) in adopted {
            let (prefix, array, _) = recovered.waves[wave].clone();
            self.events.emit(Event::Note(format!("following array {array}, submitted before the restart")));
            let wave = Wave { prefix, array, owed, seen: HashSet::new(), errors: HashMap::new() };
            let inner = self.clone();
            tokio::spawn(async move { inner.follow(wave).await });
        }
        fresh
    }

    /// The CPUs of the partition the arrays go to: more array tasks than that wait for
    /// later scheduling passes (about a second each), so a wave has no more shares.
    async fn partition_cpus(&self) -> Option<usize> {
        if let Some(known) = self.state().partition_cpus {
            return known;
        }
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
        let cpus = slurm_command("sinfo", &args).await.ok().and_then(|out| {
            let totals = out.lines().filter_map(|line| line.trim().rsplit('/').next()?.parse::<usize>().ok());
            totals.max().filter(|&cpus| cpus > 0)
        });
        self.state().partition_cpus = Some(cpus);
        cpus
    }

    /// Stores each array task's request, then submits the array.
    async fn submit_wave(&self, prefix: &str, tasks: Vec<Task>) -> Result<Wave, (Vec<Task>, String)> {
        let cpus = self.partition_cpus().await.unwrap_or(usize::MAX);
        let count = tasks.len().min(self.settings.concurrency.max(1)).min(cpus);
        let shares = remote::split_into_shares(tasks, count);
        for (index, share) in shares.iter().enumerate() {
            let request: Request = self.base.request(share, &self.nonce);
            let body = Bytes::from(serde_json::to_vec(&request).expect("a request serializes"));
            if let Err(e) = self.base.dest.put(&format!("{prefix}{index}.json"), body).await {
                return Err((shares.into_iter().flatten().collect(), format!("storing the array's requests: {e}")));
            }
        }
        let requests = self.base.dest.root().join(prefix).to_string();
        let memory_mb = self.base.job.function.memory_bytes.div_ceil(1 << 20) + WORKER_OVERHEAD_MB;
        let mut args = vec![
            "--parsable".to_string(),
            format!("--array=0-{}%{}", shares.len() - 1, self.settings.concurrency.max(1)),
            format!("--job-name=fanout-{}", self.base.job_id),
            "--output=/dev/null".into(),
            "--cpus-per-task=1".into(),
            format!("--mem={memory_mb}M"),
        ];
        args.extend(self.settings.args.iter().cloned());
        let worker = shell_quote(&self.settings.worker.to_string_lossy());
        args.push(format!("--wrap=exec {worker} worker {}", shell_quote(&requests)));
        let array = match slurm_command("sbatch", &args).await {
            Ok(out) => out.trim().split(';').next().unwrap_or_default().to_string(),
            Err(e) => return Err((shares.into_iter().flatten().collect(), format!("sbatch: {e}"))),
        };
        {
            let mut state = self.state();
            state.stats.arrays.push(array.clone());
            state.stats.array_tasks += shares.len() as u64;
        }
        // A coordinator that resumes this job finds the array by it (see `recover`).
        let _ = self.base.dest.put(&format!("{prefix}{ARRAY_ID}"), Bytes::from(array.clone())).await;
        self.events.emit(Event::Note(format!("submitted array {array}: {} tasks", shares.len())));
        let owed = shares
            .into_iter()
            .map(|share| {
                // `started` stays unset: when a task's attempt starts within its share is
                // the worker's to know, so the coordinator's straggler backups and relative
                // timeouts leave it alone (a guest's own timeout still holds).
                share.into_iter().map(|task| (task.shard.id, task)).collect()
            })
            .collect();
        Ok(Wave { prefix: prefix.to_string(), array, owed, seen: HashSet::new(), errors: HashMap::new() })
    }

    /// Follows a wave until every attempt of it has been answered for.
    async fn follow(&self, mut wave: Wave) {
        let mut controller_lost_since: Option<std::time::Instant> = None;
        // Array tasks that had ended (by squeue) at the previous look without an answer.
        let mut ended_before: HashMap<usize, String> = HashMap::new();
        while wave.owed.iter().any(|owed| !owed.is_empty()) {
            tokio::time::sleep(FOLLOW_EVERY).await;
            self.read_answers(&mut wave).await;
            self.cancel_if_abandoned(&mut wave).await;
            let states = match self.task_states(&wave.array).await {
                Ok(states) => {
                    controller_lost_since = None;
                    states
                }
                Err(message) => {
                    let since = *controller_lost_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > CONTROLLER_PATIENCE {
                        self.fail_all(&mut wave, &format!("the Slurm controller stopped answering: {message}"));
                    }
                    continue;
                }
            };
            let running = states.values().filter(|state| state.as_str() == "RUNNING").count();
            self.set_running(&wave.array, running);
            // A task gone from squeue, or in a final state, answered before it ended; one
            // more look at the answers first, then what it still owes has failed.
            for (index, owed) in wave.owed.iter_mut().enumerate() {
                if owed.is_empty() {
                    continue;
                }
                let ended = match states.get(&index) {
                    None => Some("ENDED".to_string()),
                    Some(state) if is_final(state) => Some(state.clone()),
                    Some(_) => None,
                };
                let Some(ended) = ended else { continue };
                if let Some(state) = ended_before.get(&index) {
                    let stopping = self.state().stopping;
                    self.state().stats.tasks_lost += 1;
                    for (_, task) in owed.drain() {
                        let done = match stopping || task.cancel.is_cancelled() {
                            true => AttemptDone::not_run(&task),
                            false => remote::failed(
                                &task,
                                SystemTime::now(),
                                match wave.errors.get(&index) {
                                    Some(said) => format!(
                                        "slurm array task {}_{index} ended {state} without answering: {said}",
                                        wave.array
                                    ),
                                    None => format!(
                                        "slurm array task {}_{index} ended {state} without answering",
                                        wave.array
                                    ),
                                },
                            ),
                        };
                        let _ = self.results.send(done);
                    }
                } else {
                    ended_before.insert(index, ended);
                }
            }
        }
        self.set_running(&wave.array, 0);
    }

    /// Answers stored since the last look: each owed attempt answered once.
    async fn read_answers(&self, wave: &mut Wave) {
        // A look that fails (S3 unreachable a moment) is made again at the next.
        let read = remote::read_new(&self.base.dest, &wave.prefix, &mut wave.seen, remote::every_file).await;
        for (file, stored) in read.unwrap_or_default() {
            let answer = match stored {
                Stored::Answer(answer) => answer,
                Stored::Error(said) => {
                    wave.errors.entry(file.share).or_insert(said);
                    continue;
                }
                Stored::Done => continue,
            };
            let Some(owed) = wave.owed.get_mut(file.share) else { continue };
            let lane = {
                let mut state = self.state();
                let next = state.lanes.len() as u32;
                let lane = *state.lanes.entry(answer.environment.clone()).or_insert(next);
                let first = answer.results.iter().map(|r| r.started_ms).min();
                let last = answer.results.iter().map(|r| r.finished_ms).max();
                if let (Some(first), Some(last)) = (first, last) {
                    state.spans.push((first, last));
                    state.peak = state.peak.max(remote::most_at_once(&state.spans));
                }
                lane
            };
            for result in answer.results {
                // A second worker on the same share answers too: only the first counts.
                if let Some(task) = owed.remove(&result.shard) {
                    let result = ShardResult { attempt: task.attempt, ..result };
                    let _ = self.results.send(remote::attempt_done(result, lane, &answer.environment));
                }
            }
        }
    }

    /// Every owed attempt cancelled (a hard stop): the array goes, its attempts come back unrun.
    async fn cancel_if_abandoned(&self, wave: &mut Wave) {
        let owed: Vec<&Task> = wave.owed.iter().flat_map(|owed| owed.values()).collect();
        if owed.is_empty() || !owed.iter().all(|task| task.cancel.is_cancelled()) {
            return;
        }
        let _ = slurm_command("scancel", std::slice::from_ref(&wave.array)).await;
        for owed in &mut wave.owed {
            for (_, task) in owed.drain() {
                let _ = self.results.send(AttemptDone::not_run(&task));
            }
        }
    }

    fn fail_all(&self, wave: &mut Wave, message: &str) {
        for owed in &mut wave.owed {
            for (_, task) in owed.drain() {
                let _ = self.results.send(remote::failed(&task, SystemTime::now(), message.to_string()));
            }
        }
    }

    /// Each array task's state, by index (`squeue -r` lists one line a task).
    async fn task_states(&self, array: &str) -> Result<BTreeMap<usize, String>, String> {
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
                Some((index, state.trim().to_string()))
            })
            .collect())
    }

    fn set_running(&self, array: &str, running: usize) {
        let mut state = self.state();
        state.running.insert(array.to_string(), running);
        let live: usize = state.running.values().sum();
        state.peak = state.peak.max(live);
        self.events.emit(Event::Workers { live });
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

impl Executor for SlurmExecutor {
    fn submit(&self, task: Task) {
        let mut state = self.0.state();
        state.queue.push(task);
        if !state.gathering {
            state.gathering = true;
            tokio::spawn(self.0.clone().gather_then_submit());
        }
    }

    fn stop_starting(&self) {
        let arrays = {
            let mut state = self.0.state();
            state.stopping = true;
            for task in std::mem::take(&mut state.queue) {
                let _ = self.0.results.send(AttemptDone::not_run(&task));
            }
            state.stats.arrays.clone()
        };
        // Tasks not started yet never will be; running ones finish and answer.
        tokio::spawn(async move {
            for array in arrays {
                let _ = slurm_command("scancel", &["--state=PENDING".to_string(), array]).await;
            }
        });
    }

    fn can_start_now(&self) -> bool {
        !self.0.state().stopping
    }

    fn live(&self) -> usize {
        self.0.state().running.values().sum()
    }

    fn peak(&self) -> usize {
        self.0.state().peak
    }

    fn summary(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.0.state().stats).ok()
    }

    fn stages_locally(&self) -> bool {
        false
    }

    fn sweep(&self) -> futures::future::BoxFuture<'static, ()> {
        self.0.base.sweep_attempts()
    }

    fn shards_in_flight(&self) -> usize {
        remote::BATCH_ENGINE_IN_FLIGHT
    }
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
