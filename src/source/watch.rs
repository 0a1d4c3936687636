//! Watching a source for objects as they arrive (`fanout watch`): an S3 prefix by listing
//! it (with `StartAfter`, at an interval that backs off while nothing changes), a local
//! folder by file-system notifications with a periodic rescan as a safety net. Owns what
//! counts as new (a key not seen before, or seen with another size or version), when a
//! local file is complete, and the numbering of the shards it makes. It reads the source and
//! sends shards to the coordinator; it writes nothing and runs nothing.

use super::kafka::{self, KafkaTopic};
use super::{Grouper, PlanError, Planned, Shard, ShardInput};
use crate::events::{Event, EventSink};
use crate::job::{Include, Job};
use crate::location::Location;
use crate::storage::local::{mtime_version, TEMP_PREFIX};
use crate::storage::{DynStorage, ObjectMeta};
use futures::StreamExt;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// The longest wait between listings of an idle S3 prefix.
const MAX_INTERVAL: Duration = Duration::from_secs(30);
/// Empty listings at the base interval before the interval starts doubling: a pause of a
/// few seconds between puts should not cost the next object a long wait.
const ROUNDS_BEFORE_BACKOFF: u32 = 5;
/// A prefix whose listing fits one page is listed whole every time (it costs the same one
/// request as a `StartAfter` listing, and it also sees overwritten objects).
const ONE_PAGE: usize = 1000;
/// A bigger prefix is listed whole this often (overwrites, keys that sort early); between
/// times only the keys after the last one seen.
const FULL_LISTING: Duration = Duration::from_secs(60);
/// A local folder is walked again this often, for changes its notifications missed.
const RESCAN: Duration = Duration::from_secs(30);

/// The version of an object a watch has taken: its size and ETag (or modification time).
pub type Seen = (u64, Option<String>);

fn seen_of(object: &ObjectMeta) -> Seen {
    (object.size, object.version.clone())
}

/// What a watch starts from.
pub struct WatchSpec {
    pub job: Job,
    /// The store watched, and where it is (a local folder is watched by notifications).
    pub storage: DynStorage,
    pub location: Location,
    /// Objects earlier runs took (committed, or about to be run again from `redo`).
    pub seen: HashMap<String, Seen>,
    /// The first shard number this run may give.
    pub first_id: u64,
    /// Shards an earlier run planned and never committed: they go first.
    pub redo: Vec<Shard>,
    /// Take what is there now (waiting for young local files to settle), then end.
    pub once: bool,
    pub stop: CancellationToken,
    pub events: EventSink,
}

/// Starts watching in the background; shards arrive on the returned channel as objects do.
/// The channel ends with `Done` after a `--once` pass or a stop, or with the error that
/// made watching impossible (a folder that cannot be watched).
pub fn start(spec: WatchSpec) -> mpsc::Receiver<Result<Planned, PlanError>> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let mut emitter = Emitter {
            grouper: Grouper::new(spec.job.input.shard.clone(), &spec.events),
            storage: spec.storage.clone(),
            tx: tx.clone(),
            seen: spec.seen,
        };
        emitter.grouper.next_id = spec.first_id;
        for shard in spec.redo {
            if tx.send(Ok(Planned::Shard(shard))).await.is_err() {
                return;
            }
        }
        let watch = Watching {
            include: spec.job.input.include.clone(),
            interval: Duration::from_millis(spec.job.watch.interval_ms),
            settle: Duration::from_millis(spec.job.watch.settle_ms),
            once: spec.once,
            stop: spec.stop,
            events: spec.events.clone(),
        };
        let result = match &spec.location {
            Location::Local(root) => watch.local(root.clone(), &mut emitter).await,
            _ => watch.listing(&mut emitter).await,
        };
        let totals = emitter.grouper.totals.clone();
        let _ = tx.send(result.map(|()| Planned::Done(totals))).await;
    });
    rx
}

/// What a watch over a Kafka topic starts from.
pub struct TopicWatchSpec {
    pub topic: Arc<KafkaTopic>,
    pub job: Job,
    /// Each partition's first offset no stored shard holds.
    pub from: BTreeMap<i32, i64>,
    pub first_id: u64,
    /// Shards stored and never committed: they go first.
    pub redo: Vec<Shard>,
    /// Take what the partitions hold now, then end.
    pub once: bool,
    pub stop: CancellationToken,
    pub events: EventSink,
}

