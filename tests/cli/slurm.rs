//! The Slurm executor on a real one-machine cluster (`scripts/test-slurm`: a controller and
//! three emulated nodes) with Garage as the store: the same outputs and outcomes as the
//! local executor, array tasks spread over nodes, a task cancelled in the middle whose
//! shards are retried, and the errors a user meets before anything is written.

use crate::common::*;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

fn s3_url(prefix: &str) -> String {
    format!("s3://{}/{prefix}", s3().bucket)
}

/// A Slurm command's stdout.
fn slurm(program: &str, args: &[&str]) -> String {
    let output = std::process::Command::new(program).args(args).output().expect(program);
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
#[cfg_attr(not(fanout_slurm_cluster), ignore = "needs the Slurm test cluster and S3: run scripts/test")]
fn thumbnails_on_slurm_match_the_local_executor_byte_for_byte() {
    let prefix = unique_prefix("slurm-thumbs");
    boto3_upload(&repo().join("examples/data/images"), &format!("{prefix}raw/"));
    let input = s3_url(&format!("{prefix}raw/"));
    let run = |dest: &str, more: &[&str]| {
        let mut args = vec!["run", "jobs/thumbnails.toml", "--input", &input, "--output", dest, "--json"];
        args.extend(more);
        run_in(&repo(), &args)
    };
    let local_dest = s3_url(&format!("{prefix}local/"));
    run(&local_dest, &[]).assert_code(0);
    let slurm_dest = s3_url(&format!("{prefix}slurm/"));
    let ran = run(&slurm_dest, &["--executor", "slurm", "--concurrency", "4"]);
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 4, "{summary}");
    assert_eq!(summary["executor"]["kind"], "slurm", "{summary}");
    assert_eq!(summary["executor"]["array_tasks"], 4, "{summary}");

    let (local_rows, _, local) = s3_report(&format!("{prefix}local/"));
    let (slurm_rows, _, slurm_back) = s3_report(&format!("{prefix}slurm/"));
    assert_eq!(tree(local.path()), tree(slurm_back.path()), "the outputs differ");
    let outcomes = |rows: &[BTreeMap<String, String>]| {
        rows.iter().map(|r| (r["shard"].clone(), r["status"].clone(), r["outcome"].clone())).collect::<Vec<_>>()
    };
    assert_eq!(outcomes(&local_rows), outcomes(&slurm_rows));
    // Each shard ran in an array task, and the tasks spread over more than one node.
    let nodes: std::collections::BTreeSet<&str> =
        slurm_rows.iter().map(|r| r["worker"].rsplit(" on ").next().unwrap()).collect();
    assert!(slurm_rows.iter().all(|r| r["worker"].starts_with("slurm ")), "{slurm_rows:?}");
    assert!(nodes.len() >= 2, "every task ran on {nodes:?}");
}

#[test]
#[cfg_attr(not(fanout_slurm_cluster), ignore = "needs the Slurm test cluster and S3: run scripts/test")]
fn a_native_command_on_slurm_runs_sandboxed_on_the_nodes_as_it_does_here() {
    let prefix = unique_prefix("slurm-native");
    boto3_upload(&repo().join("examples/data/images"), &format!("{prefix}raw/"));
    let input = s3_url(&format!("{prefix}raw/"));
    // The command reports where it ran, so the test sees the sandbox on the node.
    let command = "sh -c 'convert \"$1\" -resize 32x32 -strip \"$2\" && id -u > \"$2.uid\"' - {in} {out}/{stem}.png";
    let run = |dest: &str, more: &[&str]| {
        let mut args = vec!["run", "--input", &input, "--command", command, "--output", dest, "--json"];
        args.extend(more);
        run_in(&repo(), &args)
    };
    run(&s3_url(&format!("{prefix}local/")), &[]).assert_code(0);
    let ran = run(&s3_url(&format!("{prefix}slurm/")), &["--executor", "slurm", "--concurrency", "2"]);
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 4, "{summary}");
    assert_eq!(summary["function"]["kind"], "native", "{summary}");
    let (_, _, local) = s3_report(&format!("{prefix}local/"));
    let (rows, _, slurm_back) = s3_report(&format!("{prefix}slurm/"));
    assert!(rows.iter().all(|r| r["worker"].starts_with("slurm ")), "{rows:?}");
    assert_eq!(tree(local.path()), tree(slurm_back.path()), "the outputs differ");
    let uid = std::fs::read_to_string(slurm_back.path().join("logo.png.uid")).unwrap();
    assert_eq!(uid.trim(), "65534", "the command ran as the sandbox's own user on the node");
    assert!(image::open(slurm_back.path().join("logo.png")).unwrap().width() <= 32);
}

