//! The right to commit a job whose workers an engine runs (a Kubernetes Indexed Job, a cloud
//! array): one committer at a time, recorded in DEST beside the shares as who holds it and
//! when they last renewed it. Owns taking, renewing, losing and giving up that record; it
//! knows nothing of what the committer does while it holds it.
//!
//! Where the store enforces conditional writes (local folders, Azure Blob, Google Cloud
//! Storage, AWS S3; found by a probe, not assumed) the lease is a lock: it is taken by a
//! create-only write or by replacing exactly the lapsed record that was read, renewed by
//! replacing exactly its own last record, and a holder whose renewal is refused has lost it
//! and is told so ([`CommitterLease::lost`]) before a second committer can act on it. Where
//! the store ignores conditions (Garage), it stays a lease: it stops the everyday mistake of a
//! second `--follow`, not two committers started in the same instant.

use crate::storage::{self, Conditional, DynStorage, Precondition, StorageError, Version};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_util::sync::CancellationToken;

/// A committer that has not renewed its lease for this long is taken to be gone.
pub const LEASE_LAPSES: Duration = Duration::from_secs(20);
/// How often the holder renews.
const RENEW_EVERY: Duration = Duration::from_secs(5);
/// Takes of a lease that another committer raced for, before giving up.
const TAKE_ATTEMPTS: usize = 3;

#[derive(Debug, thiserror::Error)]
pub enum LeaseError {
    #[error("another committer ({0}) holds job {1}; stop it first, or wait {2}s after it died")]
    Held(String, String, u64),
    #[error("{0}")]
    Storage(#[from] StorageError),
}

/// The lease's record in DEST.
#[derive(Serialize, Deserialize)]
struct Committer {
    who: String,
    renewed_ms: u64,
    #[serde(default)]
    host: String,
    #[serde(default)]
    pid: u32,
}

impl Committer {
    /// Still committing: renewed lately, and not a process of this host that has ended.
    fn holds(&self, host: &str) -> bool {
        let age = Duration::from_millis(unix_ms().saturating_sub(self.renewed_ms));
        let ended_here = self.host == host && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists();
        age < LEASE_LAPSES && !ended_here
    }
}

fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// How the lease is kept on this store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Conditional writes: two committers cannot both hold it.
    Lock,
    /// Plain writes (the store ignores conditions): a lease read before it is written.
    Lease,
}

/// Held while a committer commits; renewed in the background until released or dropped.
pub struct CommitterLease {
    dest: DynStorage,
    key: String,
    guard: Guard,
    stop: CancellationToken,
    lost: CancellationToken,
}

impl CommitterLease {
    /// Takes the lease at `key` (in DEST) for job `job_id`, or says who holds it.
    pub async fn take(dest: &DynStorage, key: &str, job_id: &str) -> Result<CommitterLease, LeaseError> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        let pid = std::process::id();
        let who = format!("pid {pid} on {host}");
        let record = {
            let (who, host) = (who.clone(), host.clone());
            move || {
                let holder = Committer { who: who.clone(), renewed_ms: unix_ms(), host: host.clone(), pid };
                Bytes::from(serde_json::to_vec(&holder).expect("a lease serializes"))
            }
        };
        // Beside the record, under a name no listing of the record's own key finds.
        let folder = key.rsplit_once('/').map(|(folder, _)| format!("{folder}/")).unwrap_or_default();
        static PROBES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = PROBES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let probe = format!("{folder}conditional-write-probe-{pid}-{}-{n}", unix_ms());
        let guard =
            if storage::enforces_conditional_writes(dest.as_ref(), &probe).await? { Guard::Lock } else { Guard::Lease };
        let held = |holder: Committer| LeaseError::Held(holder.who, job_id.to_string(), LEASE_LAPSES.as_secs());
        let mut version = None;
        for _ in 0..TAKE_ATTEMPTS {
            let current = dest.get_versioned(key).await?;
            if let Some((body, _)) = &current {
                if let Ok(holder) = serde_json::from_slice::<Committer>(body) {
                    if holder.holds(&host) {
                        return Err(held(holder));
                    }
                }
            }
            if guard == Guard::Lease {
                dest.put(key, record()).await?;
                break;
            }
            let precondition = match current {
                None => Precondition::Absent,
                Some((_, version)) => Precondition::Current(version),
            };
            if let Conditional::Written(written) = dest.put_if(key, record(), precondition).await? {
                version = Some(written);
                break;
            }
            // Another committer wrote in between: read who, and try again.
        }
        if guard == Guard::Lock && version.is_none() {
            let holder = dest.get(key).await.ok().and_then(|body| serde_json::from_slice::<Committer>(&body).ok());
            let who = holder.map(|holder| holder.who).unwrap_or_else(|| "a committer starting now".to_string());
            return Err(LeaseError::Held(who, job_id.to_string(), LEASE_LAPSES.as_secs()));
        }
        let lease = CommitterLease {
            dest: dest.clone(),
            key: key.to_string(),
            guard,
            stop: CancellationToken::new(),
            lost: CancellationToken::new(),
        };
        tokio::spawn(renew(dest.clone(), key.to_string(), version, record, lease.stop.clone(), lease.lost.clone()));
        Ok(lease)
    }

    /// How the lease is kept on this store.
    pub fn guard(&self) -> Guard {
        self.guard
    }

    /// Cancelled when the lease is lost: a renewal was refused (another committer took it
    /// over, thinking this one gone), or none succeeded for [`LEASE_LAPSES`]. The holder must
    /// then stop committing.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Gives the lease up, so that the next committer need not wait for it to lapse.
    pub async fn release(self) {
        self.stop.cancel();
        if !self.lost.is_cancelled() {
            let _ = self.dest.delete(&self.key).await;
        }
    }
}

