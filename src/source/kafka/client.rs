//! The client side of a topic: librdkafka settings (the job's, plus secrets from the
//! environment), errors said for a user, the topic's partitions and a new job's offsets, and
//! how records are framed on stdin and named in DEST. Everything else in `kafka` builds on it.

use crate::job::{KafkaInput, KafkaStart, PartitionBounds, RecordFormat};
use crate::location::Location;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use std::time::Duration;

/// How long a broker may take to answer a metadata or offsets request before the job is
/// refused (librdkafka retries and reconnects within it).
pub(crate) const ANSWER_WITHIN: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum KafkaSourceError {
    #[error("{location}: no broker answered within {}s ({message})", ANSWER_WITHIN.as_secs())]
    Unreachable { location: String, message: String },
    #[error("{location}: the topic \"{topic}\" does not exist")]
    NoTopic { location: String, topic: String },
    #[error("{location}: the brokers refused fanout ({message}); check the credentials (FANOUT_KAFKA_SASL_USERNAME, FANOUT_KAFKA_SASL_PASSWORD) and input.kafka.settings")]
    Refused { location: String, message: String },
    #[error("{location}: {message}")]
    Client { location: String, message: String },
    #[error("{location}: {error}")]
    Read { location: String, error: Box<ReadError> },
}

/// Why a read of a topic's partitions (`partition::PartitionReader`) failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The stall rule (`partition::STALL_AFTER`) met; `last` is what the client last said
    /// of an unanswering broker, if anything.
    #[error("topic {topic}, partition {partition}, offset {offset}: no record for {}s, though the partition holds records up to {end} ({})", after.as_secs(), last.as_deref().map_or("is the broker up?".to_string(), |last| format!("the client last said: {last}")))]
    Stalled { topic: String, partition: i32, offset: i64, end: i64, after: Duration, last: Option<String> },
    #[error("topic {topic}, partition {partition}, offset {offset}: the records from there to {low} are no longer kept by the topic (retention)")]
    Dropped { topic: String, partition: i32, offset: i64, low: i64 },
    #[error("topic {topic}, partition {partition}, offset {offset}: the partition ends at {high}, before the end of the range ({end})")]
    Shortened { topic: String, partition: i32, offset: i64, high: i64, end: i64 },
    /// What the client said, other than that no broker answered; a watch polls on through it.
    #[error("topic {topic}, partition {partition}, offset {offset}: {error}")]
    Client { topic: String, partition: i32, offset: i64, error: KafkaError },
}

/// The librdkafka settings of a job: the brokers, the group, the job's own settings, and
/// secret settings from the environment (`FANOUT_KAFKA_SASL_PASSWORD` for `sasl.password`).
pub(crate) fn client_config(brokers: &str, kafka: &KafkaInput) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in &kafka.settings {
        config.set(key, value);
    }
    for setting in crate::job::secret_settings() {
        if let Ok(value) = std::env::var(crate::job::secret_variable(setting)) {
            config.set(*setting, value);
        }
    }
    config
        .set("bootstrap.servers", brokers)
        .set("group.id", &kafka.group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // librdkafka's own log lines would interleave with the progress display.
        .set("log_level", "3");
    config
}

/// The error a client call met, said for a user.
pub(crate) fn classify(location: &Location, error: KafkaError) -> KafkaSourceError {
    let location = location.to_string();
    let message = error.to_string();
    if unanswered(&error) {
        return KafkaSourceError::Unreachable { location, message };
    }
    match error.rdkafka_error_code() {
        Some(
            RDKafkaErrorCode::Authentication
            | RDKafkaErrorCode::SaslAuthenticationFailed
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::GroupAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed
            | RDKafkaErrorCode::SSL,
        ) => KafkaSourceError::Refused { location, message },
        _ => KafkaSourceError::Client { location, message },
    }
}

/// Whether `error` says no broker answered (down, unreachable, too slow): librdkafka
/// reconnects by itself, so a read polls on through it (see `partition`).
pub(crate) fn unanswered(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
                | RDKafkaErrorCode::RequestTimedOut
                | RDKafkaErrorCode::Resolve
        )
    )
}

