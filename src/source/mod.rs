//! Sources and planning: where a job's data comes from, and how it becomes a stream of
//! shards. This file owns the shard's identity (its number and fingerprint), opening a
//! source (a folder or an S3 prefix through `storage`, a topic through [`kafka`]), the
//! include globs and the shard rules (per object, N objects, N bytes, N rows, byte chunks).
//! Beside it: [`records`] cuts big files into record shards, [`kafka`] reads topics, and
//! [`watch`] follows a source for what arrives. Streamed: shards leave as the listing
//! arrives, so a million objects are never in memory at once. It reads the source and
//! writes nothing.

pub mod kafka;
pub mod records;
pub mod watch;

use crate::events::{Event, EventSink};
use crate::job::{Include, Job, KafkaStart, PartitionBounds, ShardRule};
use crate::location::Location;
use crate::storage::{self, DynStorage, ObjectMeta, StorageError, StorageOptions, StorageResult};
use futures::StreamExt;
use kafka::{Cut, KafkaTopic};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use tokio::sync::mpsc;

/// One unit of work: one invocation's input.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shard {
    pub id: u64,
    #[serde(flatten)]
    pub input: ShardInput,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum ShardInput {
    /// Whole objects, staged as files under `/in`.
    Objects { objects: Vec<ObjectMeta> },
    /// A byte range of one object, fed on stdin; `header` is the length of a CSV header
    /// row that precedes the range on stdin (0 when none).
    Records { key: String, start: u64, end: u64, header: u64 },
    /// Offsets `start..end` of one partition of a Kafka topic, fed on stdin in the job's
    /// record format; `bytes` is that stdin's size.
    Kafka { partition: i32, start: i64, end: i64, records: u64, bytes: u64 },
}

impl Shard {
    /// The key of the shard's object when it reads exactly one (a command's `{in}`).
    pub fn only_object(&self) -> Option<&str> {
        match &self.input {
            ShardInput::Objects { objects } if objects.len() == 1 => Some(&objects[0].key),
            _ => None,
        }
    }

    pub fn bytes_in(&self) -> u64 {
        match &self.input {
            ShardInput::Objects { objects } => objects.iter().map(|o| o.size).sum(),
            ShardInput::Records { start, end, header, .. } => end - start + header,
            ShardInput::Kafka { bytes, .. } => *bytes,
        }
    }