/// Starts watching a topic in the background; shards arrive on the returned channel as
/// they close (full, or `watch.max_wait` after their first record).
pub fn start_topic(spec: TopicWatchSpec) -> mpsc::Receiver<Result<Planned, PlanError>> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        let rule = spec.job.input.shard.clone();
        let mut grouper = Grouper::new(rule.clone(), &spec.events);
        grouper.next_id = spec.first_id;
        for shard in spec.redo {
            if tx.send(Ok(Planned::Shard(shard))).await.is_err() {
                return;
            }
        }
        let (cut_tx, mut cuts) = mpsc::channel(64);
        let (topic, from, stop, once) = (spec.topic.clone(), spec.from, spec.stop.clone(), spec.once);
        let max_wait = Duration::from_millis(spec.job.watch.max_wait_ms);
        let reader =
            tokio::task::spawn_blocking(move || kafka::follow(&topic, rule, from, max_wait, once, &stop, &cut_tx));
        while let Some(cut) = cuts.recv().await {
            let shard = super::shard_of_cut(&mut grouper, &spec.topic, cut);
            if tx.send(Ok(Planned::Shard(shard))).await.is_err() {
                return;
            }
        }
        let result = reader.await.expect("watching a topic does not panic").map_err(PlanError::from);
        let _ = tx.send(result.map(|()| Planned::Done(grouper.totals.clone()))).await;
    });
    rx
}

/// Turns arrived objects into shards and sends them on.
struct Emitter<'a> {
    grouper: Grouper<'a>,
    storage: DynStorage,
    tx: mpsc::Sender<Result<Planned, PlanError>>,
    seen: HashMap<String, Seen>,
}

