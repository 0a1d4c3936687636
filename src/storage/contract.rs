//! The contract every storage backend keeps, written down once: the [`Storage`] trait and
//! its guarantees (see the `storage` module's map), the errors a backend reports, and the
//! key rules. Backends (`local`, `s3`, `cloud`) implement it; nothing here opens one.

use crate::location::Location;
use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// fanout's own folder under a DEST (the manifest, staging, intermediate results): no
/// output of a function may be written there.
pub const FANOUT_DIR: &str = "_fanout";

/// Transfers of one batch in flight at once.
pub const BATCH_CONCURRENCY: usize = 8;

/// One object as a listing sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ObjectMeta {
    /// Relative to the storage root.
    pub key: String,
    pub size: u64,
    /// What changes when the object is rewritten: S3's ETag, a local file's modification
    /// time (nanoseconds). Watching compares it, with the size, to find new versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

impl ObjectMeta {
    pub fn new(key: impl Into<String>, size: u64) -> Self {
        ObjectMeta { key: key.into(), size, version: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{location}: no such object")]
    NotFound { location: String },
    #[error("\"{key}\" is not a valid key: {reason}")]
    InvalidKey { key: String, reason: &'static str },
    #[error("{location}: {source}")]
    Io { location: String, source: std::io::Error },
    /// `service` names the store as users know it: "S3", "Azure Blob", "Google Cloud Storage".
    #[error("{location}: cannot reach the {service} endpoint {endpoint}: {message}")]
    Unreachable { location: String, service: &'static str, endpoint: String, message: String },
    #[error("{location}: access denied ({message}); check the credentials and the bucket's permissions")]
    AccessDenied { location: String, message: String },
    /// `what` is "bucket", or "container" on Azure.
    #[error("{location}: the {what} \"{bucket}\" does not exist")]
    NoSuchBucket { location: String, what: &'static str, bucket: String },
    /// `cloud` is whose credentials: "AWS", "Azure", "Google Cloud".
    #[error("{location}: no usable {cloud} credentials: {message}")]
    Credentials { location: String, cloud: &'static str, message: String },
    #[error("{location}: {operation} failed: {message}")]
    Service { location: String, operation: &'static str, message: String },
}

impl StorageError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, StorageError::NotFound { .. })
    }

    /// True when a local file system ran out of room.
    pub fn is_no_space(&self) -> bool {
        matches!(self, StorageError::Io { source, .. } if source.kind() == std::io::ErrorKind::StorageFull)
    }

    /// Errors that say the storage as a whole is unusable (as opposed to one object).
    pub fn is_fatal_for_job(&self) -> bool {
        matches!(
            self,
            StorageError::Unreachable { .. }
                | StorageError::AccessDenied { .. }
                | StorageError::NoSuchBucket { .. }
                | StorageError::Credentials { .. }
        )
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// Storage of objects under one root (a directory, or a bucket and prefix).
#[async_trait]
pub trait Storage: Send + Sync + std::fmt::Debug {
    /// The root, as users write it.
    fn root(&self) -> &Location;

    /// Every object whose key starts with `prefix` (empty, or a folder ending in `/`),
    /// sorted by key bytes. Streamed: the first objects arrive before the listing ends.
    fn list(&self, prefix: &str) -> BoxStream<'static, StorageResult<ObjectMeta>>;

    /// Like `list`, but only keys sorting after `after` (S3's `StartAfter`): how a watcher
    /// finds objects added at the end of a prefix without listing it all again.
    fn list_after(&self, prefix: &str, after: &str) -> BoxStream<'static, StorageResult<ObjectMeta>> {
        use futures::StreamExt;
        let after = after.to_string();
        self.list(prefix)
            .filter(move |listed| {
                futures::future::ready(listed.as_ref().map_or(true, |o| o.key.as_str() > after.as_str()))
            })
            .boxed()
    }

    /// The names one level below `prefix` that hold objects (like `ls` of a folder), sorted.
    async fn list_dirs(&self, prefix: &str) -> StorageResult<Vec<String>>;

    /// The object's size, or `None` when it does not exist.
    async fn head(&self, key: &str) -> StorageResult<Option<ObjectMeta>>;

    /// The whole object, in memory: for small objects (manifests, records).
    async fn get(&self, key: &str) -> StorageResult<Bytes>;

    /// Bytes `range.start..range.end` of the object (the end is clipped to the size).
    async fn get_range(&self, key: &str, range: Range<u64>) -> StorageResult<Bytes>;

    /// Streams the object into the local file at `path` (whose parent exists); returns the
    /// size. A remote backend overwrites a file already there in place, keeping its cached
    /// pages (staging's spares); a local backend needs `path` to be new, since the file may
    /// be a hard link to the object, which callers must then treat as read-only.
    async fn download(&self, key: &str, path: &Path) -> StorageResult<u64>;

    /// Appends bytes `range` of the object to the local file at `path` (created if missing),
    /// streaming: a range of any size is never held in memory whole. Returns the bytes added.
    async fn append_range(&self, key: &str, range: Range<u64>, path: &Path) -> StorageResult<u64>;

    /// Stores `data` at `key`, atomically.
    async fn put(&self, key: &str, data: Bytes) -> StorageResult<()>;

    /// Stores the local file at `path` as `key`, atomically, without holding it in memory
    /// whole; returns its size. The file may be moved away (local backends rename it).
    async fn upload(&self, key: &str, path: &Path) -> StorageResult<u64>;

    /// Downloads several objects (`key`, new local file) at once; returns the bytes fetched.
    /// Backends batch this where they can (one blocking call for many local links).
    async fn download_many(&self, items: Vec<(String, PathBuf)>) -> StorageResult<u64> {
        use futures::{StreamExt, TryStreamExt};
        let sizes: Vec<u64> = futures::stream::iter(items)
            .map(|(key, path)| async move { self.download(&key, &path).await })
            .buffer_unordered(BATCH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(sizes.iter().sum())
    }

    /// Uploads several local files (`key`, file) at once, each atomically; returns the bytes.
    async fn upload_many(&self, items: Vec<(String, PathBuf)>) -> StorageResult<u64> {
        use futures::{StreamExt, TryStreamExt};
        let sizes: Vec<u64> = futures::stream::iter(items)
            .map(|(key, path)| async move { self.upload(&key, &path).await })
            .buffer_unordered(BATCH_CONCURRENCY)
            .try_collect()
            .await?;
        Ok(sizes.iter().sum())
    }

    /// True when `upload` moves the local file away (so it needs no removal afterwards).
    fn moves_uploads(&self) -> bool {
        false
    }

    /// The folder behind a local backend, so that staging can link files in the same
    /// blocking call that prepares their folder; `None` for remote backends.
    fn local_root(&self) -> Option<&Path> {
        None
    }

    /// Copies the object `from` to `to` inside this storage, atomically (the target appears
    /// whole or not at all), without passing the bytes through this machine where the
    /// backend can (S3 copies server-side); returns the size.
    async fn copy(&self, from: &str, to: &str) -> StorageResult<u64>;

    /// Stores at `to` the objects `parts` (with their sizes) one after another, atomically,
    /// never holding more than one small part in memory; returns the size. `scratch` is a
    /// local file this may use (and removes). S3 copies large parts server-side.
    async fn concat(&self, parts: &[ObjectMeta], to: &str, scratch: &Path) -> StorageResult<u64> {
        let _ = std::fs::remove_file(scratch);
        // Created even when every part is empty: the result exists.
        std::fs::File::create(scratch)
            .map_err(|e| StorageError::Io { location: scratch.display().to_string(), source: e })?;
        for part in parts {
            self.append_range(&part.key, 0..u64::MAX, scratch).await?;
        }
        let size = self.upload(to, scratch).await?;
        let _ = std::fs::remove_file(scratch);
        Ok(size)
    }

    /// Removes the object; removing a missing object is not an error.
    async fn delete(&self, key: &str) -> StorageResult<()>;

    /// Proves the root is usable (reachable, credentials valid, bucket present) before a job
    /// starts, so that a wrong address fails at once with one clear line.
    async fn check(&self, for_writing: bool) -> StorageResult<()>;

    /// The whole object and its [`Version`], or `None` when it does not exist: what a
    /// conditional write ([`Storage::put_if`]) is then compared against.
    async fn get_versioned(&self, key: &str) -> StorageResult<Option<(Bytes, Version)>>;

    /// Stores `data` at `key` only when `precondition` holds, the check and the write one
    /// atomic step in the store: local folders (a hard link, a lock on the file), Azure Blob
    /// (`If-None-Match`/`If-Match`), Google Cloud Storage (`ifGenerationMatch`) and AWS S3
    /// (`If-None-Match`/`If-Match`). Some S3-compatible servers (Garage) ignore the condition
    /// and write anyway: a caller that relies on it asks [`enforces_conditional_writes`] first.
    async fn put_if(&self, key: &str, data: Bytes, precondition: Precondition) -> StorageResult<Conditional>;
}

/// An object's version as conditional writes compare it: opaque, only handed back to the
/// store that gave it (an ETag, a generation, a local file's content digest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(pub String);

/// What a conditional write requires of the object already at its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// No object is there.
    Absent,
    /// The object is still this version.
    Current(Version),
}

/// What a conditional write did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conditional {
    /// Written; the new object's version.
    Written(Version),
    /// The precondition did not hold: nothing was written.
    Refused,
}

/// Whether `storage` really refuses a conditional create of a key that exists: two creates of
/// `probe_key`, the second expected refused, then the probe removed. Garage answers no.
pub async fn enforces_conditional_writes(storage: &dyn Storage, probe_key: &str) -> StorageResult<bool> {
    let nonce = || Bytes::from(format!("{} {:?}", std::process::id(), std::time::SystemTime::now()));
    storage.delete(probe_key).await?;
    let first = storage.put_if(probe_key, nonce(), Precondition::Absent).await;
    let second = match first {
        Ok(Conditional::Written(_)) => storage.put_if(probe_key, nonce(), Precondition::Absent).await,
        Ok(Conditional::Refused) => Ok(Conditional::Written(Version(String::new()))),
        Err(e) => Err(e),
    };
    let _ = storage.delete(probe_key).await;
    Ok(second? == Conditional::Refused)
}

pub type DynStorage = Arc<dyn Storage>;

/// Options that shape how backends connect (today: S3's endpoint override; Azure and Google
/// Cloud Storage take theirs from the environment, as their own tools do).
#[derive(Debug, Clone, Default)]
pub struct StorageOptions {
    /// Overrides `AWS_ENDPOINT_URL` for s3:// locations; implies path-style addressing.
    pub endpoint_url: Option<String>,
}

/// Refuses keys that could escape a root or that S3 and file systems disagree about.
pub fn validate_key(key: &str) -> StorageResult<()> {
    let invalid = |reason| Err(StorageError::InvalidKey { key: key.to_string(), reason });
    if key.is_empty() {
        return invalid("it is empty");
    }
    if key.len() > 1024 {
        return invalid("it is longer than 1024 bytes");
    }
    if key.starts_with('/') {
        return invalid("it is absolute");
    }
    if key.contains('\0') {
        return invalid("it contains a NUL byte");
    }
    for segment in key.split('/') {
        match segment {
            "" => return invalid("it has an empty path segment"),
            "." | ".." => return invalid("it has a '.' or '..' segment"),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_could_escape_are_refused() {
        for bad in ["", "/abs", "a/../b", "..", "a//b", "./a", "a/.", "x\0y"] {
            assert!(validate_key(bad).is_err(), "{bad:?} should be refused");
        }
        for good in ["a", "a/b.jpg", "deep/er/still.txt", "a..b", ".hidden"] {
            assert!(validate_key(good).is_ok(), "{good:?} should pass");
        }
    }
}
