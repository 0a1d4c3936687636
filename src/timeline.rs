//! The timeline plot (`fanout report --plot FILE.svg`): one self-contained SVG a user can
//! send a colleague. Every attempt is a box on its worker's lane, coloured by outcome, on a
//! time axis in seconds; cold starts and backup attempts are marked; a legend says what the
//! colours and marks mean; under the lanes, a panel shows how many attempts ran at each
//! moment (Lithops' concurrency plot). Reduce invocations, after the map, get a lane per
//! level. Past a few thousand attempts, ok boxes are sampled and workers share lanes, and
//! the plot says so. Owns only the drawing; the records come from the manifest.

use crate::manifest::{AttemptSpan, ShardRecord};
use crate::runtime::OutcomeKind;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::SystemTime;

const WIDTH: f64 = 1100.0;
/// Room for lane labels on the left.
const LEFT: f64 = 120.0;
const RIGHT: f64 = 20.0;
/// Title and legend above the lanes.
const TOP: f64 = 64.0;
const LANE: f64 = 16.0;
const BOX: f64 = 12.0;
const PANEL: f64 = 110.0;
/// Lanes drawn at most; past this, neighbouring workers share a lane.
const MAX_LANES: usize = 64;
/// Boxes drawn at most; past this, ok attempts are sampled (every other outcome is drawn).
const MAX_BOXES: usize = 4000;

/// One attempt to draw.
struct Attempt<'a> {
    shard: u64,
    /// The reduce level of a reduce invocation (whose `shard` is its index in the level).
    reduce_level: Option<u32>,
    attempt: u32,
    outcome: OutcomeKind,
    worker: Option<u32>,
    start: f64,
    end: f64,
    cold_start: bool,
    backup: bool,
    error: Option<&'a str>,
}

fn colour(outcome: OutcomeKind) -> &'static str {
    match outcome {
        OutcomeKind::Ok => "#3a9a4a",
        OutcomeKind::Exit => "#e67e22",
        OutcomeKind::Trap => "#c0392b",
        OutcomeKind::Timeout => "#8e44ad",
        OutcomeKind::Oom => "#795548",
        OutcomeKind::Error => "#34495e",
        OutcomeKind::Cancelled => "#b0b7bd",
    }
}

const OUTCOMES: [OutcomeKind; 7] = [
    OutcomeKind::Ok,
    OutcomeKind::Exit,
    OutcomeKind::Trap,
    OutcomeKind::Timeout,
    OutcomeKind::Oom,
    OutcomeKind::Error,
    OutcomeKind::Cancelled,
];

fn seconds_since(t0: SystemTime, text: &str) -> Option<f64> {
    let t = humantime::parse_rfc3339(text).ok()?;
    Some(t.duration_since(t0).unwrap_or_default().as_secs_f64())
}

