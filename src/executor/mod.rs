//! The seam between the coordinator and whatever runs attempts, and the executors
//! themselves, as siblings: [`local`] (this machine's pool of worker threads), [`lambda`]
//! (AWS Lambda invocations), [`array`] (waves of `fanout worker` tasks as arrays of a batch
//! engine, whose APIs are siblings too: [`slurm`], [`cloud_run`], [`code_engine`],
//! [`aws_batch`]) and [`kubernetes`] (the committer that follows an Indexed Job's pods). What
//! the remote ones share (the request and answer protocol, the files workers leave in DEST)
//! is [`remote`], the REST engines' one call [`rest`]; no executor imports another, and an
//! engine's API knows nothing of waves. Every executor receives [`Task`]s and sends back one
//! [`AttemptDone`] per task; planning, retries, stragglers, publishing and commits stay in
//! the coordinator (`run`), so a job looks the same whichever executor ran it. Adding an
//! engine is a sibling file here and one arm in `launch::executor_for`. For tests only:
//! `fake`, an engine that plays scripted attempts in virtual time, and `conformance`, the
//! checks of this contract that every executor passes.

pub mod array;
pub mod aws_batch;
pub mod cloud_run;
pub mod code_engine;
#[cfg(test)]
mod conformance;
#[cfg(test)]
pub mod fake;
pub mod kubernetes;
pub mod lambda;
pub mod local;
pub mod remote;
pub mod rest;
pub mod slurm;

use crate::runtime::{Invocation, InvocationReport};
use crate::source::Shard;
use crate::stage::{OutputFile, OutputRules};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// `word` as one word of a POSIX shell: the commands engines run (`sbatch --wrap`) and those
/// printed for a person to paste.
pub fn shell_quote(word: &str) -> String {
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-./:@%+=,".contains(c);
    if !word.is_empty() && word.chars().all(safe) {
        return word.to_string();
    }
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// One attempt at one shard, ready to run.
pub struct Task {
    pub shard: Shard,
    pub attempt: u32,
    /// The sandbox as staged on this machine; a remote executor reads its argv and env and
    /// stages the shard itself.
    pub invocation: Invocation,
    pub cancel: CancellationToken,
    /// Set by the executor when the attempt starts running (or is sent away to run).
    pub started: Arc<StartClock>,
    /// Where the attempt's outputs land, and the rules they must keep.
    pub outputs: (PathBuf, OutputRules),
    /// Create the output folder first (a backup attempt's own `/out`).
    pub make_out_dir: bool,
}

/// When an attempt started running, as its executor saw it. Unset while the attempt waits,
/// and unset again when an engine hands it back unrun to be sent again (a throttled Lambda
/// invocation): waiting must never look like running to straggler backups and relative
/// timeouts. Read on tokio's clock, so that tests with a paused clock see attempts run in
/// virtual time (outside a runtime, or unpaused, it is the system's monotonic clock).
#[derive(Debug, Default)]
pub struct StartClock(Mutex<Option<Instant>>);

impl StartClock {
    /// Marks the start, unless it is marked already.
    pub fn start(&self, at: Instant) {
        self.0.lock().expect("start clock").get_or_insert(at);
    }

    pub fn get(&self) -> Option<Instant> {
        *self.0.lock().expect("start clock")
    }

    /// The attempt waits again.
    pub fn reset(&self) {
        *self.0.lock().expect("start clock") = None;
    }
}

/// What an executor sends back for every task.
pub struct AttemptDone {
    pub shard: u64,
    pub attempt: u32,
    /// The worker's lane: a pool thread's number, or the number fanout gave a remote
    /// execution environment when it first answered.
    pub worker: u32,
    /// A remote worker's own name (a Lambda execution environment's log stream).
    pub worker_name: Option<String>,
    pub cold_start: bool,
    pub started: SystemTime,
    pub finished: SystemTime,
    pub report: InvocationReport,
    /// For a successful attempt: the files under `/out`, checked, or why they break the rules.
    pub outputs: Option<Result<Vec<OutputFile>, String>>,
}

impl AttemptDone {
    /// The answer for a task handed back unrun (stopping, or cancelled while it waited).
    pub fn not_run(task: &Task) -> AttemptDone {
        let now = SystemTime::now();
        AttemptDone {
            shard: task.shard.id,
            attempt: task.attempt,
            worker: 0,
            worker_name: None,
            cold_start: false,
            started: now,
            finished: now,
            report: InvocationReport::not_run(crate::runtime::Outcome::Cancelled),
            outputs: None,
        }
    }
}

/// Runs attempts. Methods are called from the coordinator's task and never block. The
/// contract (`conformance` checks it): every task is answered exactly once; a task whose
/// `cancel` token fires comes back `Cancelled`, soon when it runs, unrun when it waits.
pub trait Executor: Send + Sync {
    /// Queues a task; its [`AttemptDone`] arrives on the executor's results channel.
    fn submit(&self, task: Task);
    /// Stops starting queued tasks: they come back at once as cancelled, unrun, as does any
    /// task submitted afterwards; running attempts go on.
    fn stop_starting(&self);
    /// True when a task submitted now would start at once.
    fn can_start_now(&self) -> bool;
    /// Workers (or invocations) running now, and the most at once so far.
    fn live(&self) -> usize;
    fn peak(&self) -> usize;
    /// Engine-specific accounting for the summary (`None` for the local pool).
    fn summary(&self) -> Option<serde_json::Value> {
        None
    }
    /// True when attempts run on this machine, in the slots the coordinator stages and
    /// whose `/out` it watches as it fills; a remote engine's workers stage their own inputs,
    /// check their own outputs and stage them in DEST.
    fn stages_locally(&self) -> bool {
        true
    }
    /// Removes what this executor's attempts left behind and nobody published (a remote
    /// engine's staged outputs in DEST: losers, failures, answers that came too late).
    /// Called once, when the run ends.
    fn sweep(&self) -> futures::future::BoxFuture<'static, ()> {
        Box::pin(async {})
    }
    /// Shards the coordinator keeps in flight for this executor: enough to keep every
    /// worker fed while others stage and publish, or every remote batch full.
    fn shards_in_flight(&self) -> usize;
}
