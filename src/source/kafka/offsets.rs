//! The consumer group's offsets, moved behind the manifest: a partition's offset advances
//! only over shards whose commit records are stored, and only while they leave no gap (a
//! failed or unfinished shard holds it back). Commits go to Kafka one at a time, in order,
//! from one task, so the group's offset never moves backwards. Kafka's offsets are a
//! courtesy to other tools (lag monitors, a later job starting at `committed`); a restart
//! of this job resumes from its manifest.

use super::topic::KafkaTopic;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;

pub(crate) struct GroupOffsets {
    consumer: Arc<BaseConsumer>,
    topic: String,
    state: Mutex<BTreeMap<i32, Frontier>>,
    moved: Arc<Notify>,
    /// Serializes commits: the background task and `flush` never commit at once.
    committing: tokio::sync::Mutex<()>,
}

/// One partition: the offset committed shards reach without a gap, and the ranges done
/// beyond a gap, waiting for it to close.
#[derive(Debug, Default)]
struct Frontier {
    next: i64,
    ahead: BTreeMap<i64, i64>,
    committed: Option<i64>,
}

impl Frontier {
    fn done(&mut self, start: i64, end: i64) {
        if end <= self.next {
            return;
        }
        self.ahead.insert(start, end);
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() > self.next {
                break;
            }
            let end = entry.remove();
            self.next = self.next.max(end);
        }
    }
}

impl GroupOffsets {
    /// Follows the group from `starts` (partition, the first offset this job has not
    /// committed), and commits its offsets from a background task as they move.
    pub(crate) fn start(
        topic: &KafkaTopic,
        starts: impl IntoIterator<Item = (i32, i64)>,
    ) -> Result<Arc<Self>, super::client::KafkaSourceError> {
        let state = starts.into_iter().map(|(p, next)| (p, Frontier { next, ..Frontier::default() })).collect();
        let offsets = Arc::new(GroupOffsets {
            consumer: Arc::new(topic.consumer(false)?),
            topic: topic.topic().to_string(),
            state: Mutex::new(state),
            moved: Arc::new(Notify::new()),
            committing: tokio::sync::Mutex::new(()),
        });
        let (follower, moved) = (Arc::downgrade(&offsets), offsets.moved.clone());
        tokio::spawn(async move {
            loop {
                moved.notified().await;
                let Some(offsets) = follower.upgrade() else { return };
                // A failed commit is tried again with the next move, and by `flush` at the end.
                let _ = offsets.flush().await;
            }
        });
        Ok(offsets)
    }

    /// Ranges (partition, start, end) of shards committed successfully.
    pub(crate) fn committed(&self, ranges: impl IntoIterator<Item = (i32, i64, i64)>) {
        let mut state = self.state.lock().expect("offsets lock");
        for (partition, start, end) in ranges {
            state.entry(partition).or_insert_with(|| Frontier { next: start, ..Frontier::default() }).done(start, end);
        }
        drop(state);
        self.moved.notify_one();
    }

    /// Commits every partition whose offset moved since its last commit, and waits for it.
    pub(crate) async fn flush(&self) -> Result<(), String> {
        let _one_at_a_time = self.committing.lock().await;
        let mut list = TopicPartitionList::new();
        let mut moving = Vec::new();
        for (&partition, frontier) in self.state.lock().expect("offsets lock").iter() {
            if frontier.committed != Some(frontier.next) {
                list.add_partition_offset(&self.topic, partition, Offset::Offset(frontier.next))
                    .map_err(|e| e.to_string())?;
                moving.push((partition, frontier.next));
            }
        }
        if moving.is_empty() {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync))
            .await
            .expect("committing offsets does not panic")
            .map_err(|e| format!("committing the group's offsets: {e}"))?;
        let mut state = self.state.lock().expect("offsets lock");
        for (partition, next) in moving {
            if let Some(frontier) = state.get_mut(&partition) {
                frontier.committed = Some(next);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frontier_waits_for_gaps() {
        let mut frontier = Frontier { next: 100, ..Frontier::default() };
        frontier.done(200, 300);
        assert_eq!(frontier.next, 100);
        frontier.done(100, 200);
        assert_eq!(frontier.next, 300);
        frontier.done(100, 200);
        assert_eq!(frontier.next, 300);
    }
}
