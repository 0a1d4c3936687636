//! The coordinator of one run: takes planned shards, stages their inputs ahead of the
//! workers, hands attempts to the pool, retries failures with backoff, publishes outputs,
//! and commits records to the journal after the outputs exist. Owns the per-shard state
//! machine and the run's accounting. All of its state lives in one task; staging,
//! publishing and journal writes run beside it as tasks that report back by message, so
//! CPUs never wait on I/O and no lock guards the state.
//!
//! A shard goes: planned -> staged -> attempt running -> (retry after backoff)* ->
//! published or failed -> log stored, staging removed -> record in journal (committed).

use crate::events::{Event, EventSink};
use crate::job::Job;
use crate::manifest::{timestamp, Journal, JobDocument, Manifest, ManifestError, ShardRecord, ShardStatus};
use crate::plan::{PlanError, PlanTotals, Planned, Shard};
use crate::pool::{AttemptDone, Pool, Task};
use crate::runtime::capture::Overflow;
use crate::runtime::{Invocation, Outcome, Runtime};
use crate::stage::{self, AttemptPaths, OutputRules, Published, StagedShard};
use crate::storage::DynStorage;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Shards per stored plan segment.
const PLAN_SEGMENT: usize = 10_000;
/// How often buffered commit records are written as a journal segment.
const JOURNAL_INTERVAL: Duration = Duration::from_millis(250);
/// A journal segment is written early once this many records wait.
const JOURNAL_BATCH: usize = 5_000;
/// A guest's stderr kept per attempt; the rest is dropped and the log says so.
pub const LOG_CAP: u64 = 1 << 20;
/// Longest wait between retries, whatever the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The delay before attempt `next` (2, 3, ...) of a shard: `backoff`, doubling each time.
pub fn backoff_before(next_attempt_of_run: u32, backoff: Duration) -> Duration {
    let doublings = next_attempt_of_run.saturating_sub(2).min(16);
    backoff.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// How a run is asked to stop early (Ctrl-C): `soft` stops dispatching and lets running
/// attempts end; `hard` also cancels those (they publish nothing).
#[derive(Clone, Default)]
pub struct Shutdown {
    pub soft: CancellationToken,
    pub hard: CancellationToken,
}

/// Everything a run needs, resolved and opened by the caller.
pub struct RunSpec {
    pub job: Job,
    pub document: JobDocument,
    /// True when job.json must be written before the first shard is dispatched (new jobs).
    pub write_job_document: bool,
    pub manifest: Manifest,
    pub source: DynStorage,
    pub dest: DynStorage,
    pub runtime: Arc<Runtime>,
    /// What earlier runs committed (empty for a new job).
    pub prior: Journal,
    /// The shards, from the planner or from the stored plan.
    pub shards: mpsc::Receiver<Result<Planned, PlanError>>,
    /// True when the shards come from a fresh planning, which must be stored.
    pub record_plan: bool,
    pub staging_root: PathBuf,
    pub events: EventSink,
    pub shutdown: Shutdown,
}

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
    pub plan_error: Option<String>,
    pub stopped_early: bool,
    pub outcomes: BTreeMap<String, u64>,
}

pub struct RunResult {
    pub stats: RunStats,
    /// The final record of every shard that has one, prior runs included.
    pub records: BTreeMap<u64, ShardRecord>,
    pub plan_totals: Option<PlanTotals>,
    pub succeeded: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("writing the manifest: {0}")]
    Manifest(#[from] ManifestError),
}

struct AttemptInfo {
    attempt: u32,
    outcome: Outcome,
    worker: u32,
    cold_start: bool,
    started: SystemTime,
    finished: SystemTime,
    elapsed: Duration,
    paths: AttemptPaths,
    stdout_bytes: u64,
    stderr_bytes: u64,
    stderr_truncated: bool,
}

struct InFlight {
    shard: Shard,
    fingerprint: String,
    /// Attempts made by earlier runs (redrive continues the numbering).
    prior_attempts: u32,
    /// Attempts made in this run so far.
    attempts: u32,
    staged: Option<StagedShard>,
    dir: PathBuf,
    history: Vec<AttemptInfo>,
    cancel: CancellationToken,
}

impl InFlight {
    fn global_attempt(&self) -> u32 {
        self.prior_attempts + self.attempts
    }
}

