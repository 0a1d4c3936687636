//! What every remote engine shares: the request and answer protocol ([`protocol`]), the
//! request a batch of attempts becomes ([`JobBase`]), how a worker's result turns back into
//! an [`AttemptDone`], and the files batch workers leave beside their requests in DEST
//! (answers, errors, end markers: [`StoredFile`], [`read_new`]). Lambda, Slurm and
//! Kubernetes import this and never each other; the worker (`crate::worker`) imports it to
//! read requests and write answers. It must not know any one engine's API.

pub mod lease;
pub mod protocol;

use super::{AttemptDone, Task};
use crate::job::Job;
use crate::runtime::capture::{Captured, Kept};
use crate::runtime::{InvocationReport, Outcome};
use crate::stage::{OutputFile, OutputFrom};
use crate::storage::{DynStorage, StorageError};
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use protocol::{Answer, Order, Request, ShardResult};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Memory a batch worker needs beyond its guests' (the worker, its staging, wasmtime), asked
/// of the engine with every task (a Slurm `--mem`, a pod's memory limit).
pub const WORKER_OVERHEAD_MB: u64 = 256;

/// Shards in flight for an engine that starts workers in batches (a Slurm array, a
/// Kubernetes Job): a batch costs a second or more of scheduling, so as many as can wait.
pub const BATCH_ENGINE_IN_FLIGHT: usize = 65_536;

/// What every request of the job repeats.
pub struct JobBase {
    pub job_id: String,
    /// DEST, where workers stage outputs and leave what does not fit an answer.
    pub dest: DynStorage,
    pub job: Job,
    pub function_key: String,
    pub function_sha256: String,
    /// See [`Request::python_compiled`].
    pub python_compiled: Option<crate::runtime::python::Shipped>,
}

impl JobBase {
    /// Removes what remote attempts staged and nobody published (losers, failures, attempts
    /// that answered too late). An invocation still running may stage more after this; it
    /// is never published, and the next run of the job sweeps it.
    pub fn sweep_attempts(&self) -> futures::future::BoxFuture<'static, ()> {
        use futures::StreamExt;
        let prefix = format!("{}/{}/attempts/", crate::manifest::FANOUT_DIR, self.job_id);
        let dest = self.dest.clone();
        Box::pin(async move {
            dest.list(&prefix)
                .filter_map(|listed| async move { listed.ok() })
                .for_each_concurrent(16, |object| {
                    let dest = dest.clone();
                    async move {
                        let _ = dest.delete(&object.key).await;
                    }
                })
                .await;
        })
    }

    /// A request for `batch`: each attempt with a staging prefix no other attempt uses.
    pub fn request(&self, batch: &[Task], nonce: &AtomicU64) -> Request {
        let orders = batch
            .iter()
            .map(|task| Order {
                shard: task.shard.clone(),
                attempt: task.attempt,
                argv: task.invocation.argv.clone(),
                env: task.invocation.env.clone(),
                staging_prefix: protocol::staging_prefix(
                    &self.job_id,
                    task.shard.id,
                    task.attempt,
                    nonce.fetch_add(1, Ordering::Relaxed),
                ),
            })
            .collect();
        Request {
            protocol: protocol::PROTOCOL,
            job_id: self.job_id.clone(),
            job: self.job.clone(),
            function_key: self.function_key.clone(),
            function_sha256: self.function_sha256.clone(),
            python_compiled: self.python_compiled.clone(),
            orders,
            retry_up_to: None,
        }
    }
}

/// A task whose engine failed it before or without a worker's result.
pub fn failed(task: &Task, started: SystemTime, message: String) -> AttemptDone {
    AttemptDone {
        report: InvocationReport { elapsed: Duration::ZERO, ..InvocationReport::not_run(Outcome::Error(message)) },
        started,
        finished: SystemTime::now(),
        ..AttemptDone::not_run(task)
    }
}

