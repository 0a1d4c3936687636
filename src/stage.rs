//! Staging: a shard's inputs fetched into a local folder before its attempt runs, and an
//! attempt's `/out` checked and published to DEST after it succeeds. Owns the staging
//! folder layout and the output rules (regular files only, no path outside DEST, nothing
//! under `_fanout/`, at most `max_files` files and `max_bytes` bytes). It moves bytes;
//! it does not decide retries or write commit records.
//!
//! Layout of one shard's folder: `in/` (the inputs, read-only to the guest), `stdin`
//! (record shards), and per attempt `aN/out/`, `aN/stdout`, `aN/stderr`.

use crate::manifest::FANOUT_DIR;
use crate::plan::{Shard, ShardInput};
use crate::storage::{validate_key, DynStorage};
use futures::{StreamExt, TryStreamExt};
use std::path::{Path, PathBuf};

/// Input objects of one shard fetched at once.
const FETCH_CONCURRENCY: usize = 8;
/// Output files of one shard stored at once.
const PUBLISH_CONCURRENCY: usize = 8;

#[derive(Debug, Clone)]
pub struct StagedShard {
    pub dir: PathBuf,
    pub in_dir: PathBuf,
    pub stdin: Option<PathBuf>,
}

/// Paths of one attempt inside a staged shard.
#[derive(Debug, Clone)]
pub struct AttemptPaths {
    pub dir: PathBuf,
    pub out_dir: PathBuf,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

pub fn attempt_paths(shard_dir: &Path, attempt: u32) -> AttemptPaths {
    let dir = shard_dir.join(format!("a{attempt}"));
    AttemptPaths { out_dir: dir.join("out"), stdout: dir.join("stdout"), stderr: dir.join("stderr"), dir }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("a staging task panicked")
}

/// Fetches the shard's inputs into `dir` and prepares the folders of its first attempt.
pub async fn stage(source: &DynStorage, shard: &Shard, dir: PathBuf, first_attempt: u32) -> Result<StagedShard, String> {
    let in_dir = dir.join("in");
    let attempt = attempt_paths(&dir, first_attempt);
    let folders: Vec<PathBuf> = match &shard.input {
        ShardInput::Objects { objects } => {
            let mut folders: Vec<PathBuf> = objects
                .iter()
                .filter_map(|o| o.key.rsplit_once('/').map(|(parent, _)| in_dir.join(parent)))
                .collect();
            folders.dedup();
            folders
        }
        ShardInput::Records { .. } => Vec::new(),
    };
    {
        let (in_dir, out_dir) = (in_dir.clone(), attempt.out_dir.clone());
        blocking(move || -> Result<(), String> {
            for folder in std::iter::once(&in_dir).chain(&folders).chain(std::iter::once(&out_dir)) {
                std::fs::create_dir_all(folder).map_err(|e| format!("staging: cannot create {}: {e}", folder.display()))?;
            }
            Ok(())
        })
        .await?;
    }
    let mut stdin = None;
    match &shard.input {
        ShardInput::Objects { objects } => {
            futures::stream::iter(objects.clone())
                .map(|object| {
                    // Owned captures keep each download future 'static (spawnable).
                    let target = in_dir.join(&object.key);
                    let source = source.clone();
                    async move {
                        source
                            .download(&object.key, &target)
                            .await
                            .map_err(|e| format!("staging input {}: {e}", object.key))
                    }
                })
                .buffer_unordered(FETCH_CONCURRENCY)
                .try_collect::<Vec<u64>>()
                .await?;
        }
        ShardInput::Records { key, start, end, header } => {
            let path = dir.join("stdin");
            let header_bytes = if *header > 0 {
                source.get_range(key, 0..*header).await.map_err(|e| format!("staging header of {key}: {e}"))?
            } else {
                bytes::Bytes::new()
            };
            let body = source.get_range(key, *start..*end).await.map_err(|e| format!("staging {key} bytes {start}..{end}: {e}"))?;
            let target = path.clone();
            blocking(move || -> Result<(), String> {
                use std::io::Write;
                let mut file = std::fs::File::create(&target).map_err(|e| format!("staging: {}: {e}", target.display()))?;
                file.write_all(&header_bytes)
                    .and_then(|_| file.write_all(&body))
                    .map_err(|e| format!("staging: {}: {e}", target.display()))
            })
            .await?;
            stdin = Some(path);
        }
    }
    Ok(StagedShard { dir, in_dir, stdin })
}

/// Prepares a fresh, empty `/out` for a retry.
pub async fn prepare_attempt(shard_dir: &Path, attempt: u32) -> Result<AttemptPaths, String> {
    let paths = attempt_paths(shard_dir, attempt);
    let out_dir = paths.out_dir.clone();
    blocking(move || std::fs::create_dir_all(&out_dir).map_err(|e| format!("staging: cannot create {}: {e}", out_dir.display())))
        .await?;
    Ok(paths)
}

/// Removes what an attempt wrote to `/out` (a failed attempt publishes nothing).
pub async fn discard_outputs(paths: &AttemptPaths) {
    let out_dir = paths.out_dir.clone();
    blocking(move || {
        let _ = std::fs::remove_dir_all(&out_dir);
    })
    .await
}

pub async fn remove_dir(dir: PathBuf) {
    blocking(move || {
        let _ = std::fs::remove_dir_all(&dir);
    })
    .await
}

/// Rules an attempt's outputs must keep.
#[derive(Debug, Clone, Copy)]
pub struct OutputRules {
    pub max_files: u64,
    pub max_bytes: u64,
}

/// One file found under `/out`, with the key it will have in DEST.
#[derive(Debug, Clone)]
pub struct OutputFile {
    pub path: PathBuf,
    pub key: String,
    pub size: u64,
}

/// Walks `/out` without following links and checks every entry against the rules.
pub fn scan_outputs(out_dir: &Path, rules: OutputRules) -> Result<Vec<OutputFile>, String> {
    let mut files = Vec::new();
    let mut total = 0u64;
    let walker = walkdir::WalkDir::new(out_dir).follow_links(false).sort_by_file_name().min_depth(1);
    for entry in walker {
        let entry = entry.map_err(|e| format!("reading /out: {e}"))?;
        let relative = entry.path().strip_prefix(out_dir).expect("walk stays below /out");
        let shown = relative.to_string_lossy();
        let file_type = entry.file_type();
        if file_type.is_dir() {
            continue;
        }
        if file_type.is_symlink() {
            return Err(format!("output /out/{shown} is a symbolic link; outputs must be regular files"));
        }
        if !file_type.is_file() {
            return Err(format!("output /out/{shown} is not a regular file"));
        }
        let key = relative.to_str().ok_or_else(|| format!("output /out/{shown}: the name is not UTF-8"))?.to_string();
        validate_key(&key).map_err(|e| format!("output /out/{shown}: {e}"))?;
        if key.split('/').next() == Some(FANOUT_DIR) {
            return Err(format!("output /out/{shown}: {FANOUT_DIR}/ is reserved for fanout's manifest"));
        }
        let size = entry.metadata().map_err(|e| format!("output /out/{shown}: {e}"))?.len();
        total += size;
        if files.len() as u64 >= rules.max_files {
            return Err(format!("more than {} output files (output.max_files)", rules.max_files));
        }
        if total > rules.max_bytes {
            return Err(format!(
                "outputs exceed {} (output.max_bytes)",
                crate::units::format_size(rules.max_bytes)
            ));
        }
        files.push(OutputFile { path: entry.path().to_path_buf(), key, size });
    }
    Ok(files)
}

/// What publishing stored.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub outputs: Vec<String>,
    pub bytes_out: u64,
}

