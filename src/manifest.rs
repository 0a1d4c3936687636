//! The manifest: everything fanout writes about a job under `DEST/_fanout/<job-id>/`.
//! Owns that layout, the job document (`job.json`), the stored shard plan, the commit
//! journal (`shards/`) and the reading back of all of it for resume, status and redrive.
//! It writes through the storage trait only, and never decides what runs next.
//!
//! Layout:
//! ```text
//! _fanout/<job-id>/job.json              the resolved job, the function's hash, plan state
//! _fanout/<job-id>/plan/NNNNNN.jsonl     the shard plan, in segments, in shard order
//! _fanout/<job-id>/shards/rRRR-NNNNNN.jsonl  commit journal: records of finished shards
//! _fanout/<job-id>/logs/NNNNN.txt        a shard's stderr (and stdout when not an output)
//! _fanout/<job-id>/report.csv            one row a shard
//! _fanout/<job-id>/summary.json          totals, timings, failures
//! ```
//! A journal segment is written only after every output its records name is stored, so a
//! record never exists before its outputs. Later records for a shard replace earlier ones,
//! except that a committed shard stays committed. Writes are retried by the storage backend
//! alone (the S3 client's policy); one that still fails is the caller's to report.

use crate::job::Job;
use crate::runtime::{FunctionKind, OutcomeKind};
use crate::source::{PlanTotals, Shard};
use crate::storage::{DynStorage, StorageError};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::time::SystemTime;

pub use crate::storage::FANOUT_DIR;

/// The stored job: what ran, with which function, and how far planning got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobDocument {
    pub job_id: String,
    pub fanout_version: String,
    pub created: String,
    pub job: Job,
    pub function: FunctionIdentity,
    pub plan: PlanState,
    /// True for a `fanout watch` job: its plan grows as objects arrive, segment by segment.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub watch: bool,
    /// True for a job stored for the user's own tools to start its workers (`fanout run
    /// --emit`); a Kubernetes job always is.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emitted: bool,
}

impl JobDocument {
    /// Its workers are started by the user's tools and `fanout status --follow` commits what
    /// they do, rather than a coordinator that starts them (`run`, `redrive`).
    pub fn is_followed(&self) -> bool {
        self.emitted || matches!(self.job.executor, crate::job::Executor::Kubernetes { .. })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionIdentity {
    pub sha256: String,
    pub kind: FunctionKind,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
pub struct PlanState {
    /// True once every shard of the plan is stored in `plan/`.
    pub complete: bool,
    pub segments: u64,
    pub totals: Option<PlanTotals>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ShardStatus {
    Ok,
    Failed,
}

/// A commit record: what happened to a shard, written after its outputs.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShardRecord {
    pub shard: u64,
    pub fingerprint: String,
    pub status: ShardStatus,
    pub outcome: OutcomeKind,
    /// Attempts over all runs of the job.
    pub attempts: u32,
    pub started: String,
    pub finished: String,
    pub duration_ms: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// None when the final attempt ended before a worker took it (staging failed).
    pub worker: Option<u32>,
    /// A remote worker's own name (a Lambda execution environment), beside its lane number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_name: Option<String>,
    pub cold_start: bool,
    pub error: Option<String>,
    /// Output keys, relative to DEST.
    pub outputs: Vec<String>,
    /// Which run of the job wrote this (0 = the first, then resumes and redrives).
    pub run: u32,
    /// True when a backup attempt (straggler mitigation) produced the committed result.
    #[serde(default)]
    pub backup: bool,
    /// This run's attempts before the one above (failed tries, or a backup's original
    /// when it ended first), for the timeline. Absent when the first attempt decided.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub earlier: Vec<AttemptSpan>,
    /// In a watch, the shards of earlier versions of the same objects: once this one has
    /// committed, a failure among them no longer counts (its object is not there any more).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub supersedes: Vec<u64>,
}

/// One attempt of a shard as the timeline draws it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AttemptSpan {
    pub attempt: u32,
    pub outcome: OutcomeKind,
    pub started: String,
    pub finished: String,
    /// None when the attempt ended before a worker took it (its inputs could not be staged).
    pub worker: Option<u32>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cold_start: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub backup: bool,
}

/// Shards that are done, by how they ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub ok: u64,
    pub failed: u64,
    /// Failed, then replaced by a committed newer version of their objects (a watch).
    pub superseded: u64,
}

impl Counts {
    pub fn of<'a>(records: impl IntoIterator<Item = &'a ShardRecord>) -> Counts {
        let records: Vec<&ShardRecord> = records.into_iter().collect();
        let superseded = superseded_failures(records.iter().copied());
        let mut counts = Counts::default();
        for record in records {
            match record.status {
                ShardStatus::Ok => counts.ok += 1,
                ShardStatus::Failed if superseded.contains(&record.shard) => counts.superseded += 1,
                ShardStatus::Failed => counts.failed += 1,
            }
        }
        counts
    }
}

