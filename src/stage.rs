//! Staging: a shard's inputs fetched into a local folder before its attempt runs, and an
//! attempt's `/out` checked and published to DEST after it succeeds. Owns the staging
//! layout and the output rules (regular files only, no path outside DEST, nothing under
//! `_fanout/`, at most `max_files` files and `max_bytes` bytes). It moves bytes; it does
//! not decide retries or write commit records.
//!
//! Staging happens in reusable *slots*, one per shard in flight, each with `in/` and `out/`
//! made once per run: creating and deleting two folders per shard costs more than a no-op
//! shard itself on ext4 (inode allocation scans recently deleted inodes). A slot is emptied
//! between shards by removing exactly what was put there.

use crate::manifest::FANOUT_DIR;
use crate::plan::{Shard, ShardInput};
use crate::runtime::capture::Kept;
use crate::storage::{validate_key, DynStorage};
use std::path::{Path, PathBuf};

/// A reusable staging folder. What a shard leaves in it is removed when the next shard
/// is staged there, in the same blocking call, or with the whole staging root at the end.
#[derive(Debug, Clone)]
pub struct Slot {
    pub dir: PathBuf,
    pub in_dir: PathBuf,
    pub out_dir: PathBuf,
    leftovers: Vec<PathBuf>,
    leftover_dirs: Vec<PathBuf>,
    /// Folders removed with everything in them (a backup attempt's own `/out`).
    leftover_trees: Vec<PathBuf>,
    out_dirty: bool,
}

impl Slot {
    pub fn stdin(&self) -> PathBuf {
        self.dir.join("stdin")
    }

    pub fn stdout(&self, attempt: u32) -> PathBuf {
        self.dir.join(format!("stdout.{attempt}"))
    }

    pub fn stderr(&self, attempt: u32) -> PathBuf {
        self.dir.join(format!("stderr.{attempt}"))
    }

    /// Hands the slot back after a shard: these files and folders (deepest first) are left
    /// in it, and `out/` may hold more when `out_dirty`.
    pub fn release(mut self, staged: Staged, captures: Vec<PathBuf>, out_dirty: bool, tree: Option<PathBuf>) -> Slot {
        self.leftover_trees.extend(tree);
        self.leftovers.extend(staged.files);
        self.leftovers.extend(staged.stdin);
        self.leftovers.extend(captures);
        self.leftover_dirs.extend(staged.dirs);
        self.out_dirty |= out_dirty;
        self
    }

    /// Removes what the shard left at once rather than when the slot is next used: for big
    /// shards, so that their pages go back to the page cache's free list for the next
    /// shard's writes (on a VM, never-touched memory is much slower to write than reused).
    pub async fn clean_now(mut self) -> Slot {
        blocking(move || {
            self.clean();
            self
        })
        .await
    }

    /// Removes what the previous shard left (blocking).
    fn clean(&mut self) {
        for file in self.leftovers.drain(..) {
            let _ = std::fs::remove_file(file);
        }
        for dir in self.leftover_dirs.drain(..) {
            let _ = std::fs::remove_dir(dir);
        }
        for tree in self.leftover_trees.drain(..) {
            let _ = std::fs::remove_dir_all(tree);
        }
        if std::mem::take(&mut self.out_dirty) {
            let _ = empty_dir(&self.out_dir);
        }
    }

    fn needs_cleaning(&self) -> bool {
        !self.leftovers.is_empty()
            || !self.leftover_dirs.is_empty()
            || !self.leftover_trees.is_empty()
            || self.out_dirty
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("a staging task panicked")
}

/// Makes `count` slots under `root`, in one blocking call.
pub async fn make_slots(root: &Path, count: usize) -> Result<Vec<Slot>, String> {
    let root = root.to_path_buf();
    blocking(move || {
        (0..count)
            .map(|i| {
                let dir = root.join(format!("slot{i:03}"));
                let slot = Slot {
                    in_dir: dir.join("in"),
                    out_dir: dir.join("out"),
                    dir,
                    leftovers: Vec::new(),
                    leftover_dirs: Vec::new(),
                    leftover_trees: Vec::new(),
                    out_dirty: false,
                };
                for folder in [&slot.in_dir, &slot.out_dir] {
                    std::fs::create_dir_all(folder)
                        .map_err(|e| format!("staging: cannot create {}: {e}", folder.display()))?;
                }
                Ok(slot)
            })
            .collect()
    })
    .await
}

/// What staging put into a slot, so that exactly that can be taken out again.
#[derive(Debug, Clone, Default)]
pub struct Staged {
    pub stdin: Option<PathBuf>,
    pub files: Vec<PathBuf>,
    /// Folders made under `in/` for nested keys, deepest first.
    pub dirs: Vec<PathBuf>,
}

/// The folders under `in/` that nested keys need, parents first.
fn folders_for(in_dir: &Path, keys: &[&str]) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for key in keys {
        let mut parent = Path::new(key).parent();
        while let Some(folder) = parent.filter(|p| !p.as_os_str().is_empty()) {
            dirs.push(in_dir.join(folder));
            parent = folder.parent();
        }
    }
    dirs.sort();
    dirs.dedup();
    dirs
}

