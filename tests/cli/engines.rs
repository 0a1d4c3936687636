//! The cloud batch engines through local stand-ins for their control planes
//! (`tests/fixtures/engines/standin.py`): each checks the requests a real one would refuse
//! (paths, bodies, bearer tokens from IAM's exchange or the metadata server) and "runs" an
//! array by starting `fanout worker` processes with that engine's variables, against a real
//! store (Garage, fake-gcs-server). The outputs must be the local executor's, byte for byte,
//! with one commit per shard; a task killed mid-share costs a retry of its attempts only.

use crate::common::*;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A stand-in control plane, stopped (with the workers it started) when dropped.
struct StandIn {
    child: Child,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl StandIn {
    fn start(engine: &str, env: &[(&str, &str)], kill_index_once: Option<usize>) -> StandIn {
        let dir = tempfile::tempdir().unwrap();
        let (log, port_file) = (dir.path().join("requests.jsonl"), dir.path().join("port"));
        let fanout_bin = fanout().get_program().to_owned();
        let mut command = Command::new("python3");
        command.arg(repo().join("tests/fixtures/engines/standin.py")).arg(engine);
        command.arg("--fanout").arg(&fanout_bin).arg("--log").arg(&log).arg("--port-file").arg(&port_file);
        if let Some(index) = kill_index_once {
            command.args(["--kill-index-once", &index.to_string()]);
        }
        command.envs(env.iter().copied()).stdin(Stdio::null());
        let child = command.spawn().expect("python3");
        let mut port = 0;
        eventually("the stand-in's port", Duration::from_secs(20), Duration::from_millis(50), || {
            port = std::fs::read_to_string(&port_file).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(0);
            port != 0
        });
        StandIn { child, port, log, _dir: dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// What the workers it started wrote on stderr, by file (for a failure's message).
    fn worker_errors(&self) -> String {
        let dir = self.log.parent().unwrap();
        let mut found = String::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if path.extension().is_some_and(|e| e == "err") && !text.trim().is_empty() {
                found.push_str(&format!("{}: {}\n", path.file_name().unwrap().to_string_lossy(), text.trim()));
            }
        }
        found
    }

    /// Every request it was sent, in order.
    fn requests(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        text.lines().map(|line| serde_json::from_str(line).unwrap()).collect()
    }
}

impl Drop for StandIn {
    fn drop(&mut self) {
        let _ = Command::new("kill").arg(self.child.id().to_string()).status();
        let _ = self.child.wait();
    }
}

fn outcomes(rows: &[BTreeMap<String, String>]) -> Vec<(String, String, String)> {
    rows.iter().map(|r| (r["shard"].clone(), r["status"].clone(), r["outcome"].clone())).collect()
}

#[test]
#[cfg_attr(not(fanout_s3_server), ignore = "needs the S3 test server: run scripts/test")]
fn code_engine_runs_the_thumbnails_as_the_local_executor_does_and_reruns_only_a_killed_index() {
    let s3 = s3();
    let prefix = unique_prefix("code-engine");
    boto3_upload(&repo().join("examples/data/images"), &format!("{prefix}raw/"));
    let url = |path: &str| format!("s3://{}/{prefix}{path}", s3.bucket);
    let secret = [("STANDIN_SECRET", "key-0123"), ("STANDIN_PROJECT", "9d2e-project"), ("STANDIN_JOB", "fanout")];
    let engine = StandIn::start("code-engine", &secret, Some(1));
    let run = |dest: &str, api_key: &str, more: &[&str]| -> Ran {
        let input = url("raw/");
        let mut args = vec!["run", "jobs/thumbnails.toml", "--input", &input, "--output", dest, "--json"];
        args.extend(more);
        let mut command = fanout();
        command.current_dir(repo()).args(&args);
        command.env("CODE_ENGINE_URL", format!("{}/v2", engine.url()));
        command.env("CODE_ENGINE_AUTH_URL", engine.url()).env("IBMCLOUD_API_KEY", api_key);
        command.output().unwrap().into()
    };
    run(&url("local/"), "", &[]).assert_code(0);
    let on_engine =
        ["--executor", "code-engine", "--project", "9d2e-project", "--region", "us-south", "--engine-job", "fanout"];
    let ran = run(&url("ce/"), "key-0123", &[&on_engine[..], &["--concurrency", "3"]].concat());
    ran.assert_code(0);
    let summary: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 4, "{summary}");
    assert_eq!(summary["executor"]["kind"], "code-engine", "{summary}");
    assert!(summary["executor"]["tasks_lost"].as_u64().unwrap() >= 1, "index 1 was killed: {summary}");

    let (local_rows, _, local) = s3_report(&format!("{prefix}local/"));
    let (rows, job, back) = s3_report(&format!("{prefix}ce/"));
    assert_eq!(tree(local.path()), tree(back.path()), "the outputs differ from the local executor's");
    assert_eq!(outcomes(&local_rows), outcomes(&rows));
    assert!(commits_per_shard(&journal(&job)).values().all(|&n| n == 1), "one commit per shard");
    assert!(rows.iter().all(|r| r["worker"].starts_with("code-engine fanout-run-")), "{rows:?}");
    let retried: Vec<&BTreeMap<String, String>> = rows.iter().filter(|r| r["attempts"] != "1").collect();
    assert!(!retried.is_empty() && retried.len() <= 2, "the killed index's shards only: {rows:?}");

    // What Code Engine was asked: a token for the key first, then every call with it; two
    // runs, the second of only the killed index's attempts.
    let requests = engine.requests();
    assert_eq!(requests[0]["path"], "/identity/token", "{requests:?}");
    assert_eq!(requests[0]["form"]["grant_type"], "urn:ibm:params:oauth:grant-type:apikey");
    let api: Vec<&Value> = requests.iter().filter(|r| r["path"].as_str().unwrap_or("").starts_with("/v2/")).collect();
    assert!(api.iter().all(|r| r["auth"].as_str().unwrap().starts_with("Bearer ")), "{api:?}");
    let runs: Vec<&Value> = api.iter().copied().filter(|r| r["method"] == "POST").collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(runs[0]["path"], "/v2/projects/9d2e-project/job_runs");
    assert_eq!(runs[0]["body"]["scale_array_spec"], "0-2", "four shards in three tasks");
    assert_eq!(runs[0]["body"]["run_arguments"][0], "worker");
    assert!(runs[0]["body"]["run_arguments"][1].as_str().unwrap().starts_with(&url("ce/_fanout/")));
    let second = runs[1]["body"]["scale_array_spec"].as_str().unwrap();
    let expected = if retried.len() == 1 { "0-0" } else { "0-1" };
    assert_eq!(second, expected, "a run of the killed index's {} attempts only", retried.len());

    // A key IAM does not know: one line, exit 2, before any shard runs.
    let refused = run(&url("refused/"), "wrong-key", &on_engine);
    refused.assert_refused("refused the API key");
    let other = run(&url("refused/"), "key-0123", &["--executor", "code-engine", "--project", "9d2e-project"]);
    other.assert_refused("executor.region");
}

#[test]
#[cfg_attr(not(fanout_gcs_server), ignore = "needs the GCS test server: run scripts/test")]
fn cloud_run_takes_its_token_from_the_metadata_server_and_writes_gcs_as_the_local_executor_does() {
    let gcs = gcs();
    let prefix = unique_prefix("cloud-run");
    gcs_upload(&repo().join("examples/data/images"), &format!("{prefix}raw/"));
    let url = |path: &str| format!("gs://{}/{prefix}{path}", gcs.bucket);
    let project = [("STANDIN_PROJECT", "acme-batch"), ("STANDIN_REGION", "europe-west1"), ("STANDIN_JOB", "fanout")];
    let engine = StandIn::start("cloud-run", &project, None);
    let run = |dest: &str, more: &[&str]| -> Ran {
        let input = url("raw/");
        let mut args = vec!["run", "jobs/thumbnails.toml", "--input", &input, "--output", dest, "--json"];
        args.extend(more);
        let mut command = fanout();
        command.current_dir(repo()).args(&args).env_remove("GOOGLE_APPLICATION_CREDENTIALS");
        command.env("GCE_METADATA_HOST", format!("127.0.0.1:{}", engine.port));
        command.env("CLOUDSDK_API_ENDPOINT_OVERRIDES_RUN", format!("{}/", engine.url()));
        command.output().unwrap().into()
    };
    let local = tempfile::tempdir().unwrap();
    run(local.path().to_str().unwrap(), &[]).assert_code(0);
    let on_engine =
        ["--executor", "cloud-run", "--project", "acme-batch", "--region", "europe-west1", "--engine-job", "fanout"];
    let ran = run(&url("run/"), &[&on_engine[..], &["--concurrency", "2"]].concat());
    ran.assert_code(0);
    let summary: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 4, "{summary}");
    assert_eq!(summary["executor"]["kind"], "cloud-run", "{summary}");
    assert_eq!(summary["executor"]["array_tasks"], 2, "{summary}");

