//! The one loop that reads partitions, for staging (`topic`), planning (`cut`) and watching
//! (`watch`): records in offset order from where each partition's span starts, up to its end
//! offset (a bounded span) or for as long as the caller polls (a followed one). It owns the
//! rules every read of a topic shares: which records belong to a span (older or repeated
//! offsets are skipped), when a bounded span is read to its end (its last record, or the
//! partition's end past which the rest was compacted away), and the one stall rule
//! (`STALL_AFTER`, which alone decides when a broker that does not answer fails a read); its
//! errors (`client::ReadError`) name the topic, partition and offset.
//! What the records become (stdin bytes, shards) is the caller's; it never commits offsets.

use super::client::{unanswered, ReadError, ANSWER_WITHIN};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::ops::Range;
use std::time::{Duration, Instant};

/// The stall rule: a read that has polled this long, in all, since its last record while a
/// bounded span still waits for records fails (a staging read's shard then retries; a plan
/// fails). Only time spent polling counts: a caller that stops to hand a shard on (and
/// waits for room) does not stall its read. A broker that does not answer is this rule's
/// to judge, not the first error the client reports: long enough to ride out a broker
/// restart and librdkafka's reconnect backoff (at most 10 s by default).
pub(crate) const STALL_AFTER: Duration = Duration::from_secs(30);
/// How long one poll of a bounded read waits for a record.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// The calls a reader makes of its consumer, and its clock: a trait so that the reader's
/// rules are tested without a broker and without waiting.
pub(crate) trait Consume {
    type Message<'a>: Message
    where
        Self: 'a;
    fn assign_list(&self, list: &TopicPartitionList) -> KafkaResult<()>;
    /// One record, an event (a partition's end, an error), or `None` after `wait`.
    fn poll_for(&self, wait: Duration) -> Option<KafkaResult<Self::Message<'_>>>;
    /// A partition's low and high watermarks, asked of the broker.
    fn watermarks(&self, topic: &str, partition: i32) -> KafkaResult<(i64, i64)>;
    /// The offset the consumer fetches next in a partition (-1 when it has none).
    fn position_of(&self, topic: &str, partition: i32) -> i64;
    fn now(&self) -> Instant {
        Instant::now()
    }
}

impl Consume for BaseConsumer {
    type Message<'a> = BorrowedMessage<'a>;

    fn assign_list(&self, list: &TopicPartitionList) -> KafkaResult<()> {
        Consumer::assign(self, list)
    }

    fn poll_for(&self, wait: Duration) -> Option<KafkaResult<BorrowedMessage<'_>>> {
        self.poll(wait)
    }

    fn watermarks(&self, topic: &str, partition: i32) -> KafkaResult<(i64, i64)> {
        self.fetch_watermarks(topic, partition, ANSWER_WITHIN)
    }

    fn position_of(&self, topic: &str, partition: i32) -> i64 {
        let position = self.position().ok();
        match position.as_ref().and_then(|list| list.find_partition(topic, partition)).map(|e| e.offset()) {
            Some(Offset::Offset(offset)) => offset,
            _ => -1,
        }
    }
}

/// Where a partition's read starts, and where it ends (`None`: followed, it never ends).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Span {
    pub(crate) partition: i32,
    pub(crate) start: i64,
    pub(crate) end: Option<i64>,
}

impl Span {
    /// The records `range` (offsets) of `partition`.
    pub(crate) fn bounded(partition: i32, range: Range<i64>) -> Span {
        Span { partition, start: range.start, end: Some(range.end) }
    }

    /// Every record of `partition` from `start` on.
    pub(crate) fn followed(partition: i32, start: i64) -> Span {
        Span { partition, start, end: None }
    }
}

/// What one step of a read gave.
pub(crate) enum Read<M> {
    /// A span's next record.
    Record(M),
    /// A bounded span is read to its end (after its last record, if it had any).
    Ended(i32),
    /// Nothing within the wait.
    Idle,
    /// Every span is bounded and read to its end.
    Done,
}