impl Emitter<'_> {
    fn is_new(&self, object: &ObjectMeta) -> bool {
        self.seen.get(&object.key) != Some(&seen_of(object))
    }

    /// Sends the shards of `objects`; false once the coordinator is gone.
    async fn emit(&mut self, objects: Vec<ObjectMeta>) -> Result<bool, PlanError> {
        if objects.is_empty() {
            return Ok(true);
        }
        for object in &objects {
            self.seen.insert(object.key.clone(), seen_of(object));
        }
        for shard in super::shards_of_batch(&mut self.grouper, &self.storage, objects).await? {
            if self.tx.send(Ok(Planned::Shard(shard))).await.is_err() {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

struct Watching {
    include: Include,
    interval: Duration,
    settle: Duration,
    once: bool,
    stop: CancellationToken,
    events: EventSink,
}

impl Watching {
    /// An S3 prefix (or any storage): listed whole while it fits one page, otherwise from
    /// the last key seen, with a whole listing every `FULL_LISTING`.
    async fn listing(&self, emitter: &mut Emitter<'_>) -> Result<(), PlanError> {
        let mut wait = Duration::ZERO;
        let mut idle_rounds = 0;
        let mut last_key: Option<String> = None;
        let mut last_full: Option<Instant> = None;
        let mut small = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return Ok(()),
            }
            let full = small || last_full.is_none_or(|at| at.elapsed() >= FULL_LISTING) || last_key.is_none();
            let mut listed = match (full, &last_key) {
                (false, Some(after)) => emitter.storage.list_after("", after),
                _ => emitter.storage.list(""),
            };
            let mut arrived = Vec::new();
            let mut count = 0;
            let mut failure = None;
            while let Some(object) = listed.next().await {
                match object {
                    Ok(object) => {
                        count += 1;
                        if last_key.as_ref().is_none_or(|last| object.key > *last) {
                            last_key = Some(object.key.clone());
                        }
                        if self.include.matches(&object.key) && emitter.is_new(&object) {
                            arrived.push(object);
                        }
                    }
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if let Some(error) = failure {
                if self.once {
                    return Err(PlanError::Storage(error));
                }
                // A listing that fails (the store restarting, the network down) is tried
                // again later; the watch itself goes on.
                self.events.emit(Event::Note(format!("listing failed, trying again: {error}")));
                wait = (wait * 2).clamp(self.interval, MAX_INTERVAL.max(self.interval));
                continue;
            }
            if full {
                small = count <= ONE_PAGE;
                last_full = Some(Instant::now());
            }
            let found = !arrived.is_empty();
            if !emitter.emit(arrived).await? || self.once {
                return Ok(());
            }
            if found {
                idle_rounds = 0;
                wait = self.interval;
            } else {
                idle_rounds += 1;
                wait = if idle_rounds <= ROUNDS_BEFORE_BACKOFF {
                    self.interval
                } else {
                    (wait * 2).min(MAX_INTERVAL.max(self.interval))
                };
            }
        }
    }

    /// A local folder: notifications say which files changed; a file is taken when it was
    /// closed after writing or renamed into place (it is complete), or else once its size
    /// and modification time have not changed for `settle`.
    async fn local(&self, root: PathBuf, emitter: &mut Emitter<'_>) -> Result<(), PlanError> {
        use notify::Watcher;
        let (events_tx, mut events_rx) = mpsc::unbounded_channel();
        let mut watcher = notify::recommended_watcher(move |event| {
            let _ = events_tx.send(event);
        })
        .map_err(|e| watch_error(&root, e))?;
        if !self.once {
            watcher.watch(&root, notify::RecursiveMode::Recursive).map_err(|e| watch_error(&root, e))?;
        }
        // Everything there at the start (after the watch began, so nothing falls between).
        let mut waiting: HashMap<String, bool> = HashMap::new();
        self.rescan(emitter, &mut waiting).await?;
        loop {
            let (ready, next_due) = self.settled(&root, emitter, &mut waiting);
            if !emitter.emit(ready).await? {
                return Ok(());
            }
            if self.once && waiting.is_empty() {
                return Ok(());
            }
            let due = next_due.map(tokio::time::Instant::from_std);
            tokio::select! {
                event = events_rx.recv() => {
                    let mut rescan = false;
                    let mut next = event;
                    // Take every notification already queued before looking at files.
                    while let Some(event) = next {
                        rescan |= self.note_event(&root, event, &mut waiting);
                        next = events_rx.try_recv().ok();
                    }
                    if rescan {
                        self.rescan(emitter, &mut waiting).await?;
                    }
                }
                _ = tokio::time::sleep_until(due.unwrap_or_else(tokio::time::Instant::now)), if due.is_some() => {}
                _ = tokio::time::sleep(RESCAN), if !self.once => self.rescan(emitter, &mut waiting).await?,
                _ = self.stop.cancelled() => return Ok(()),
            }
        }
    }

    /// Every file that differs from what was taken becomes a candidate (not known complete).
    async fn rescan(&self, emitter: &Emitter<'_>, waiting: &mut HashMap<String, bool>) -> Result<(), PlanError> {
        let mut listed = emitter.storage.list("");
        while let Some(object) = listed.next().await {
            let object = object?;
            if self.include.matches(&object.key) && emitter.is_new(&object) {
                waiting.entry(object.key).or_insert(false);
            }
        }
        Ok(())
    }

    /// Notes the files a notification names; true when the folder must be walked again
    /// (the kernel's queue overflowed, or a folder appeared whose files may predate its watch).
    fn note_event(
        &self,
        root: &Path,
        event: notify::Result<notify::Event>,
        waiting: &mut HashMap<String, bool>,
    ) -> bool {
        use notify::event::{AccessKind, AccessMode, CreateKind, EventKind, ModifyKind, RenameMode};
        let Ok(event) = event else { return true };
        if event.need_rescan() {
            return true;
        }
        let (complete, paths): (bool, &[PathBuf]) = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => (true, &event.paths),
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => (true, &event.paths),
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => (true, &event.paths[event.paths.len().min(1)..]),
            EventKind::Create(CreateKind::Folder) => return true,
            EventKind::Create(_) | EventKind::Modify(_) => (false, &event.paths),
            _ => return false,
        };
        for path in paths {
            if path.is_dir() {
                return true;
            }
            let Some(key) = key_of(root, path) else { continue };
            if self.include.matches(&key) {
                let known_complete = waiting.entry(key).or_insert(false);
                *known_complete |= complete;
            }
        }
        false
    }

    /// The waiting files that are ready now, and when the next may be.
    fn settled(
        &self,
        root: &Path,
        emitter: &Emitter<'_>,
        waiting: &mut HashMap<String, bool>,
    ) -> (Vec<ObjectMeta>, Option<Instant>) {
        let now = SystemTime::now();
        let mut ready = Vec::new();
        let mut next_due: Option<Instant> = None;
        waiting.retain(|key, complete| {
            let Ok(meta) = std::fs::metadata(root.join(key)) else { return false };
            if !meta.is_file() {
                return false;
            }
            let object = ObjectMeta { key: key.clone(), size: meta.len(), version: Some(mtime_version(&meta)) };
            if !emitter.is_new(&object) {
                return false;
            }
            let age = meta.modified().ok().and_then(|at| now.duration_since(at).ok()).unwrap_or_default();
            if *complete || age >= self.settle {
                ready.push(object);
                return false;
            }
            let due = Instant::now() + (self.settle - age);
            next_due = Some(next_due.map_or(due, |next| next.min(due)));
            true
        });
        ready.sort_by(|a, b| a.key.cmp(&b.key));
        (ready, next_due)
    }
}

/// The key of a file under the watched folder; none for fanout's own temporary files and
/// names that are not UTF-8 (which a listing refuses too).
fn key_of(root: &Path, path: &Path) -> Option<String> {
    let relative = path.strip_prefix(root).ok()?;
    let key = relative.to_str()?.to_string();
    let temporary = relative.components().any(|c| c.as_os_str().to_string_lossy().starts_with(TEMP_PREFIX));
    (!temporary && !key.is_empty()).then_some(key)
}

fn watch_error(root: &Path, error: notify::Error) -> PlanError {
    PlanError::Storage(crate::storage::StorageError::Io {
        location: root.display().to_string(),
        source: std::io::Error::other(format!("cannot watch for changes: {error}")),
    })
}

/// Where a watch that already ran goes on from.
#[derive(Default)]
pub struct ResumePoint {
    /// The objects its shards took, at the versions taken.
    pub seen: HashMap<String, Seen>,
    /// A Kafka watch: per partition, the first offset its stored shards hold and the first
    /// they do not, and the ranges committed successfully.
    pub topic_first: BTreeMap<i32, i64>,
    pub topic_from: BTreeMap<i32, i64>,
    pub topic_done: Vec<(i32, i64, i64)>,
    /// The committed shards that took each object (one per version).
    pub object_shards: HashMap<String, Vec<u64>>,
    /// Shards it planned but never committed: run first.
    pub redo: Vec<Shard>,
    pub next_id: u64,
}

/// The starting point of a watch that already ran, from its stored plan and the shards its
/// journal committed (true for those that succeeded).
pub fn resume_point(plan: Vec<Shard>, committed: &BTreeMap<u64, bool>) -> ResumePoint {
    let mut seen = HashMap::new();
    let mut object_shards = HashMap::new();
    let mut redo: std::collections::BTreeMap<u64, Shard> = std::collections::BTreeMap::new();
    let mut next_id = committed.keys().next_back().map_or(0, |last| last + 1);
    let (mut topic_first, mut topic_from, mut topic_done) = (BTreeMap::new(), BTreeMap::new(), Vec::new());
    for shard in plan {
        next_id = next_id.max(shard.id + 1);
        if let ShardInput::Kafka { partition, start, end, .. } = shard.input {
            let first = topic_first.entry(partition).or_insert(start);
            *first = (*first).min(start);
            let from = topic_from.entry(partition).or_insert(end);
            *from = (*from).max(end);
            if committed.get(&shard.id).copied().unwrap_or(false) {
                topic_done.push((partition, start, end));
            }
        }
        if let ShardInput::Objects { objects } = &shard.input {
            for object in objects {
                // The plan is in shard order: a later shard took a later version.
                seen.insert(object.key.clone(), seen_of(object));
                // Redone shards take their objects again when dispatched.
                if committed.contains_key(&shard.id) {
                    object_shards.entry(object.key.clone()).or_insert_with(Vec::new).push(shard.id);
                }
            }
        }
        if !committed.contains_key(&shard.id) {
            redo.insert(shard.id, shard);
        }
    }
    ResumePoint {
        seen,
        topic_first,
        topic_from,
        topic_done,
        object_shards,
        redo: redo.into_values().collect(),
        next_id,
    }
}