fn from_unix_ms(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn captured(text: String, truncated: bool) -> Captured {
    Captured { kept: (!text.is_empty()).then(|| Kept::Memory(Bytes::from(text))), overflowed: truncated, error: None }
}

/// A worker's result as the coordinator takes results from any executor.
pub fn attempt_done(result: ShardResult, lane: u32, environment: &str) -> AttemptDone {
    let outputs = result.outputs.map(|listed| {
        listed.map(|staged| {
            staged
                .into_iter()
                .map(|s| OutputFile { from: OutputFrom::Staged(s.staged), key: s.key, size: s.size })
                .collect()
        })
    });
    AttemptDone {
        shard: result.shard,
        attempt: result.attempt,
        worker: lane,
        worker_name: Some(environment.to_string()),
        cold_start: result.cold_start,
        started: from_unix_ms(result.started_ms),
        finished: from_unix_ms(result.finished_ms),
        report: InvocationReport {
            outcome: result.outcome,
            stdout: captured(result.stdout, result.stdout_truncated),
            stderr: captured(result.stderr, result.stderr_truncated),
            elapsed: Duration::from_millis(result.elapsed_ms),
        },
        outputs,
    }
}

/// The most spans that overlap at one moment: the peak of workers from their answers.
pub fn most_at_once(spans: &[(u64, u64)]) -> usize {
    let mut edges: Vec<(u64, i32)> = spans.iter().flat_map(|&(start, end)| [(start, 1), (end, -1)]).collect();
    // At a shared instant an end comes before a start: back-to-back spans do not overlap.
    edges.sort_unstable();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

/// Splits `tasks` into `shares` runs of nearly equal length, in order.
pub fn split_into_shares<T>(mut tasks: Vec<T>, shares: usize) -> Vec<Vec<T>> {
    let shares = shares.clamp(1, tasks.len().max(1));
    let mut out = Vec::with_capacity(shares);
    for share in (0..shares).rev() {
        let take = tasks.len().div_ceil(share + 1);
        let rest = tasks.split_off(take);
        out.push(std::mem::replace(&mut tasks, rest));
    }
    out
}

/// The name of the file that says how an indexed job's shards were cut into shares.
pub const SHARES: &str = "shares.json";

/// Where an indexed job's (`fanout k8s`) shares live under DEST.
pub fn shares_prefix(job_id: &str) -> String {
    format!("{}/{job_id}/k8s/", crate::storage::FANOUT_DIR)
}

/// How an indexed job's shards were cut into shares: share `i` holds the shards from
/// `first_shards[i]` up to the next share's first, in the plan's order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Shares {
    pub first_shards: Vec<u64>,
    /// Workers a share may use up (a Kubernetes Job's `backoffLimitPerIndex` + 1) before its
    /// shards fail.
    pub pods_per_share: u32,
    /// The engine's name for the job, for messages that send the user to its tools.
    pub job_name: String,
}

impl Shares {
    pub fn share_of(&self, shard: u64) -> usize {
        self.first_shards.partition_point(|&first| first <= shard).saturating_sub(1)
    }
}

/// What a batch worker leaves beside share `index`'s request `<index>.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoredKind {
    /// `<index>.answer-<tag>-<n>.json`: some of its results (an [`Answer`]).
    Answer,
    /// `<index>.error-<tag>.txt`: why a worker could not answer.
    Error,
    /// `<index>.done-<tag>.txt`: a worker answered all it was going to.
    Done,
}

/// A file a worker stored beside the requests, by its key.
#[derive(Debug, Clone)]
pub struct StoredFile {
    pub key: String,
    pub share: usize,
    pub kind: StoredKind,
}

impl StoredFile {
    /// Answer, error and end-marker files by name; anything else (a request) is `None`.
    pub fn parse(key: &str) -> Option<StoredFile> {
        let name = key.rsplit('/').next().unwrap_or_default();
        let (index, rest) = name.split_once('.')?;
        let share = index.parse().ok()?;
        let kind = match rest {
            _ if rest.starts_with("answer-") => StoredKind::Answer,
            _ if rest.starts_with("error-") => StoredKind::Error,
            _ if rest.starts_with("done-") => StoredKind::Done,
            _ => return None,
        };
        Some(StoredFile { key: key.to_string(), share, kind })
    }

    /// The name of answer file `part` of a worker whose files are tagged `tag`.
    pub fn answer_name(share: usize, tag: &str, part: usize) -> String {
        format!("{share}.answer-{tag}-{part:04}.json")
    }

    pub fn error_name(share: usize, tag: &str) -> String {
        format!("{share}.error-{tag}.txt")
    }

    pub fn done_name(share: usize, tag: &str) -> String {
        format!("{share}.done-{tag}.txt")
    }
}

/// A stored file read back: an answer parsed, an error's text, or an end marker.
pub enum Stored {
    Answer(Answer),
    Error(String),
    Done,
}