/// The partitions of the topic, checked: the brokers answer, the topic exists.
pub(crate) fn partitions_of(
    consumer: &BaseConsumer,
    location: &Location,
    topic: &str,
) -> Result<Vec<i32>, KafkaSourceError> {
    let metadata = consumer.fetch_metadata(Some(topic), ANSWER_WITHIN).map_err(|e| classify(location, e))?;
    let no_topic = || KafkaSourceError::NoTopic { location: location.to_string(), topic: topic.to_string() };
    let described = metadata.topics().iter().find(|t| t.name() == topic).ok_or_else(no_topic)?;
    if let Some(error) = described.error() {
        let code = RDKafkaErrorCode::from(error);
        return Err(match code {
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => no_topic(),
            RDKafkaErrorCode::TopicAuthorizationFailed => {
                KafkaSourceError::Refused { location: location.to_string(), message: code.to_string() }
            }
            _ => KafkaSourceError::Client { location: location.to_string(), message: code.to_string() },
        });
    }
    let mut partitions: Vec<i32> = described.partitions().iter().map(|p| p.id()).collect();
    if partitions.is_empty() {
        return Err(no_topic());
    }
    partitions.sort_unstable();
    Ok(partitions)
}

/// Where each partition starts and ends for a new job: `start` from the job's start
/// position (never before the oldest record kept), `end` the high watermark now.
pub(crate) fn resolve_bounds(
    consumer: &BaseConsumer,
    location: &Location,
    topic: &str,
    partitions: &[i32],
    start: KafkaStart,
) -> Result<Vec<PartitionBounds>, KafkaSourceError> {
    let failed = |e| classify(location, e);
    let mut marks = Vec::new();
    for &partition in partitions {
        marks.push(consumer.fetch_watermarks(topic, partition, ANSWER_WITHIN).map_err(failed)?);
    }
    let looked_up: Vec<Option<i64>> = match start {
        KafkaStart::Earliest => vec![None; partitions.len()],
        KafkaStart::Latest => marks.iter().map(|&(_, high)| Some(high)).collect(),
        KafkaStart::Committed => {
            let mut asked = TopicPartitionList::new();
            for &partition in partitions {
                asked.add_partition(topic, partition);
            }
            let committed = consumer.committed_offsets(asked, ANSWER_WITHIN).map_err(failed)?;
            offsets_in(&committed, topic, partitions, |_| None)
        }
        KafkaStart::Timestamp { ms } => {
            let mut asked = TopicPartitionList::new();
            for &partition in partitions {
                asked.add_partition_offset(topic, partition, Offset::Offset(ms)).map_err(failed)?;
            }
            let found = consumer.offsets_for_times(asked, ANSWER_WITHIN).map_err(failed)?;
            // No record at or after the time: the partition starts at its end.
            offsets_in(&found, topic, partitions, |p| Some(marks[p].1))
        }
    };
    Ok(partitions
        .iter()
        .zip(marks)
        .zip(looked_up)
        .map(|((&partition, (low, high)), at)| {
            let start = at.unwrap_or(low).clamp(low, high);
            PartitionBounds { partition, start, end: high }
        })
        .collect())
}

/// Each partition's offset in `list`; `otherwise(i)` where it has none.
fn offsets_in(
    list: &TopicPartitionList,
    topic: &str,
    partitions: &[i32],
    otherwise: impl Fn(usize) -> Option<i64>,
) -> Vec<Option<i64>> {
    partitions
        .iter()
        .enumerate()
        .map(|(i, &partition)| match list.find_partition(topic, partition).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) if offset >= 0 => Some(offset),
            _ => otherwise(i),
        })
        .collect()
}

/// Formats one record for stdin; `Err` when the format cannot carry it.
pub(crate) fn append_record(out: &mut Vec<u8>, format: RecordFormat, value: &[u8]) -> Result<(), &'static str> {
    match format {
        RecordFormat::Lines => {
            if value.contains(&b'\n') {
                return Err("holds a newline, which the lines format cannot carry; use input.kafka.format = \"length-prefixed\"");
            }
            out.extend_from_slice(value);
            out.push(b'\n');
        }
        RecordFormat::LengthPrefixed => {
            let length = u32::try_from(value.len()).map_err(|_| "is longer than 4 GiB")?;
            out.extend_from_slice(&length.to_be_bytes());
            out.extend_from_slice(value);
        }
    }
    Ok(())
}

/// The output key of a Kafka shard's stdout: its partition and offset range, so that a
/// range run again overwrites its output instead of adding one.
pub(crate) fn output_key(partition: i32, start: i64, end: i64) -> String {
    format!("part-p{partition:03}-{start:012}-{:012}", end - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_framed() {
        let mut out = Vec::new();
        append_record(&mut out, RecordFormat::Lines, b"{\"a\":1}").unwrap();
        assert!(append_record(&mut out, RecordFormat::Lines, b"two\nlines").is_err());
        assert_eq!(out, b"{\"a\":1}\n");
        let mut framed = Vec::new();
        append_record(&mut framed, RecordFormat::LengthPrefixed, b"a\nb").unwrap();
        assert_eq!(framed, [0, 0, 0, 3, b'a', b'\n', b'b']);
        assert_eq!(output_key(2, 0, 100), "part-p002-000000000000-000000000099");
    }
}
