//! One share of a job's attempts, answered beside its stored request: what `fanout worker`
//! does when a batch engine starts it (an array task: see [`super::engine`]). It reads
//! share `index`'s request, runs it as the Lambda worker runs an invocation, and stores its
//! answers beside the request as they come (every few seconds), then a marker saying it is
//! done. A worker skips the shards an earlier worker of its share already answered for
//! successfully, so an engine's retry (a pod started again) redoes only what was lost; two
//! workers on the same share at once stage under prefixes of their own and store answers
//! of their own, and the committer takes one.

use super::engine::Task;
use crate::executor::remote::protocol::{self, Answer, Order, Request, ShardResult};
use crate::executor::remote::{self, Shares, Stored, StoredFile, StoredKind, SHARES};
use crate::storage::{DynStorage, StorageError};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Results are stored at least this often while a share runs (and when it ends).
const ANSWER_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The engine gave this worker a share the job does not have (a wrong `--count`, or a
    /// variable that is not a number): the user's mistake, not the job's.
    #[error("{0}")]
    Usage(String),
    #[error("{what}: {source}")]
    Storage { what: String, source: StorageError },
    #[error("{0}")]
    Request(String),
}

impl ShareError {
    fn storage(what: impl Into<String>) -> impl FnOnce(StorageError) -> ShareError {
        let what = what.into();
        move |source| ShareError::Storage { what, source }
    }
}

/// Guests side by side: the cores the engine gave the task.
fn cores() -> usize {
    let given = ["FANOUT_WORKER_CORES", "SLURM_CPUS_PER_TASK"]
        .iter()
        .find_map(|name| std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).filter(|&n: &usize| n > 0));
    given.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

/// A tag no other worker's files carry: this process and this moment.
pub fn worker_tag() -> String {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{:x}-{nanos:x}", std::process::id())
}

/// The engine was told of as many shares as the job has, and this one is among them.
pub async fn check_count(requests: &DynStorage, where_: &str, count: usize, index: usize) -> Result<(), ShareError> {
    let body = requests.get(SHARES).await.map_err(ShareError::storage(where_))?;
    let shares: Shares =
        serde_json::from_slice(&body).map_err(|e| ShareError::Request(format!("{where_}{SHARES}: {e}")))?;
    let there = shares.first_shards.len();
    if there != count || index >= count {
        let last = there.saturating_sub(1);
        return Err(ShareError::Usage(format!("share {index} of {count}: the job has {there} shares (0 to {last})")));
    }
    Ok(())
}

/// Leaves `error` beside the answers, where the committer looks for it: an engine's task
/// log may be nowhere it can read.
pub async fn store_error(requests: &DynStorage, index: usize, tag: &str, error: &str) {
    let _ = requests.put(&StoredFile::error_name(index, tag), Bytes::from(format!("{error}\n"))).await;
}

/// Reads share `index`'s request (under `where_`, for messages), runs what earlier workers
/// left undone, and stores the answers beside it.
pub async fn answer_share(requests: &DynStorage, where_: &str, task: &Task, tag: &str) -> Result<(), ShareError> {
    let index = task.index;
    let key = format!("{index}.json");
    let body = requests.get(&key).await.map_err(ShareError::storage(format!("reading share {index}")))?;
    let mut request: Request = serde_json::from_slice(&body)
        .map_err(|e| ShareError::Request(format!("{where_}{key}: not a fanout request: {e}")))?;
    if request.protocol != protocol::PROTOCOL {
        return Err(ShareError::Request(format!(
            "share {index} was written for protocol {}, this worker speaks {}: run the coordinator's fanout",
            request.protocol,
            protocol::PROTOCOL
        )));
    }
    let earlier = earlier_answers(requests, index)
        .await
        .map_err(ShareError::storage(format!("reading share {index}'s earlier answers")))?;
    request.orders = still_to_do(std::mem::take(&mut request.orders), &earlier, request.retry_up_to);
    // Staged outputs under a prefix of this worker's own: another worker on the same
    // share never writes where this one did.
    for order in &mut request.orders {
        order.staging_prefix.push_str(&format!("w-{tag}/"));
    }
    let name = task.name.clone();
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let storing = tokio::spawn(store_answers(requests.clone(), (index, tag.to_string()), name.clone(), results_rx));
    super::answer(&request, name, cores(), &results_tx).await;
    drop(results_tx);
    let stored = storing.await.map_err(|e| ShareError::Request(format!("storing share {index}'s answers: {e}")))?;
    let answered = stored.map_err(ShareError::storage(format!("storing share {index}'s answers")))?;
    let done = format!("{{\"results\":{answered}}}\n");
    requests
        .put(&StoredFile::done_name(index, tag), Bytes::from(done))
        .await
        .map_err(ShareError::storage(format!("storing share {index}'s end")))?;
    Ok(())
}