#[test]
#[cfg_attr(not(fanout_slurm_cluster), ignore = "needs the Slurm test cluster and S3: run scripts/test")]
fn a_pandas_function_on_slurm_gives_what_it_gives_here() {
    let prefix = unique_prefix("slurm-pandas");
    let csvs = tempfile::tempdir().unwrap();
    for file in 0..3 {
        let rows: String = (0..30)
            .map(|row| {
                let station = ["oslo", "lima"][row % 2];
                format!("{station},{}.{:03},{}.5,{}\n", row * 7 % 31, row * 37 % 1000, row * 13 % 17, row % 5)
            })
            .collect();
        std::fs::write(csvs.path().join(format!("day-{file}.csv")), format!("station,temp,rain,wind\n{rows}")).unwrap();
    }
    boto3_upload(csvs.path(), &format!("{prefix}csv/"));
    let input = s3_url(&format!("{prefix}csv/"));
    let script = repo().join("tests/fixtures/python/stats.py");
    let run = |dest: &str, more: &[&str]| {
        let mut args = vec!["run", "--input", &input, "--python", script.to_str().unwrap(), "--output", dest, "--json"];
        args.extend(more);
        args.extend(["--", "/in", "/out"]);
        run_in(&repo(), &args)
    };
    run(&s3_url(&format!("{prefix}local/")), &[]).assert_code(0);
    let ran = run(&s3_url(&format!("{prefix}slurm/")), &["--executor", "slurm", "--concurrency", "2"]);
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 3, "{summary}");
    assert_eq!(summary["function"]["kind"], "python", "{summary}");
    let (_, _, local) = s3_report(&format!("{prefix}local/"));
    let (rows, _, slurm_back) = s3_report(&format!("{prefix}slurm/"));
    assert!(rows.iter().all(|r| r["worker"].starts_with("slurm ")), "{rows:?}");
    let outputs = |dir: &Path| {
        let mut files = tree(dir);
        files.retain(|key, _| key.ends_with(".json"));
        files
    };
    assert_eq!(outputs(local.path()).len(), 3);
    assert_eq!(outputs(local.path()), outputs(slurm_back.path()), "the same interpreter gives the same bytes");
    // The interpreter's two files and its compiled snapshot are stored once under DEST, for
    // workers that lack them.
    let stored = std::fs::read_dir(slurm_back.path().join("_fanout/files")).unwrap().count();
    assert_eq!(stored, 3, "python.wasm, its stdlib zip and the compiled snapshot");
}

/// Waits for `file` to hold a line starting with `start`, and returns the rest of it.
fn line_in(file: &Path, start: &str, limit: Duration) -> String {
    let mut found = None;
    eventually(&format!("{start:?} in {}", file.display()), limit, Duration::from_millis(50), || {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        found = text.lines().find_map(|l| l.strip_prefix(start)).map(str::to_string);
        found.is_some()
    });
    found.unwrap()
}

/// A job of six shards that each nap `ms` on Slurm, three array tasks of two shards each,
/// started in the background and followed until its array is submitted.
struct NapJob {
    prefix: String,
    dir: tempfile::TempDir,
    args: Vec<String>,
    log: std::path::PathBuf,
    child: std::process::Child,
    array: String,
}

impl NapJob {
    fn start(test: &str, ms: u64, more: &[&str]) -> NapJob {
        let inputs: Vec<(String, String)> = (0..6).map(|i| (format!("nap-{i:03}"), format!("nap {ms}"))).collect();
        NapJob::start_with(test, &inputs, more)
    }

    /// The job over `inputs` (name, misbehave command), six of them.
    fn start_with(test: &str, inputs: &[(String, String)], more: &[&str]) -> NapJob {
        let prefix = unique_prefix(test);
        let dir = tempfile::tempdir().unwrap();
        let files: Vec<(&str, &str)> = inputs.iter().map(|(name, command)| (name.as_str(), command.as_str())).collect();
        write_files(&dir.path().join("in"), &files);
        boto3_upload(&dir.path().join("in"), &format!("{prefix}in/"));
        let (input, output) = (s3_url(&format!("{prefix}in/")), s3_url(&format!("{prefix}out/")));
        let wasm = function("misbehave");
        let args: Vec<String> = ["run", "--input", &input, "--output", &output, "--function", wasm.to_str().unwrap()]
            .into_iter()
            .chain(["--executor", "slurm", "--concurrency", "3"])
            .chain(more.iter().copied())
            .map(String::from)
            .collect();
        let log = dir.path().join("fanout.log");
        let child = fanout()
            .current_dir(dir.path())
            .args(&args)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let array = line_in(&log, "fanout: submitted array ", Duration::from_secs(60));
        let array = array.split(':').next().unwrap().to_string();
        NapJob { prefix, dir, args, log, child, array }
    }

