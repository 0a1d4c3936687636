//! Functions that misbehave on purpose: each failure stays on its own shard, is classified
//! right in report.csv, and nothing of the host reaches outputs or logs.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;

const HOST_SECRET: &str = "s3cr3t-host-value-7f3a";
const AWS_SECRET: &str = "wJalrXUtnFEMI-test-secret-9c1e";

fn hostile_inputs(dir: &Path) {
    write_files(
        dir,
        &[
            ("ok1", "ok"),
            ("ok2", "ok"),
            ("ok3", "ok"),
            ("trap", "trap"),
            ("exit3", "exit 3"),
            ("loop", "loop"),
            ("sleep", "sleep"),
            ("alloc", "alloc"),
            ("passwd", "passwd"),
            ("dotdot", "dotdot"),
            ("env", "env FANOUT_TEST_HOST_SECRET"),
            ("awsenv", "env AWS_SECRET_ACCESS_KEY"),
            ("symlink", "symlink"),
            ("chatty", "stderr 3000000"),
            ("nap", "nap 150"),
        ],
    );
}

fn run_hostile(work: &Path, extra: &[&str]) -> Ran {
    let wasm = function("misbehave");
    let mut command = fanout();
    command
        .current_dir(work)
        .env("FANOUT_TEST_HOST_SECRET", HOST_SECRET)
        .env("AWS_SECRET_ACCESS_KEY", AWS_SECRET)
        .args(["run", "--input", "in", "--function", wasm.to_str().unwrap(), "--output", "out"])
        .args(["--timeout", "1s", "--memory", "64MiB", "--attempts", "1"])
        .args(extra);
    command.output().unwrap().into()
}

#[test]
fn hostile_guests_fail_alone_and_leak_nothing() {
    let work = tempfile::tempdir().unwrap();
    hostile_inputs(&work.path().join("in"));
    let ran = run_hostile(work.path(), &[]);
    ran.assert_code(1);

    let dest = work.path().join("out");
    let job = job_dir(&dest);
    let keys = keys_by_shard(&job);
    let rows: BTreeMap<String, BTreeMap<String, String>> =
        report(&job).into_iter().map(|row| (keys[&row["shard"]].clone(), row)).collect();
    let expect = |key: &str, status: &str, outcome: &str| {
        let row = &rows[key];
        assert_eq!((row["status"].as_str(), row["outcome"].as_str()), (status, outcome), "{key}: {row:?}");
    };
    for ok in ["ok1", "ok2", "ok3", "chatty", "nap"] {
        expect(ok, "ok", "ok");
    }
    expect("trap", "failed", "trap");
    expect("exit3", "failed", "exit");
    assert!(rows["exit3"]["error"].starts_with("exit code 3"), "{:?}", rows["exit3"]);
    expect("loop", "failed", "timeout");
    expect("sleep", "failed", "timeout");
    expect("alloc", "failed", "oom");
    // A limit hit names the limit and the field that sets it.
    assert_eq!(rows["alloc"]["error"], "out of memory (function.memory is 64MiB)");
    assert_eq!(rows["loop"]["error"], "timeout (function.timeout is 1s)");
    // The probes exit with their own codes when the sandbox holds (0 only on a leak).
    for (key, code) in [("passwd", 42), ("dotdot", 43), ("env", 44), ("awsenv", 44)] {
        expect(key, "failed", "exit");
        // The error carries the probe's last words ("denied /etc/passwd: ..."), never the host's.
        assert!(rows[key]["error"].starts_with(&format!("exit code {code}: ")), "{key}: {:?}", rows[key]);
    }
    // A planted symlink fails the shard at publishing; nothing of that attempt is published.
    expect("symlink", "failed", "error");
    assert!(rows["symlink"]["error"].contains("symbolic link"), "{:?}", rows["symlink"]);
    assert!(!dest.join("fine.txt").exists(), "outputs of a failed attempt are never published");
    for leak in ["passwd-leak", "dotdot-leak", "env-leak", "root-listing", "link", "escape"] {
        assert!(!dest.join(leak).exists(), "{leak} escaped the sandbox");
    }
    for ok in ["ok1", "ok2", "ok3"] {
        assert_eq!(std::fs::read_to_string(dest.join(format!("{ok}.ok"))).unwrap(), "fine\n");
    }
    // A sleep shorter than the timeout is a real sleep (and a longer one a timeout, above).
    let slept: u64 = std::fs::read_to_string(dest.join("nap.slept")).unwrap().trim().parse().unwrap();
    assert!((150..1000).contains(&slept), "slept {slept} ms for 150");

    // Nothing of the host anywhere in DEST: outputs, logs, reports.
    for entry in walkdir::WalkDir::new(&dest) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let text = String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned();
            for secret in [HOST_SECRET, AWS_SECRET, "root:x:0:0"] {
                assert!(!text.contains(secret), "{} contains {secret}", entry.path().display());
            }
        }
    }
    // The env probe did print its environment: only the function's own variables are there.
    let env_shard = rows["env"]["shard"].parse::<u64>().unwrap();
    let log = std::fs::read_to_string(job.join(format!("logs/{env_shard:05}.txt"))).unwrap();
    assert!(log.contains("FANOUT_SHARD="), "{log}");
    assert!(!log.contains("HOME=") && !log.contains("PATH="), "host variables in the guest: {log}");
    // A flood on stderr is kept to the cap, and the log says so.
    let chatty = rows["chatty"]["shard"].parse::<u64>().unwrap();
    let log = std::fs::metadata(job.join(format!("logs/{chatty:05}.txt"))).unwrap().len();
    assert!(log <= (1 << 20) + 4096, "log of {log} bytes");
    assert!(std::fs::read_to_string(job.join(format!("logs/{chatty:05}.txt"))).unwrap().contains("truncated"));

    let summary = summary(&job);
    assert_eq!(summary["shards"]["failed"], 10);
    assert_eq!(summary["status"], "failed");
}

#[test]
fn failures_within_the_tolerance_let_the_job_succeed() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a", "ok"), ("b", "ok"), ("c", "trap"), ("d", "exit 9")]);
    run_hostile(work.path(), &["--tolerated", "50%"]).assert_code(0);
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a", "ok"), ("b", "ok"), ("c", "trap"), ("d", "exit 9")]);
    run_hostile(work.path(), &["--tolerated", "1"]).assert_code(1);
}

#[test]
fn retries_use_fresh_outputs_and_count_attempts() {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("t", "trap")]);
    let wasm = function("misbehave");
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
            "--attempts",
            "3",
            "--backoff",
            "10ms",
        ],
    );
    ran.assert_code(1);
    let job = job_dir(&work.path().join("out"));
    let rows = report(&job);
    assert_eq!(rows[0]["attempts"], "3");
    let log = std::fs::read_to_string(job.join("logs/00000.txt")).unwrap();
    for attempt in 1..=3 {
        assert!(log.contains(&format!("attempt {attempt} on worker")), "{log}");
    }
    assert!(ran.stderr.contains("shard 00000 failed after 3 attempts"), "{}", ran.stderr);
}
