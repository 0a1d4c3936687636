//! `fanout watch` over a topic: one consumer reads every partition from where the watch's
//! stored plan ends (with `partition`'s reader: followed, or with `--once` up to the ends the
//! partitions had at the start, under the one stall rule), and a partition's open shard
//! closes when it is full or `max_wait` after its first record, so latency stays bounded on
//! a quiet topic. The coordinator stores each
//! shard in the plan before it runs (see `run`), so a restart never cuts a range twice.
//! Numbering the shards and sending them on is `source::watch`'s part.

use super::client::{KafkaSourceError, ReadError, ANSWER_WITHIN};
use super::cut::{Cut, Cutter};
use super::partition::{PartitionReader, Read, Span};
use super::topic::KafkaTopic;
use crate::job::ShardRule;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Reads every partition from `from` and sends shards as they close (blocking), until
/// `stop`, or with `once` until the ends the partitions had at the start.
pub(crate) fn follow(
    topic: &KafkaTopic,
    rule: ShardRule,
    from: BTreeMap<i32, i64>,
    max_wait: Duration,
    once: bool,
    stop: &CancellationToken,
    cuts: &mpsc::Sender<Cut>,
) -> Result<(), KafkaSourceError> {
    let consumer = topic.follower(once)?;
    let failed = |error| KafkaSourceError::Read { location: topic.location().to_string(), error: Box::new(error) };
    let spans = spans_of(&consumer, topic, &from, once)?;
    let mut cutters: BTreeMap<i32, Cutter> = spans
        .iter()
        .map(|span| (span.partition, Cutter::new(rule.clone(), topic.format(), span.partition, span.start)))
        .collect();
    // Records retention removed before the watch came back to them, or a broker that lost
    // records, are no error here: a watch takes what the topic holds.
    let mut reader = PartitionReader::new(&consumer, topic.topic(), spans).map_err(failed)?.taking_what_is_kept();
    while !stop.is_cancelled() {
        // Wake when the oldest open shard is due, and at least five times a second.
        let due = cutters
            .values()
            .filter_map(|c| c.opened())
            .min()
            .map(|t| (t + max_wait).saturating_duration_since(Instant::now()));
        let wait = due.unwrap_or(Duration::from_millis(200)).min(Duration::from_millis(200));
        let mut closed = match reader.next(wait) {
            Ok(Read::Done) => return Ok(()),
            Ok(Read::Record(message)) => match cutters.get_mut(&message.partition()) {
                Some(cutter) => cutter.push(message.offset(), message.payload().unwrap_or_default()),
                None => Vec::new(),
            },
            // With `once`: the partition is read up to the end it had at the start.
            Ok(Read::Ended(partition)) => cutters.get_mut(&partition).and_then(Cutter::close).into_iter().collect(),
            // A broker away for a while: librdkafka reconnects by itself; keep polling.
            Ok(Read::Idle) | Err(ReadError::Client { .. }) => Vec::new(),
            Err(error) => return Err(failed(error)),
        };
        for cutter in cutters.values_mut() {
            if cutter.opened().is_some_and(|opened| opened.elapsed() >= max_wait) {
                closed.extend(cutter.close());
            }
        }
        for cut in closed {
            if cuts.blocking_send(cut).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Every partition's span from its offset in `from`: followed, or with `once` bounded by
/// the end it has now.
fn spans_of(
    consumer: &BaseConsumer,
    topic: &KafkaTopic,
    from: &BTreeMap<i32, i64>,
    once: bool,
) -> Result<Vec<Span>, KafkaSourceError> {
    let mut spans = Vec::new();
    for &partition in topic.partitions() {
        let start = from.get(&partition).copied().unwrap_or(0);
        if !once {
            spans.push(Span::followed(partition, start));
            continue;
        }
        let (_, high) = consumer
            .fetch_watermarks(topic.topic(), partition, ANSWER_WITHIN)
            .map_err(|e| KafkaSourceError::Client { location: topic.location().to_string(), message: e.to_string() })?;
        // A start past the end (records the stored plan holds, lost by the broker) reads nothing.
        spans.push(Span::bounded(partition, start..high.max(start)));
    }
    Ok(spans)
}
