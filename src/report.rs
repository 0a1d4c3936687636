//! Reporting: what a run looks like to people and programs. Owns `report.csv`,
//! `summary.json`, the one-line summary, and the live progress (an indicatif bar on a
//! terminal, plain periodic lines on a pipe, nothing with `--quiet`). It consumes events
//! and finished records; it never changes what runs.

use crate::events::Event;
use crate::manifest::{ShardRecord, ShardStatus};
use crate::run::RunStats;
use crate::runtime::LoadReport;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// The columns of `report.csv`, in order.
pub const REPORT_COLUMNS: [&str; 13] = [
    "shard",
    "status",
    "outcome",
    "attempts",
    "started",
    "finished",
    "duration_ms",
    "bytes_in",
    "bytes_out",
    "worker",
    "cold_start",
    "error",
    "backup",
];

/// `report.csv`: one row a shard in shard order; shards without a record are `pending`.
pub fn report_csv(records: &BTreeMap<u64, ShardRecord>, total: u64) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::with_capacity(64 * total as usize + 128));
    writer.write_record(REPORT_COLUMNS).expect("writing to memory");
    let last = total.max(records.keys().next_back().map(|k| k + 1).unwrap_or(0));
    for shard in 0..last {
        match records.get(&shard) {
            Some(r) => writer
                .write_record([
                    r.shard.to_string(),
                    status_name(r.status).to_string(),
                    r.outcome.clone(),
                    r.attempts.to_string(),
                    r.started.clone(),
                    r.finished.clone(),
                    r.duration_ms.to_string(),
                    r.bytes_in.to_string(),
                    r.bytes_out.to_string(),
                    r.worker.to_string(),
                    r.cold_start.to_string(),
                    r.error.clone().unwrap_or_default(),
                    r.backup.to_string(),
                ])
                .expect("writing to memory"),
            None => {
                let mut row = vec![String::new(); REPORT_COLUMNS.len()];
                row[0] = shard.to_string();
                row[1] = "pending".into();
                row[3] = "0".into();
                writer.write_record(&row).expect("writing to memory")
            }
        }
    }
    writer.into_inner().expect("writing to memory")
}

