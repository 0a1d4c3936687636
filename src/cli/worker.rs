//! `fanout worker REQUESTS`: one share of a job's attempts, run by a batch engine's task (a
//! Slurm array task, a Kubernetes pod). It reads its share's request from REQUESTS, runs it
//! as a Lambda worker runs an invocation (the same staging, sandbox and staged outputs),
//! and stores the answer beside the request. It never publishes or commits: the
//! coordinator does. Two workers given the same share (an engine's retry) stage under
//! prefixes of their own and store answers of their own; the coordinator takes one.

use super::args::WorkerArgs;
use super::exit::{failed, usage, Failure, EXIT_OK};
use crate::lambda::protocol::{self, Request};
use crate::lambda::worker;
use crate::location::Location;
use crate::storage::{self, DynStorage, StorageOptions};
use anyhow::anyhow;
use bytes::Bytes;
use std::time::{SystemTime, UNIX_EPOCH};

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
    match var("SLURM_ARRAY_JOB_ID") {
        Some(array) => format!("slurm {array}_{index} on {host}"),
        None => format!("worker {index} on {host}"),
    }
}

/// Guests side by side: the cores the engine gave the task.
fn cores() -> usize {
    let given = std::env::var("SLURM_CPUS_PER_TASK").ok().and_then(|v| v.parse().ok());
    given.unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1))
}

impl WorkerArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        let index = share_index(self.index)?;
        let location = Location::parse(&self.requests).map_err(|e| usage(anyhow!("REQUESTS: {e}")))?;
        let requests = storage::open(&location, &StorageOptions::default())
            .await
            .map_err(|e| failed(anyhow!("{}: {e}", self.requests)))?;
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

/// Reads share `index`'s request, runs it, and stores the answer beside it.
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
    // Staged outputs under a prefix of this worker's own: another worker on the same
    // share never writes where this one did.
    for order in &mut request.orders {
        order.staging_prefix.push_str(&format!("w-{tag}/"));
    }
    let answer = worker::answer(&request, worker_name(index), cores()).await;
    let body = Bytes::from(serde_json::to_vec(&answer).expect("an answer serializes"));
    requests
        .put(&format!("{index}.answer-{tag}.json"), body)
        .await
        .map_err(|e| failed(anyhow!("storing share {index}'s answer: {e}")))?;
    Ok(EXIT_OK)
}
