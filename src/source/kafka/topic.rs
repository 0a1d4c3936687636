//! The topic as the run's source: partitions read by offset range (`append_records(3,
//! 100..200, stdin)` puts records 100 to 199 of partition 3 on a shard's stdin). Planning
//! hands each shard's records over in memory (`keep`), so a shard staged soon after it was
//! cut costs no second read; a retry, a resumed job or a shard whose records did not fit the
//! cache reads its range again, through the one partition reader (`partition`, which decides
//! when a range is read and when a read has stalled). A topic is not a store of objects: it is
//! read through `source::Reader`, never through the storage trait.

use super::client::{append_record, classify, client_config, partitions_of, resolve_bounds, KafkaSourceError};
use super::partition::{PartitionReader, Span};
use crate::job::{KafkaInput, KafkaStart, PartitionBounds, RecordFormat};
use crate::location::Location;
use crate::storage::{StorageError, StorageResult};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::BaseConsumer;
use rdkafka::message::Message;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};

/// Records handed from planning to staging are kept up to this many bytes; beyond, a shard
/// reads its range again when it is staged.
const CACHE_BYTES: usize = 256 << 20;
/// The longest a watching consumer's fetch waits at the end of a partition (milliseconds).
const FOLLOW_FETCH_WAIT: &str = "100";

/// A shard's records as planning formatted them, or why they cannot be staged.
type Payload = Result<Vec<u8>, String>;

/// Shards' records between planning and staging, keyed by partition and first offset (the
/// end is checked on the way out), and the bytes they hold.
#[derive(Default)]
struct Cache {
    shards: HashMap<(i32, i64), (i64, Payload)>,
    bytes: usize,
}

pub(crate) struct KafkaTopic {
    /// This topic itself, for the blocking reads that must own it.
    me: Weak<KafkaTopic>,
    location: Location,
    topic: String,
    config: ClientConfig,
    format: RecordFormat,
    partitions: Vec<i32>,
    cache: Mutex<Cache>,
    /// Consumers that read a range before, kept for the next (a new one costs a connection).
    readers: Mutex<Vec<BaseConsumer>>,
}

impl std::fmt::Debug for KafkaTopic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KafkaTopic({})", self.location)
    }
}