    let back = tempfile::tempdir().unwrap();
    gcs_download(&format!("{prefix}run/"), back.path());
    assert_eq!(tree(local.path()), tree(back.path()), "the outputs differ from the local executor's");
    let job = job_folder(back.path());
    let rows = report(&job);
    assert!(rows.iter().all(|r| r["status"] == "ok" && r["worker"].starts_with("cloud-run ")), "{rows:?}");
    assert!(commits_per_shard(&journal(&job)).values().all(|&n| n == 1), "one commit per shard");

    let requests = engine.requests();
    let tokens: Vec<&Value> =
        requests.iter().filter(|r| r["path"].as_str().unwrap().starts_with("/computeMetadata")).collect();
    assert!(!tokens.is_empty() && tokens.iter().all(|r| r["flavor"] == "Google"), "{requests:?}");
    let api: Vec<&Value> = requests.iter().filter(|r| r["path"].as_str().unwrap().starts_with("/v2/")).collect();
    assert!(api.iter().all(|r| r["auth"].as_str().unwrap().starts_with("Bearer ya29.")), "{api:?}");
    let runs: Vec<&Value> = api.iter().copied().filter(|r| r["method"] == "POST").collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!(runs[0]["path"], "/v2/projects/acme-batch/locations/europe-west1/jobs/fanout:run");
    assert_eq!(runs[0]["body"]["overrides"]["taskCount"], 2);
    let args = &runs[0]["body"]["overrides"]["containerOverrides"][0]["args"];
    assert_eq!(args[0], "worker");
    assert!(args[1].as_str().unwrap().starts_with(&url("run/_fanout/")), "{args}");
    assert!(serde_json::to_string(&runs[0]["body"]).unwrap().len() < 1024, "the payload stays tiny");

