//! The reduce step (`[reduce]`): after every map shard is committed (or the failures are
//! tolerated), one function over all map outputs, run as a tree when there are more than
//! `fan_in` (each level's results go under `_fanout/<job-id>/reduce/L<level>/`), or the
//! concatenation of record outputs in shard order. Owns the tree's shape, each
//! invocation's sandbox, attempts and record, and resuming (an invocation whose record says
//! it succeeded on the same inputs is not run again). It writes its results and records to
//! DEST through the storage trait, and never touches the map's manifest.
//!
//! A reduce function sees its inputs under `/in` (map outputs at their keys; results of a
//! lower level as `NNNNN-<output name>`) and writes one result: on stdout, or as the one
//! file under `/out`.

use crate::job::{Job, ReduceStep};
use crate::manifest::{timestamp, Manifest, ShardRecord, ShardStatus};
use crate::runtime::capture::{Kept, Overflow};
use crate::runtime::{Invocation, Limits, Outcome, OutcomeKind, Runtime};
use crate::stage::{scan_outputs, Call, OutputRules, LOG_CAP};
use crate::storage::{DynStorage, ObjectMeta, StorageOptions};
use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// One reduce invocation's record, stored after its result.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReduceRecord {
    /// 1 for the invocations over map outputs, then up; the last level has one invocation.
    pub level: u32,
    pub index: u64,
    /// How many objects it read.
    pub inputs: u64,
    #[serde(flatten)]
    pub record: ShardRecord,
}

impl ReduceRecord {
    /// The name report.csv gives it in its `shard` column.
    pub fn name(&self) -> String {
        format!("L{}-{:05}", self.level, self.index)
    }
}