impl Drop for CommitterLease {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Renews the lease every [`RENEW_EVERY`] until `stop`; cancels `lost` when it cannot.
/// `version` is the record's version under a lock, `None` under a plain lease.
async fn renew(
    dest: DynStorage,
    key: String,
    mut version: Option<Version>,
    record: impl Fn() -> Bytes,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    let mut renewed = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(RENEW_EVERY) => {}
        }
        let outcome = match &version {
            None => dest.put(&key, record()).await.map(|_| None),
            Some(mine) => match dest.put_if(&key, record(), Precondition::Current(mine.clone())).await {
                Ok(Conditional::Written(next)) => Ok(Some(next)),
                Ok(Conditional::Refused) => {
                    lost.cancel();
                    return;
                }
                Err(e) => Err(e),
            },
        };
        match outcome {
            Ok(next) => {
                version = next.or(version);
                renewed = tokio::time::Instant::now();
            }
            // A store that did not answer: keep trying until the lease would have lapsed.
            Err(_) if renewed.elapsed() < LEASE_LAPSES - RENEW_EVERY => {}
            Err(_) => {
                if version.is_some() {
                    lost.cancel();
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::local::LocalStorage;
    use std::sync::Arc;

    #[tokio::test]
    async fn a_second_committer_is_refused_and_a_taken_over_holder_learns_it_lost() {
        let root = tempfile::tempdir().unwrap();
        let dest: DynStorage = Arc::new(LocalStorage::new(root.path().to_path_buf()));
        let first = CommitterLease::take(&dest, "shares/committer.json", "job1").await.unwrap();
        assert_eq!(first.guard(), Guard::Lock, "a local folder enforces conditional writes");
        let error = CommitterLease::take(&dest, "shares/committer.json", "job1").await.err().expect("refused");
        assert!(error.to_string().contains("holds job job1"), "{error}");
        // A committer elsewhere that found the lease lapsed replaces it: the first must learn.
        let (_, version) = dest.get_versioned("shares/committer.json").await.unwrap().unwrap();
        let other = br#"{"who":"pid 1 on elsewhere","renewed_ms":1,"host":"elsewhere","pid":1}"#;
        let taken = dest.put_if("shares/committer.json", Bytes::from_static(other), Precondition::Current(version));
        assert!(matches!(taken.await.unwrap(), Conditional::Written(_)));
        tokio::time::timeout(RENEW_EVERY * 3, first.lost().cancelled()).await.expect("the holder learns it lost");
        first.release().await;
        assert_eq!(
            &dest.get("shares/committer.json").await.unwrap()[..],
            other,
            "a lost lease is not deleted on release"
        );
        // The record above has lapsed: a new committer takes it over.
        let next = CommitterLease::take(&dest, "shares/committer.json", "job1").await.unwrap();
        next.release().await;
        assert!(dest.head("shares/committer.json").await.unwrap().is_none());
        let leftovers: Vec<_> = std::fs::read_dir(root.path().join("shares")).unwrap().collect();
        assert!(leftovers.is_empty(), "no probe or temporary file is left: {leftovers:?}");
    }

    /// Six committers started at once on one job: how it is guarded, and how many hold it.
    async fn racing_committers(storage: DynStorage) -> (Guard, usize) {
        let key = "shares/committer.json";
        let racers = (0..6).map(|_| {
            let storage = storage.clone();
            tokio::spawn(async move { CommitterLease::take(&storage, key, "job").await })
        });
        let taken: Vec<_> = futures::future::join_all(racers).await.into_iter().map(|joined| joined.unwrap()).collect();
        let guard = taken.iter().flatten().next().expect("one committer holds it").guard();
        let holders = taken.iter().filter(|taken| taken.is_ok()).count();
        for refused in taken.iter().filter_map(|taken| taken.as_ref().err()) {
            assert!(refused.to_string().contains("holds job job"), "{refused}");
        }
        for lease in taken.into_iter().flatten() {
            lease.release().await;
        }
        (guard, holders)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    // Ignored (the runner counts it as skipped) when the servers were not configured at
    // build time; scripts/test starts Garage, Azurite and fake-gcs-server and runs it.
    #[cfg_attr(
        not(all(fanout_azure_server, fanout_gcs_server, fanout_s3_server)),
        ignore = "needs the S3, Azure and GCS test servers: run scripts/test"
    )]
    async fn the_lease_is_a_lock_where_the_store_enforces_conditional_writes() {
        use crate::location::Location;
        let env = |name: &str| std::env::var(name).unwrap_or_else(|_| panic!("{name} (scripts/test sets it)"));
        let prefix = format!("lease-{}-{}/", std::process::id(), unix_ms());
        let work = tempfile::tempdir().unwrap();
        let locations = [
            (Location::Local(work.path().to_path_buf()), Guard::Lock),
            (Location::Azure { container: env("FANOUT_TEST_AZURE_CONTAINER"), prefix: prefix.clone() }, Guard::Lock),
            (Location::Gcs { bucket: env("FANOUT_TEST_GCS_BUCKET"), prefix: prefix.clone() }, Guard::Lock),
            // Garage ignores If-None-Match: the probe finds it, and it stays a lease.
            (Location::S3 { bucket: env("FANOUT_TEST_BUCKET"), prefix: prefix.clone() }, Guard::Lease),
        ];
        for (location, expected) in locations {
            let storage = crate::storage::open(&location, &Default::default()).await.unwrap();
            let (guard, holders) = racing_committers(storage).await;
            assert_eq!(guard, expected, "{location}");
            if guard == Guard::Lock {
                assert_eq!(holders, 1, "{location}: exactly one of six racing committers holds the lock");
            }
        }
    }
}