/// One partition being read: the span, the next offset wanted, and whether it has ended.
struct Reading {
    span: Span,
    next: i64,
    ended: bool,
}

/// Reads the spans it was given on one consumer (which it assigns to them).
pub(crate) struct PartitionReader<'c, C: Consume = BaseConsumer> {
    consumer: &'c C,
    topic: String,
    readings: BTreeMap<i32, Reading>,
    /// Time spent polling since the last record (the stall rule's measure).
    polled: Duration,
    /// A span that ended with the record just handed out, said at the next step.
    ending: Option<i32>,
    /// What the client last said of an unanswering broker since the last record.
    last_error: Option<String>,
    /// Whether a bounded span takes what the partition keeps (a watch) rather than failing
    /// when records at its start are gone or the partition ends before it (a range planned
    /// or staged must be read as it was when planned).
    lenient: bool,
}

impl<'c, C: Consume> PartitionReader<'c, C> {
    /// Assigns `consumer` to `spans` (replacing its assignment).
    pub(crate) fn new(
        consumer: &'c C,
        topic: &str,
        spans: impl IntoIterator<Item = Span>,
    ) -> Result<PartitionReader<'c, C>, ReadError> {
        let mut list = TopicPartitionList::new();
        let mut readings = BTreeMap::new();
        for span in spans {
            let (partition, start) = (span.partition, span.start);
            let client = |error| ReadError::Client { topic: topic.to_string(), partition, offset: start, error };
            list.add_partition_offset(topic, partition, Offset::Offset(start)).map_err(client)?;
            let ended = span.end.is_some_and(|end| start >= end);
            readings.insert(partition, Reading { span, next: start, ended });
        }
        consumer.assign_list(&list).map_err(|error| {
            let (partition, offset) = readings.values().next().map_or((-1, -1), |r| (r.span.partition, r.next));
            ReadError::Client { topic: topic.to_string(), partition, offset, error }
        })?;
        let topic = topic.to_string();
        let (polled, ending, last_error, lenient) = (Duration::ZERO, None, None, false);
        Ok(PartitionReader { consumer, topic, readings, polled, ending, last_error, lenient })
    }

    /// Takes what the partitions keep: records retention removed before the read came to
    /// them are skipped, and a partition that now ends before a span's end (a broker that
    /// lost records) ends the span there, instead of failing the read.
    pub(crate) fn taking_what_is_kept(mut self) -> Self {
        self.lenient = true;
        self
    }

    /// The next record of a bounded read; `None` once every span is read to its end.
    pub(crate) fn next_record(&mut self) -> Result<Option<C::Message<'c>>, ReadError> {
        loop {
            match self.next(POLL_WAIT)? {
                Read::Record(message) => return Ok(Some(message)),
                Read::Done => return Ok(None),
                Read::Idle | Read::Ended(_) => {}
            }
        }
    }

    /// One step: polls the consumer for at most `wait`.
    pub(crate) fn next(&mut self, wait: Duration) -> Result<Read<C::Message<'c>>, ReadError> {
        if let Some(partition) = self.ending.take() {
            return Ok(Read::Ended(partition));
        }
        if self.readings.values().all(|r| r.ended) {
            return Ok(Read::Done);
        }
        self.check_stall()?;
        let consumer = self.consumer;
        let before = consumer.now();
        let polled = consumer.poll_for(wait);
        self.polled += consumer.now().saturating_duration_since(before);
        match polled {
            None => Ok(Read::Idle),
            Some(Ok(message)) => Ok(self.record(message)),
            Some(Err(KafkaError::PartitionEOF(partition))) => self.at_end(partition),
            // librdkafka reconnects by itself; whether the read has waited too long is the
            // stall rule's to say.
            Some(Err(error)) if unanswered(&error) => {
                self.last_error = Some(error.to_string());
                Ok(Read::Idle)
            }
            Some(Err(error)) => {
                let (partition, offset) = self.waiting().map_or((-1, -1), |r| (r.span.partition, r.next));
                Err(ReadError::Client { topic: self.topic.clone(), partition, offset, error })
            }
        }
    }

    /// The first bounded span still waiting for records.
    fn waiting(&self) -> Option<&Reading> {
        self.readings.values().find(|r| r.span.end.is_some() && !r.ended)
    }

    fn check_stall(&self) -> Result<(), ReadError> {
        match self.waiting() {
            Some(reading) if self.polled >= STALL_AFTER => Err(ReadError::Stalled {
                topic: self.topic.clone(),
                partition: reading.span.partition,
                offset: reading.next,
                end: reading.span.end.unwrap_or_default(),
                after: STALL_AFTER,
                last: self.last_error.clone(),
            }),
            _ => Ok(()),
        }
    }

    fn record(&mut self, message: C::Message<'c>) -> Read<C::Message<'c>> {
        let offset = message.offset();
        let Some(reading) = self.readings.get_mut(&message.partition()) else { return Read::Idle };
        if reading.ended || offset < reading.next {
            return Read::Idle;
        }
        self.polled = Duration::ZERO;
        self.last_error = None;
        match reading.span.end {
            Some(end) if offset >= end => {
                reading.ended = true;
                Read::Ended(reading.span.partition)
            }
            end => {
                reading.next = offset + 1;
                if end.is_some_and(|end| reading.next >= end) {
                    reading.ended = true;
                    self.ending = Some(reading.span.partition);
                }
                Read::Record(message)
            }
        }
    }

    /// The consumer reached what `partition` holds now: a bounded span waiting for records
    /// below its end has read all there is when the partition reaches that end (what is
    /// missing was compacted away).
    fn at_end(&mut self, partition: i32) -> Result<Read<C::Message<'c>>, ReadError> {
        let Some(reading) = self.readings.get_mut(&partition) else { return Ok(Read::Idle) };
        let Some(end) = reading.span.end.filter(|_| !reading.ended) else { return Ok(Read::Idle) };
        let (topic, offset) = (self.topic.clone(), reading.next);
        let (low, high) = self.consumer.watermarks(&self.topic, partition).map_err(|error| ReadError::Client {
            topic: topic.clone(),
            partition,
            offset,
            error,
        })?;
        if low > reading.span.start && !self.lenient {
            return Err(ReadError::Dropped { topic, partition, offset: reading.span.start, low });
        }
        if high < end && !self.lenient {
            return Err(ReadError::Shortened { topic, partition, offset, high, end });
        }
        // An end reported while the consumer was still behind says nothing of this span.
        if self.consumer.position_of(&self.topic, partition) < end.min(high) {
            return Ok(Read::Idle);
        }
        reading.ended = true;
        Ok(Read::Ended(partition))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};
    use rdkafka::types::RDKafkaErrorCode;
    use std::cell::{Cell, RefCell};
    use std::collections::VecDeque;

    /// What the scripted consumer's next poll gives.
    enum Step {
        Record(i32, i64),
        /// A partition's end, the consumer's position there.
        End(i32, i64),
        Fail,
        /// The broker is away (the client says so at once).
        Down,
        /// Nothing, after the whole wait.
        Quiet,
    }

    /// A consumer that plays a script on a clock of its own: a quiet poll takes its whole
    /// wait, anything else no time.
    struct Scripted {
        steps: RefCell<VecDeque<Step>>,
        marks: (i64, i64),
        position: Cell<i64>,
        start: Instant,
        clock: Cell<Duration>,
    }

    impl Scripted {
        fn new(steps: impl IntoIterator<Item = Step>, marks: (i64, i64)) -> Scripted {
            let steps = RefCell::new(steps.into_iter().collect());
            let (start, clock) = (Instant::now(), Cell::new(Duration::ZERO));
            Scripted { steps, marks, position: Cell::new(-1), start, clock }
        }

        /// Time passing outside the consumer (the caller busy with a record).
        fn pass(&self, time: Duration) {
            self.clock.set(self.clock.get() + time);
        }
    }

    impl Consume for Scripted {
        type Message<'a> = OwnedMessage;

        fn assign_list(&self, _: &TopicPartitionList) -> KafkaResult<()> {
            Ok(())
        }

        fn poll_for(&self, wait: Duration) -> Option<KafkaResult<OwnedMessage>> {
            match self.steps.borrow_mut().pop_front().unwrap_or(Step::Quiet) {
                Step::Record(partition, offset) => {
                    self.position.set(offset + 1);
                    let payload = Some(format!("r{offset}").into_bytes());
                    let topic = "t".to_string();
                    Some(Ok(OwnedMessage::new(payload, None, topic, Timestamp::NotAvailable, partition, offset, None)))
                }
                Step::End(partition, position) => {
                    self.position.set(position);
                    Some(Err(KafkaError::PartitionEOF(partition)))
                }
                Step::Fail => Some(Err(KafkaError::NoMessageReceived)),
                Step::Down => Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::BrokerTransportFailure))),
                Step::Quiet => {
                    self.pass(wait);
                    None
                }
            }
        }

        fn watermarks(&self, _: &str, _: i32) -> KafkaResult<(i64, i64)> {
            Ok(self.marks)
        }

        fn position_of(&self, _: &str, _: i32) -> i64 {
            self.position.get()
        }

        fn now(&self) -> Instant {
            self.start + self.clock.get()
        }
    }

    fn offsets(reader: &mut PartitionReader<'_, Scripted>) -> Result<Vec<i64>, ReadError> {
        let mut read = Vec::new();
        while let Some(message) = reader.next_record()? {
            read.push(message.offset());
        }
        Ok(read)
    }

    #[test]
    fn a_bounded_read_stalls_after_polling_stall_after_without_a_record() {
        let consumer = Scripted::new([Step::Record(3, 10), Step::Record(3, 11)], (0, 20));
        let mut reader = PartitionReader::new(&consumer, "events", [Span::bounded(3, 10..20)]).unwrap();
        let error = offsets(&mut reader).unwrap_err();
        assert!(matches!(error, ReadError::Stalled { partition: 3, offset: 12, end: 20, .. }), "{error:?}");
        let polled = consumer.now() - consumer.start;
        assert!(polled >= STALL_AFTER && polled < STALL_AFTER + 2 * POLL_WAIT, "{polled:?}");
        assert_eq!(
            error.to_string(),
            "topic events, partition 3, offset 12: no record for 30s, though the partition holds records up to 20 (is the broker up?)"
        );
    }

    #[test]
    fn records_reset_the_stall_and_time_outside_polls_is_not_a_stall() {
        // A record every 20 s of polling, and a caller that spends minutes with each one
        // (waiting to hand a shard on): 100 s in all, never 30 s of polling without a record.
        let mut steps = Vec::new();
        for offset in 0..5 {
            steps.extend((0..200).map(|_| Step::Quiet));
            steps.push(Step::Record(0, offset));
        }
        let consumer = Scripted::new(steps, (0, 5));
        let mut reader = PartitionReader::new(&consumer, "t", [Span::bounded(0, 0..5)]).unwrap();
        let mut read = Vec::new();
        while let Some(message) = reader.next_record().unwrap() {
            read.push(message.offset());
            consumer.pass(Duration::from_secs(300));
        }
        assert_eq!(read, [0, 1, 2, 3, 4]);
    }

    #[test]
    fn a_broker_away_is_polled_through_and_only_the_stall_rule_ends_the_read() {
        // A restart: the client says the broker is down, then records come again.
        let mut steps = vec![Step::Record(0, 0)];
        for _ in 0..5 {
            steps.extend([Step::Down, Step::Quiet, Step::Quiet]);
        }
        steps.push(Step::Record(0, 1));
        let consumer = Scripted::new(steps, (0, 2));
        let mut reader = PartitionReader::new(&consumer, "t", [Span::bounded(0, 0..2)]).unwrap();
        assert_eq!(offsets(&mut reader).unwrap(), [0, 1]);
        // A broker gone for good: the stall says so, with what the client last said.
        let consumer = Scripted::new([Step::Down], (0, 2));
        let mut reader = PartitionReader::new(&consumer, "t", [Span::bounded(0, 0..2)]).unwrap();
        let error = offsets(&mut reader).unwrap_err().to_string();
        assert!(error.contains("no record for 30s") && error.contains("the client last said"), "{error}");
        assert!(error.contains("BrokerTransportFailure"), "{error}");
    }

    #[test]
    fn a_followed_partition_never_stalls() {
        let consumer = Scripted::new([], (0, 0));
        let mut reader = PartitionReader::new(&consumer, "t", [Span::followed(0, 7)]).unwrap();
        for _ in 0..100 {
            assert!(matches!(reader.next(Duration::from_secs(1)).unwrap(), Read::Idle));
        }
        assert!(consumer.now() - consumer.start > STALL_AFTER);
    }

    #[test]
    fn old_and_repeated_offsets_are_skipped_and_a_record_past_the_end_ends_the_span() {
        let steps = [3, 5, 4, 5, 6, 9, 12].map(|offset| Step::Record(0, offset));
        let consumer = Scripted::new(steps, (0, 20));
        let mut reader = PartitionReader::new(&consumer, "t", [Span::bounded(0, 5..10)]).unwrap();
        assert_eq!(offsets(&mut reader).unwrap(), [5, 6, 9]);
    }

    #[test]
    fn the_partitions_end_ends_a_span_whose_tail_was_compacted_unless_records_are_missing() {
        // Records 10..20 planned, 15..20 compacted away; an end reported while the consumer was
        // still behind (at 12) is not the span's.
        let steps = [Step::Record(0, 10), Step::Record(0, 11), Step::End(0, 12), Step::Record(0, 14), Step::End(0, 20)];
        let consumer = Scripted::new(steps, (0, 20));
        let mut reader = PartitionReader::new(&consumer, "t", [Span::bounded(0, 10..20)]).unwrap();
        assert_eq!(offsets(&mut reader).unwrap(), [10, 11, 14]);
        // The partition holds less than the range: an error, not an end.
        let consumer = Scripted::new([Step::Record(0, 10), Step::End(0, 12)], (0, 12));
        let mut reader = PartitionReader::new(&consumer, "t", [Span::bounded(0, 10..20)]).unwrap();
        assert!(matches!(offsets(&mut reader), Err(ReadError::Shortened { high: 12, .. })));
        // The first records are gone (retention): an error.
        let consumer = Scripted::new([Step::Record(0, 16), Step::End(0, 20)], (15, 20));
        let mut reader = PartitionReader::new(&consumer, "t", [Span::bounded(0, 10..20)]).unwrap();
        assert!(matches!(offsets(&mut reader), Err(ReadError::Dropped { offset: 10, low: 15, .. })));
        let consumer = Scripted::new([Step::Record(0, 16), Step::End(0, 18)], (15, 18));
        let reader = PartitionReader::new(&consumer, "t", [Span::bounded(0, 10..20)]).unwrap();
        assert_eq!(offsets(&mut reader.taking_what_is_kept()).unwrap(), [16], "a watch takes what is kept");
    }

    #[test]
    fn several_spans_end_one_by_one_and_errors_name_the_waiting_partition() {
        let steps = [Step::Record(1, 0), Step::Record(0, 4), Step::Fail];
        let consumer = Scripted::new(steps, (0, 5));
        let spans = [Span::bounded(0, 4..5), Span::bounded(1, 0..2), Span::bounded(2, 3..3)];
        let mut reader = PartitionReader::new(&consumer, "t", spans).unwrap();
        let mut seen = Vec::new();
        let error = loop {
            match reader.next(POLL_WAIT) {
                Ok(Read::Record(message)) => seen.push(format!("{}:{}", message.partition(), message.offset())),
                Ok(Read::Ended(partition)) => seen.push(format!("end {partition}")),
                Ok(Read::Idle) => seen.push("idle".into()),
                Ok(Read::Done) => panic!("partition 1 is not read to its end"),
                Err(error) => break error,
            }
        };
        assert_eq!(seen, ["1:0", "0:4", "end 0"]);
        assert!(matches!(error, ReadError::Client { partition: 1, offset: 1, .. }), "{error:?}");
    }
}