/// The shards a committed newer version of the same objects replaced (a watch).
pub fn replaced_shards<'a>(records: impl IntoIterator<Item = &'a ShardRecord>) -> HashSet<u64> {
    records
        .into_iter()
        .filter(|record| record.status == ShardStatus::Ok)
        .flat_map(|record| record.supersedes.iter().copied())
        .collect()
}

/// The failed shards a committed newer version of the same objects replaced (a watch).
pub fn superseded_failures<'a>(records: impl IntoIterator<Item = &'a ShardRecord>) -> HashSet<u64> {
    let records: Vec<&ShardRecord> = records.into_iter().collect();
    let replaced = replaced_shards(records.iter().copied());
    records
        .iter()
        .filter(|record| record.status == ShardStatus::Failed && replaced.contains(&record.shard))
        .map(|record| record.shard)
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{key}: damaged manifest ({message})")]
    Damaged { key: String, message: String },
    #[error("{dest}: no fanout job found (no {FANOUT_DIR}/*/job.json)")]
    NoJobs { dest: String },
    #[error("{dest}: no job \"{job_id}\" (jobs here: {known})")]
    UnknownJob { dest: String, job_id: String, known: String },
}

pub type ManifestResult<T> = Result<T, ManifestError>;

/// RFC 3339 UTC with milliseconds.
pub fn timestamp(time: SystemTime) -> String {
    humantime::format_rfc3339_millis(time).to_string()
}

/// A new job id: the name, the UTC start time and a few random hex digits.
pub fn new_job_id(name: &str) -> String {
    let now = SystemTime::now();
    let stamp: String =
        humantime::format_rfc3339_seconds(now).to_string().chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let nanos = now.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    let salt = (nanos ^ std::process::id().rotate_left(16)) & 0xffff;
    format!("{name}-{stamp}-{salt:04x}")
}

/// One job's manifest in a DEST.
#[derive(Clone, Debug)]
pub struct Manifest {
    storage: DynStorage,
    job_id: String,
}

impl Manifest {
    pub fn new(storage: DynStorage, job_id: &str) -> Self {
        Manifest { storage, job_id: job_id.to_string() }
    }

    pub fn job_id(&self) -> &str {
        &self.job_id
    }

    pub fn storage(&self) -> &DynStorage {
        &self.storage
    }

    /// The key of `relative` inside this job's folder.
    pub fn key(&self, relative: &str) -> String {
        format!("{FANOUT_DIR}/{}/{relative}", self.job_id)
    }

    /// Where a user finds this job's folder.
    pub fn location(&self) -> String {
        self.storage.root().join(&format!("{FANOUT_DIR}/{}/", self.job_id)).to_string()
    }

    pub fn log_key(&self, shard: u64) -> String {
        self.key(&format!("logs/{shard:05}.txt"))
    }

    pub async fn write_job(&self, document: &JobDocument) -> ManifestResult<()> {
        let json = serde_json::to_vec_pretty(document).expect("a job document serializes");
        self.storage.put(&self.key("job.json"), Bytes::from(json)).await?;
        Ok(())
    }

    pub async fn read_job(&self) -> ManifestResult<JobDocument> {
        let key = self.key("job.json");
        let bytes = self.storage.get(&key).await?;
        serde_json::from_slice(&bytes).map_err(|e| ManifestError::Damaged { key, message: e.to_string() })
    }

    pub async fn write_plan_segment(&self, segment: u64, shards: &[Shard]) -> ManifestResult<()> {
        self.storage.put(&self.key(&format!("plan/{segment:06}.jsonl")), jsonl(shards)).await?;
        Ok(())
    }