enum Msg {
    Staged { shard: u64, result: Result<StagedShard, String> },
    Published { shard: u64, result: Result<Published, String> },
    RetryDue { shard: u64 },
    RetryPrepared { shard: u64, result: Result<AttemptPaths, String> },
    Finalized { record: Option<ShardRecord>, shard: u64 },
}

struct Coordinator {
    job: Job,
    manifest: Manifest,
    source: DynStorage,
    dest: DynStorage,
    pool: Arc<Pool>,
    events: EventSink,
    shutdown: Shutdown,
    staging_root: PathBuf,
    run: u32,
    prior: Journal,
    document: JobDocument,
    write_job_document: bool,
    record_plan: bool,

    capacity: usize,
    in_flight: HashMap<u64, InFlight>,
    records: BTreeMap<u64, ShardRecord>,
    journal_buffer: Vec<ShardRecord>,
    journal_segment: u64,
    journal_writes: Vec<tokio::task::JoinHandle<Result<usize, ManifestError>>>,
    plan_buffer: Vec<Shard>,
    plan_segment: u64,
    plan_writes: Vec<tokio::task::JoinHandle<Result<(), ManifestError>>>,
    planned: u64,
    plan_done: bool,
    plan_totals: Option<PlanTotals>,
    stopping: bool,
    msg_tx: mpsc::UnboundedSender<Msg>,
    stats: RunStats,
    started: Instant,
    fatal: Option<ManifestError>,
}

/// Runs the job's shards to the end (or to a stop) and returns what happened.
pub async fn execute(spec: RunSpec) -> Result<RunResult, RunError> {
    let (results_tx, mut results_rx) = mpsc::unbounded_channel::<AttemptDone>();
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel::<Msg>();
    let pool = Pool::new(spec.runtime.clone(), spec.job.workers.max, spec.job.workers.idle(), results_tx, spec.events.clone());
    let capacity = (spec.job.workers.max * 4).max(16);
    let run = spec.prior.next_run;
    let mut shards = spec.shards;
    let mut coordinator = Coordinator {
        manifest: spec.manifest,
        source: spec.source,
        dest: spec.dest,
        pool,
        events: spec.events,
        shutdown: spec.shutdown,
        staging_root: spec.staging_root,
        run,
        prior: spec.prior,
        document: spec.document,
        write_job_document: spec.write_job_document,
        record_plan: spec.record_plan,
        capacity,
        in_flight: HashMap::new(),
        records: BTreeMap::new(),
        journal_buffer: Vec::new(),
        journal_segment: 0,
        journal_writes: Vec::new(),
        plan_buffer: Vec::new(),
        plan_segment: 0,
        plan_writes: Vec::new(),
        planned: 0,
        plan_done: false,
        plan_totals: None,
        stopping: false,
        msg_tx,
        stats: RunStats { run, ..Default::default() },
        started: Instant::now(),
        fatal: None,
        job: spec.job,
    };
    let mut journal_tick = tokio::time::interval(JOURNAL_INTERVAL);
    journal_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

    loop {
        if coordinator.is_finished() {
            break;
        }
        let can_take = !coordinator.plan_done && !coordinator.stopping && coordinator.in_flight.len() < coordinator.capacity;
        tokio::select! {
            planned = shards.recv(), if can_take => coordinator.on_planned(planned).await,
            Some(done) = results_rx.recv() => coordinator.on_attempt_done(done),
            Some(msg) = msg_rx.recv() => coordinator.on_message(msg),
            _ = journal_tick.tick() => coordinator.flush_journal(false),
            _ = coordinator.shutdown.soft.cancelled(), if !coordinator.stopping => coordinator.begin_stop(),
        }
    }
    coordinator.finish().await
}

impl Coordinator {
    fn is_finished(&self) -> bool {
        let drained = self.in_flight.is_empty();
        (drained && self.fatal.is_some())
            || (drained && (self.plan_done || self.stopping) && self.journal_buffer.is_empty())
    }

