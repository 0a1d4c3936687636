//! The Lambda executor against the cargo-lambda emulator (`scripts/test-lambda`) and the
//! Garage S3 server: `fanout lambda worker` processes serve the emulator's Runtime API, the
//! coordinator invokes them, and what lands in S3 is read back with boto3 and compared with
//! what the local executor makes of the same job. Deploy is tested against moto.

use crate::common::*;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// The emulator from `scripts/test` (or `scripts/test-lambda start`).
fn emulator() -> (String, String) {
    match (std::env::var("FANOUT_TEST_LAMBDA_ENDPOINT"), std::env::var("FANOUT_TEST_LAMBDA_RUNTIME")) {
        (Ok(endpoint), Ok(runtime)) => (endpoint, runtime),
        _ => panic!("no Lambda emulator: FANOUT_TEST_LAMBDA_ENDPOINT is unset (run the tests with scripts/test)"),
    }
}

/// `fanout lambda worker` processes polling the emulator for `function`; killed on drop.
struct Workers {
    children: Vec<Child>,
}

impl Workers {
    fn start(function: &str, count: usize) -> Workers {
        Workers::start_with(function, count, |command| {
            command.args(["lambda", "worker"]);
        })
    }

    /// Workers whose answers may hold at most `limit` bytes of results.
    fn start_with_answer_limit(function: &str, count: usize, limit: usize) -> Workers {
        Workers::start_with(function, count, |command| {
            command.args(["lambda", "worker"]).env("FANOUT_LAMBDA_ANSWER_LIMIT", limit.to_string());
        })
    }

    /// Workers started as Lambda starts a deployment: a binary named `bootstrap`, no arguments.
    fn start_as_bootstrap(function: &str, count: usize, folder: &Path) -> Workers {
        let bootstrap = folder.join("bootstrap");
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_fanout"), &bootstrap).unwrap();
        Workers::start_with(function, count, |command| {
            *command = Command::new(&bootstrap);
        })
    }

    fn start_with(function: &str, count: usize, program: impl Fn(&mut Command)) -> Workers {
        let (_, runtime) = emulator();
        let children = (0..count)
            .map(|_| {
                let mut command = fanout();
                program(&mut command);
                command
                    .env("AWS_LAMBDA_RUNTIME_API", format!("{runtime}/{function}"))
                    .env("AWS_LAMBDA_FUNCTION_NAME", function)
                    .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "2048")
                    .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
                    // A secret of the worker's own, which no guest may see.
                    .env("FANOUT_WORKER_SECRET", "hunter2")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("start a worker")
            })
            .collect();
        Workers { children }
    }

    /// Waits until a guest of one of these workers has written `name` under /out; its index.
    fn wait_holding(&self, name: &str) -> usize {
        let mut holder = None;
        eventually(
            &format!("a worker's guest to write {name}"),
            Duration::from_secs(60),
            Duration::from_millis(20),
            || {
                let pids = workers_holding(name);
                holder = self.children.iter().position(|child| pids.contains(&child.id()));
                holder.is_some()
            },
        );
        holder.unwrap()
    }

    fn kill(&mut self, index: usize) {
        let _ = self.children[index].kill();
        let _ = self.children[index].wait();
        // What it staged stays behind a SIGKILL: no later test may find it.
        let _ =
            std::fs::remove_dir_all(std::env::temp_dir().join(format!("fanout-worker-{}", self.children[index].id())));
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for index in 0..self.children.len() {
            self.kill(index);
        }
    }
}

/// fanout, invoking the emulator.
fn coordinator() -> Command {
    let (endpoint, _) = emulator();
    let mut command = fanout();
    command.env("AWS_ENDPOINT_URL_LAMBDA", endpoint);
    command
}

fn run_lambda(cwd: &Path, args: &[&str]) -> Ran {
    coordinator().current_dir(cwd).args(args).output().expect("run fanout").into()
}

fn s3_url(prefix: &str) -> String {
    format!("s3://{}/{prefix}", s3().bucket)
}

