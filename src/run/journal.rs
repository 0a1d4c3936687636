//! Commits: a shard leaving flight has its record buffered and written to the journal in
//! segments (one write at a time, in order; a watch's plan segment before the journal segment
//! that names its shards), the commit listener told once records are stored, and a watch's
//! snapshots of the run for its periodic reports.

use super::{Coordinator, RunResult, JOURNAL_BATCH};
use crate::events::Event;
use crate::manifest::{Counts, ShardRecord, ShardStatus};
use crate::stage::Slot;
use std::collections::BTreeMap;

impl Coordinator {
    pub(super) fn has_journal_work(&self) -> bool {
        !self.journal_buffer.is_empty()
            || !self.journal_writes.is_empty()
            || (self.watch.is_some() && !self.plan_buffer.is_empty())
    }

    /// The run's state as a result, prior runs' records included (for a watch's reports).
    pub(super) fn snapshot(&self) -> RunResult {
        let mut records = self.records.clone();
        for (shard, record) in &self.prior.latest {
            records.entry(*shard).or_insert_with(|| record.clone());
        }
        let mut stats = self.stats.clone();
        let Counts { ok, failed, superseded } = Counts::of(records.values());
        stats.shards_total = self.shards_known(&records);
        stats.shards_pending = stats.shards_total.saturating_sub(ok + failed + superseded);
        stats.workers_peak = self.executor.peak();
        stats.workers_at_end = self.executor.live();
        stats.wall_ms = self.started.elapsed().as_millis() as u64;
        let succeeded = self.job.retry.tolerated.allows(failed, stats.shards_total);
        RunResult { stats, plan_failure: None, records, plan_totals: None, succeeded }
    }

    /// Shards a watch knows of: every id up to the highest recorded or taken.
    pub(super) fn shards_known(&self, records: &BTreeMap<u64, ShardRecord>) -> u64 {
        let recorded = records.keys().next_back().copied();
        recorded.max(self.last_shard).map_or(0, |last| last + 1)
    }

    pub(super) fn send_snapshot(&mut self) {
        self.unreported = false;
        if let Some(watch) = &self.watch {
            let _ = watch.snapshots.send(self.snapshot());
        }
    }

    /// The shard leaves flight: its slot is free again and its record goes to the journal.
    pub(super) fn complete(&mut self, shard: u64, record: Option<ShardRecord>, slot: Slot) {
        let flight = self.in_flight.remove(&shard);
        if let Some(flight) = &flight {
            self.bytes_in_flight -= flight.shard.bytes_in();
        }
        if let Some(free) = self.slots.as_mut() {
            free.push(slot);
        }
        let Some(record) = record else { return };
        let ok = record.status == ShardStatus::Ok;
        if let (true, Some(_), Some(flight)) = (ok, &self.on_commit, flight) {
            self.commit_buffer.push(flight.shard);
        }
        if ok {
            self.stats.shards_ok += 1;
            self.durations.add(record.duration_ms);
            if record.backup {
                self.stats.backups_won += 1;
            }
        } else {
            self.stats.shards_failed += 1;
        }
        self.stats.bytes_in += record.bytes_in;
        self.stats.bytes_out += record.bytes_out;
        self.events.emit(Event::ShardFinished { ok });
        self.unreported = self.watch.is_some();
        self.records.insert(record.shard, record.clone());
        self.journal_buffer.push(record);
        if self.journal_buffer.len() >= JOURNAL_BATCH {
            self.flush_journal();
        }
    }

    /// Writes buffered records as one journal segment (one write at a time, in order).
    pub(super) fn flush_journal(&mut self) {
        // A segment that could not be written (after the storage's own retries) stops the
        // run: its shards stay uncommitted, and a redrive runs them again.
        let (finished, writing) = std::mem::take(&mut self.journal_writes).into_iter().partition(|h| h.is_finished());
        self.journal_writes = writing;
        for handle in finished {
            let failure = match futures::FutureExt::now_or_never(handle) {
                Some(Ok(Err(e))) => Some(format!("writing the journal: {e}")),
                Some(Err(e)) => Some(format!("writing the journal: {e}")),
                _ => None,
            };
            if let Some(failure) = failure {
                self.fatal.get_or_insert(failure);
            }
        }
        if !self.journal_writes.is_empty() {
            return;
        }
        // A watch's plan grows with its journal: each plan segment is written before the
        // journal segment that names its shards, so a restart finds every committed shard's
        // objects (and so never runs them again).
        let plan = match (&self.watch, self.plan_buffer.is_empty()) {
            (Some(_), false) => {
                let segment = self.plan_segment;
                self.plan_segment += 1;
                Some((segment, std::mem::take(&mut self.plan_buffer)))
            }
            _ => None,
        };
        if self.journal_buffer.is_empty() && plan.is_none() {
            return;
        }
        let records = std::mem::take(&mut self.journal_buffer);
        let committed = std::mem::take(&mut self.commit_buffer);
        let segment = self.journal_segment;
        if !records.is_empty() {
            self.journal_segment += 1;
        }
        let manifest = self.manifest.clone();
        let run = self.run;
        let listener = self.on_commit.clone();
        self.journal_writes.push(tokio::spawn(async move {
            if let Some((plan_segment, shards)) = plan {
                manifest.write_plan_segment(plan_segment, &shards).await?;
            }
            if records.is_empty() {
                return Ok(());
            }
            manifest.write_journal_segment(run, segment, &records).await?;
            if let Some(listener) = listener {
                listener.committed(&committed);
            }
            Ok(())
        }));
    }
}
