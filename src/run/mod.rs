//! The coordinator of one run: takes planned shards, stages their inputs ahead of the
//! workers (or lets a remote executor's workers stage them), hands attempts to the
//! executor, retries failures with backoff, publishes outputs, and commits records to the
//! journal after the outputs exist. A second Ctrl-C or a panic anywhere in the process is
//! handled in its loop: running attempts are cancelled and the run ends. Owns the per-shard state
//! machine and the run's accounting. All of its state lives in one task; staging,
//! publishing and journal writes run beside it as tasks that report back by message, so
//! CPUs never wait on I/O and no lock guards the state.
//!
//! A shard goes: planned -> staged -> attempt running -> (retry after backoff)* ->
//! published or failed -> log stored, staging removed -> record in journal (committed).

use crate::events::{Event, EventSink};
use crate::executor::{AttemptDone, Executor};
use crate::job::Job;
use crate::manifest::{Counts, JobDocument, Journal, Manifest, ManifestError, ShardRecord, ShardStatus};
use crate::runtime::OutcomeKind;
use crate::source::{PlanError, PlanTotals, Planned, Reader, Shard, ShardInput};
use crate::stage::{self, PublishError, Slot, StageError, Staged};
use crate::storage::DynStorage;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod attempts;
mod record;
mod state;
mod tail;

use state::{Cancelled, InFlight};

/// Shards per stored plan segment.
const PLAN_SEGMENT: usize = 10_000;
/// How often buffered commit records are written as a journal segment.
const JOURNAL_INTERVAL: Duration = Duration::from_millis(250);
/// A journal segment is written early once this many records wait.
const JOURNAL_BATCH: usize = 5_000;
/// Bytes of input staged or running at once: a shard is taken from the plan only while
/// less than this is in flight (and always when nothing is). Keeps big objects flowing one
/// after another instead of all arriving together, and bounds the staging disk.
const STAGING_BUDGET: u64 = 256 << 20;
/// Shards whose inputs reach this size empty their slot as soon as they are done.
const CLEAN_EAGERLY: u64 = 4 << 20;
pub(crate) use crate::job::backoff_before;

/// How a run is asked to stop early (Ctrl-C): `soft` stops dispatching and lets running
/// attempts end; `hard` also cancels those (they publish nothing).
#[derive(Clone, Default)]
pub struct Shutdown {
    pub soft: CancellationToken,
    pub hard: CancellationToken,
}

/// Makes the run's executor once the coordinator's results channel exists.
pub type ExecutorFactory = Box<dyn FnOnce(mpsc::UnboundedSender<AttemptDone>) -> Box<dyn Executor> + Send>;

/// Everything a run needs, resolved and opened by the caller.
pub struct RunSpec {
    pub setup: RunSetup,
    /// The shards, from the planner or from the stored plan.
    pub shards: mpsc::Receiver<Result<Planned, PlanError>>,
}

/// What the coordinator is built from.
pub struct RunSetup {
    pub job: Job,
    pub document: JobDocument,
    /// True when job.json must be written before the first shard is dispatched (new jobs).
    pub write_job_document: bool,
    pub manifest: Manifest,
    /// Where staging reads the shards' inputs.
    pub source: Reader,
    pub dest: DynStorage,
    /// Builds the executor, given the channel its results go to.
    pub executor: ExecutorFactory,
    /// What earlier runs committed (empty for a new job).
    pub prior: Journal,
    /// True when the shards come from a fresh planning, which must be stored.
    pub record_plan: bool,
    pub staging_root: PathBuf,
    pub events: EventSink,
    pub shutdown: Shutdown,
    /// Set for `fanout watch`: the plan never ends by itself.
    pub watch: Option<WatchRun>,
    /// Told of each shard committed successfully, once its record is stored.
    pub on_commit: Option<Arc<dyn CommitListener>>,
}

/// What follows the journal from outside: a Kafka source moves its consumer group's
/// offsets over the ranges of committed shards, never ahead of their records.
#[async_trait::async_trait]
pub trait CommitListener: Send + Sync {
    /// Shards whose successful commit records are stored.
    fn committed(&self, shards: &[Shard]);
    /// Passes on everything `committed` was told before the run ends.
    async fn flush(&self) -> Result<(), String>;
}

#[async_trait::async_trait]
impl CommitListener for crate::source::kafka::GroupOffsets {
    fn committed(&self, shards: &[Shard]) {
        let ranges = shards.iter().filter_map(|shard| match shard.input {
            ShardInput::Kafka { partition, start, end, .. } => Some((partition, start, end)),
            _ => None,
        });
        crate::source::kafka::GroupOffsets::committed(self, ranges);
    }