/// `fanout run` of the misbehave function over `PREFIX/in/` into `PREFIX/out/` on the
/// Lambda `function`, `concurrency` invocations at once, and `more` flags.
fn misbehave_args(prefix: &str, function: &str, concurrency: &str, more: &[&str]) -> Vec<String> {
    let wasm = crate::common::function("misbehave");
    let mut args: Vec<String> = [
        "run",
        "--input",
        &s3_url(&format!("{prefix}in/")),
        "--function",
        wasm.to_str().unwrap(),
        "--output",
        &s3_url(&format!("{prefix}out/")),
        "--executor",
        "lambda",
        "--lambda-function",
        function,
        "--concurrency",
        concurrency,
    ]
    .map(String::from)
    .to_vec();
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

fn run_args(args: &[String]) -> Ran {
    run_lambda(&repo(), &args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// Everything under `prefix`, downloaded: (outputs outside `_fanout/`, the one job folder).
fn fetch(prefix: &str) -> (BTreeMap<String, Vec<u8>>, tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    boto3_download(prefix, dir.path());
    let job = std::fs::read_dir(dir.path().join("_fanout"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("job.json").exists())
        .expect("a job folder");
    (tree(dir.path()), dir, job)
}

/// report.csv rows without what differs between executors (worker, times, cold starts).
fn comparable(rows: &[BTreeMap<String, String>]) -> Vec<BTreeMap<String, String>> {
    rows.iter()
        .map(|row| {
            let mut row = row.clone();
            for column in ["worker", "started", "finished", "duration_ms", "cold_start"] {
                row.remove(column);
            }
            row
        })
        .collect()
}

/// The keys under `prefix`, listed by boto3.
fn keys(prefix: &str) -> Vec<String> {
    boto3(
        "prefix = sys.argv[1]\n\
         for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix):\n\
         \x20   for o in page.get('Contents', []):\n\
         \x20       print(o['Key'][len(prefix):])\n",
        &[prefix],
    )
    .lines()
    .map(str::to_string)
    .collect()
}

#[test]
// Ignored (counted as skipped) without the emulator and S3 server; scripts/test starts both.
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and S3: run scripts/test")]
fn thumbnails_on_lambda_match_the_local_executor_byte_for_byte() {
    let prefix = unique_prefix("lambda-thumbs");
    boto3_upload(&repo().join("examples/data/images"), &format!("{prefix}raw/"));
    let _workers = Workers::start("fanout-worker", 2);
    let input = s3_url(&format!("{prefix}raw/"));
    let local_out = s3_url(&format!("{prefix}local/"));
    let lambda_out = s3_url(&format!("{prefix}lambda/"));
    let local = run_in(&repo(), &["run", "jobs/thumbnails.toml", "--input", &input, "--output", &local_out, "-q"]);
    local.assert_code(0);
    let remote = run_lambda(
        &repo(),
        &[
            "run",
            "jobs/thumbnails.toml",
            "--input",
            &input,
            "--output",
            &lambda_out,
            "--executor",
            "lambda",
            "--lambda-function",
            "fanout-worker",
            "--concurrency",
            "4",
            "-q",
        ],
    );
    remote.assert_code(local.code);

    let (local_files, _a, local_job) = fetch(&format!("{prefix}local/"));
    let (lambda_files, _b, lambda_job) = fetch(&format!("{prefix}lambda/"));
    assert_eq!(local_files.len(), 4, "{:?}", local_files.keys());
    assert_eq!(lambda_files, local_files, "the same thumbnails, byte for byte");
    for (name, bytes) in &lambda_files {
        let thumb = image::load_from_memory(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(thumb.width().max(thumb.height()), 256, "{name}");
    }
    let (local_rows, lambda_rows) = (report(&local_job), report(&lambda_job));
    assert_eq!(comparable(&lambda_rows), comparable(&local_rows));
    assert!(lambda_rows.iter().all(|r| r["worker"].contains('-')), "workers are named environments: {lambda_rows:?}");

    let summary = summary(&lambda_job);
    let lambda = &summary["executor"];
    assert_eq!(lambda["kind"], "lambda");
    assert!(lambda["invocations"].as_u64().unwrap() >= 1, "{lambda}");
    assert_eq!(lambda["memory_mb"], 2048);
    let gb_seconds = lambda["gb_seconds"].as_f64().unwrap();
    assert!(gb_seconds > 0.0, "{lambda}");
    let cost = lambda["cost_usd"].as_f64().unwrap();
    let expected = gb_seconds * lambda["price_per_gb_second"].as_f64().unwrap()
        + lambda["invocations"].as_f64().unwrap() * lambda["price_per_request"].as_f64().unwrap();
    assert!((cost - expected).abs() < 1e-12, "{lambda}");
    // The timeline draws a lane for each execution environment.
    let plot = tempfile::tempdir().unwrap();
    let svg_path = plot.path().join("timeline.svg");
    run_in(&repo(), &["report", &lambda_out, "--plot", svg_path.to_str().unwrap()]).assert_code(0);
    let text = std::fs::read_to_string(&svg_path).unwrap();
    let svg = roxmltree::Document::parse(&text).expect("the plot is well-formed XML");
    let lanes = svg.descendants().filter(|n| n.attribute("class") == Some("lane")).count();
    let attempts = svg.descendants().filter(|n| n.attribute("class") == Some("attempt")).count();
    assert_eq!(lanes as u64, lambda["environments"].as_u64().unwrap(), "{text}");
    assert_eq!(attempts, 4);
    // The function was stored once, content-addressed, next to the manifest; no attempt's
    // staged outputs are left behind.
    let stored = keys(&format!("{prefix}lambda/_fanout/"));
    assert_eq!(stored.iter().filter(|k| k.starts_with("functions/") && k.ends_with(".wasm")).count(), 1, "{stored:?}");
    assert!(!stored.iter().any(|k| k.contains("/attempts/")), "{stored:?}");
}

#[test]
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and S3: run scripts/test")]
fn several_workers_share_a_job_in_batches() {
    let prefix = unique_prefix("lambda-share");
    let input = tempfile::tempdir().unwrap();
    write_commands(input.path(), "w", 60, "work 30");
    boto3_upload(input.path(), &format!("{prefix}in/"));
    let _workers = Workers::start("fanout-worker", 3);
    let ran = run_args(&misbehave_args(&prefix, "fanout-worker", "3", &["--json"]));
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 60);
    let invocations = summary["executor"]["invocations"].as_u64().unwrap();
    assert!(invocations < 60, "small shards travel in batches: {invocations} invocations for 60 shards");
    assert!(summary["executor"]["largest_batch"].as_u64().unwrap() > 1, "{}", summary["executor"]);
    let (files, _dir, job) = fetch(&format!("{prefix}out/"));
    assert_eq!(files.len(), 60);
    for (name, bytes) in &files {
        let stem = name.trim_end_matches(".out");
        assert_eq!(String::from_utf8_lossy(bytes), format!("{}\n", stem.chars().rev().collect::<String>()));
    }
    let workers: BTreeSet<String> = report(&job).iter().map(|r| r["worker"].clone()).collect();
    assert!(workers.len() > 1, "more than one worker ran shards: {workers:?}");
}

#[test]
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and S3: run scripts/test")]
fn a_worker_killed_mid_job_costs_a_retry_and_nothing_else() {
    let prefix = unique_prefix("lambda-kill");
    let input = tempfile::tempdir().unwrap();
    write_commands(input.path(), "k", 23, "work 900");
    // Shard 0's first attempt cannot end before the kill: it says it runs, then spins.
    write_files(input.path(), &[("h-held", "holdfirst")]);
    boto3_upload(input.path(), &format!("{prefix}in/"));
    let mut workers = Workers::start("fanout-kill", 2);
    let out = s3_url(&format!("{prefix}out/"));
    let child = coordinator()
        .current_dir(repo())
        .args(misbehave_args(&prefix, "fanout-kill", "2", &["--timeout", "3s", "--json"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Kill the worker that runs the held attempt, mid-invocation.
    let holder = workers.wait_holding("h-held.held");
    workers.kill(holder);
    let ran = Ran::from(child.wait_with_output().unwrap());
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert!(summary["executor"]["worker_errors"].as_u64().unwrap() >= 1, "the lost invocation: {summary}");

    let (files, _dir, job) = fetch(&format!("{prefix}out/"));
    assert_eq!(files.len(), 24, "{:?}", files.keys());
    for (name, bytes) in &files {
        let stem = name.trim_end_matches(".out");
        assert_eq!(String::from_utf8_lossy(bytes), format!("{}\n", stem.chars().rev().collect::<String>()), "{name}");
    }
    let records = journal(&job);
    let committed: Vec<u64> = records.iter().map(|r| r["shard"].as_u64().unwrap()).collect();
    let unique: BTreeSet<u64> = committed.iter().copied().collect();
    assert_eq!(committed.len(), 24, "every shard committed exactly once: {committed:?}");
    assert_eq!(unique.len(), 24);
    assert!(
        records.iter().any(|r| r["shard"] == 0 && r["attempts"].as_u64().unwrap() > 1),
        "the killed worker's attempts were retried: {records:?}"
    );
    let status = run_in(&repo(), &["status", &out, "--json"]);
    status.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["shards"]["ok"], 24);
}

#[test]
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and S3: run scripts/test")]
fn hostile_guests_fail_alone_with_the_outcomes_they_get_locally() {
    let prefix = unique_prefix("lambda-hostile");
    let input = tempfile::tempdir().unwrap();
    write_files(
        input.path(),
        &[
            ("a-ok", "ok"),
            ("b-loop", "loop"),
            ("c-trap", "trap"),
            ("d-alloc", "alloc"),
            ("e-passwd", "passwd"),
            ("f-dotdot", "dotdot"),
            ("g-symlink", "symlink"),
            ("h-secret", "env AWS_SECRET_ACCESS_KEY"),
            ("i-runtime", "env AWS_LAMBDA_RUNTIME_API"),
            ("j-worker", "env FANOUT_WORKER_SECRET"),
            ("k-files", "files 50"),
            ("l-exit", "exit 7"),
        ],
    );
    boto3_upload(input.path(), &format!("{prefix}in/"));
    let _workers = Workers::start("fanout-hostile", 2);
    let wasm = function("misbehave");
    let common = [
        "run",
        "--input",
        &s3_url(&format!("{prefix}in/")),
        "--function",
        wasm.to_str().unwrap(),
        "--timeout",
        "2s",
        "--memory",
        "64MiB",
        "--attempts",
        "1",
        "--max-files",
        "20",
        "--no-backup",
    ]
    .map(String::from);
    let with =
        |more: &[&str]| -> Vec<String> { common.iter().cloned().chain(more.iter().map(|s| s.to_string())).collect() };
    let local_args = with(&["--output", &s3_url(&format!("{prefix}local/")), "-q"]);
    let lambda_args = with(&[
        "--output",
        &s3_url(&format!("{prefix}lambda/")),
        "--executor",
        "lambda",
        "--lambda-function",
        "fanout-hostile",
        "--concurrency",
        "4",
        "-q",
    ]);
    let local = run_in(&repo(), &local_args.iter().map(String::as_str).collect::<Vec<_>>());
    let remote = run_lambda(&repo(), &lambda_args.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(remote.code, local.code, "{}\n{}", remote.stderr, local.stderr);
    assert_eq!(remote.code, 1, "the failed shards fail the job");

    let (local_files, _a, local_job) = fetch(&format!("{prefix}local/"));
    let (lambda_files, _b, lambda_job) = fetch(&format!("{prefix}lambda/"));
    let outcomes = |job: &Path| -> BTreeMap<String, (String, String)> {
        report(job).iter().map(|r| (r["shard"].clone(), (r["status"].clone(), r["outcome"].clone()))).collect()
    };
    assert_eq!(outcomes(&lambda_job), outcomes(&local_job));
    let outcomes = outcomes(&lambda_job);
    let expect = |shard: &str, status: &str, outcome: &str| {
        assert_eq!(outcomes[shard], (status.to_string(), outcome.to_string()), "shard {shard}: {outcomes:?}");
    };
    expect("0", "ok", "ok");
    expect("1", "failed", "timeout");
    expect("2", "failed", "trap");
    expect("3", "failed", "oom");
    for probe in ["4", "5", "7", "8", "9"] {
        expect(probe, "failed", "exit");
    }
    expect("6", "failed", "error");
    expect("10", "failed", "error");
    expect("11", "failed", "exit");
    // Nothing leaked: the only outputs are the well-behaved shard's, on both executors.
    assert_eq!(lambda_files.keys().collect::<Vec<_>>(), vec!["a-ok.ok"]);
    assert_eq!(lambda_files, local_files);
    // The same reasons reach the report, e.g. the symlink refusal.
    let errors: BTreeMap<String, String> =
        report(&lambda_job).iter().map(|r| (r["shard"].clone(), r["error"].clone())).collect();
    assert!(errors["6"].contains("symbolic link"), "{errors:?}");
    assert!(errors["10"].contains("output.max_files"), "{errors:?}");

    // redrive runs the failed shards again, on Lambda as the job says, and they fail again.
    let redriven = run_lambda(&repo(), &["redrive", &s3_url(&format!("{prefix}lambda/")), "--json"]);
    redriven.assert_code(1);
    let summary: serde_json::Value = serde_json::from_str(&redriven.stdout).unwrap();
    assert_eq!(summary["shards"]["skipped"], 1, "the shard that succeeded is not run again");
    assert!(summary["executor"]["invocations"].as_u64().unwrap() >= 1, "{}", summary["executor"]);
    let (_, _c, job) = fetch(&format!("{prefix}lambda/"));
    let rows = report(&job);
    assert!(rows.iter().filter(|r| r["status"] == "failed").all(|r| r["attempts"] == "2"), "{rows:?}");
}

#[test]
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and S3: run scripts/test")]
fn ctrl_c_stops_a_lambda_job_and_resume_finishes_it() {
    let prefix = unique_prefix("lambda-stop");
    let input = tempfile::tempdir().unwrap();
    write_commands(input.path(), "s", 29, "work 600");
    // A shard that cannot finish before the Ctrl-C: its first attempt runs until its timeout.
    write_files(input.path(), &[("h-held", "holdfirst")]);
    boto3_upload(input.path(), &format!("{prefix}in/"));
    let workers = Workers::start("fanout-stop", 2);
    let args = misbehave_args(&prefix, "fanout-stop", "2", &["--name", "stoppable", "--timeout", "5s"]);
    let child =
        coordinator().current_dir(repo()).args(&args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    workers.wait_holding("h-held.held");
    // SAFETY: signalling our own child process with SIGINT.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let ran = Ran::from(child.wait_with_output().unwrap());
    ran.assert_code(1);
    assert!(ran.stderr.contains("stopping: no new shards"), "{}", ran.stderr);
    assert!(ran.stderr.contains("fanout redrive"), "{}", ran.stderr);
    let (files, _dir, job) = fetch(&format!("{prefix}out/"));
    let done = report(&job).iter().filter(|r| r["status"] == "ok").count();
    assert!(done < 30, "stopped early");
    assert_eq!(files.len(), done, "an output exactly for each committed shard");

    let more = ["--name", "stoppable", "--timeout", "5s", "--resume", "--json"];
    let ran = run_args(&misbehave_args(&prefix, "fanout-stop", "2", &more));
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 30);
    assert_eq!(summary["shards"]["skipped"].as_u64().unwrap(), done as u64, "committed shards are not run again");
    let (files, _dir, job) = fetch(&format!("{prefix}out/"));
    assert_eq!(files.len(), 30);
    let committed: Vec<u64> = journal(&job).iter().map(|r| r["shard"].as_u64().unwrap()).collect();
    assert_eq!(committed.len(), 30, "each shard committed once over both runs: {committed:?}");
}

#[test]
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and S3: run scripts/test")]
fn an_attempt_that_finishes_late_never_changes_a_published_output() {
    let prefix = unique_prefix("lambda-late");
    let input = tempfile::tempdir().unwrap();
    write_commands(input.path(), "q", 12, "work 20");
    write_files(input.path(), &[("slow", "latefirst 6000")]);
    boto3_upload(input.path(), &format!("{prefix}in/"));
    let _workers = Workers::start("fanout-late", 2);
    // One shard an invocation: a batch answers as a whole, so a slow shard batched with
    // others would hold them back and no backup would start.
    let ran = run_args(&misbehave_args(&prefix, "fanout-late", "2", &["--lambda-batch", "1", "--json"]));
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert!(summary["backups_won"].as_u64().unwrap() >= 1, "the backup of the slow shard won: {summary}");
    let (files, _dir, _job) = fetch(&format!("{prefix}out/"));
    assert_eq!(String::from_utf8_lossy(&files["slow.out"]), "attempt 2\n");

    // The first attempt is still running in its worker; when it ends it stages its own
    // output ("attempt 1") under its attempt's prefix, and nothing else.
    let mut late = None;
    eventually("the late attempt to finish", Duration::from_secs(30), Duration::from_millis(200), || {
        late = keys(&format!("{prefix}out/_fanout/"))
            .into_iter()
            .find(|k| k.contains("/attempts/") && k.ends_with("slow.out"));
        late.is_some()
    });
    let late = late.unwrap();
    let staged = boto3(
        "print(s3.get_object(Bucket=bucket, Key=sys.argv[1])['Body'].read().decode(), end='')",
        &[&format!("{prefix}out/_fanout/{late}")],
    );
    assert_eq!(staged, "attempt 1\n", "the late attempt did run to its end");
    let (files, _dir, _job) = fetch(&format!("{prefix}out/"));
    assert_eq!(String::from_utf8_lossy(&files["slow.out"]), "attempt 2\n", "and the published output is unchanged");
    assert_eq!(files.len(), 13);

    // The next run of the job (all committed) sweeps the late attempt's leftovers.
    let again = run_args(&misbehave_args(&prefix, "fanout-late", "2", &["--resume", "-q"]));
    again.assert_code(0);
    assert!(!keys(&format!("{prefix}out/_fanout/")).iter().any(|k| k.contains("/attempts/")));
}

#[test]
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and S3: run scripts/test")]
fn bad_lambda_jobs_are_one_line_exit_2_before_any_shard() {
    let prefix = unique_prefix("lambda-bad");
    boto3_upload(&repo().join("examples/data/images"), &format!("{prefix}raw/"));
    let work = tempfile::tempdir().unwrap();
    write_files(work.path(), &[("in/a.txt", "ok")]);
    let wasm = function("misbehave");
    let wasm = wasm.to_str().unwrap();
    let input = s3_url(&format!("{prefix}raw/"));
    let out = s3_url(&format!("{prefix}out/"));
    let lambda = ["--executor", "lambda", "--lambda-function"];
    let cases: Vec<(Vec<&str>, Option<&str>, &str)> = vec![
        (vec!["fanout-worker", "--input", "in", "--output", &out], None, "--input"),
        (vec!["fanout-worker", "--input", &input, "--output", "out"], None, "--output"),
        (vec!["no-such-function", "--input", &input, "--output", &out], None, "no-such-function"),
        (vec!["fanout-worker", "--input", &input, "--output", &out], Some("http://127.0.0.1:9"), "cannot reach Lambda"),
    ];
    for (args, endpoint, named) in cases {
        let mut command = coordinator();
        if let Some(endpoint) = endpoint {
            command.env("AWS_ENDPOINT_URL_LAMBDA", endpoint);
        }
        let ran: Ran = command
            .current_dir(work.path())
            .args(["run", "--function", wasm])
            .args(lambda)
            .args(&args)
            .output()
            .unwrap()
            .into();
        ran.assert_refused(named);
        assert!(!work.path().join("out").exists(), "nothing written locally");
        assert!(keys(&format!("{prefix}out/")).is_empty(), "nothing written to S3 for {args:?}");
    }
    // The job file form names the field and its line.
    write_files(
        work.path(),
        &[("job.toml", &format!("[input]\nsource = \"in\"\n[function]\nwasm = \"{wasm}\"\n[output]\ndest = \"{out}\"\n[executor]\nkind = \"lambda\"\nfunction = \"fanout-worker\"\n"))],
    );
    let ran = run_lambda(work.path(), &["run", "job.toml"]);
    ran.assert_code(2);
    assert!(ran.stderr.contains("job.toml:2") && ran.stderr.contains("input.source"), "{}", ran.stderr);
}

#[test]
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and moto: run scripts/test")]
fn deploy_creates_then_updates_the_worker_function_in_moto() {
    let moto = std::env::var("FANOUT_TEST_MOTO_ENDPOINT").expect("moto from scripts/test-lambda");
    let python = |script: &str| -> String {
        let output = Command::new("python3")
            .arg("-c")
            .arg(format!(
                "import boto3, json, sys\n\
                 kw = dict(endpoint_url='{moto}', region_name='us-east-1', aws_access_key_id='x', aws_secret_access_key='x')\n\
                 {script}"
            ))
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let role = python(
        "iam = boto3.client('iam', **kw)\n\
         doc = json.dumps({'Version': '2012-10-17', 'Statement': [{'Effect': 'Allow', 'Principal': {'Service': 'lambda.amazonaws.com'}, 'Action': 'sts:AssumeRole'}]})\n\
         try:\n    print(iam.create_role(RoleName='fanout-test', AssumeRolePolicyDocument=doc)['Role']['Arn'])\n\
         except iam.exceptions.EntityAlreadyExistsException:\n    print(iam.get_role(RoleName='fanout-test')['Role']['Arn'])\n",
    );
    let role = role.trim();
    let work = tempfile::tempdir().unwrap();
    // A stand-in bootstrap: moto stores code without running it.
    write_files(work.path(), &[("bootstrap", "#!/bin/sh\nexec fanout lambda worker\n"), ("not.zip", "plain text")]);
    let name = format!("fanout-deploy-{}", std::process::id());
    let deploy = |extra: &[&str]| -> Ran {
        fanout()
            .current_dir(work.path())
            .env("AWS_ENDPOINT_URL_LAMBDA", &moto)
            .env("AWS_ACCESS_KEY_ID", "x")
            .env("AWS_SECRET_ACCESS_KEY", "x")
            .env("AWS_REGION", "us-east-1")
            .args(["lambda", "deploy", "--name", &name, "--json"])
            .args(extra)
            .output()
            .unwrap()
            .into()
    };
    let created = deploy(&["--role", role, "--bootstrap", "bootstrap", "--memory", "1024"]);
    created.assert_code(0);
    let created: serde_json::Value = serde_json::from_str(&created.stdout).unwrap();
    assert_eq!(created["created"], true);
    let described = python(&format!(
        "c = boto3.client('lambda', **kw).get_function(FunctionName='{name}')['Configuration']\n\
         print(json.dumps([c['Runtime'], c['Handler'], c['MemorySize'], c['Architectures'], c['CodeSize']]))"
    ));
    let described: serde_json::Value = serde_json::from_str(&described).unwrap();
    assert_eq!(described[0], "provided.al2023");
    assert_eq!(described[1], "bootstrap");
    assert_eq!(described[2], 1024);
    assert_eq!(described[3][0], "x86_64");
    assert!(described[4].as_u64().unwrap() > 0);

    let updated = deploy(&["--bootstrap", "bootstrap", "--arm64", "--memory", "3008"]);
    updated.assert_code(0);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&updated.stdout).unwrap()["created"], false);
    let memory = python(&format!(
        "print(boto3.client('lambda', **kw).get_function(FunctionName='{name}')['Configuration']['MemorySize'])"
    ));
    assert_eq!(memory.trim(), "3008");

    let bad = deploy(&["--zip", "not.zip"]);
    bad.assert_code(2);
    assert!(bad.stderr.contains("not.zip") && bad.stderr.contains("bootstrap"), "{}", bad.stderr);
    let no_role = fanout()
        .current_dir(work.path())
        .env("AWS_ENDPOINT_URL_LAMBDA", &moto)
        .env("AWS_ACCESS_KEY_ID", "x")
        .env("AWS_SECRET_ACCESS_KEY", "x")
        .env("AWS_REGION", "us-east-1")
        .args(["lambda", "deploy", "--name", "fanout-never-created", "--bootstrap", "bootstrap"])
        .output()
        .unwrap();
    assert_eq!(no_role.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_role.stderr).contains("--role"));
}

#[test]
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and S3: run scripts/test")]
fn throttled_invocations_back_off_and_are_sent_again_never_beyond_the_concurrency() {
    let (endpoint, _) = emulator();
    let prefix = unique_prefix("lambda-throttle");
    let input = tempfile::tempdir().unwrap();
    write_commands(input.path(), "t", 40, "work 20");
    boto3_upload(input.path(), &format!("{prefix}in/"));
    let _workers = Workers::start("fanout-throttle", 3);
    // A proxy that answers every third Invoke with 429 and every seventh with 503.
    let state = tempfile::tempdir().unwrap();
    let (port_file, stats_file) = (state.path().join("port"), state.path().join("stats.json"));
    let mut proxy = Command::new("python3")
        .arg(repo().join("tests/fixtures/lambda/throttle-proxy.py"))
        .args([&endpoint, port_file.to_str().unwrap(), stats_file.to_str().unwrap()])
        .spawn()
        .unwrap();
    eventually("the proxy to start", Duration::from_secs(20), Duration::from_millis(50), || {
        std::fs::read_to_string(&port_file).is_ok_and(|port| !port.is_empty())
    });
    let port = std::fs::read_to_string(&port_file).unwrap();
    let ran: Ran = fanout()
        .current_dir(repo())
        .env("AWS_ENDPOINT_URL_LAMBDA", format!("http://127.0.0.1:{port}"))
        .args(misbehave_args(&prefix, "fanout-throttle", "3", &["--lambda-batch", "2", "--json"]))
        .output()
        .unwrap()
        .into();
    let _ = proxy.kill();
    let _ = proxy.wait();
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let proxy: serde_json::Value = serde_json::from_slice(&std::fs::read(&stats_file).unwrap()).unwrap();
    assert_eq!(summary["shards"]["ok"], 40);
    // A straggler's backup (a loaded machine makes some) is an attempt of its own; a refused
    // invocation's attempts are not.
    let backups = summary["backups"].as_u64().unwrap();
    assert_eq!(
        summary["attempts"].as_u64().unwrap(),
        40 + backups,
        "a throttled invocation's attempts are sent again, not counted as attempts: {summary}"
    );
    let throttles = summary["executor"]["throttles"].as_u64().unwrap();
    assert!(throttles > 0, "{}", summary["executor"]);
    assert_eq!(throttles, proxy["throttled"].as_u64().unwrap(), "every refusal is counted: {proxy}");
    assert!(proxy["most_in_flight"].as_u64().unwrap() <= 3, "never more than --concurrency in flight: {proxy}");
    let (files, _dir, _job) = fetch(&format!("{prefix}out/"));
    assert_eq!(files.len(), 40);
}

#[test]
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and S3: run scripts/test")]
fn a_binary_named_bootstrap_started_without_arguments_is_the_worker() {
    let prefix = unique_prefix("lambda-bootstrap");
    let input = tempfile::tempdir().unwrap();
    write_commands(input.path(), "b", 5, "work 5");
    boto3_upload(input.path(), &format!("{prefix}in/"));
    let folder = tempfile::tempdir().unwrap();
    let _workers = Workers::start_as_bootstrap("fanout-bootstrap", 1, folder.path());
    let ran = run_args(&misbehave_args(&prefix, "fanout-bootstrap", "2", &["--json"]));
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 5);
    assert_eq!(summary["executor"]["environments"], 1);
}

#[test]
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and S3: run scripts/test")]
fn results_too_large_for_an_answer_travel_through_dest() {
    let prefix = unique_prefix("lambda-spill");
    let input = tempfile::tempdir().unwrap();
    write_commands(input.path(), "m", 12, "work 5");
    boto3_upload(input.path(), &format!("{prefix}in/"));
    // 500 bytes stand for Lambda's 6 MB: the results of two shards or more are over it, so
    // every batched answer goes through DEST.
    let _workers = Workers::start_with_answer_limit("fanout-spill", 2, 500);
    let ran = run_args(&misbehave_args(&prefix, "fanout-spill", "2", &["--lambda-batch", "6", "--json"]));
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 12);
    assert!(summary["executor"]["invocations"].as_u64().unwrap() < 12, "batched: {}", summary["executor"]);
    let (files, _dir, _job) = fetch(&format!("{prefix}out/"));
    assert_eq!(files.len(), 12);
    for (name, bytes) in &files {
        let stem = name.trim_end_matches(".out");
        assert_eq!(String::from_utf8_lossy(bytes), format!("{}\n", stem.chars().rev().collect::<String>()), "{name}");
    }
    assert!(!keys(&format!("{prefix}out/_fanout/")).iter().any(|k| k.contains("/attempts/")), "results swept");
}

#[test]
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and S3: run scripts/test")]
fn a_python_function_and_its_side_file_reach_lambda_workers_through_dest() {
    let prefix = unique_prefix("lambda-python");
    let input = tempfile::tempdir().unwrap();
    write_files(input.path(), &[("look", "probe")]);
    boto3_upload(input.path(), &format!("{prefix}in/"));
    let note = input.path().join("note.txt");
    std::fs::write(&note, "read on a Lambda worker").unwrap();
    let _workers = Workers::start("fanout-python", 2);
    let probe = repo().join("tests/fixtures/python/probe");
    let file = format!("note.txt={}", note.display());
    let ran = run_lambda(
        &repo(),
        &[
            "run",
            "--input",
            &s3_url(&format!("{prefix}in/")),
            "--python",
            probe.to_str().unwrap(),
            "--file",
            &file,
            "--output",
            &s3_url(&format!("{prefix}out/")),
            "--executor",
            "lambda",
            "--lambda-function",
            "fanout-python",
            "--concurrency",
            "2",
            "-q",
            "--",
            "on-lambda",
        ],
    );
    ran.assert_code(0);
    let (outputs, _dir, _job) = fetch(&format!("{prefix}out/"));
    let found: serde_json::Value = serde_json::from_slice(&outputs["look.json"]).unwrap();
    assert_eq!(found["argv"], serde_json::json!(["main.py", "on-lambda"]));
    assert_eq!(found["files"], serde_json::json!({"note.txt": "read on a Lambda worker"}));
    assert_eq!(found["six"], "1.16.0");
    assert!(!found["env"].to_string().contains("hunter2"), "the worker's secret stays out");
    // The component and the side file are stored once, content-addressed, under DEST.
    let stored = keys(&format!("{prefix}out/_fanout/"));
    assert_eq!(stored.iter().filter(|k| k.starts_with("functions/")).count(), 1, "{stored:?}");
    assert_eq!(stored.iter().filter(|k| k.starts_with("files/")).count(), 1, "{stored:?}");
}

#[test]
#[cfg_attr(not(fanout_lambda_server), ignore = "needs the Lambda emulator and S3: run scripts/test")]
fn a_pandas_function_on_lambda_starts_from_the_coordinators_compiled_snapshot() {
    let prefix = unique_prefix("lambda-pandas");
    let input = tempfile::tempdir().unwrap();
    for file in 0..4 {
        let rows: String = (0..40)
            .map(|row| {
                format!("{},{}.{:02},{}.5\n", ["oslo", "lima"][(row + file) % 2], row * 7 % 29, row * 31 % 100, row % 9)
            })
            .collect();
        std::fs::write(input.path().join(format!("day-{file}.csv")), format!("station,temp,rain\n{rows}")).unwrap();
    }
    boto3_upload(input.path(), &format!("{prefix}in/"));
    // New execution environments: an empty cache, as Lambda's /tmp is. Making and compiling
    // the snapshot there would take minutes, far beyond the attempt's timeout.
    let environment = tempfile::tempdir().unwrap();
    let _workers = Workers::start_with("fanout-python", 2, |command| {
        command.args(["lambda", "worker"]).env("FANOUT_CACHE_DIR", environment.path());
    });
    let script = repo().join("tests/fixtures/python/stats.py");
    let run = |dest: &str, more: &[&str]| {
        let input = s3_url(&format!("{prefix}in/"));
        let mut args = vec!["run", "--input", &input, "--python", script.to_str().unwrap(), "--output", dest, "-q"];
        args.extend(more);
        args.extend(["--timeout", "60s", "--", "/in", "/out"]);
        run_lambda(&repo(), &args)
    };
    run(&s3_url(&format!("{prefix}here/")), &[]).assert_code(0);
    let lambda = ["--executor", "lambda", "--lambda-function", "fanout-python", "--concurrency", "2"];
    run(&s3_url(&format!("{prefix}lambda/")), &lambda).assert_code(0);
    let (here, _dir, _job) = fetch(&format!("{prefix}here/"));
    let (there, _dir, _job) = fetch(&format!("{prefix}lambda/"));
    let outputs = |all: &BTreeMap<String, Vec<u8>>| {
        all.iter().filter(|(key, _)| key.ends_with(".json")).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()
    };
    assert_eq!(outputs(&here).len(), 4, "{:?}", here.keys());
    assert_eq!(outputs(&here), outputs(&there), "the same interpreter gives the same bytes");
    // The workers fetched the stdlib and the compiled snapshot, and never python.wasm: they
    // compiled nothing.
    let blobs: Vec<u64> = std::fs::read_dir(environment.path().join("files/blobs"))
        .unwrap()
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .collect();
    assert_eq!(blobs.len(), 2, "{blobs:?}");
    assert!(blobs.iter().any(|size| *size > 200 << 20), "the compiled snapshot: {blobs:?}");
    let stored = keys(&format!("{prefix}lambda/_fanout/"));
    assert_eq!(stored.iter().filter(|k| k.starts_with("files/")).count(), 3, "{stored:?}");
}