impl KafkaTopic {
    /// Checks that the brokers answer and the topic exists, and learns its partitions.
    pub(crate) async fn connect(location: &Location, kafka: &KafkaInput) -> Result<Arc<Self>, KafkaSourceError> {
        let Location::Kafka { brokers, topic } = location else { unreachable!("only kafka:// locations are topics") };
        let config = client_config(brokers, kafka);
        let (location, topic) = (location.clone(), topic.clone());
        let format = kafka.format;
        let secured = kafka.settings.get("security.protocol").filter(|p| !p.eq_ignore_ascii_case("plaintext")).cloned();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config.create().map_err(|e| classify(&location, e))?;
            let partitions = partitions_of(&consumer, &location, &topic).map_err(|e| with_hint(e, secured))?;
            let readers = Mutex::new(vec![consumer]);
            let cache = Mutex::new(Cache::default());
            Ok(Arc::new_cyclic(|me| KafkaTopic {
                me: me.clone(),
                location,
                topic,
                config,
                format,
                partitions,
                cache,
                readers,
            }))
        })
        .await
        .expect("connecting does not panic")
    }

    pub(crate) fn topic(&self) -> &str {
        &self.topic
    }

    pub(crate) fn location(&self) -> &Location {
        &self.location
    }

    pub(crate) fn format(&self) -> RecordFormat {
        self.format
    }

    pub(crate) fn partitions(&self) -> &[i32] {
        &self.partitions
    }

    /// A new consumer of this topic's brokers and group (it joins no group: fanout assigns).
    pub(crate) fn consumer(&self, partition_eof: bool) -> Result<BaseConsumer, KafkaSourceError> {
        self.consumer_with(&[("enable.partition.eof", if partition_eof { "true" } else { "false" })])
    }

    /// A consumer that waits at most `FOLLOW_FETCH_WAIT` in a fetch at the end of a
    /// partition (librdkafka's default is 500 ms), so that a watch sees a record soon after
    /// it is produced, from brokers that do not answer a waiting fetch early.
    pub(crate) fn follower(&self, partition_eof: bool) -> Result<BaseConsumer, KafkaSourceError> {
        let eof = if partition_eof { "true" } else { "false" };
        self.consumer_with(&[("enable.partition.eof", eof), ("fetch.wait.max.ms", FOLLOW_FETCH_WAIT)])
    }

    fn consumer_with(&self, settings: &[(&str, &str)]) -> Result<BaseConsumer, KafkaSourceError> {
        let mut config = self.config.clone();
        for (key, value) in settings {
            config.set(*key, *value);
        }
        config.create().map_err(|e| classify(&self.location, e))
    }

    /// Where each partition starts and ends for a new job.
    pub(crate) async fn bounds(self: &Arc<Self>, start: KafkaStart) -> Result<Vec<PartitionBounds>, KafkaSourceError> {
        let topic = self.clone();
        tokio::task::spawn_blocking(move || {
            let consumer = topic.consumer(false)?;
            resolve_bounds(&consumer, &topic.location, &topic.topic, &topic.partitions, start)
        })
        .await
        .expect("reading offsets does not panic")
    }

    /// Keeps a shard's records for its staging, when the cache has room.
    pub(crate) fn keep(&self, partition: i32, range: Range<i64>, payload: Payload) {
        let size = payload.as_ref().map_or(0, Vec::len);
        let mut cache = self.cache.lock().expect("cache lock");
        if cache.bytes + size <= CACHE_BYTES {
            cache.bytes += size;
            cache.shards.insert((partition, range.start), (range.end, payload));
        }
    }

    fn take(&self, partition: i32, range: &Range<i64>) -> Option<Payload> {
        let mut cache = self.cache.lock().expect("cache lock");
        let (end, payload) = cache.shards.remove(&(partition, range.start))?;
        cache.bytes -= payload.as_ref().map_or(0, Vec::len);
        (end == range.end).then_some(payload)
    }

    /// Reads records `range` of `partition` and formats them (blocking).
    fn read_range(&self, partition: i32, range: Range<i64>) -> Payload {
        let consumer = self.readers.lock().expect("reader lock").pop();
        let consumer = match consumer {
            Some(consumer) => consumer,
            None => self.consumer(true).map_err(|e| e.to_string())?,
        };
        let read = self.read_with(&consumer, partition, range);
        if read.is_ok() {
            self.readers.lock().expect("reader lock").push(consumer);
        }
        read
    }

    fn read_with(&self, consumer: &BaseConsumer, partition: i32, range: Range<i64>) -> Payload {
        let span = Span::bounded(partition, range);
        let mut reader = PartitionReader::new(consumer, &self.topic, [span]).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        while let Some(message) = reader.next_record().map_err(|e| e.to_string())? {
            append_record(&mut out, self.format, message.payload().unwrap_or_default())
                .map_err(|why| format!("the record at partition {partition} offset {} {why}", message.offset()))?;
        }
        Ok(out)
    }

    /// Appends records `range` (offsets) of `partition` to `path` in the job's record
    /// format; returns the bytes added.
    pub(crate) async fn append_records(&self, partition: i32, range: Range<i64>, path: &Path) -> StorageResult<u64> {
        let payload = match self.take(partition, &range) {
            Some(payload) => payload,
            None => {
                let topic = self.me.upgrade().expect("a topic in use is alive");
                let wanted = range.clone();
                tokio::task::spawn_blocking(move || topic.read_range(partition, wanted))
                    .await
                    .expect("reading a range does not panic")
            }
        };
        let failed =
            |message: String| StorageError::Service { location: self.location.to_string(), operation: "read", message };
        let payload = payload.map_err(failed)?;
        let io = |source| StorageError::Io { location: path.display().to_string(), source };
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::OpenOptions::new().append(true).create(true).open(path).await.map_err(io)?;
        file.write_all(&payload).await.map_err(io)?;
        file.flush().await.map_err(io)?;
        Ok(payload.len() as u64)
    }
}

/// A broker that refuses a TLS or SASL handshake closes the connection, which librdkafka
/// reports as if nobody answered: say that the settings may be the cause.
fn with_hint(error: KafkaSourceError, secured: Option<String>) -> KafkaSourceError {
    match (error, secured) {
        (KafkaSourceError::Unreachable { location, message }, Some(protocol)) => KafkaSourceError::Unreachable {
            location,
            message: format!(
                "{message}; with security.protocol = {protocol}, a handshake the brokers refuse looks the same: \
                 check input.kafka.settings and FANOUT_KAFKA_SASL_USERNAME, FANOUT_KAFKA_SASL_PASSWORD"
            ),
        },
        (error, _) => error,
    }
}
