//! `fanout worker REQUESTS`: one share of a job's attempts, run by a batch engine's task (a
//! Slurm array task, a Kubernetes pod). It reads its share's request from REQUESTS, runs it
//! as a Lambda worker runs an invocation (the same staging, sandbox and staged outputs),
//! and stores its answers beside the request as they come (every few seconds), then a
//! marker saying it is done. It never publishes or commits: the committer does (the
//! coordinator, or `fanout status --follow`). A worker skips the shards an earlier worker
//! of its share already answered for successfully, so an engine's retry (a pod started
//! again) redoes only what was lost; two workers on the same share at once stage under
//! prefixes of their own and store answers of their own, and the committer takes one.

use super::args::WorkerArgs;
use super::exit::{failed, usage, Failure, EXIT_OK};
use crate::kubernetes;
use crate::lambda::protocol::{self, Answer, Request, ShardResult};
use crate::lambda::worker;
use crate::location::Location;
use crate::storage::{self, DynStorage, StorageOptions};
use anyhow::anyhow;
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

/// Results are stored at least this often while a share runs (and when it ends).
const ANSWER_EVERY: Duration = Duration::from_secs(2);

/// The share the engine gave this task, from the flag or the engine's own variable.
fn share_index(flag: Option<usize>) -> Result<usize, Failure> {
    if let Some(index) = flag {
        return Ok(index);
    }
    for variable in ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"] {
        if let Ok(value) = std::env::var(variable) {
            return value.trim().parse().map_err(|_| usage(anyhow!("${variable} is {value:?}, not a share number")));
        }
    }
    Err(usage(anyhow!("which share? pass --index N (or run as a Slurm array task or an Indexed Job's pod)")))
}

/// A name for this worker: the engine's name for the task, and the node it runs on.
fn worker_name(index: usize) -> String {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let host = var("SLURMD_NODENAME")
        .or_else(|| var("HOSTNAME"))
        .unwrap_or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().into());
    match (var("SLURM_ARRAY_JOB_ID"), var("JOB_COMPLETION_INDEX")) {
        (Some(array), _) => format!("slurm {array}_{index} on {host}"),
        // A pod's hostname is the pod's name.
        (None, Some(_)) => format!("pod {host} (index {index})"),
        (None, None) => format!("worker {index} on {host}"),
    }
}

/// Guests side by side: the cores the engine gave the task.
fn cores() -> usize {
    let given = ["FANOUT_WORKER_CORES", "SLURM_CPUS_PER_TASK"]
        .iter()
        .find_map(|name| std::env::var(name).ok().and_then(|v| v.trim().parse().ok()).filter(|&n: &usize| n > 0));
    given.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

impl WorkerArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        let index = share_index(self.index)?;
        let mut location = Location::parse(&self.requests).map_err(|e| usage(anyhow!("REQUESTS: {e}")))?;
        if let Some(job_id) = &self.job_id {
            location = location.join(&kubernetes::shares_prefix(job_id));
        }
        let requests = storage::open(&location, &StorageOptions::default())
            .await
            .map_err(|e| failed(anyhow!("{location}: {e}")))?;
        if let Some(count) = self.count {
            check_count(&requests, &location, count, index).await?;
        }
        let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
        let tag = format!("{:x}-{nanos:x}", std::process::id());
        let answered = answer_share(&requests, &location, index, &tag).await;
        if let Err(failure) = &answered {
            // Beside the answers, where the coordinator looks: an engine's task log may be
            // nowhere it can read.
            let text = format!("{:#}\n", failure.error());
            let _ = requests.put(&format!("{index}.error-{tag}.txt"), Bytes::from(text)).await;
        }
        answered
    }
}

/// The engine was told of as many shares as the job has, and this one is among them.
async fn check_count(requests: &DynStorage, location: &Location, count: usize, index: usize) -> Result<(), Failure> {
    let body = requests.get(kubernetes::SHARES).await.map_err(|e| failed(anyhow!("{location}: {e}")))?;
    let shares: kubernetes::Shares =
        serde_json::from_slice(&body).map_err(|e| failed(anyhow!("{}: {e}", location.join(kubernetes::SHARES))))?;
    let there = shares.first_shards.len();
    if there != count || index >= count {
        return Err(usage(anyhow!("share {index} of {count}: the job has {there} shares (0 to {})", there - 1)));
    }
    Ok(())
}

