//! One conformance suite for the storage trait, passed by the local backend, by the S3
//! backend against a real S3-compatible server, and by the Azure Blob and Google Cloud
//! Storage backend against their emulators (Azurite; fake-gcs-server behind the proxy of
//! scripts/test-gcs-shim.py for the XML writes it lacks).

use crate::common::*;
use bytes::Bytes;
use fanout::location::Location;
use fanout::storage::{self, Conditional, DynStorage, ObjectMeta, Precondition, StorageError, StorageOptions};
use futures::{StreamExt, TryStreamExt};
use sha2::{Digest, Sha256};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

async fn keys(storage: &DynStorage, prefix: &str) -> Vec<String> {
    storage.list(prefix).map_ok(|o| o.key).try_collect().await.unwrap()
}

/// What every backend must do; `scratch` is a local folder for files to upload or download.
/// `enforces_conditions` is false only for a server known to ignore conditional writes
/// (Garage): the probe must then say so, which is what fanout's committer relies on.
async fn conformance(storage: DynStorage, scratch: &std::path::Path, enforces_conditions: bool) {
    // put, get, head; a missing object is NotFound, never empty
    storage.put("a/one.txt", Bytes::from_static(b"first")).await.unwrap();
    assert_eq!(&storage.get("a/one.txt").await.unwrap()[..], b"first");
    assert_eq!(storage.head("a/one.txt").await.unwrap().unwrap().size, 5);
    assert!(storage.head("a/missing").await.unwrap().is_none());
    assert!(matches!(storage.get("a/missing").await, Err(StorageError::NotFound { .. })));
    // overwrite: the new object whole
    storage.put("a/one.txt", Bytes::from_static(b"second version")).await.unwrap();
    assert_eq!(&storage.get("a/one.txt").await.unwrap()[..], b"second version");
    // keys that could escape are refused before any request
    for bad in ["../x", "a//b", "/abs", ""] {
        assert!(matches!(storage.put(bad, Bytes::new()).await, Err(StorageError::InvalidKey { .. })), "{bad:?}");
    }

    // ranges: middle, clipped at the end, past the end
    storage.put("r/digits", Bytes::from_static(b"0123456789")).await.unwrap();
    assert_eq!(&storage.get_range("r/digits", 2..5).await.unwrap()[..], b"234");
    assert_eq!(&storage.get_range("r/digits", 7..100).await.unwrap()[..], b"789");
    assert!(storage.get_range("r/digits", 10..20).await.unwrap().is_empty());
    assert!(matches!(storage.get_range("r/none", 0..1).await, Err(StorageError::NotFound { .. })));
    let appended = scratch.join("appended");
    std::fs::write(&appended, b"head:").unwrap();
    assert_eq!(storage.append_range("r/digits", 3..6, &appended).await.unwrap(), 3);
    assert_eq!(storage.append_range("r/digits", 8..50, &appended).await.unwrap(), 2);
    assert_eq!(std::fs::read(&appended).unwrap(), b"head:34589");

    // listing: every key under a folder prefix, in byte order, across pages
    let many: Vec<String> = (0..1100).map(|i| format!("list/k{i:04}")).collect();
    futures::stream::iter(many.clone())
        .map(|key| {
            let storage = storage.clone();
            async move { storage.put(&key, Bytes::from(key.clone())).await }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .unwrap();
    storage.put("list/sub/deeper", Bytes::from_static(b"x")).await.unwrap();
    storage.put("list-sibling", Bytes::from_static(b"x")).await.unwrap();
    let mut expected = many.clone();
    expected.push("list/sub/deeper".into());
    expected.sort();
    assert_eq!(keys(&storage, "list/").await, expected, "listing of a prefix with more than one page");
    let all = keys(&storage, "").await;
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(all, sorted, "keys come in byte order");
    assert!(all.contains(&"list-sibling".to_string()) && all.contains(&"a/one.txt".to_string()));
    assert!(keys(&storage, "nothing-here/").await.is_empty());
    assert_eq!(storage.list_dirs("").await.unwrap(), vec!["a", "list", "r"]);
    assert_eq!(storage.list_dirs("list/").await.unwrap(), vec!["sub"]);

    // files: upload (small and multipart-sized), download, batches
    let small = scratch.join("small");
    std::fs::write(&small, b"small file").unwrap();
    assert_eq!(storage.upload("f/small", &small).await.unwrap(), 10);
    let big = scratch.join("big");
    let big_bytes: Vec<u8> = (0..(40u32 << 20)).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    std::fs::write(&big, &big_bytes).unwrap();
    assert_eq!(storage.upload("f/big", &big).await.unwrap(), big_bytes.len() as u64);
    let fetched = scratch.join("fetched-big");
    assert_eq!(storage.download("f/big", &fetched).await.unwrap(), big_bytes.len() as u64);
    assert_eq!(Sha256::digest(std::fs::read(&fetched).unwrap()), Sha256::digest(&big_bytes), "40 MiB round trip");
    assert_eq!(
        &storage.get_range("f/big", (20 << 20)..(20 << 20) + 8).await.unwrap()[..],
        &big_bytes[20 << 20..(20 << 20) + 8]
    );
    let batch: Vec<(String, std::path::PathBuf)> = (0..5)
        .map(|i| {
            let path = scratch.join(format!("batch{i}"));
            std::fs::write(&path, format!("batch {i}")).unwrap();
            (format!("b/{i}"), path)
        })
        .collect();
    assert_eq!(storage.upload_many(batch).await.unwrap(), 35);
    let downloads: Vec<(String, std::path::PathBuf)> =
        (0..5).map(|i| (format!("b/{i}"), scratch.join(format!("down{i}")))).collect();
    assert_eq!(storage.download_many(downloads).await.unwrap(), 35);
    assert_eq!(std::fs::read_to_string(scratch.join("down3")).unwrap(), "batch 3");
    assert!(storage.download("b/none", &scratch.join("none")).await.unwrap_err().is_not_found());
    storage.put("e/empty", Bytes::new()).await.unwrap();
    assert_eq!(storage.download("e/empty", &scratch.join("empty")).await.unwrap(), 0);
    assert_eq!(std::fs::metadata(scratch.join("empty")).unwrap().len(), 0);

    // list_after: only keys sorting after the one named, in order, across pages
    let after: Vec<String> = storage.list_after("list/", "list/k0995").map_ok(|o| o.key).try_collect().await.unwrap();
    let mut expected_after: Vec<String> = (996..1100).map(|i| format!("list/k{i:04}")).collect();
    expected_after.push("list/sub/deeper".into());
    assert_eq!(after, expected_after, "list_after from the middle of the second page");
    let none: Vec<String> = storage.list_after("list/", "list/zzz").map_ok(|o| o.key).try_collect().await.unwrap();
    assert!(none.is_empty(), "nothing sorts after the last key: {none:?}");

    // copy: the whole object at its new key, the original untouched; a missing source fails
    assert_eq!(storage.copy("f/big", "c/big-copy").await.unwrap(), big_bytes.len() as u64);
    let copied = scratch.join("copied-big");
    storage.download("c/big-copy", &copied).await.unwrap();
    assert_eq!(Sha256::digest(std::fs::read(&copied).unwrap()), Sha256::digest(&big_bytes), "40 MiB copied");
    assert_eq!(storage.copy("r/digits", "c/digits").await.unwrap(), 10);
    assert_eq!(&storage.get("c/digits").await.unwrap()[..], b"0123456789");
    assert_eq!(&storage.get("r/digits").await.unwrap()[..], b"0123456789");
    assert!(storage.copy("c/none", "c/never").await.unwrap_err().is_not_found());
    assert!(storage.head("c/never").await.unwrap().is_none(), "a failed copy leaves nothing");

    // concat: small and large parts one after another, and an empty concatenation exists
    let mut parts: Vec<ObjectMeta> = Vec::new();
    for key in ["r/digits", "f/big", "e/empty", "f/small"] {
        parts.push(storage.head(key).await.unwrap().unwrap());
    }
    let total = 10 + big_bytes.len() as u64 + 10;
    assert_eq!(storage.concat(&parts, "c/joined", &scratch.join("concat")).await.unwrap(), total);
    let joined = scratch.join("joined");
    storage.download("c/joined", &joined).await.unwrap();
    let mut expected_joined = b"0123456789".to_vec();
    expected_joined.extend_from_slice(&big_bytes);
    expected_joined.extend_from_slice(b"small file");
    assert_eq!(Sha256::digest(std::fs::read(&joined).unwrap()), Sha256::digest(&expected_joined), "parts in order");
    assert_eq!(storage.concat(&[], "c/nothing", &scratch.join("concat")).await.unwrap(), 0);
    assert_eq!(storage.head("c/nothing").await.unwrap().unwrap().size, 0, "an empty concatenation exists");

    // delete: gone, and deleting again is fine
    storage.delete("a/one.txt").await.unwrap();
    storage.delete("a/one.txt").await.unwrap();
    assert!(storage.head("a/one.txt").await.unwrap().is_none());
    storage.check(true).await.unwrap();
    conditional_writes(&storage, enforces_conditions).await;
}

/// Conditional writes: create-only and replace-if-unchanged, one winner among racers.
async fn conditional_writes(storage: &DynStorage, enforced: bool) {
    let probed = storage::enforces_conditional_writes(storage.as_ref(), "cond/probe").await.unwrap();
    assert_eq!(probed, enforced, "the probe's answer");
    assert!(storage.head("cond/probe").await.unwrap().is_none(), "the probe cleans up");
    if !enforced {
        return;
    }
    let written = |outcome: Conditional| match outcome {
        Conditional::Written(version) => version,
        Conditional::Refused => panic!("refused"),
    };
    assert!(storage.get_versioned("cond/lock").await.unwrap().is_none());
    let first = written(storage.put_if("cond/lock", Bytes::from_static(b"one"), Precondition::Absent).await.unwrap());
    let again = storage.put_if("cond/lock", Bytes::from_static(b"two"), Precondition::Absent).await.unwrap();
    assert_eq!(again, Conditional::Refused, "a second create");
    assert_eq!(&storage.get("cond/lock").await.unwrap()[..], b"one", "a refused write leaves the object");
    let (read, read_version) = storage.get_versioned("cond/lock").await.unwrap().unwrap();
    assert_eq!(&read[..], b"one");
    let second = written(
        storage.put_if("cond/lock", Bytes::from_static(b"three"), Precondition::Current(read_version)).await.unwrap(),
    );
    assert_ne!(first, second, "a new version");
    let stale =
        storage.put_if("cond/lock", Bytes::from_static(b"four"), Precondition::Current(first.clone())).await.unwrap();
    assert_eq!(stale, Conditional::Refused, "a replacement of a version that is gone");
    assert_eq!(&storage.get("cond/lock").await.unwrap()[..], b"three");
    // Eight replacements of one version at once: exactly one wins.
    let racers = (0..8).map(|n| {
        let (storage, version) = (storage.clone(), second.clone());
        tokio::spawn(async move {
            storage.put_if("cond/lock", Bytes::from(format!("racer {n}")), Precondition::Current(version)).await
        })
    });
    let outcomes: Vec<Conditional> =
        futures::future::join_all(racers).await.into_iter().map(|joined| joined.unwrap().unwrap()).collect();
    let winners: Vec<usize> = (0..8).filter(|&n| outcomes[n] != Conditional::Refused).collect();
    assert_eq!(winners.len(), 1, "one winner: {outcomes:?}");
    assert_eq!(storage.get("cond/lock").await.unwrap(), Bytes::from(format!("racer {}", winners[0])));
    // A replacement of an object that is gone is refused, and creates nothing.
    storage.delete("cond/lock").await.unwrap();
    let gone = storage.put_if("cond/lock", Bytes::from_static(b"x"), Precondition::Current(first));
    assert_eq!(gone.await.unwrap(), Conditional::Refused);
    assert!(storage.head("cond/lock").await.unwrap().is_none());
}

#[test]
fn local_backend_passes_the_conformance_suite() {
    let work = tempfile::tempdir().unwrap();
    let scratch = work.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    runtime().block_on(async {
        let storage =
            storage::open(&Location::Local(work.path().join("root")), &StorageOptions::default()).await.unwrap();
        conformance(storage, &scratch, true).await;
    });
    // staged writes leave no temporary files behind
    for entry in walkdir::WalkDir::new(work.path().join("root")) {
        assert!(!entry.unwrap().file_name().to_string_lossy().starts_with(".fanout-tmp-"));
    }
}

#[test]
// Ignored (the runner counts it as skipped) when no S3 test server was configured at
// build time; scripts/test starts one and runs it.
#[cfg_attr(not(fanout_s3_server), ignore = "needs the S3 test server: run scripts/test")]
fn s3_backend_passes_the_conformance_suite() {
    let s3 = s3();
    let work = tempfile::tempdir().unwrap();
    let prefix = unique_prefix("conformance");
    runtime().block_on(async {
        let location = Location::S3 { bucket: s3.bucket.clone(), prefix };
        let storage = storage::open(&location, &StorageOptions::default()).await.unwrap();
        // Garage, the test server, ignores If-None-Match and If-Match (its README says so).
        conformance(storage, work.path(), false).await;
    });
}

#[test]
// Ignored (the runner counts it as skipped) when no S3 test server was configured at
// build time; scripts/test starts one and runs it.
#[cfg_attr(not(fanout_s3_server), ignore = "needs the S3 test server: run scripts/test")]
fn s3_errors_are_classified_before_any_work() {
    let s3 = s3();
    runtime().block_on(async {
        let missing = Location::S3 { bucket: "no-such-bucket-for-fanout".into(), prefix: String::new() };
        let storage = storage::open(&missing, &StorageOptions::default()).await.unwrap();
        let error = storage.check(false).await.unwrap_err();
        assert!(matches!(error, StorageError::NoSuchBucket { .. }), "{error}");

        let unreachable = StorageOptions { endpoint_url: Some("http://127.0.0.1:9".into()) };
        let location = Location::S3 { bucket: s3.bucket.clone(), prefix: String::new() };
        let storage = storage::open(&location, &unreachable).await.unwrap();
        let error = storage.check(false).await.unwrap_err();
        assert!(matches!(error, StorageError::Unreachable { .. }), "{error}");
        assert!(error.to_string().contains("127.0.0.1:9"), "{error}");
    });
}

#[test]
// Ignored (the runner counts it as skipped) when no Azure test server was configured at
// build time; scripts/test starts Azurite and runs it.
#[cfg_attr(not(fanout_azure_server), ignore = "needs the Azure test server: run scripts/test")]
fn azure_backend_passes_the_conformance_suite() {
    let azure = azure();
    let work = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let location = Location::Azure { container: azure.container.clone(), prefix: unique_prefix("conformance") };
        let storage = storage::open(&location, &StorageOptions::default()).await.unwrap();
        conformance(storage, work.path(), true).await;
    });
}

