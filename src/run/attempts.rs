//! One shard's attempts: launching them (first, retries, backups), classifying how each
//! ended, publishing the winner, retrying or failing the shard, and watching running
//! attempts for relative timeouts, output-rule breaches and straggling. Part of the
//! coordinator (`run`): these are its methods, run in its task, on its state.

use super::{backoff_before, process_cpu_time, record, tail, Coordinator, Msg, CLEAN_EAGERLY, LOG_CAP};
use crate::events::Event;
use crate::manifest::ShardRecord;
use crate::plan::Shard;
use crate::pool::{AttemptDone, Task};
use crate::runtime::capture::{Kept, Overflow};
use crate::runtime::{Invocation, Outcome};
use crate::stage::{self, OutputRules, Slot, Staged};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use tokio_util::sync::CancellationToken;

/// Empties a finished attempt's output folder in the background (a backup's folder goes).
fn spawn_discard(running: &Running) {
    let (out_dir, backup) = (running.out_dir.clone(), running.backup);
    tokio::spawn(async move { stage::discard_dir(&out_dir, backup).await });
}

/// Says so when the staging folder's file system has (almost) no room left, or had none
/// when the failure happened (`ran_out`).
fn staging_full(root: &std::path::Path, ran_out: bool) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(root.as_os_str().as_bytes()).ok()?;
    let mut stats = std::mem::MaybeUninit::<libc::statvfs>::zeroed();
    // SAFETY: a valid NUL-terminated path and a buffer statvfs fills.
    if unsafe { libc::statvfs(path.as_ptr(), stats.as_mut_ptr()) } != 0 {
        return None;
    }
    // SAFETY: statvfs succeeded, so the struct is filled.
    let stats = unsafe { stats.assume_init() };
    let free = stats.f_bavail * stats.f_frsize;
    let size = stats.f_blocks * stats.f_frsize;
    // "Full" for a guest that writes in blocks: less than a few MiB, or 1% of the disk.
    (ran_out || free < (8 << 20).min(size / 100).max(1 << 20)).then(|| {
        format!(
            "the staging folder {} is full ({} free now); free space there or choose another with --staging",
            root.display(),
            crate::units::format_size(free)
        )
    })
}

pub(super) struct AttemptInfo {
    pub(super) attempt: u32,
    pub(super) outcome: Outcome,
    pub(super) worker: u32,
    pub(super) cold_start: bool,
    pub(super) started: SystemTime,
    pub(super) finished: SystemTime,
    pub(super) elapsed: Duration,
    pub(super) stdout: Option<Kept>,
    pub(super) stderr: Option<Kept>,
    pub(super) stderr_truncated: bool,
    pub(super) backup: bool,
}

/// Why fanout cancelled an attempt it started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cancelled {
    /// It ran past the relative timeout.
    Timeout,
    /// Another attempt of the same shard succeeded first.
    LostRace,
    /// Its `/out` broke the output rules while it ran (too many bytes or files, a link).
    Outputs(String),
}

/// Running attempts older than this have their `/out` checked against the output rules
/// this often, so that a runaway guest is stopped long before it fills the disk.
const OUTPUT_CHECK: Duration = Duration::from_secs(1);

/// An attempt handed to the pool and not yet back.
pub(super) struct Running {
    pub(super) attempt: u32,
    pub(super) token: CancellationToken,
    pub(super) started: Arc<OnceLock<Instant>>,
    pub(super) out_dir: PathBuf,
    pub(super) backup: bool,
    pub(super) cancelled: Option<Cancelled>,
    /// When `/out` was last checked, and whether a check is under way.
    pub(super) output_checked: Option<Instant>,
    pub(super) output_check_running: bool,
}