pub fn status_name(status: ShardStatus) -> &'static str {
    match status {
        ShardStatus::Ok => "ok",
        ShardStatus::Failed => "failed",
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardCounts {
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    pub pending: u64,
    /// Committed by an earlier run and not run again.
    pub skipped: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub shard: u64,
    pub outcome: String,
    pub attempts: u32,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionSummary {
    pub kind: String,
    pub sha256: String,
    pub cache_hit: bool,
    pub load_ms: u64,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub job_id: String,
    pub name: String,
    /// `succeeded`, `failed` or `stopped`.
    pub status: String,
    pub run: u32,
    pub dest: String,
    pub manifest: String,
    pub started: String,
    pub finished: String,
    pub shards: ShardCounts,
    pub attempts: u64,
    pub retries: u64,
    pub cold_starts: u64,
    pub warm_starts: u64,
    pub workers_peak: usize,
    pub workers_at_end: usize,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub wall_ms: u64,
    pub plan_ms: Option<u64>,
    pub busy_ms: u64,
    pub map_ms: u64,
    /// The share of the cores the process kept busy while shards ran.
    pub map_cpu_busy: f64,
    pub shards_per_second: f64,
    pub outcomes: BTreeMap<String, u64>,
    /// Backup attempts started for stragglers, and how many finished first.
    pub backups: u64,
    pub backups_won: u64,
    pub function: FunctionSummary,
    pub plan_error: Option<String>,
    /// The first failures (all of them are in report.csv).
    pub failures: Vec<Failure>,
}

const FAILURES_IN_SUMMARY: usize = 100;

#[allow(clippy::too_many_arguments)]
pub fn summarize(
    job_id: &str,
    name: &str,
    dest: &str,
    manifest: &str,
    started: &str,
    stats: &RunStats,
    records: &BTreeMap<u64, ShardRecord>,
    load: &LoadReport,
    succeeded: bool,
) -> Summary {
    let failures: Vec<Failure> = records
        .values()
        .filter(|r| r.status == ShardStatus::Failed)
        .take(FAILURES_IN_SUMMARY)
        .map(|r| Failure {
            shard: r.shard,
            outcome: r.outcome.clone(),
            attempts: r.attempts,
            error: r.error.clone().unwrap_or_default(),
        })
        .collect();
    let ok = records.values().filter(|r| r.status == ShardStatus::Ok).count() as u64;
    let failed = records.values().filter(|r| r.status == ShardStatus::Failed).count() as u64;
    let ran = stats.shards_ok + stats.shards_failed;
    Summary {
        job_id: job_id.to_string(),
        name: name.to_string(),
        status: if succeeded {
            "succeeded"
        } else if stats.stopped_early {
            "stopped"
        } else {
            "failed"
        }
        .to_string(),
        run: stats.run,
        dest: dest.to_string(),
        manifest: manifest.to_string(),
        started: started.to_string(),
        finished: crate::manifest::timestamp(std::time::SystemTime::now()),
        shards: ShardCounts {
            total: stats.shards_total,
            ok,
            failed,
            pending: stats.shards_pending,
            skipped: stats.shards_skipped,
        },
        attempts: stats.attempts,
        retries: stats.retries,
        cold_starts: stats.cold_starts,
        warm_starts: stats.warm_starts,
        workers_peak: stats.workers_peak,
        workers_at_end: stats.workers_at_end,
        bytes_in: stats.bytes_in,
        bytes_out: stats.bytes_out,
        wall_ms: stats.wall_ms,
        plan_ms: stats.plan_ms,
        busy_ms: stats.busy_ms,
        map_ms: stats.map_ms,
        map_cpu_busy: (stats.map_cpu_busy * 1000.0).round() / 1000.0,
        shards_per_second: if stats.wall_ms > 0 { ran as f64 * 1000.0 / stats.wall_ms as f64 } else { 0.0 },
        outcomes: stats.outcomes.clone(),
        backups: stats.backups,
        backups_won: stats.backups_won,
        function: FunctionSummary {
            kind: load.kind.to_string(),
            sha256: load.sha256.clone(),
            cache_hit: load.cache_hit,
            load_ms: load.load_ms,
        },
        plan_error: stats.plan_error.clone(),
        failures,
    }
}

/// The one line a run ends with.
pub fn summary_line(summary: &Summary) -> String {
    let s = &summary.shards;
    let mut line =
        format!("{}: {} — {}/{} shards ok, {} failed", summary.name, summary.status, s.ok, s.total, s.failed);
    if s.pending > 0 {
        line.push_str(&format!(", {} pending", s.pending));
    }
    if s.skipped > 0 {
        line.push_str(&format!(", {} already done", s.skipped));
    }
    line.push_str(&format!(
        " in {} ({:.1} shards/s, {} workers at peak, {} cold starts) -> {}",
        human_ms(summary.wall_ms),
        summary.shards_per_second,
        summary.workers_peak,
        summary.cold_starts,
        summary.dest
    ));
    line
}

pub fn human_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.2}s", ms as f64 / 1000.0)
    } else {
        crate::units::format_duration(Duration::from_secs(ms / 1000))
    }
}

/// How progress is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Bar,
    Lines,
    Quiet,
}

impl ProgressMode {
    /// A bar on a terminal, lines on a pipe or in CI, nothing when asked to be quiet.
    pub fn detect(quiet: bool) -> Self {
        if quiet {
            ProgressMode::Quiet
        } else if std::io::stdout().is_terminal() && std::io::stderr().is_terminal() && std::env::var_os("CI").is_none()
        {
            ProgressMode::Bar
        } else {
            ProgressMode::Lines
        }
    }
}

/// How often plain progress lines are printed.
const LINE_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Default)]
struct Tally {
    planned: u64,
    total: Option<u64>,
    ok: u64,
    failed: u64,
    skipped: u64,
    workers: usize,
    retries: u64,
}