#[test]
// Ignored (the runner counts it as skipped) when no GCS test server was configured at
// build time; scripts/test starts fake-gcs-server and runs it.
#[cfg_attr(not(fanout_gcs_server), ignore = "needs the GCS test server: run scripts/test")]
fn gcs_backend_passes_the_conformance_suite() {
    let gcs = gcs();
    let work = tempfile::tempdir().unwrap();
    runtime().block_on(async {
        let location = Location::Gcs { bucket: gcs.bucket.clone(), prefix: unique_prefix("conformance") };
        let storage = storage::open(&location, &StorageOptions::default()).await.unwrap();
        conformance(storage, work.path(), true).await;
    });
}

#[test]
#[cfg_attr(not(fanout_azure_server), ignore = "needs the Azure test server: run scripts/test")]
fn azure_errors_are_classified_before_any_work() {
    let azure = azure();
    runtime().block_on(async {
        let missing = Location::Azure { container: "no-such-container-for-fanout".into(), prefix: String::new() };
        let storage = storage::open(&missing, &StorageOptions::default()).await.unwrap();
        let error = storage.check(false).await.unwrap_err();
        assert!(matches!(error, StorageError::NoSuchBucket { what: "container", .. }), "{error}");
        assert!(error.to_string().starts_with("az://no-such-container-for-fanout/: the container"), "{error}");
        // A missing blob of a container that exists is NotFound, not a missing container.
        let present = Location::Azure { container: azure.container.clone(), prefix: unique_prefix("errors") };
        let storage = storage::open(&present, &StorageOptions::default()).await.unwrap();
        storage.check(true).await.unwrap();
        assert!(storage.get("none").await.unwrap_err().is_not_found());
    });
}

#[test]
#[cfg_attr(not(fanout_gcs_server), ignore = "needs the GCS test server: run scripts/test")]
fn gcs_errors_are_classified_before_any_work() {
    let gcs = gcs();
    runtime().block_on(async {
        let missing = Location::Gcs { bucket: "no-such-bucket-for-fanout".into(), prefix: String::new() };
        let storage = storage::open(&missing, &StorageOptions::default()).await.unwrap();
        let error = storage.check(false).await.unwrap_err();
        assert!(matches!(error, StorageError::NoSuchBucket { what: "bucket", .. }), "{error}");
        assert!(error.to_string().starts_with("gs://no-such-bucket-for-fanout/: the bucket"), "{error}");
        let present = Location::Gcs { bucket: gcs.bucket.clone(), prefix: unique_prefix("errors") };
        let storage = storage::open(&present, &StorageOptions::default()).await.unwrap();
        storage.check(true).await.unwrap();
        assert!(storage.get("none").await.unwrap_err().is_not_found());
    });
}