/// Every attempt the records know of (map shards, then reduce invocations with their
/// level), in seconds from the first start.
fn attempts<'a>(records: &'a BTreeMap<u64, ShardRecord>, reduce: &[(u32, &'a ShardRecord)]) -> Vec<Attempt<'a>> {
    let all_records = || records.values().map(|r| (None, r)).chain(reduce.iter().map(|(level, r)| (Some(*level), *r)));
    let starts = all_records()
        .flat_map(|(_, r)| std::iter::once(r.started.as_str()).chain(r.earlier.iter().map(|e| e.started.as_str())));
    let Some(t0) = starts.filter_map(|t| humantime::parse_rfc3339(t).ok()).min() else { return Vec::new() };
    let mut all = Vec::new();
    for (reduce_level, record) in all_records() {
        for span in &record.earlier {
            let AttemptSpan { attempt, outcome, worker, cold_start, backup, .. } = *span;
            if let (Some(start), Some(end)) = (seconds_since(t0, &span.started), seconds_since(t0, &span.finished)) {
                let shard = record.shard;
                all.push(Attempt {
                    shard,
                    reduce_level,
                    attempt,
                    outcome,
                    worker,
                    start,
                    end,
                    cold_start,
                    backup,
                    error: None,
                });
            }
        }
        if let (Some(start), Some(end)) = (seconds_since(t0, &record.started), seconds_since(t0, &record.finished)) {
            all.push(Attempt {
                shard: record.shard,
                reduce_level,
                attempt: record.attempts,
                outcome: record.outcome,
                worker: record.worker,
                start,
                end,
                cold_start: record.cold_start,
                backup: record.backup,
                error: record.error.as_deref(),
            });
        }
    }
    all
}

/// The lanes: each a run of map workers (one worker each unless there are too many), then
/// one for map attempts that never reached a worker, then one per reduce level.
struct Lanes {
    /// The first and last worker of each lane, in order.
    ranges: Vec<(u32, u32)>,
    /// Workers in all.
    workers: usize,
    /// Map attempts that never reached a worker get a lane of their own after the workers.
    unassigned: bool,
    /// Reduce levels, 1 up to this.
    reduce_levels: u32,
}

impl Lanes {
    fn of(attempts: &[Attempt]) -> Lanes {
        let map = || attempts.iter().filter(|a| a.reduce_level.is_none());
        let mut workers: Vec<u32> = map().filter_map(|a| a.worker).collect();
        workers.sort_unstable();
        workers.dedup();
        let per_lane = workers.len().div_ceil(MAX_LANES).max(1);
        let ranges = workers.chunks(per_lane).map(|c| (c[0], c[c.len() - 1])).collect();
        Lanes {
            ranges,
            workers: workers.len(),
            unassigned: map().any(|a| a.worker.is_none()),
            reduce_levels: attempts.iter().filter_map(|a| a.reduce_level).max().unwrap_or(0),
        }
    }

    fn count(&self) -> usize {
        self.ranges.len() + usize::from(self.unassigned) + self.reduce_levels as usize
    }

    fn index(&self, attempt: &Attempt) -> usize {
        match (attempt.reduce_level, attempt.worker) {
            (Some(level), _) => self.ranges.len() + usize::from(self.unassigned) + level as usize - 1,
            (None, Some(w)) => self.ranges.partition_point(|&(_, last)| last < w),
            (None, None) => self.ranges.len(),
        }
    }

    /// What lane `lane` holds, for its label and its `data-workers` attribute.
    fn holds(&self, lane: usize) -> (String, String) {
        match self.ranges.get(lane) {
            Some((first, last)) if first == last => (format!("worker {first}"), format!("{first}-{last}")),
            Some((first, last)) => (format!("workers {first}-{last}"), format!("{first}-{last}")),
            None if lane == self.ranges.len() && self.unassigned => ("not started".to_string(), "none".to_string()),
            None => {
                let level = lane - self.ranges.len() - usize::from(self.unassigned) + 1;
                (format!("reduce level {level}"), format!("reduce-L{level}"))
            }
        }
    }
}

/// Which attempts get a box: all of them, or past `MAX_BOXES` every attempt that did not
/// simply succeed and every `stride`-th one that did.
fn sampled(attempts: &[Attempt]) -> (Vec<usize>, usize) {
    if attempts.len() <= MAX_BOXES {
        return ((0..attempts.len()).collect(), 1);
    }
    let plain_ok = |a: &Attempt| a.outcome == OutcomeKind::Ok && !a.backup && a.attempt == 1;
    let others = attempts.iter().filter(|a| !plain_ok(a)).count();
    let ok = attempts.len() - others;
    let stride = ok.div_ceil(MAX_BOXES.saturating_sub(others).max(1)).max(1);
    let mut seen_ok = 0;
    let chosen = (0..attempts.len())
        .filter(|&i| {
            if !plain_ok(&attempts[i]) {
                return true;
            }
            seen_ok += 1;
            (seen_ok - 1) % stride == 0
        })
        .collect();
    (chosen, stride)
}

/// How many attempts ran at once, as the most in each pixel column of the plot.
fn concurrency(attempts: &[Attempt], columns: usize, x_of: impl Fn(f64) -> f64) -> Vec<u32> {
    let mut events: Vec<(f64, i32)> = attempts.iter().flat_map(|a| [(a.start, 1), (a.end, -1)]).collect();
    // Ends before starts at the same moment: back-to-back attempts are not counted twice.
    events.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut peak = vec![0u32; columns];
    let mut level = 0i32;
    let mut column = 0usize;
    for (time, change) in events {
        let at = ((x_of(time) - LEFT).floor().max(0.0) as usize).min(columns - 1);
        while column < at {
            column += 1;
            peak[column] = peak[column].max(level as u32);
        }
        level += change;
        peak[at] = peak[at].max(level.max(0) as u32);
    }
    peak
}

/// A round step for `span` seconds cut into about `target` ticks: 1, 2 or 5 times a power of ten.
fn tick_step(span: f64, target: f64) -> f64 {
    let raw = (span / target).max(1e-3);
    let power = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].into_iter().map(|m| m * power).find(|step| *step >= raw).unwrap_or(10.0 * power)
}

/// A tick's label with as many decimals as its step needs: consecutive ticks never read
/// alike ("0.02s 0.04s", not "0.0s 0.0s").
fn seconds_label(seconds: f64, step: f64) -> String {
    let decimals = (-step.log10() - 1e-9).ceil().max(0.0) as usize;
    format!("{seconds:.decimals$}s")
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// What is drawn: the attempts, their lanes, the time span and which attempts get boxes.
struct Plot<'a> {
    attempts: Vec<Attempt<'a>>,
    lanes: Lanes,
    /// Seconds from the first start to the last end.
    span: f64,
    chosen: Vec<usize>,
    stride: usize,
}

/// Renders the records of a job as an SVG document.
pub fn svg(
    records: &BTreeMap<u64, ShardRecord>,
    reduce: &[(u32, &ShardRecord)],
    title: &str,
) -> anyhow::Result<String> {
    let attempts = attempts(records, reduce);
    if attempts.is_empty() {
        anyhow::bail!("no shard has run yet: nothing to plot");
    }
    let span = attempts.iter().map(|a| a.end).fold(0.0, f64::max).max(1e-3);
    let lanes = Lanes::of(&attempts);
    let (chosen, stride) = sampled(&attempts);
    let plot = Plot { attempts, lanes, span, chosen, stride };
    let lanes_bottom = TOP + LANE * plot.lanes.count() as f64;
    let panel_top = lanes_bottom + 34.0;
    let height = panel_top + PANEL + 16.0;
    let mut out = String::new();
    writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0}" font-family="sans-serif" font-size="11">"#
    )?;
    writeln!(out, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##)?;
    plot.header(&mut out, title, records.len(), reduce.len())?;
    plot.axis(&mut out, lanes_bottom)?;
    plot.lanes(&mut out)?;
    // Successes first, then everything else on top of them, then the cold-start marks: a
    // failure that took a few milliseconds must not vanish under its neighbours.
    let mut order = plot.chosen.clone();
    order.sort_by_key(|&i| plot.attempts[i].outcome != OutcomeKind::Ok);
    for &i in &order {
        plot.draw_attempt(&mut out, &plot.attempts[i])?;
    }
    for &i in order.iter().filter(|&&i| plot.attempts[i].cold_start) {
        let (left, y) = plot.box_corner(&plot.attempts[i]);
        writeln!(out, r##"<path class="cold" d="M{left:.2} {y:.1} l6 0 l-6 6 z" fill="#000"/>"##)?;
    }
    plot.panel(&mut out, panel_top)?;
    writeln!(out, "</svg>")?;
    Ok(out)
}

impl Plot<'_> {
    fn x(&self, seconds: f64) -> f64 {
        LEFT + seconds / self.span * (WIDTH - LEFT - RIGHT)
    }

    /// The title, a line of totals, the legend, and what was sampled or aggregated.
    fn header(&self, out: &mut String, title: &str, shards: usize, reduce: usize) -> std::fmt::Result {
        let attempts = &self.attempts;
        let retries = attempts.iter().filter(|a| a.attempt > 1 && !a.backup).count();
        let backups = attempts.iter().filter(|a| a.backup).count();
        let cold = attempts.iter().filter(|a| a.cold_start).count();
        let reduce = if reduce > 0 { format!(" and {reduce} reduce invocations") } else { String::new() };
        writeln!(
            out,
            r#"<text x="10" y="18" font-size="14" font-weight="bold">{} — {shards} shards{reduce}, {} attempts ({retries} retries, {backups} backups, {cold} cold starts) in {:.2}s</text>"#,
            escape(title),
            attempts.len(),
            self.span
        )?;
        let mut legend_x = 10.0;
        for outcome in OUTCOMES {
            writeln!(
                out,
                r#"<rect class="legend" x="{legend_x}" y="30" width="10" height="10" fill="{}"/><text x="{}" y="39">{outcome}</text>"#,
                colour(outcome),
                legend_x + 14.0
            )?;
            legend_x += 24.0 + 7.0 * outcome.name().len() as f64;
        }
        writeln!(
            out,
            r##"<path d="M{legend_x} 30 l7 0 l-7 7 z" fill="#000"/><text x="{}" y="39">cold start</text>"##,
            legend_x + 11.0
        )?;
        legend_x += 80.0;
        writeln!(
            out,
            r##"<rect x="{legend_x}" y="30" width="16" height="10" fill="none" stroke="#000" stroke-dasharray="3 2"/><text x="{}" y="39">backup attempt</text>"##,
            legend_x + 20.0
        )?;
        let mut notes = Vec::new();
        if self.stride > 1 {
            notes.push(format!(
                "showing {} of {} attempts: every {}th first-try success, and every other attempt",
                self.chosen.len(),
                attempts.len(),
                self.stride
            ));
        }
        if self.lanes.ranges.iter().any(|(first, last)| first != last) {
            notes.push(format!("{} workers share {} lanes", self.lanes.workers, self.lanes.ranges.len()));
        }
        if !notes.is_empty() {
            writeln!(out, r##"<text class="note" x="10" y="55" fill="#555">{}</text>"##, escape(&notes.join("; ")))?;
        }
        Ok(())
    }

    /// Vertical grid lines every round number of seconds, labelled under the lanes.
    fn axis(&self, out: &mut String, lanes_bottom: f64) -> std::fmt::Result {
        let step = tick_step(self.span, 10.0);
        let mut tick = 0;
        while tick as f64 * step <= self.span * (1.0 + 1e-9) {
            let t = tick as f64 * step;
            let px = self.x(t);
            writeln!(
                out,
                r##"<line class="tick" x1="{px:.1}" y1="{TOP}" x2="{px:.1}" y2="{lanes_bottom:.1}" stroke="#c8cdd2" stroke-width="0.5"/><text x="{px:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                lanes_bottom + 13.0,
                seconds_label(t, step)
            )?;
            tick += 1;
        }
        writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">seconds since the first attempt started</text>"#,
            WIDTH - RIGHT,
            lanes_bottom + 26.0
        )
    }

    fn lanes(&self, out: &mut String) -> std::fmt::Result {
        for lane in 0..self.lanes.count() {
            let y = TOP + LANE * lane as f64;
            let fill = if lane % 2 == 0 { "#f4f6f7" } else { "#ffffff" };
            let (label, workers) = self.lanes.holds(lane);
            writeln!(
                out,
                r#"<rect class="lane" data-lane="{lane}" data-workers="{workers}" x="{LEFT}" y="{y:.1}" width="{:.1}" height="{LANE}" fill="{fill}"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"#,
                WIDTH - LEFT - RIGHT,
                LEFT - 6.0,
                y + 11.5,
            )?;
        }
        Ok(())
    }

    /// The top left corner of an attempt's box.
    fn box_corner(&self, a: &Attempt) -> (f64, f64) {
        (self.x(a.start), TOP + LANE * self.lanes.index(a) as f64 + (LANE - BOX) / 2.0)
    }

    fn draw_attempt(&self, out: &mut String, a: &Attempt) -> std::fmt::Result {
        let (left, y) = self.box_corner(a);
        // Failures are at least a few pixels wide, so that a quick one can still be seen.
        let least = if a.outcome == OutcomeKind::Ok { 0.8 } else { 3.0 };
        let width = (self.x(a.end) - left).max(least);
        // A backup is outlined; other boxes wide enough get a hairline that parts neighbours.
        let stroke = match (a.backup, width > 3.0) {
            (true, _) => r##" stroke="#000" stroke-width="1" stroke-dasharray="3 2""##,
            (false, true) => r##" stroke="#ffffff" stroke-width="0.4""##,
            (false, false) => "",
        };
        let worker = a.worker.map_or_else(|| "none".to_string(), |w| w.to_string());
        // A reduce invocation is named as report.csv names it.
        let (shard, stage) = match a.reduce_level {
            Some(level) => (format!("L{level}-{:05}", a.shard), "reduce"),
            None => (a.shard.to_string(), "map"),
        };
        let what = if stage == "map" { "shard" } else { "reduce" };
        let mut tip =
            format!("{what} {shard} attempt {}: {} ({:.0} ms)", a.attempt, a.outcome, (a.end - a.start) * 1000.0);
        if let Some(error) = a.error {
            tip.push_str(&format!(": {error}"));
        }
        writeln!(
            out,
            r#"<rect class="attempt" data-stage="{stage}" data-shard="{shard}" data-attempt="{}" data-worker="{worker}" data-outcome="{}" x="{left:.2}" y="{y:.1}" width="{width:.2}" height="{BOX}" fill="{}"{stroke}><title>{}</title></rect>"#,
            a.attempt,
            a.outcome,
            colour(a.outcome),
            escape(&tip)
        )
    }

    /// Attempts running over time (every attempt, sampled or not), with its peak.
    fn panel(&self, out: &mut String, top: f64) -> std::fmt::Result {
        let columns = (WIDTH - LEFT - RIGHT) as usize;
        let peak = concurrency(&self.attempts, columns, |t| self.x(t));
        let most = peak.iter().copied().max().unwrap_or(0).max(1);
        let bottom = top + PANEL;
        let y = |level: u32| bottom - level as f64 / most as f64 * PANEL;
        let mut path = format!("M{LEFT} {bottom}");
        for (column, level) in peak.iter().enumerate() {
            let (left, level_y) = (LEFT + column as f64, y(*level));
            write!(path, " L{left:.0} {level_y:.1} L{:.0} {level_y:.1}", left + 1.0)?;
        }
        write!(path, " L{:.0} {bottom} Z", LEFT + columns as f64)?;
        writeln!(out, r##"<rect x="{LEFT}" y="{top}" width="{columns}" height="{PANEL}" fill="#f4f6f7"/>"##)?;
        writeln!(
            out,
            r##"<path class="concurrency" data-peak="{most}" d="{path}" fill="#5dade2" stroke="#2e86c1" stroke-width="0.5"/>"##
        )?;
        writeln!(out, r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{most}</text>"#, LEFT - 6.0, top + 9.0)?;
        writeln!(out, r#"<text x="{:.1}" y="{bottom:.1}" text-anchor="end">0</text>"#, LEFT - 6.0)?;
        writeln!(
            out,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">attempts running</text>"#,
            LEFT - 6.0,
            top + PANEL / 2.0
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::ShardStatus;

    fn at(ms: u64) -> String {
        crate::manifest::timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(1_800_000_000_000 + ms))
    }

    fn record(shard: u64, worker: u32, start_ms: u64, ms: u64, outcome: OutcomeKind) -> ShardRecord {
        ShardRecord {
            shard,
            fingerprint: String::new(),
            status: if outcome == OutcomeKind::Ok { ShardStatus::Ok } else { ShardStatus::Failed },
            outcome,
            attempts: 1,
            started: at(start_ms),
            finished: at(start_ms + ms),
            duration_ms: ms,
            bytes_in: 0,
            bytes_out: 0,
            worker: Some(worker),
            worker_name: None,
            cold_start: shard < 2,
            error: None,
            outputs: Vec::new(),
            run: 0,
            backup: false,
            earlier: Vec::new(),
            supersedes: Vec::new(),
        }
    }

    fn count(svg: &str, class: &str) -> usize {
        svg.matches(&format!(r#"class="{class}""#)).count()
    }

    #[test]
    fn a_small_job_draws_every_attempt_on_one_lane_per_worker() {
        let mut records = BTreeMap::new();
        for shard in 0..10 {
            records.insert(shard, record(shard, (shard % 3) as u32, shard * 100, 150, OutcomeKind::Ok));
        }
        let mut failed = record(10, 1, 1000, 50, OutcomeKind::Trap);
        failed.attempts = 2;
        failed.earlier.push(AttemptSpan {
            attempt: 1,
            outcome: OutcomeKind::Trap,
            started: at(900),
            finished: at(950),
            worker: Some(2),
            cold_start: false,
            backup: false,
        });
        records.insert(10, failed);
        let svg = svg(&records, &[], "job").unwrap();
        assert_eq!(count(&svg, "attempt"), 12);
        assert_eq!(count(&svg, "lane"), 3);
        assert_eq!(count(&svg, "note"), 0, "nothing is sampled or shared");
        // Shards overlap their neighbours two at a time; from 900 to 950 ms shard 10's first
        // attempt runs beside shards 8 and 9.
        assert!(svg.contains(r#"data-peak="3""#), "three attempts overlap at most");
    }

    #[test]
    fn a_huge_job_samples_its_boxes_and_shares_lanes_and_says_so() {
        let mut records = BTreeMap::new();
        for shard in 0..100_000u64 {
            let outcome = if shard % 1000 == 7 { OutcomeKind::Timeout } else { OutcomeKind::Ok };
            records.insert(shard, record(shard, (shard % 500) as u32, shard / 10, 40, outcome));
        }
        let svg = svg(&records, &[], "big").unwrap();
        let drawn = count(&svg, "attempt");
        assert!(drawn <= MAX_BOXES + 100, "{drawn} boxes");
        assert_eq!(svg.matches(r#"data-outcome="timeout""#).count(), 100, "every failure is drawn");
        // 99,900 plain successes into the 3,900 boxes left: every 26th.
        assert!(svg.contains("every 26th first-try success"), "the plot says it samples");
        // 500 workers, 8 to a lane.
        assert_eq!(count(&svg, "lane"), 63);
        assert!(svg.contains("500 workers share 63 lanes"));
        assert!(svg.len() < 2 << 20, "{} bytes", svg.len());
    }

    #[test]
    fn reduce_invocations_get_a_lane_per_level_after_the_map() {
        let mut records = BTreeMap::new();
        for shard in 0..4 {
            records.insert(shard, record(shard, (shard % 2) as u32, shard * 100, 150, OutcomeKind::Ok));
        }
        let level_1: Vec<ShardRecord> = (0..2).map(|i| record(i, 0, 600 + i * 50, 40, OutcomeKind::Ok)).collect();
        let mut root = record(0, 0, 700, 30, OutcomeKind::Exit);
        root.worker = None;
        let reduce: Vec<(u32, &ShardRecord)> =
            level_1.iter().map(|r| (1, r)).chain(std::iter::once((2, &root))).collect();
        let svg = svg(&records, &reduce, "job").unwrap();
        assert_eq!(count(&svg, "attempt"), 7);
        assert_eq!(count(&svg, "lane"), 4, "two workers, then reduce levels 1 and 2");
        assert!(svg.contains(">reduce level 2</text>"));
        assert_eq!(svg.matches(r#"data-stage="reduce""#).count(), 3);
        assert!(svg.contains(r#"data-stage="reduce" data-shard="L2-00000""#));
        // The root sits on the fourth lane.
        let root_box = svg.split("\n").find(|line| line.contains(r#"data-shard="L2-00000""#)).unwrap();
        let lane_y = TOP + LANE * 3.0 + (LANE - BOX) / 2.0;
        assert!(root_box.contains(&format!(r#"y="{lane_y:.1}""#)), "{root_box}");
        assert!(svg.contains("4 shards and 3 reduce invocations"));
    }

    #[test]
    fn ticks_are_round_numbers_of_seconds() {
        assert_eq!(tick_step(10.0, 10.0), 1.0);
        assert_eq!(tick_step(37.0, 10.0), 5.0);
        assert_eq!(tick_step(0.8, 10.0), 0.1);
        assert_eq!(tick_step(250.0, 10.0), 50.0);
    }

    #[test]
    fn tick_labels_differ_however_short_the_job() {
        for span in [0.004, 0.08, 0.3, 0.8, 7.0, 37.0, 250.0] {
            let step = tick_step(span, 10.0);
            let labels: Vec<String> =
                (0..=(span / step) as usize).map(|i| seconds_label(i as f64 * step, step)).collect();
            let distinct: std::collections::BTreeSet<&String> = labels.iter().collect();
            assert_eq!(distinct.len(), labels.len(), "span {span}: {labels:?}");
        }
        assert_eq!(seconds_label(0.04, 0.02), "0.04s");
        assert_eq!(seconds_label(1.5, 0.5), "1.5s");
        assert_eq!(seconds_label(20.0, 5.0), "20s");
    }
}
