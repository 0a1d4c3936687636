//! One shard's attempts: launching them (first, retries, backups), classifying how each
//! ended, publishing the winner, retrying or failing the shard, and watching running
//! attempts for relative timeouts, output-rule breaches and straggling. Part of the
//! coordinator (`run`): these are its methods, run in its task, on its state.

use super::finish::process_cpu_time;
use super::record;
use super::state::{AttemptInfo, Cancelled, Running};
use super::{backoff_before, tail, Coordinator, Msg, CLEAN_EAGERLY};
use crate::events::Event;
use crate::executor::{AttemptDone, Task};
use crate::runtime::capture::Kept;
use crate::runtime::Outcome;
use crate::stage::{self, OutputFile, OutputRules, PublishError, StageError};
use std::time::{Duration, Instant};

/// Empties a finished attempt's output folder in the background (a backup's folder goes).
fn spawn_discard(running: &Running) {
    let (out_dir, backup) = (running.out_dir.clone(), running.backup);
    tokio::spawn(async move { stage::discard_dir(&out_dir, backup).await });
}

/// Whether a failed guest said it ran out of room. WASI gives the guest ENOSPC, and the guest
/// reports it however its language does; every libc and Rust's std print the same words.
/// Read on failures only, from the in-memory stderr.
fn guest_ran_out_of_room(info: &AttemptInfo) -> bool {
    matches!(&info.stderr, Some(Kept::Memory(text)) if String::from_utf8_lossy(text).contains("No space left on device"))
}

/// Running attempts older than this have their `/out` checked against the output rules
/// this often, so that a runaway guest is stopped long before it fills the disk.
const OUTPUT_CHECK: Duration = Duration::from_secs(1);

impl Coordinator {
    /// Launches the next attempt of a staged shard: a retry or the first attempt into the
    /// slot's `out/`, a backup into a folder of its own beside it.
    pub(super) fn submit(&mut self, id: u64, backup: bool) {
        let job = &self.job;
        let total_hint = self.plan_totals.as_ref().map(|t| t.shards).unwrap_or(self.planned);
        let flight = self.in_flight.get_mut(&id).expect("submitted shards are in flight");
        flight.attempts += 1;
        let staged = flight.staged.as_ref().expect("a submitted shard is staged");
        let attempt = flight.global_attempt();
        let is_records = flight.shard.is_records();
        let call = stage::Call {
            job_id: self.manifest.job_id(),
            name: &job.name,
            args: &job.function.args,
            env: &job.function.env,
            shard: id,
            shards_hint: total_hint,
            attempt,
            command: job.function.command.as_deref(),
            object: flight.shard.only_object(),
        };
        let slot = &flight.slot;
        let out_dir = if backup { slot.dir.join(format!("out.{attempt}")) } else { slot.out_dir.clone() };
        let invocation = stage::invocation(
            slot,
            out_dir.clone(),
            crate::side_files::folder_of(&job.function.files),
            attempt,
            call.argv_env(),
            staged.stdin.clone(),
            is_records,
            job.output.max_bytes,
        );
        let rules = OutputRules { max_files: job.output.max_files, max_bytes: job.output.max_bytes };
        let running = Running {
            attempt,
            token: flight.cancel.child_token(),
            started: Default::default(),
            out_dir: out_dir.clone(),
            backup,
            cancelled: None,
            output_checked: None,
            output_check_running: false,
        };
        let task = Task {
            shard: flight.shard.clone(),
            attempt,
            invocation,
            cancel: running.token.clone(),
            started: running.started.clone(),
            outputs: (out_dir, rules),
            make_out_dir: backup,
        };
        flight.running.push(running);
        self.stats.attempts += 1;
        if backup {
            self.stats.backups += 1;
        }
        if self.map_start.is_none() {
            self.map_start = Some((Instant::now(), process_cpu_time()));
        }
        self.executor.submit(task);
    }