    fn begin_stop(&mut self) {
        self.stopping = true;
        self.stats.stopped_early = true;
        self.pool.stop_starting();
        self.events.emit(Event::Stopping { hard: false });
        let hard = self.shutdown.hard.clone();
        let cancels: Vec<CancellationToken> = self.in_flight.values().map(|f| f.cancel.clone()).collect();
        let events = self.events.clone();
        tokio::spawn(async move {
            hard.cancelled().await;
            events.emit(Event::Stopping { hard: true });
            for cancel in cancels {
                cancel.cancel();
            }
        });
    }

    async fn on_planned(&mut self, planned: Option<Result<Planned, PlanError>>) {
        match planned {
            Some(Ok(Planned::Shard(shard))) => {
                self.planned += 1;
                self.events.emit(Event::Planned { planned: self.planned });
                if self.write_job_document {
                    // job.json goes first: a manifest never exists without its job.
                    self.write_job_document = false;
                    if let Err(e) = self.manifest.write_job(&self.document).await {
                        self.fatal = Some(e);
                        self.plan_done = true;
                        return;
                    }
                }
                if self.record_plan {
                    self.plan_buffer.push(shard.clone());
                    if self.plan_buffer.len() >= PLAN_SEGMENT {
                        self.store_plan_segment();
                    }
                }
                self.dispatch(shard);
            }
            Some(Ok(Planned::Done(totals))) => {
                self.plan_done = true;
                self.stats.plan_ms = Some(self.started.elapsed().as_millis() as u64);
                self.events.emit(Event::PlanComplete { total: totals.shards });
                if self.record_plan {
                    self.store_plan_segment();
                }
                self.plan_totals = Some(totals);
            }
            Some(Err(error)) => {
                self.plan_done = true;
                self.stats.plan_error = Some(error.to_string());
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
                    self.stats.shards_skipped += 1;
                    self.events.emit(Event::Skipped { shard: shard.id });
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
        let id = shard.id;
        let dir = self.staging_root.join(format!("{id:05}"));
        let flight = InFlight {
            shard: shard.clone(),
            fingerprint,
            prior_attempts,
            attempts: 1,
            staged: None,
            dir: dir.clone(),
            history: Vec::new(),
            cancel: self.shutdown.hard.child_token(),
        };
        let first = flight.global_attempt();
        self.in_flight.insert(id, flight);
        let source = self.source.clone();
        let tx = self.msg_tx.clone();
        tokio::spawn(async move {
            let result = stage::stage(&source, &shard, dir, first).await;
            let _ = tx.send(Msg::Staged { shard: id, result });
        });
    }

    fn submit(&mut self, id: u64, paths: AttemptPaths) {
        let job = &self.job;
        let total_hint = self.plan_totals.as_ref().map(|t| t.shards).unwrap_or(self.planned);
        let flight = self.in_flight.get_mut(&id).expect("submitted shards are in flight");
        let staged = flight.staged.as_ref().expect("a submitted shard is staged");
        let attempt = flight.global_attempt();
        let is_records = flight.shard.record_extension().is_some();
        let mut env: Vec<(String, String)> = job.function.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.push(("FANOUT_JOB".into(), self.manifest.job_id().to_string()));
        env.push(("FANOUT_SHARD".into(), id.to_string()));
        env.push(("FANOUT_SHARDS".into(), total_hint.to_string()));
        env.push(("FANOUT_ATTEMPT".into(), attempt.to_string()));
        let mut argv = vec![job.name.clone()];
        argv.extend(job.function.args.iter().cloned());
        let invocation = Invocation {
            argv,
            env,
            in_dir: staged.in_dir.clone(),
            out_dir: paths.out_dir.clone(),
            stdin: staged.stdin.clone(),
            stdout: paths.stdout.clone(),
            stdout_cap: if is_records { job.output.max_bytes } else { LOG_CAP },
            stdout_overflow: if is_records { Overflow::Fail } else { Overflow::Truncate },
            stderr: paths.stderr.clone(),
            stderr_cap: LOG_CAP,
        };
        self.stats.attempts += 1;
        self.pool.submit(Task { shard: id, attempt, invocation, cancel: flight.cancel.clone() });
    }

    fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Staged { shard, result } => match result {
                Ok(staged) => {
                    let Some(flight) = self.in_flight.get_mut(&shard) else { return };
                    let paths = stage::attempt_paths(&staged.dir, flight.global_attempt());
                    flight.staged = Some(staged);
                    if self.stopping {
                        self.abandon(shard);
                    } else {
                        self.submit(shard, paths);
                    }
                }
                Err(error) => self.attempt_failed(shard, None, Outcome::Error(error)),
            },
            Msg::Published { shard, result } => match result {
                Ok(published) => self.finalize(shard, Some(published)),
                Err(error) => {
                    let info = self.in_flight.get_mut(&shard).and_then(|f| f.history.pop());
                    self.attempt_failed(shard, info, Outcome::Error(error));
                }
            },
            Msg::RetryDue { shard } => {
                if self.stopping {
                    self.abandon(shard);
                    return;
                }
                let Some(flight) = self.in_flight.get_mut(&shard) else { return };
                flight.attempts += 1;
                let dir = flight.dir.clone();
                let attempt = flight.global_attempt();
                let staged = flight.staged.is_some();
                let tx = self.msg_tx.clone();
                if staged {
                    tokio::spawn(async move {
                        let result = stage::prepare_attempt(&dir, attempt).await;
                        let _ = tx.send(Msg::RetryPrepared { shard, result });
                    });
                } else {
                    // Staging itself failed last time: stage again from scratch.
                    let source = self.source.clone();
                    let shard_copy = flight.shard.clone();
                    tokio::spawn(async move {
                        let result = stage::stage(&source, &shard_copy, dir, attempt).await;
                        let _ = tx.send(Msg::Staged { shard, result });
                    });
                }
            }
            Msg::RetryPrepared { shard, result } => match result {
                Ok(paths) if !self.stopping => self.submit(shard, paths),
                Ok(_) => self.abandon(shard),
                Err(error) => self.attempt_failed(shard, None, Outcome::Error(error)),
            },
            Msg::Finalized { record, shard } => {
                self.in_flight.remove(&shard);
                if let Some(record) = record {
                    self.records.insert(record.shard, record.clone());
                    self.journal_buffer.push(record);
                    if self.journal_buffer.len() >= JOURNAL_BATCH {
                        self.flush_journal(false);
                    }
                }
            }
        }
    }

