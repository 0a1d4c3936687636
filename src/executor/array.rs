//! Batch engines that run arrays of `fanout worker` tasks, one executor for all of them: the
//! attempts the coordinator hands over are gathered into waves; each wave is one array whose
//! task `i` runs `fanout worker REQUESTS` on share `i` of the wave's attempts (the engine
//! sets the index: `SLURM_ARRAY_TASK_ID`, `CLOUD_RUN_TASK_INDEX`, `JOB_INDEX`,
//! `AWS_BATCH_JOB_ARRAY_INDEX`). A share is a request stored in DEST
//! (`_fanout/<job>/<engine>/<wave>/<task>.json`), in the Lambda worker's protocol; the task
//! stores its answer beside it. The executor follows the array (the engine's task states)
//! and the answers, and sends one [`AttemptDone`] per attempt: from the answer, or a
//! failure when a task ended without answering (cancelled, killed, its machine lost), which
//! the coordinator retries in a later wave of only what failed. Publishing and commits stay
//! in the coordinator. Owns the waves and their following; each engine's API is an
//! [`ArrayApi`] in a sibling file (`slurm`, `cloud`), which knows nothing of waves.
//!
//! [`AttemptDone`]: crate::executor::AttemptDone

use super::remote::protocol::{Request, ShardResult};
use super::remote::{self, JobBase, Stored, WORKER_OVERHEAD_MB};
use super::{AttemptDone, Executor, Task};
use crate::events::{Event, EventSink};
use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedSender;

/// Attempts handed over within this long of each other share a wave (one array).
const GATHER: Duration = Duration::from_millis(200);
/// How often a wave's answers are looked for in DEST (the engine's task states are asked at
/// the engine's own pace, [`ArrayApi::follow_every`]).
const ANSWERS_EVERY: Duration = Duration::from_millis(400);
/// The control plane may be unreachable this long before a wave's attempts are given up on.
const CONTROLLER_PATIENCE: Duration = Duration::from_secs(120);
/// Beside a wave's requests: the id of the array that runs them.
const ARRAY_ID: &str = "array-id";

/// What an engine says of one array task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskState {
    /// Not started yet.
    Waiting,
    Running,
    /// Over, in the engine's word (COMPLETED, FAILED, CANCELLED, SUCCEEDED...).
    Ended(String),
}

/// One array to submit.
pub struct Submission<'a> {
    /// What each task runs after `fanout`: `worker REQUESTS`, REQUESTS being where the wave's
    /// requests are (`DEST/_fanout/<job>/<engine>/<wave>/`) as the tasks reach it; for a job
    /// whose arrays the user submits (`--emit`), `worker DEST --job ID --count N`.
    pub args: &'a [String],
    /// Tasks in the array (indices 0..count).
    pub count: usize,
    /// Tasks running at once at most.
    pub concurrency: usize,
    pub job_id: &'a str,
    /// The memory a task needs: the guest's and the worker's own.
    pub memory_mb: u64,
    /// The guest's time limit; a task needs a little more ([`task_timeout`]).
    pub timeout: Duration,
    /// Times the engine may start a failed task: 1 when the coordinator submits (it retries
    /// what failed in an array of only that), more when nobody else would.
    pub task_attempts: u32,
}

/// What the engine is asked for when it submits by itself: the user's tools, from what
/// `fanout run --emit` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Emission {
    /// The engine's API call: method, URL and body (the body alone is what the engine's CLI
    /// takes as a file, where it takes one).
    pub method: &'static str,
    pub url: String,
    pub body: serde_json::Value,
    /// The same submission with the engine's own command-line tool.
    pub command: String,
}

/// How long an array task may run: a share of guests, each within the job's timeout, and
/// the worker's own start and stores.
pub fn task_timeout(guest: Duration) -> Duration {
    Duration::from_secs(guest.as_secs().max(60) * 2 + 600)
}