/// Empties the slot of the previous shard and fetches this shard's inputs into it. A local
/// source is staged by hard links in one blocking call; a remote one streams downloads.
pub async fn stage(source: &DynStorage, shard: &Shard, slot: &mut Slot) -> Result<Staged, String> {
    match &shard.input {
        ShardInput::Objects { objects } => {
            let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
            let dirs = folders_for(&slot.in_dir, &keys);
            let items: Vec<(String, PathBuf)> =
                objects.iter().map(|o| (o.key.clone(), slot.in_dir.join(&o.key))).collect();
            let mut staged = Staged {
                stdin: None,
                files: items.iter().map(|(_, path)| path.clone()).collect(),
                dirs: dirs.iter().rev().cloned().collect(),
            };
            let local_root = source.local_root().map(Path::to_path_buf);
            if local_root.is_none() && dirs.is_empty() && !slot.needs_cleaning() {
                return match source.download_many(items).await {
                    Ok(_) => Ok(staged),
                    Err(e) => {
                        *slot = slot.clone().release(staged, Vec::new(), false, None);
                        Err(format!("staging inputs: {e}"))
                    }
                };
            }
            let mut prepared = slot.clone();
            let work_items = items.clone();
            let result = blocking(move || -> Result<Slot, String> {
                prepared.clean();
                for folder in &dirs {
                    std::fs::create_dir_all(folder)
                        .map_err(|e| format!("staging: cannot create {}: {e}", folder.display()))?;
                }
                if let Some(root) = local_root {
                    for (key, target) in &work_items {
                        let from = root.join(key);
                        crate::storage::local::link_or_copy(&from, target)
                            .map_err(|e| format!("staging input {}: {e}", from.display()))?;
                    }
                }
                Ok(prepared)
            })
            .await;
            let needs_download = source.local_root().is_none();
            match result {
                Ok(cleaned) => *slot = cleaned,
                Err(e) => {
                    // Whatever got linked before the failure is removed with the slot's next use.
                    *slot = slot.clone().release(std::mem::take(&mut staged), Vec::new(), false, None);
                    return Err(e);
                }
            }
            if needs_download {
                if let Err(e) = source.download_many(items).await {
                    *slot = slot.clone().release(staged, Vec::new(), false, None);
                    return Err(format!("staging inputs: {e}"));
                }
            }
            Ok(staged)
        }
        ShardInput::Records { key, start, end, header } => {
            // The header row (small) first, then the range streamed after it.
            let path = slot.stdin();
            let header_bytes = if *header > 0 {
                source.get_range(key, 0..*header).await.map_err(|e| format!("staging header of {key}: {e}"))?
            } else {
                bytes::Bytes::new()
            };
            let target = path.clone();
            let mut prepared = slot.clone();
            *slot = blocking(move || -> Result<Slot, String> {
                prepared.clean();
                std::fs::write(&target, &header_bytes).map_err(|e| format!("staging: {}: {e}", target.display()))?;
                Ok(prepared)
            })
            .await?;
            source
                .append_range(key, *start..*end, &path)
                .await
                .map_err(|e| format!("staging {key} bytes {start}..{end}: {e}"))?;
            Ok(Staged { stdin: Some(path), files: Vec::new(), dirs: Vec::new() })
        }
    }
}

/// Removes everything inside `dir` (not `dir` itself).
pub fn empty_dir(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            std::fs::remove_dir_all(entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// Empties a failed attempt's `/out` (nothing of it is ever published), or removes it
/// whole when it was a backup attempt's own folder.
pub async fn discard_dir(out_dir: &Path, remove: bool) {
    let out_dir = out_dir.to_path_buf();
    blocking(move || {
        let _ = if remove { std::fs::remove_dir_all(&out_dir) } else { empty_dir(&out_dir) };
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
            return Err(format!("outputs exceed {} (output.max_bytes)", crate::units::format_size(rules.max_bytes)));
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
    /// Files publishing left in `out/` (backends that copy rather than move).
    pub left_in_out: Vec<PathBuf>,
    /// True when `out/` may hold folders (or files not listed above).
    pub out_dirty: bool,
}

/// Stores an attempt's checked outputs in DEST; `stdout_object` adds a record shard's
/// stdout as `part-NNNNN<ext>` (empty when the guest printed nothing). If a store fails,
/// what was stored is removed again, so a failed attempt leaves no output behind.
pub async fn publish(
    dest: &DynStorage,
    mut files: Vec<OutputFile>,
    stdout_object: Option<(String, Option<Kept>)>,
) -> Result<Published, String> {
    let mut outputs = Vec::new();
    let mut stdout_bytes = 0;
    if let Some((key, kept)) = stdout_object {
        match kept {
            Some(Kept::File(path)) => {
                let size = tokio::fs::metadata(&path).await.map(|m| m.len()).unwrap_or(0);
                files.push(OutputFile { path, key, size });
            }
            // Short (or empty: the guest printed nothing, and the part says so) from memory.
            other => {
                let data = match other {
                    Some(Kept::Memory(data)) => data,
                    _ => bytes::Bytes::new(),
                };
                stdout_bytes = data.len() as u64;
                dest.put(&key, data).await.map_err(|e| format!("publishing {key}: {e}"))?;
                outputs.push(key);
            }
        }
    }
    let bytes_out = stdout_bytes + files.iter().map(|f| f.size).sum::<u64>();
    let keys: Vec<String> = files.iter().map(|f| f.key.clone()).collect();
    // Files in folders leave the folders behind; other backends copy rather than move.
    let out_dirty = keys.iter().any(|k| k.contains('/'));
    let left_in_out: Vec<PathBuf> =
        if dest.moves_uploads() { Vec::new() } else { files.iter().map(|f| f.path.clone()).collect() };
    let items: Vec<(String, PathBuf)> = files.into_iter().map(|f| (f.key, f.path)).collect();
    if items.is_empty() {
        outputs.sort();
        return Ok(Published { outputs, bytes_out, left_in_out: Vec::new(), out_dirty: false });
    }
    if let Err(e) = dest.upload_many(items).await {
        for key in keys.iter().chain(&outputs) {
            let _ = dest.delete(key).await;
        }
        return Err(format!("publishing outputs: {e}"));
    }
    outputs.extend(keys);
    outputs.sort();
    Ok(Published { outputs, bytes_out, left_in_out, out_dirty })
}