    /// The same command with `--resume` (and `more`), run to its end.
    fn resume(&self, more: &[&str]) -> Ran {
        let mut args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        args.insert(1, "--resume");
        args.extend(more);
        run_in(self.dir.path(), &args)
    }
}

/// Waits until the Slurm job or array task `id` has a task running.
fn wait_running(id: &str) {
    eventually(&format!("{id} to run"), Duration::from_secs(60), Duration::from_millis(100), || {
        slurm("squeue", &["-h", "-r", "-j", id, "-t", "RUNNING", "-o", "%i"]).contains('_')
    });
}

#[test]
#[cfg_attr(not(fanout_slurm_cluster), ignore = "needs the Slurm test cluster and S3: run scripts/test")]
fn an_array_task_cancelled_in_the_middle_has_its_shards_retried() {
    // Task 1's two shards (2 and 3) cannot finish in their first attempt: each says it runs
    // (a name of this run's own) and spins. The others nap 2 s.
    let tag = unique_prefix("held").trim_end_matches('/').to_string();
    let inputs: Vec<(String, String)> = (0..6)
        .map(|i| match i {
            2 | 3 => (format!("nap-{i:03}-{tag}"), "holdfirst".to_string()),
            _ => (format!("nap-{i:03}"), "nap 2000".to_string()),
        })
        .collect();
    let held = [2, 3].map(|i| format!("{}.held", inputs[i].0));
    let mut job = NapJob::start_with("slurm-cancel", &inputs, &["--backoff", "10ms"]);
    // Task 1 runs its first shard, which cannot end: cancel the task now.
    let task = format!("{}_1", job.array);
    eventually(&format!("{task} to run its first shard"), Duration::from_secs(60), Duration::from_millis(50), || {
        held.iter().any(|name| !workers_holding(name).is_empty())
    });
    assert!(std::process::Command::new("scancel").arg(&task).status().unwrap().success());
    let status = job.child.wait().unwrap();
    let stderr = std::fs::read_to_string(&job.log).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    let prefix = &job.prefix;
    let (rows, manifest, back) = s3_report(&format!("{prefix}out/"));
    let summary = summary(&manifest);
    assert_eq!(summary["shards"]["ok"], 6, "{summary}");
    assert!(summary["executor"]["tasks_lost"].as_u64().unwrap() >= 1, "{summary}");
    assert!(summary["executor"]["arrays"].as_array().unwrap().len() >= 2, "a further array: {summary}");
    // The cancelled task's two shards ran again; each shard is committed once.
    let retried: Vec<_> = rows.iter().filter(|r| r["attempts"] != "1").collect();
    assert_eq!(retried.len(), 2, "{rows:?}");
    assert_eq!(rows.len(), 6);
    let journal = journal(&manifest);
    assert_eq!(journal.len(), 6, "one commit record a shard");
    for i in [0, 1, 4, 5] {
        let slept = std::fs::read_to_string(back.path().join(format!("nap-{i:03}.slept"))).unwrap();
        assert!(slept.trim().parse::<u64>().unwrap() >= 2000, "{slept}");
    }
    for (name, _) in &inputs[2..4] {
        let reversed: String = name.chars().rev().collect();
        assert_eq!(std::fs::read_to_string(back.path().join(format!("{name}.out"))).unwrap(), format!("{reversed}\n"));
    }
    // The cancelled worker's staging stays behind it: no later run may find its marker.
    for pid in held.iter().flat_map(|name| workers_holding(name)) {
        let _ = std::fs::remove_dir_all(std::env::temp_dir().join(format!("fanout-worker-{pid}")));
    }
}

