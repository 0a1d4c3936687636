//! The local file system as object storage: keys are paths below a root directory.
//! Writes go to a temporary name in the target folder and are renamed into place, so a
//! reader never sees half an object; downloads are hard links when the file system
//! allows (staging costs no copy). Blocking calls run on tokio's blocking pool.

use super::contract::{
    validate_key, Conditional, ObjectMeta, Precondition, Storage, StorageError, StorageResult, Version,
};
use crate::location::Location;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::ffi::CString;
use std::io::{Read, Seek, SeekFrom, Write};
use std::ops::Range;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Temporary files start with this; listings never show them.
pub const TEMP_PREFIX: &str = ".fanout-tmp-";
const LIST_PAGE: usize = 1000;

#[derive(Debug, Clone)]
pub struct LocalStorage {
    root: PathBuf,
    location: Location,
}

impl LocalStorage {
    pub fn new(root: PathBuf) -> Self {
        let location = Location::Local(root.clone());
        LocalStorage { root, location }
    }

    fn path_of(&self, key: &str) -> StorageResult<PathBuf> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }

    fn io_error(&self, path: &Path, source: std::io::Error) -> StorageError {
        if source.kind() == std::io::ErrorKind::NotFound {
            StorageError::NotFound { location: path.display().to_string() }
        } else {
            StorageError::Io { location: path.display().to_string(), source }
        }
    }
}

/// Runs blocking file-system work on tokio's blocking pool (for staging too).
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("a blocking file-system task panicked")
}

/// A fresh temporary path next to `target`, unique within this process and across processes.
pub fn temp_path_beside(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{TEMP_PREFIX}{}-{n}", std::process::id());
    target.with_file_name(name)
}

/// Writes `data` to `target` through a temporary file and a rename.
pub fn write_atomic(target: &Path, data: &[u8]) -> std::io::Result<()> {
    let temp = temp_path_beside(target);
    let result = (|| {
        let mut file = match std::fs::File::create(&temp) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                std::fs::create_dir_all(target.parent().expect("a key has a parent"))?;
                std::fs::File::create(&temp)?
            }
            Err(e) => return Err(e),
        };
        file.write_all(data)?;
        std::fs::rename(&temp, target)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result
}

/// A local object's version for conditional writes: the digest of its bytes (a rename
/// replaces the inode, whose number the file system may hand out again).
fn content_version(data: &[u8]) -> Version {
    use sha2::{Digest, Sha256};
    Version(format!("{:x}", Sha256::digest(data)))
}

/// Creates `target` with `data` unless something is there: the bytes go to a temporary file
/// that is then hard-linked into place, which fails when the name exists.
fn create_exclusive(target: &Path, data: &[u8]) -> std::io::Result<bool> {
    let temp = temp_path_beside(target);
    write_atomic(&temp, data)?;
    let linked = std::fs::hard_link(&temp, target);
    let _ = std::fs::remove_file(&temp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Replaces `target` with `data` when its bytes are still `version`. Every conditional
/// replacement holds an exclusive lock on the file it read, and checks that the name still
/// leads to that file once the lock is held (a replacement renamed a new one in meanwhile),
/// so two replacements of one version cannot both succeed.
fn replace_if_current(target: &Path, data: &[u8], version: &Version) -> std::io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    loop {
        let mut file = match std::fs::File::open(target) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        file.lock()?;
        let locked = file.metadata()?;
        match std::fs::metadata(target) {
            Ok(named) if named.ino() == locked.ino() && named.dev() == locked.dev() => {}
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        }
        let mut current = Vec::new();
        file.read_to_end(&mut current)?;
        if content_version(&current) != *version {
            return Ok(false);
        }
        write_atomic(target, data)?;
        return Ok(true);
    }
}

/// Moves `source` to `target` (creating folders), or copies then renames across devices.
pub fn move_atomic(source: &Path, target: &Path) -> std::io::Result<u64> {
    let size = std::fs::symlink_metadata(source)?.len();
    let rename = |s: &Path, t: &Path| match std::fs::rename(s, t) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && s.exists() => {
            std::fs::create_dir_all(t.parent().expect("a key has a parent"))?;
            std::fs::rename(s, t)
        }
        other => other,
    };
    match rename(source, target) {
        Ok(()) => Ok(size),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::create_dir_all(target.parent().expect("a key has a parent"))?;
            let temp = temp_path_beside(target);
            let copied = std::fs::copy(source, &temp).and_then(|n| std::fs::rename(&temp, target).map(|_| n));
            if copied.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            copied
        }
        Err(e) => Err(e),
    }
}