/// An engine's control plane, as the array executor uses it.
#[async_trait]
pub trait ArrayApi: Send + Sync + 'static {
    /// The executor's kind in summaries and the folder of its waves: "slurm", "cloud-run"...
    fn kind(&self) -> &'static str;
    /// A task as the engine's users know it, for messages ("slurm array task 55_3").
    fn task_name(&self, array: &str, index: usize) -> String;
    /// How often the array's tasks are looked at.
    fn follow_every(&self) -> Duration;
    /// Tasks one array should have at most beyond the concurrency (Slurm: the partition's
    /// CPUs, since more wait for later scheduling passes).
    async fn most_tasks(&self) -> Option<usize> {
        None
    }
    /// Submits the array; its id.
    async fn submit(&self, submission: &Submission<'_>) -> Result<String, String>;
    /// Each task's state, by index; a task the engine no longer lists has ended. `Err` when
    /// the control plane does not answer.
    async fn states(&self, array: &str, count: usize) -> Result<BTreeMap<usize, TaskState>, String>;
    /// Cancels the array's tasks: only those not started, or all of them.
    async fn cancel(&self, array: &str, pending_only: bool);
}

#[derive(Default, serde::Serialize)]
struct ArrayStats {
    kind: &'static str,
    arrays: Vec<String>,
    array_tasks: u64,
    /// Array tasks that ended without answering (their attempts were failed and retried).
    tasks_lost: u64,
}

/// What earlier runs of the job left with the engine, found when a resumed job submits its first
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
    /// The engine's most tasks in an array, once asked.
    most_tasks: Option<Option<usize>>,
    gathering: bool,
    stopping: bool,
    waves: u64,
    /// Array tasks running now, by array.
    running: HashMap<String, usize>,
    peak: usize,
    /// Lanes of the timeline: one per array task that answered.
    lanes: HashMap<String, u32>,
    /// When each answering worker ran its guests (Unix ms): tasks too quick for the engine
    /// to report running still count towards the peak.
    spans: Vec<(u64, u64)>,
    stats: ArrayStats,
}

struct Inner {
    base: JobBase,
    api: Box<dyn ArrayApi>,
    concurrency: usize,
    events: EventSink,
    results: UnboundedSender<AttemptDone>,
    state: Mutex<State>,
    nonce: AtomicU64,
}

/// The executor; cheap to clone.
#[derive(Clone)]
pub struct ArrayExecutor(Arc<Inner>);

