//! Staging: a shard's inputs fetched into a local folder before its attempt runs, and an
//! attempt's `/out` checked and published to DEST after it succeeds. Owns the staging
//! layout and the output rules (regular files only, no path outside DEST, nothing under
//! `_fanout/`, at most `max_files` files and `max_bytes` bytes). It moves bytes; it does
//! not decide retries or write commit records.
//!
//! Staging happens in reusable *slots*, one per shard in flight, each with `in/` and `out/`
//! made once per run: creating and deleting two folders per shard costs more than a no-op
//! shard itself on ext4 (inode allocation scans recently deleted inodes). A slot is emptied
//! between shards by removing exactly what was put there, except that big downloaded
//! inputs are kept as *spares*: the next download into the slot overwrites a spare in place
//! instead of writing a new file. On a VM whose free memory goes back to the host, a new
//! file's pages are slow to write the first time (measured 1.5 s/GB against 0.15 s/GB
//! for overwriting cached pages here), and a remote input is written once per byte.

use crate::manifest::FANOUT_DIR;
use crate::runtime::capture::{Kept, Overflow};
use crate::runtime::Invocation;
use crate::source::{Reader, Shard, ShardInput};
use crate::storage::local::blocking;
use crate::storage::{validate_key, DynStorage, ObjectMeta, StorageError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Downloaded inputs smaller than this are removed rather than kept as spares: their
/// pages are few, and small objects are written whole in one call.
const SPARE_MIN_BYTES: u64 = 1 << 20;
/// Spares one slot keeps at most.
const SPARES_PER_SLOT: usize = 8;

/// A downloaded input kept (under a slot's folder) to be overwritten by a later download.
#[derive(Debug, Clone)]
struct Spare {
    path: PathBuf,
    len: u64,
}

/// Bytes all slots together may keep as spares, shared by the slots of one run.
#[derive(Debug, Clone)]
struct SpareAllowance(Arc<AtomicU64>);

impl SpareAllowance {
    fn new(bytes: u64) -> Self {
        SpareAllowance(Arc::new(AtomicU64::new(bytes)))
    }

    fn take(&self, bytes: u64) -> bool {
        self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |left| left.checked_sub(bytes)).is_ok()
    }

    fn give_back(&self, bytes: u64) {
        self.0.fetch_add(bytes, Ordering::AcqRel);
    }
}

/// Bytes of a guest's stderr (and of stdout, when it is not an output) kept per attempt.
pub const LOG_CAP: u64 = 1 << 20;

/// What a guest is told and given, wherever it runs: argv, env, and the shard's numbers.
pub struct Call<'a> {
    pub job_id: &'a str,
    pub name: &'a str,
    pub args: &'a [String],
    pub env: &'a std::collections::BTreeMap<String, String>,
    pub shard: u64,
    pub shards_hint: u64,
    pub attempt: u32,
}

impl Call<'_> {
    /// argv and the whole environment the guest sees: nothing of the host's.
    pub fn argv_env(&self) -> (Vec<String>, Vec<(String, String)>) {
        let mut env: Vec<(String, String)> = self.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.push(("FANOUT_JOB".into(), self.job_id.to_string()));
        env.push(("FANOUT_SHARD".into(), self.shard.to_string()));
        env.push(("FANOUT_SHARDS".into(), self.shards_hint.to_string()));
        env.push(("FANOUT_ATTEMPT".into(), self.attempt.to_string()));
        let mut argv = vec![self.name.to_string()];
        argv.extend(self.args.iter().cloned());
        (argv, env)
    }
}

/// The sandbox of one attempt staged in `slot`: `/in` is the slot's, `/out` is `out_dir`
/// (the slot's own, or a backup's beside it). A record shard's stdout is its output, capped
/// at `max_output_bytes`; otherwise stdout is log, truncated at [`LOG_CAP`].
pub fn invocation(
    slot: &Slot,
    out_dir: PathBuf,
    attempt: u32,
    (argv, env): (Vec<String>, Vec<(String, String)>),
    stdin: Option<PathBuf>,
    is_records: bool,
    max_output_bytes: u64,
) -> Invocation {
    Invocation {
        argv,
        env,
        in_dir: slot.in_dir.clone(),
        out_dir,
        stdin,
        stdout: slot.stdout(attempt),
        stdout_cap: if is_records { max_output_bytes } else { LOG_CAP },
        stdout_overflow: if is_records { Overflow::Fail } else { Overflow::Truncate },
        stderr: slot.stderr(attempt),
        stderr_cap: LOG_CAP,
    }
}