    async fn flush(&self) -> Result<(), String> {
        crate::source::kafka::GroupOffsets::flush(self).await
    }
}

/// What a watch's run needs beyond a batch run's.
pub struct WatchRun {
    /// Plan segments earlier runs stored: this run's are numbered after them.
    pub plan_segments: u64,
    /// Receives the run's state every `SNAPSHOT_INTERVAL` while shards finish, for the
    /// periodic report.csv and summary.json.
    pub snapshots: mpsc::UnboundedSender<RunResult>,
    /// The shards that took each object, from earlier runs (one per version).
    pub object_shards: HashMap<String, Vec<u64>>,
    /// Store each shard in the plan before it runs, not with its commit record: its range
    /// was cut by time (a Kafka watch), so planning again could not cut it the same way.
    pub plan_first: bool,
}

/// How often a watch's reports are rewritten while shards finish.
const SNAPSHOT_INTERVAL: Duration = Duration::from_secs(10);

/// The run's accounting, for the summary.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RunStats {
    pub run: u32,
    pub shards_total: u64,
    pub shards_ok: u64,
    pub shards_failed: u64,
    pub shards_pending: u64,
    pub shards_skipped: u64,
    pub attempts: u64,
    pub retries: u64,
    pub cold_starts: u64,
    pub warm_starts: u64,
    pub workers_peak: usize,
    pub workers_at_end: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub wall_ms: u64,
    pub plan_ms: Option<u64>,
    /// Time guests spent running, summed over attempts.
    pub busy_ms: u64,
    /// From the first attempt's start to the last attempt's end.
    pub map_ms: u64,
    /// CPU time the process used in that span, over the span times the cores: how busy
    /// the machine was kept while shards ran (staging and publishing included).
    pub map_cpu_busy: f64,
    /// Backup attempts started for stragglers, and how many of them won.
    pub backups: u64,
    pub backups_won: u64,
    pub plan_error: Option<String>,
    pub stopped_early: bool,
    pub outcomes: BTreeMap<OutcomeKind, u64>,
    /// The executor's own accounting (Lambda: invocations, throttles, GB-seconds, cost).
    pub executor: Option<serde_json::Value>,
}

pub struct RunResult {
    pub stats: RunStats,
    /// The planning error, when planning stopped early (its text is also in the stats).
    pub plan_failure: Option<PlanError>,
    /// The final record of every shard that has one, prior runs included.
    pub records: BTreeMap<u64, ShardRecord>,
    pub plan_totals: Option<PlanTotals>,
    pub succeeded: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("writing the manifest: {0}")]
    Manifest(#[from] ManifestError),
    #[error("{0}")]
    Fatal(String),
}

enum Msg {
    Staged {
        shard: u64,
        result: Result<Staged, StageError>,
        slot: Slot,
    },
    /// Publishing an attempt's outputs failed (nothing of them is left in DEST).
    PublishFailed {
        shard: u64,
        error: PublishError,
    },
    /// A running attempt's `/out` was checked: `Some` says which output rule it broke.
    OutputsChecked {
        shard: u64,
        attempt: u32,
        broken: Option<String>,
    },
    RetryDue {
        shard: u64,
    },
    /// The shard is done with its slot: committed (`Some` record) or left pending (`None`).
    Finalized {
        shard: u64,
        record: Option<ShardRecord>,
        slot: Slot,
    },
}

struct Coordinator {
    job: Job,
    manifest: Manifest,
    source: Reader,
    dest: DynStorage,
    executor: Box<dyn Executor>,
    events: EventSink,
    shutdown: Shutdown,
    /// The second Ctrl-C (or a panic) was heard: running attempts are cancelled.
    hard_stopped: bool,
    /// When a run failed by a panic stops waiting for what it had in flight (a task that
    /// panicked never reports back); those shards stay pending.
    give_up_at: Option<tokio::time::Instant>,
    staging_root: PathBuf,
    run: u32,
    prior: Journal,
    document: JobDocument,
    write_job_document: bool,
    record_plan: bool,

