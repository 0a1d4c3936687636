//! A shard's inputs into its slot: objects downloaded (or linked, from a local source)
//! under `/in` with their folders, or a record range written as the guest's stdin, and the
//! typed reasons staging fails (a full staging disk known by its kind, not its text).

use super::slots::Slot;
use super::staged::{StageError, Staged};
use crate::source::{Reader, Shard, ShardInput};
use crate::storage::local::blocking;
use crate::storage::{DynStorage, ObjectMeta};
use std::path::{Path, PathBuf};

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
