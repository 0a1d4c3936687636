//! Nothing hangs: a panic in a worker thread or in a background task of the coordinator
//! (a bug in fanout, injected here with `FANOUT_TEST_PANIC`) fails the run at once with
//! one line and exit 1; the manifest holds exactly what was committed before it, and a
//! redrive finishes the job.

use crate::common::*;
use std::path::Path;
use std::time::{Duration, Instant};

/// Runs the misbehave function over `in/` into `out/` with FANOUT_TEST_PANIC set, failing
/// the test (instead of hanging it) if fanout has not exited within a minute.
fn run_with_panic(work: &Path, place: &str) -> Ran {
    let wasm = function("misbehave");
    let mut child = fanout()
        .current_dir(work)
        .env("FANOUT_TEST_PANIC", place)
        .args(["run", "--input", "in", "--function", wasm.to_str().unwrap(), "--output", "out", "--max-workers", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("fanout still runs a minute after a panic at {place}: it hangs");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap().into()
}

/// The run's error is one line naming the panic; Rust's own panic message is not printed.
fn assert_one_line_error(ran: &Ran, place: &str) {
    ran.assert_code(1);
    let errors: Vec<&str> = ran.stderr.lines().filter(|line| line.contains("panicked")).collect();
    assert_eq!(errors.len(), 1, "one line says it: {}", ran.stderr);
    assert!(errors[0].starts_with("fanout: error: an internal error (a bug in fanout)"), "{}", errors[0]);
    assert!(errors[0].contains(&format!("FANOUT_TEST_PANIC={place}")), "{}", errors[0]);
    assert!(!ran.stderr.contains("thread '"), "no raw panic message: {}", ran.stderr);
}

/// The run stopped early, and every shard the journal committed as ok has its output,
/// whole (shards already publishing when the panic struck may commit while it stops).
fn assert_committed_whole(out: &Path) -> Vec<u64> {
    let ok: Vec<u64> = journal(&job_dir(out))
        .iter()
        .filter(|record| record["status"] == "ok")
        .map(|record| record["shard"].as_u64().unwrap())
        .collect();
    assert!(ok.len() < 12, "the run stopped before the end: {ok:?}");
    let published = assert_outputs_whole(out);
    assert!(published >= ok.len(), "every committed shard's output exists: {ok:?}");
    ok
}

/// Every output in `out` (outside `_fanout`) holds its input's name reversed; how many.
fn assert_outputs_whole(out: &Path) -> usize {
    let published: Vec<String> = tree(out).into_keys().filter(|key| !key.starts_with("_fanout/")).collect();
    for name in &published {
        let stem = name.trim_end_matches(".out");
        let reversed: String = stem.chars().rev().collect();
        assert_eq!(std::fs::read_to_string(out.join(name)).unwrap(), format!("{reversed}\n"), "{name} is whole");
    }
    published.len()
}

/// `fanout redrive` runs what the panic left, and only that: every shard's output, whole.
fn redrive_finishes(work: &Path, committed: &[u64]) {
    let ran = run_in(work, &["redrive", "out", "--json"]);
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 12, "{summary}");
    let skipped = summary["shards"]["skipped"].as_u64().unwrap();
    assert_eq!(skipped, committed.len() as u64, "committed shards are not run again");
    assert_eq!(assert_outputs_whole(&work.join("out")), 12);
}

#[test]
fn a_panic_in_a_worker_thread_fails_the_run_and_keeps_what_was_committed() {
    let work = tempfile::tempdir().unwrap();
    write_commands(&work.path().join("in"), "f", 12, "work 1");
    // The fourth attempt the pool takes panics in its thread.
    let ran = run_with_panic(work.path(), "worker-thread@4");
    assert_one_line_error(&ran, "worker-thread");
    let out = work.path().join("out");
    let ok = assert_committed_whole(&out);
    redrive_finishes(work.path(), &ok);
}

#[test]
fn a_panic_in_a_background_task_fails_the_run_and_keeps_what_was_committed() {
    let work = tempfile::tempdir().unwrap();
    write_commands(&work.path().join("in"), "f", 12, "work 1");
    // The sixth publishing task panics before it publishes anything.
    let ran = run_with_panic(work.path(), "publish@6");
    assert_one_line_error(&ran, "publish");
    let out = work.path().join("out");
    let ok = assert_committed_whole(&out);
    redrive_finishes(work.path(), &ok);
}