pub(super) struct InFlight {
    pub(super) shard: Shard,
    pub(super) fingerprint: String,
    /// Attempts made by earlier runs (redrive continues the numbering).
    pub(super) prior_attempts: u32,
    /// Attempts launched in this run (backups included).
    pub(super) attempts: u32,
    /// Attempts of this run that failed.
    pub(super) failures: u32,
    pub(super) slot: Slot,
    pub(super) staged: Option<Staged>,
    pub(super) history: Vec<AttemptInfo>,
    pub(super) running: Vec<Running>,
    /// An attempt succeeded: the shard is being published or is done.
    pub(super) won: bool,
    /// Finalized while a losing attempt was still being cancelled: the record and slot wait
    /// for it, so that nothing else is staged into the slot while it may still write.
    pub(super) parked: Option<(Option<ShardRecord>, Slot)>,
    pub(super) cancel: CancellationToken,
}

impl InFlight {
    pub(super) fn global_attempt(&self) -> u32 {
        self.prior_attempts + self.attempts
    }

    /// Capture files the attempts left in the slot.
    pub(super) fn captures(&self) -> Vec<PathBuf> {
        self.history
            .iter()
            .flat_map(|a| a.stdout.iter().chain(a.stderr.iter()))
            .filter_map(|kept| kept.file().map(PathBuf::from))
            .collect()
    }
}

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
        let is_records = flight.shard.record_extension().is_some();
        let mut env: Vec<(String, String)> = job.function.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.push(("FANOUT_JOB".into(), self.manifest.job_id().to_string()));
        env.push(("FANOUT_SHARD".into(), id.to_string()));
        env.push(("FANOUT_SHARDS".into(), total_hint.to_string()));
        env.push(("FANOUT_ATTEMPT".into(), attempt.to_string()));
        let mut argv = vec![job.name.clone()];
        argv.extend(job.function.args.iter().cloned());
        let slot = &flight.slot;
        let out_dir = if backup { slot.dir.join(format!("out.{attempt}")) } else { slot.out_dir.clone() };
        let invocation = Invocation {
            argv,
            env,
            in_dir: slot.in_dir.clone(),
            out_dir: out_dir.clone(),
            stdin: staged.stdin.clone(),
            stdout: slot.stdout(attempt),
            stdout_cap: if is_records { job.output.max_bytes } else { LOG_CAP },
            stdout_overflow: if is_records { Overflow::Fail } else { Overflow::Truncate },
            stderr: slot.stderr(attempt),
            stderr_cap: LOG_CAP,
        };
        let rules = OutputRules { max_files: job.output.max_files, max_bytes: job.output.max_bytes };
        let running = Running {
            attempt,
            token: flight.cancel.child_token(),
            started: Arc::new(OnceLock::new()),
            out_dir: out_dir.clone(),
            backup,
            cancelled: None,
            output_checked: None,
            output_check_running: false,
        };
        let task = Task {
            shard: id,
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
        self.pool.submit(task);
    }

    pub(super) fn on_attempt_done(&mut self, done: AttemptDone) {
        self.stats.busy_ms += done.report.elapsed.as_millis() as u64;
        // CPU time is read once at the end (getrusage walks every thread: too dear per shard).
        self.map_end = Some(Instant::now());
        if done.report.elapsed > Duration::ZERO || !matches!(done.report.outcome, Outcome::Cancelled) {
            if done.cold_start {
                self.stats.cold_starts += 1;
            } else {
                self.stats.warm_starts += 1;
            }
        }
        let Some(flight) = self.in_flight.get_mut(&done.shard) else { return };
        let Some(position) = flight.running.iter().position(|r| r.attempt == done.attempt) else { return };
        let running = flight.running.remove(position);
        let outcome = match (&done.report.outcome, &running.cancelled) {
            (Outcome::Cancelled, Some(Cancelled::Timeout)) => Outcome::Timeout,
            (Outcome::Cancelled, Some(Cancelled::Outputs(broken))) => Outcome::Error(broken.clone()),
            (outcome, _) => outcome.clone(),
        };
        *self.stats.outcomes.entry(outcome.kind().to_string()).or_default() += 1;
        let info = AttemptInfo {
            attempt: done.attempt,
            outcome: outcome.clone(),
            worker: done.worker,
            cold_start: done.cold_start,
            started: done.started,
            finished: done.finished,
            elapsed: done.report.elapsed,
            stdout: done.report.stdout.kept.clone(),
            stderr: done.report.stderr.kept.clone(),
            stderr_truncated: done.report.stderr.overflowed,
            backup: running.backup,
        };
        if flight.won || running.cancelled == Some(Cancelled::LostRace) {
            // Another attempt of this shard won: this one publishes nothing.
            flight.history.push(info);
            spawn_discard(&running);
            if flight.running.is_empty() {
                if let Some((record, slot)) = flight.parked.take() {
                    self.complete(done.shard, record, slot);
                }
            }
            return;
        }
        let files = match (done.outputs, outcome.is_ok()) {
            (Some(Ok(files)), true) => files,
            (Some(Err(rule_broken)), _) => {
                return self.attempt_failed(done.shard, Some((info, running)), Outcome::Error(rule_broken))
            }
            _ => return self.attempt_failed(done.shard, Some((info, running)), outcome),
        };
        let stdout_key = flight.shard.record_extension().map(|ext| format!("part-{:05}{ext}", done.shard));
        let keys = files.iter().map(|file| file.key.as_str()).chain(stdout_key.as_deref());
        let taken = keys.clone().find_map(|key| {
            let owner = *self.output_owners.get(&super::output_key_hash(key))?;
            (owner != done.shard).then(|| format!("output {key} is also an output of shard {owner:05}: shards must write distinct paths, and this one publishes nothing"))
        });
        if let Some(taken) = taken {
            return self.attempt_failed(done.shard, Some((info, running)), Outcome::Error(taken));
        }
        for key in keys {
            self.output_owners.insert(super::output_key_hash(key), done.shard);
        }
        // This attempt won: any other attempt of the shard is cancelled and publishes nothing.
        flight.won = true;
        for other in &mut flight.running {
            other.cancelled = Some(Cancelled::LostRace);
            other.token.cancel();
        }
        let stdout_object = stdout_key.map(|key| (key, info.stdout.clone()));
        flight.history.push(info);
        let record = record::build_record(flight, true, self.run, &self.job.function);
        let shard = done.shard;
        let backup_dir = running.backup.then(|| running.out_dir.clone());
        if files.is_empty() && stdout_object.is_none() && !record::needs_log(flight, true) {
            // Nothing to store but the record: finish here, without a task.
            let slot = flight.slot.clone().release(
                flight.staged.clone().unwrap_or_default(),
                flight.captures(),
                false,
                backup_dir,
            );
            return self.on_message(Msg::Finalized { shard, record: Some(record), slot });
        }
        let log = record::needs_log(flight, true).then(|| record::compose_log(flight));
        let (dest, manifest, tx) = (self.dest.clone(), self.manifest.clone(), self.msg_tx.clone());
        let (slot, staged, captures) =
            (flight.slot.clone(), flight.staged.clone().unwrap_or_default(), flight.captures());
        tokio::spawn(async move {
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

    /// An attempt failed (or could not start): retry after backoff, or give up. While
    /// another attempt of the shard still runs, that one decides.
    pub(super) fn attempt_failed(&mut self, shard: u64, attempt: Option<(AttemptInfo, Running)>, outcome: Outcome) {
        let max_attempts = self.job.retry.attempts;
        let backoff = self.job.retry.backoff();
        let Some(flight) = self.in_flight.get_mut(&shard) else { return };
        let now = SystemTime::now();
        let (mut info, running) = match attempt {
            Some((info, running)) => (info, Some(running)),
            // Staging failed: that counts as an attempt of its own.
            None => (
                AttemptInfo {
                    attempt: {
                        flight.attempts += 1;
                        flight.global_attempt()
                    },
                    outcome: outcome.clone(),
                    worker: 0,
                    cold_start: false,
                    started: now,
                    finished: now,
                    elapsed: Duration::ZERO,
                    stdout: None,
                    stderr: None,
                    stderr_truncated: false,
                    backup: false,
                },
                None,
            ),
        };
        // A full staging disk shows up as whatever the guest or the stager made of ENOSPC:
        // name the real cause.
        // The guest's own account, when it gave one, is the surest sign (read on failures only).
        let said_by_guest = matches!(&info.stderr, Some(Kept::Memory(text))
            if String::from_utf8_lossy(text).contains("No space left on device"));
        let ran_out = said_by_guest || outcome.to_string().contains("No space left on device");
        let outcome = match (&outcome, staging_full(&self.staging_root, ran_out)) {
            (Outcome::Cancelled, _) | (_, None) => outcome,
            (Outcome::Error(message), Some(full)) => Outcome::Error(format!("{message} ({full})")),
            (other, Some(full)) => Outcome::Error(format!("{other} ({full})")),
        };
        info.outcome = outcome.clone();
        flight.history.push(info);
        if matches!(outcome, Outcome::Cancelled) {
            if let Some(running) = &running {
                spawn_discard(running);
            }
            if flight.running.is_empty() {
                self.abandon(shard);
            }
            return;
        }
        flight.failures += 1;
        let retry = flight.failures < max_attempts && !self.stopping;
        self.events.emit(Event::AttemptFailed {
            shard,
            attempt: flight.history.last().map(|a| a.attempt).unwrap_or_default(),
            outcome: outcome.to_string(),
            retry: retry && flight.running.is_empty(),
        });
        if !flight.running.is_empty() {
            // A backup (or the original) is still running: it decides the shard's fate.
            if let Some(running) = &running {
                spawn_discard(running);
            }
            return;
        }
        if !retry {
            if let Some(running) = &running {
                spawn_discard(running);
            }
            if self.stopping {
                self.abandon(shard);
            } else {
                self.finalize_failed(shard);
            }
            return;
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
        let record = record::build_record(flight, false, self.run, &self.job.function);
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
        let now = Instant::now();
        let rules = OutputRules { max_files: self.job.output.max_files, max_bytes: self.job.output.max_bytes };
        for (id, flight) in self.in_flight.iter_mut() {
            for running in flight.running.iter_mut().filter(|r| r.cancelled.is_none() && !r.output_check_running) {
                let due = |since: Instant| now.duration_since(since) >= OUTPUT_CHECK;
                if !running.started.get().is_some_and(|started| due(*started))
                    || !running.output_checked.is_none_or(due)
                {
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
                    if running.started.get().is_some_and(|started| now.duration_since(*started) > limit) {
                        running.cancelled = Some(Cancelled::Timeout);
                        running.token.cancel();
                    }
                }
            }
        }
        if self.stopping || !self.job.stragglers.backup || !self.pool.can_start_now() {
            return;
        }
        let done = self.stats.shards_ok + self.stats.shards_failed + self.stats.shards_skipped;
        let total = self.plan_done.then(|| self.plan_totals.as_ref().map(|t| t.shards)).flatten();
        let straggler = self.in_flight.iter().find_map(|(id, flight)| {
            let [only] = flight.running.as_slice() else { return None };
            let started = only.started.get()?;
            let eligible =
                !flight.won && !only.backup && only.cancelled.is_none() && flight.history.iter().all(|a| !a.backup);
            (eligible && tail::wants_backup(&self.job.stragglers, done, total, median, now.duration_since(*started)))
                .then_some(*id)
        });
        if let Some(shard) = straggler {
            self.events.emit(Event::Note(format!("shard {shard:05} is a straggler: starting a backup attempt")));
            self.submit(shard, true);
        }
    }
}
