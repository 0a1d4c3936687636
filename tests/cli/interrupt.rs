//! Ctrl-C: the first stops dispatching and lets running attempts finish; the second (or the
//! grace period) cancels them. Either way nothing half-done is published, the manifest is
//! resumable, and fanout prints the command that finishes the job.

use crate::common::*;
use std::io::BufRead;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn interrupt(child: &std::process::Child) {
    // SAFETY: signalling our own child process with SIGINT.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
}

fn wait_until(what: &str, ready: impl FnMut() -> bool) {
    eventually(what, Duration::from_secs(60), Duration::from_millis(10), ready);
}

/// Starts `fanout run` of the misbehave function over `in/` into `out/` with two workers,
/// its output captured; returns the child and the output folder.
fn start_job(work: &std::path::Path) -> (std::process::Child, std::path::PathBuf) {
    let wasm = function("misbehave");
    let child = fanout()
        .current_dir(work)
        .args(["run", "--input", "in", "--function", wasm.to_str().unwrap(), "--output", "out", "--max-workers", "2"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (child, work.join("out"))
}

fn outputs(dir: &std::path::Path) -> Vec<String> {
    tree(dir).into_keys().collect()
}

#[test]
fn first_ctrl_c_lets_running_attempts_finish_and_redrive_completes_the_job() {
    let work = tempfile::tempdir().unwrap();
    write_commands(&work.path().join("in"), "f", 30, "work 250");
    let (child, out) = start_job(work.path());
    wait_until("the first outputs", || outputs(&out).len() >= 2);
    interrupt(&child);
    let stopped = Instant::now();
    let ran = Ran::from(child.wait_with_output().unwrap());
    ran.assert_code(1);
    assert!(stopped.elapsed() < Duration::from_secs(5), "running attempts (250 ms) end, then fanout stops");
    assert!(ran.stderr.contains("stopping: no new shards"), "{}", ran.stderr);
    assert!(ran.stderr.contains("fanout redrive"), "the resume command is printed: {}", ran.stderr);

    // Everything published is complete and committed; the rest is pending, not half-done.
    let job = job_dir(&out);
    let rows = report(&job);
    let done: Vec<_> = rows.iter().filter(|r| r["status"] == "ok").collect();
    assert!(done.len() < 30, "the job stopped early");
    assert!(rows.iter().all(|r| r["status"] == "ok" || r["status"] == "pending"), "{rows:?}");
    let published = outputs(&out);
    assert_eq!(published.len(), done.len(), "an output exists exactly for each committed shard: {published:?}");
    for name in &published {
        let stem = name.trim_end_matches(".out");
        let reversed: String = stem.chars().rev().collect();
        assert_eq!(std::fs::read_to_string(out.join(name)).unwrap(), format!("{reversed}\n"), "{name} is whole");
    }
    assert_eq!(summary(&job)["status"], "stopped");

    let ran = run_in(work.path(), &["redrive", "out", "--json"]);
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 30);
    assert_eq!(summary["shards"]["skipped"].as_u64().unwrap(), done.len() as u64);
    assert_eq!(outputs(&out).len(), 30);
}

/// Collects a child's stderr as it comes, so a test can wait for a message.
fn read_stderr(child: &mut std::process::Child) -> (Arc<Mutex<String>>, std::thread::JoinHandle<()>) {
    let stderr = child.stderr.take().unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let writer = seen.clone();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut seen = writer.lock().unwrap();
            seen.push_str(&line);
            seen.push('\n');
        }
    });
    (seen, reader)
}

#[test]
fn second_ctrl_c_stops_at_once_and_publishes_nothing_half_done() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a", "work 20000"), ("b", "work 20000"), ("c", "work 20000")]);
    let (mut child, out) = start_job(work.path());
    let (stderr, reader) = read_stderr(&mut child);
    // Each Ctrl-C only once fanout is where it must be, however slow the machine.
    wait_until("two workers running attempts", || worker_threads(child.id()) == 2);
    interrupt(&child);
    wait_until("the first Ctrl-C to be heard", || stderr.lock().unwrap().contains("stopping: no new shards"));
    interrupt(&child);
    let stopped = Instant::now();
    let status = child.wait().unwrap();
    reader.join().unwrap();
    let stderr = stderr.lock().unwrap().clone();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stopped.elapsed() < Duration::from_secs(3), "the second Ctrl-C cancels the 20 s attempts");
    assert!(stderr.contains("stopping now"), "{stderr}");
    assert!(outputs(&out).is_empty(), "nothing half-done is published: {:?}", outputs(&out));
    let rows = report(&job_dir(&out));
    assert!(rows.iter().all(|r| r["status"] == "pending"), "{rows:?}");
}
