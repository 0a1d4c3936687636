//! The commit record and the log of a finished shard, built from its attempts. Owns what a
//! record says and what a log holds; it reads the slot's capture files and writes the log
//! through the manifest, nothing else.

use super::state::{AttemptInfo, InFlight};
use crate::job::Function;
use crate::manifest::{timestamp, AttemptSpan, Manifest, ShardRecord, ShardStatus};
use crate::runtime::capture::Kept;
use crate::runtime::Outcome;
use crate::units::{format_duration, format_size};
use bytes::Bytes;

/// A guest's stderr kept per attempt; the rest is dropped and the log says so.
use crate::stage::LOG_CAP;

/// The commit record of a shard whose final attempt is the last in its history; outputs
/// and bytes out are filled in once they are stored, and in a watch the shards it supersedes.
pub(super) fn build_record(flight: &InFlight, ok: bool, run: u32, function: &Function) -> ShardRecord {
    let last = flight.history.last().expect("a finished shard had an attempt");
    ShardRecord {
        shard: flight.shard.id,
        fingerprint: flight.fingerprint.clone(),
        status: if ok { ShardStatus::Ok } else { ShardStatus::Failed },
        outcome: last.outcome.kind(),
        attempts: flight.global_attempt(),
        started: timestamp(last.started),
        finished: timestamp(last.finished),
        duration_ms: last.elapsed.as_millis() as u64,
        bytes_in: flight.shard.bytes_in(),
        bytes_out: 0,
        worker: last.worker,
        worker_name: last.worker_name.clone(),
        cold_start: last.cold_start,
        error: (!ok).then(|| failure_text(last, function)),
        outputs: Vec::new(),
        run,
        backup: last.backup,
        earlier: flight.history[..flight.history.len() - 1].iter().map(span_of).collect(),
        supersedes: Vec::new(),
    }
}

fn span_of(attempt: &AttemptInfo) -> AttemptSpan {
    AttemptSpan {
        attempt: attempt.attempt,
        outcome: attempt.outcome.kind(),
        started: timestamp(attempt.started),
        finished: timestamp(attempt.finished),
        worker: attempt.worker,
        cold_start: attempt.cold_start,
        backup: attempt.backup,
    }
}

/// What a failed attempt's record says: the outcome; for a guest that exited or trapped,
/// the last thing it said on stderr, so that `report.csv` and `fanout status` show why
/// ("exit code 1: photo.jpg: not a readable image") without opening the log; for a limit
/// hit, the limit and the field that sets it.
fn failure_text(attempt: &AttemptInfo, function: &Function) -> String {
    let outcome = attempt.outcome.to_string();
    match &attempt.outcome {
        Outcome::Exit(_) | Outcome::Trap(_) => match attempt.stderr.as_ref().and_then(last_words) {
            Some(words) => format!("{outcome}: {words}"),
            None => outcome,
        },
        Outcome::OutOfMemory => format!("{outcome} (function.memory is {})", format_size(function.memory_bytes)),
        Outcome::Timeout => match function.relative_timeout_percent {
            Some(percent) => format!(
                "{outcome} (function.timeout is {percent}% of the median shard, at most {})",
                format_duration(function.timeout())
            ),
            None => format!("{outcome} (function.timeout is {})", format_duration(function.timeout())),
        },
        _ => outcome,
    }
}

/// The last meaningful line of an in-memory capture (Rust's backtrace hint skipped),
/// cut to `SAID_CAP` characters; a capture spilled to disk is left to the log.
fn last_words(stderr: &Kept) -> Option<String> {
    const SAID_CAP: usize = 200;
    let Kept::Memory(text) = stderr else { return None };
    let text = String::from_utf8_lossy(text);
    let line = text
        .lines()
        .map(str::trim)
        .rfind(|line| !line.is_empty() && !line.starts_with("note: run with `RUST_BACKTRACE"))?;
    let mut words: String = line.chars().filter(|c| !c.is_control()).take(SAID_CAP).collect();
    if line.chars().count() > SAID_CAP {
        words.push('…');
    }
    Some(words)
}

/// A log is stored when there is something to read: a failure, a retry, or guest output.
pub(super) fn needs_log(flight: &InFlight, ok: bool) -> bool {
    !ok || flight.history.len() > 1
        || flight.history.iter().any(|a| a.stderr.is_some() || (!flight.shard.is_records() && a.stdout.is_some()))
}

pub(super) async fn store_log(
    manifest: &Manifest,
    shard: u64,
    log: Option<impl std::future::Future<Output = Bytes>>,
    record: &mut ShardRecord,
) {
    let Some(log) = log else { return };
    let text = log.await;
    if let Err(e) = manifest.put_log(shard, text).await {
        // The outputs are stored; a lost log must not undo the shard, but it says so.
        let note = format!("log not stored: {e}");
        record.error = Some(match record.error.take() {
            Some(error) => format!("{error} ({note})"),
            None => note,
        });
    }
}

/// The shard's log: each attempt's outcome, then its stderr (and stdout, when stdout is
/// not an output). Read from the slot's capture files in a blocking task.
pub(super) fn compose_log(flight: &InFlight) -> impl std::future::Future<Output = Bytes> + Send + 'static {
    let shard = flight.shard.id;
    let stdout_in_log = !flight.shard.is_records();
    let parts: Vec<(String, Option<Kept>, Option<Kept>, bool)> = flight
        .history
        .iter()
        .map(|a| {
            let header = format!(
                "--- fanout: shard {shard:05} attempt {} {}{}: {}\n",
                a.attempt,
                a.worker.map_or_else(|| "before any worker took it".to_string(), |w| format!("on worker {w}")),
                if a.cold_start { " (cold start)" } else { "" },
                a.outcome
            );
            (header, a.stderr.clone(), a.stdout.clone().filter(|_| stdout_in_log), a.stderr_truncated)
        })
        .collect();
    let reading = tokio::task::spawn_blocking(move || {
        let mut text = Vec::new();
        for (header, stderr, stdout, truncated) in parts {
            text.extend_from_slice(header.as_bytes());
            if let Some(bytes) = stderr.and_then(|kept| kept.read().ok()) {
                text.extend_from_slice(&bytes);
                if !bytes.ends_with(b"\n") {
                    text.push(b'\n');
                }
            }
            if truncated {
                text.extend_from_slice(format!("--- fanout: stderr truncated after {LOG_CAP} bytes\n").as_bytes());
            }
            if let Some(bytes) = stdout.and_then(|kept| kept.read().ok()) {
                text.extend_from_slice(b"--- fanout: stdout\n");
                text.extend_from_slice(&bytes);
                if !bytes.ends_with(b"\n") {
                    text.push(b'\n');
                }
            }
        }
        Bytes::from(text)
    });
    async move { reading.await.unwrap_or_default() }
}
