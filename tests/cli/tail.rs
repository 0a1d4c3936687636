//! The tail of a job: backup attempts for stragglers and timeouts relative to the median.

use crate::common::*;

#[test]
fn a_straggler_gets_a_backup_that_commits_while_the_original_publishes_nothing() {
    let work = tempfile::tempdir().unwrap();
    write_commands(&work.path().join("in"), "quick", 19, "work 40");
    write_files(&work.path().join("in"), &[("slow", "slowfirst 20000")]);
    let wasm = function("misbehave");
    let started = std::time::Instant::now();
    let ran = run_in(
        work.path(),
        &["run", "--input", "in", "--function", wasm.to_str().unwrap(), "--output", "out", "--json"],
    );
    ran.assert_code(0);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(15),
        "the backup should finish long before the 20 s straggler"
    );
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["backups"], 1);
    assert_eq!(summary["backups_won"], 1);
    let out = work.path().join("out");
    assert!(out.join("slow.attempt2").exists(), "the backup's output is published");
    assert!(!out.join("slow.attempt1").exists(), "the cancelled original publishes nothing");
    let rows = report(&job_dir(&out));
    let slow = rows.iter().find(|r| r["backup"] == "true").expect("a row for the backup");
    assert_eq!(slow["attempts"], "2");
    assert_eq!(slow["status"], "ok");
    assert_eq!(rows.iter().filter(|r| r["status"] == "ok").count(), 20);
}

#[test]
fn no_backup_when_turned_off() {
    let work = tempfile::tempdir().unwrap();
    write_commands(&work.path().join("in"), "quick", 9, "work 20");
    write_files(&work.path().join("in"), &[("slow", "slowfirst 1500")]);
    let wasm = function("misbehave");
    let ran = run_in(
        work.path(),
        &["run", "--input", "in", "--function", wasm.to_str().unwrap(), "--output", "out", "--json", "--no-backup"],
    );
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["backups"], 0);
    assert!(work.path().join("out/slow.attempt1").exists());
}

#[test]
fn a_relative_timeout_stops_what_runs_far_longer_than_the_median() {
    let work = tempfile::tempdir().unwrap();
    write_commands(&work.path().join("in"), "a", 12, "work 30");
    write_files(&work.path().join("in"), &[("z-loop", "loop")]);
    let wasm = function("misbehave");
    let started = std::time::Instant::now();
    let ran = run_in(
        work.path(),
        &[
            "run",
            "--input",
            "in",
            "--function",
            wasm.to_str().unwrap(),
            "--output",
            "out",
            "--timeout",
            "300%",
            "--attempts",
            "1",
            "--no-backup",
            "--json",
        ],
    );
    ran.assert_code(1);
    // the median is ~30 ms, so the limit is its floor of 1 s, far below the 1 h cap
    assert!(started.elapsed() < std::time::Duration::from_secs(20), "took {:?}", started.elapsed());
    let rows = report(&job_dir(&work.path().join("out")));
    let looping = rows.last().unwrap();
    assert_eq!((looping["status"].as_str(), looping["outcome"].as_str()), ("failed", "timeout"), "{looping:?}");
    assert!(
        looping["error"].starts_with("timeout (function.timeout is 300% of the median shard, at most "),
        "{looping:?}"
    );
    assert_eq!(rows.iter().filter(|r| r["status"] == "ok").count(), 12);
}