    /// A short hash of what the shard reads: resuming checks it so that a source that
    /// changed since the job started cannot pass its old commits off as current.
    pub fn fingerprint(&self) -> String {
        let mut hasher = Sha256::new();
        match &self.input {
            ShardInput::Objects { objects } => {
                for object in objects {
                    hasher.update(object.key.as_bytes());
                    hasher.update([0]);
                    hasher.update(object.size.to_le_bytes());
                }
            }
            ShardInput::Records { key, start, end, header } => {
                hasher.update(key.as_bytes());
                hasher.update([1]);
                for n in [start, end, header] {
                    hasher.update(n.to_le_bytes());
                }
            }
            ShardInput::Kafka { partition, start, end, .. } => {
                hasher.update([2]);
                hasher.update(partition.to_le_bytes());
                hasher.update(start.to_le_bytes());
                hasher.update(end.to_le_bytes());
            }
        }
        let digest = hasher.finalize();
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// A one-line description for `fanout plan`.
    pub fn describe(&self) -> String {
        match &self.input {
            ShardInput::Objects { objects } if objects.len() == 1 => {
                format!("{} ({})", objects[0].key, crate::units::format_size(objects[0].size))
            }
            ShardInput::Objects { objects } => format!(
                "{} objects, {}: {} .. {}",
                objects.len(),
                crate::units::format_size(self.bytes_in()),
                objects.first().map(|o| o.key.as_str()).unwrap_or_default(),
                objects.last().map(|o| o.key.as_str()).unwrap_or_default()
            ),
            ShardInput::Records { key, start, end, header } => format!(
                "{key} bytes {start}..{end}{}",
                if *header > 0 { format!(" (+{header} byte header)") } else { String::new() }
            ),
            ShardInput::Kafka { partition, start, end, records, .. } => {
                format!("partition {partition} offsets {start}..{end} ({records} records)")
            }
        }
    }

    /// True when the shard's input is records on stdin (its stdout is an output object).
    pub fn is_records(&self) -> bool {
        !matches!(self.input, ShardInput::Objects { .. })
    }

    /// The key a record shard's stdout is published at: `part-NNNNN<ext>` for a range of an
    /// object (with that object's extension), `part-pPPP-FIRST-LAST` for a Kafka range.
    pub fn stdout_key(&self) -> Option<String> {
        match &self.input {
            ShardInput::Records { key, .. } => {
                let ext = extension_of(key).map(|e| format!(".{e}")).unwrap_or_default();
                Some(format!("part-{:05}{ext}", self.id))
            }
            ShardInput::Kafka { partition, start, end, .. } => Some(kafka::output_key(*partition, *start, *end)),
            ShardInput::Objects { .. } => None,
        }
    }
}

fn extension_of(key: &str) -> Option<&str> {
    let name = key.rsplit('/').next()?;
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty()).then_some(ext)
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("input.source: {0} does not exist")]
    SourceMissing(Location),
    #[error("input.source: {0} holds no objects")]
    Empty(Location),
    #[error("input.include: no object under {folder} matches {}", include.join(", "))]
    NothingMatches { folder: Location, include: Vec<String> },
    #[error("reading the stored plan: {0}")]
    Stored(String),
    #[error("input.source: {0} has no records to read from the start position (input.kafka.start)")]
    NoRecords(Location),
    #[error("input.source: {0}")]
    Kafka(#[from] kafka::KafkaSourceError),
    #[error("input.source: {0}")]
    Storage(#[from] StorageError),
}

impl PlanError {
    /// The job field the error is about, when it is one.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            PlanError::SourceMissing(_)
            | PlanError::Empty(_)
            | PlanError::Storage(_)
            | PlanError::NoRecords(_)
            | PlanError::Kafka(_) => Some("input.source"),
            PlanError::NothingMatches { .. } => Some("input.include"),
            _ => None,
        }
    }
}

/// What a source's shards are read from when they are staged: the store that holds its
/// objects, or a topic's partitions.
#[derive(Clone, Debug)]
pub enum Reader {
    Store(DynStorage),
    Topic(Arc<KafkaTopic>),
}

/// The input, opened: a store's folder or one object in it, or a topic.
pub struct Source {
    pub reader: Reader,
    pub location: Location,
    /// Set when the source names one object rather than a folder.
    pub single: Option<ObjectMeta>,
}

impl Reader {
    /// Appends bytes `range` of object `key`, or records `range` of partition `key` of a
    /// topic, to the local file at `path`; returns the bytes added.
    pub async fn append_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
        path: &std::path::Path,
    ) -> StorageResult<u64> {
        match self {
            Reader::Store(store) => store.append_range(key, range, path).await,
            Reader::Topic(topic) => {
                let partition = key.parse().map_err(|_| StorageError::Service {
                    location: topic.location().to_string(),
                    operation: "read",
                    message: format!("{key:?} is not a partition of the topic"),
                })?;
                topic.append_records(partition, range.start as i64..range.end as i64, path).await
            }
        }
    }
}

impl Source {
    /// The topic of a Kafka source.
    pub fn topic(&self) -> Option<&Arc<KafkaTopic>> {
        match &self.reader {
            Reader::Topic(topic) => Some(topic),
            Reader::Store(_) => None,
        }
    }
}