    /// An attempt came back from the pool: a loser is discarded, a failure retried or
    /// recorded, a success claims its outputs and publishes them.
    pub(super) fn on_attempt_done(&mut self, done: AttemptDone) {
        self.count_start(&done);
        let shard = done.shard;
        let Some(flight) = self.in_flight.get_mut(&shard) else { return };
        let Some(position) = flight.running.iter().position(|r| r.attempt == done.attempt) else { return };
        let running = flight.running.remove(position);
        let outcome = match (&done.report.outcome, &running.cancelled) {
            (Outcome::Cancelled, Some(Cancelled::Timeout)) => Outcome::Timeout,
            (Outcome::Cancelled, Some(Cancelled::Outputs(broken))) => Outcome::Error(broken.clone()),
            (outcome, _) => outcome.clone(),
        };
        *self.stats.outcomes.entry(outcome.kind()).or_default() += 1;
        let info = AttemptInfo::of(&done, outcome.clone(), running.backup);
        if flight.won || running.cancelled == Some(Cancelled::LostRace) {
            return self.lost_race(shard, info, running);
        }
        let files = match (done.outputs, outcome.is_ok()) {
            (Some(Ok(files)), true) => files,
            (Some(Err(rule_broken)), _) => {
                return self.attempt_failed(shard, info, Some(running), Outcome::Error(rule_broken), false)
            }
            _ => return self.attempt_failed(shard, info, Some(running), outcome, false),
        };
        // A record shard's stdout is its part; a remote worker already staged it as an output.
        let stdout_key = flight.shard.stdout_key().filter(|key| !files.iter().any(|file| &file.key == key));
        let keys: Vec<&str> = files.iter().map(|file| file.key.as_str()).chain(stdout_key.as_deref()).collect();
        if let Err(taken) = self.claim_outputs(shard, &keys) {
            return self.attempt_failed(shard, info, Some(running), Outcome::Error(taken), false);
        }
        self.publish_winner(shard, info, running, files, stdout_key);
    }

    /// Cold and warm starts, time in guests, and the end of the map so far.
    fn count_start(&mut self, done: &AttemptDone) {
        self.stats.busy_ms += done.report.elapsed.as_millis() as u64;
        // CPU time is read once at the end (getrusage walks every thread: too dear per shard).
        self.map_end = Some(Instant::now());
        // An attempt cancelled before it started never used its worker.
        if done.report.elapsed > Duration::ZERO || !matches!(done.report.outcome, Outcome::Cancelled) {
            if done.cold_start {
                self.stats.cold_starts += 1;
            } else {
                self.stats.warm_starts += 1;
            }
        }
    }

    /// Another attempt of the shard won: this one publishes nothing. The last attempt back
    /// lets a shard that was finalized meanwhile complete.
    fn lost_race(&mut self, shard: u64, info: AttemptInfo, running: Running) {
        let Some(flight) = self.in_flight.get_mut(&shard) else { return };
        flight.history.push(info);
        spawn_discard(&running);
        if flight.running.is_empty() {
            if let Some((record, slot)) = flight.parked.take() {
                self.complete(shard, record, slot);
            }
        }
    }

    /// Claims output keys for `shard`; refused when another shard of the job published one.
    fn claim_outputs(&mut self, shard: u64, keys: &[&str]) -> Result<(), String> {
        for key in keys {
            if let Some(&owner) = self.output_owners.get(&super::output_key_hash(key)) {
                let newer_version = self.supersedes.get(&shard).is_some_and(|earlier| earlier.contains(&owner));
                if owner != shard && !newer_version {
                    return Err(format!(
                        "output {key} is also an output of shard {owner:05}: shards must write distinct paths, and this one publishes nothing"
                    ));
                }
            }
        }
        for key in keys {
            self.output_owners.insert(super::output_key_hash(key), shard);
        }
        Ok(())
    }

    /// This attempt won: every other attempt of the shard is cancelled (and publishes
    /// nothing), and its outputs, log and record are stored in that order.
    fn publish_winner(
        &mut self,
        shard: u64,
        info: AttemptInfo,
        running: Running,
        files: Vec<OutputFile>,
        stdout_key: Option<String>,
    ) {
        let Some(flight) = self.in_flight.get_mut(&shard) else { return };
        flight.won = true;
        for other in &mut flight.running {
            other.cancelled = Some(Cancelled::LostRace);
            other.token.cancel();
        }
        let stdout_object = stdout_key.map(|key| (key, info.stdout.clone()));
        flight.history.push(info);
        let mut record = record::build_record(flight, true, self.run, &self.job.function);
        record.supersedes = self.supersedes.get(&shard).cloned().unwrap_or_default();
        let backup_dir = running.backup.then(|| running.out_dir.clone());
        let staged = flight.staged.clone().unwrap_or_default();
        if files.is_empty() && stdout_object.is_none() && !record::needs_log(flight, true) {
            // Nothing to store but the record: finish here, without a task.
            let slot = flight.slot.clone().release(staged, flight.captures(), false, backup_dir);
            return self.on_message(Msg::Finalized { shard, record: Some(record), slot });
        }
        let log = record::needs_log(flight, true).then(|| record::compose_log(flight));
        let (dest, manifest, tx) = (self.dest.clone(), self.manifest.clone(), self.msg_tx.clone());
        let (slot, captures) = (flight.slot.clone(), flight.captures());
        tokio::spawn(async move {
            crate::panics::injected("publish");
            let published = match stage::publish(&dest, files, stdout_object).await {
                Ok(published) => published,
                Err(error) => {
                    let _ = tx.send(Msg::PublishFailed { shard, error });
                    return;
                }
            };
            let mut record = record;
            record.outputs = published.outputs;
            record.bytes_out = published.bytes_out;
            record::store_log(&manifest, shard, log, &mut record).await;
            let mut captures = captures;
            captures.extend(published.left_in_out);
            let mut slot = slot.release(staged, captures, published.out_dirty, backup_dir);
            if record.bytes_in + record.bytes_out >= CLEAN_EAGERLY {
                slot = slot.clean_now().await;
            }
            let _ = tx.send(Msg::Finalized { shard, record: Some(record), slot });
        });
    }