/// One input of a reduce invocation: an object in DEST, and what changes when it is
/// written again (so that a reduce over changed inputs runs again).
#[derive(Debug, Clone)]
pub struct ReduceInput {
    pub object: ObjectMeta,
    /// Its name under `/in`.
    pub name: String,
    pub stamp: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ReduceError {
    #[error("reduce.wasm: {0}")]
    Function(String),
    #[error("reduce: {0}")]
    Storage(#[from] crate::storage::StorageError),
    #[error("reduce: {0}")]
    Manifest(#[from] crate::manifest::ManifestError),
}

/// What the reduce did.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ReduceSummary {
    pub output: String,
    pub levels: u32,
    pub invocations: u64,
    /// Invocations committed by an earlier run and not run again.
    pub skipped: u64,
    pub failed: u64,
    pub bytes_out: u64,
    pub wall_ms: u64,
    pub succeeded: bool,
    /// The first failure, when one stopped the reduce.
    pub error: Option<String>,
}

pub struct ReduceRun<'a> {
    pub job: &'a Job,
    pub manifest: &'a Manifest,
    pub dest: DynStorage,
    pub options: &'a StorageOptions,
    pub staging_root: PathBuf,
    pub quiet: bool,
    pub cancel: CancellationToken,
}

fn record_key(level: u32, index: u64) -> String {
    format!("reduce/records/L{level}-{index:05}.json")
}

fn fingerprint(inputs: &[ReduceInput]) -> String {
    let mut hasher = Sha256::new();
    for input in inputs {
        hasher.update(input.object.key.as_bytes());
        hasher.update([0]);
        hasher.update(input.stamp.as_bytes());
        hasher.update([0]);
    }
    hasher.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// The map's committed outputs, in shard order, as level 1's inputs. In a watch, a shard
/// whose object has a newer version that committed is left out, and an output key a later
/// shard published again is read once, as the later shard's (DEST holds only that one).
pub fn map_outputs(records: &std::collections::BTreeMap<u64, ShardRecord>) -> Vec<ReduceInput> {
    let replaced = crate::manifest::replaced_shards(records.values());
    let ok = || records.values().filter(|record| record.status == ShardStatus::Ok && !replaced.contains(&record.shard));
    let last_owner: std::collections::HashMap<&str, u64> =
        ok().flat_map(|record| record.outputs.iter().map(|key| (key.as_str(), record.shard))).collect();
    ok().flat_map(|record| {
        let size = if record.outputs.len() == 1 { record.bytes_out } else { 0 };
        let last_owner = &last_owner;
        record.outputs.iter().filter(move |key| last_owner[key.as_str()] == record.shard).map(move |key| ReduceInput {
            object: ObjectMeta::new(key.clone(), size),
            name: key.clone(),
            stamp: format!("{}@{}", record.shard, record.finished),
        })
    })
    .collect()
}

impl ReduceRun<'_> {
    /// Runs the reduce over `inputs` to its final object, level by level.
    pub async fn run(&self, inputs: Vec<ReduceInput>) -> Result<(ReduceSummary, Vec<ReduceRecord>), ReduceError> {
        let reduce = self.job.reduce.as_ref().expect("a reduce to run");
        let started = Instant::now();
        let mut summary = ReduceSummary { output: reduce.output.clone(), ..Default::default() };
        let mut records = Vec::new();
        match &reduce.step {
            ReduceStep::Concat => {
                summary.levels = 1;
                let record = self.concat(&inputs).await?;
                summary.invocations = 1;
                summary.bytes_out = record.record.bytes_out;
                summary.succeeded = record.record.status == ShardStatus::Ok;
                summary.error = record.record.error.clone();
                records.push(record);
            }
            ReduceStep::Function { wasm, args } => {
                let runtime = self.load_runtime(wasm).await?;
                let mut level_inputs = inputs;
                let mut level = 1;
                loop {
                    let last = level_inputs.len() <= reduce.fan_in;
                    let next = self.run_level(&runtime, args, level, level_inputs, &mut summary, &mut records).await?;
                    summary.levels = level;
                    if summary.failed > 0 || last {
                        summary.succeeded = summary.failed == 0;
                        break;
                    }
                    level_inputs = next;
                    level += 1;
                }
            }
        }
        summary.wall_ms = started.elapsed().as_millis() as u64;
        Ok((summary, records))
    }

    /// The reduce function, compiled with the reduce's own limits.
    async fn load_runtime(&self, wasm: &crate::location::Location) -> Result<Arc<Runtime>, ReduceError> {
        let reduce = self.job.reduce.as_ref().expect("a reduce");
        let function = crate::function::load(wasm, self.options, self.quiet)
            .await
            .map_err(|e| ReduceError::Function(e.to_string()))?;
        let limits = Limits {
            timeout: std::time::Duration::from_millis(reduce.timeout_ms),
            memory_bytes: reduce.memory_bytes,
            concurrency: self.job.workers.max,
        };
        let name = function.name.clone();
        let (runtime, _) = tokio::task::spawn_blocking(move || Runtime::load(&name, &function.bytes, limits))
            .await
            .expect("loading the function does not panic")
            .map_err(|e| ReduceError::Function(e.to_string()))?;
        Ok(Arc::new(runtime))
    }

    /// One level of the tree: `inputs` in groups of `fan_in`, up to `workers.max` at once.
    /// Returns the level's results, the next level's inputs (the final object when the
    /// inputs fit one group).
    async fn run_level(
        &self,
        runtime: &Arc<Runtime>,
        args: &[String],
        level: u32,
        inputs: Vec<ReduceInput>,
        summary: &mut ReduceSummary,
        records: &mut Vec<ReduceRecord>,
    ) -> Result<Vec<ReduceInput>, ReduceError> {
        let reduce = self.job.reduce.as_ref().expect("a reduce");
        let last = inputs.len() <= reduce.fan_in;
        let groups: Vec<Vec<ReduceInput>> = inputs.chunks(reduce.fan_in).map(<[ReduceInput]>::to_vec).collect();
        // No map output at all: one invocation over an empty /in still makes the result.
        let groups = if groups.is_empty() { vec![Vec::new()] } else { groups };
        let results: Vec<Result<(ReduceRecord, bool), ReduceError>> =
            futures::stream::iter(groups.into_iter().enumerate())
                .map(|(index, group)| {
                    let target = if last {
                        reduce.output.clone()
                    } else {
                        self.manifest.key(&format!("reduce/L{level}/{index:05}-{}", base_name(&reduce.output)))
                    };
                    async move { self.invocation(runtime, args, level, index as u64, group, target).await }
                })
                .buffered(self.job.workers.max.max(1))
                .collect()
                .await;
        let mut next = Vec::new();
        for result in results {
            let (record, skipped) = result?;
            summary.invocations += 1;
            summary.skipped += skipped as u64;
            if record.record.status != ShardStatus::Ok {
                summary.failed += 1;
                summary.error.get_or_insert_with(|| {
                    format!("{}: {}", record.name(), record.record.error.clone().unwrap_or_default())
                });
            } else {
                next.push(ReduceInput {
                    name: format!("{:05}-{}", record.index, base_name(&reduce.output)),
                    object: ObjectMeta::new(record.record.outputs[0].clone(), record.record.bytes_out),
                    stamp: record.record.finished.clone(),
                });
                if last {
                    summary.bytes_out = record.record.bytes_out;
                }
            }
            records.push(record);
        }
        Ok(next)
    }

    /// A stored record of this invocation over these same inputs, when it succeeded.
    async fn committed(&self, level: u32, index: u64, fingerprint: &str) -> Option<ReduceRecord> {
        let bytes = self.manifest.get(&record_key(level, index)).await.ok()?;
        let record: ReduceRecord = serde_json::from_slice(&bytes).ok()?;
        (record.record.status == ShardStatus::Ok && record.record.fingerprint == fingerprint).then_some(record)
    }

    async fn store(&self, record: &ReduceRecord) -> Result<(), ReduceError> {
        let json = serde_json::to_vec(record).expect("a record serializes");
        self.manifest.put(&record_key(record.level, record.index), Bytes::from(json)).await?;
        Ok(())
    }

    fn record(&self, level: u32, index: u64, inputs: &[ReduceInput], fingerprint: String) -> ReduceRecord {
        let now = timestamp(SystemTime::now());
        ReduceRecord {
            level,
            index,
            inputs: inputs.len() as u64,
            record: ShardRecord {
                shard: index,
                fingerprint,
                status: ShardStatus::Failed,
                outcome: OutcomeKind::Error,
                attempts: 0,
                started: now.clone(),
                finished: now,
                duration_ms: 0,
                bytes_in: 0,
                bytes_out: 0,
                worker: None,
                worker_name: None,
                cold_start: false,
                error: None,
                outputs: Vec::new(),
                run: 0,
                backup: false,
                earlier: Vec::new(),
                supersedes: Vec::new(),
            },
        }
    }

    /// `concat = true`: the outputs one after another into the final object.
    async fn concat(&self, inputs: &[ReduceInput]) -> Result<ReduceRecord, ReduceError> {
        let reduce = self.job.reduce.as_ref().expect("a reduce");
        let fingerprint = fingerprint(inputs);
        if let Some(record) = self.committed(1, 0, &fingerprint).await {
            return Ok(record);
        }
        let mut record = self.record(1, 0, inputs, fingerprint);
        let started = Instant::now();
        tokio::fs::create_dir_all(&self.staging_root).await.map_err(|e| {
            ReduceError::Storage(crate::storage::StorageError::Io {
                location: self.staging_root.display().to_string(),
                source: e,
            })
        })?;
        let mut parts: Vec<ObjectMeta> = Vec::with_capacity(inputs.len());
        for input in inputs {
            // A map shard with several outputs does not say each one's size.
            let object = match input.object.size {
                0 => self.dest.head(&input.object.key).await?.unwrap_or_else(|| input.object.clone()),
                _ => input.object.clone(),
            };
            parts.push(object);
        }
        let scratch = self.staging_root.join("concat");
        record.record.attempts = 1;
        match self.dest.concat(&parts, &reduce.output, &scratch).await {
            Ok(size) => {
                record.record.status = ShardStatus::Ok;
                record.record.outcome = OutcomeKind::Ok;
                record.record.bytes_in = size;
                record.record.bytes_out = size;
                record.record.outputs = vec![reduce.output.clone()];
            }
            Err(e) => record.record.error = Some(e.to_string()),
        }
        record.record.duration_ms = started.elapsed().as_millis() as u64;
        record.record.finished = timestamp(SystemTime::now());
        self.store(&record).await?;
        Ok(record)
    }

    /// One invocation over `inputs` to `target`, with its attempts; true when an earlier
    /// run had committed it.
    async fn invocation(
        &self,
        runtime: &Arc<Runtime>,
        args: &[String],
        level: u32,
        index: u64,
        inputs: Vec<ReduceInput>,
        target: String,
    ) -> Result<(ReduceRecord, bool), ReduceError> {
        let reduce = self.job.reduce.as_ref().expect("a reduce");
        let fingerprint = fingerprint(&inputs);
        if let Some(record) = self.committed(level, index, &fingerprint).await {
            return Ok((record, true));
        }
        let mut record = self.record(level, index, &inputs, fingerprint);
        let dir = self.staging_root.join(format!("L{level}-{index:05}"));
        let mut log = String::new();
        for attempt in 1..=reduce.attempts {
            if attempt > 1 {
                tokio::time::sleep(crate::run::backoff_before(attempt, self.job.retry.backoff())).await;
            }
            if self.cancel.is_cancelled() {
                record.record.outcome = OutcomeKind::Cancelled;
                record.record.error = Some("stopped before it ran".into());
                break;
            }
            record.record.attempts = attempt;
            record.record.started = timestamp(SystemTime::now());
            let started = Instant::now();
            let result = self.attempt(runtime, args, level, index, attempt, &inputs, &target, &dir).await;
            record.record.duration_ms = started.elapsed().as_millis() as u64;
            record.record.finished = timestamp(SystemTime::now());
            let _ = tokio::fs::remove_dir_all(&dir).await;
            match result {
                Ok((bytes_in, bytes_out, stderr)) => {
                    log.push_str(&stderr);
                    record.record.status = ShardStatus::Ok;
                    record.record.outcome = OutcomeKind::Ok;
                    record.record.error = None;
                    record.record.bytes_in = bytes_in;
                    record.record.bytes_out = bytes_out;
                    record.record.outputs = vec![target.clone()];
                    record.record.worker = Some(0);
                    break;
                }
                Err((kind, error, stderr)) => {
                    log.push_str(&stderr);
                    log.push_str(&format!("fanout: attempt {attempt}: {error}\n"));
                    record.record.outcome = kind;
                    record.record.error = Some(error);
                }
            }
        }
        if !log.is_empty() {
            let _ = self.manifest.put(&format!("logs/reduce-L{level}-{index:05}.txt"), Bytes::from(log)).await;
        }
        self.store(&record).await?;
        Ok((record, false))
    }

    /// A fresh sandbox in `dir`: the inputs downloaded under `in/` at their names, an empty
    /// `out/`. Returns the bytes read.
    async fn stage_inputs(&self, inputs: &[ReduceInput], dir: &Path) -> Result<u64, String> {
        let (in_dir, out_dir) = (dir.join("in"), dir.join("out"));
        let _ = tokio::fs::remove_dir_all(dir).await;
        tokio::fs::create_dir_all(&in_dir).await.map_err(|e| format!("staging /in: {e}"))?;
        tokio::fs::create_dir_all(&out_dir).await.map_err(|e| format!("staging /out: {e}"))?;
        let mut items = Vec::with_capacity(inputs.len());
        for input in inputs {
            let path = in_dir.join(&input.name);
            if let Some(parent) = path.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(|e| format!("staging {}: {e}", input.name))?;
            }
            items.push((input.object.key.clone(), path));
        }
        self.dest.download_many(items).await.map_err(|e| format!("reading inputs: {e}"))
    }

