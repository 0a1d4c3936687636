//! Side files (`files = { NAME = "PATH" }`): read once when a job opens, from a local path
//! or an object, and pinned by their SHA-256; kept content-addressed in fanout's cache and,
//! for remote workers, under DEST (`_fanout/files/<sha256>`), stored once whatever the number
//! of jobs. Every invocation sees them as one read-only folder, `/files`: this module lays it
//! out (hard links into the cache, else copies) and names it; the runtimes mount it. It never
//! runs a function and writes nothing but its cache and those keys.

use crate::cache::blob_path;
use crate::job::SideFile;
use crate::location::Location;
use crate::storage::{self, DynStorage, StorageError, StorageOptions};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SideFileError {
    #[error("function.files.{name}: {from} does not exist")]
    Missing { name: String, from: String },
    #[error("function.files.{name}: {from}: {message}")]
    Read { name: String, from: String, message: String },
    #[error("function.files.{name}: storing it under output.dest: {message}")]
    Store { name: String, message: String },
    #[error("function.files.{name}: {source}")]
    Blob { name: String, source: BlobError },
    #[error("fanout's cache: {0}")]
    Cache(String),
}

/// Fetching a content-addressed blob from DEST: it says nothing of what the blob is for, so
/// the caller names it (a side file, the interpreter's files, a compiled snapshot).
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("{key}: {message}")]
    Read { key: String, message: String },
    #[error("{key} holds sha256 {found}, not the expected {expected}")]
    Changed { key: String, found: String, expected: String },
    #[error("fanout's cache: {path}: {source}")]
    Cache { path: PathBuf, source: std::io::Error },
}

/// The key under DEST of the side file with this digest.
pub fn key(sha256: &str) -> String {
    format!("{}/files/{sha256}", crate::manifest::FANOUT_DIR)
}

/// Reads every side file not pinned yet from where the job names it and records its digest
/// in `files` (a stored job's files are pinned already: they come from the cache, or from
/// DEST), keeps each in the cache and stores each under DEST once, where any worker and any
/// later run of the job finds it. Returns the folder the invocations see, if there are any.
pub async fn pin(
    files: &mut BTreeMap<String, SideFile>,
    options: &StorageOptions,
    dest: &DynStorage,
) -> Result<Option<PathBuf>, SideFileError> {
    read_unpinned(files, options).await?;
    fetch(files, dest).await?;
    for (name, file) in files.iter() {
        store_blob(&file.sha256, dest)
            .await
            .map_err(|e| SideFileError::Store { name: name.clone(), message: e.to_string() })?;
    }
    folder(files)
}

/// Reads and pins the side files for this machine alone (`fanout serve`): kept in the cache,
/// stored nowhere else. Returns the folder the invocations see, if there are any.
pub async fn pin_here(
    files: &mut BTreeMap<String, SideFile>,
    options: &StorageOptions,
) -> Result<Option<PathBuf>, SideFileError> {
    read_unpinned(files, options).await?;
    folder(files)
}

async fn read_unpinned(files: &mut BTreeMap<String, SideFile>, options: &StorageOptions) -> Result<(), SideFileError> {
    for (name, file) in files.iter_mut().filter(|(_, file)| file.sha256.is_empty()) {
        let bytes = read_source(name, &file.source, options).await?;
        file.sha256 = format!("{:x}", Sha256::digest(&bytes));
        keep(&file.sha256, &bytes)?;
    }
    Ok(())
}

/// Stores a blob of the cache under DEST, streamed, unless it is there already: a pinned side
/// file, or the Python interpreter's files for remote workers.
pub async fn store_blob(sha256: &str, dest: &DynStorage) -> Result<(), StorageError> {
    let blob = blob_path(sha256);
    let unreadable = |source| StorageError::Io { location: blob.display().to_string(), source };
    let size = std::fs::metadata(&blob).map(|m| m.len()).map_err(unreadable)?;
    if dest.head(&key(sha256)).await?.is_some_and(|meta| meta.size == size) {
        return Ok(());
    }
    dest.upload(&key(sha256), &blob).await.map(|_| ())
}

/// Fetches the blob `sha256` from DEST into the cache (streamed, and checked against its
/// digest before any reader sees it), unless the cache holds it already.
pub async fn fetch_blob(sha256: &str, dest: &DynStorage) -> Result<PathBuf, BlobError> {
    let blob = blob_path(sha256);
    if blob.is_file() {
        return Ok(blob);
    }
    let key = key(sha256);
    let dir = blob.parent().expect("a blob has a folder");
    let cache = |path: &Path| {
        let path = path.to_path_buf();
        move |source| BlobError::Cache { path, source }
    };
    std::fs::create_dir_all(dir).map_err(cache(dir))?;
    let partial = blob.with_extension(format!("partial-{}", std::process::id()));
    let read_error = |message: String| BlobError::Read { key: key.clone(), message };
    let fetched = dest.download(&key, &partial).await.map_err(|e| read_error(e.to_string()));
    let found = fetched.and_then(|_| {
        let mut hasher = Sha256::new();
        let mut file = std::fs::File::open(&partial).map_err(|e| read_error(e.to_string()))?;
        std::io::copy(&mut file, &mut hasher).map_err(|e| read_error(e.to_string()))?;
        Ok(format!("{:x}", hasher.finalize()))
    });
    let kept = match found {
        Ok(found) if found == sha256 => std::fs::rename(&partial, &blob).map_err(cache(&blob)),
        Ok(found) => Err(BlobError::Changed { key: key.clone(), found, expected: sha256.to_string() }),
        Err(e) => Err(e),
    };
    if kept.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    kept.map(|_| blob)
}