    // A job the project does not have: one line naming it, exit 2.
    let missing = run(
        &url("missing/"),
        &["--executor", "cloud-run", "--project", "acme-batch", "--region", "europe-west1", "--engine-job", "nope"],
    );
    missing.assert_refused("executor.job");
}

#[test]
#[cfg_attr(
    not(all(fanout_s3_server, fanout_azure_server)),
    ignore = "needs the S3 and Azure test servers: run scripts/test"
)]
fn aws_batch_runs_signed_arrays_that_write_azure_as_the_local_executor_does() {
    let azure = azure();
    let prefix = unique_prefix("aws-batch");
    let url = |path: &str| format!("az://{}/{prefix}{path}", azure.container);
    for image in std::fs::read_dir(repo().join("examples/data/images")).unwrap() {
        let image = image.unwrap().path();
        azure_upload(&image, &format!("{prefix}raw/{}", image.file_name().unwrap().to_str().unwrap()));
    }
    let names = [("STANDIN_QUEUE", "fanout-queue"), ("STANDIN_DEFINITION", "fanout-worker:3")];
    let engine = StandIn::start("aws-batch", &names, None);
    let run = |dest: &str, more: &[&str]| -> Ran {
        let input = url("raw/");
        let mut args = vec!["run", "jobs/thumbnails.toml", "--input", &input, "--output", dest, "--json"];
        args.extend(more);
        let mut command = fanout();
        command.current_dir(repo()).args(&args).env("AWS_ENDPOINT_URL_BATCH", engine.url());
        command.output().unwrap().into()
    };
    let local = tempfile::tempdir().unwrap();
    run(local.path().to_str().unwrap(), &[]).assert_code(0);
    let on_engine = ["--executor", "aws-batch", "--job-queue", "fanout-queue", "--engine-job", "fanout-worker:3"];
    let ran = run(&url("batch/"), &[&on_engine[..], &["--concurrency", "4"]].concat());
    ran.assert_code(0);
    let summary: Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 4, "{summary}");
    assert_eq!(summary["executor"]["kind"], "aws-batch", "{summary}");

    let back = tempfile::tempdir().unwrap();
    azure_download(&format!("{prefix}batch/"), back.path());
    assert_eq!(tree(local.path()), tree(back.path()), "the outputs differ from the local executor's");
    let job = job_folder(back.path());
    let rows = report(&job);
    assert!(rows.iter().all(|r| r["status"] == "ok" && r["worker"].starts_with("aws-batch ")), "{rows:?}");
    assert!(commits_per_shard(&journal(&job)).values().all(|&n| n == 1), "one commit per shard");

    // Every request was signed for Batch with the test's key; one array of four children.
    let requests = engine.requests();
    assert!(requests.iter().all(|r| r["signature"] == "ok"), "{requests:?}");
    let submits: Vec<&Value> = requests.iter().filter(|r| r["path"] == "/v1/submitjob").collect();
    assert_eq!(submits[0]["body"]["arrayProperties"]["size"], 4, "one array of four children first");
    // A store that failed a worker for a moment (Azurite under the other tests' load) makes
    // a retry, of that worker's attempts only: a lone job or a smaller array.
    let retried = rows.iter().filter(|r| r["attempts"] != "1").count();
    for later in &submits[1..] {
        let size = later["body"]["arrayProperties"]["size"].as_u64().unwrap_or(1) as usize;
        assert!(size <= retried, "a retry of {retried} attempts: {later}\n{}", engine.worker_errors());
    }
    assert_eq!(submits[0]["body"]["containerOverrides"]["command"][0], "worker");

    // A queue Batch does not have: one line naming it, exit 2.
    let missing =
        run(&url("missing/"), &["--executor", "aws-batch", "--job-queue", "nope", "--engine-job", "fanout-worker:3"]);
    missing.assert_refused("executor.queue");
}

