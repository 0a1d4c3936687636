//! Reporting: what a run looks like to people and programs. Owns `report.csv`,
//! `summary.json`, the one-line summary, and the live progress (an indicatif bar on a
//! terminal, plain periodic lines on a pipe, nothing with `--quiet`). It consumes events
//! and finished records; it never changes what runs.

use crate::events::Event;
use crate::manifest::{Counts, ShardRecord, ShardStatus};
use crate::reduce::{ReduceRecord, ReduceSummary};
use crate::run::RunResult;
use crate::runtime::{FunctionKind, LoadReport, OutcomeKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};
use tokio::sync::mpsc::UnboundedReceiver;

/// A row of `report.csv`; the header is these members, in this order.
#[derive(Serialize)]
struct ReportRow<'a> {
    /// The map shard's number, or a reduce invocation's level and number (`L2-00003`).
    shard: String,
    /// `ok`, `failed`, or `pending` for a shard without a record.
    status: &'static str,
    outcome: Option<OutcomeKind>,
    attempts: u32,
    started: &'a str,
    finished: &'a str,
    duration_ms: Option<u64>,
    bytes_in: Option<u64>,
    bytes_out: Option<u64>,
    /// The pool thread's number, or a remote worker's name (a Lambda execution environment).
    worker: Option<String>,
    cold_start: Option<bool>,
    error: &'a str,
    backup: Option<bool>,
    /// `map` or `reduce`.
    stage: &'static str,
}

impl<'a> ReportRow<'a> {
    fn of(record: &'a ShardRecord) -> Self {
        ReportRow {
            shard: record.shard.to_string(),
            status: match record.status {
                ShardStatus::Ok => "ok",
                ShardStatus::Failed => "failed",
            },
            outcome: Some(record.outcome),
            attempts: record.attempts,
            started: &record.started,
            finished: &record.finished,
            duration_ms: Some(record.duration_ms),
            bytes_in: Some(record.bytes_in),
            bytes_out: Some(record.bytes_out),
            worker: record.worker_name.clone().or_else(|| record.worker.map(|w| w.to_string())),
            cold_start: Some(record.cold_start),
            error: record.error.as_deref().unwrap_or_default(),
            backup: Some(record.backup),
            stage: "map",
        }
    }

    fn reduce(reduce: &'a ReduceRecord) -> Self {
        ReportRow { shard: reduce.name(), stage: "reduce", ..ReportRow::of(&reduce.record) }
    }

    fn pending(shard: u64) -> Self {
        ReportRow {
            shard: shard.to_string(),
            status: "pending",
            outcome: None,
            attempts: 0,
            started: "",
            finished: "",
            duration_ms: None,
            bytes_in: None,
            bytes_out: None,
            worker: None,
            cold_start: None,
            error: "",
            backup: None,
            stage: "map",
        }
    }
}

/// `report.csv`: one row a shard in shard order; shards without a record are `pending`.
pub(crate) fn report_csv(records: &BTreeMap<u64, ShardRecord>, total: u64, reduce: &[ReduceRecord]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::with_capacity(64 * total as usize + 128));
    let last = total.max(records.keys().next_back().map(|k| k + 1).unwrap_or(0));
    for shard in 0..last {
        let row = records.get(&shard).map_or_else(|| ReportRow::pending(shard), ReportRow::of);
        writer.serialize(row).expect("a report row serializes");
    }
    for invocation in reduce {
        writer.serialize(ReportRow::reduce(invocation)).expect("a report row serializes");
    }
    writer.into_inner().expect("writing to memory")
}

/// How a run of a job ended, as `summary.json`'s `status` says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum JobStatus {
    Succeeded,
    Failed,
    /// Stopped early (Ctrl-C); `fanout redrive` finishes it.
    Stopped,
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Stopped => "stopped",
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardCounts {
    pub total: u64,
    pub ok: u64,
    pub failed: u64,
    /// Failed, then replaced by a newer version of their objects that committed (a watch).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub superseded: u64,
    pub pending: u64,
    /// Committed by an earlier run and not run again.
    pub skipped: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Failure {
    pub shard: u64,
    pub outcome: OutcomeKind,
    pub attempts: u32,
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FunctionSummary {
    pub kind: FunctionKind,
    pub sha256: String,
    pub cache_hit: bool,
    pub load_ms: u64,
    /// How a native command was isolated (`none` only when the job asked for it by name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<crate::job::Sandbox>,
}

/// `summary.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub job_id: String,
    pub name: String,
    pub status: JobStatus,
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
    pub outcomes: BTreeMap<OutcomeKind, u64>,
    /// Backup attempts started for stragglers, and how many finished first.
    pub backups: u64,
    pub backups_won: u64,
    pub function: FunctionSummary,
    /// The executor's own accounting: for Lambda, invocations, throttles, GB-seconds and
    /// their cost (absent for the local pool).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor: Option<serde_json::Value>,
    pub plan_error: Option<String>,
    /// The first failures (all of them are in report.csv).
    pub failures: Vec<Failure>,
    /// The reduce step, when the job has one and it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reduce: Option<ReduceSummary>,
}

const FAILURES_IN_SUMMARY: usize = 100;

/// What a summary is made of: the job's names and the run's result.
pub(crate) struct SummaryInput<'a> {
    pub(crate) job_id: &'a str,
    pub(crate) name: &'a str,
    pub(crate) dest: &'a str,
    pub(crate) manifest: &'a str,
    pub(crate) started: &'a str,
    pub(crate) result: &'a RunResult,
    pub(crate) load: &'a LoadReport,
    pub(crate) reduce: Option<&'a ReduceSummary>,
}