#[test]
#[cfg_attr(not(fanout_slurm_cluster), ignore = "needs the Slurm test cluster and S3: run scripts/test")]
fn without_slurm_a_slurm_job_stops_before_writing_anything() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &[("in/a.txt", "ok")]);
    let wasm = function("misbehave");
    let args = ["run", "--input", "in", "--output", "out", "--function", wasm.to_str().unwrap(), "--executor", "slurm"];
    // No sbatch on the PATH.
    let ran: Ran = fanout().current_dir(dir.path()).args(args).env("PATH", "/nonexistent").output().unwrap().into();
    ran.assert_code(2);
    assert!(ran.stderr.contains("`sbatch` is not on the PATH"), "{}", ran.stderr);
    assert_eq!(ran.stderr.trim().lines().count(), 1, "one line: {}", ran.stderr);
    assert!(!dir.path().join("out").exists(), "nothing written");
    // A controller that does not answer.
    let conf = std::fs::read_to_string(std::env::var("SLURM_CONF").unwrap()).unwrap();
    let dead: String = conf
        .lines()
        .map(|line| if line.starts_with("SlurmctldPort=") { "SlurmctldPort=1".to_string() } else { line.to_string() })
        .map(|line| line + "\n")
        .collect();
    std::fs::write(dir.path().join("dead.conf"), dead).unwrap();
    let ran: Ran = fanout()
        .current_dir(dir.path())
        .args(args)
        .env("SLURM_CONF", dir.path().join("dead.conf"))
        .output()
        .unwrap()
        .into();
    ran.assert_code(2);
    assert!(ran.stderr.contains("the Slurm controller does not answer"), "{}", ran.stderr);
    assert_eq!(ran.stderr.trim().lines().count(), 1, "one line: {}", ran.stderr);
    assert!(!dir.path().join("out").exists(), "nothing written");
}

#[test]
#[cfg_attr(not(fanout_slurm_cluster), ignore = "needs the Slurm test cluster and S3: run scripts/test")]
fn a_coordinator_killed_while_its_array_runs_resumes_by_following_that_array() {
    let mut job = NapJob::start("slurm-kill", 2000, &["--name", "killed"]);
    wait_running(&job.array);
    job.child.kill().unwrap();
    job.child.wait().unwrap();

    let ran = job.resume(&[]);
    ran.assert_code(0);
    let (prefix, array) = (&job.prefix, &job.array);
    assert!(ran.stderr.contains(&format!("following array {array}")), "{}", ran.stderr);
    let (rows, manifest, back) = s3_report(&format!("{prefix}out/"));
    let summary = summary(&manifest);
    assert_eq!(summary["shards"]["ok"], 6, "{summary}");
    // Nothing ran twice: no further array, one attempt a shard, one commit record a shard.
    assert_eq!(summary["executor"]["arrays"].as_array().unwrap().len(), 0, "{summary}");
    assert!(rows.iter().all(|r| r["attempts"] == "1"), "{rows:?}");
    assert_eq!(journal(&manifest).len(), 6);
    let waves = std::fs::read_dir(manifest.join("slurm")).unwrap().count();
    assert_eq!(waves, 1, "one array in all");
    for i in 0..6 {
        assert!(back.path().join(format!("nap-{i:03}.slept")).is_file(), "nap-{i:03} has no output");
    }
}

#[test]
#[cfg_attr(not(fanout_slurm_cluster), ignore = "needs the Slurm test cluster and S3: run scripts/test")]
fn two_workers_on_every_share_at_once_commit_each_shard_once() {
    let prefix = unique_prefix("slurm-twice");
    boto3_upload(&repo().join("examples/data/images"), &format!("{prefix}raw/"));
    // What an engine's retry does at worst: every array task starts two workers on its share.
    let dir = tempfile::tempdir().unwrap();
    let twice = dir.path().join("fanout-twice");
    std::fs::write(&twice, format!("#!/bin/sh\n'{0}' \"$@\" & '{0}' \"$@\"\nwait\n", env!("CARGO_BIN_EXE_fanout")))
        .unwrap();
    std::fs::set_permissions(&twice, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let input = s3_url(&format!("{prefix}raw/"));
    let run = |dest: &str, more: &[&str]| {
        let mut args = vec!["run", "jobs/thumbnails.toml", "--input", &input, "--output", dest, "-q"];
        args.extend(more);
        run_in(&repo(), &args)
    };
    run(&s3_url(&format!("{prefix}clean/")), &[]).assert_code(0);
    let twice_dest = s3_url(&format!("{prefix}twice/"));
    run(&twice_dest, &["--executor", "slurm", "--concurrency", "2", "--slurm-worker", twice.to_str().unwrap()])
        .assert_code(0);
    let (_, _, clean) = s3_report(&format!("{prefix}clean/"));
    let (rows, job, doubled) = s3_report(&format!("{prefix}twice/"));
    assert_eq!(tree(clean.path()), tree(doubled.path()), "the outputs differ from a clean run");
    assert_eq!(journal(&job).len(), 4, "one commit record a shard");
    assert!(rows.iter().all(|r| r["status"] == "ok" && r["attempts"] == "1"), "{rows:?}");
    // Each share answered at least once and at most once per worker; one answer a shard was
    // taken. (A worker that starts after its twin answered the whole share finds nothing left
    // to do and stores no answer: under load, CI saw 3 of 4.)
    let wave = std::fs::read_dir(job.join("slurm")).unwrap().next().unwrap().unwrap().path();
    // Workers that answered share `share`: answer files `<share>.answer-<worker>-<part>.json`.
    let answered_by_share = |share: &str| {
        let workers: std::collections::BTreeSet<String> = std::fs::read_dir(&wave)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with(&format!("{share}.answer-")))
            .map(|name| name.rsplit_once('-').unwrap().0.to_string())
            .collect();
        workers.len()
    };
    for share in ["0", "1"] {
        assert!((1..=2).contains(&answered_by_share(share)), "share {share}: one or two workers answered");
    }
}