/// Hard-links `source` (following a symlink to its file) to `target`, or copies it.
pub fn link_or_copy(source: &Path, target: &Path) -> std::io::Result<u64> {
    let c_source = CString::new(source.as_os_str().as_bytes())?;
    let c_target = CString::new(target.as_os_str().as_bytes())?;
    // SAFETY: both are valid NUL-terminated paths; linkat does not retain them.
    let linked = unsafe {
        libc::linkat(libc::AT_FDCWD, c_source.as_ptr(), libc::AT_FDCWD, c_target.as_ptr(), libc::AT_SYMLINK_FOLLOW)
    };
    if linked == 0 {
        return Ok(std::fs::metadata(target)?.len());
    }
    let error = std::io::Error::last_os_error();
    match error.raw_os_error() {
        Some(libc::EXDEV) | Some(libc::EPERM) | Some(libc::EMLINK) | Some(libc::EACCES) => {
            std::fs::copy(source, target)
        }
        _ => Err(error),
    }
}

/// Sorting a folder's entries by name, with `/` after folder names, makes a depth-first walk
/// list keys in the same byte order S3 does (`a-c` before `a/b`).
fn listing_order(entry: &walkdir::DirEntry) -> Vec<u8> {
    let mut name = entry.file_name().as_bytes().to_vec();
    if entry.file_type().is_dir() {
        name.push(b'/');
    }
    name
}

fn walk(root: &Path, prefix: &str, page: &mut dyn FnMut(Vec<ObjectMeta>) -> bool) -> StorageResult<()> {
    let start = root.join(prefix);
    if !start.is_dir() {
        return Ok(());
    }
    let mut batch = Vec::with_capacity(LIST_PAGE);
    let walker =
        walkdir::WalkDir::new(&start).follow_links(false).sort_by(|a, b| listing_order(a).cmp(&listing_order(b)));
    for entry in walker {
        let entry = entry.map_err(|e| {
            let location = e.path().unwrap_or(&start).display().to_string();
            StorageError::Io { location, source: e.into() }
        })?;
        let file_type = entry.file_type();
        let meta = if file_type.is_file() {
            entry
                .metadata()
                .map_err(|e| StorageError::Io { location: entry.path().display().to_string(), source: e.into() })?
        } else if file_type.is_symlink() {
            // A symlinked file is the user's own data; a symlinked folder is skipped (cycles).
            match std::fs::metadata(entry.path()) {
                Ok(meta) if meta.is_file() => meta,
                _ => continue,
            }
        } else {
            continue;
        };
        if entry.file_name().as_bytes().starts_with(TEMP_PREFIX.as_bytes()) {
            continue;
        }
        let relative = entry.path().strip_prefix(root).expect("the walk stays below the root");
        let key = match relative.to_str() {
            Some(key) => key.to_string(),
            None => {
                return Err(StorageError::InvalidKey {
                    key: relative.to_string_lossy().into_owned(),
                    reason: "the file name is not UTF-8",
                })
            }
        };
        batch.push(ObjectMeta { key, size: meta.len(), version: Some(mtime_version(&meta)) });
        if batch.len() == LIST_PAGE && !page(std::mem::replace(&mut batch, Vec::with_capacity(LIST_PAGE))) {
            return Ok(());
        }
    }
    if !batch.is_empty() {
        page(batch);
    }
    Ok(())
}

/// A local file's version: its modification time in nanoseconds since the epoch.
pub fn mtime_version(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    (meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128).to_string()
}

#[async_trait]
impl Storage for LocalStorage {
    fn root(&self) -> &Location {
        &self.location
    }