/// Reads share `index`'s request, runs what earlier workers left undone, and stores the
/// answers beside it.
async fn answer_share(requests: &DynStorage, location: &Location, index: usize, tag: &str) -> Result<u8, Failure> {
    let key = format!("{index}.json");
    let body = requests.get(&key).await.map_err(|e| failed(anyhow!("reading share {index}: {e}")))?;
    let mut request: Request = serde_json::from_slice(&body)
        .map_err(|e| failed(anyhow!("{}: not a fanout request: {e}", location.join(&key))))?;
    if request.protocol != protocol::PROTOCOL {
        return Err(failed(anyhow!(
            "share {index} was written for protocol {}, this worker speaks {}: run the coordinator's fanout",
            request.protocol,
            protocol::PROTOCOL
        )));
    }
    let earlier = earlier_answers(requests, index).await.map_err(failed)?;
    request.orders = still_to_do(std::mem::take(&mut request.orders), &earlier, request.retry_up_to);
    // Staged outputs under a prefix of this worker's own: another worker on the same
    // share never writes where this one did.
    for order in &mut request.orders {
        order.staging_prefix.push_str(&format!("w-{tag}/"));
    }
    let name = worker_name(index);
    let (results_tx, results_rx) = mpsc::unbounded_channel();
    let storing =
        tokio::spawn(store_answers(requests.clone(), format!("{index}.answer-{tag}"), name.clone(), results_rx));
    worker::answer(&request, name, cores(), &results_tx).await;
    drop(results_tx);
    let stored = storing.await.expect("storing answers does not panic");
    let answered = stored.map_err(|e| failed(anyhow!("storing share {index}'s answers: {e}")))?;
    let done = format!("{{\"results\":{answered}}}\n");
    requests
        .put(&format!("{index}.done-{tag}.txt"), Bytes::from(done))
        .await
        .map_err(|e| failed(anyhow!("storing share {index}'s end: {e}")))?;
    Ok(EXIT_OK)
}

/// What earlier workers of share `index` answered: each shard's results.
async fn earlier_answers(requests: &DynStorage, index: usize) -> anyhow::Result<HashMap<u64, Vec<ShardResult>>> {
    let mine = format!("{index}.answer-");
    let mut listing = requests.list("");
    let mut keys = Vec::new();
    while let Some(object) = listing.next().await {
        let object = object?;
        if object.key.starts_with(&mine) {
            keys.push(object.key);
        }
    }
    let mut earlier: HashMap<u64, Vec<ShardResult>> = HashMap::new();
    for key in keys {
        let body = requests.get(&key).await?;
        // An answer being written as this worker starts may be cut short: what it holds is
        // done again, never lost.
        let Ok(answer) = serde_json::from_slice::<Answer>(&body) else { continue };
        for result in answer.results {
            earlier.entry(result.shard).or_default().push(result);
        }
    }
    Ok(earlier)
}

/// The orders no earlier worker succeeded at. Where the worker retries itself
/// (`retry_up_to`), a shard that failed before goes on from its next attempt, and one
/// that used up its attempts is left alone.
fn still_to_do(
    orders: Vec<protocol::Order>,
    earlier: &HashMap<u64, Vec<ShardResult>>,
    retry_up_to: Option<u32>,
) -> Vec<protocol::Order> {
    let succeeded = |r: &ShardResult| r.outcome.is_ok() && matches!(r.outputs, Some(Ok(_)));
    orders
        .into_iter()
        .filter_map(|mut order| {
            let results = earlier.get(&order.shard.id).map(Vec::as_slice).unwrap_or_default();
            if results.iter().any(succeeded) {
                return None;
            }
            let Some(last) = retry_up_to else { return Some(order) };
            let next = results.iter().map(|r| r.attempt + 1).max().unwrap_or(order.attempt).max(order.attempt);
            if next > last {
                return None;
            }
            if next != order.attempt {
                order.attempt = next;
                order.staging_prefix.push_str(&format!("r{next}/"));
                for (name, value) in &mut order.env {
                    if name == "FANOUT_ATTEMPT" {
                        *value = next.to_string();
                    }
                }
            }
            Some(order)
        })
        .collect()
}

/// Stores results as answers named `<stem>-<n>.json`, every [`ANSWER_EVERY`] and at the
/// end; returns how many results were stored.
async fn store_answers(
    requests: DynStorage,
    stem: String,
    environment: String,
    mut results: mpsc::UnboundedReceiver<ShardResult>,
) -> anyhow::Result<usize> {
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
            requests.put(&format!("{stem}-{part:04}.json"), body).await?;
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