    /// Publishing the winner's outputs failed (nothing of them is left in DEST): the attempt
    /// failed after all, and what it left in its `/out` goes before any retry.
    pub(super) fn publish_failed(&mut self, shard: u64, error: PublishError) {
        let Some(flight) = self.in_flight.get_mut(&shard) else { return };
        flight.won = false;
        let Some(info) = flight.history.pop() else { return };
        let out_dir = if info.backup {
            flight.slot.dir.join(format!("out.{}", info.attempt))
        } else {
            flight.slot.out_dir.clone()
        };
        let running = Running::ended(info.attempt, out_dir, info.backup);
        let ran_out = error.is_no_space();
        self.attempt_failed(shard, info, Some(running), Outcome::Error(error.to_string()), ran_out);
    }

    /// Staging the shard's inputs failed: that counts as an attempt of its own. A full
    /// staging disk is named as the cause.
    pub(super) fn staging_failed(&mut self, shard: u64, error: StageError) {
        let Some(flight) = self.in_flight.get_mut(&shard) else { return };
        flight.attempts += 1;
        let mut message = error.to_string();
        if let Some(full) = stage::full_message(&self.staging_root, error.is_no_space()) {
            message = format!("{message} ({full})");
        }
        let info = AttemptInfo::not_started(flight.global_attempt(), Outcome::Error(message));
        self.settle_failure(shard, info, None);
    }

    /// An attempt that ran failed. A full staging disk is named as the cause when the disk
    /// is full now, or when the attempt ran out of room (`ran_out`: publishing's typed
    /// error said so, or the guest did, in the only way a guest can: its own words).
    pub(super) fn attempt_failed(
        &mut self,
        shard: u64,
        mut info: AttemptInfo,
        running: Option<Running>,
        outcome: Outcome,
        ran_out: bool,
    ) {
        let ran_out = ran_out || guest_ran_out_of_room(&info);
        info.outcome = match (outcome, stage::full_message(&self.staging_root, ran_out)) {
            (outcome @ Outcome::Cancelled, _) | (outcome, None) => outcome,
            (Outcome::Error(message), Some(full)) => Outcome::Error(format!("{message} ({full})")),
            (other, Some(full)) => Outcome::Error(format!("{other} ({full})")),
        };
        self.settle_failure(shard, info, running);
    }

    /// After a failed attempt: retry after backoff, or give up. While another attempt of
    /// the shard still runs, that one decides; a cancelled attempt leaves the shard pending.
    fn settle_failure(&mut self, shard: u64, info: AttemptInfo, running: Option<Running>) {
        let (max_attempts, backoff) = (self.job.retry.attempts, self.job.retry.backoff());
        let Some(flight) = self.in_flight.get_mut(&shard) else { return };
        let (attempt, outcome) = (info.attempt, info.outcome.clone());
        flight.history.push(info);
        if matches!(outcome, Outcome::Cancelled) {
            running.iter().for_each(spawn_discard);
            if flight.running.is_empty() {
                self.abandon(shard);
            }
            return;
        }
        flight.failures += 1;
        let others_running = !flight.running.is_empty();
        let retry = flight.failures < max_attempts && !self.stopping;
        let will_retry = retry && !others_running;
        self.events.emit(Event::AttemptFailed { shard, attempt, outcome: outcome.to_string(), retry: will_retry });
        if others_running || !retry {
            running.iter().for_each(spawn_discard);
        }
        if others_running {
            // A backup (or the original) is still running: it decides the shard's fate.
            return;
        }
        if !retry {
            return if self.stopping { self.abandon(shard) } else { self.finalize_failed(shard) };
        }
        self.stats.retries += 1;
        let delay = backoff_before(flight.failures + 1, backoff);
        let tx = self.msg_tx.clone();
        let discard = running.map(|r| (r.out_dir, r.backup));
        tokio::spawn(async move {
            // Nothing of a failed attempt is ever published: its /out goes first.
            if let Some((out_dir, backup)) = discard {
                stage::discard_dir(&out_dir, backup).await;
            }
            tokio::time::sleep(delay).await;
            let _ = tx.send(Msg::RetryDue { shard });
        });
    }