    /// The stored plan segment `segment`.
    /// Every stored plan segment, from the first until one is missing, and how many there
    /// were: a watch's plan, which has no count in job.json while it grows.
    pub async fn read_open_plan(&self) -> ManifestResult<(Vec<Shard>, u64)> {
        let mut shards = Vec::new();
        let mut segment = 0;
        loop {
            match self.read_plan_segment(segment).await {
                Ok(more) => shards.extend(more),
                Err(ManifestError::Storage(e)) if e.is_not_found() => return Ok((shards, segment)),
                Err(e) => return Err(e),
            }
            segment += 1;
        }
    }

    pub async fn read_plan_segment(&self, segment: u64) -> ManifestResult<Vec<Shard>> {
        let key = self.key(&format!("plan/{segment:06}.jsonl"));
        let bytes = self.storage.get(&key).await?;
        parse_jsonl(&key, &bytes)
    }

    pub async fn write_journal_segment(&self, run: u32, segment: u64, records: &[ShardRecord]) -> ManifestResult<()> {
        self.storage.put(&self.key(&format!("shards/r{run:03}-{segment:06}.jsonl")), jsonl(records)).await?;
        Ok(())
    }

    /// Every commit record, the latest per shard, and the next free run number.
    pub async fn read_journal(&self) -> ManifestResult<Journal> {
        use futures::StreamExt;
        let prefix = self.key("shards/");
        let mut keys = Vec::new();
        let mut listing = self.storage.list(&prefix);
        while let Some(object) = listing.next().await {
            keys.push(object?.key);
        }
        // Segment names sort by run, then by sequence: later records replace earlier ones.
        keys.sort();
        let mut journal = Journal::default();
        for key in keys {
            let name = key.rsplit('/').next().unwrap_or_default();
            let Some(run) =
                name.strip_prefix('r').and_then(|r| r.split('-').next()).and_then(|r| r.parse::<u32>().ok())
            else {
                continue;
            };
            journal.next_run = journal.next_run.max(run + 1);
            let bytes = self.storage.get(&key).await?;
            for record in parse_jsonl::<ShardRecord>(&key, &bytes)? {
                let keep = match journal.latest.get(&record.shard) {
                    // A committed shard stays committed: a later failed backup cannot undo it.
                    Some(existing) if existing.status == ShardStatus::Ok && record.status != ShardStatus::Ok => false,
                    _ => true,
                };
                if keep {
                    journal.latest.insert(record.shard, record);
                }
            }
        }
        Ok(journal)
    }

    pub async fn put_log(&self, shard: u64, text: Bytes) -> ManifestResult<()> {
        self.storage.put(&self.log_key(shard), text).await?;
        Ok(())
    }

    pub async fn put(&self, relative: &str, data: Bytes) -> ManifestResult<()> {
        self.storage.put(&self.key(relative), data).await?;
        Ok(())
    }

    pub async fn get(&self, relative: &str) -> ManifestResult<Bytes> {
        Ok(self.storage.get(&self.key(relative)).await?)
    }
}

/// What the journal says, folded to the latest record per shard.
#[derive(Debug, Default)]
pub struct Journal {
    pub latest: BTreeMap<u64, ShardRecord>,
    pub next_run: u32,
}

fn jsonl<T: Serialize>(items: &[T]) -> Bytes {
    let mut out = Vec::with_capacity(items.len() * 160);
    for item in items {
        serde_json::to_writer(&mut out, item).expect("manifest records serialize");
        out.push(b'\n');
    }
    Bytes::from(out)
}

fn parse_jsonl<T: for<'de> Deserialize<'de>>(key: &str, bytes: &[u8]) -> ManifestResult<Vec<T>> {
    bytes
        .split(|&b| b == b'\n')
        .filter(|line| !line.is_empty())
        .enumerate()
        .map(|(i, line)| {
            serde_json::from_slice(line)
                .map_err(|e| ManifestError::Damaged { key: key.to_string(), message: format!("line {}: {e}", i + 1) })
        })
        .collect()
}