#[test]
#[cfg_attr(not(fanout_slurm_cluster), ignore = "needs the Slurm test cluster and S3: run scripts/test")]
fn ctrl_c_twice_cancels_the_array_and_resume_finishes_the_job() {
    let mut job = NapJob::start("slurm-ctrl-c", 3000, &["--name", "interrupted"]);
    wait_running(&job.array);
    let pid = job.child.id().to_string();
    let signal = || std::process::Command::new("kill").args(["-INT", &pid]).status().unwrap();
    signal();
    // The second Ctrl-C once the first was heard: one sent before fanout listens again
    // would be lost.
    eventually("the first Ctrl-C to be heard", Duration::from_secs(30), Duration::from_millis(20), || {
        std::fs::read_to_string(&job.log).unwrap_or_default().contains("stopping: no new shards")
    });
    signal();
    let status = job.child.wait().unwrap();
    let stderr = std::fs::read_to_string(&job.log).unwrap();
    let (prefix, array) = (&job.prefix, &job.array);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("stopping now"), "{stderr}");
    // The array is cancelled: none of its tasks is pending or running any more.
    eventually(&format!("array {array} to end"), Duration::from_secs(30), Duration::from_millis(200), || {
        slurm("squeue", &["-h", "-r", "-j", array, "-t", "PENDING,RUNNING", "-o", "%i"]).trim().is_empty()
    });
    let ran = job.resume(&["--json"]);
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 6, "{summary}");
    let (_, manifest, back) = s3_report(&format!("{prefix}out/"));
    assert_eq!(journal(&manifest).len(), 6, "one commit record a shard");
    for i in 0..6 {
        assert!(back.path().join(format!("nap-{i:03}.slept")).is_file(), "nap-{i:03} has no output");
    }
}

#[test]
#[cfg_attr(not(fanout_slurm_cluster), ignore = "needs the Slurm test cluster and S3: run scripts/test")]
fn a_worker_that_cannot_answer_says_why_in_the_report() {
    // A shared file system (this machine) instead of S3; a worker whose request is damaged.
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path(), &[("in/a.txt", "ok"), ("in/b.txt", "ok")]);
    let damaging = dir.path().join("damaging-worker");
    std::fs::write(
        &damaging,
        format!("#!/bin/sh\n: > \"$2/$SLURM_ARRAY_TASK_ID.json\"\nexec '{}' \"$@\"\n", env!("CARGO_BIN_EXE_fanout")),
    )
    .unwrap();
    std::fs::set_permissions(&damaging, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let wasm = function("misbehave");
    let ran = run_in(
        dir.path(),
        &["run", "--input", "in", "--output", "out", "--function", wasm.to_str().unwrap()]
            .into_iter()
            .chain(["--executor", "slurm", "--slurm-worker", damaging.to_str().unwrap(), "--attempts", "2"])
            .chain(["--backoff", "10ms"])
            .collect::<Vec<_>>(),
    );
    ran.assert_code(1);
    assert!(ran.stderr.contains("every Slurm node must see it"), "the local paths are warned of: {}", ran.stderr);
    let rows = report(
        &dir.path()
            .join("out/_fanout")
            .read_dir()
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| !p.ends_with("functions"))
            .unwrap(),
    );
    assert_eq!(rows.len(), 2);
    for row in &rows {
        assert_eq!(row["status"], "failed", "{row:?}");
        assert_eq!(row["attempts"], "2", "{row:?}");
        assert!(row["error"].contains("without answering") && row["error"].contains("not a fanout request"), "{row:?}");
    }
}