    /// Free staging slots; `None` until the first shard makes them.
    slots: Option<Vec<Slot>>,
    capacity: usize,
    in_flight: HashMap<u64, InFlight>,
    bytes_in_flight: u64,
    records: BTreeMap<u64, ShardRecord>,
    durations: tail::Durations,
    journal_buffer: Vec<ShardRecord>,
    /// The successful shards of `journal_buffer`, for `on_commit` once it is stored.
    commit_buffer: Vec<Shard>,
    on_commit: Option<Arc<dyn CommitListener>>,
    journal_segment: u64,
    journal_writes: Vec<tokio::task::JoinHandle<Result<(), ManifestError>>>,
    plan_buffer: Vec<Shard>,
    plan_segment: u64,
    plan_writes: Vec<tokio::task::JoinHandle<Result<(), ManifestError>>>,
    planned: u64,
    plan_done: bool,
    plan_totals: Option<PlanTotals>,
    plan_failure: Option<PlanError>,
    stopping: bool,
    msg_tx: mpsc::UnboundedSender<Msg>,
    stats: RunStats,
    started: Instant,
    /// Wall clock and process CPU time at the first attempt; the latest attempt's end.
    map_start: Option<(Instant, Duration)>,
    map_end: Option<Instant>,
    fatal: Option<String>,
    /// Which shard published each output key (by hash), so that no shard silently
    /// overwrites another's output: two shards writing `photo.jpg` is a failure, not a race.
    output_owners: HashMap<u64, u64>,
    watch: Option<WatchRun>,
    /// Records committed since the last snapshot was sent (watch).
    unreported: bool,
    /// The highest shard id taken this run.
    last_shard: Option<u64>,
    /// In a watch, the shards whose objects a shard took again (new versions): it may
    /// replace their outputs, and only theirs.
    supersedes: HashMap<u64, Vec<u64>>,
}

/// The hash under which an output key is claimed in `Coordinator::output_owners`.
fn output_key_hash(key: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    hasher.finish()
}

/// CPU time (user + system) this process has used so far.
fn process_cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else { return Duration::ZERO };
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time()))
}

/// How often running attempts are checked against relative timeouts and for stragglers.
const TAIL_CHECK: Duration = Duration::from_millis(100);

/// How long a run failed by a panic waits for cancelled attempts and publishing to end.
const PANIC_GRACE: Duration = Duration::from_secs(10);

/// The line of a panic told to the run (or of the first of many, when more came at once).
fn panic_line(told: Result<String, tokio::sync::broadcast::error::RecvError>) -> String {
    told.unwrap_or_else(|e| format!("in several places at once ({e})"))
}