    fn on_attempt_done(&mut self, done: AttemptDone) {
        self.stats.busy_ms += done.report.elapsed.as_millis() as u64;
        if done.cold_start {
            self.stats.cold_starts += 1;
        } else {
            self.stats.warm_starts += 1;
        }
        let Some(flight) = self.in_flight.get_mut(&done.shard) else { return };
        let paths = stage::attempt_paths(&flight.dir, done.attempt);
        let info = AttemptInfo {
            attempt: done.attempt,
            outcome: done.report.outcome.clone(),
            worker: done.worker,
            cold_start: done.cold_start,
            started: done.started,
            finished: done.finished,
            elapsed: done.report.elapsed,
            paths: paths.clone(),
            stdout_bytes: done.report.stdout.bytes,
            stderr_bytes: done.report.stderr.bytes,
            stderr_truncated: done.report.stderr.overflowed,
        };
        *self.stats.outcomes.entry(info.outcome.kind().to_string()).or_default() += 1;
        if !info.outcome.is_ok() {
            let outcome = info.outcome.clone();
            self.attempt_failed(done.shard, Some(info), outcome);
            return;
        }
        let stdout_object = flight.shard.record_extension().map(|ext| {
            (format!("part-{:05}{ext}", done.shard), done.report.stdout.path.clone())
        });
        flight.history.push(info);
        let dest = self.dest.clone();
        let rules = OutputRules { max_files: self.job.output.max_files, max_bytes: self.job.output.max_bytes };
        let tx = self.msg_tx.clone();
        let shard = done.shard;
        tokio::spawn(async move {
            let result = stage::publish(&dest, &paths, rules, stdout_object).await;
            let _ = tx.send(Msg::Published { shard, result });
        });
    }

