//! `fanout run` and `fanout redrive`: open everything a job needs (checking each before any
//! work starts, so a wrong address is exit 2 with nothing written), start or continue the
//! job, draw progress, and write the report and summary at the end.

use super::args::{OutputFlags, RedriveArgs, RunArgs};
use super::common::{follow_command, open_job, plan_failure, redrive_command};
use super::exit::{failed, usage, Failure, EXIT_JOB_FAILED, EXIT_OK};
use crate::events::{Event, EventSink};
use crate::executor::kubernetes::Follower;
use crate::executor::lambda::{Capacity, LambdaExecutor, LambdaFunction, MAX_BATCH};
use crate::executor::local::Pool;
use crate::executor::remote::protocol;
use crate::executor::remote::JobBase;
use crate::executor::slurm::{self, SlurmExecutor, SlurmSettings};
use crate::job::{self, Executor, Job, Origins};
use crate::location::Location;
use crate::manifest::{self, FunctionIdentity, JobDocument, Journal, Manifest, PlanState};
use crate::reduce::{self, ReduceRecord, ReduceRun, ReduceSummary};
use crate::report::{self, ProgressMode, Summary};
use crate::run::{self, CommitListener, ExecutorFactory, RunResult, RunSetup, RunSpec, Shutdown};
use crate::runtime::{Limits, LoadReport, Runtime};
use crate::source::kafka::GroupOffsets;
use crate::source::{self, PlanError, PlanTotals, Planned};
use crate::storage::{self, DynStorage, StorageOptions};
use anyhow::{anyhow, Context};
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Failures printed after the summary line; the rest are in `fanout status`.
const FAILURES_SHOWN: usize = 5;

/// What a job needs opened before it can run.
pub(super) struct Opened {
    pub(super) dest: DynStorage,
    pub(super) source: source::Source,
    pub(super) runtime: Arc<Runtime>,
    pub(super) load: LoadReport,
    /// Where a remote executor's workers are, and where they fetch the function.
    pub(super) workers: Workers,
}

/// The workers of a job that does not run on this machine's pool.
pub(super) enum Workers {
    Here,
    /// The Lambda function, answering as a fanout worker, and the function's key in DEST.
    Lambda(LambdaFunction, String),
    /// Slurm's commands and controller answer; the function's key in DEST.
    Slurm(String),
    /// Pods of a Kubernetes Job answer, and this process only commits; the function's key.
    Kubernetes(String),
}

pub(super) async fn open_everything(
    job: &Job,
    origins: &Origins,
    options: &StorageOptions,
    quiet: bool,
) -> Result<Opened, Failure> {
    let at_dest = origins.prefix("output.dest");
    let dest =
        storage::open(&job.output.dest, options).await.map_err(|e| usage(anyhow!("{at_dest}output.dest: {e}")))?;
    dest.check(true).await.map_err(|e| usage(anyhow!("{at_dest}output.dest: {e}")))?;
    let source = source::open_source(job, options).await.map_err(|e| plan_failure(e, origins))?;
    let at_function = origins.prefix("function.wasm");
    let function = crate::function::load(&job.function.wasm, options, quiet)
        .await
        .map_err(|e| usage(anyhow!("{at_function}{e}")))?;
    let limits = Limits {
        timeout: job.function.timeout(),
        memory_bytes: job.function.memory_bytes,
        concurrency: job.workers.max,
    };
    let bytes = Bytes::from(function.bytes);
    let wasm = bytes.clone();
    let (runtime, load) = tokio::task::spawn_blocking(move || Runtime::load(&function.name, &wasm, limits))
        .await
        .expect("loading the function does not panic")
        .map_err(|e| usage(anyhow!("{at_function}function.wasm: {e}")))?;
    let workers = match &job.executor {
        Executor::Local => Workers::Here,
        Executor::Lambda { function, .. } => {
            // Proven a fanout worker before anything is written.
            let lambda = LambdaFunction::connect(function).await;
            lambda.ping().await.map_err(|e| usage(anyhow!("executor.function: {e}")))?;
            Workers::Lambda(lambda, store_function(&dest, &load, bytes).await?)
        }
        Executor::Slurm { .. } => {
            slurm::check().await.map_err(|e| usage(anyhow!("executor.kind: {e}")))?;
            warn_if_local(job, quiet);
            Workers::Slurm(store_function(&dest, &load, bytes).await?)
        }
        Executor::Kubernetes { .. } => Workers::Kubernetes(store_function(&dest, &load, bytes).await?),
    };
    Ok(Opened { dest, source, runtime: Arc::new(runtime), load, workers })
}