/// Opens the job's source and decides whether it is a folder or one object.
pub async fn open_source(job: &Job, options: &StorageOptions) -> Result<Source, PlanError> {
    let location = job.input.source.clone();
    match &location {
        Location::Kafka { .. } => {
            let settings = job.input.kafka.as_ref().expect("a kafka:// source has [input.kafka]");
            let topic = KafkaTopic::connect(&location, settings).await?;
            Ok(Source { reader: Reader::Topic(topic), location, single: None })
        }
        Location::Local(path) => {
            let meta = tokio::fs::metadata(path).await.map_err(|_| PlanError::SourceMissing(location.clone()))?;
            if meta.is_file() {
                let parent = path.parent().unwrap_or(path).to_path_buf();
                let key = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                let storage = storage::open(&Location::Local(parent), options).await?;
                let single = Some(ObjectMeta::new(key, meta.len()));
                return Ok(Source { reader: Reader::Store(storage), location, single });
            }
            let storage = storage::open(&location, options).await?;
            Ok(Source { reader: Reader::Store(storage), location, single: None })
        }
        Location::S3 { .. } | Location::Azure { .. } | Location::Gcs { .. } => {
            let (_, prefix) = location.bucket_and_prefix().expect("an object store");
            if !prefix.is_empty() && !prefix.ends_with('/') {
                let (parent, name) = match prefix.rsplit_once('/') {
                    Some((parent, name)) => (format!("{parent}/"), name.to_string()),
                    None => (String::new(), prefix.to_string()),
                };
                let parent_storage = storage::open(&location.with_prefix(parent), options).await?;
                parent_storage.check(false).await?;
                if let Some(object) = parent_storage.head(&name).await? {
                    return Ok(Source { reader: Reader::Store(parent_storage), location, single: Some(object) });
                }
            }
            let folder = location.with_prefix(if prefix.is_empty() || prefix.ends_with('/') {
                prefix.to_string()
            } else {
                format!("{prefix}/")
            });
            let storage = storage::open(&folder, options).await?;
            storage.check(false).await?;
            Ok(Source { reader: Reader::Store(storage), location: folder, single: None })
        }
    }
}

/// Totals of a finished plan.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PlanTotals {
    pub shards: u64,
    pub objects: u64,
    pub bytes: u64,
    /// How long listing and planning took.
    #[serde(default)]
    pub elapsed_ms: u64,
}

/// Starts planning in the background. Shards arrive on the returned channel in id order;
/// the last message is `Ok(totals)` or the error that stopped planning. The channel is
/// bounded, so planning runs only as far ahead as the consumer lets it.
/// Planning reports its own progress on `events` (shards planned so far, then the total), so
/// that progress shows the plan's size before the run has taken every shard.
pub fn stream(job: &Job, source: Source, events: EventSink) -> mpsc::Receiver<Result<Planned, PlanError>> {
    let (tx, rx) = mpsc::channel(1024);
    let rule = job.input.shard.clone();
    let include = job.input.include.clone();
    let kafka = job.input.kafka.as_ref().map(|kafka| (kafka.start, kafka.bounds.clone()));
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let planned = match (source.reader.clone(), kafka) {
            (Reader::Topic(topic), Some((start, bounds))) => plan_topic(&tx, topic, start, bounds, rule, &events).await,
            (Reader::Topic(topic), None) => Err(PlanError::NoRecords(topic.location().clone())),
            (Reader::Store(storage), _) => plan_into(&tx, (rule, include), &storage, source, &events).await,
        };
        let result = planned.map(|mut totals| {
            totals.elapsed_ms = started.elapsed().as_millis() as u64;
            totals
        });
        if let Ok(totals) = &result {
            events.emit(Event::PlanComplete { total: totals.shards });
        }
        let _ = tx.send(result.map(Planned::Done)).await;
    });
    rx
}

/// What the planning channel carries.
#[derive(Debug)]
pub enum Planned {
    Shard(Shard),
    Done(PlanTotals),
}

pub(crate) struct Grouper<'a> {
    events: &'a EventSink,
    rule: ShardRule,
    pending: Vec<ObjectMeta>,
    pending_bytes: u64,
    pub(crate) next_id: u64,
    pub(crate) totals: PlanTotals,
}

impl<'a> Grouper<'a> {
    pub(crate) fn new(rule: ShardRule, events: &'a EventSink) -> Self {
        Grouper { events, rule, pending: Vec::new(), pending_bytes: 0, next_id: 0, totals: PlanTotals::default() }
    }

    pub(crate) fn shard(&mut self, input: ShardInput) -> Shard {
        let shard = Shard { id: self.next_id, input };
        self.next_id += 1;
        self.totals.shards += 1;
        self.events.emit(Event::Planned { planned: self.totals.shards });
        shard
    }

