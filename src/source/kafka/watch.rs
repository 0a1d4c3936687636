//! `fanout watch` over a topic: one consumer reads every partition from where the watch's
//! stored plan ends, and a partition's open shard closes when it is full or `max_wait` after
//! its first record, so latency stays bounded on a quiet topic. The coordinator stores each
//! shard in the plan before it runs (see `run`), so a restart never cuts a range twice.
//! Numbering the shards and sending them on is `source::watch`'s part.

use super::client::{KafkaSourceError, ANSWER_WITHIN};
use super::cut::{Cut, Cutter};
use super::topic::KafkaTopic;
use crate::job::ShardRule;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
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
    let (mut cutters, mut ends) = assign_all(&consumer, topic, rule, &from, once)?;
    let send = |cut: Cut| cuts.blocking_send(cut).is_ok();
    while !stop.is_cancelled() {
        if once && cutters.iter().all(|(p, c)| c.next_start() >= ends[p] && c.opened().is_none()) {
            return Ok(());
        }
        // Wake when the oldest open shard is due, and at least five times a second.
        let due = cutters
            .values()
            .filter_map(|c| c.opened())
            .min()
            .map(|t| (t + max_wait).saturating_duration_since(Instant::now()));
        let wait = due.unwrap_or(Duration::from_millis(200)).min(Duration::from_millis(200));
        match consumer.poll(wait) {
            Some(Ok(message)) => {
                let partition = message.partition();
                let Some(cutter) = cutters.get_mut(&partition) else { continue };
                let beyond = once && message.offset() >= ends[&partition];
                if message.offset() >= cutter.next_start() && !beyond {
                    for cut in cutter.push(message.offset(), message.payload().unwrap_or_default()) {
                        if !send(cut) {
                            return Ok(());
                        }
                    }
                }
                if once && (beyond || message.offset() + 1 >= ends[&partition]) {
                    if let Some(cut) = cutter.close() {
                        if !send(cut) {
                            return Ok(());
                        }
                    }
                    ends.insert(partition, cutter.next_start().min(ends[&partition]));
                }
            }
            Some(Err(KafkaError::PartitionEOF(partition))) if once => {
                // What the partition holds now is read: the rest of its end was compacted.
                if let Some(cutter) = cutters.get_mut(&partition) {
                    if let Some(cut) = cutter.close() {
                        if !send(cut) {
                            return Ok(());
                        }
                    }
                    ends.insert(partition, cutter.next_start());
                }
            }
            // A broker away for a while: librdkafka reconnects by itself; keep polling.
            Some(Err(_)) | None => {}
        }
        for cutter in cutters.values_mut() {
            if cutter.opened().is_some_and(|opened| opened.elapsed() >= max_wait) {
                if let Some(cut) = cutter.close() {
                    if !send(cut) {
                        return Ok(());
                    }
                }
            }
        }
    }
    Ok(())
}

/// Each partition's cutter, and (with `once`) the end it had when the watch started.
type Assigned = (BTreeMap<i32, Cutter>, BTreeMap<i32, i64>);

/// Assigns every partition at its offset in `from`, with a cutter for each; with `once`,
/// also the end each partition has now.
fn assign_all(
    consumer: &BaseConsumer,
    topic: &KafkaTopic,
    rule: ShardRule,
    from: &BTreeMap<i32, i64>,
    once: bool,
) -> Result<Assigned, KafkaSourceError> {
    let failed = |message: String| KafkaSourceError::Client { location: topic.location().to_string(), message };
    let mut assignment = TopicPartitionList::new();
    let (mut cutters, mut ends) = (BTreeMap::new(), BTreeMap::new());
    for &partition in topic.partitions() {
        let start = from.get(&partition).copied().unwrap_or(0);
        assignment
            .add_partition_offset(topic.topic(), partition, Offset::Offset(start))
            .map_err(|e| failed(e.to_string()))?;
        cutters.insert(partition, Cutter::new(rule.clone(), topic.format(), partition, start));
        if once {
            let (_, high) = consumer
                .fetch_watermarks(topic.topic(), partition, ANSWER_WITHIN)
                .map_err(|e| failed(e.to_string()))?;
            ends.insert(partition, high);
        }
    }
    consumer.assign(&assignment).map_err(|e| failed(e.to_string()))?;
    Ok((cutters, ends))
}
