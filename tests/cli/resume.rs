//! Killed jobs resume without redoing committed shards; failed shards are redriven.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const SHARDS: usize = 240;

fn work_inputs(dir: &Path) {
    write_commands(dir, "f", SHARDS, "work 12");
}

fn job_args<'a>(wasm: &'a str, dest: &'a str) -> Vec<&'a str> {
    vec!["run", "--input", "in", "--function", wasm, "--output", dest, "--max-workers", "2"]
}

fn wait_for(what: &str, deadline: Duration, ready: impl FnMut() -> bool) {
    eventually(what, deadline, Duration::from_millis(5), ready);
}

fn journal_segments(dest: &Path) -> usize {
    std::fs::read_dir(dest.join("_fanout"))
        .ok()
        .and_then(|mut jobs| jobs.next())
        .and_then(|job| std::fs::read_dir(job.unwrap().path().join("shards")).ok())
        // a segment being written is a temporary file until it is renamed into place
        .map(|segments| {
            segments.filter(|s| s.as_ref().is_ok_and(|s| s.file_name().to_string_lossy().ends_with(".jsonl"))).count()
        })
        .unwrap_or(0)
}

/// Commit records in the journal's segments so far (a segment is complete once renamed into place).
fn committed_records(dest: &Path) -> usize {
    let Some(job) = std::fs::read_dir(dest.join("_fanout")).ok().and_then(|mut jobs| jobs.next()) else { return 0 };
    let Ok(segments) = std::fs::read_dir(job.unwrap().path().join("shards")) else { return 0 };
    segments
        .flatten()
        .filter(|segment| {
            let name = segment.file_name().to_string_lossy().into_owned();
            name.ends_with(".jsonl") && !name.starts_with(".fanout-tmp-")
        })
        .map(|segment| std::fs::read_to_string(segment.path()).unwrap_or_default().lines().count())
        .sum()
}

#[test]
fn sigkill_at_any_moment_then_resume_commits_each_shard_once() {
    let work = tempfile::tempdir().unwrap();
    work_inputs(&work.path().join("in"));
    let wasm = function("misbehave");
    let wasm = wasm.to_str().unwrap();
    run_in(work.path(), &job_args(wasm, "clean")).assert_code(0);
    let clean = tree(&work.path().join("clean"));
    assert_eq!(clean.len(), SHARDS);

    // Kill before any commit, just after the first commit, and in the middle.
    for (trial, moment) in ["before-commit", "first-commit", "middle"].iter().enumerate() {
        let dest_name = format!("killed{trial}");
        let dest = work.path().join(&dest_name);
        let mut child =
            fanout().current_dir(work.path()).args(job_args(wasm, &dest_name)).arg("--quiet").spawn().unwrap();
        match *moment {
            // job.json itself, not just its folder: a folder caught while job.json is being
            // written holds no job yet, and --resume then rightly starts a new one.
            "before-commit" => wait_for("job.json", Duration::from_secs(30), || {
                std::fs::read_dir(dest.join("_fanout"))
                    .map(|jobs| jobs.flatten().any(|job| job.path().join("job.json").exists()))
                    .unwrap_or(false)
            }),
            "first-commit" => wait_for("a journal segment", Duration::from_secs(30), || journal_segments(&dest) >= 1),
            _ => wait_for("half the shards committed", Duration::from_secs(30), || {
                committed_records(&dest) >= SHARDS / 2
            }),
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let mut args = job_args(wasm, &dest_name);
        args.extend(["--resume", "--json"]);
        let ran = run_in(work.path(), &args);
        ran.assert_code(0);
        let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
        assert_eq!(summary["shards"]["ok"], SHARDS as u64, "{moment}");
        assert_eq!(tree(&dest), clean, "{moment}: outputs differ from an uninterrupted run");

        let job = job_dir(&dest);
        let mut committed: BTreeMap<u64, usize> = BTreeMap::new();
        for record in journal(&job) {
            if record["status"] == "ok" {
                *committed.entry(record["shard"].as_u64().unwrap()).or_default() += 1;
            }
        }
        assert_eq!(committed.len(), SHARDS, "{moment}: every shard committed");
        assert!(committed.values().all(|&n| n == 1), "{moment}: a shard committed twice: {committed:?}");
        if *moment != "before-commit" {
            assert!(summary["shards"]["skipped"].as_u64().unwrap() > 0, "{moment}: the resume redid committed shards");
        }
        assert!(!job.join("staging").exists(), "{moment}: staging left behind");
        for entry in walkdir::WalkDir::new(&dest) {
            let name = entry.unwrap().file_name().to_string_lossy().into_owned();
            assert!(!name.starts_with(".fanout-tmp-"), "{moment}: half-written file {name}");
        }
    }
}

#[test]
fn resume_refuses_a_changed_job_and_starts_fresh_when_there_is_none() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a", "ok")]);
    let wasm = function("misbehave");
    let wasm = wasm.to_str().unwrap();
    let ran = run_in(work.path(), &["run", "--input", "in", "--function", wasm, "--output", "out", "--resume"]);
    ran.assert_code(0);
    assert!(ran.stderr.contains("no earlier job named \"job\""), "{}", ran.stderr);
    let ran = run_in(
        work.path(),
        &["run", "--input", "in", "--function", wasm, "--output", "out", "--resume", "--shard", "objects=2"],
    );
    ran.assert_code(2);
    assert!(ran.stderr.contains("input.shard differs"), "{}", ran.stderr);
}

#[test]
fn redrive_runs_only_the_failed_shards_with_new_attempt_numbers() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a", "ok"), ("b", "flaky"), ("c", "ok")]);
    let wasm = function("misbehave");
    let wasm = wasm.to_str().unwrap();
    run_in(work.path(), &["run", "--input", "in", "--function", wasm, "--output", "out", "--attempts", "1"])
        .assert_code(1);

    let status = run_in(work.path(), &["status", "out", "--json"]);
    status.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["shards"]["ok"], 2);
    assert_eq!(status["shards"]["failed"], 1);
    assert_eq!(status["failed"][0]["shard"], 1);

    let ran = run_in(work.path(), &["redrive", "out", "--json"]);
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["skipped"], 2, "committed shards are not run again");
    assert_eq!(summary["attempts"], 1);
    assert_eq!(std::fs::read_to_string(work.path().join("out/b.ok")).unwrap(), "passed on attempt 2\n");
    let rows = report(&job_dir(&work.path().join("out")));
    assert_eq!(rows[1]["attempts"], "2");
    assert_eq!(rows[1]["status"], "ok");

    let text = run_in(work.path(), &["status", "out"]);
    assert!(text.stdout.contains("3 shards: 3 done, 0 failed, 0 pending"), "{}", text.stdout);

    // A DEST with no job, or no DEST at all: the same plain answer from every command.
    std::fs::create_dir(work.path().join("empty")).unwrap();
    for dest in ["empty", "not-there"] {
        for command in ["status", "report", "redrive"] {
            let ran = run_in(work.path(), &[command, dest]);
            ran.assert_code(2);
            assert!(ran.stderr.contains(&format!("{dest}: no fanout job found")), "{command} {dest}: {}", ran.stderr);
        }
    }
    assert!(!work.path().join("not-there").exists(), "looking writes nothing");
}