    /// An attempt failed (or could not start): retry after backoff, or give up.
    fn attempt_failed(&mut self, shard: u64, info: Option<AttemptInfo>, outcome: Outcome) {
        let max_attempts = self.job.retry.attempts;
        let backoff = self.job.retry.backoff();
        let Some(flight) = self.in_flight.get_mut(&shard) else { return };
        let now = SystemTime::now();
        let mut info = info.unwrap_or_else(|| AttemptInfo {
            attempt: flight.global_attempt(),
            outcome: outcome.clone(),
            worker: 0,
            cold_start: false,
            started: now,
            finished: now,
            elapsed: Duration::ZERO,
            paths: stage::attempt_paths(&flight.dir, flight.global_attempt()),
            stdout_bytes: 0,
            stderr_bytes: 0,
            stderr_truncated: false,
        });
        info.outcome = outcome.clone();
        let paths = info.paths.clone();
        flight.history.push(info);
        // Nothing of a failed attempt is ever published.
        tokio::spawn(async move { stage::discard_outputs(&paths).await });
        if matches!(outcome, Outcome::Cancelled) {
            self.abandon(shard);
            return;
        }
        let retry = flight.attempts < max_attempts && !self.stopping;
        self.events.emit(Event::AttemptFailed { shard, attempt: flight.global_attempt(), outcome: outcome.to_string(), retry });
        if retry {
            self.stats.retries += 1;
            let delay = backoff_before(flight.attempts + 1, backoff);
            let tx = self.msg_tx.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let _ = tx.send(Msg::RetryDue { shard });
            });
        } else if self.stopping {
            self.abandon(shard);
        } else {
            self.finalize(shard, None);
        }
    }

    /// Leaves a shard pending (stopping early): no record, staging removed.
    fn abandon(&mut self, shard: u64) {
        if let Some(flight) = self.in_flight.get(&shard) {
            let dir = flight.dir.clone();
            let tx = self.msg_tx.clone();
            tokio::spawn(async move {
                stage::remove_dir(dir).await;
                let _ = tx.send(Msg::Finalized { record: None, shard });
            });
        }
    }

    /// The shard's final state is known: store its log, remove its staging, build its record.
    fn finalize(&mut self, shard: u64, published: Option<Published>) {
        let Some(flight) = self.in_flight.get_mut(&shard) else { return };
        let last = flight.history.last().expect("a finalized shard had an attempt");
        let ok = published.is_some();
        let published = published.unwrap_or_default();
        let record = ShardRecord {
            shard,
            fingerprint: flight.fingerprint.clone(),
            status: if ok { ShardStatus::Ok } else { ShardStatus::Failed },
            outcome: last.outcome.kind().to_string(),
            attempts: flight.global_attempt(),
            started: timestamp(last.started),
            finished: timestamp(last.finished),
            duration_ms: last.elapsed.as_millis() as u64,
            bytes_in: flight.shard.bytes_in(),
            bytes_out: published.bytes_out,
            worker: last.worker,
            cold_start: last.cold_start,
            error: (!ok).then(|| last.outcome.to_string()),
            outputs: published.outputs,
            run: self.run,
            backup: false,
        };
        if ok {
            self.stats.shards_ok += 1;
        } else {
            self.stats.shards_failed += 1;
        }
        self.stats.bytes_in += record.bytes_in;
        self.stats.bytes_out += record.bytes_out;
        self.events.emit(Event::ShardFinished { shard, ok, bytes_in: record.bytes_in, bytes_out: record.bytes_out });
        let stdout_in_log = flight.shard.record_extension().is_none();
        let needs_log = !ok
            || flight.history.len() > 1
            || flight.history.iter().any(|a| a.stderr_bytes > 0 || (stdout_in_log && a.stdout_bytes > 0));
        let log = needs_log.then(|| compose_log(shard, &flight.history, stdout_in_log));
        let manifest = self.manifest.clone();
        let dir = flight.dir.clone();
        let tx = self.msg_tx.clone();
        tokio::spawn(async move {
            let mut record = record;
            if let Some(log) = log {
                let text = log.await;
                if let Err(e) = manifest.put_log(shard, text).await {
                    // The outputs are stored; a lost log must not undo the shard, but says so.
                    record.error.get_or_insert_with(String::new).push_str(&format!(" (log not stored: {e})"));
                }
            }
            stage::remove_dir(dir).await;
            let _ = tx.send(Msg::Finalized { record: Some(record), shard });
        });
    }

    /// Writes buffered records as one journal segment (at most one write at a time).
    fn flush_journal(&mut self, force: bool) {
        self.journal_writes.retain(|handle| !handle.is_finished());
        if self.journal_buffer.is_empty() || (!self.journal_writes.is_empty() && !force) {
            return;
        }
        let records = std::mem::take(&mut self.journal_buffer);
        let segment = self.journal_segment;
        self.journal_segment += 1;
        let manifest = self.manifest.clone();
        let run = self.run;
        let events = self.events.clone();
        self.journal_writes.push(tokio::spawn(async move {
            manifest.write_journal_segment(run, segment, &records).await?;
            events.emit(Event::Committed { count: records.len() as u64 });
            Ok(records.len())
        }));
    }

    async fn finish(mut self) -> Result<RunResult, RunError> {
        self.flush_journal(true);
        for handle in std::mem::take(&mut self.journal_writes) {
            handle.await.expect("journal task")?;
        }
        for handle in std::mem::take(&mut self.plan_writes) {
            handle.await.expect("plan task")?;
        }
        if let Some(fatal) = self.fatal.take() {
            return Err(fatal.into());
        }
        // The plan is complete once every segment is stored; say so in job.json.
        if self.plan_totals.is_some() && !self.write_job_document {
            let mut document = self.document.clone();
            if self.record_plan {
                document.plan.complete = true;
                document.plan.segments = self.plan_segment;
                document.plan.totals = self.plan_totals.clone();
                self.manifest.write_job(&document).await?;
            }
        }
        let _ = std::fs::remove_dir_all(&self.staging_root);
        self.stats.workers_peak = self.pool.peak();
        self.stats.workers_at_end = self.pool.live();
        self.stats.wall_ms = self.started.elapsed().as_millis() as u64;
        // Shards committed by earlier runs but not seen this run (a stop before planning
        // reached them) still count.
        for (shard, record) in &self.prior.latest {
            self.records.entry(*shard).or_insert_with(|| record.clone());
        }
        let total = self.plan_totals.as_ref().map(|t| t.shards).unwrap_or(self.planned.max(self.records.len() as u64));
        let failed = self.records.values().filter(|r| r.status == ShardStatus::Failed).count() as u64;
        let ok = self.records.values().filter(|r| r.status == ShardStatus::Ok).count() as u64;
        self.stats.shards_total = total;
        self.stats.shards_pending = total.saturating_sub(ok + failed);
        let succeeded = self.plan_totals.is_some()
            && self.stats.plan_error.is_none()
            && self.stats.shards_pending == 0
            && !self.stats.stopped_early
            && self.job.retry.tolerated.allows(failed, total);
        Ok(RunResult { stats: self.stats, records: self.records, plan_totals: self.plan_totals, succeeded })
    }
}