    /// The one result of a finished attempt: the one file under `/out`, else stdout (kept
    /// as a file in `dir`).
    fn result_file(&self, report: &crate::runtime::InvocationReport, dir: &Path) -> Result<PathBuf, String> {
        let rules = OutputRules { max_files: self.job.output.max_files, max_bytes: self.job.output.max_bytes };
        let files = scan_outputs(&dir.join("out"), rules)?;
        match files.as_slice() {
            [] => {
                let path = dir.join("result");
                let written = match &report.stdout.kept {
                    Some(Kept::File(kept)) => std::fs::rename(kept, &path),
                    Some(Kept::Memory(bytes)) => std::fs::write(&path, bytes),
                    None => std::fs::write(&path, b""),
                };
                written.map_err(|e| format!("keeping stdout: {e}"))?;
                Ok(path)
            }
            [one] => match &one.from {
                crate::stage::OutputFrom::File(path) => Ok(path.clone()),
                crate::stage::OutputFrom::Staged(key) => Err(format!("{key} is not a local output")),
            },
            more => Err(format!(
                "a reduce writes one result, on stdout or as one file under /out; this one wrote {} files",
                more.len()
            )),
        }
    }

    /// One attempt: inputs staged under `/in`, the function run, its one result stored at
    /// `target`. Returns the bytes read and written and the guest's stderr.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        runtime: &Arc<Runtime>,
        args: &[String],
        level: u32,
        index: u64,
        attempt: u32,
        inputs: &[ReduceInput],
        target: &str,
        dir: &Path,
    ) -> Result<(u64, u64, String), (OutcomeKind, String, String)> {
        let host = |e: String| (OutcomeKind::Error, e, String::new());
        let (in_dir, out_dir) = (dir.join("in"), dir.join("out"));
        let bytes_in = self.stage_inputs(inputs, dir).await.map_err(host)?;
        let call = Call {
            job_id: self.manifest.job_id(),
            name: "reduce",
            args,
            env: &self.job.function.env,
            shard: index,
            shards_hint: level as u64,
            attempt,
            command: None,
            object: None,
        };
        let (argv, env) = call.argv_env();
        let invocation = Invocation {
            argv,
            env,
            in_dir: in_dir.clone(),
            out_dir: out_dir.clone(),
            files_dir: None,
            stdin: None,
            stdout: dir.join("stdout"),
            stdout_cap: self.job.output.max_bytes,
            stdout_overflow: Overflow::Fail,
            stderr: dir.join("stderr"),
            stderr_cap: LOG_CAP,
        };
        let cancel = self.cancel.clone();
        let runtime = runtime.clone();
        // The guest's file system calls block: it runs on a thread of its own.
        let report = tokio::task::spawn_blocking(move || {
            let local = tokio::runtime::Builder::new_current_thread().enable_all().build();
            local.map(|rt| rt.block_on(runtime.invoke(&invocation, &cancel)))
        })
        .await;
        let report = match report {
            Ok(Ok(report)) => report,
            _ => return Err(host("the reduce's thread failed".into())),
        };
        let stderr = match &report.stderr.kept {
            Some(Kept::Memory(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
            Some(Kept::File(path)) => std::fs::read_to_string(path).unwrap_or_default(),
            None => String::new(),
        };
        if !matches!(report.outcome, Outcome::Ok) {
            return Err((report.outcome.kind(), report.outcome.to_string(), stderr));
        }
        let result = self.result_file(&report, dir).map_err(|e| (OutcomeKind::Error, e, stderr.clone()))?;
        let bytes_out = self
            .dest
            .upload(target, &result)
            .await
            .map_err(|e| (OutcomeKind::Error, format!("storing the result at {target}: {e}"), stderr.clone()))?;
        Ok((bytes_in, bytes_out, stderr))
    }
}

/// The last segment of a key.
fn base_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

/// Every stored reduce record of a job, by level and number.
pub async fn read_records(manifest: &Manifest) -> Result<Vec<ReduceRecord>, ReduceError> {
    let prefix = manifest.key("reduce/records/");
    let mut listed = manifest.storage().list(&prefix);
    let mut records = Vec::new();
    while let Some(object) = listed.next().await {
        let object = object?;
        let bytes = manifest.storage().get(&object.key).await?;
        let record: ReduceRecord = serde_json::from_slice(&bytes).map_err(|e| {
            ReduceError::Manifest(crate::manifest::ManifestError::Damaged {
                key: object.key.clone(),
                message: e.to_string(),
            })
        })?;
        records.push(record);
    }
    records.sort_by_key(|r| (r.level, r.index));
    Ok(records)
}