    /// Adds an object; returns a shard when one is complete.
    pub(crate) fn push(&mut self, object: ObjectMeta) -> Option<Shard> {
        self.totals.objects += 1;
        self.totals.bytes += object.size;
        match self.rule {
            ShardRule::Object => Some(self.shard(ShardInput::Objects { objects: vec![object] })),
            ShardRule::Objects { count } => {
                self.pending.push(object);
                (self.pending.len() as u64 >= count).then(|| self.flush()).flatten()
            }
            ShardRule::Bytes { bytes } => {
                // An object that would overflow a non-empty shard starts the next one.
                let overflow = !self.pending.is_empty() && self.pending_bytes + object.size > bytes;
                let done = if overflow { self.flush() } else { None };
                self.pending_bytes += object.size;
                self.pending.push(object);
                done.or_else(|| (self.pending_bytes >= bytes).then(|| self.flush()).flatten())
            }
            ShardRule::Rows { .. } | ShardRule::Chunk { .. } => unreachable!("record rules do not group objects"),
        }
    }

    pub(crate) fn flush(&mut self) -> Option<Shard> {
        if self.pending.is_empty() {
            return None;
        }
        let objects = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        Some(self.shard(ShardInput::Objects { objects }))
    }
}

/// Shards of a batch of objects that arrived (`fanout watch`): grouped by the job's rule
/// within the batch, record rules cut each object into ranges; numbered from the grouper's
/// next id.
pub(crate) async fn shards_of_batch(
    grouper: &mut Grouper<'_>,
    storage: &DynStorage,
    objects: Vec<ObjectMeta>,
) -> Result<Vec<Shard>, PlanError> {
    let rule = grouper.rule.clone();
    let mut shards = Vec::new();
    for object in objects {
        if rule.is_record_rule() {
            grouper.totals.objects += 1;
            grouper.totals.bytes += object.size;
            for (start, end, header) in records::record_ranges(storage, &object, &rule).await? {
                shards.push(grouper.shard(ShardInput::Records { key: object.key.clone(), start, end, header }));
            }
        } else if let Some(shard) = grouper.push(object) {
            shards.push(shard);
        }
    }
    shards.extend(grouper.flush());
    Ok(shards)
}

/// Plans the objects of a source's store (or its one object).
async fn plan_into(
    tx: &mpsc::Sender<Result<Planned, PlanError>>,
    (rule, include): (ShardRule, Include),
    storage: &DynStorage,
    source: Source,
    events: &EventSink,
) -> Result<PlanTotals, PlanError> {
    let mut grouper = Grouper::new(rule.clone(), events);
    let mut listed = 0u64;
    let one = source.single.is_some();
    let mut objects = match &source.single {
        Some(object) => futures::stream::iter(vec![Ok(object.clone())]).boxed(),
        None => storage.list(""),
    };
    while let Some(object) = objects.next().await {
        let object = object?;
        listed += 1;
        if !one && !include.matches(&object.key) {
            continue;
        }
        if rule.is_record_rule() {
            grouper.totals.objects += 1;
            grouper.totals.bytes += object.size;
            let ranges = records::record_ranges(storage, &object, &rule).await?;
            for (start, end, header) in ranges {
                let shard = grouper.shard(ShardInput::Records { key: object.key.clone(), start, end, header });
                if tx.send(Ok(Planned::Shard(shard))).await.is_err() {
                    return Ok(grouper.totals);
                }
            }
        } else if let Some(shard) = grouper.push(object) {
            if tx.send(Ok(Planned::Shard(shard))).await.is_err() {
                return Ok(grouper.totals);
            }
        }
    }
    if let Some(shard) = grouper.flush() {
        let _ = tx.send(Ok(Planned::Shard(shard))).await;
    }
    if grouper.totals.shards == 0 {
        return Err(if listed == 0 {
            if source.single.is_none()
                && matches!(source.location, Location::Local(_))
                && !local_exists(&source.location)
            {
                PlanError::SourceMissing(source.location)
            } else {
                PlanError::Empty(source.location)
            }
        } else {
            PlanError::NothingMatches { folder: source.location, include: include.globs().to_vec() }
        });
    }
    Ok(grouper.totals)
}

