//! The state of one shard in flight and of its attempts: what the coordinator keeps
//! between messages. Types only, with the few questions they answer about themselves;
//! the behaviour that changes them is in `attempts`, the record built from them in `record`.

use crate::executor::{AttemptDone, StartClock};
use crate::manifest::ShardRecord;
use crate::runtime::capture::Kept;
use crate::runtime::Outcome;
use crate::source::Shard;
use crate::stage::{Slot, Staged};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// One attempt that ended, as the shard's log and record tell it.
pub(super) struct AttemptInfo {
    pub(super) attempt: u32,
    pub(super) outcome: Outcome,
    /// None when the attempt ended before a worker took it.
    pub(super) worker: Option<u32>,
    pub(super) worker_name: Option<String>,
    pub(super) cold_start: bool,
    pub(super) started: SystemTime,
    pub(super) finished: SystemTime,
    pub(super) elapsed: Duration,
    pub(super) stdout: Option<Kept>,
    pub(super) stderr: Option<Kept>,
    pub(super) stderr_truncated: bool,
    pub(super) backup: bool,
}

impl AttemptInfo {
    /// An attempt the pool ran, ended as `outcome`.
    pub(super) fn of(done: &AttemptDone, outcome: Outcome, backup: bool) -> Self {
        AttemptInfo {
            attempt: done.attempt,
            outcome,
            worker: Some(done.worker),
            worker_name: done.worker_name.clone(),
            cold_start: done.cold_start,
            started: done.started,
            finished: done.finished,
            elapsed: done.report.elapsed,
            stdout: done.report.stdout.kept.clone(),
            stderr: done.report.stderr.kept.clone(),
            stderr_truncated: done.report.stderr.overflowed,
            backup,
        }
    }

    /// An attempt that ended before a guest ran (its inputs could not be staged).
    pub(super) fn not_started(attempt: u32, outcome: Outcome) -> Self {
        let now = SystemTime::now();
        AttemptInfo {
            attempt,
            outcome,
            worker: None,
            worker_name: None,
            cold_start: false,
            started: now,
            finished: now,
            elapsed: Duration::ZERO,
            stdout: None,
            stderr: None,
            stderr_truncated: false,
            backup: false,
        }
    }
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

/// An attempt handed to the pool and not yet back.
pub(super) struct Running {
    pub(super) attempt: u32,
    pub(super) token: CancellationToken,
    pub(super) started: Arc<StartClock>,
    pub(super) out_dir: PathBuf,
    pub(super) backup: bool,
    pub(super) cancelled: Option<Cancelled>,
    /// When `/out` was last checked, and whether a check is under way.
    pub(super) output_checked: Option<Instant>,
    pub(super) output_check_running: bool,
}

impl Running {
    /// An attempt that has already ended, for the steps that clean up after it.
    pub(super) fn ended(attempt: u32, out_dir: PathBuf, backup: bool) -> Self {
        Running {
            attempt,
            token: CancellationToken::new(),
            started: Default::default(),
            out_dir,
            backup,
            cancelled: None,
            output_checked: None,
            output_check_running: false,
        }
    }
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