pub(crate) fn summarize(input: SummaryInput) -> Summary {
    let SummaryInput { job_id, name, dest, manifest, started, result, load, reduce } = input;
    let (stats, records) = (&result.stats, &result.records);
    let superseded = crate::manifest::superseded_failures(records.values());
    let failures: Vec<Failure> = records
        .values()
        .filter(|r| r.status == ShardStatus::Failed && !superseded.contains(&r.shard))
        .take(FAILURES_IN_SUMMARY)
        .map(|r| Failure {
            shard: r.shard,
            outcome: r.outcome,
            attempts: r.attempts,
            error: r.error.clone().unwrap_or_default(),
        })
        .collect();
    let Counts { ok, failed, superseded } = Counts::of(records.values());
    let ran = stats.shards_ok + stats.shards_failed;
    let reduced = reduce.is_none_or(|r| r.succeeded);
    let status = match (result.succeeded && reduced, stats.stopped_early) {
        (true, _) => JobStatus::Succeeded,
        (false, true) => JobStatus::Stopped,
        (false, false) => JobStatus::Failed,
    };
    Summary {
        job_id: job_id.to_string(),
        name: name.to_string(),
        status,
        run: stats.run,
        dest: dest.to_string(),
        manifest: manifest.to_string(),
        started: started.to_string(),
        finished: crate::manifest::timestamp(std::time::SystemTime::now()),
        shards: ShardCounts {
            total: stats.shards_total,
            ok,
            failed,
            superseded,
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
        executor: stats.executor.clone(),
        function: FunctionSummary {
            kind: load.kind,
            sha256: load.sha256.clone(),
            cache_hit: load.cache_hit,
            load_ms: load.load_ms,
            sandbox: load.sandbox,
        },
        plan_error: stats.plan_error.clone(),
        failures,
        reduce: reduce.cloned(),
    }
}

/// `fanout report`'s table: shards by state and outcome, durations of the shards that
/// succeeded, bytes in and out.
pub(crate) fn table(title: &str, records: &BTreeMap<u64, ShardRecord>, total: u64) -> String {
    let Counts { ok, failed, superseded } = Counts::of(records.values());
    let mut durations: Vec<u64> =
        records.values().filter(|r| r.status == ShardStatus::Ok).map(|r| r.duration_ms).collect();
    durations.sort_unstable();
    let percentile =
        |p: f64| durations.get(((durations.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0);
    let mut outcomes = BTreeMap::<OutcomeKind, u64>::new();
    for record in records.values() {
        *outcomes.entry(record.outcome).or_default() += 1;
    }
    let outcomes: Vec<String> = outcomes.iter().map(|(kind, n)| format!("{kind} {n}")).collect();
    let pending = total.saturating_sub(ok + failed + superseded);
    let replaced =
        if superseded > 0 { format!(", {superseded} failed and replaced by a newer version") } else { String::new() };
    let bytes_in = crate::units::format_size(records.values().map(|r| r.bytes_in).sum());
    let bytes_out = crate::units::format_size(records.values().map(|r| r.bytes_out).sum());
    format!(
        "{title}\n  shards: {total} total, {ok} ok, {failed} failed{replaced}, {pending} pending\n  outcomes: {}\n  \
         duration of ok shards: median {}ms, p90 {}ms, max {}ms\n  bytes: {bytes_in} in, {bytes_out} out\n",
        outcomes.join(", "),
        percentile(0.5),
        percentile(0.9),
        durations.last().copied().unwrap_or(0),
    )
}

/// The one line a run ends with.
pub fn summary_line(summary: &Summary) -> String {
    let s = &summary.shards;
    let mut line =
        format!("{}: {} — {}/{} shards ok, {} failed", summary.name, summary.status, s.ok, s.total, s.failed);
    if s.superseded > 0 {
        line.push_str(&format!(" ({} more failed, then a newer version succeeded)", s.superseded));
    }
    if s.pending > 0 {
        line.push_str(&format!(", {} pending", s.pending));
    }
    if s.skipped > 0 {
        line.push_str(&format!(", {} already done", s.skipped));
    }
    let engine = match summary.executor.as_ref().filter(|e| e["kind"] == "lambda") {
        // What a serverless user asks first: how many calls, how much compute, what cost.
        Some(lambda) => format!(
            "{} ({} in flight at peak), {:.1} GB-s, ${:.4}",
            count_of(lambda["invocations"].as_u64().unwrap_or(0), "invocation"),
            summary.workers_peak,
            lambda["gb_seconds"].as_f64().unwrap_or(0.0),
            lambda["cost_usd"].as_f64().unwrap_or(0.0)
        ),
        None => format!("{} at peak", count_of(summary.workers_peak as u64, "worker")),
    };
    line.push_str(&format!(
        " in {} ({:.1} shards/s, {engine}, {}) -> {}",
        human_ms(summary.wall_ms),
        summary.shards_per_second,
        count_of(summary.cold_starts, "cold start"),
        summary.dest
    ));
    if let Some(reduce) = &summary.reduce {
        line.push_str(&match reduce.succeeded {
            true => format!(
                "; reduce: {} in {} level{} ({} already done) in {} -> {}",
                count_of(reduce.invocations, "invocation"),
                reduce.levels,
                if reduce.levels == 1 { "" } else { "s" },
                reduce.skipped,
                human_ms(reduce.wall_ms),
                reduce.output
            ),
            false => format!("; reduce failed: {}", reduce.error.as_deref().unwrap_or("stopped")),
        });
    }
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
    /// A watch: the total stays open.
    watching: bool,
}

impl Tally {
    fn done(&self) -> u64 {
        self.ok + self.failed + self.skipped
    }

    fn apply(&mut self, event: &Event) {
        match event {
            Event::Planned { planned } => self.planned = *planned,
            Event::PlanComplete { total } => self.total = Some(*total),
            Event::Watching => self.watching = true,
            Event::Skipped => self.skipped += 1,
            Event::Workers { live } => self.workers = *live,
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
    let mut bar = (mode == ProgressMode::Bar).then(Bar::new);
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
                        Some(bar) => bar.bar.println(text),
                        None => eprintln!("{text}"),
                    }
                }
            }
            tally.apply(&event);
        }
        let rate = tally.done() as f64 / started.elapsed().as_secs_f64().max(1e-3);
        if let Some(bar) = &mut bar {
            bar.draw(&tally, rate);
        } else if mode == ProgressMode::Lines && Instant::now() >= next_line && !finished {
            next_line = Instant::now() + LINE_INTERVAL;
            eprintln!("{}", progress_line(&tally, rate));
        }
    }
    if let Some(bar) = bar {
        bar.bar.finish_and_clear();
    }
}