impl From<&Cut> for ShardInput {
    fn from(cut: &Cut) -> Self {
        ShardInput::Kafka {
            partition: cut.partition,
            start: cut.start,
            end: cut.end,
            records: cut.records,
            bytes: cut.bytes,
        }
    }
}

/// Numbers a Kafka cut as the next shard (counting its records as the plan's objects) and
/// hands its records to the topic for staging.
pub(crate) fn shard_of_cut(grouper: &mut Grouper<'_>, topic: &KafkaTopic, cut: Cut) -> Shard {
    grouper.totals.objects += cut.records;
    grouper.totals.bytes += cut.bytes;
    let shard = grouper.shard(ShardInput::from(&cut));
    topic.keep(cut.partition, cut.start..cut.end, cut.payload);
    shard
}

/// Plans a batch job over a topic: every partition between its bounds, in turn, each shard
/// sent as it closes (its records kept for staging).
async fn plan_topic(
    tx: &mpsc::Sender<Result<Planned, PlanError>>,
    topic: Arc<KafkaTopic>,
    start: KafkaStart,
    bounds: Option<Vec<PartitionBounds>>,
    rule: ShardRule,
    events: &EventSink,
) -> Result<PlanTotals, PlanError> {
    // A job fixes its bounds before it runs (so planning again cuts the same shards);
    // `fanout plan` shows what a job started now would read.
    let bounds = match bounds {
        Some(bounds) => bounds,
        None => topic.bounds(start).await?,
    };
    let mut grouper = Grouper::new(rule.clone(), events);
    let (cut_tx, mut cuts) = mpsc::channel(64);
    let reading = topic.clone();
    let reader = tokio::task::spawn_blocking(move || kafka::read_partitions(&reading, &bounds, rule, &cut_tx));
    while let Some(cut) = cuts.recv().await {
        let shard = shard_of_cut(&mut grouper, &topic, cut);
        if tx.send(Ok(Planned::Shard(shard))).await.is_err() {
            return Ok(grouper.totals);
        }
    }
    reader.await.expect("planning a topic does not panic")?;
    if grouper.totals.shards == 0 {
        return Err(PlanError::NoRecords(topic.location().clone()));
    }
    Ok(grouper.totals)
}

fn local_exists(location: &Location) -> bool {
    matches!(location, Location::Local(path) if path.exists())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn objects(sizes: &[u64]) -> Vec<ObjectMeta> {
        sizes.iter().enumerate().map(|(i, &size)| ObjectMeta::new(format!("k{i:03}"), size)).collect()
    }

    fn group(rule: ShardRule, sizes: &[u64]) -> Vec<Vec<u64>> {
        let (events, _) = EventSink::channel();
        let mut grouper = Grouper::new(rule, &events);
        let mut shards: Vec<Shard> = objects(sizes).into_iter().filter_map(|o| grouper.push(o)).collect();
        shards.extend(grouper.flush());
        for (i, shard) in shards.iter().enumerate() {
            assert_eq!(shard.id, i as u64);
        }
        shards
            .into_iter()
            .map(|s| match s.input {
                ShardInput::Objects { objects } => objects.iter().map(|o| o.size).collect(),
                _ => unreachable!(),
            })
            .collect()
    }

    #[test]
    fn object_rules_group_in_order() {
        assert_eq!(group(ShardRule::Object, &[1, 2, 3]), vec![vec![1], vec![2], vec![3]]);
        assert_eq!(group(ShardRule::Objects { count: 2 }, &[1, 2, 3]), vec![vec![1, 2], vec![3]]);
        assert_eq!(
            group(ShardRule::Bytes { bytes: 10 }, &[4, 4, 4, 20, 1, 9, 3]),
            vec![vec![4, 4], vec![4], vec![20], vec![1, 9], vec![3]]
        );
    }

    #[test]
    fn fingerprints_change_with_content() {
        let a = Shard { id: 0, input: ShardInput::Objects { objects: objects(&[5]) } };
        let b = Shard { id: 0, input: ShardInput::Objects { objects: objects(&[6]) } };
        assert_ne!(a.fingerprint(), b.fingerprint());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
    }
}
