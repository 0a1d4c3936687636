//! Kubernetes from the same worker, with Garage as the store. No cluster runs here, so the
//! Job `fanout k8s` prints is held to the Kubernetes API's own schemas (kubernetes-validate,
//! offline, strict), read back as kubectl would (PyYAML), and its pods are played by
//! `fanout worker` processes started by hand with the pod's arguments, environment and
//! `JOB_COMPLETION_INDEX`, while `fanout status --follow` commits what they answer.

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

fn s3_url(prefix: &str) -> String {
    format!("s3://{}/{prefix}", s3().bucket)
}

/// kubernetes-validate, installed by `scripts/test`.
fn validator() -> PathBuf {
    PathBuf::from(std::env::var("FANOUT_TEST_K8S_VALIDATE").expect("FANOUT_TEST_K8S_VALIDATE (run scripts/test)"))
}

/// What `fanout k8s` printed and stored.
struct K8sJob {
    dir: tempfile::TempDir,
    yaml: PathBuf,
    /// The YAML as kubectl reads it.
    job: Value,
    job_id: String,
    dest: String,
}

impl K8sJob {
    /// Runs `fanout k8s` with `args`, which must succeed.
    fn make(args: &[&str]) -> K8sJob {
        let dir = tempfile::tempdir().unwrap();
        let mut all = vec!["k8s"];
        all.extend(args);
        let made = run_in(&repo(), &all);
        made.assert_code(0);
        let yaml = dir.path().join("job.yaml");
        std::fs::write(&yaml, &made.stdout).unwrap();
        let python = validator().with_file_name("python");
        let parsed = std::process::Command::new(python)
            .args(["-c", "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))"])
            .arg(&yaml)
            .output()
            .unwrap();
        assert!(parsed.status.success(), "PyYAML: {}", String::from_utf8_lossy(&parsed.stderr));
        let job: Value = serde_json::from_slice(&parsed.stdout).unwrap();
        let job_id = made.stderr.split("fanout: job ").nth(1).and_then(|rest| rest.split(':').next()).unwrap();
        let dest = args.iter().skip_while(|a| **a != "--output").nth(1).unwrap().to_string();
        K8sJob { dir, yaml, job, job_id: job_id.to_string(), dest }
    }

    fn container(&self) -> &Value {
        &self.job["spec"]["template"]["spec"]["containers"][0]
    }

    fn completions(&self) -> usize {
        self.job["spec"]["completions"].as_u64().unwrap() as usize
    }

    /// Pod `index` of the Job, as Kubernetes would start it: the container's arguments and
    /// environment, `JOB_COMPLETION_INDEX`, and the Secret's keys (this test's S3 settings).
    fn pod(&self, index: usize, name: &str) -> Child {
        let vars = [("JOB_COMPLETION_INDEX", index.to_string()), ("HOSTNAME", format!("{name}-{index}"))];
        self.task(&vars)
    }

    /// The container as another engine would start it, with that engine's variables `vars`.
    fn task(&self, vars: &[(&str, String)]) -> Child {
        let container = self.container();
        let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
        let mut command = fanout();
        command.current_dir(self.dir.path()).args(&args);
        for variable in container["env"].as_array().unwrap() {
            let value = variable["value"].as_str().unwrap().replace("/tmp", &self.dir.path().to_string_lossy());
            command.env(variable["name"].as_str().unwrap(), value);
        }
        command.envs(vars.iter().map(|(k, v)| (k, v))).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
    }

    /// Every pod of the Job once, one after another; each must exit 0.
    fn run_pods(&self) {
        for index in 0..self.completions() {
            let pod = self.pod(index, "thumbs").wait_with_output().unwrap();
            assert!(pod.status.success(), "pod {index}: {}", String::from_utf8_lossy(&pod.stderr));
        }
    }