/// Sleeps until `at`, or forever when there is no `at`.
async fn sleep_until_some(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Runs the job's shards to the end (or to a stop) and returns what happened.
pub async fn execute(spec: RunSpec) -> Result<RunResult, RunError> {
    // Before the executor starts its threads: a panic in any of them fails the run.
    let mut panics = crate::panics::listen();
    let (results_tx, mut results_rx) = mpsc::unbounded_channel::<AttemptDone>();
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel::<Msg>();
    let mut shards = spec.shards;
    let mut coordinator = Coordinator::new(spec.setup, results_tx, msg_tx);
    let mut journal_tick = tokio::time::interval(JOURNAL_INTERVAL);
    journal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tail_tick = tokio::time::interval(TAIL_CHECK);
    tail_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut snapshot_tick = tokio::time::interval(SNAPSHOT_INTERVAL);
    snapshot_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Timers run only while there is something to time, so that a watch waiting for objects
    // does not wake up at all.
    while !coordinator.is_finished() {
        tokio::select! {
            planned = shards.recv(), if coordinator.can_take_shard() => {
                let batch = coordinator.with_ready_shards(planned, &mut shards);
                coordinator.on_planned_batch(batch).await
            }
            Some(done) = results_rx.recv() => coordinator.on_attempt_done(done),
            Some(msg) = msg_rx.recv() => coordinator.on_message(msg),
            _ = journal_tick.tick(), if coordinator.has_journal_work() => coordinator.flush_journal(),
            _ = tail_tick.tick(), if !coordinator.in_flight.is_empty() => coordinator.watch_tail(),
            _ = snapshot_tick.tick(), if coordinator.unreported => coordinator.send_snapshot(),
            _ = coordinator.shutdown.soft.cancelled(), if !coordinator.stopping => coordinator.begin_stop(),
            _ = coordinator.shutdown.hard.cancelled(), if !coordinator.hard_stopped => coordinator.hard_stop(),
            panicked = panics.recv() => coordinator.on_panic(panic_line(panicked)),
            _ = sleep_until_some(coordinator.give_up_at) => coordinator.give_up_waiting(),
        }
    }
    // A panic told after the last turn of the loop still fails the run; from here on,
    // panics print as Rust prints them (the journal's tasks report theirs as errors).
    if let Ok(line) = panics.try_recv() {
        coordinator.on_panic(line);
    }
    drop(panics);
    coordinator.finish().await
}

impl Coordinator {
    fn new(spec: RunSetup, results_tx: mpsc::UnboundedSender<AttemptDone>, msg_tx: mpsc::UnboundedSender<Msg>) -> Self {
        let executor = (spec.executor)(results_tx);
        let run = spec.prior.next_run;
        // Outputs earlier runs published stay theirs: no shard of this run may overwrite one.
        let output_owners = spec
            .prior
            .latest
            .values()
            .filter(|record| record.status == ShardStatus::Ok)
            .flat_map(|record| record.outputs.iter().map(|key| (output_key_hash(key), record.shard)))
            .collect();
        Coordinator {
            capacity: executor.shards_in_flight(),
            manifest: spec.manifest,
            source: spec.source,
            dest: spec.dest,
            executor,
            events: spec.events,
            shutdown: spec.shutdown,
            staging_root: spec.staging_root,
            run,
            prior: spec.prior,
            document: spec.document,
            write_job_document: spec.write_job_document,
            record_plan: spec.record_plan,
            slots: None,
            in_flight: HashMap::new(),
            bytes_in_flight: 0,
            records: BTreeMap::new(),
            durations: tail::Durations::default(),
            journal_buffer: Vec::new(),
            commit_buffer: Vec::new(),
            on_commit: spec.on_commit,
            journal_segment: 0,
            journal_writes: Vec::new(),
            plan_buffer: Vec::new(),
            plan_writes: Vec::new(),
            planned: 0,
            plan_done: false,
            plan_totals: None,
            plan_failure: None,
            stopping: false,
            hard_stopped: false,
            give_up_at: None,
            msg_tx,
            stats: RunStats { run, ..Default::default() },
            started: Instant::now(),
            map_start: None,
            map_end: None,
            fatal: None,
            output_owners,
            plan_segment: spec.watch.as_ref().map_or(0, |watch| watch.plan_segments),
            watch: spec.watch,
            unreported: false,
            last_shard: None,
            supersedes: HashMap::new(),
            job: spec.job,
        }
    }

    fn has_journal_work(&self) -> bool {
        !self.journal_buffer.is_empty()
            || !self.journal_writes.is_empty()
            || (self.watch.is_some() && !self.plan_buffer.is_empty())
    }

    /// The run's state as a result, prior runs' records included (for a watch's reports).
    fn snapshot(&self) -> RunResult {
        let mut records = self.records.clone();
        for (shard, record) in &self.prior.latest {
            records.entry(*shard).or_insert_with(|| record.clone());
        }
        let mut stats = self.stats.clone();
        let Counts { ok, failed, superseded } = Counts::of(records.values());
        stats.shards_total = self.shards_known(&records);
        stats.shards_pending = stats.shards_total.saturating_sub(ok + failed + superseded);
        stats.workers_peak = self.executor.peak();
        stats.workers_at_end = self.executor.live();
        stats.wall_ms = self.started.elapsed().as_millis() as u64;
        let succeeded = self.job.retry.tolerated.allows(failed, stats.shards_total);
        RunResult { stats, plan_failure: None, records, plan_totals: None, succeeded }
    }

    /// Shards a watch knows of: every id up to the highest recorded or taken.
    fn shards_known(&self, records: &BTreeMap<u64, ShardRecord>) -> u64 {
        let recorded = records.keys().next_back().copied();
        recorded.max(self.last_shard).map_or(0, |last| last + 1)
    }

    fn send_snapshot(&mut self) {
        self.unreported = false;
        if let Some(watch) = &self.watch {
            let _ = watch.snapshots.send(self.snapshot());
        }
    }

    /// Whether the next planned shard may be taken: while planning goes on, nothing stops
    /// the run, a slot is free and the staging budget allows (always when nothing is in flight).
    fn can_take_shard(&self) -> bool {
        !self.plan_done
            && !self.stopping
            && self.fatal.is_none()
            && self.slots.as_ref().is_none_or(|free| !free.is_empty())
            && (self.in_flight.is_empty() || self.bytes_in_flight < STAGING_BUDGET)
    }

    fn is_finished(&self) -> bool {
        // The last journal records are written by `finish`, without waiting for a tick.
        self.in_flight.is_empty() && (self.fatal.is_some() || self.plan_done || self.stopping)
    }

    fn begin_stop(&mut self) {
        self.stopping = true;
        self.stats.stopped_early = true;
        self.executor.stop_starting();
        self.events.emit(Event::Stopping { hard: false });
    }

    /// The second Ctrl-C: running attempts are cancelled (they publish nothing).
    fn hard_stop(&mut self) {
        if !self.stopping {
            self.begin_stop();
        }
        self.cancel_running();
        self.events.emit(Event::Stopping { hard: true });
    }

    /// Nothing new starts and every running attempt is cancelled (each comes back, and
    /// publishing that has begun ends, before the run does).
    fn cancel_running(&mut self) {
        if !self.stopping {
            self.stopping = true;
            self.stats.stopped_early = true;
            self.executor.stop_starting();
        }
        self.hard_stopped = true;
        self.shutdown.hard.cancel();
    }

    /// A panic in a thread or task the run waits on: the run fails with it, keeping what
    /// it committed.
    fn on_panic(&mut self, line: String) {
        self.fatal.get_or_insert(format!(
            "an internal error (a bug in fanout) stopped the run: panicked {line}; \
             the manifest holds every shard committed before it"
        ));
        if !self.hard_stopped {
            self.cancel_running();
        }
        // What panicked may have been the task a shard waits for: after the grace, the
        // shards still in flight stay pending (a redrive runs them).
        self.give_up_at.get_or_insert(tokio::time::Instant::now() + PANIC_GRACE);
    }

    /// Stops waiting for what did not come back after a panic.
    fn give_up_waiting(&mut self) {
        self.give_up_at = None;
        let left = self.in_flight.len();
        self.events.emit(Event::Note(format!(
            "{left} shard(s) in flight did not come back after the panic: they stay pending"
        )));
        self.in_flight.clear();
    }

    /// The shard just planned, and (when shards are stored before they run) those that
    /// wait behind it, up to the free slots: stored together, as one plan segment.
    fn with_ready_shards(
        &self,
        first: Option<Result<Planned, PlanError>>,
        shards: &mut mpsc::Receiver<Result<Planned, PlanError>>,
    ) -> Vec<Option<Result<Planned, PlanError>>> {
        let mut batch = vec![first];
        if self.plans_first() {
            let room = self.slots.as_ref().map_or(self.capacity, Vec::len);
            while batch.len() < room {
                match shards.try_recv() {
                    Ok(planned) => batch.push(Some(planned)),
                    Err(_) => break,
                }
            }
        }
        batch
    }

    fn plans_first(&self) -> bool {
        self.watch.as_ref().is_some_and(|watch| watch.plan_first)
    }

    async fn on_planned_batch(&mut self, batch: Vec<Option<Result<Planned, PlanError>>>) {
        if self.plans_first() {
            let shards: Vec<Shard> = batch
                .iter()
                .filter_map(|planned| match planned {
                    Some(Ok(Planned::Shard(shard))) => Some(shard.clone()),
                    _ => None,
                })
                .collect();
            if !shards.is_empty() {
                let segment = self.plan_segment;
                self.plan_segment += 1;
                if let Err(e) = self.manifest.write_plan_segment(segment, &shards).await {
                    self.fatal = Some(format!("storing the plan: {e}"));
                    return;
                }
            }
        }
        for planned in batch {
            self.on_planned(planned).await;
        }
    }

    async fn on_planned(&mut self, planned: Option<Result<Planned, PlanError>>) {
        match planned {
            Some(Ok(Planned::Shard(shard))) => {
                self.planned += 1;
                self.last_shard = self.last_shard.max(Some(shard.id));
                if self.write_job_document {
                    // job.json goes first: a manifest never exists without its job.
                    self.write_job_document = false;
                    if let Err(e) = self.manifest.write_job(&self.document).await {
                        self.fatal = Some(format!("writing job.json: {e}"));
                        return;
                    }
                }
                if self.slots.is_none() {
                    // A remote executor stages on its workers: one empty slot stands for all.
                    let local = self.executor.stages_locally();
                    let count = if local { self.capacity } else { 1 };
                    match stage::make_slots(&self.staging_root, count, STAGING_BUDGET).await {
                        Ok(slots) if local => self.slots = Some(slots),
                        Ok(slots) => self.slots = Some(vec![slots[0].clone(); self.capacity]),
                        Err(e) => {
                            self.fatal = Some(e.to_string());
                            return;
                        }
                    }
                }
                if self.record_plan && !self.plans_first() {
                    self.plan_buffer.push(shard.clone());
                    if self.plan_buffer.len() >= PLAN_SEGMENT && self.watch.is_none() {
                        self.store_plan_segment();
                    }
                }
                self.dispatch(shard);
            }
            Some(Ok(Planned::Done(totals))) => {
                self.plan_done = true;
                self.stats.plan_ms = Some(totals.elapsed_ms);
                if self.record_plan && self.watch.is_none() {
                    self.store_plan_segment();
                }
                self.plan_totals = Some(totals);
            }
            Some(Err(error)) => {
                self.plan_done = true;
                self.stats.plan_error = Some(error.to_string());
                self.plan_failure = Some(error);
            }
            None => {
                self.plan_done = true;
                if self.plan_totals.is_none() && self.stats.plan_error.is_none() {
                    self.stats.plan_error = Some("planning stopped unexpectedly".into());
                }
            }
        }
    }

    fn store_plan_segment(&mut self) {
        let shards = std::mem::take(&mut self.plan_buffer);
        if shards.is_empty() {
            return;
        }
        let segment = self.plan_segment;
        self.plan_segment += 1;
        let manifest = self.manifest.clone();
        self.plan_writes.push(tokio::spawn(async move { manifest.write_plan_segment(segment, &shards).await }));
    }

    fn dispatch(&mut self, shard: Shard) {
        let fingerprint = shard.fingerprint();
        let prior = self.prior.latest.get(&shard.id);
        if let Some(record) = prior {
            if record.status == ShardStatus::Ok {
                if record.fingerprint == fingerprint {
                    if let Some(listener) = &self.on_commit {
                        listener.committed(std::slice::from_ref(&shard));
                    }
                    self.stats.shards_skipped += 1;
                    self.events.emit(Event::Skipped);
                    self.records.insert(shard.id, record.clone());
                    return;
                }
                self.events.emit(Event::Note(format!(
                    "shard {:05} changed since it was committed (its inputs differ); running it again",
                    shard.id
                )));
            }
        }
        let prior_attempts = prior.filter(|r| r.fingerprint == fingerprint).map(|r| r.attempts).unwrap_or(0);
        if let (Some(watch), crate::source::ShardInput::Objects { objects }) = (&mut self.watch, &shard.input) {
            let mut earlier = Vec::new();
            for object in objects {
                let takers = watch.object_shards.entry(object.key.clone()).or_default();
                earlier.extend(takers.iter().copied().filter(|&taker| taker != shard.id));
                if !takers.contains(&shard.id) {
                    takers.push(shard.id);
                }
            }
            if !earlier.is_empty() {
                self.supersedes.insert(shard.id, earlier);
            }
        }
        let slot = self.slots.as_mut().and_then(|free| free.pop()).expect("dispatch only with a free slot");
        let id = shard.id;
        self.bytes_in_flight += shard.bytes_in();
        self.in_flight.insert(
            id,
            InFlight {
                shard: shard.clone(),
                fingerprint,
                prior_attempts,
                attempts: 0,
                failures: 0,
                slot: slot.clone(),
                staged: None,
                history: Vec::new(),
                running: Vec::new(),
                won: false,
                parked: None,
                cancel: self.shutdown.hard.child_token(),
            },
        );
        self.spawn_staging(id, shard, slot);
    }

    fn spawn_staging(&self, id: u64, shard: Shard, mut slot: Slot) {
        let tx = self.msg_tx.clone();
        if !self.executor.stages_locally() {
            let _ = tx.send(Msg::Staged { shard: id, result: Ok(Staged::default()), slot });
            return;
        }
        let source = self.source.clone();
        tokio::spawn(async move {
            let result = stage::stage(&source, &shard, &mut slot).await;
            let _ = tx.send(Msg::Staged { shard: id, result, slot });
        });
    }

    fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Staged { shard, result, slot } => {
                let Some(flight) = self.in_flight.get_mut(&shard) else { return };
                flight.slot = slot;
                match result {
                    Ok(staged) => {
                        flight.staged = Some(staged);
                        if self.stopping {
                            self.abandon(shard);
                        } else {
                            self.submit(shard, false);
                        }
                    }
                    Err(error) => self.staging_failed(shard, error),
                }
            }
            Msg::PublishFailed { shard, error } => self.publish_failed(shard, error),
            Msg::RetryDue { shard } => {
                if self.stopping {
                    self.abandon(shard);
                    return;
                }
                let Some(flight) = self.in_flight.get_mut(&shard) else { return };
                if flight.staged.is_some() {
                    self.submit(shard, false);
                } else {
                    // Staging itself failed last time: stage again.
                    let (copy, slot) = (flight.shard.clone(), flight.slot.clone());
                    self.spawn_staging(shard, copy, slot);
                }
            }
            Msg::OutputsChecked { shard, attempt, broken } => {
                let Some(flight) = self.in_flight.get_mut(&shard) else { return };
                let Some(running) = flight.running.iter_mut().find(|r| r.attempt == attempt) else { return };
                running.output_check_running = false;
                if let (Some(broken), None) = (broken, &running.cancelled) {
                    running.cancelled = Some(Cancelled::Outputs(broken));
                    running.token.cancel();
                }
            }
            Msg::Finalized { shard, record, slot } => {
                let Some(flight) = self.in_flight.get_mut(&shard) else { return };
                if !flight.running.is_empty() {
                    // A losing attempt is still being cancelled: wait for it before the slot
                    // can be used again.
                    flight.parked = Some((record, slot));
                    return;
                }
                self.complete(shard, record, slot);
            }
        }
    }

    /// The shard leaves flight: its slot is free again and its record goes to the journal.
    fn complete(&mut self, shard: u64, record: Option<ShardRecord>, slot: Slot) {
        let flight = self.in_flight.remove(&shard);
        if let Some(flight) = &flight {
            self.bytes_in_flight -= flight.shard.bytes_in();
        }
        if let Some(free) = self.slots.as_mut() {
            free.push(slot);
        }
        let Some(record) = record else { return };
        let ok = record.status == ShardStatus::Ok;
        if let (true, Some(_), Some(flight)) = (ok, &self.on_commit, flight) {
            self.commit_buffer.push(flight.shard);
        }
        if ok {
            self.stats.shards_ok += 1;
            self.durations.add(record.duration_ms);
            if record.backup {
                self.stats.backups_won += 1;
            }
        } else {
            self.stats.shards_failed += 1;
        }
        self.stats.bytes_in += record.bytes_in;
        self.stats.bytes_out += record.bytes_out;
        self.events.emit(Event::ShardFinished { ok });
        self.unreported = self.watch.is_some();
        self.records.insert(record.shard, record.clone());
        self.journal_buffer.push(record);
        if self.journal_buffer.len() >= JOURNAL_BATCH {
            self.flush_journal();
        }
    }

    /// Writes buffered records as one journal segment (one write at a time, in order).
    fn flush_journal(&mut self) {
        // A segment that could not be written (after the storage's own retries) stops the
        // run: its shards stay uncommitted, and a redrive runs them again.
        let (finished, writing) = std::mem::take(&mut self.journal_writes).into_iter().partition(|h| h.is_finished());
        self.journal_writes = writing;
        for handle in finished {
            let failure = match futures::FutureExt::now_or_never(handle) {
                Some(Ok(Err(e))) => Some(format!("writing the journal: {e}")),
                Some(Err(e)) => Some(format!("writing the journal: {e}")),
                _ => None,
            };
            if let Some(failure) = failure {
                self.fatal.get_or_insert(failure);
            }
        }
        if !self.journal_writes.is_empty() {
            return;
        }
        // A watch's plan grows with its journal: each plan segment is written before the
        // journal segment that names its shards, so a restart finds every committed shard's
        // objects (and so never runs them again).
        let plan = match (&self.watch, self.plan_buffer.is_empty()) {
            (Some(_), false) => {
                let segment = self.plan_segment;
                self.plan_segment += 1;
                Some((segment, std::mem::take(&mut self.plan_buffer)))
            }
            _ => None,
        };
        if self.journal_buffer.is_empty() && plan.is_none() {
            return;
        }
        let records = std::mem::take(&mut self.journal_buffer);
        let committed = std::mem::take(&mut self.commit_buffer);
        let segment = self.journal_segment;
        if !records.is_empty() {
            self.journal_segment += 1;
        }
        let manifest = self.manifest.clone();
        let run = self.run;
        let listener = self.on_commit.clone();
        self.journal_writes.push(tokio::spawn(async move {
            if let Some((plan_segment, shards)) = plan {
                manifest.write_plan_segment(plan_segment, &shards).await?;
            }
            if records.is_empty() {
                return Ok(());
            }
            manifest.write_journal_segment(run, segment, &records).await?;
            if let Some(listener) = listener {
                listener.committed(&committed);
            }
            Ok(())
        }));
    }

    /// Removes what remote attempts staged and nobody published (losers, failures, attempts
    /// that answered too late). An invocation still running in Lambda may stage more after
    /// this; it is never published, and the next run of the job sweeps it.
    async fn sweep_attempts(&self) {
        use futures::StreamExt;
        let prefix = format!("{}/{}/attempts/", crate::manifest::FANOUT_DIR, self.manifest.job_id());
        let dest = self.dest.clone();
        self.dest
            .list(&prefix)
            .filter_map(|listed| async move { listed.ok() })
            .for_each_concurrent(16, |object| {
                let dest = dest.clone();
                async move {
                    let _ = dest.delete(&object.key).await;
                }
            })
            .await;
    }

    async fn finish(mut self) -> Result<RunResult, RunError> {
        // Cancelled attempts may end the run before the loop heard the second Ctrl-C.
        if self.stopping && self.shutdown.hard.is_cancelled() && !self.hard_stopped {
            self.events.emit(Event::Stopping { hard: true });
        }
        for handle in std::mem::take(&mut self.journal_writes) {
            handle.await.map_err(|e| RunError::Fatal(format!("writing the journal: {e}")))??;
        }
        self.flush_journal();
        for handle in std::mem::take(&mut self.journal_writes) {
            handle.await.map_err(|e| RunError::Fatal(format!("writing the journal: {e}")))??;
        }
        for handle in std::mem::take(&mut self.plan_writes) {
            handle.await.map_err(|e| RunError::Fatal(format!("storing the plan: {e}")))??;
        }
        if let Some(listener) = &self.on_commit {
            if let Err(e) = listener.flush().await {
                self.events.emit(Event::Note(format!(
                    "warning: {e} (the job's manifest is complete; the group's offsets lag)"
                )));
            }
        }
        if let Some(fatal) = self.fatal.take() {
            return Err(RunError::Fatal(fatal));
        }
        // The plan is complete once every segment is stored; say so in job.json.
        if self.watch.is_none() && self.plan_totals.is_some() && self.record_plan && !self.write_job_document {
            let mut document = self.document.clone();
            document.plan.complete = true;
            document.plan.segments = self.plan_segment;
            document.plan.totals = self.plan_totals.clone();
            self.manifest.write_job(&document).await?;
        }
        let _ = tokio::fs::remove_dir_all(&self.staging_root).await;
        if !self.executor.stages_locally() {
            self.sweep_attempts().await;
        }
        self.stats.workers_peak = self.executor.peak();
        self.stats.workers_at_end = self.executor.live();
        self.stats.executor = self.executor.summary();
        self.stats.wall_ms = self.started.elapsed().as_millis() as u64;
        if let (Some((t0, cpu0)), Some(t1)) = (self.map_start, self.map_end) {
            let cpu1 = process_cpu_time();
            let span = t1.saturating_duration_since(t0);
            let cores =
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(self.job.workers.max.max(1));
            self.stats.map_ms = span.as_millis() as u64;
            if !span.is_zero() {
                self.stats.map_cpu_busy = cpu1.saturating_sub(cpu0).as_secs_f64() / (span.as_secs_f64() * cores as f64);
            }
        }
        // Shards committed by earlier runs but not reached this run (a stop before planning
        // got to them) still count.
        for (shard, record) in &self.prior.latest {
            self.records.entry(*shard).or_insert_with(|| record.clone());
        }
        let total = match &self.watch {
            Some(_) => self.shards_known(&self.records),
            None => self.plan_totals.as_ref().map(|t| t.shards).unwrap_or(self.planned.max(self.records.len() as u64)),
        };
        let Counts { ok, failed, superseded } = Counts::of(self.records.values());
        self.stats.shards_total = total;
        self.stats.shards_pending = total.saturating_sub(ok + failed + superseded);
        let succeeded = self.plan_totals.is_some()
            && self.stats.plan_error.is_none()
            && self.stats.shards_pending == 0
            && !self.stats.stopped_early
            && self.job.retry.tolerated.allows(failed, total);
        Ok(RunResult {
            stats: self.stats,
            plan_failure: self.plan_failure,
            records: self.records,
            plan_totals: self.plan_totals,
            succeeded,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::backoff_before;
    use std::time::Duration;

    #[test]
    fn backoff_doubles_and_is_capped() {
        let base = Duration::from_millis(200);
        assert_eq!(backoff_before(2, base), Duration::from_millis(200));
        assert_eq!(backoff_before(3, base), Duration::from_millis(400));
        assert_eq!(backoff_before(4, base), Duration::from_millis(800));
        assert_eq!(backoff_before(40, base), Duration::from_secs(60));
    }
}
