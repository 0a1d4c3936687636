//! Kafka topics as a source, against a real Kafka-compatible broker (tansu, started by
//! `scripts/test-kafka`), producing and checking with a client that is not fanout's
//! (confluent-kafka, `tests/fixtures/kafka/kafka_tool.py`): every record's output exactly
//! once (read back from the outputs), group offsets after the manifest, a watch's latency and
//! idle pool, SIGKILLs and a broker restart mid-stream, hostile records, and bad input.
#![cfg_attr(not(fanout_kafka_broker), allow(dead_code, unused_imports))]

use crate::common::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// A broker: its address, and the Python that has the independent client.
struct Broker {
    address: String,
    python: String,
}

fn broker() -> Broker {
    match (std::env::var("FANOUT_TEST_KAFKA"), std::env::var("FANOUT_TEST_KAFKA_PYTHON")) {
        (Ok(address), Ok(python)) => Broker { address, python },
        _ => panic!("no Kafka test broker: FANOUT_TEST_KAFKA is unset (run the tests with scripts/test)"),
    }
}

impl Broker {
    fn tool(&self, args: &[&str]) -> String {
        let output = Command::new(&self.python)
            .arg(repo().join("tests/fixtures/kafka/kafka_tool.py"))
            .arg(&self.address)
            .args(args)
            .output()
            .expect("run kafka_tool.py");
        assert!(output.status.success(), "kafka_tool.py {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// A new topic with `partitions` partitions, named for the test.
    fn topic(&self, test: &str, partitions: u32) -> String {
        let topic = unique_prefix(test).trim_end_matches('/').replace(['/', '_'], "-");
        self.tool(&["create", &topic, &partitions.to_string()]);
        topic
    }

    fn url(&self, topic: &str) -> String {
        format!("kafka://{}/{topic}", self.address)
    }

    /// The group's committed offset and the high watermark of every partition.
    fn offsets(&self, topic: &str, group: &str) -> (BTreeMap<String, i64>, BTreeMap<String, i64>) {
        let answer: serde_json::Value = serde_json::from_str(&self.tool(&["offsets", topic, group])).unwrap();
        let map = |v: &serde_json::Value| -> BTreeMap<String, i64> {
            v.as_object().unwrap().iter().map(|(k, v)| (k.clone(), v.as_i64().unwrap())).collect()
        };
        (map(&answer["committed"]), map(&answer["high"]))
    }
}

/// Every `"id"` in the outputs under `dest` (part files, one JSON line per record), counted.
fn ids_in_outputs(dest: &Path) -> BTreeMap<i64, u32> {
    let mut ids = BTreeMap::new();
    for entry in std::fs::read_dir(dest).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("part-p") {
            continue;
        }
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            *ids.entry(record["id"].as_i64().expect("an id in every output line")).or_insert(0) += 1;
        }
    }
    ids
}

fn assert_each_once(ids: &BTreeMap<i64, u32>, expected: std::ops::Range<i64>) {
    let missing: Vec<i64> = expected.clone().filter(|id| !ids.contains_key(id)).take(10).collect();
    let doubled: Vec<(&i64, &u32)> = ids.iter().filter(|(_, &n)| n != 1).take(10).collect();
    let stray: Vec<&i64> = ids.keys().filter(|id| !expected.contains(id)).take(10).collect();
    assert!(missing.is_empty(), "records with no output (first 10): {missing:?}");
    assert!(doubled.is_empty(), "records output more than once (first 10): {doubled:?}");
    assert!(stray.is_empty(), "outputs of records never produced: {stray:?}");
}

fn enrich() -> String {
    function("enrich").to_str().unwrap().to_string()
}

/// `fanout run` of examples/enrich over `url` into `dest` (in `cwd`), as job `name`.
fn run_enrich(cwd: &Path, url: &str, dest: &str, name: &str, flags: &[&str]) -> Ran {
    let wasm = enrich();
    let mut args = vec!["run", "--input", url, "--function", &wasm, "--output", dest, "--name", name];
    args.extend_from_slice(flags);
    run_in(cwd, &args)
}