/// A reusable staging folder. What a shard leaves in it is removed when the next shard
/// is staged there, in the same blocking call, or with the whole staging root at the end.
#[derive(Debug, Clone)]
pub struct Slot {
    pub dir: PathBuf,
    pub in_dir: PathBuf,
    pub out_dir: PathBuf,
    leftovers: Vec<PathBuf>,
    /// Downloaded inputs: kept as spares when the allowance has room, removed otherwise.
    leftover_downloads: Vec<PathBuf>,
    spares: Vec<Spare>,
    spare_allowance: SpareAllowance,
    spare_count: u64,
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
        if staged.downloaded {
            self.leftover_downloads.extend(staged.files);
        } else {
            self.leftovers.extend(staged.files);
        }
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
        for file in std::mem::take(&mut self.leftover_downloads) {
            if !self.keep_as_spare(&file) {
                let _ = std::fs::remove_file(file);
            }
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

    /// Moves a downloaded input aside as a spare if it is big, ours alone (one link: never
    /// a file that is also a user's or a guest's), and the allowance has room.
    fn keep_as_spare(&mut self, file: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let Ok(meta) = std::fs::symlink_metadata(file) else { return false };
        let len = meta.len();
        if !meta.is_file() || meta.nlink() != 1 || len < SPARE_MIN_BYTES || self.spares.len() >= SPARES_PER_SLOT {
            return false;
        }
        if !self.spare_allowance.take(len) {
            return false;
        }
        self.spare_count += 1;
        let path = self.dir.join(format!("spare{}", self.spare_count));
        if std::fs::rename(file, &path).is_err() {
            self.spare_allowance.give_back(len);
            return false;
        }
        self.spares.push(Spare { path, len });
        true
    }

    /// Puts a spare at `target` to be overwritten by a download of `size` bytes: the
    /// smallest spare that holds it, else the largest there is.
    fn place_spare(&mut self, target: &Path, size: u64) {
        if size < SPARE_MIN_BYTES || self.spares.is_empty() {
            return;
        }
        let best = (0..self.spares.len())
            .filter(|&i| self.spares[i].len >= size)
            .min_by_key(|&i| self.spares[i].len)
            .or_else(|| (0..self.spares.len()).max_by_key(|&i| self.spares[i].len))
            .expect("spares is not empty");
        let spare = self.spares.swap_remove(best);
        self.spare_allowance.give_back(spare.len);
        if std::fs::rename(&spare.path, target).is_err() {
            let _ = std::fs::remove_file(&spare.path);
        }
    }

    fn needs_preparing(&self) -> bool {
        !self.leftovers.is_empty()
            || !self.leftover_downloads.is_empty()
            || !self.spares.is_empty()
            || !self.leftover_dirs.is_empty()
            || !self.leftover_trees.is_empty()
            || self.out_dirty
    }
}

/// Why a shard's inputs could not be staged. Typed so that a full staging disk is known by
/// its error kind, not by an error's text.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("staging: cannot create {}: {source}", path.display())]
    Folder { path: PathBuf, source: std::io::Error },
    #[error("staging input {}: {source}", path.display())]
    Link { path: PathBuf, source: std::io::Error },
    #[error("staging: {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
    #[error("staging {what}: {source}")]
    Fetch { what: String, source: StorageError },
    #[error("staging shard {shard:05}: it was planned from another kind of source than the job reads")]
    OtherSource { shard: u64 },
}

impl StageError {
    /// True when the staging folder's file system ran out of room.
    pub fn is_no_space(&self) -> bool {
        match self {
            StageError::Folder { source, .. } | StageError::Link { source, .. } | StageError::Write { source, .. } => {
                source.kind() == std::io::ErrorKind::StorageFull
            }
            StageError::Fetch { source, .. } => source.is_no_space(),
            StageError::OtherSource { .. } => false,
        }
    }
}