/// The pinned side files fetched from DEST (unless the cache holds them already), as a
/// remote worker needs them, and laid out. Returns the folder the invocations see, if there are any.
pub async fn fetch(files: &BTreeMap<String, SideFile>, dest: &DynStorage) -> Result<Option<PathBuf>, SideFileError> {
    for (name, file) in files {
        fetch_blob(&file.sha256, dest).await.map_err(|source| SideFileError::Blob { name: name.clone(), source })?;
    }
    folder(files)
}

/// The folder of a job's pinned side files (made by [`pin`] or [`fetch`]), if it has any.
pub fn folder_of(files: &BTreeMap<String, SideFile>) -> Option<PathBuf> {
    (!files.is_empty()).then(|| root().join("sets").join(listing_digest(files)))
}

async fn read_source(name: &str, source: &Location, options: &StorageOptions) -> Result<Bytes, SideFileError> {
    let shown = source.to_string();
    let missing = || SideFileError::Missing { name: name.to_string(), from: shown.clone() };
    let failed = |message: String| SideFileError::Read { name: name.to_string(), from: shown.clone(), message };
    match source {
        Location::Local(path) if path.is_dir() => Err(failed("is a folder, not a file".into())),
        Location::Local(path) => match tokio::fs::read(path).await {
            Ok(bytes) => Ok(Bytes::from(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(missing()),
            Err(e) => Err(failed(e.to_string())),
        },
        Location::S3 { .. } | Location::Azure { .. } | Location::Gcs { .. } => {
            match storage::get_object(source, options).await {
                Ok(bytes) => Ok(bytes),
                Err(e) if e.is_not_found() => Err(missing()),
                Err(e) => Err(failed(e.to_string())),
            }
        }
        Location::Kafka { .. } => Err(failed("a Kafka topic is not a file".into())),
    }
}

fn root() -> PathBuf {
    crate::cache::cache_dir().join("files")
}

fn cache_error(path: &Path, e: std::io::Error) -> SideFileError {
    SideFileError::Cache(format!("{}: {e}", path.display()))
}

/// Writes a blob into the cache once (by rename, so a reader never sees half of one).
fn keep(sha256: &str, bytes: &[u8]) -> Result<(), SideFileError> {
    let blob = blob_path(sha256);
    if blob.is_file() {
        return Ok(());
    }
    let dir = blob.parent().expect("a blob has a folder");
    std::fs::create_dir_all(dir).map_err(|e| cache_error(dir, e))?;
    crate::storage::local::write_atomic(&blob, bytes).map_err(|e| cache_error(&blob, e))
}

/// A digest of the names and contents: the folder's name, the same for the same files.
fn listing_digest(files: &BTreeMap<String, SideFile>) -> String {
    let mut hasher = Sha256::new();
    for (name, file) in files {
        hasher.update(name.as_bytes());
        hasher.update([0]);
        hasher.update(file.sha256.as_bytes());
        hasher.update([b'\n']);
    }
    format!("{:x}", hasher.finalize())
}

/// Lays out the folder of `files` from the cache's blobs, once: built beside and renamed
/// into place, so that invocations never see it half made.
fn folder(files: &BTreeMap<String, SideFile>) -> Result<Option<PathBuf>, SideFileError> {
    let Some(folder) = folder_of(files) else { return Ok(None) };
    if folder.is_dir() {
        return Ok(Some(folder));
    }
    let partial = folder.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| cache_error(&partial, e))?;
    for (name, file) in files {
        let (blob, link) = (blob_path(&file.sha256), partial.join(name));
        if std::fs::hard_link(&blob, &link).is_err() {
            std::fs::copy(&blob, &link).map_err(|e| cache_error(&link, e))?;
        }
    }
    if std::fs::rename(&partial, &folder).is_err() {
        // Another process laid out the same folder meanwhile.
        let _ = std::fs::remove_dir_all(&partial);
    }
    Ok(Some(folder))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_files_give_the_same_folder_and_any_change_another() {
        let file = |sha: &str| SideFile { source: Location::Local("/x".into()), sha256: sha.into() };
        let a = BTreeMap::from([("schema.json".to_string(), file("aa")), ("model.bin".to_string(), file("bb"))]);
        let renamed = BTreeMap::from([("schema2.json".to_string(), file("aa")), ("model.bin".to_string(), file("bb"))]);
        let changed = BTreeMap::from([("schema.json".to_string(), file("ab")), ("model.bin".to_string(), file("bb"))]);
        assert_eq!(folder_of(&a), folder_of(&a.clone()));
        assert_ne!(folder_of(&a), folder_of(&renamed));
        assert_ne!(folder_of(&a), folder_of(&changed));
        assert_eq!(folder_of(&BTreeMap::new()), None);
    }
}