    /// Leaves a shard pending (stopping early): no record, slot emptied.
    pub(super) fn abandon(&mut self, shard: u64) {
        let Some(flight) = self.in_flight.get(&shard) else { return };
        let slot =
            flight.slot.clone().release(flight.staged.clone().unwrap_or_default(), flight.captures(), true, None);
        let _ = self.msg_tx.send(Msg::Finalized { shard, record: None, slot });
    }

    /// The shard failed for good: store its log, empty its slot, record the failure.
    pub(super) fn finalize_failed(&mut self, shard: u64) {
        let Some(flight) = self.in_flight.get(&shard) else { return };
        let mut record = record::build_record(flight, false, self.run, &self.job.function);
        record.supersedes = self.supersedes.get(&shard).cloned().unwrap_or_default();
        let log = record::compose_log(flight);
        let (manifest, tx) = (self.manifest.clone(), self.msg_tx.clone());
        let slot =
            flight.slot.clone().release(flight.staged.clone().unwrap_or_default(), flight.captures(), true, None);
        tokio::spawn(async move {
            let mut record = record;
            record::store_log(&manifest, shard, Some(log), &mut record).await;
            let _ = tx.send(Msg::Finalized { shard, record: Some(record), slot });
        });
    }

    /// Output rules, relative timeouts and backup attempts: checked every `TAIL_CHECK`.
    pub(super) fn watch_tail(&mut self) {
        let median = self.durations.median();
        // tokio's clock, as the executors' start clocks: a paused clock in tests runs the tail.
        let now = tokio::time::Instant::now();
        let rules = OutputRules { max_files: self.job.output.max_files, max_bytes: self.job.output.max_bytes };
        // A remote worker checks its own `/out` when the guest ends; nothing is here to watch.
        let local = self.executor.stages_locally();
        for (id, flight) in self.in_flight.iter_mut().filter(|_| local) {
            for running in flight.running.iter_mut().filter(|r| r.cancelled.is_none() && !r.output_check_running) {
                let due = |since: tokio::time::Instant| now.duration_since(since) >= OUTPUT_CHECK;
                if !running.started.get().is_some_and(due) || !running.output_checked.is_none_or(due) {
                    continue;
                }
                running.output_checked = Some(now);
                running.output_check_running = true;
                let (tx, out_dir, shard, attempt) =
                    (self.msg_tx.clone(), running.out_dir.clone(), *id, running.attempt);
                tokio::task::spawn_blocking(move || {
                    let broken = stage::scan_outputs(&out_dir, rules).err();
                    let _ = tx.send(Msg::OutputsChecked { shard, attempt, broken });
                });
            }
        }
        if let (Some(percent), Some(median)) = (self.job.function.relative_timeout_percent, median) {
            let limit = tail::relative_limit(median, percent);
            for flight in self.in_flight.values_mut() {
                for running in flight.running.iter_mut().filter(|r| r.cancelled.is_none()) {
                    if running.started.get().is_some_and(|started| now.duration_since(started) > limit) {
                        running.cancelled = Some(Cancelled::Timeout);
                        running.token.cancel();
                    }
                }
            }
        }
        if self.stopping || !self.job.stragglers.backup || !self.executor.can_start_now() {
            return;
        }
        let done = self.stats.shards_ok + self.stats.shards_failed + self.stats.shards_skipped;
        let total = self.plan_done.then(|| self.plan_totals.as_ref().map(|t| t.shards)).flatten();
        let straggler = self.in_flight.iter().find_map(|(id, flight)| {
            let [only] = flight.running.as_slice() else { return None };
            let started = only.started.get()?;
            let eligible =
                !flight.won && !only.backup && only.cancelled.is_none() && flight.history.iter().all(|a| !a.backup);
            (eligible && tail::wants_backup(&self.job.stragglers, done, total, median, now.duration_since(started)))
                .then_some(*id)
        });
        if let Some(shard) = straggler {
            self.events.emit(Event::Note(format!("shard {shard:05} is a straggler: starting a backup attempt")));
            self.submit(shard, true);
        }
    }
}
