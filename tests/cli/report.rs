//! `fanout report`: the table, `--json` and `--plot`, read back the way a user (or a
//! colleague opening the SVG) would: numbers checked against the manifest, and the plot
//! parsed as XML, one box per attempt on the lane of the worker that ran it.

use crate::common::*;
use std::collections::BTreeMap;

/// Six shards: three succeed at once, two fail their first attempt and then succeed, one
/// traps on both of its attempts.
fn run_mixed_job(work: &std::path::Path) -> std::path::PathBuf {
    let input = work.join("in");
    write_commands(&input, "ok", 3, "ok");
    write_commands(&input, "flaky", 2, "flaky");
    write_commands(&input, "trap", 1, "trap");
    let wasm = function("misbehave");
    let ran = run_in(
        work,
        &["run", "--input", "in", "--function", wasm.to_str().unwrap(), "--output", "out", "--max-workers", "2"]
            .into_iter()
            .chain(["--attempts", "2", "--backoff", "10ms", "--quiet"])
            .collect::<Vec<_>>(),
    );
    ran.assert_code(1);
    work.join("out")
}

#[test]
fn the_report_table_and_json_say_what_the_manifest_says() {
    let work = tempfile::tempdir().unwrap();
    let out = run_mixed_job(work.path());
    let table = run_in(work.path(), &["report", "out"]);
    table.assert_code(0);
    let job = job_dir(&out);
    let job_id = job.file_name().unwrap().to_str().unwrap();
    assert!(table.stdout.starts_with(&format!("job {job_id} (")), "{}", table.stdout);
    assert!(table.stdout.contains("shards: 6 total, 5 ok, 1 failed, 0 pending"), "{}", table.stdout);
    assert!(table.stdout.contains("outcomes: ok 5, trap 1"), "{}", table.stdout);
    assert!(table.stdout.contains("duration of ok shards: median "), "{}", table.stdout);

    let json = run_in(work.path(), &["report", "out", "--json"]);
    json.assert_code(0);
    let printed: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(printed, summary(&job), "--json prints summary.json");
    assert_eq!(printed["status"], "failed");
    assert_eq!(printed["outcomes"]["trap"], 2, "both attempts of the trapping shard");

    let csv = run_in(work.path(), &["report", "out", "--csv"]);
    assert_eq!(csv.stdout, std::fs::read_to_string(job.join("report.csv")).unwrap());
}

#[test]
fn the_plot_draws_every_attempt_on_its_worker_lane() {
    let work = tempfile::tempdir().unwrap();
    let out = run_mixed_job(work.path());
    let plotted = run_in(work.path(), &["report", "out", "--plot", "timeline.svg"]);
    plotted.assert_code(0);
    let text = std::fs::read_to_string(work.path().join("timeline.svg")).unwrap();
    let svg = roxmltree::Document::parse(&text).expect("the plot is well-formed XML");
    let class = |node: &roxmltree::Node, name: &str| node.attribute("class") == Some(name);
    let number = |node: &roxmltree::Node, attribute: &str| node.attribute(attribute).unwrap().parse::<f64>().unwrap();

    // One box per attempt: as many per shard as report.csv counts.
    let boxes: Vec<_> = svg.descendants().filter(|n| class(n, "attempt")).collect();
    let mut per_shard = BTreeMap::<String, u32>::new();
    for b in &boxes {
        *per_shard.entry(b.attribute("data-shard").unwrap().to_string()).or_default() += 1;
    }
    let rows = report(&job_dir(&out));
    assert_eq!(boxes.len(), 3 + 2 * 2 + 2, "{text}");
    for row in &rows {
        assert_eq!(per_shard[&row["shard"]].to_string(), row["attempts"], "shard {}", row["shard"]);
    }
    let outcomes: Vec<&str> = boxes.iter().map(|b| b.attribute("data-outcome").unwrap()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "exit").count(), 2, "the flaky shards' first attempts");
    assert_eq!(outcomes.iter().filter(|o| **o == "trap").count(), 2);

    // Each box sits inside the lane of its worker.
    let lanes: Vec<_> = svg.descendants().filter(|n| class(n, "lane")).collect();
    assert!(!lanes.is_empty() && lanes.len() <= 2, "two workers at most");
    for b in &boxes {
        let worker: u32 = b.attribute("data-worker").unwrap().parse().unwrap();
        let lane = lanes
            .iter()
            .find(|lane| {
                let (first, last) = lane.attribute("data-workers").unwrap().split_once('-').unwrap();
                (first.parse::<u32>().unwrap()..=last.parse().unwrap()).contains(&worker)
            })
            .unwrap_or_else(|| panic!("no lane for worker {worker}"));
        let (y, lane_y) = (number(b, "y"), number(lane, "y"));
        assert!(y >= lane_y && y + number(b, "height") <= lane_y + number(lane, "height"), "worker {worker}");
    }

    // A legend for every outcome, a time axis in seconds, and the concurrency panel.
    assert_eq!(svg.descendants().filter(|n| class(n, "legend")).count(), 7);
    let ticks = svg.descendants().filter(|n| class(n, "tick")).count();
    assert!(ticks >= 2, "a time axis: {ticks} ticks");
    let zero = [">0s<", ">0.0s<", ">0.00s<", ">0.000s<"];
    assert!(zero.iter().any(|label| text.contains(label)), "the axis starts at 0 seconds");
    let panel = svg.descendants().find(|n| class(n, "concurrency")).expect("the concurrency panel");
    let peak: u32 = panel.attribute("data-peak").unwrap().parse().unwrap();
    assert!((1..=2).contains(&peak), "at most two attempts ran at once: {peak}");
    assert!(svg.descendants().any(|n| class(&n, "cold")), "cold starts are marked");
}

#[test]
fn progress_lines_count_against_the_whole_plan_from_the_start() {
    // 40 shards of 120 ms on 2 workers: over 2 s, so plain progress lines are printed. The
    // plan of a local folder is known at once, so every line's total is 40.
    let work = tempfile::tempdir().unwrap();
    write_commands(&work.path().join("in"), "n", 40, "nap 120");
    let wasm = function("misbehave");
    let ran = run_in(
        work.path(),
        &["run", "--input", "in", "--function", wasm.to_str().unwrap(), "--output", "out", "--max-workers", "2"],
    );
    ran.assert_code(0);
    let lines: Vec<&str> = ran.stderr.lines().filter(|l| l.contains(" shards done")).collect();
    assert!(!lines.is_empty(), "no progress line in:\n{}", ran.stderr);
    for line in &lines {
        assert!(line.contains("/40 shards done"), "the total is the plan's: {line}");
        assert!(line.contains("eta "), "with the plan known, an ETA: {line}");
    }
    assert!(ran.stdout.contains("2 workers at peak"), "{}", ran.stdout);
}