impl Tally {
    fn done(&self) -> u64 {
        self.ok + self.failed + self.skipped
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Planned { planned } => self.planned = *planned,
            Event::PlanComplete { total } => self.total = Some(*total),
            Event::Skipped { .. } => self.skipped += 1,
            Event::WorkerStarted { live, .. } | Event::WorkerStopped { live, .. } => self.workers = *live,
            Event::AttemptFailed { retry: true, .. } => self.retries += 1,
            Event::ShardFinished { ok, .. } => {
                if *ok {
                    self.ok += 1
                } else {
                    self.failed += 1
                }
            }
            _ => {}
        }
    }
}

/// Draws progress until the event channel closes.
pub async fn drive_progress(
    mode: ProgressMode,
    mut events: UnboundedReceiver<Event>,
    done: tokio_util::sync::CancellationToken,
) {
    let started = Instant::now();
    let mut tally = Tally::default();
    let bar = (mode == ProgressMode::Bar).then(|| {
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} shards {msg} eta {eta}",
            )
            .expect("a valid template"),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    });
    let mut next_line = started + LINE_INTERVAL;
    // Events are drained on a timer rather than awaited one by one: a busy run sends several
    // per shard, and waking this task for each would cost more than the shard.
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut finished = false;
    while !finished {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = done.cancelled() => finished = true,
        }
        loop {
            let event = match events.try_recv() {
                Ok(event) => event,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                    finished = true;
                    break;
                }
            };
            if mode != ProgressMode::Quiet {
                if let Some(text) = message_for(&event) {
                    match &bar {
                        Some(bar) => bar.println(text),
                        None => eprintln!("{text}"),
                    }
                }
            }
            tally.apply(&event);
        }
        let rate = tally.done() as f64 / started.elapsed().as_secs_f64().max(1e-3);
        if let Some(bar) = &bar {
            bar.set_length(tally.total.unwrap_or(tally.planned));
            bar.set_position(tally.done());
            bar.set_message(format!("| {} failed | {} workers | {:.1}/s", tally.failed, tally.workers, rate));
        } else if mode == ProgressMode::Lines && Instant::now() >= next_line && !finished {
            next_line = Instant::now() + LINE_INTERVAL;
            eprintln!("{}", progress_line(&tally, rate));
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
}

/// The line an event prints between progress updates, if any.
fn message_for(event: &Event) -> Option<String> {
    match event {
        Event::Note(text) => Some(format!("fanout: {text}")),
        Event::Stopping { hard: true } => {
            Some("fanout: stopping now: cancelling running attempts (nothing half-done is published)".into())
        }
        Event::Stopping { hard: false } => {
            Some("fanout: stopping: no new shards; waiting for running attempts (Ctrl-C again to stop at once)".into())
        }
        Event::AttemptFailed { shard, attempt, outcome, retry } => Some(format!(
            "fanout: shard {shard:05} attempt {attempt}: {outcome}{}",
            if *retry { " (will retry)" } else { "" }
        )),
        _ => None,
    }
}

fn progress_line(tally: &Tally, rate: f64) -> String {
    let total = match tally.total {
        Some(total) => total.to_string(),
        None => format!("{}+ (planning)", tally.planned),
    };
    let eta = match tally.total {
        Some(total) if rate > 0.0 => {
            format!(", eta {}", human_ms(((total - tally.done().min(total)) as f64 / rate * 1000.0) as u64))
        }
        _ => String::new(),
    };
    format!(
        "fanout: {}/{} shards done, {} failed, {} workers, {:.1} shards/s{}",
        tally.done(),
        total,
        tally.failed,
        tally.workers,
        rate,
        eta
    )
}

/// "1 attempt", "3 attempts".
pub fn attempts_phrase(attempts: u32) -> String {
    if attempts == 1 {
        "1 attempt".to_string()
    } else {
        format!("{attempts} attempts")
    }
}