/// The variables an engine gives task `index` of an array of `count` (attempt `retry` + 1),
/// as its documentation lists them.
fn engine_variables(engine: &str, index: usize, count: usize, retry: u32) -> Vec<(String, String)> {
    let pairs: Vec<(&str, String)> = match engine {
        "code-engine" => vec![
            ("CE_JOBRUN", "fanout-jobrun-x7k2p".into()),
            ("CE_JOB", "fanout".into()),
            ("JOB_INDEX", index.to_string()),
            ("JOB_ARRAY_SIZE", count.to_string()),
            ("JOB_INDEX_RETRY_COUNT", retry.to_string()),
        ],
        "cloud-run" => vec![
            ("CLOUD_RUN_JOB", "fanout".into()),
            ("CLOUD_RUN_EXECUTION", "fanout-abcde".into()),
            ("CLOUD_RUN_TASK_INDEX", index.to_string()),
            ("CLOUD_RUN_TASK_COUNT", count.to_string()),
            ("CLOUD_RUN_TASK_ATTEMPT", retry.to_string()),
        ],
        _ => vec![
            ("AWS_BATCH_JOB_ID", format!("5c6d0e1f:{index}")),
            ("AWS_BATCH_JOB_ARRAY_INDEX", index.to_string()),
            ("AWS_BATCH_JOB_ARRAY_SIZE", count.to_string()),
            ("AWS_BATCH_JOB_ATTEMPT", (retry + 1).to_string()),
        ],
    };
    pairs.into_iter().map(|(name, value)| (name.to_string(), value)).collect()
}