    /// `fanout status DEST --follow`, in the background.
    fn follow(&self) -> Child {
        fanout()
            .current_dir(self.dir.path())
            .args(["status", &self.dest, "--job", &self.job_id, "--follow", "--json"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Waits for `child` to end (within `limit`); its exit code, stdout and stderr.
fn finish(child: Child, limit: Duration) -> Ran {
    let pid = child.id();
    let began = Instant::now();
    let watchdog = std::thread::spawn(move || {
        while began.elapsed() < limit {
            std::thread::sleep(Duration::from_millis(100));
            if std::fs::metadata(format!("/proc/{pid}")).is_err() {
                return;
            }
        }
        let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
    });
    let ran: Ran = child.wait_with_output().unwrap().into();
    let _ = watchdog.join();
    assert!(began.elapsed() < limit, "did not end within {limit:?}: {}", ran.stderr);
    ran
}

/// kubernetes-validate's verdict on `file` for Kubernetes `version`, strictly (no unknown fields).
fn validate(file: &Path, version: &str) -> Ran {
    std::process::Command::new(validator()).args(["--strict", "-k", version]).arg(file).output().unwrap().into()
}

/// DEST read back with boto3: report.csv's rows, the journal, and the copy.
fn read_back(prefix: &str) -> (Vec<BTreeMap<String, String>>, Vec<Value>, tempfile::TempDir) {
    let (rows, job, back) = s3_report(prefix);
    (rows, journal(&job), back)
}

/// Each shard's commit records: exactly one each is the rule.
#[test]
#[cfg_attr(not(fanout_k8s_validate), ignore = "needs kubernetes-validate and S3: run scripts/test")]
fn the_job_validates_and_its_pods_run_by_hand_give_the_local_executors_outputs() {
    let prefix = unique_prefix("k8s-thumbs");
    boto3_upload(&repo().join("examples/data/images"), &format!("{prefix}raw/"));
    let input = s3_url(&format!("{prefix}raw/"));
    let local_dest = s3_url(&format!("{prefix}local/"));
    run_in(&repo(), &["run", "jobs/thumbnails.toml", "--input", &input, "--output", &local_dest]).assert_code(0);
    let dest = s3_url(&format!("{prefix}k8s/"));
    let image = "registry.example/fanout:test";
    let k8s = K8sJob::make(&[
        "jobs/thumbnails.toml",
        "--input",
        &input,
        "--output",
        &dest,
        "--image",
        image,
        "--secret",
        "fanout-s3",
        "--concurrency",
        "3",
    ]);

    // The Kubernetes API's schemas accept it, strictly; a broken copy they refuse.
    let valid = validate(&k8s.yaml, "1.37.0");
    assert_eq!(valid.code, 0, "{}{}", valid.stdout, valid.stderr);
    let text = std::fs::read_to_string(&k8s.yaml).unwrap();
    let broken = k8s.dir.path().join("broken.yaml");
    std::fs::write(&broken, text.replace("completionMode: \"Indexed\"", "completionMode: 3")).unwrap();
    assert_eq!(validate(&broken, "1.37.0").code, 1, "the validator must be able to fail");

    // An Indexed Job of 3 pods, 3 at once, retried per index, locked down, and its
    // credentials only named.
    let spec = &k8s.job["spec"];
    assert_eq!((k8s.job["apiVersion"].as_str(), k8s.job["kind"].as_str()), (Some("batch/v1"), Some("Job")));
    assert_eq!(spec["completionMode"], "Indexed");
    assert_eq!((spec["completions"].as_u64(), spec["parallelism"].as_u64()), (Some(3), Some(3)));
    assert_eq!(spec["backoffLimitPerIndex"], 3);
    assert_eq!(spec["template"]["spec"]["restartPolicy"], "Never");
    let container = k8s.container();
    assert_eq!(container["image"], image);
    let args = ["worker", dest.as_str(), "--job", k8s.job_id.as_str(), "--count", "3"];
    assert_eq!(container["args"], serde_json::json!(args));
    assert_eq!(container["envFrom"][0]["secretRef"]["name"], "fanout-s3");
    // function.memory (256MiB) for the one guest a 1-CPU pod runs, and the worker's own 256Mi.
    assert_eq!(container["resources"]["requests"]["memory"], "512Mi");
    assert_eq!(container["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    for secret in ["AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"] {
        let value = std::env::var(secret).unwrap();
        assert!(!text.contains(&value), "{secret}'s value is in the Job");
    }

    // Before any pod: the job is there, nothing is done, and status says how to commit.
    let status = run_in(&repo(), &["status", &dest]);
    assert!(status.stdout.contains("0 done, 0 failed, 4 pending"), "{}", status.stdout);
    assert!(status.stdout.contains("--follow"), "{}", status.stdout);

    // The committer starts first and waits; a second one is refused while it runs.
    let follower = k8s.follow();
    let lease = format!("{prefix}k8s/_fanout/{}/k8s/committer.json", k8s.job_id);
    eventually("the committer's lease", Duration::from_secs(30), Duration::from_millis(100), || {
        boto3("print(len(s3.list_objects_v2(Bucket=bucket, Prefix=sys.argv[1]).get('Contents', [])))", &[&lease]).trim()
            == "1"
    });
    let second = run_in(&repo(), &["status", &dest, "--follow"]);
    second.assert_code(2);
    assert!(second.stderr.contains("another committer (pid "), "{}", second.stderr);
    k8s.run_pods();
    let followed = finish(follower, Duration::from_secs(60));
    followed.assert_code(0);
    let summary: Value = serde_json::from_str(&followed.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 4, "{summary}");
    assert_eq!(summary["executor"]["kind"], "kubernetes", "{summary}");

    let (local_rows, _, local) = read_back(&format!("{prefix}local/"));
    let (rows, journal, back) = read_back(&format!("{prefix}k8s/"));
    assert_eq!(tree(local.path()), tree(back.path()), "the outputs differ from the local executor's");
    let outcomes = |rows: &[BTreeMap<String, String>]| {
        rows.iter().map(|r| (r["shard"].clone(), r["status"].clone(), r["outcome"].clone())).collect::<Vec<_>>()
    };
    assert_eq!(outcomes(&local_rows), outcomes(&rows));
    assert!(rows.iter().all(|r| r["worker"].starts_with("pod thumbs-")), "{rows:?}");
    assert!(commits_per_shard(&journal).values().all(|&n| n == 1), "{journal:?}");
    let status = run_in(&repo(), &["status", &dest]);
    assert!(status.stdout.contains("4 done, 0 failed, 0 pending"), "{}", status.stdout);
    // A Job whose completions do not match the job's shares is refused by its pods.
    let wrong = run_in(&repo(), &["worker", &dest, "--job", &k8s.job_id, "--count", "5", "--index", "4"]);
    wrong.assert_code(2);
    assert!(wrong.stderr.contains("the job has 3 shares"), "{}", wrong.stderr);
}

/// Six shards that fail their first attempt, in two shares of three.
fn flaky_job(test: &str, more: &[&str]) -> (K8sJob, String) {
    let prefix = unique_prefix(test);
    let dir = tempfile::tempdir().unwrap();
    write_commands(&dir.path().join("in"), "flaky-", 6, "flaky");
    boto3_upload(&dir.path().join("in"), &format!("{prefix}in/"));
    let (input, dest) = (s3_url(&format!("{prefix}in/")), s3_url(&format!("{prefix}out/")));
    let wasm = function("misbehave");
    let mut args = vec!["--input", &input, "--output", &dest, "--function", wasm.to_str().unwrap()];
    args.extend(["--image", "fanout:test", "--concurrency", "2", "--backoff", "10ms"]);
    args.extend(more);
    (K8sJob::make(&args), prefix)
}

#[test]
#[cfg_attr(not(fanout_k8s_validate), ignore = "needs kubernetes-validate and S3: run scripts/test")]
fn pods_retry_failed_attempts_themselves_and_doubled_or_restarted_pods_commit_once() {
    let (k8s, prefix) = flaky_job("k8s-twice", &[]);
    assert_eq!(k8s.completions(), 2);
    // Share 0 in two pods at once (a node thought lost), share 1 twice in a row (a pod
    // started again after it ended): each runs what no earlier pod answered.
    let (first, second) = (k8s.pod(0, "a"), k8s.pod(0, "b"));
    let third = k8s.pod(1, "c");
    for pod in [first, second, third] {
        let out = pod.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let again = k8s.pod(1, "d").wait_with_output().unwrap();
    assert!(again.status.success(), "{}", String::from_utf8_lossy(&again.stderr));
    let followed = finish(k8s.follow(), Duration::from_secs(60));
    followed.assert_code(0);

    let (rows, journal, back) = read_back(&format!("{prefix}out/"));
    assert_eq!(rows.len(), 6, "{rows:?}");
    for row in &rows {
        // Attempt 1 failed and the pod itself ran attempt 2, which the committer took.
        assert_eq!((row["status"].as_str(), row["attempts"].as_str()), ("ok", "2"), "{row:?}");
        assert!(!row["worker"].starts_with("pod d-"), "the restarted pod ran nothing: {row:?}");
    }
    assert!(commits_per_shard(&journal).values().all(|&n| n == 1), "{journal:?}");
    let outputs = tree(back.path());
    assert_eq!(outputs.len(), 6, "{:?}", outputs.keys());
    assert!(outputs.values().all(|bytes| bytes == b"passed on attempt 2\n"), "{outputs:?}");
}

#[test]
#[cfg_attr(not(fanout_k8s_validate), ignore = "needs kubernetes-validate and S3: run scripts/test")]
fn a_share_whose_pods_all_fail_fails_its_shards_with_what_the_pods_said() {
    // One attempt each: share 0's shards fail in their pod; share 1's pods cannot work at
    // all (its request is damaged), twice, which is all `--backoff-limit-per-index 1` allows.
    let (k8s, prefix) = flaky_job("k8s-fail", &["--attempts", "1", "--backoff-limit-per-index", "1"]);
    let request = format!("{prefix}out/_fanout/{}/k8s/1.json", k8s.job_id);
    boto3("s3.put_object(Bucket=bucket, Key=sys.argv[1], Body=b'{ not json')", &[&request]);
    let follower = k8s.follow();
    let ok = k8s.pod(0, "good").wait_with_output().unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    for name in ["bad", "worse"] {
        let failed = k8s.pod(1, name).wait_with_output().unwrap();
        assert!(!failed.status.success(), "a worker that cannot work exits non-zero");
    }
    let followed = finish(follower, Duration::from_secs(60));
    followed.assert_code(1);
    let (rows, journal, _) = read_back(&format!("{prefix}out/"));
    assert_eq!(rows.len(), 6, "{rows:?}");
    for row in &rows[..3] {
        assert_eq!((row["status"].as_str(), row["attempts"].as_str()), ("failed", "1"), "{row:?}");
    }
    for row in &rows[3..] {
        assert_eq!(row["status"], "failed", "{row:?}");
        assert!(
            row["error"].contains("failed in 2 workers") && row["error"].contains("not a fanout request"),
            "{row:?}"
        );
    }
    assert!(commits_per_shard(&journal).values().all(|&n| n == 1), "{journal:?}");
}

#[test]
#[cfg_attr(not(fanout_k8s_validate), ignore = "needs kubernetes-validate and S3: run scripts/test")]
fn cluster_jobs_with_local_paths_or_no_image_are_refused_with_nothing_written() {
    let prefix = unique_prefix("k8s-refused");
    let dir = tempfile::tempdir().unwrap();
    write_commands(&dir.path().join("in"), "ok-", 2, "ok");
    boto3_upload(&dir.path().join("in"), &format!("{prefix}in/"));
    let (input, dest) = (s3_url(&format!("{prefix}in/")), s3_url(&format!("{prefix}out/")));
    let wasm = function("misbehave");
    let wasm = wasm.to_str().unwrap();
    let refused = |args: &[&str], says: &str| {
        let ran = run_in(dir.path(), args);
        ran.assert_code(2);
        assert_eq!(ran.stderr.lines().count(), 1, "one line: {}", ran.stderr);
        assert!(ran.stderr.contains(says), "{says:?} not in {}", ran.stderr);
        assert!(ran.stdout.is_empty(), "no Job printed: {}", ran.stdout);
    };
    let image = ["--image", "fanout:test"];
    let k8s = |input: &str, output: &str, more: &[&str]| -> Vec<String> {
        let args = ["k8s", "--input", input, "--output", output, "--function", wasm];
        args.iter().chain(more).map(|a| a.to_string()).collect()
    };
    fn as_strs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }
    refused(&as_strs(&k8s("in", &dest, &image)), "--input: ");
    refused(&as_strs(&k8s(&input, "out", &image)), "--output: ");
    refused(&as_strs(&k8s(&input, &dest, &[])), "--image");
    refused(&as_strs(&k8s(&input, &dest, &["--image", "x", "--job-name", "Not_A_Name"])), "--job-name");
    let run = ["run", "--input", &input, "--output", &dest, "--function", wasm, "--executor", "k8s", "--image", "x"];
    refused(&run, "fanout k8s");
    assert!(!dir.path().join("out").exists(), "a local output folder was made");
    let written = boto3(
        "print(s3.list_objects_v2(Bucket=bucket, Prefix=sys.argv[1]).get('KeyCount', 0))",
        &[&format!("{prefix}out/")],
    );
    assert_eq!(written.trim(), "0", "something was written to DEST");

    // --follow commits Kubernetes jobs only.
    run_in(dir.path(), &["run", "--input", &input, "--output", &dest, "--function", wasm]).assert_code(0);
    refused(&["status", &dest, "--follow"], "fanout k8s");
}

#[test]
#[cfg_attr(not(fanout_k8s_validate), ignore = "needs kubernetes-validate and S3: run scripts/test")]
fn a_committer_killed_mid_job_is_replaced_at_once_and_commits_nothing_twice() {
    let (k8s, prefix) = flaky_job("k8s-killed", &[]);
    let mut follower = k8s.follow();
    let first = k8s.pod(0, "early").wait_with_output().unwrap();
    assert!(first.status.success(), "{}", String::from_utf8_lossy(&first.stderr));
    // Share 0's three shards committed (or being committed), then the committer dies
    // without a word, its lease still fresh.
    eventually("share 0 to be committed", Duration::from_secs(60), Duration::from_millis(200), || {
        run_in(&repo(), &["status", &k8s.dest]).stdout.contains("3 done")
    });
    follower.kill().unwrap();
    let _ = follower.wait();
    let late = k8s.pod(1, "late").wait_with_output().unwrap();
    assert!(late.status.success(), "{}", String::from_utf8_lossy(&late.stderr));
    // Its process is gone from this host: the next committer need not wait for the lease.
    let followed = finish(k8s.follow(), Duration::from_secs(60));
    followed.assert_code(0);
    let (rows, journal, _) = read_back(&format!("{prefix}out/"));
    assert!(rows.iter().all(|r| r["status"] == "ok"), "{rows:?}");
    assert_eq!(commits_per_shard(&journal), (0..6).map(|shard| (shard, 1)).collect(), "{journal:?}");
}

#[test]
#[cfg_attr(not(fanout_k8s_validate), ignore = "needs kubernetes-validate and S3: run scripts/test")]
fn a_native_command_jobs_pods_may_make_bubblewraps_namespaces_and_no_other_job_may() {
    let prefix = unique_prefix("k8s-native");
    boto3_upload(&repo().join("examples/data/images"), &format!("{prefix}raw/"));
    let input = s3_url(&format!("{prefix}raw/"));
    let make = |dest: &str, function: &[&str]| {
        let mut args = vec!["--input", &input, "--output", dest, "--image", "registry.example/fanout:tools"];
        args.extend(function);
        K8sJob::make(&args)
    };
    let native = make(&s3_url(&format!("{prefix}native/")), &["--command", "convert {in} -resize 64x64 {out}/{name}"]);
    let valid = validate(&native.yaml, "1.37.0");
    assert_eq!(valid.code, 0, "{}{}", valid.stdout, valid.stderr);
    let pod = &native.job["spec"]["template"]["spec"];
    assert_eq!(pod["hostUsers"], false, "a user namespace of the pod's own: {pod}");
    let security = &native.container()["securityContext"];
    assert_eq!(security["procMount"], "Unmasked");
    assert_eq!(security["seccompProfile"]["type"], "Unconfined");
    assert_eq!(security["appArmorProfile"]["type"], "Unconfined");
    assert_eq!(security["allowPrivilegeEscalation"], false, "still no privileges: {security}");
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    // A WebAssembly function's pods keep the runtime's default profiles.
    let wasm = make(&s3_url(&format!("{prefix}wasm/")), &["--function", "examples/thumbnail"]);
    assert!(wasm.job["spec"]["template"]["spec"].get("hostUsers").is_none());
    assert_eq!(wasm.container()["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    assert!(wasm.container()["securityContext"].get("procMount").is_none());
}

#[test]
#[cfg_attr(not(fanout_k8s_validate), ignore = "needs kubernetes-validate and S3: run scripts/test")]
fn the_same_worker_finds_its_share_as_a_cloud_run_code_engine_aws_batch_or_slurm_task() {
    let prefix = unique_prefix("engines");
    boto3_upload(&repo().join("examples/data/images"), &format!("{prefix}raw/"));
    let input = s3_url(&format!("{prefix}raw/"));
    let local_dest = s3_url(&format!("{prefix}local/"));
    run_in(&repo(), &["run", "jobs/thumbnails.toml", "--input", &input, "--output", &local_dest]).assert_code(0);
    let dest = s3_url(&format!("{prefix}arrays/"));
    let args =
        ["jobs/thumbnails.toml", "--input", &input, "--output", &dest, "--image", "fanout:test", "--concurrency", "4"];
    let job = K8sJob::make(&args);
    assert_eq!(job.completions(), 4);
    let follower = job.follow();
    // Each share started by another engine, told only by that engine's own variables.
    let host = |name: &str| ("HOSTNAME", name.to_string());
    let tasks: [Vec<(&str, String)>; 4] = [
        vec![
            ("CLOUD_RUN_TASK_INDEX", "0".into()),
            ("CLOUD_RUN_TASK_COUNT", "4".into()),
            ("CLOUD_RUN_TASK_ATTEMPT", "0".into()),
            ("CLOUD_RUN_EXECUTION", "thumbs-x1".into()),
            host("localhost"),
        ],
        vec![
            ("CE_JOBRUN", "thumbs-run".into()),
            ("JOB_INDEX", "1".into()),
            ("JOB_ARRAY_SIZE", "4".into()),
            ("JOB_INDEX_RETRY_COUNT", "1".into()),
            host("localhost"),
        ],
        vec![
            ("AWS_BATCH_JOB_ID", "b7:2".into()),
            ("AWS_BATCH_JOB_ARRAY_INDEX", "2".into()),
            ("AWS_BATCH_JOB_ARRAY_SIZE", "4".into()),
            ("AWS_BATCH_JOB_ATTEMPT", "1".into()),
            host("localhost"),
        ],
        vec![
            ("SLURM_ARRAY_TASK_ID", "3".into()),
            ("SLURM_ARRAY_JOB_ID", "55".into()),
            ("SLURMD_NODENAME", "node3".into()),
        ],
    ];
    for vars in &tasks {
        let task = job.task(vars).wait_with_output().unwrap();
        assert!(task.status.success(), "{vars:?}: {}", String::from_utf8_lossy(&task.stderr));
    }
    let followed = finish(follower, Duration::from_secs(60));
    followed.assert_code(0);
    let (_, _, local) = read_back(&format!("{prefix}local/"));
    let (rows, journal, back) = read_back(&format!("{prefix}arrays/"));
    assert_eq!(tree(local.path()), tree(back.path()), "the outputs differ from the local executor's");
    assert!(commits_per_shard(&journal).values().all(|&n| n == 1), "{journal:?}");
    // The report names each task as its engine does, with the attempt where it is a retry.
    let workers: std::collections::BTreeSet<&str> = rows.iter().map(|r| r["worker"].as_str()).collect();
    let expected = [
        "aws-batch b7:2 on localhost",
        "cloud-run thumbs-x1 task 0 on localhost",
        "code-engine thumbs-run index 1 on localhost, attempt 2",
        "slurm 55_3 on node3",
    ];
    assert_eq!(workers, expected.into_iter().collect(), "{rows:?}");
    // An execution the engine was asked to make of another size is refused by its tasks.
    let mut wrong = tasks[0].clone();
    wrong[1] = ("CLOUD_RUN_TASK_COUNT", "5".into());
    for args in [&["worker", &dest, "--job", &job.job_id][..], &["worker", &dest, "--job", &job.job_id, "--count", "4"]]
    {
        let refused: Ran = fanout().args(args).envs(wrong.iter().map(|(k, v)| (k, v))).output().unwrap().into();
        refused.assert_code(2);
        assert!(refused.stderr.contains("the job has 4 shares"), "{args:?}: {}", refused.stderr);
    }
}