    fn list(&self, prefix: &str) -> BoxStream<'static, StorageResult<ObjectMeta>> {
        let (tx, rx) = tokio::sync::mpsc::channel::<StorageResult<Vec<ObjectMeta>>>(4);
        let root = self.root.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || {
            let result = walk(&root, &prefix, &mut |page| tx.blocking_send(Ok(page)).is_ok());
            if let Err(e) = result {
                let _ = tx.blocking_send(Err(e));
            }
        });
        pages_to_stream(rx)
    }

    async fn list_dirs(&self, prefix: &str) -> StorageResult<Vec<String>> {
        let dir = self.root.join(prefix);
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(StorageError::Io { location: dir.display().to_string(), source: e }),
            };
            let mut names = Vec::new();
            for entry in entries.flatten() {
                if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    if let Some(name) = entry.file_name().to_str() {
                        names.push(name.to_string());
                    }
                }
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn head(&self, key: &str) -> StorageResult<Option<ObjectMeta>> {
        let path = self.path_of(key)?;
        let key = key.to_string();
        blocking(move || match std::fs::metadata(&path) {
            Ok(meta) if meta.is_file() => {
                Ok(Some(ObjectMeta { key, size: meta.len(), version: Some(mtime_version(&meta)) }))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::Io { location: path.display().to_string(), source: e }),
        })
        .await
    }

    async fn get(&self, key: &str) -> StorageResult<Bytes> {
        let path = self.path_of(key)?;
        let this = self.clone();
        blocking(move || std::fs::read(&path).map(Bytes::from).map_err(|e| this.io_error(&path, e))).await
    }

    async fn get_range(&self, key: &str, range: Range<u64>) -> StorageResult<Bytes> {
        let path = self.path_of(key)?;
        let this = self.clone();
        blocking(move || {
            let read = || -> std::io::Result<Bytes> {
                let mut file = std::fs::File::open(&path)?;
                let size = file.metadata()?.len();
                let end = range.end.min(size);
                if range.start >= end {
                    return Ok(Bytes::new());
                }
                file.seek(SeekFrom::Start(range.start))?;
                let mut buffer = vec![0u8; (end - range.start) as usize];
                file.read_exact(&mut buffer)?;
                Ok(Bytes::from(buffer))
            };
            read().map_err(|e| this.io_error(&path, e))
        })
        .await
    }

    async fn download(&self, key: &str, target: &Path) -> StorageResult<u64> {
        let source = self.path_of(key)?;
        let target = target.to_path_buf();
        let this = self.clone();
        blocking(move || link_or_copy(&source, &target).map_err(|e| this.io_error(&source, e))).await
    }

    fn moves_uploads(&self) -> bool {
        true
    }

    fn local_root(&self) -> Option<&Path> {
        Some(&self.root)
    }

    async fn download_many(&self, items: Vec<(String, PathBuf)>) -> StorageResult<u64> {
        let this = self.clone();
        blocking(move || {
            let mut total = 0;
            for (key, target) in items {
                let source = this.path_of(&key)?;
                total += link_or_copy(&source, &target).map_err(|e| this.io_error(&source, e))?;
            }
            Ok(total)
        })
        .await
    }

    async fn upload_many(&self, items: Vec<(String, PathBuf)>) -> StorageResult<u64> {
        let this = self.clone();
        blocking(move || {
            let mut total = 0;
            for (key, source) in items {
                let target = this.path_of(&key)?;
                total += move_atomic(&source, &target).map_err(|e| this.io_error(&target, e))?;
            }
            Ok(total)
        })
        .await
    }

    async fn append_range(&self, key: &str, range: Range<u64>, target: &Path) -> StorageResult<u64> {
        let source = self.path_of(key)?;
        let target = target.to_path_buf();
        let this = self.clone();
        blocking(move || {
            let mut input = std::fs::File::open(&source).map_err(|e| this.io_error(&source, e))?;
            input.seek(SeekFrom::Start(range.start)).map_err(|e| this.io_error(&source, e))?;
            let mut output = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&target)
                .map_err(|e| StorageError::Io { location: target.display().to_string(), source: e })?;
            std::io::copy(&mut input.take(range.end.saturating_sub(range.start)), &mut output)
                .map_err(|e| StorageError::Io { location: target.display().to_string(), source: e })
        })
        .await
    }

    async fn put(&self, key: &str, data: Bytes) -> StorageResult<()> {
        let path = self.path_of(key)?;
        let this = self.clone();
        blocking(move || write_atomic(&path, &data).map_err(|e| this.io_error(&path, e))).await
    }

    async fn upload(&self, key: &str, source: &Path) -> StorageResult<u64> {
        let target = self.path_of(key)?;
        let source = source.to_path_buf();
        let this = self.clone();
        blocking(move || move_atomic(&source, &target).map_err(|e| this.io_error(&target, e))).await
    }

    async fn copy(&self, from: &str, to: &str) -> StorageResult<u64> {
        let (source, target) = (self.path_of(from)?, self.path_of(to)?);
        let this = self.clone();
        blocking(move || {
            std::fs::create_dir_all(target.parent().expect("a key has a parent"))
                .map_err(|e| this.io_error(&target, e))?;
            let temp = temp_path_beside(&target);
            let copied = std::fs::copy(&source, &temp).and_then(|n| std::fs::rename(&temp, &target).map(|_| n));
            if copied.is_err() {
                let _ = std::fs::remove_file(&temp);
            }
            copied.map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound if !source.exists() => {
                    StorageError::NotFound { location: source.display().to_string() }
                }
                _ => this.io_error(&target, e),
            })
        })
        .await
    }

    async fn delete(&self, key: &str) -> StorageResult<()> {
        let path = self.path_of(key)?;
        let this = self.clone();
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(this.io_error(&path, e)),
        })
        .await
    }

    async fn get_versioned(&self, key: &str) -> StorageResult<Option<(Bytes, Version)>> {
        match self.get(key).await {
            Ok(data) => {
                let version = content_version(&data);
                Ok(Some((data, version)))
            }
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put_if(&self, key: &str, data: Bytes, precondition: Precondition) -> StorageResult<Conditional> {
        let path = self.path_of(key)?;
        let this = self.clone();
        blocking(move || {
            let written = match &precondition {
                Precondition::Absent => create_exclusive(&path, &data),
                Precondition::Current(version) => replace_if_current(&path, &data, version),
            };
            match written.map_err(|e| this.io_error(&path, e))? {
                true => Ok(Conditional::Written(content_version(&data))),
                false => Ok(Conditional::Refused),
            }
        })
        .await
    }

    async fn check(&self, for_writing: bool) -> StorageResult<()> {
        let root = self.root.clone();
        blocking(move || {
            if root.exists() {
                if !root.is_dir() {
                    return Err(StorageError::Io {
                        location: root.display().to_string(),
                        source: std::io::Error::other("not a folder"),
                    });
                }
                return if for_writing { writable(&root) } else { Ok(()) };
            }
            if !for_writing {
                return Err(StorageError::NotFound { location: root.display().to_string() });
            }
            // A DEST that does not exist yet is created on first write: its nearest existing
            // ancestor must be a writable folder.
            let mut ancestor = root.parent();
            while let Some(dir) = ancestor {
                if dir.exists() {
                    return writable(dir);
                }
                ancestor = dir.parent();
            }
            Ok(())
        })
        .await
    }
}

fn writable(dir: &Path) -> StorageResult<()> {
    let c_path = CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| StorageError::Io { location: dir.display().to_string(), source: e.into() })?;
    // SAFETY: a valid NUL-terminated path; access() does not retain it.
    if unsafe { libc::access(c_path.as_ptr(), libc::W_OK | libc::X_OK) } == 0 && dir.is_dir() {
        Ok(())
    } else {
        Err(StorageError::Io {
            location: dir.display().to_string(),
            source: std::io::Error::new(std::io::ErrorKind::PermissionDenied, "not a writable folder"),
        })
    }
}

/// Turns a channel of listing pages into a stream of objects.
pub(crate) fn pages_to_stream(
    rx: tokio::sync::mpsc::Receiver<StorageResult<Vec<ObjectMeta>>>,
) -> BoxStream<'static, StorageResult<ObjectMeta>> {
    use futures::StreamExt;
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|page| (page, rx)) })
        .flat_map(|page| match page {
            Ok(objects) => futures::stream::iter(objects.into_iter().map(Ok).collect::<Vec<_>>()),
            Err(e) => futures::stream::iter(vec![Err(e)]),
        })
        .boxed()
}