/// The terminal's bar. Its total is the plan's once planning is over; until then it is the
/// shards planned so far, shown open (`32/50+`) and without an ETA.
struct Bar {
    bar: indicatif::ProgressBar,
    /// The style once the total is known, and whether it is in use.
    known: indicatif::ProgressStyle,
    total_known: bool,
}

impl Bar {
    fn new() -> Bar {
        let style = |template| indicatif::ProgressStyle::with_template(template).expect("a valid template");
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(style("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len}+ shards {msg}"));
        bar.enable_steady_tick(Duration::from_millis(120));
        let known = style("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} shards {msg} eta {eta}");
        Bar { bar, known, total_known: false }
    }

    fn draw(&mut self, tally: &Tally, rate: f64) {
        if tally.total.is_some() && !self.total_known {
            self.total_known = true;
            self.bar.set_style(self.known.clone());
        }
        self.bar.set_length(tally.total.unwrap_or(tally.planned));
        self.bar.set_position(tally.done());
        self.bar.set_message(format!(
            "| {} failed | {} | {rate:.1}/s",
            tally.failed,
            count_of(tally.workers as u64, "worker")
        ));
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
        None => format!("{}+ ({})", tally.planned, if tally.watching { "watching" } else { "planning" }),
    };
    let eta = match tally.total {
        Some(total) if rate > 0.0 => {
            format!(", eta {}", human_ms(((total - tally.done().min(total)) as f64 / rate * 1000.0) as u64))
        }
        _ => String::new(),
    };
    format!(
        "fanout: {}/{} shards done, {} failed, {}, {:.1} shards/s{}",
        tally.done(),
        total,
        tally.failed,
        count_of(tally.workers as u64, "worker"),
        rate,
        eta
    )
}

/// "1 attempt", "3 attempts".
pub(crate) fn attempts_phrase(attempts: u32) -> String {
    count_of(attempts.into(), "attempt")
}

/// "1 worker", "2 workers", "0 cold starts".
fn count_of(count: u64, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn while_planning_goes_on_the_total_is_open_and_there_is_no_eta() {
        let mut tally = Tally::default();
        for event in [Event::Planned { planned: 50 }, Event::Workers { live: 1 }, Event::ShardFinished { ok: true }] {
            tally.apply(&event);
        }
        let line = progress_line(&tally, 4.0);
        assert_eq!(line, "fanout: 1/50+ (planning) shards done, 0 failed, 1 worker, 4.0 shards/s");
        tally.apply(&Event::PlanComplete { total: 61 });
        tally.apply(&Event::ShardFinished { ok: false });
        let line = progress_line(&tally, 4.0);
        assert_eq!(line, "fanout: 2/61 shards done, 1 failed, 1 worker, 4.0 shards/s, eta 14.75s");
    }

    #[test]
    fn counts_agree_in_number() {
        assert_eq!(count_of(1, "worker"), "1 worker");
        assert_eq!(count_of(0, "cold start"), "0 cold starts");
        assert_eq!(attempts_phrase(3), "3 attempts");
    }
}
