//! Staging slots: reusable folders, one per shard in flight, emptied between shards by
//! removing exactly what was put there, and the spares big downloads leave behind to be
//! overwritten by the next download (see the module above for why).

use super::staged::{StageError, Staged};
use crate::storage::local::blocking;
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
    fn at(dir: PathBuf, spare_allowance: SpareAllowance) -> Slot {
        Slot {
            in_dir: dir.join("in"),
            out_dir: dir.join("out"),
            dir,
            leftovers: Vec::new(),
            leftover_downloads: Vec::new(),
            spares: Vec::new(),
            spare_allowance,
            spare_count: 0,
            leftover_dirs: Vec::new(),
            leftover_trees: Vec::new(),
            out_dirty: false,
        }
    }

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
    pub(super) fn clean(&mut self) {
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
    pub(super) fn place_spare(&mut self, target: &Path, size: u64) {
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

    pub(super) fn needs_preparing(&self) -> bool {
        !self.leftovers.is_empty()
            || !self.leftover_downloads.is_empty()
            || !self.spares.is_empty()
            || !self.leftover_dirs.is_empty()
            || !self.leftover_trees.is_empty()
            || self.out_dirty
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
                let slot = Slot::at(root.join(format!("slot{i:03}")), spare_allowance.clone());
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

/// Slots whose folders are never made, one for each shard a remote engine has in flight:
/// its workers stage inputs and outputs themselves, so nothing lands on this machine.
pub fn remote_slots(root: &Path, count: usize) -> Vec<Slot> {
    let no_spares = SpareAllowance::new(0);
    (0..count).map(|i| Slot::at(root.join(format!("remote{i:03}")), no_spares.clone())).collect()
}

/// What staging put into a slot, so that exactly that can be taken out again.
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