/// What earlier workers of share `index` answered: each shard's results.
async fn earlier_answers(requests: &DynStorage, index: usize) -> Result<HashMap<u64, Vec<ShardResult>>, StorageError> {
    let mut earlier: HashMap<u64, Vec<ShardResult>> = HashMap::new();
    // An answer being written as this worker starts may read short: what it holds is done
    // again, never lost.
    let mine = |file: &StoredFile| file.share == index && file.kind == StoredKind::Answer;
    for (_, stored) in remote::read_new(requests, "", &mut HashSet::new(), mine).await? {
        let Stored::Answer(answer) = stored else { continue };
        for result in answer.results {
            earlier.entry(result.shard).or_default().push(result);
        }
    }
    Ok(earlier)
}

/// The orders no earlier worker succeeded at. Where the worker retries itself
/// (`retry_up_to`), a shard that failed before goes on from its next attempt, and one
/// that used up its attempts is left alone.
fn still_to_do(orders: Vec<Order>, earlier: &HashMap<u64, Vec<ShardResult>>, retry_up_to: Option<u32>) -> Vec<Order> {
    orders
        .into_iter()
        .filter_map(|mut order| {
            let results = earlier.get(&order.shard.id).map(Vec::as_slice).unwrap_or_default();
            if results.iter().any(ShardResult::succeeded) {
                return None;
            }
            let Some(last) = retry_up_to else { return Some(order) };
            let next = results.iter().map(|r| r.attempt + 1).max().unwrap_or(order.attempt).max(order.attempt);
            if next > last {
                return None;
            }
            if next != order.attempt {
                let first_prefix = order.staging_prefix.clone();
                order.move_to_attempt(next, &first_prefix);
            }
            Some(order)
        })
        .collect()
}

/// Stores results as answer files of share `index` tagged `tag`, every [`ANSWER_EVERY`]
/// and at the end; returns how many results were stored.
async fn store_answers(
    requests: DynStorage,
    (index, tag): (usize, String),
    environment: String,
    mut results: mpsc::UnboundedReceiver<ShardResult>,
) -> Result<usize, StorageError> {
    let (mut pending, mut stored, mut part) = (Vec::new(), 0, 0);
    let mut since = Instant::now();
    loop {
        let next = tokio::time::timeout(ANSWER_EVERY.saturating_sub(since.elapsed()), results.recv()).await;
        let ended = matches!(next, Ok(None));
        if let Ok(Some(result)) = next {
            pending.push(result);
        }
        let due = since.elapsed() >= ANSWER_EVERY;
        if !pending.is_empty() && (due || ended) {
            let answer = Answer {
                protocol: protocol::PROTOCOL,
                environment: environment.clone(),
                memory_mb: 0,
                duration_ms: 0,
                results: std::mem::take(&mut pending),
                results_key: None,
            };
            stored += answer.results.len();
            let body = Bytes::from(serde_json::to_vec(&answer).expect("an answer serializes"));
            requests.put(&StoredFile::answer_name(index, &tag, part), body).await?;
            part += 1;
        }
        if due {
            since = Instant::now();
        }
        if ended {
            return Ok(stored);
        }
    }
}
