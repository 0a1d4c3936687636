//! Cutting a partition into shards: contiguous offset ranges that tile it (a shard starts
//! where the previous one ended, so a gap left by compaction belongs to a shard and the
//! group's offsets can move over it), closed at `rows` records or `bytes` of payload. A batch
//! plan reads each partition in turn from its start to its end bound (with `partition`'s
//! reader), so that planning again after a crash gives the same shards with the same numbers.

use super::client::KafkaSourceError;
use super::partition::{PartitionReader, Span};
use super::topic::KafkaTopic;
use crate::job::{PartitionBounds, RecordFormat, ShardRule};
use rdkafka::message::Message;
use std::time::Instant;
use tokio::sync::mpsc;

/// A closed shard: its range, its size, and its records formatted for stdin.
pub(crate) struct Cut {
    pub(crate) partition: i32,
    pub(crate) start: i64,
    pub(crate) end: i64,
    pub(crate) records: u64,
    pub(crate) bytes: u64,
    pub(crate) payload: Result<Vec<u8>, String>,
}

/// The open shard of one partition.
pub(crate) struct Cutter {
    rule: ShardRule,
    format: RecordFormat,
    partition: i32,
    /// Where the next shard starts: the end of the last one.
    next_start: i64,
    open: Option<Open>,
}

struct Open {
    records: u64,
    value_bytes: u64,
    last: i64,
    payload: Vec<u8>,
    bad: Option<String>,
    opened: Instant,
}

impl Cutter {
    pub(crate) fn new(rule: ShardRule, format: RecordFormat, partition: i32, start: i64) -> Self {
        Cutter { rule, format, partition, next_start: start, open: None }
    }

    /// When the open shard got its first record.
    pub(crate) fn opened(&self) -> Option<Instant> {
        self.open.as_ref().map(|open| open.opened)
    }

    /// Adds a record; returns the shards it closed (a record that would overflow a `bytes`
    /// shard closes it first; a record that fills one closes it after).
    pub(crate) fn push(&mut self, offset: i64, value: &[u8]) -> Vec<Cut> {
        let mut closed = Vec::new();
        let size = value.len() as u64;
        if let (ShardRule::Bytes { bytes }, Some(open)) = (&self.rule, &self.open) {
            if open.value_bytes + size > *bytes {
                closed.extend(self.close());
            }
        }
        let open = self.open.get_or_insert_with(|| Open {
            records: 0,
            value_bytes: 0,
            last: offset,
            payload: Vec::new(),
            bad: None,
            opened: Instant::now(),
        });
        open.records += 1;
        open.value_bytes += size;
        open.last = offset;
        if open.bad.is_none() {
            if let Err(why) = super::client::append_record(&mut open.payload, self.format, value) {
                open.bad = Some(format!("the record at partition {} offset {offset} {why}", self.partition));
                open.payload = Vec::new();
            }
        }
        let full = match self.rule {
            ShardRule::Rows { rows } => open.records >= rows,
            ShardRule::Bytes { bytes } => open.value_bytes >= bytes,
            _ => unreachable!("a Kafka job is cut by rows or bytes"),
        };
        if full {
            closed.extend(self.close());
        }
        closed
    }

    /// Closes the open shard after its last record.
    pub(crate) fn close(&mut self) -> Option<Cut> {
        let open = self.open.take()?;
        let cut = Cut {
            partition: self.partition,
            start: self.next_start,
            end: open.last + 1,
            records: open.records,
            bytes: open.payload.len() as u64,
            payload: match open.bad {
                Some(why) => Err(why),
                None => Ok(open.payload),
            },
        };
        self.next_start = cut.end;
        Some(cut)
    }
}

/// Reads each partition's bounded range, one after another, and sends its cuts as they
/// close (blocking; `source` numbers them).
pub(crate) fn read_partitions(
    topic: &KafkaTopic,
    bounds: &[PartitionBounds],
    rule: ShardRule,
    cuts: &mpsc::Sender<Cut>,
) -> Result<(), KafkaSourceError> {
    let consumer = topic.consumer(true)?;
    let failed = |error| KafkaSourceError::Read { location: topic.location().to_string(), error: Box::new(error) };
    for bound in bounds.iter().filter(|b| b.start < b.end) {
        let span = Span::bounded(bound.partition, bound.start..bound.end);
        let mut reader = PartitionReader::new(&consumer, topic.topic(), [span]).map_err(failed)?;
        let mut cutter = Cutter::new(rule.clone(), topic.format(), bound.partition, bound.start);
        while let Some(message) = reader.next_record().map_err(failed)? {
            for cut in cutter.push(message.offset(), message.payload().unwrap_or_default()) {
                if cuts.blocking_send(cut).is_err() {
                    return Ok(());
                }
            }
        }
        if let Some(cut) = cutter.close() {
            if cuts.blocking_send(cut).is_err() {
                return Ok(());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(cuts: &[Cut]) -> Vec<(i64, i64, u64)> {
        cuts.iter().map(|c| (c.start, c.end, c.records)).collect()
    }

    #[test]
    fn rows_tile_the_partition_across_gaps() {
        let mut cutter = Cutter::new(ShardRule::Rows { rows: 2 }, RecordFormat::Lines, 0, 10);
        let mut cuts = Vec::new();
        for offset in [10, 11, 15, 16, 17] {
            cuts.extend(cutter.push(offset, b"x"));
        }
        cuts.extend(cutter.close());
        assert_eq!(ranges(&cuts), vec![(10, 12, 2), (12, 17, 2), (17, 18, 1)]);
        assert_eq!(cuts[0].payload.as_ref().unwrap(), b"x\nx\n");
    }

    #[test]
    fn bytes_close_before_an_overflow_and_a_bad_record_fails_its_shard_only() {
        let mut cutter = Cutter::new(ShardRule::Bytes { bytes: 10 }, RecordFormat::Lines, 3, 0);
        let mut cuts = Vec::new();
        cuts.extend(cutter.push(0, b"aaaa"));
        cuts.extend(cutter.push(1, b"b\nc"));
        cuts.extend(cutter.push(2, b"cccccccccccc"));
        cuts.extend(cutter.push(3, b"d"));
        cuts.extend(cutter.close());
        assert_eq!(ranges(&cuts), vec![(0, 2, 2), (2, 3, 1), (3, 4, 1)]);
        assert!(cuts[0].payload.as_ref().unwrap_err().contains("partition 3 offset 1"));
        assert!(cuts[1].payload.is_ok() && cuts[2].payload.is_ok());
    }
}