impl ArrayExecutor {
    pub fn new(
        base: JobBase,
        api: Box<dyn ArrayApi>,
        concurrency: usize,
        results: UnboundedSender<AttemptDone>,
        events: EventSink,
    ) -> ArrayExecutor {
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        let state = State {
            queue: Vec::new(),
            recovered: None,
            most_tasks: None,
            gathering: false,
            stopping: false,
            waves: 0,
            running: HashMap::new(),
            peak: 0,
            lanes: HashMap::new(),
            spans: Vec::new(),
            stats: ArrayStats { kind: api.kind(), ..Default::default() },
        };
        ArrayExecutor(Arc::new(Inner {
            base,
            api,
            concurrency: concurrency.max(1),
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
        self.state.lock().expect("array state")
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
            "{}/{}/{}/w{wave:04}-{:08x}/",
            crate::storage::FANOUT_DIR,
            self.base.job_id,
            self.api.kind(),
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
        let root = format!("{}/{}/{}/", crate::storage::FANOUT_DIR, self.base.job_id, self.api.kind());
        let mut waves: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut listing = self.base.dest.list(&root);
        while let Some(Ok(object)) = listing.next().await {
            if let Some((prefix, name)) = object.key.rsplit_once('/') {
                waves.entry(format!("{prefix}/")).or_default().push(name.to_string());
            }
        }
        for (prefix, names) in waves {
            for (result, environment) in remote::succeeded_under(&self.base.dest, &prefix).await {
                recovered.answered.insert(result.shard, (result, environment));
            }
            let Ok(array) = self.base.dest.get(&format!("{prefix}{ARRAY_ID}")).await else { continue };
            let array = String::from_utf8_lossy(&array).trim().to_string();
            let shares =
                names.iter().filter(|n| n.ends_with(".json") && remote::StoredFile::parse(n).is_none()).count();
            // An engine that cannot say is taken to have ended the array: its shards run again.
            let states = self.api.states(&array, shares).await.unwrap_or_default();
            let live = |share: &usize| matches!(states.get(share), Some(TaskState::Waiting | TaskState::Running));
            let wave = recovered.waves.len();
            for share in (0..shares).filter(live) {
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

    /// The most tasks an array should have, once asked of the engine.
    async fn most_tasks(&self) -> Option<usize> {
        if let Some(known) = self.state().most_tasks {
            return known;
        }
        let most = self.api.most_tasks().await;
        self.state().most_tasks = Some(most);
        most
    }

    /// Stores each array task's request, then submits the array.
    async fn submit_wave(&self, prefix: &str, tasks: Vec<Task>) -> Result<Wave, (Vec<Task>, String)> {
        let most = self.most_tasks().await.unwrap_or(usize::MAX);
        let count = tasks.len().min(self.concurrency).min(most);
        let shares = remote::split_into_shares(tasks, count);
        for (index, share) in shares.iter().enumerate() {
            let request: Request = self.base.request(share, &self.nonce);
            let body = Bytes::from(serde_json::to_vec(&request).expect("a request serializes"));
            if let Err(e) = self.base.dest.put(&format!("{prefix}{index}.json"), body).await {
                return Err((shares.into_iter().flatten().collect(), format!("storing the array's requests: {e}")));
            }
        }
        let args = ["worker".to_string(), self.base.dest.root().join(prefix).to_string()];
        let submission = Submission {
            args: &args,
            count: shares.len(),
            concurrency: self.concurrency,
            job_id: &self.base.job_id,
            memory_mb: self.base.job.function.memory_bytes.div_ceil(1 << 20) + WORKER_OVERHEAD_MB,
            timeout: Duration::from_millis(self.base.job.function.timeout_ms),
            task_attempts: 1,
        };
        let array = match self.api.submit(&submission).await {
            Ok(array) => array,
            Err(e) => return Err((shares.into_iter().flatten().collect(), e)),
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
        // Array tasks that had ended (by the engine) at the previous look without an answer.
        let mut ended_before: HashMap<usize, String> = HashMap::new();
        let mut states_asked: Option<tokio::time::Instant> = None;
        while wave.owed.iter().any(|owed| !owed.is_empty()) {
            tokio::time::sleep(ANSWERS_EVERY.min(self.api.follow_every())).await;
            self.read_answers(&mut wave).await;
            self.cancel_if_abandoned(&mut wave).await;
            // Answers are read from DEST often; the engine's API is asked at its own pace.
            if states_asked.is_some_and(|asked| asked.elapsed() < self.api.follow_every()) {
                continue;
            }
            states_asked = Some(tokio::time::Instant::now());
            let states = match self.api.states(&wave.array, wave.owed.len()).await {
                Ok(states) => {
                    controller_lost_since = None;
                    states
                }
                Err(message) => {
                    let since = *controller_lost_since.get_or_insert_with(std::time::Instant::now);
                    if since.elapsed() > CONTROLLER_PATIENCE {
                        self.fail_all(
                            &mut wave,
                            &format!("the {} control plane stopped answering: {message}", self.api.kind()),
                        );
                    }
                    continue;
                }
            };
            let running = states.values().filter(|state| **state == TaskState::Running).count();
            self.set_running(&wave.array, running);
            // A task the engine no longer lists, or in a final state, answered before it ended; one
            // more look at the answers first, then what it still owes has failed.
            for (index, owed) in wave.owed.iter_mut().enumerate() {
                if owed.is_empty() {
                    continue;
                }
                let ended = match states.get(&index) {
                    None => Some("ENDED".to_string()),
                    Some(TaskState::Ended(state)) => Some(state.clone()),
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
                                        "{} ended {state} without answering: {said}",
                                        self.api.task_name(&wave.array, index)
                                    ),
                                    None => format!(
                                        "{} ended {state} without answering",
                                        self.api.task_name(&wave.array, index)
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
        self.api.cancel(&wave.array, false).await;
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

    fn set_running(&self, array: &str, running: usize) {
        let mut state = self.state();
        state.running.insert(array.to_string(), running);
        let live: usize = state.running.values().sum();
        state.peak = state.peak.max(live);
        self.events.emit(Event::Workers { live });
    }
}

impl Executor for ArrayExecutor {
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
        let inner = self.0.clone();
        tokio::spawn(async move {
            for array in arrays {
                inner.api.cancel(&array, true).await;
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