/// Stores the job's function where remote workers fetch it: content-addressed under DEST, once.
async fn store_function(dest: &DynStorage, load: &LoadReport, wasm: Bytes) -> Result<String, Failure> {
    let key = protocol::function_key(&load.sha256);
    let stored = dest.head(&key).await.map_err(|e| usage(anyhow!("output.dest: {e}")))?;
    if stored.is_none_or(|meta| meta.size != wasm.len() as u64) {
        dest.put(&key, wasm).await.map_err(|e| usage(anyhow!("output.dest: storing the function: {e}")))?;
    }
    Ok(key)
}

/// A cluster job may read and write a local path only if every node sees it there.
fn warn_if_local(job: &Job, quiet: bool) {
    for (field, location) in [("input.source", &job.input.source), ("output.dest", &job.output.dest)] {
        if !location.is_s3() && !quiet {
            eprintln!(
                "fanout: warning: {field}: {location} is a local path: every Slurm node must see it at this path \
                 (a shared file system); fanout cannot check that"
            );
        }
    }
}

/// Kubernetes starts a Kubernetes job's pods (kubectl applies what `fanout k8s` prints);
/// fanout only commits what they do.
pub(super) fn refuse_kubernetes(job: &Job) -> Result<(), Failure> {
    match job.executor {
        Executor::Kubernetes { .. } => Err(usage(anyhow!(
            "executor.kind: fanout does not start Kubernetes pods itself: run `fanout k8s JOB.toml --image IMAGE > job.yaml`, \
             `kubectl apply -f job.yaml`, then `fanout status DEST --follow` commits what the pods do"
        ))),
        _ => Ok(()),
    }
}

pub(super) fn grace_of(text: &str) -> Result<Duration, Failure> {
    crate::units::parse_duration(text).map_err(|m| usage(anyhow!("--grace: {m}")))
}