#[test]
#[cfg_attr(not(fanout_kafka_broker), ignore = "needs the Kafka test broker (scripts/test starts one)")]
fn a_batch_run_outputs_every_record_once_and_moves_the_group_to_the_end() {
    let kafka = broker();
    let topic = kafka.topic("batch", 4);
    kafka.tool(&["produce", &topic, "0", "100000"]);
    let work = tempfile::tempdir().unwrap();
    let url = kafka.url(&topic);
    let started = Instant::now();
    let ran = run_enrich(work.path(), &url, "out", "batch", &["--shard", "rows=7000"]);
    ran.assert_code(0);
    eprintln!("kafka batch: 100000 records in {:.2}s", started.elapsed().as_secs_f64());
    let dest = work.path().join("out");
    assert_each_once(&ids_in_outputs(&dest), 0..100_000);
    // 25,000 records a partition in shards of 7,000: 4 a partition, named by their ranges.
    let mut parts: Vec<String> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with("part-"))
        .collect();
    parts.sort();
    assert_eq!(parts.len(), 16, "{parts:?}");
    assert_eq!(parts[0], "part-p000-000000000000-000000006999");
    assert_eq!(parts[3], "part-p000-000000021000-000000024999");
    let job = job_dir(&dest);
    let rows = report(&job);
    assert_eq!(rows.len(), 16);
    assert!(rows.iter().all(|row| row["status"] == "ok"), "{rows:?}");
    // The group's offsets are at the end of every partition once fanout has exited.
    let (committed, high) = kafka.offsets(&topic, "batch");
    assert_eq!(committed, high);
    assert!(high.values().all(|&end| end == 25_000), "{high:?}");

    // Nothing new: a scheduled run finds nothing to do and writes no job.
    let again = run_enrich(work.path(), &url, "again", "batch", &[]);
    again.assert_code(0);
    assert!(again.stderr.contains("nothing to do"), "{}", again.stderr);
    assert!(!work.path().join("again").exists());
    // New records: the next run of the group reads only those.
    kafka.tool(&["produce", &topic, "100000", "1000"]);
    run_enrich(work.path(), &url, "next", "batch", &[]).assert_code(0);
    assert_each_once(&ids_in_outputs(&work.path().join("next")), 100_000..101_000);
    let (committed, high) = kafka.offsets(&topic, "batch");
    assert_eq!(committed, high);
}

#[test]
#[cfg_attr(not(fanout_kafka_broker), ignore = "needs the Kafka test broker (scripts/test starts one)")]
fn a_batch_run_killed_mid_job_resumes_to_every_record_once() {
    let kafka = broker();
    let topic = kafka.topic("resume", 2);
    kafka.tool(&["produce", &topic, "0", "40000"]);
    let work = tempfile::tempdir().unwrap();
    let (url, wasm) = (kafka.url(&topic), enrich());
    let args = ["run", "--input", &url, "--function", &wasm, "--output", "out", "--name", "resume"];
    let mut child = fanout()
        .current_dir(work.path())
        .args(args)
        .args(["--shard", "rows=250", "--max-workers", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let dest = work.path().join("out");
    let parts = |dest: &Path| {
        std::fs::read_dir(dest).map_or(0, |dir| {
            dir.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("part-")).count()
        })
    };
    wait_for("a few shards", Duration::from_secs(60), || parts(&dest) >= 10);
    child.kill().unwrap();
    child.wait().unwrap();
    let at_kill = parts(&dest);
    assert!(at_kill < 160, "the job ended before it was killed");
    let ran = run_in(work.path(), &[&args[..], &["--shard", "rows=250", "--resume", "--json"]].concat());
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert!(summary["shards"]["skipped"].as_u64().unwrap() > 0, "the resume redid committed shards: {summary}");
    assert_eq!(summary["shards"]["ok"].as_u64().unwrap(), 160);
    assert_each_once(&ids_in_outputs(&dest), 0..40_000);
    assert_eq!(parts(&dest), 160, "one output a range, whichever run wrote it");
    let (committed, high) = kafka.offsets(&topic, "resume");
    assert_eq!(committed, high);
}

#[test]
#[cfg_attr(
    not(all(fanout_kafka_broker, fanout_s3_server)),
    ignore = "needs the Kafka test broker and the S3 test server (scripts/test starts both)"
)]
fn a_batch_run_into_s3_from_earliest_with_binary_records_length_prefixed() {
    let kafka = broker();
    let topic = kafka.topic("binary", 1);
    kafka.tool(&["produce-binary", &topic, "500"]);
    let prefix = unique_prefix("kafka-binary");
    let dest = format!("s3://{}/{prefix}", s3().bucket);
    let work = tempfile::tempdir().unwrap();
    let job = work.path().join("binary.toml");
    std::fs::write(
        &job,
        format!(
            "[input]\nsource = \"{}\"\nshard = {{ bytes = 2000 }}\n[input.kafka]\nstart = \"earliest\"\nformat = \"length-prefixed\"\n\
             [function]\nwasm = \"{}\"\nargs = [\"--length-prefixed\"]\n[output]\ndest = \"{dest}\"\n",
            kafka.url(&topic),
            enrich()
        ),
    )
    .unwrap();
    run_in(work.path(), &["run", job.to_str().unwrap()]).assert_code(0);
    let back = tempfile::tempdir().unwrap();
    boto3_download(&prefix, back.path());
    let mut parts: Vec<PathBuf> = std::fs::read_dir(back.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("part-p000-"))
        .collect();
    parts.sort();
    assert!(parts.len() > 1, "bytes = 2000 cuts 500 records into several shards");
    // Record i is 3 * (i % 7 + 1) bytes holding newlines and NULs: each output line gives
    // the length the function read, so every frame arrived whole and in order.
    let mut lengths = Vec::new();
    for part in &parts {
        for line in std::fs::read_to_string(part).unwrap().lines() {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            lengths.push(record["bytes"].as_u64().unwrap());
        }
    }
    let expected: Vec<u64> = (0..500).map(|i| 3 * (i % 7 + 1)).collect();
    assert_eq!(lengths, expected);
}