/// What each engine's emitted request asks its tasks to run.
fn emitted_args(engine: &str, body: &Value) -> Vec<String> {
    let args = match engine {
        "code-engine" => &body["run_arguments"],
        "cloud-run" => &body["overrides"]["containerOverrides"][0]["args"],
        _ => &body["containerOverrides"]["command"],
    };
    args.as_array().unwrap().iter().map(|arg| arg.as_str().unwrap().to_string()).collect()
}

#[test]
#[cfg_attr(not(fanout_s3_server), ignore = "needs the S3 test server: run scripts/test")]
fn an_emitted_array_run_by_the_users_tools_is_committed_by_follow_as_a_local_run() {
    let s3 = s3();
    let prefix = unique_prefix("emit");
    boto3_upload(&repo().join("examples/data/images"), &format!("{prefix}raw/"));
    let url = |path: &str| format!("s3://{}/{prefix}{path}", s3.bucket);
    let input = url("raw/");
    let run = |args: &[&str]| -> Ran {
        let mut command = fanout();
        command.current_dir(repo()).args(["run", "jobs/thumbnails.toml", "--input", &input]).args(args);
        // The user submits with their own tools: fanout needs none of the engines' credentials.
        for name in ["IBMCLOUD_API_KEY", "CODE_ENGINE_APIKEY", "GOOGLE_APPLICATION_CREDENTIALS"] {
            command.env_remove(name);
        }
        command.env("GCE_METADATA_HOST", "127.0.0.1:9").env("AWS_ENDPOINT_URL_BATCH", "http://127.0.0.1:9");
        command.output().unwrap().into()
    };
    let local = url("local/");
    run(&["--output", &local]).assert_code(0);
    let (local_rows, _, local_back) = s3_report(&format!("{prefix}local/"));

    let engines: [(&str, &[&str]); 3] = [
        ("code-engine", &["--project", "9d2e-project", "--region", "us-south", "--engine-job", "fanout"]),
        ("cloud-run", &["--project", "acme-batch", "--region", "europe-west1", "--engine-job", "fanout"]),
        ("aws-batch", &["--job-queue", "fanout-queue", "--engine-job", "fanout-worker:3", "--region", "eu-west-1"]),
    ];
    for (engine, settings) in engines {
        let dest = url(&format!("{engine}/"));
        let emitted =
            run(&[&["--output", &dest, "--executor", engine, "--concurrency", "3"], settings, &["--emit"]].concat());
        emitted.assert_code(0);
        // stdout: the request's body alone, for curl or the engine's CLI; stderr: how to submit it.
        let body: Value = serde_json::from_str(&emitted.stdout).unwrap_or_else(|e| panic!("{e}: {}", emitted.stdout));
        assert!(emitted.stderr.contains("status") && emitted.stderr.contains("--follow"), "{}", emitted.stderr);
        let json_dest = url(&format!("{engine}-json/"));
        let whole = run(&[
            &["--output", &json_dest, "--executor", engine, "--concurrency", "3"],
            settings,
            &["--emit", "--json"],
        ]
        .concat());
        let whole: Value = serde_json::from_str(&whole.assert_code(0).stdout).unwrap();
        let command = whole["command"].as_str().unwrap();
        let job_id = {
            let args = emitted_args(engine, &body);
            assert_eq!(args[..2], ["worker".to_string(), dest.clone()], "{engine}: {body}");
            assert_eq!(args[2], "--job");
            assert_eq!(args[4..], ["--count".to_string(), "3".to_string()], "{engine}: {body}");
            args[3].clone()
        };
        match engine {
            "code-engine" => {
                assert_eq!(body["job_name"], "fanout");
                assert_eq!(body["scale_array_spec"], "0-2", "{body}");
                assert_eq!(body["scale_retry_limit"], 3, "the engine retries: no coordinator submits again");
                assert!(
                    command.starts_with("ibmcloud ce project select --id 9d2e-project && ibmcloud ce jobrun submit --job fanout --array-indices 0-2"),
                    "{command}"
                );
                assert_eq!(
                    whole["url"],
                    "https://api.us-south.codeengine.cloud.ibm.com/v2/projects/9d2e-project/job_runs"
                );
            }
            "cloud-run" => {
                assert_eq!(body["overrides"]["taskCount"], 3, "{body}");
                assert!(
                    command.starts_with(
                        "gcloud run jobs execute fanout --project acme-batch --region europe-west1 --tasks 3"
                    ),
                    "{command}"
                );
                assert!(command.contains(&format!("--args '^|^worker|{json_dest}|--job|")), "{command}");
                assert_eq!(
                    whole["url"],
                    "https://run.googleapis.com/v2/projects/acme-batch/locations/europe-west1/jobs/fanout:run"
                );
            }
            _ => {
                assert_eq!(body["arrayProperties"]["size"], 3, "{body}");
                assert_eq!(body["retryStrategy"]["attempts"], 4, "{body}");
                assert_eq!(
                    (body["jobQueue"].as_str(), body["jobDefinition"].as_str()),
                    (Some("fanout-queue"), Some("fanout-worker:3"))
                );
                assert_eq!(command, "aws batch submit-job --region eu-west-1 --cli-input-json file://submit-job.json");
            }
        }
        assert!(serde_json::to_string(&body).unwrap().len() < 2048, "the payload stays tiny: {body}");

        // Before any task ran: stored, nothing done, and `status` says who commits.
        let status: Ran = fanout().args(["status", &dest, "--job", &job_id]).output().unwrap().into();
        assert!(status.assert_code(0).stdout.contains("4 pending"), "{}", status.stdout);
        assert!(status.stdout.contains(&format!("the {engine} array's tasks")), "{}", status.stdout);

        // The engine runs the array: a task per index with its variables. Task 2's first
        // container is killed at once (a machine lost); the engine starts it again.
        let args = emitted_args(engine, &body);
        let worker = |index: usize, retry: u32| {
            let mut command = fanout();
            command.args(&args).envs(engine_variables(engine, index, 3, retry)).stdin(Stdio::null());
            command.stdout(Stdio::null()).stderr(Stdio::piped());
            command.spawn().unwrap()
        };
        let mut lost = worker(2, 0);
        std::thread::sleep(Duration::from_millis(50));
        lost.kill().unwrap();
        lost.wait().unwrap();
        let tasks: Vec<Child> = vec![worker(0, 0), worker(1, 0), worker(2, 1)];
        for task in tasks {
            let done = task.wait_with_output().unwrap();
            assert!(done.status.success(), "{engine}: {}", String::from_utf8_lossy(&done.stderr));
        }

        let followed: Ran =
            fanout().args(["status", &dest, "--job", &job_id, "--follow", "--json"]).output().unwrap().into();
        followed.assert_code(0);
        let summary: Value = serde_json::from_str(&followed.stdout).unwrap();
        assert_eq!(summary["shards"]["ok"], 4, "{summary}");
        assert_eq!(summary["executor"]["kind"], engine, "{summary}");
        let (rows, job, back) = s3_report(&format!("{prefix}{engine}/"));
        assert_eq!(
            tree(local_back.path()),
            tree(back.path()),
            "{engine}: the outputs differ from the local executor's"
        );
        assert_eq!(outcomes(&local_rows), outcomes(&rows));
        assert!(commits_per_shard(&journal(&job)).values().all(|&n| n == 1), "one commit per shard");
        // Its committer finishes it: a redrive would run its shards beside the user's array.
        let redrive: Ran = fanout().args(["redrive", &dest, "--job", &job_id]).output().unwrap().into();
        redrive.assert_refused("--follow");
    }

    // Only the engines a user submits to: the others are started by fanout.
    let refused = run(&["--output", &url("no/"), "--emit"]);
    refused.assert_code(2);
    assert!(refused.stderr.contains("--emit") && refused.stderr.contains("local"), "{}", refused.stderr);
}