impl RunArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        let quiet = self.output.quiet || self.output.json;
        let (job, origins) = job::resolve(&self.job).map_err(usage)?;
        refuse_kubernetes(&job)?;
        if self.job_id.is_some() && !self.resume {
            return Err(usage(anyhow!("--job goes with --resume (or use `fanout redrive DEST --job ID`)")));
        }
        let grace = grace_of(&self.control.grace)?;
        let options = self.storage.options();
        let opened = open_everything(&job, &origins, &options, quiet).await?;
        let mut continuing = None;
        if self.resume {
            continuing =
                manifest::find_job(&opened.dest, self.job_id.as_deref(), Some(&job.name)).await.map_err(usage)?;
            match &continuing {
                Some(document) => check_compatible(document, &job, &opened.load)?,
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
        let job = document.job.clone();
        refuse_kubernetes(&job)?;
        let opened = open_everything(&job, &Origins::default(), &options, quiet).await?;
        if opened.load.sha256 != document.function.sha256 {
            return Err(usage(anyhow!(
                "function.wasm: {} changed since job {} ran (sha256 {} then, {} now); run it as a new job instead",
                job.function.wasm,
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

/// One field that differs between a stored job and this one, shown both ways.
fn difference<T: PartialEq>(field: &'static str, then: &T, now: &T, show: impl Fn(&T) -> String) -> Option<String> {
    (then != now).then(|| format!("{field} differs (the job ran with {}, now {})", show(then), show(now)))
}

/// Refuses to resume a job whose inputs, function or outputs differ from this one.
pub(super) fn check_compatible(stored: &JobDocument, job: &Job, load: &LoadReport) -> Result<(), Failure> {
    let then = &stored.job;
    let first_difference = difference("input.source", &then.input.source, &job.input.source, ToString::to_string)
        .or_else(|| {
            difference("input.include", &then.input.include, &job.input.include, |i| format!("{:?}", i.globs()))
        })
        .or_else(|| difference("input.shard", &then.input.shard, &job.input.shard, ToString::to_string))
        .or_else(|| difference("function.wasm", &stored.function.sha256, &load.sha256, Clone::clone))
        .or_else(|| difference("function.args", &then.function.args, &job.function.args, |a| format!("{a:?}")))
        .or_else(|| difference("function.env", &then.function.env, &job.function.env, |e| format!("{e:?}")))
        .or_else(|| difference("output.dest", &then.output.dest, &job.output.dest, ToString::to_string));
    match first_difference {
        Some(difference) => Err(usage(anyhow!(
            "cannot resume job {}: {difference}; run without --resume to start a new job",
            stored.job_id
        ))),
        None => Ok(()),
    }
}

/// Streams a stored plan back, segment by segment; its totals are known from the start.
fn stored_plan(manifest: Manifest, segments: u64, totals: PlanTotals) -> mpsc::Receiver<Result<Planned, PlanError>> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        for segment in 0..segments {
            match manifest.read_plan_segment(segment).await {
                Ok(shards) => {
                    for shard in shards {
                        if tx.send(Ok(Planned::Shard(shard))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(PlanError::Stored(e.to_string()))).await;
                    return;
                }
            }
        }
        let _ = tx.send(Ok(Planned::Done(totals))).await;
    });
    rx
}

pub(super) fn staging_root(flag: Option<PathBuf>, dest: &Location, job_id: &str) -> PathBuf {
    if let Some(dir) = flag.or_else(|| std::env::var_os("FANOUT_STAGING").map(PathBuf::from)) {
        return dir.join(job_id);
    }
    match dest {
        // Inside DEST: outputs then reach their place by rename, not by copy.
        Location::Local(path) => path.join(manifest::FANOUT_DIR).join(job_id).join("staging"),
        Location::S3 { .. } | Location::Kafka { .. } => std::env::temp_dir().join("fanout-staging").join(job_id),
    }
}

/// Ctrl-C (or SIGTERM) once: stop dispatching; again, or after `grace`: cancel running attempts.
pub(super) fn watch_signals(shutdown: Shutdown, grace: Duration) {
    tokio::spawn(async move {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let mut signalled = async || match terminate.as_mut() {
            Some(term) => tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} },
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        };
        signalled().await;
        shutdown.soft.cancel();
        tokio::select! {
            _ = signalled() => {}
            _ = tokio::time::sleep(grace) => {}
        }
        shutdown.hard.cancel();
    });
}

/// Where a run starts: a new job's document and plan, or a stored job's, with what its
/// earlier runs committed.
struct Start {
    document: JobDocument,
    prior: Journal,
    shards: mpsc::Receiver<Result<Planned, PlanError>>,
    /// True when the shards come from a fresh planning, which must be stored.
    record_plan: bool,
    new_job: bool,
}

/// A job about to run: resolved, opened, and new or continued.
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
    pub(super) async fn run(self) -> Result<u8, Failure> {
        let started = manifest::timestamp(SystemTime::now());
        let Launch { job, origins, opened, continuing, staging, grace, output, options } = self;
        let Opened { dest, source, runtime, load, workers } = opened;
        let (job, group) = fix_topic_bounds(job, continuing.as_ref(), &source).await?;
        let source_reader = source.reader.clone();
        let quiet = output.quiet || output.json;
        let (events, event_rx) = EventSink::channel();
        let start = start(&job, source, &dest, &load, continuing, &events).await?;
        // Drawn from here on (what `start` reported waits in the channel), so that a failed
        // start leaves no drawing task behind.
        let progress_done = CancellationToken::new();
        let progress =
            tokio::spawn(report::drive_progress(ProgressMode::detect(quiet), event_rx, progress_done.clone()));
        let job_id = start.document.job_id.clone();
        let manifest = Manifest::new(dest.clone(), &job_id);
        let staging_root = staging_root(staging, &job.output.dest, &job_id);
        // Leftovers of a killed run are never published: they go before anything starts.
        let _ = tokio::fs::remove_dir_all(&staging_root).await;
        let shutdown = Shutdown::default();
        watch_signals(shutdown.clone(), grace);
        let (dest_for_reduce, staging_for_reduce, hard) = (dest.clone(), staging_root.clone(), shutdown.hard.clone());
        let new_job = start.new_job;
        let executor = executor_for(&job, &job_id, &dest, runtime, &load, workers, &events)?;
        let setup = RunSetup {
            job: job.clone(),
            document: start.document,
            write_job_document: new_job,
            manifest: manifest.clone(),
            source: source_reader,
            dest,
            executor,
            prior: start.prior,
            record_plan: start.record_plan,
            staging_root,
            events,
            shutdown,
            watch: None,
            on_commit: group.map(|group| group as Arc<dyn CommitListener>),
        };
        let spec = RunSpec { setup, shards: start.shards };
        let result = run::execute(spec).await;
        progress_done.cancel();
        let _ = progress.await;
        let result = result.map_err(failed)?;
        if new_job && result.records.is_empty() && result.stats.shards_total == 0 {
            // Planning failed before the first shard: nothing ran and nothing was written.
            if nothing_new(&result, quiet) {
                return Ok(EXIT_OK);
            }
            return Err(match result.plan_failure {
                Some(error) => plan_failure(error, &origins),
                None => usage(anyhow!("input.source: the plan is empty")),
            });
        }
        let reduced = match (&job.reduce, result.succeeded) {
            (Some(_), true) => Some(
                run_reduce(&job, &manifest, &dest_for_reduce, &options, &staging_for_reduce, quiet, &result, &hard)
                    .await?,
            ),
            _ => None,
        };
        let summary = write_reports(&manifest, &job, &started, &result, &load, reduced.as_ref()).await?;
        print_outcome(&summary, &manifest, &job, output);
        if result.stats.stopped_early || summary.shards.pending > 0 {
            let dest = job.output.dest.to_string();
            match job.executor {
                Executor::Kubernetes { .. } => eprintln!(
                    "fanout: stopped following; the Kubernetes Job goes on. To commit what it does, run: {}",
                    follow_command(&dest, &job_id)
                ),
                _ => eprintln!("fanout: to finish this job, run: {}", redrive_command(&dest, &job_id)),
            }
        }
        let reduce_ok = reduced.as_ref().is_none_or(|(summary, _)| summary.succeeded);
        Ok(if result.succeeded && reduce_ok { EXIT_OK } else { EXIT_JOB_FAILED })
    }
}

/// A job over a topic reads fixed offset ranges: a new job's are looked up now from its
/// start position (and stored in its job.json with the first shard), a continued job's are
/// those it started with, so that planning again cuts the same shards. Its group's offsets
/// follow its commits from the start.
async fn fix_topic_bounds(
    mut job: Job,
    continuing: Option<&JobDocument>,
    source: &source::Source,
) -> Result<(Job, Option<Arc<GroupOffsets>>), Failure> {
    let (Some(kafka), Some(topic)) = (job.input.kafka.as_mut(), source.topic()) else { return Ok((job, None)) };
    let stored = continuing.and_then(|document| document.job.input.kafka.as_ref()).and_then(|k| k.bounds.clone());
    let bounds = match stored {
        Some(bounds) => bounds,
        None => topic.bounds(kafka.start).await.map_err(|e| usage(anyhow!("input.source: {e}")))?,
    };
    let starts: Vec<(i32, i64)> = bounds.iter().map(|b| (b.partition, b.start)).collect();
    kafka.bounds = Some(bounds);
    let group = GroupOffsets::start(topic, starts).map_err(|e| usage(anyhow!("input.source: {e}")))?;
    Ok((job, Some(group)))
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

/// The job's reduce step over the map's committed outputs.
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_reduce(
    job: &Job,
    manifest: &Manifest,
    dest: &DynStorage,
    options: &StorageOptions,
    staging: &std::path::Path,
    quiet: bool,
    result: &RunResult,
    cancel: &CancellationToken,
) -> Result<(ReduceSummary, Vec<ReduceRecord>), Failure> {
    let run = ReduceRun {
        job,
        manifest,
        dest: dest.clone(),
        options,
        staging_root: staging.join("reduce"),
        quiet,
        cancel: cancel.clone(),
    };
    let reduced = run.run(reduce::map_outputs(&result.records)).await.map_err(|e| failed(anyhow!(e)))?;
    let _ = tokio::fs::remove_dir_all(staging.join("reduce")).await;
    Ok(reduced)
}

/// The executor the job names: this machine's pool, or Lambda.
pub(super) fn executor_for(
    job: &Job,
    job_id: &str,
    dest: &DynStorage,
    runtime: Arc<Runtime>,
    load: &LoadReport,
    workers: Workers,
    events: &EventSink,
) -> Result<ExecutorFactory, Failure> {
    let base = |function_key| JobBase {
        job_id: job_id.to_string(),
        dest: dest.clone(),
        job: job.clone(),
        function_key,
        function_sha256: load.sha256.clone(),
    };
    Ok(match (&job.executor, workers) {
        (Executor::Lambda { concurrency, batch, .. }, Workers::Lambda(lambda, function_key)) => {
            let base = base(function_key);
            let capacity = Capacity { concurrency: *concurrency, max_batch: batch.unwrap_or(MAX_BATCH) };
            let events = events.clone();
            Box::new(move |results| Box::new(LambdaExecutor::new(lambda, capacity, base, results, events)))
        }
        (Executor::Slurm { concurrency, args, worker }, Workers::Slurm(function_key)) => {
            let base = base(function_key);
            let here = || std::env::current_exe().unwrap_or_else(|_| PathBuf::from("fanout"));
            let worker = worker.as_ref().map_or_else(here, PathBuf::from);
            let settings = SlurmSettings { concurrency: *concurrency, args: args.clone(), worker };
            let events = events.clone();
            Box::new(move |results| Box::new(SlurmExecutor::new(base, settings, results, events)))
        }
        (Executor::Kubernetes { .. }, Workers::Kubernetes(function_key)) => {
            let (base, events) = (base(function_key), events.clone());
            Box::new(move |results| Box::new(Follower::new(base, results, events)))
        }
        (Executor::Local, Workers::Here) => {
            let (max, idle, events) = (job.workers.max, job.workers.idle(), events.clone());
            Box::new(move |results| Box::new(Pool::new(runtime, max, idle, results, events)))
        }
        // Never quietly on another engine than the job names.
        (executor, _) => {
            return Err(failed(anyhow!("executor.kind: {executor:?} was opened for another engine (a bug in fanout)")))
        }
    })
}

/// A new job (its plan streamed from the source) or a continued one (its plan read back
/// from the manifest when it was stored whole, else planned again).
async fn start(
    job: &Job,
    source: source::Source,
    dest: &DynStorage,
    load: &LoadReport,
    continuing: Option<JobDocument>,
    events: &EventSink,
) -> Result<Start, Failure> {
    let Some(document) = continuing else {
        let document = new_document(job, load, false);
        let shards = source::stream(job, source, events.clone());
        return Ok(Start { document, prior: Journal::default(), shards, record_plan: true, new_job: true });
    };
    events.emit(Event::Note(format!("continuing job {}", document.job_id)));
    let manifest = Manifest::new(dest.clone(), &document.job_id);
    let prior = manifest.read_journal().await.map_err(failed)?;
    let (shards, record_plan) = match (&document.plan.totals, document.plan.complete) {
        // A watch's plan has no count: every segment stored so far, read back whole.
        _ if document.watch => {
            let (stored, _) = manifest.read_open_plan().await.map_err(failed)?;
            let shards: std::collections::BTreeMap<u64, source::Shard> =
                stored.into_iter().map(|s| (s.id, s)).collect();
            let totals = PlanTotals {
                shards: shards.keys().next_back().map_or(0, |last| last + 1),
                objects: 0,
                bytes: shards.values().map(|s| s.bytes_in()).sum(),
                elapsed_ms: 0,
            };
            events.emit(Event::PlanComplete { total: totals.shards });
            let (tx, rx) = mpsc::channel(1024);
            tokio::spawn(async move {
                for shard in shards.into_values() {
                    if tx.send(Ok(Planned::Shard(shard))).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(Ok(Planned::Done(totals))).await;
            });
            (rx, false)
        }
        (Some(totals), true) => {
            events.emit(Event::PlanComplete { total: totals.shards });
            (stored_plan(manifest, document.plan.segments, totals.clone()), false)
        }
        _ => (source::stream(job, source, events.clone()), true),
    };
    Ok(Start { document, prior, shards, record_plan, new_job: false })
}

/// The document of a new job (a watch's when `watch`), under a fresh id.
pub(super) fn new_document(job: &Job, load: &LoadReport, watch: bool) -> JobDocument {
    JobDocument {
        job_id: manifest::new_job_id(&job.name),
        fanout_version: env!("CARGO_PKG_VERSION").to_string(),
        created: manifest::timestamp(SystemTime::now()),
        job: job.clone(),
        function: FunctionIdentity { sha256: load.sha256.clone(), kind: load.kind },
        plan: PlanState::default(),
        watch,
    }
}

/// `report.csv` and `summary.json`, written to the manifest; the summary is returned.
pub(super) async fn write_reports(
    manifest: &Manifest,
    job: &Job,
    started: &str,
    result: &RunResult,
    load: &LoadReport,
    reduce: Option<&(ReduceSummary, Vec<ReduceRecord>)>,
) -> Result<Summary, Failure> {
    let summary = report::summarize(report::SummaryInput {
        reduce: reduce.map(|(summary, _)| summary),
        job_id: manifest.job_id(),
        name: &job.name,
        dest: &job.output.dest.to_string(),
        manifest: &manifest.location(),
        started,
        result,
        load,
    });
    let total = result.plan_totals.as_ref().map(|t| t.shards).unwrap_or(result.stats.shards_total);
    let csv = report::report_csv(&result.records, total, reduce.map_or(&[][..], |(_, records)| records.as_slice()));
    manifest.put("report.csv", Bytes::from(csv)).await.context("writing report.csv").map_err(failed)?;
    let summary_json = serde_json::to_vec_pretty(&summary).expect("a summary serializes");
    manifest.put("summary.json", Bytes::from(summary_json)).await.context("writing summary.json").map_err(failed)?;
    Ok(summary)
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