/// A `fanout watch` of a topic, its output in a log file.
struct Watcher {
    child: Child,
}

impl Watcher {
    fn start(url: &str, dest: &Path, name: &str, log: &Path, extra: &[&str]) -> Watcher {
        let log = std::fs::File::create(log).unwrap();
        let child = fanout()
            .current_dir(repo())
            .args(["watch", "--input", url, "--output", dest.to_str().unwrap(), "--name", name])
            .args(["--function", &enrich(), "--idle", "300ms", "--max-wait", "1s", "--shard", "rows=400"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Watcher { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.kill();
    }
}

fn wait_for(what: &str, limit: Duration, done: impl FnMut() -> bool) {
    eventually(what, limit, Duration::from_millis(20), done);
}

/// Committed shards' output keys of every job under `dest`, by (job, shard).
fn committed_outputs(dest: &Path) -> BTreeMap<(String, u64), Vec<String>> {
    let mut outputs = BTreeMap::new();
    let Ok(jobs) = std::fs::read_dir(dest.join("_fanout")) else { return outputs };
    for job in jobs {
        let job = job.unwrap().path();
        if !job.join("shards").exists() {
            continue;
        }
        let name = job.file_name().unwrap().to_string_lossy().into_owned();
        for record in journal(&job) {
            let keys = record["outputs"].as_array().unwrap().iter().map(|k| k.as_str().unwrap().to_string()).collect();
            outputs.insert((name.clone(), record["shard"].as_u64().unwrap()), keys);
        }
    }
    outputs
}

#[test]
#[cfg_attr(not(fanout_kafka_broker), ignore = "needs the Kafka test broker (scripts/test starts one)")]
fn a_watch_commits_bursts_within_twice_max_wait_and_idles_with_no_workers() {
    let kafka = broker();
    let topic = kafka.topic("watch", 2);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("out");
    let log = work.path().join("watch.log");
    let mut watcher = Watcher::start(&kafka.url(&topic), &dest, "stream", &log, &[]);
    wait_for("the watch to start", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("watching kafka://"))
    });
    // Five bursts of 150 records (under a shard's 400: only max_wait closes them), 4 s apart;
    // meanwhile every new commit record's output is read and its records' commit time noted.
    let producer = Command::new(&kafka.python)
        .arg(repo().join("tests/fixtures/kafka/kafka_tool.py"))
        .args([&kafka.address, "bursts", &topic, "0", "5", "150", "4"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut seen_at: BTreeMap<i64, f64> = BTreeMap::new();
    let mut known = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(60);
    while seen_at.len() < 750 && Instant::now() < until {
        for (key, outputs) in committed_outputs(&dest) {
            if known.insert(key) {
                let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs_f64();
                for output in outputs {
                    for line in std::fs::read_to_string(dest.join(&output)).unwrap().lines() {
                        let record: serde_json::Value = serde_json::from_str(line).unwrap();
                        seen_at.insert(record["id"].as_i64().unwrap(), now);
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let produced = producer.wait_with_output().unwrap();
    let times: BTreeMap<String, f64> = serde_json::from_slice(&produced.stdout).unwrap();
    assert_eq!(seen_at.len(), 750, "every record committed");
    let mut latencies: Vec<f64> = times.iter().map(|(id, t)| seen_at[&id.parse::<i64>().unwrap()] - t).collect();
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let p50 = latencies[latencies.len() / 2];
    eprintln!("kafka watch latency (max_wait 1s): p50 {p50:.3}s, max {:.3}s", latencies.last().unwrap());
    assert!(p50 < 2.0, "p50 latency {p50:.3}s is not under 2 x max_wait");
    assert_each_once(&ids_in_outputs(&dest), 0..750);
    // Between bursts the pool went back to zero workers: the progress lines say so after
    // each of the first four bursts was committed (and, soon, after the fifth).
    let idle_after = || -> std::collections::BTreeSet<String> {
        let text = std::fs::read_to_string(&log).unwrap();
        text.lines()
            .filter(|line| line.contains("(watching) shards done") && line.contains(" 0 workers"))
            .filter_map(|line| line.split_whitespace().nth(1))
            .filter(|done| !done.starts_with("0/"))
            .map(str::to_string)
            .collect()
    };
    wait_for("zero workers after the last burst", Duration::from_secs(30), || idle_after().len() >= 5);
    watcher.kill();
    let idle = idle_after();
    assert!(idle.len() >= 4, "zero workers after each burst: {idle:?}\n{}", std::fs::read_to_string(&log).unwrap());
    let (committed, high) = kafka.offsets(&topic, "stream");
    assert_eq!(committed, high, "the group follows the commits");
}

/// Whether every shard the watch under `dest` stored in its plan (before running it) has
/// an ok commit record: nothing is left to run until another record arrives.
fn every_planned_shard_committed(dest: &Path) -> bool {
    let job = job_dir(dest);
    let mut planned = std::collections::BTreeSet::new();
    for file in std::fs::read_dir(job.join("plan")).unwrap() {
        // A plan file being written may end in half a line: not settled yet.
        for line in std::fs::read_to_string(file.unwrap().path()).unwrap_or_default().lines() {
            let Ok(shard) = serde_json::from_str::<serde_json::Value>(line) else { return false };
            planned.insert(shard["id"].as_u64().unwrap());
        }
    }
    let committed = journal(&job).into_iter().filter(|r| r["status"] == "ok").map(|r| r["shard"].as_u64().unwrap());
    planned.is_subset(&committed.collect())
}

/// A broker started for one test (`scripts/test-kafka start`), stopped when dropped.
struct OwnBroker {
    env: BTreeMap<String, String>,
}

impl OwnBroker {
    fn start() -> OwnBroker {
        let started = Command::new(repo().join("scripts/test-kafka")).arg("start").output().unwrap();
        assert!(started.status.success(), "{}", String::from_utf8_lossy(&started.stderr));
        let env = String::from_utf8_lossy(&started.stdout)
            .lines()
            .filter_map(|line| line.strip_prefix("export ")?.split_once('='))
            .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
            .collect();
        OwnBroker { env }
    }

    fn broker(&self) -> Broker {
        Broker { address: self.env["FANOUT_TEST_KAFKA"].clone(), python: self.env["FANOUT_TEST_KAFKA_PYTHON"].clone() }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = Command::new(repo().join("scripts/test-kafka")).arg("stop").envs(&self.env).status();
    }
}

/// Produces `count` records from `first` in the background, a few hundred at a time.
fn produce_slowly(kafka: &Broker, topic: &str, first: i64, count: i64) -> Child {
    let bursts = count / 200;
    Command::new(&kafka.python)
        .arg(repo().join("tests/fixtures/kafka/kafka_tool.py"))
        .args([&kafka.address, "bursts", topic, &first.to_string(), &bursts.to_string(), "200", "0.15"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
#[cfg_attr(not(fanout_kafka_broker), ignore = "needs the Kafka test broker (scripts/test starts one)")]
fn sigkills_of_a_watch_and_a_broker_restart_lose_and_double_nothing() {
    // A broker of its own: the restart must not disturb the other tests' broker.
    let own = OwnBroker::start();
    let (env, kafka) = (&own.env, own.broker());
    let topic = kafka.topic("kills", 3);
    let work = tempfile::tempdir().unwrap();
    let dest = work.path().join("out");
    let url = kafka.url(&topic);
    let mut produced = 0;
    // Five trials: records arrive while the watch runs, and it is killed at a moment drawn
    // from the clock (somewhere in 0.3-2.7 s), then started again by the next trial.
    for trial in 0..5 {
        let mut producer = produce_slowly(&kafka, &topic, produced, 2000);
        produced += 2000;
        let log = work.path().join(format!("trial-{trial}.log"));
        let mut watcher = Watcher::start(&url, &dest, "kills", &log, &[]);
        let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().subsec_nanos() as u64;
        std::thread::sleep(Duration::from_millis(300 + nanos % 2400));
        watcher.child.kill().unwrap();
        watcher.child.wait().unwrap();
        if trial == 2 {
            // The broker goes away mid-stream and comes back with its data.
            let restarted = Command::new(repo().join("scripts/test-kafka")).arg("restart").envs(env).output().unwrap();
            assert!(restarted.status.success(), "{}", String::from_utf8_lossy(&restarted.stderr));
        }
        assert!(producer.wait().unwrap().success(), "the producer of trial {trial}");
    }
    // A watch that keeps running through a broker restart recovers by itself.
    let log = work.path().join("last.log");
    let mut watcher = Watcher::start(&url, &dest, "kills", &log, &[]);
    wait_for("the watch to follow the topic", Duration::from_secs(30), || {
        std::fs::read_to_string(&log).is_ok_and(|text| text.contains("watching kafka://"))
    });
    let restarted = Command::new(repo().join("scripts/test-kafka")).arg("restart").envs(env).output().unwrap();
    assert!(restarted.status.success(), "{}", String::from_utf8_lossy(&restarted.stderr));
    let mut producer = produce_slowly(&kafka, &topic, produced, 1000);
    produced += 1000;
    assert!(producer.wait().unwrap().success());
    // What the topic holds, read by the independent client: a producer that met the broker's
    // restart may have lost records (or, retrying, written one twice); fanout owes an output
    // for each record the topic holds, once.
    let in_topic: BTreeMap<String, i64> = serde_json::from_str(&kafka.tool(&["ids", &topic])).unwrap();
    let mut expected: BTreeMap<i64, u32> = BTreeMap::new();
    for id in in_topic.values() {
        *expected.entry(*id).or_insert(0) += 1;
    }
    if expected.len() as i64 != produced || in_topic.len() != expected.len() {
        eprintln!("note: the topic holds {} records, {} ids, of {produced} produced", in_topic.len(), expected.len());
    }
    let until = Instant::now() + Duration::from_secs(90);
    while ids_in_outputs(&dest) != expected {
        if Instant::now() > until {
            let (ids, text) = (ids_in_outputs(&dest), std::fs::read_to_string(&log).unwrap_or_default());
            let missing: Vec<&i64> = expected.keys().filter(|id| !ids.contains_key(id)).take(20).collect();
            let wrong: Vec<(&i64, &u32)> = ids.iter().filter(|(id, n)| expected.get(id) != Some(n)).take(20).collect();
            panic!("outputs differ from the topic: missing {missing:?}, counts differ {wrong:?}\n{text}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // Nothing more is to come once every shard the watch planned is committed.
    wait_for("every planned shard committed", Duration::from_secs(60), || every_planned_shard_committed(&dest));
    watcher.kill();
    assert_eq!(ids_in_outputs(&dest), expected, "each record of the topic output exactly once");
    // tansu may drop what it acknowledged just before a restart (up to 1,600 of 11,000 here):
    // the check above is against what it kept, which must still be most of the stream.
    assert!(expected.len() as i64 > produced / 2, "the broker kept only {} records", expected.len());
    // One watch job throughout, its journal holding each shard once.
    let job = job_dir(&dest);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("continuing watch"), "{text}");
    let mut ranges = std::collections::BTreeSet::new();
    for record in journal(&job).iter().filter(|r| r["status"] == "ok") {
        for output in record["outputs"].as_array().unwrap() {
            ranges.insert(output.as_str().unwrap().to_string());
        }
    }
    let parts = std::fs::read_dir(&dest)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("part-p"));
    assert_eq!(parts.count(), ranges.len(), "every output in DEST is a committed shard's");
}

#[test]
#[cfg_attr(not(fanout_kafka_broker), ignore = "needs the Kafka test broker (scripts/test starts one)")]
fn hostile_records_fail_their_ranges_only_hold_the_group_back_and_redrive_finishes() {
    let kafka = broker();
    let topic = kafka.topic("hostile", 1);
    // Ten shards of 10 records on partition 0; five of them hold a record that misbehaves.
    let mut records: Vec<String> = (0..100).map(|i| format!("{{\"id\": {i}}}")).collect();
    records[15] = r#"{"id": 15, "do": "trap"}"#.into();
    records[25] = r#"{"id": 25, "do": "loop"}"#.into();
    records[35] = r#"{"id": 35, "do": "alloc"}"#.into();
    records[45] = r#"{"id": 45, "do": "flaky"}"#.into();
    records[55] = r#"{"id": 55, "do": "passwd"}"#.into();
    records[65] = "{\"id\": 65, \"text\": \"two\nlines\"}".into();
    let mut args = vec!["produce-json", &topic, "0"];
    args.extend(records.iter().map(String::as_str));
    kafka.tool(&args);
    let work = tempfile::tempdir().unwrap();
    let url = kafka.url(&topic);
    let limits = ["--timeout", "2s", "--memory", "64MiB", "--attempts", "1", "--backoff", "10ms"];
    let ran = run_enrich(work.path(), &url, "out", "hostile", &[&["--shard", "rows=10"][..], &limits].concat());
    ran.assert_code(1);
    let dest = work.path().join("out");
    let job = job_dir(&dest);
    let rows = report(&job);
    // One partition in shards of 10: shard N holds offsets 10N..10N+9.
    let status_of = |first: u32| {
        let row = rows.iter().find(|row| row["shard"] == (first / 10).to_string()).expect("a row per shard");
        (row["status"].clone(), row["outcome"].clone(), row["error"].clone())
    };
    assert_eq!(status_of(10).1, "trap");
    assert_eq!(status_of(20).1, "timeout");
    assert!(["oom", "trap"].contains(&status_of(30).1.as_str()), "{:?}", status_of(30));
    assert_eq!(status_of(40).0, "failed", "flaky fails its only attempt");
    assert_eq!(status_of(50).0, "ok", "reading /etc/passwd fails quietly in the sandbox");
    let (status, _, error) = status_of(60);
    assert_eq!(status, "failed");
    assert!(error.contains("partition 0 offset 65") && error.contains("length-prefixed"), "{error}");
    // The other shards' outputs are whole; no output leaked the host's passwd.
    let ids = ids_in_outputs(&dest);
    for ok in [0, 5, 7, 8, 9] {
        assert!((ok * 10..ok * 10 + 10).all(|id| ids.get(&id) == Some(&1)), "shard {ok}'s records");
    }
    assert!(!std::fs::read_to_string(dest.join("part-p000-000000000050-000000000059")).unwrap().contains("leak"));
    // The group's offset stops before the first failed range.
    let (committed, _) = kafka.offsets(&topic, "hostile");
    assert_eq!(committed["0"], 10);
    // Redrive: the flaky range passes on its next attempt; the rest fail again.
    let redrive = run_in(work.path(), &["redrive", "out"]);
    redrive.assert_code(1);
    let rows = report(&job);
    let flaky = rows.iter().find(|row| row["shard"] == "4").unwrap();
    assert_eq!(flaky["status"], "ok", "{flaky:?}");
    assert!((40..50).all(|id| ids_in_outputs(&dest).get(&id) == Some(&1)));
    let (committed, _) = kafka.offsets(&topic, "hostile");
    assert_eq!(committed["0"], 10, "still held by the trap at offset 15");
}

#[test]
#[cfg_attr(not(fanout_kafka_broker), ignore = "needs the Kafka test broker (scripts/test starts one)")]
fn bad_kafka_input_is_one_line_exit_2_and_writes_nothing() {
    let kafka = broker();
    let topic = kafka.topic("bad", 1);
    let work = tempfile::tempdir().unwrap();
    let wasm = enrich();
    let url = kafka.url(&topic);
    let missing = format!("kafka://{}/no-such-topic-{}", kafka.address, std::process::id());
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--input", "kafka://127.0.0.1:1/events"], "no broker answered"),
        (vec!["--input", &missing], "does not exist"),
        (vec!["--input", "kafka://127.0.0.1/events"], ":PORT"),
        (vec!["--input", &url, "--shard", "objects=2"], "rows = N or bytes = SIZE"),
        (vec!["--input", &url, "--include", "*.json"], "remove input.include"),
        (vec!["--input", &url, "--kafka-start", "tomorrow"], "not known"),
        (vec!["--input", &url, "--kafka-format", "csv"], "not a record format"),
        (vec!["--input", &url, "--executor", "lambda", "--lambda-function", "f"], "local executor only"),
        (vec!["--input", "in", "--kafka-group", "g"], "goes with a kafka:// source"),
    ];
    for (flags, says) in cases {
        let mut args = vec!["run", "--function", &wasm, "--output", "out"];
        args.extend(flags.iter().copied());
        let ran = run_in(work.path(), &args);
        ran.assert_code(2);
        assert!(ran.stderr.contains(says), "{flags:?}: {}", ran.stderr);
        assert_eq!(ran.stderr.trim().lines().count(), 1, "{flags:?}: {}", ran.stderr);
        assert!(!work.path().join("out").exists(), "{flags:?} wrote DEST");
    }
    // A credential in the job file is refused, naming the variable to use instead.
    let job = work.path().join("secret.toml");
    std::fs::write(
        &job,
        format!(
            "[input]\nsource = \"{url}\"\n[input.kafka]\nsettings = {{ \"sasl.password\" = \"hunter2\" }}\n\
             [function]\nwasm = \"{wasm}\"\n[output]\ndest = \"out\"\n"
        ),
    )
    .unwrap();
    let ran = run_in(work.path(), &["run", job.to_str().unwrap()]);
    ran.assert_code(2);
    assert!(
        ran.stderr.contains("secret.toml:4") && ran.stderr.contains("FANOUT_KAFKA_SASL_PASSWORD"),
        "{}",
        ran.stderr
    );
    // Credentials from the environment that the broker cannot take (tansu speaks no SASL):
    // refused before anything runs, the message pointing at the settings.
    let job = work.path().join("sasl.toml");
    std::fs::write(
        &job,
        format!(
            "[input]\nsource = \"{url}\"\n[input.kafka]\n\
             settings = {{ \"security.protocol\" = \"SASL_PLAINTEXT\", \"sasl.mechanism\" = \"PLAIN\" }}\n\
             [function]\nwasm = \"{wasm}\"\n[output]\ndest = \"out\"\n"
        ),
    )
    .unwrap();
    let ran: Ran = fanout()
        .current_dir(work.path())
        .args(["run", job.to_str().unwrap()])
        .env("FANOUT_KAFKA_SASL_USERNAME", "fanout")
        .env("FANOUT_KAFKA_SASL_PASSWORD", "wrong-password")
        .output()
        .unwrap()
        .into();
    ran.assert_code(2);
    assert!(ran.stderr.contains("check input.kafka.settings"), "{}", ran.stderr);
    assert_eq!(ran.stderr.trim().lines().count(), 1, "{}", ran.stderr);
    assert!(!ran.stderr.contains("wrong-password"), "a credential in the error: {}", ran.stderr);
    assert!(!work.path().join("out").exists());
}