/// Checks an attempt's outputs and stores each in DEST; `stdout_object` adds the record
/// shard's stdout as `part-NNNNN<ext>`. On error nothing further is stored, and what was
/// stored is left for the next successful attempt to overwrite with the same keys.
pub async fn publish(
    dest: &DynStorage,
    paths: &AttemptPaths,
    rules: OutputRules,
    stdout_object: Option<(String, Option<PathBuf>)>,
) -> Result<Published, String> {
    let out_dir = paths.out_dir.clone();
    let mut files = blocking(move || scan_outputs(&out_dir, rules)).await?;
    if let Some((key, path)) = stdout_object {
        match path {
            Some(path) => {
                let size = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
                files.push(OutputFile { path, key, size });
            }
            None => {
                // The guest wrote nothing on stdout: the part exists, empty, as it said.
                dest.put(&key, bytes::Bytes::new()).await.map_err(|e| format!("publishing {key}: {e}"))?;
                return finish_publish(dest, files, vec![key]).await;
            }
        }
    }
    finish_publish(dest, files, Vec::new()).await
}

async fn finish_publish(dest: &DynStorage, files: Vec<OutputFile>, mut outputs: Vec<String>) -> Result<Published, String> {
    let bytes_out = files.iter().map(|f| f.size).sum();
    futures::stream::iter(files.clone())
        .map(|file| {
            let dest = dest.clone();
            async move { dest.upload(&file.key, &file.path).await.map_err(|e| format!("publishing {}: {e}", file.key)) }
        })
        .buffer_unordered(PUBLISH_CONCURRENCY)
        .try_collect::<Vec<u64>>()
        .await?;
    outputs.extend(files.into_iter().map(|f| f.key));
    outputs.sort();
    Ok(Published { outputs, bytes_out })
}
