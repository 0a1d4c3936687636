//! The instances behind `fanout serve`: a bounded FIFO queue of requests in front of at most
//! `max` worker threads, started as requests arrive and gone after `idle` without one, each
//! running one request at a time in a fresh sandbox (its own `/in`, `/out`, stdout and stderr
//! under the server's staging folder, removed when answered). Owns the queue, the threads and
//! the per-request sandbox; knows nothing of HTTP (the caller maps a [`Reply`] to a response).

use crate::runtime::capture::Overflow;
use crate::runtime::{Invocation, Outcome, Runtime};
use crate::stage::{scan_outputs, Call, OutputFrom, OutputRules, LOG_CAP};
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// A worker thread's stack: the guest's own stack lives in wasmtime's, this is the host's.
const WORKER_STACK: usize = 8 << 20;
/// The end of a failed guest's stderr kept for its answer.
const STDERR_TAIL: usize = 2048;

/// What every request runs: the function, compiled once, and the job's words for it.
pub struct Served {
    pub runtime: Arc<Runtime>,
    /// The function's name: argv[0] of a WebAssembly function.
    pub name: String,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// A native command's words (placeholders filled in with the request's name).
    pub command: Option<Vec<String>>,
    /// The job's side files, seen at `/files`.
    pub files_dir: Option<PathBuf>,
    /// Where each request's sandbox is made.
    pub staging: PathBuf,
}

/// How many at once, how many waiting, and how much each may write.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_workers: usize,
    /// Requests that may wait for a worker; one more is refused (busy).
    pub queue: usize,
    pub idle: Duration,
    /// What one request's outputs (or stdout) may add up to.
    pub max_output: u64,
    pub max_output_files: u64,
}

/// How a request ended.
pub struct Reply {
    pub outcome: Outcome,
    /// The files the function wrote under `/out` (name, bytes), in name order; an error when
    /// they break the rules (a link, too many, too big).
    pub outputs: Result<Vec<(String, Bytes)>, String>,
    pub stdout: Bytes,
    /// The end of stderr, for a failure's answer.
    pub stderr_tail: String,
    pub elapsed: Duration,
}

/// Why a request was not taken.
#[derive(Debug, PartialEq, Eq)]
pub enum NotTaken {
    /// Every worker is busy and the queue is full.
    Busy,
    /// The server is stopping.
    Stopping,
}

/// What `/healthz` shows.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Health {
    pub workers: usize,
    pub in_flight: usize,
    pub queued: usize,
    pub served: u64,
}

struct Job {
    name: String,
    body: Bytes,
    reply: oneshot::Sender<Reply>,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Job>,
    live: usize,
    idle: usize,
    running: usize,
    stopping: bool,
}

struct Inner {
    served: Served,
    limits: Limits,
    state: Mutex<State>,
    work_ready: Condvar,
    answered: AtomicU64,
    next_request: AtomicU64,
}

/// The pool; cheap to clone.
#[derive(Clone)]
pub struct Workers(Arc<Inner>);

impl Workers {
    pub fn new(served: Served, limits: Limits) -> Workers {
        let limits = Limits { max_workers: limits.max_workers.max(1), ..limits };
        Workers(Arc::new(Inner {
            served,
            limits,
            state: Mutex::new(State::default()),
            work_ready: Condvar::new(),
            answered: AtomicU64::new(0),
            next_request: AtomicU64::new(0),
        }))
    }

    /// Queues a request (answered in arrival order) and starts a worker when the free ones
    /// (live, not running a request) are fewer than the requests queued and fewer than
    /// `max_workers` live. Dropping the receiver cancels the guest.
    pub fn submit(&self, name: String, body: Bytes) -> Result<oneshot::Receiver<Reply>, NotTaken> {
        let (reply, answer) = oneshot::channel();
        let mut state = self.0.state.lock().expect("serve lock");
        if state.stopping {
            return Err(NotTaken::Stopping);
        }
        // Requests a free or a new worker takes at once do not wait; `queue` more may.
        let takers = self.0.limits.max_workers - state.running;
        if state.queue.len() >= self.0.limits.queue + takers {
            return Err(NotTaken::Busy);
        }
        state.queue.push_back(Job { name, body, reply });
        let free = state.live - state.running;
        if state.queue.len() > free && state.live < self.0.limits.max_workers {
            state.live += 1;
            drop(state);
            let inner = self.0.clone();
            let spawned = std::thread::Builder::new()
                .name("fanout-serve".into())
                .stack_size(WORKER_STACK)
                .spawn(move || inner.work());
            if let Err(e) = spawned {
                // Out of threads: this worker never was; its request is answered, not stranded.
                self.0.lost_worker(&format!("cannot start a worker thread: {e}"));
            }
        } else {
            drop(state);
            self.0.work_ready.notify_one();
        }
        Ok(answer)
    }

    pub fn health(&self) -> Health {
        let state = self.0.state.lock().expect("serve lock");
        Health {
            workers: state.live,
            in_flight: state.running,
            queued: state.queue.len(),
            served: self.0.answered.load(Ordering::Relaxed),
        }
    }

    /// Takes no more requests; those queued and running are still answered.
    pub fn stop_taking(&self) {
        self.0.state.lock().expect("serve lock").stopping = true;
    }
}

impl Inner {
    /// The next request, or `None` once this worker has been idle for `idle`.
    fn next_job(&self) -> Option<Job> {
        let mut state = self.state.lock().expect("serve lock");
        let deadline = Instant::now() + self.limits.idle;
        loop {
            if let Some(job) = state.queue.pop_front() {
                state.running += 1;
                return Some(job);
            }
            let now = Instant::now();
            if now >= deadline {
                state.live -= 1;
                return None;
            }
            state.idle += 1;
            state = self.work_ready.wait_timeout(state, deadline - now).expect("serve lock").0;
            state.idle -= 1;
        }
    }

