//! The end of a run: waiting for the last journal and plan writes, flushing the commit
//! listener, marking the plan complete, and the run's accounting (counts, wall and CPU time,
//! whether the job succeeded).

use super::{Coordinator, RunError, RunResult};
use crate::events::Event;
use crate::manifest::Counts;
use std::time::Duration;

/// CPU time (user + system) this process has used so far.
pub(super) fn process_cpu_time() -> Duration {
    use nix::sys::resource::{getrusage, UsageWho};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else { return Duration::ZERO };
    let micros = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Duration::from_micros(micros(usage.user_time()) + micros(usage.system_time()))
}

impl Coordinator {
    pub(super) async fn finish(mut self) -> Result<RunResult, RunError> {
        // Cancelled attempts may end the run before the loop heard the second Ctrl-C.
        if self.stopping && self.shutdown.hard.is_cancelled() && !self.hard_stopped {
            self.events.emit(Event::Stopping { hard: true });
        }
        for handle in std::mem::take(&mut self.journal_writes) {
            handle.await.map_err(|e| RunError::Fatal(format!("writing the journal: {e}")))??;
        }
        self.flush_journal();
        for handle in std::mem::take(&mut self.journal_writes) {
            handle.await.map_err(|e| RunError::Fatal(format!("writing the journal: {e}")))??;
        }
        for handle in std::mem::take(&mut self.plan_writes) {
            handle.await.map_err(|e| RunError::Fatal(format!("storing the plan: {e}")))??;
        }
        if let Some(listener) = &self.on_commit {
            if let Err(e) = listener.flush().await {
                self.events.emit(Event::Note(format!(
                    "warning: {e} (the job's manifest is complete; the group's offsets lag)"
                )));
            }
        }
        if let Some(fatal) = self.fatal.take() {
            return Err(RunError::Fatal(fatal));
        }
        // The plan is complete once every segment is stored; say so in job.json.
        if self.watch.is_none() && self.plan_totals.is_some() && self.record_plan && !self.write_job_document {
            let mut document = self.document.clone();
            document.plan.complete = true;
            document.plan.segments = self.plan_segment;
            document.plan.totals = self.plan_totals.clone();
            self.manifest.write_job(&document).await?;
        }
        let _ = tokio::fs::remove_dir_all(&self.staging_root).await;
        self.executor.sweep().await;
        self.stats.workers_peak = self.executor.peak();
        self.stats.workers_at_end = self.executor.live();
        self.stats.executor = self.executor.summary();
        self.stats.wall_ms = self.started.elapsed().as_millis() as u64;
        if let (Some((t0, cpu0)), Some(t1)) = (self.map_start, self.map_end) {
            let cpu1 = process_cpu_time();
            let span = t1.saturating_duration_since(t0);
            let cores =
                std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(self.job.workers.max.max(1));
            self.stats.map_ms = span.as_millis() as u64;
            if !span.is_zero() {
                self.stats.map_cpu_busy = cpu1.saturating_sub(cpu0).as_secs_f64() / (span.as_secs_f64() * cores as f64);
            }
        }
        // Shards committed by earlier runs but not reached this run (a stop before planning
        // got to them) still count.
        for (shard, record) in &self.prior.latest {
            self.records.entry(*shard).or_insert_with(|| record.clone());
        }
        let total = match &self.watch {
            Some(_) => self.shards_known(&self.records),
            None => self.plan_totals.as_ref().map(|t| t.shards).unwrap_or(self.planned.max(self.records.len() as u64)),
        };
        let Counts { ok, failed, superseded } = Counts::of(self.records.values());
        self.stats.shards_total = total;
        self.stats.shards_pending = total.saturating_sub(ok + failed + superseded);
        let succeeded = self.plan_totals.is_some()
            && self.stats.plan_error.is_none()
            && self.stats.shards_pending == 0
            && !self.stats.stopped_early
            && self.job.retry.tolerated.allows(failed, total);
        Ok(RunResult {
            stats: self.stats,
            plan_failure: self.plan_failure,
            records: self.records,
            plan_totals: self.plan_totals,
            succeeded,
        })
    }
}
