//! Object storage behind one trait: the local file system (the embedded default), S3, Azure
//! Blob and Google Cloud Storage.
//! Owns the contract every backend keeps (what `put` guarantees, what `NotFound` means,
//! the key rules) and the opening of a backend from a [`Location`]. It knows nothing of
//! jobs, shards or manifests: keys are opaque `/`-separated names below a root.
//!
//! Contract, for every backend:
//! - keys are relative to the root, `/`-separated, never empty, never with `.`/`..` or empty
//!   segments, at most 1024 bytes (the S3 limit); [`validate_key`] refuses the rest;
//! - `list` yields every object under a prefix, sorted by key bytes, streamed in pages, and
//!   never yields a half-written object;
//! - `put` and `upload` are atomic: a reader sees the old object or the whole new one;
//! - a missing object is [`StorageError::NotFound`], never an empty object.
//!
//! The contract lives in `contract`; `local`, `s3` and `cloud` (Azure Blob and Google Cloud
//! Storage) implement it; `open` picks one.

pub mod cloud;
mod contract;
pub mod local;
pub mod s3;

pub use contract::*;

use crate::location::Location;
use std::sync::Arc;

/// The one object an object-store location (`s3://bucket/key`, `az://...`, `gs://...`) names,
/// opened at its parent prefix and read whole: a function's bytes, a side file.
pub async fn get_object(location: &Location, options: &StorageOptions) -> StorageResult<bytes::Bytes> {
    let Some((_, key_path)) = location.bucket_and_prefix() else {
        return Err(StorageError::Service {
            location: location.to_string(),
            operation: "get",
            message: "not an object-store address".into(),
        });
    };
    let (parent, key) = match key_path.rsplit_once('/') {
        Some((parent, key)) => (format!("{parent}/"), key),
        None => (String::new(), key_path),
    };
    open(&location.with_prefix(parent), options).await?.get(key).await
}

/// Opens the backend for a location. Local roots need not exist yet (a DEST is created on
/// first write); S3 clients are built from the AWS default chain plus `options`, Azure and
/// Google Cloud Storage clients from their clouds' usual environment (see `cloud`).
pub async fn open(location: &Location, options: &StorageOptions) -> StorageResult<DynStorage> {
    match location {
        Location::Local(path) => Ok(Arc::new(local::LocalStorage::new(path.clone()))),
        Location::S3 { bucket, prefix } => Ok(Arc::new(s3::S3Storage::connect(bucket, prefix, options).await?)),
        Location::Azure { container, prefix } => Ok(Arc::new(cloud::CloudStorage::azure(container, prefix)?)),
        Location::Gcs { bucket, prefix } => Ok(Arc::new(cloud::CloudStorage::gcs(bucket, prefix)?)),
        Location::Kafka { .. } => Err(StorageError::Service {
            location: location.to_string(),
            operation: "open",
            message: "a Kafka topic is a source, not object storage".into(),
        }),
    }
}
