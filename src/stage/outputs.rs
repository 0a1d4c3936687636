//! An attempt's `/out` checked against the output rules (regular files only, no path
//! outside DEST, nothing under `_fanout/`, at most `max_files` files and `max_bytes` bytes)
//! and published to DEST: renamed into a local DEST, copied to any other.

use crate::manifest::FANOUT_DIR;
use crate::runtime::capture::Kept;
use crate::storage::{validate_key, DynStorage, StorageError};
use std::path::{Path, PathBuf};

/// Rules an attempt's outputs must keep.
#[derive(Debug, Clone, Copy)]
pub struct OutputRules {
    pub max_files: u64,
    pub max_bytes: u64,
}

/// One output of an attempt, with the key it will have in DEST.
#[derive(Debug, Clone)]
pub struct OutputFile {
    pub from: OutputFrom,
    pub key: String,
    pub size: u64,
}

/// Where an output waits to be published.
#[derive(Debug, Clone, PartialEq)]
pub enum OutputFrom {
    /// A file under this machine's `/out`.
    File(PathBuf),
    /// An object a remote worker stored in DEST under its attempt's own prefix: publishing
    /// copies it to its key (server-side) and removes it.
    Staged(String),
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
            return Err(format!("outputs exceed {} (output.max_bytes)", crate::units::format_size(rules.max_bytes)));
        }
        files.push(OutputFile { from: OutputFrom::File(entry.path().to_path_buf()), key, size });
    }
    Ok(files)
}

/// Why an attempt's outputs could not be published (what was stored is removed again).
#[derive(Debug, thiserror::Error)]
#[error("publishing {what}: {source}")]
pub struct PublishError {
    what: String,
    source: StorageError,
}

impl PublishError {
    /// True when the destination's file system ran out of room.
    pub fn is_no_space(&self) -> bool {
        self.source.is_no_space()
    }
}

/// What publishing stored.
#[derive(Debug, Clone, Default)]
pub struct Published {
    pub outputs: Vec<String>,
    pub bytes_out: u64,
    /// Files publishing left in `out/` (backends that copy rather than move).
    pub left_in_out: Vec<PathBuf>,
    /// True when `out/` may hold folders (or files not listed above).
    pub out_dirty: bool,
}

/// Stores an attempt's checked outputs in DEST; `stdout_object` adds a record shard's
/// stdout as `part-NNNNN<ext>` (empty when the guest printed nothing). If a store fails,
/// what was stored is removed again, so a failed attempt leaves no output behind. Outputs
/// a remote worker staged are copied to their keys, then their staged copies removed.
pub async fn publish(
    dest: &DynStorage,
    mut files: Vec<OutputFile>,
    stdout_object: Option<(String, Option<Kept>)>,
) -> Result<Published, PublishError> {
    let mut outputs = Vec::new();
    let mut stdout_bytes = 0;
    if let Some((key, kept)) = stdout_object {
        match kept {
            Some(Kept::File(path)) => {
                let size = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
                files.push(OutputFile { from: OutputFrom::File(path), key, size });
            }
            // Short (or empty: the guest printed nothing, and the part says so) from memory.
            other => {
                let data = match other {
                    Some(Kept::Memory(data)) => data,
                    _ => bytes::Bytes::new(),
                };
                stdout_bytes = data.len() as u64;
                dest.put(&key, data).await.map_err(|source| PublishError { what: key.clone(), source })?;
                outputs.push(key);
            }
        }
    }
    let bytes_out = stdout_bytes + files.iter().map(|f| f.size).sum::<u64>();
    let (staged, local): (Vec<OutputFile>, Vec<OutputFile>) =
        files.into_iter().partition(|f| matches!(f.from, OutputFrom::Staged(_)));
    let keys: Vec<String> = local.iter().chain(&staged).map(|f| f.key.clone()).collect();
    let local_keys: Vec<String> = local.iter().map(|f| f.key.clone()).collect();
    // Files in folders leave the folders behind; other backends copy rather than move.
    let out_dirty = local_keys.iter().any(|k| k.contains('/'));
    let items: Vec<(String, PathBuf)> = local
        .into_iter()
        .filter_map(|f| match f.from {
            OutputFrom::File(path) => Some((f.key, path)),
            OutputFrom::Staged(_) => None,
        })
        .collect();
    let left_in_out: Vec<PathBuf> =
        if dest.moves_uploads() { Vec::new() } else { items.iter().map(|(_, path)| path.clone()).collect() };
    if keys.is_empty() {
        outputs.sort();
        return Ok(Published { outputs, bytes_out, left_in_out: Vec::new(), out_dirty: false });
    }
    let stored = async {
        if !items.is_empty() {
            dest.upload_many(items).await.map_err(|e| PublishError { what: "outputs".into(), source: e })?;
        }
        copy_staged(dest, &staged).await
    };
    if let Err(e) = stored.await {
        for key in keys.iter().chain(&outputs) {
            let _ = dest.delete(key).await;
        }
        return Err(e);
    }
    for file in &staged {
        if let OutputFrom::Staged(from) = &file.from {
            let _ = dest.delete(from).await;
        }
    }
    outputs.extend(keys);
    outputs.sort();
    Ok(Published { outputs, bytes_out, left_in_out, out_dirty })
}

/// Copies staged outputs to their keys, a few at a time.
async fn copy_staged(dest: &DynStorage, staged: &[OutputFile]) -> Result<(), PublishError> {
    use futures::{StreamExt, TryStreamExt};
    let copies: Vec<(String, String)> = staged
        .iter()
        .filter_map(|file| match &file.from {
            OutputFrom::Staged(from) => Some((from.clone(), file.key.clone())),
            OutputFrom::File(_) => None,
        })
        .collect();
    futures::stream::iter(copies)
        .map(|(from, to)| {
            let dest = dest.clone();
            async move { dest.copy(&from, &to).await.map(|_| ()).map_err(|source| PublishError { what: to, source }) }
        })
        .buffer_unordered(8)
        .try_collect()
        .await
}