/// The shard's log: each attempt's outcome, then its stderr (and stdout, when stdout is
/// not an output). Read from the staged files in a blocking task.
fn compose_log(shard: u64, history: &[AttemptInfo], stdout_in_log: bool) -> impl std::future::Future<Output = Bytes> + Send + 'static {
    let parts: Vec<(String, PathBuf, PathBuf, bool)> = history
        .iter()
        .map(|a| {
            let header = format!(
                "--- fanout: shard {shard:05} attempt {} on worker {}{}: {}\n",
                a.attempt,
                a.worker,
                if a.cold_start { " (cold start)" } else { "" },
                a.outcome
            );
            (header, a.paths.stderr.clone(), a.paths.stdout.clone(), a.stderr_truncated)
        })
        .collect();
    let reading = tokio::task::spawn_blocking(move || {
        let mut text = Vec::new();
        for (header, stderr, stdout, truncated) in parts {
            text.extend_from_slice(header.as_bytes());
            if let Ok(bytes) = std::fs::read(&stderr) {
                text.extend_from_slice(&bytes);
                if !bytes.ends_with(b"\n") && !bytes.is_empty() {
                    text.push(b'\n');
                }
            }
            if truncated {
                text.extend_from_slice(format!("--- fanout: stderr truncated after {LOG_CAP} bytes\n").as_bytes());
            }
            if stdout_in_log {
                if let Ok(bytes) = std::fs::read(&stdout) {
                    if !bytes.is_empty() {
                        text.extend_from_slice(b"--- fanout: stdout\n");
                        text.extend_from_slice(&bytes);
                        if !bytes.ends_with(b"\n") {
                            text.push(b'\n');
                        }
                    }
                }
            }
        }
        Bytes::from(text)
    });
    async move { reading.await.unwrap_or_default() }
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