/// The workers' files under `prefix` that `wanted` picks and `seen` does not hold, read (16
/// at once). A file is added to `seen` once read whole: an answer still being written reads
/// short and is left for the next look, never lost. A listing or a read that fails fails
/// the look (nothing of it is marked seen). The one loop every follower and worker reads
/// answers with.
pub async fn read_new(
    dest: &DynStorage,
    prefix: &str,
    seen: &mut HashSet<String>,
    wanted: impl Fn(&StoredFile) -> bool,
) -> Result<Vec<(StoredFile, Stored)>, StorageError> {
    let mut listing = dest.list(prefix);
    let mut new = Vec::new();
    while let Some(object) = listing.next().await {
        let object = object?;
        if seen.contains(&object.key) {
            continue;
        }
        match StoredFile::parse(&object.key) {
            Some(file) if wanted(&file) => new.push(file),
            Some(_) => {}
            None => {
                seen.insert(object.key);
            }
        }
    }
    let read: Vec<(StoredFile, Option<Stored>)> = futures::stream::iter(new)
        .map(|file| async move {
            let stored = match file.kind {
                StoredKind::Done => Some(Stored::Done),
                StoredKind::Error => {
                    let text = dest.get(&file.key).await?;
                    Some(Stored::Error(String::from_utf8_lossy(&text).trim().to_string()))
                }
                StoredKind::Answer => {
                    let body = dest.get(&file.key).await?;
                    serde_json::from_slice::<Answer>(&body).ok().map(Stored::Answer)
                }
            };
            Ok::<_, StorageError>((file, stored))
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    Ok(read
        .into_iter()
        .filter_map(|(file, stored)| {
            let stored = stored?;
            seen.insert(file.key.clone());
            Some((file, stored))
        })
        .collect())
}

/// Every worker's file: for [`read_new`].
pub fn every_file(_: &StoredFile) -> bool {
    true
}

/// The successful results among the workers' answers under `prefix` (committed or not).
/// What cannot be read now counts as not answered: its shards run again.
pub async fn succeeded_under(dest: &DynStorage, prefix: &str) -> Vec<(ShardResult, String)> {
    let mut seen = HashSet::new();
    let mut found = Vec::new();
    let read = read_new(dest, prefix, &mut seen, |file| file.kind == StoredKind::Answer).await;
    for (_, stored) in read.unwrap_or_default() {
        if let Stored::Answer(answer) = stored {
            let environment = answer.environment;
            found.extend(answer.results.into_iter().filter(ShardResult::succeeded).map(|r| (r, environment.clone())));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_contiguous_and_nearly_equal() {
        let split = split_into_shares((0..10).collect(), 3);
        assert_eq!(split, vec![vec![0, 1, 2, 3], vec![4, 5, 6], vec![7, 8, 9]]);
        assert_eq!(split_into_shares((0..2).collect(), 5).len(), 2, "never more shares than tasks");
        assert_eq!(split_into_shares(Vec::<u8>::new(), 3), vec![Vec::<u8>::new()]);
    }

    #[test]
    fn the_peak_counts_overlapping_spans_only() {
        assert_eq!(most_at_once(&[(0, 10), (5, 15), (10, 20)]), 2);
        assert_eq!(most_at_once(&[(0, 10), (10, 20)]), 1, "back to back is one at a time");
        assert_eq!(most_at_once(&[]), 0);
    }

    #[test]
    fn stored_files_are_known_by_name() {
        let answer = StoredFile::parse("_fanout/j/k8s/3.answer-ab-12-0001.json").unwrap();
        assert_eq!((answer.share, answer.kind), (3, StoredKind::Answer));
        assert_eq!(StoredFile::parse("x/12.error-t.txt").unwrap().kind, StoredKind::Error);
        assert_eq!(StoredFile::parse("x/0.done-t.txt").unwrap().kind, StoredKind::Done);
        assert!(StoredFile::parse("x/3.json").is_none(), "a request is not a worker's file");
        assert!(StoredFile::parse("x/shares.json").is_none());
        assert_eq!(StoredFile::parse(&StoredFile::answer_name(7, "t", 2)).unwrap().share, 7);
    }

    #[test]
    fn a_shard_belongs_to_the_share_that_starts_at_or_before_it() {
        let shares = Shares { first_shards: vec![0, 4, 9], pods_per_share: 1, job_name: "j".into() };
        assert_eq!(shares.share_of(0), 0);
        assert_eq!(shares.share_of(3), 0);
        assert_eq!(shares.share_of(4), 1);
        assert_eq!(shares.share_of(100), 2);
    }
}
