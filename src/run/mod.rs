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

use crate::events::EventSink;
use crate::executor::{AttemptDone, Executor};
use crate::job::Job;
use crate::manifest::{JobDocument, Journal, Manifest, ManifestError, ShardRecord, ShardStatus};
use crate::runtime::OutcomeKind;
use crate::source::{PlanError, PlanTotals, Planned, Reader, Shard, ShardInput};
use crate::stage::{PublishError, Slot, StageError, Staged};
use crate::storage::DynStorage;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

mod attempts;
mod finish;
mod intake;
mod journal;
mod record;
mod state;
mod stop;
mod tail;
#[cfg(test)]
mod virtual_time;

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

/// How often running attempts are checked against relative timeouts and for stragglers.
const TAIL_CHECK: Duration = Duration::from_millis(100);

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

    fn is_finished(&self) -> bool {
        // The last journal records are written by `finish`, without waiting for a tick.
        self.in_flight.is_empty() && (self.fatal.is_some() || self.plan_done || self.stopping)
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