/// The jobs in a DEST, oldest first (by their creation time).
pub async fn list_jobs(storage: &DynStorage) -> ManifestResult<Vec<JobDocument>> {
    let mut documents = Vec::new();
    let job_ids = match storage.list_dirs(&format!("{FANOUT_DIR}/")).await {
        // A DEST that does not exist holds no job, which the caller says in its own words.
        Err(e) if e.is_not_found() => Vec::new(),
        listed => listed?,
    };
    for job_id in job_ids {
        match Manifest::new(storage.clone(), &job_id).read_job().await {
            Ok(document) => documents.push(document),
            // A folder without job.json is a job killed before it wrote anything.
            Err(ManifestError::Storage(e)) if e.is_not_found() => continue,
            Err(e) => return Err(e),
        }
    }
    documents.sort_by(|a, b| a.created.cmp(&b.created).then(a.job_id.cmp(&b.job_id)));
    Ok(documents)
}

/// Finds a job in DEST: the one named, or else the latest (of `name`, when given).
pub async fn find_job(
    storage: &DynStorage,
    job_id: Option<&str>,
    name: Option<&str>,
) -> ManifestResult<Option<JobDocument>> {
    let jobs = list_jobs(storage).await?;
    match job_id {
        Some(id) => match jobs.iter().find(|d| d.job_id == id) {
            Some(document) => Ok(Some(document.clone())),
            None => Err(ManifestError::UnknownJob {
                dest: storage.root().to_string(),
                job_id: id.to_string(),
                known: if jobs.is_empty() {
                    "none".into()
                } else {
                    jobs.iter().map(|d| d.job_id.as_str()).collect::<Vec<_>>().join(", ")
                },
            }),
        },
        None => Ok(jobs.into_iter().rev().find(|d| name.is_none_or(|n| d.job.name == n))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::location::Location;

    fn record(shard: u64, status: ShardStatus, run: u32) -> ShardRecord {
        ShardRecord {
            shard,
            fingerprint: "f".into(),
            status,
            outcome: if status == ShardStatus::Ok { OutcomeKind::Ok } else { OutcomeKind::Exit },
            attempts: 1,
            started: "2026-11-29T10:00:00.000Z".into(),
            finished: "2026-11-29T10:00:01.000Z".into(),
            duration_ms: 1000,
            bytes_in: 1,
            bytes_out: 1,
            worker: Some(0),
            worker_name: None,
            cold_start: false,
            error: None,
            outputs: Vec::new(),
            run,
            backup: false,
            earlier: Vec::new(),
            supersedes: Vec::new(),
        }
    }

    #[test]
    fn a_failure_counts_until_a_newer_version_of_its_object_commits() {
        use ShardStatus::{Failed, Ok};
        let mut newer = record(5, Failed, 0);
        newer.supersedes = vec![2];
        let records = [record(1, Ok, 0), record(2, Failed, 0), record(3, Failed, 0), newer.clone()];
        assert_eq!(Counts::of(&records), Counts { ok: 1, failed: 3, superseded: 0 }, "the newer one failed too");
        newer.status = Ok;
        let records = [record(1, Ok, 0), record(2, Failed, 0), record(3, Failed, 0), newer];
        assert_eq!(Counts::of(&records), Counts { ok: 2, failed: 1, superseded: 1 });
        assert_eq!(superseded_failures(&records), HashSet::from([2]));
    }

    #[tokio::test]
    async fn a_committed_shard_stays_committed_and_later_records_replace_earlier_ones() {
        let dir = tempfile::tempdir().unwrap();
        let storage =
            crate::storage::open(&Location::Local(dir.path().to_path_buf()), &Default::default()).await.unwrap();
        let manifest = Manifest::new(storage, "job-1");
        use ShardStatus::{Failed, Ok};
        manifest
            .write_journal_segment(0, 0, &[record(1, Ok, 0), record(2, Failed, 0), record(3, Failed, 0)])
            .await
            .unwrap();
        // A later run: a late failed backup of shard 1 must not undo its commit; shard 2's
        // retry succeeded; shard 3 failed again.
        manifest.write_journal_segment(1, 0, &[record(1, Failed, 1), record(2, Ok, 1)]).await.unwrap();
        manifest.write_journal_segment(1, 1, &[record(3, Failed, 1)]).await.unwrap();
        let journal = manifest.read_journal().await.unwrap();
        let latest: Vec<(u64, ShardStatus, u32)> =
            journal.latest.values().map(|r| (r.shard, r.status, r.run)).collect();
        assert_eq!(latest, [(1, Ok, 0), (2, Ok, 1), (3, Failed, 1)]);
        assert_eq!(journal.next_run, 2);
    }
}