/// Makes `count` slots under `root`, in one blocking call; together they keep at most
/// `spare_bytes` of spares.
pub async fn make_slots(root: &Path, count: usize, spare_bytes: u64) -> Result<Vec<Slot>, StageError> {
    let spare_allowance = SpareAllowance::new(spare_bytes);
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
                    leftover_downloads: Vec::new(),
                    spares: Vec::new(),
                    spare_allowance: spare_allowance.clone(),
                    spare_count: 0,
                    leftover_dirs: Vec::new(),
                    leftover_trees: Vec::new(),
                    out_dirty: false,
                };
                for folder in [&slot.in_dir, &slot.out_dir] {
                    std::fs::create_dir_all(folder)
                        .map_err(|source| StageError::Folder { path: folder.clone(), source })?;
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
    /// True when `files` were downloaded (ours to overwrite), not linked to a local source.
    pub downloaded: bool,
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
pub async fn stage(source: &Reader, shard: &Shard, slot: &mut Slot) -> Result<Staged, StageError> {
    match (&shard.input, source) {
        (ShardInput::Objects { objects }, Reader::Store(store)) => stage_objects(store, objects, slot).await,
        (ShardInput::Records { key, start, end, header }, Reader::Store(_)) => {
            stage_records(source, key, *start..*end, *header, slot).await
        }
        // A partition's records by offset range, as an object's by byte range.
        (ShardInput::Kafka { partition, start, end, .. }, Reader::Topic(_)) => {
            stage_records(source, &partition.to_string(), *start as u64..*end as u64, 0, slot).await
        }
        (_, _) => Err(StageError::OtherSource { shard: shard.id }),
    }
}

/// Whole objects as files under `in/`, at their keys.
async fn stage_objects(source: &DynStorage, objects: &[ObjectMeta], slot: &mut Slot) -> Result<Staged, StageError> {
    let keys: Vec<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let dirs = folders_for(&slot.in_dir, &keys);
    let items: Vec<(String, PathBuf)> = objects.iter().map(|o| (o.key.clone(), slot.in_dir.join(&o.key))).collect();
    let local_root = source.local_root().map(Path::to_path_buf);
    let downloaded = local_root.is_none();
    let staged = Staged {
        stdin: None,
        files: items.iter().map(|(_, path)| path.clone()).collect(),
        downloaded,
        dirs: dirs.iter().rev().cloned().collect(),
    };
    if !(downloaded && dirs.is_empty() && !slot.needs_preparing()) {
        let sizes: Vec<u64> = objects.iter().map(|o| o.size).collect();
        let prepared = prepare(slot.clone(), dirs, local_root, items.clone(), sizes).await;
        *slot = prepared.0;
        if let Err(e) = prepared.1 {
            // Whatever got linked before the failure is removed with the slot's next use.
            *slot = slot.clone().release(staged, Vec::new(), false, None);
            return Err(e);
        }
    }
    if downloaded {
        if let Err(source) = source.download_many(items).await {
            *slot = slot.clone().release(staged, Vec::new(), false, None);
            return Err(StageError::Fetch { what: "inputs".into(), source });
        }
    }
    Ok(staged)
}

/// Cleans the slot, makes the folders nested keys need, and links local inputs in (or puts
/// spares where downloads will land), in one blocking call. The cleaned slot comes back even
/// when preparing fails, so that the spares it made are neither lost nor counted twice.
async fn prepare(
    mut slot: Slot,
    dirs: Vec<PathBuf>,
    local_root: Option<PathBuf>,
    items: Vec<(String, PathBuf)>,
    sizes: Vec<u64>,
) -> (Slot, Result<(), StageError>) {
    blocking(move || {
        slot.clean();
        let result = (|| {
            for folder in &dirs {
                std::fs::create_dir_all(folder)
                    .map_err(|source| StageError::Folder { path: folder.clone(), source })?;
            }
            match &local_root {
                Some(root) => {
                    for (key, target) in &items {
                        let from = root.join(key);
                        crate::storage::local::link_or_copy(&from, target)
                            .map_err(|source| StageError::Link { path: from, source })?;
                    }
                }
                None => {
                    for ((_, target), size) in items.iter().zip(sizes) {
                        slot.place_spare(target, size);
                    }
                }
            }
            Ok(())
        })();
        (slot, result)
    })
    .await
}

/// A byte range of one object on stdin: the header row (small) first, then the range
/// streamed after it.
async fn stage_records(
    source: &Reader,
    key: &str,
    range: std::ops::Range<u64>,
    header: u64,
    slot: &mut Slot,
) -> Result<Staged, StageError> {
    let path = slot.stdin();
    let header_bytes = match source {
        Reader::Store(store) if header > 0 => {
            let fetch = |source| StageError::Fetch { what: format!("header of {key}"), source };
            store.get_range(key, 0..header).await.map_err(fetch)?
        }
        _ => bytes::Bytes::new(),
    };
    let target = path.clone();
    let mut prepared = slot.clone();
    *slot = blocking(move || {
        prepared.clean();
        std::fs::write(&target, &header_bytes).map_err(|source| StageError::Write { path: target, source })?;
        Ok::<_, StageError>(prepared)
    })
    .await?;
    let what = format!("{key} bytes {}..{}", range.start, range.end);
    source.append_range(key, range, &path).await.map_err(|source| StageError::Fetch { what, source })?;
    Ok(Staged { stdin: Some(path), ..Staged::default() })
}

/// Says so when the staging folder's file system has (almost) no room left, or had none
/// when the failure happened (`ran_out`).
pub fn full_message(root: &Path, ran_out: bool) -> Option<String> {
    let stats = nix::sys::statvfs::statvfs(root).ok()?;
    let free = stats.blocks_available() as u64 * stats.fragment_size() as u64;
    let size = stats.blocks() as u64 * stats.fragment_size() as u64;
    // "Full" for a guest that writes in blocks: less than a few MiB, or 1% of the disk.
    (ran_out || free < (8 << 20).min(size / 100).max(1 << 20)).then(|| {
        format!(
            "the staging folder {} is full ({} free now); free space there or choose another with --staging",
            root.display(),
            crate::units::format_size(free)
        )
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    async fn one_slot(root: &Path, spare_bytes: u64) -> Slot {
        make_slots(root, 1, spare_bytes).await.unwrap().pop().unwrap()
    }

    fn downloaded(files: Vec<PathBuf>) -> Staged {
        Staged { files, downloaded: true, ..Staged::default() }
    }

    #[tokio::test]
    async fn a_big_downloaded_input_is_kept_and_overwritten_by_the_next_download() {
        let root = tempfile::tempdir().unwrap();
        let mut slot = one_slot(root.path(), 64 << 20).await;
        let input = slot.in_dir.join("a.bin");
        std::fs::write(&input, vec![7u8; 3 << 20]).unwrap();
        let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&input).unwrap());
        slot = slot.release(downloaded(vec![input.clone()]), Vec::new(), false, None);
        slot.clean();
        assert!(!input.exists());
        assert_eq!(slot.spares.len(), 1);

        let next = slot.in_dir.join("b.bin");
        slot.place_spare(&next, 2 << 20);
        assert!(slot.spares.is_empty());
        assert_eq!(std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&next).unwrap()), inode);
        // The allowance is whole again once the spare is used.
        assert!(slot.spare_allowance.take(64 << 20));
    }

    #[tokio::test]
    async fn linked_small_or_unaffordable_inputs_are_removed_not_kept() {
        let root = tempfile::tempdir().unwrap();
        let mut slot = one_slot(root.path(), 5 << 20).await;
        // A hard link may be a user's file (a local source) or a guest's: never overwritten.
        let user_file = root.path().join("user.bin");
        std::fs::write(&user_file, vec![1u8; 2 << 20]).unwrap();
        let linked = slot.in_dir.join("linked.bin");
        std::fs::hard_link(&user_file, &linked).unwrap();
        let small = slot.in_dir.join("small.bin");
        std::fs::write(&small, vec![2u8; 1000]).unwrap();
        let big = slot.in_dir.join("big.bin");
        std::fs::write(&big, vec![3u8; 4 << 20]).unwrap();
        let over = slot.in_dir.join("over.bin");
        std::fs::write(&over, vec![4u8; 2 << 20]).unwrap();
        slot = slot.release(
            downloaded(vec![linked.clone(), small.clone(), big.clone(), over.clone()]),
            Vec::new(),
            false,
            None,
        );
        slot.clean();
        for gone in [&linked, &small, &big, &over] {
            assert!(!gone.exists(), "{}", gone.display());
        }
        assert_eq!(std::fs::read(&user_file).unwrap(), vec![1u8; 2 << 20]);
        // Only `big` fits the 5 MiB allowance; `over` would exceed it.
        assert_eq!(slot.spares.iter().map(|s| s.len).collect::<Vec<_>>(), vec![4 << 20]);

        // Inputs linked from a local source are never spares, whatever their size.
        let local = slot.in_dir.join("local.bin");
        std::fs::write(&local, vec![5u8; 2 << 20]).unwrap();
        let staged = Staged { files: vec![local.clone()], ..Staged::default() };
        slot = slot.release(staged, Vec::new(), false, None);
        slot.clean();
        assert!(!local.exists());
        assert_eq!(slot.spares.len(), 1);
    }
}