    fn work(self: Arc<Self>) {
        // Guest file calls run inline on this thread's own runtime (as the local pool's workers do).
        let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime,
            Err(e) => return self.lost_worker(&format!("cannot start a worker's runtime: {e}")),
        };
        while let Some(job) = self.next_job() {
            let Job { name, body, mut reply } = job;
            let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                runtime.block_on(self.answer(&name, body, &mut reply))
            }));
            let answer = answered.unwrap_or_else(|_| {
                error_reply("an internal error (a bug in fanout) ended this request".into(), Duration::ZERO)
            });
            let _ = reply.send(answer);
            self.answered.fetch_add(1, Ordering::Relaxed);
            self.state.lock().expect("serve lock").running -= 1;
        }
    }

    /// A worker counted live that could not start: uncounted, and if no worker is left to
    /// take the queue, the oldest request is answered with why.
    fn lost_worker(&self, why: &str) {
        let orphan = {
            let mut state = self.state.lock().expect("serve lock");
            state.live -= 1;
            if state.live == 0 {
                state.queue.pop_front()
            } else {
                None
            }
        };
        self.work_ready.notify_one();
        if let Some(job) = orphan {
            let _ = job.reply.send(error_reply(why.to_string(), Duration::ZERO));
        }
    }

    /// Runs the function once on `body` as `/in/NAME` (and stdin) in a sandbox of its own.
    async fn answer(&self, name: &str, body: Bytes, reply: &mut oneshot::Sender<Reply>) -> Reply {
        let started = Instant::now();
        let number = self.next_request.fetch_add(1, Ordering::Relaxed);
        let dir = self.served.staging.join(format!("r{number}"));
        // Removed however this request ends (a panic included).
        let _removed = RemovedOnDrop(dir.clone());
        let failed = |message: String| error_reply(message, started.elapsed());
        let (in_dir, out_dir) = (dir.join("in"), dir.join("out"));
        let staged = std::fs::create_dir_all(&in_dir)
            .and_then(|_| std::fs::create_dir_all(&out_dir))
            .and_then(|_| std::fs::write(in_dir.join(name), &body));
        if let Err(e) = staged {
            return failed(format!("staging the request: {e}"));
        }
        let served = &self.served;
        let call = Call {
            job_id: "serve",
            name: &served.name,
            args: &served.args,
            env: &served.env,
            shard: number,
            shards_hint: 0,
            attempt: 1,
            command: served.command.as_deref(),
            object: Some(name),
        };
        let (argv, env) = call.argv_env();
        let invocation = Invocation {
            argv,
            env,
            in_dir: in_dir.clone(),
            out_dir: out_dir.clone(),
            files_dir: served.files_dir.clone(),
            stdin: Some(in_dir.join(name)),
            stdout: dir.join("stdout"),
            stdout_cap: self.limits.max_output,
            stdout_overflow: Overflow::Fail,
            stderr: dir.join("stderr"),
            stderr_cap: LOG_CAP,
        };
        // A client that goes away takes its guest with it.
        let cancel = CancellationToken::new();
        let report = {
            let invoked = served.runtime.invoke(&invocation, &cancel);
            tokio::pin!(invoked);
            tokio::select! {
                report = &mut invoked => report,
                _ = reply.closed() => {
                    cancel.cancel();
                    invoked.await
                }
            }
        };
        let read = |captured: &crate::runtime::capture::Captured| {
            captured.kept.as_ref().and_then(|kept| kept.read().ok()).unwrap_or_default()
        };
        let stderr = read(&report.stderr);
        let tail_from = stderr.len().saturating_sub(STDERR_TAIL);
        let stderr_tail = String::from_utf8_lossy(&stderr[tail_from..]).into_owned();
        let outputs = match report.outcome.is_ok() {
            true => self.outputs(&out_dir),
            false => Ok(Vec::new()),
        };
        let reply = Reply {
            outcome: report.outcome,
            outputs,
            stdout: read(&report.stdout),
            stderr_tail,
            elapsed: started.elapsed(),
        };
        let _ = std::fs::remove_dir_all(&dir);
        reply
    }

    /// `/out` read back under the rules every output keeps (regular files only, bounded).
    fn outputs(&self, out_dir: &std::path::Path) -> Result<Vec<(String, Bytes)>, String> {
        let rules = OutputRules { max_files: self.limits.max_output_files, max_bytes: self.limits.max_output };
        let mut read = Vec::new();
        for file in scan_outputs(out_dir, rules)? {
            let OutputFrom::File(path) = &file.from else { continue };
            let bytes = std::fs::read(path).map_err(|e| format!("reading /out/{}: {e}", file.key))?;
            read.push((file.key, Bytes::from(bytes)));
        }
        Ok(read)
    }
}

fn error_reply(message: String, elapsed: Duration) -> Reply {
    Reply {
        outcome: Outcome::Error(message),
        outputs: Ok(Vec::new()),
        stdout: Bytes::new(),
        stderr_tail: String::new(),
        elapsed,
    }
}

/// A request's sandbox, removed when dropped. A guest that took its own write permission
/// away (a native command's `chmod`) is given it back first.
struct RemovedOnDrop(PathBuf);

impl Drop for RemovedOnDrop {
    fn drop(&mut self) {
        if std::fs::remove_dir_all(&self.0).is_ok() || !self.0.exists() {
            return;
        }
        use std::os::unix::fs::PermissionsExt;
        for entry in walkdir::WalkDir::new(&self.0).follow_links(false).into_iter().flatten() {
            if entry.file_type().is_dir() {
                let _ = std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o700));
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
