//! Object storage behind one trait: the local file system (the embedded default) and S3.
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
//! The contract lives in `contract`; `local` and `s3` implement it; `open` picks one.

mod contract;
pub mod local;
pub mod s3;

pub use contract::*;

use crate::location::Location;
use std::sync::Arc;

/// The one object an `s3://bucket/key` location names (opened at its parent prefix, read
/// whole): a function's bytes, a side file.
pub async fn get_object(bucket: &str, key_path: &str, options: &StorageOptions) -> StorageResult<bytes::Bytes> {
    let (parent, key) = match key_path.rsplit_once('/') {
        Some((parent, key)) => (format!("{parent}/"), key),
        None => (String::new(), key_path),
    };
    open(&Location::S3 { bucket: bucket.to_string(), prefix: parent }, options).await?.get(key).await
}

/// Opens the backend for a location. Local roots need not exist yet (a DEST is created on
/// first write); S3 clients are built from the AWS default chain plus `options`.
pub async fn open(location: &Location, options: &StorageOptions) -> StorageResult<DynStorage> {
    match location {
        Location::Local(path) => Ok(Arc::new(local::LocalStorage::new(path.clone()))),
        Location::S3 { bucket, prefix } => Ok(Arc::new(s3::S3Storage::connect(bucket, prefix, options).await?)),
        Location::Kafka { .. } => Err(StorageError::Service {
            location: location.to_string(),
            operation: "open",
            message: "a Kafka topic is a source, not object storage".into(),
        }),
    }
}
