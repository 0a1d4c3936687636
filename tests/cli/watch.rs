//! `fanout watch` on a local folder: objects put one by one, in a burst of 500, written
//! slowly, overwritten; every version processed exactly once (checked by decoding each
//! output); latency from put to commit; no CPU and no workers between bursts; a SIGKILL
//! and a restart that lose and redo nothing; SIGTERM exits 0.

use crate::common::*;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

struct Watcher {
    child: std::process::Child,
}

impl Watcher {
    fn start(input: &Path, dest: &Path, log: &Path) -> Watcher {
        Watcher::start_urls(input.to_str().unwrap(), dest.to_str().unwrap(), log)
    }

    fn start_urls(input: &str, dest: &str, log: &Path) -> Watcher {
        let log = std::fs::File::create(log).unwrap();
        let child = fanout()
            .current_dir(repo())
            .args(["watch", "--input", input, "--output", dest])
            .args(["--function", function("wordcount").to_str().unwrap(), "--idle", "300ms"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        Watcher { child }
    }

    /// CPU time the watcher used so far (user + system, clock ticks).
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
    }

    /// fanout's own pool threads (tokio's and the notifier's come and go on their own clocks).
    fn pool_threads(&self) -> usize {
        worker_threads(self.child.id())
    }

    /// Whether the watcher has an inotify watch in place (a process fact: an inotify file
    /// descriptor whose fdinfo lists a watch).
    fn notified(&self) -> bool {
        let pid = self.child.id();
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else { return false };
        fds.flatten().any(|fd| {
            let inotify =
                std::fs::read_link(fd.path()).is_ok_and(|target| target.to_string_lossy() == "anon_inode:inotify");
            let info = format!("/proc/{pid}/fdinfo/{}", fd.file_name().to_string_lossy());
            inotify && std::fs::read_to_string(info).is_ok_and(|info| info.contains("inotify wd:"))
        })
    }

    fn signal(&mut self, signal: &str) {
        std::process::Command::new("kill").args([signal, &self.child.id().to_string()]).status().unwrap();
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Committed records of the watch (all runs), by shard.
fn committed(dest: &Path) -> BTreeMap<u64, serde_json::Value> {
    let Ok(jobs) = std::fs::read_dir(dest.join("_fanout")) else { return BTreeMap::new() };
    let mut records = BTreeMap::new();
    for job in jobs {
        let job = job.unwrap().path();
        if !job.join("shards").exists() {
            continue;
        }
        for record in journal(&job) {
            records.insert(record["shard"].as_u64().unwrap(), record);
        }
    }
    records
}

/// The input key of every planned shard of the watch, read from its plan segments.
fn shard_keys(dest: &Path) -> BTreeMap<u64, String> {
    let job = job_dir(dest);
    let mut keys = BTreeMap::new();
    for segment in std::fs::read_dir(job.join("plan")).unwrap() {
        let segment = segment.unwrap().path();
        // One being written is not in the plan yet (see `journal`).
        if segment.file_name().unwrap().to_string_lossy().starts_with(".fanout-tmp-") {
            continue;
        }
        for line in std::fs::read_to_string(segment).unwrap().lines() {
            let shard: serde_json::Value = serde_json::from_str(line).unwrap();
            keys.insert(shard["id"].as_u64().unwrap(), shard["objects"][0]["key"].as_str().unwrap().to_string());
        }
    }
    keys
}

fn wait_for(what: &str, limit: Duration, done: impl FnMut() -> bool) {
    eventually(what, limit, Duration::from_millis(50), done);
}

fn put(input: &Path, name: &str, text: &str) -> SystemTime {
    std::fs::write(input.join(name), text).unwrap();
    SystemTime::now()
}

fn text_of(n: usize) -> String {
    (0..n % 23 + 1).map(|i| format!("w{i} ")).collect::<String>() + "\n"
}

fn finished_at(record: &serde_json::Value) -> SystemTime {
    humantime::parse_rfc3339(record["finished"].as_str().unwrap()).unwrap()
}

/// Seconds from each put to its commit, sorted, for the records whose keys were put.
fn latencies(
    records: &BTreeMap<u64, serde_json::Value>,
    keys: &BTreeMap<u64, String>,
    put_times: &BTreeMap<String, SystemTime>,
) -> Vec<f64> {
    let mut latencies: Vec<f64> = records
        .values()
        .filter_map(|r| {
            let put = put_times.get(&keys[&r["shard"].as_u64().unwrap()])?;
            Some(finished_at(r).duration_since(*put).unwrap_or_default().as_secs_f64())
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    latencies
}

/// The 522 records of a watch that saw 521 objects, `one-03.txt` twice: nothing committed
/// before the kill ran again, every record ok, every version once. Returns each key's count.
fn every_version_once<'a>(
    records: &BTreeMap<u64, serde_json::Value>,
    keys: &'a BTreeMap<u64, String>,
    before_kill: &BTreeMap<u64, serde_json::Value>,
) -> BTreeMap<&'a str, usize> {
    assert_eq!(records.len(), 522, "20 + slow + 500 + one overwrite");
    for (shard, record) in before_kill {
        assert_eq!(&records[shard], record, "shard {shard} was redone");
    }
    let mut per_key: BTreeMap<&str, usize> = BTreeMap::new();
    for (shard, record) in records {
        assert_eq!(record["status"], "ok", "{record}");
        *per_key.entry(keys[shard].as_str()).or_default() += 1;
    }
    assert_eq!(per_key.len(), 521);
    assert!(per_key.iter().all(|(key, n)| *n == if *key == "one-03.txt" { 2 } else { 1 }), "{per_key:?}");
    per_key
}

#[test]
fn a_local_folder_is_watched_every_version_once_through_a_kill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (input, dest, log) = (dir.path().join("in"), dir.path().join("out"), dir.path().join("watch.log"));
    std::fs::create_dir(&input).unwrap();
    let mut watcher = Watcher::start(&input, &dest, &log);
    // Notifications on: what is put from now on is seen at once.
    wait_for("the watch to watch the folder", Duration::from_secs(60), || watcher.notified());

    // One by one: latency from put to committed output.
    let mut put_times = BTreeMap::new();
    for i in 0..20 {
        put_times.insert(format!("one-{i:02}.txt"), put(&input, &format!("one-{i:02}.txt"), &text_of(i)));
        std::thread::sleep(Duration::from_millis(150));
    }
    // Written slowly through one handle: taken once, whole, when closed.
    let mut slow = std::fs::File::create(input.join("slow.txt")).unwrap();
    for part in 0..3 {
        slow.write_all(format!("part{part} more words\n").as_bytes()).unwrap();
        slow.flush().unwrap();
        std::thread::sleep(Duration::from_millis(400));
    }
    drop(slow);
    wait_for("21 commits", Duration::from_secs(30), || committed(&dest).len() == 21);
    let latencies = latencies(&committed(&dest), &shard_keys(&dest), &put_times);
    let p50 = latencies[latencies.len() / 2];
    eprintln!("watch latency, local folder: p50 {:.3}s, max {:.3}s", p50, latencies.last().unwrap());
    assert!(p50 < 1.0, "p50 latency {p50}s");

    // Between bursts: the pool is back at zero (its threads gone) and the watch sleeps,
    // once the report of those commits (rewritten every 10 s while shards commit) is out.
    let report_csv = job_dir(&dest).join("report.csv");
    wait_for("the report of 21 commits", Duration::from_secs(30), || {
        std::fs::read_to_string(&report_csv).is_ok_and(|csv| csv.lines().count() == 22)
    });
    wait_for("the pool's threads to retire", Duration::from_secs(30), || watcher.pool_threads() == 0);
    // The 3 s measured are the idle watch's own: no timer of it may tick.
    let ticks = watcher.cpu_ticks();
    std::thread::sleep(Duration::from_secs(3));
    let idle_ticks = watcher.cpu_ticks() - ticks;
    eprintln!("watch idle: {idle_ticks} CPU ticks in 3s");
    assert!(idle_ticks <= 2, "the idle watch used {idle_ticks} ticks of CPU in 3s");
    assert_eq!(watcher.pool_threads(), 0, "a pool thread started while the watch was idle");

    // A burst of 500, killed in the middle, then restarted.
    for i in 0..500 {
        std::fs::write(input.join(format!("burst-{i:03}.txt")), text_of(i)).unwrap();
    }
    wait_for("part of the burst", Duration::from_secs(60), || committed(&dest).len() > 60);
    watcher.signal("-KILL");
    let _ = watcher.child.wait();
    let before_kill = committed(&dest);
    // Overwritten while no watcher ran: a new version, processed again.
    std::fs::write(input.join("one-03.txt"), "new content of three\n").unwrap();
    let mut watcher = Watcher::start(&input, &dest, &dir.path().join("watch2.log"));
    wait_for("every version", Duration::from_secs(120), || committed(&dest).len() >= 522);
    // Nothing more can commit once no attempt runs (and nothing new arrives).
    wait_for("the pool's threads to retire", Duration::from_secs(30), || watcher.pool_threads() == 0);
    watcher.signal("-TERM");
    let status = watcher.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(dir.path().join("watch2.log")).unwrap());

    // Every version exactly once: one shard per file, two for the overwritten one.
    let keys = shard_keys(&dest);
    let per_key = every_version_once(&committed(&dest), &keys, &before_kill);
    // Outputs decoded: each holds its file's word count, the overwritten one its new count.
    for (key, _) in per_key {
        let output: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dest.join(format!("{key}.json"))).unwrap()).unwrap();
        let text = std::fs::read(input.join(key)).unwrap();
        assert_eq!(output["words"], text.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).count());
    }
    let status = run_in(&repo(), &["status", dest.to_str().unwrap(), "--json"]);
    status.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["shards"]["ok"], 522, "{status}");
    assert_eq!(report(&job_dir(&dest)).len(), 522);
}

#[test]
fn a_watch_refuses_what_it_cannot_watch() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("one.txt"), "x\n").unwrap();
    let wasm = function("wordcount");
    let ran =
        run_in(dir.path(), &["watch", "--input", "one.txt", "--function", wasm.to_str().unwrap(), "--output", "out"]);
    ran.assert_code(2);
    assert!(ran.stderr.contains("one object; a watch needs a folder"), "{}", ran.stderr);
    let ran = run_in(
        dir.path(),
        &["watch", "--input", "nowhere/", "--function", wasm.to_str().unwrap(), "--output", "out", "--once"],
    );
    ran.assert_code(2);
    assert!(ran.stderr.contains("nowhere"), "{}", ran.stderr);
    // With a reduce, a newer version must replace one object's output: one object a shard.
    let job = repo().join("jobs/wordfreq.toml");
    write_files(dir.path(), &[("in/a.txt", "words\n")]);
    let ran = run_in(dir.path(), &["watch", job.to_str().unwrap(), "--input", "in", "--output", "out", "--once"]);
    ran.assert_code(2);
    assert!(ran.stderr.contains("input.shard: a watch with [reduce] takes one object a shard"), "{}", ran.stderr);
    assert!(!dir.path().join("out").exists(), "nothing written");
}

/// Puts objects into S3 with boto3 (not fanout's client) and returns each key's put time.
/// `plan` is a list of (key, text) put one by one `gap` seconds apart, or all at once
/// from 16 threads when `gap` is negative.
fn s3_put(prefix: &str, files: &[(String, String)], gap: f64) -> BTreeMap<String, SystemTime> {
    let plan = serde_json::to_string(files).unwrap();
    let printed = boto3(
        "import json, time\n\
         from concurrent.futures import ThreadPoolExecutor\n\
         prefix, files, gap = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])\n\
         def put(file):\n\
         \x20   s3.put_object(Bucket=bucket, Key=prefix + file[0], Body=file[1].encode())\n\
         \x20   return file[0], time.time()\n\
         if gap < 0:\n\
         \x20   done = list(ThreadPoolExecutor(16).map(put, files))\n\
         else:\n\
         \x20   done = []\n\
         \x20   for file in files:\n\
         \x20       done.append(put(file)); time.sleep(gap)\n\
         print(json.dumps(done))\n",
        &[prefix, &plan, &gap.to_string()],
    );
    let done: Vec<(String, f64)> = serde_json::from_str(printed.trim()).unwrap();
    done.into_iter().map(|(key, at)| (key, SystemTime::UNIX_EPOCH + Duration::from_secs_f64(at))).collect()
}

/// A multipart upload of two parts with `pause` seconds between them: the object exists
/// only once it is complete, so the watch must take it whole, once. The first part is
/// `first` repeated `times` (a part but the last must be 5 MiB or more).
fn s3_put_slowly(key: &str, (first, times): (&str, usize), second: &str, pause: f64) -> SystemTime {
    let printed = boto3(
        "import time\n\
         key, first, second, pause = sys.argv[1], sys.argv[2] * int(sys.argv[5]), sys.argv[3], float(sys.argv[4])\n\
         upload = s3.create_multipart_upload(Bucket=bucket, Key=key)['UploadId']\n\
         one = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=1, Body=first.encode())\n\
         time.sleep(pause)\n\
         two = s3.upload_part(Bucket=bucket, Key=key, UploadId=upload, PartNumber=2, Body=second.encode())\n\
         s3.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={'Parts': [\n\
         \x20   {'PartNumber': 1, 'ETag': one['ETag']}, {'PartNumber': 2, 'ETag': two['ETag']}]})\n\
         print(time.time())\n",
        &[key, first, second, &pause.to_string(), &times.to_string()],
    );
    SystemTime::UNIX_EPOCH + Duration::from_secs_f64(printed.trim().parse().unwrap())
}

/// Shards committed so far, as `fanout status` reads them from the manifest in S3.
fn s3_committed(dest: &str) -> u64 {
    let status = run_in(&repo(), &["status", dest, "--json"]);
    if status.code != 0 {
        return 0;
    }
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    status["shards"]["ok"].as_u64().unwrap_or(0)
}

#[test]
#[cfg_attr(not(fanout_s3_server), ignore = "needs the S3 test server: run scripts/test")]
fn an_s3_prefix_is_watched_every_version_once_through_a_kill_and_restart() {
    let s3 = s3();
    let prefix = unique_prefix("watch");
    let (input, dest) = (format!("{prefix}in/"), format!("{prefix}out/"));
    let (input_url, dest_url) = (format!("s3://{}/{input}", s3.bucket), format!("s3://{}/{dest}", s3.bucket));
    let dir = tempfile::tempdir().unwrap();
    let mut watcher = Watcher::start_urls(&input_url, &dest_url, &dir.path().join("watch.log"));
    wait_for("the watch to start", Duration::from_secs(60), || {
        std::fs::read_to_string(dir.path().join("watch.log")).unwrap().contains("watching")
    });

    // One by one, 0.4 s apart: latency from put to committed output, default 2 s listing.
    let one_by_one: Vec<(String, String)> = (0..20).map(|i| (format!("one-{i:02}.txt"), text_of(i))).collect();
    let mut put_times = s3_put(&input, &one_by_one, 0.4);
    // A multipart upload whose parts arrive 3 s apart (a listing or more in between).
    let big_part = ("slow words ", 5 * 1024 * 1024 / 11 + 1);
    put_times.insert("slow.txt".into(), s3_put_slowly(&format!("{input}slow.txt"), big_part, "tail end\n", 3.0));
    wait_for("21 commits", Duration::from_secs(60), || s3_committed(&dest_url) == 21);
    let manifest = tempfile::tempdir().unwrap();
    boto3_download(&format!("{dest}_fanout/"), &manifest.path().join("_fanout"));
    let keys = shard_keys(manifest.path());
    let latencies = latencies(&committed(manifest.path()), &keys, &put_times);
    assert_eq!(latencies.len(), 21, "{keys:?}");
    let p50 = latencies[latencies.len() / 2];
    eprintln!("watch latency, S3 prefix: p50 {:.3}s, max {:.3}s", p50, latencies.last().unwrap());
    assert!(p50 < 3.0, "p50 latency {p50}s");

    // A burst of 500 from 16 threads, the watcher killed in the middle, then restarted.
    let burst: Vec<(String, String)> = (0..500).map(|i| (format!("burst-{i:03}.txt"), text_of(i))).collect();
    s3_put(&input, &burst, -1.0);
    wait_for("part of the burst", Duration::from_secs(60), || s3_committed(&dest_url) > 60);
    watcher.signal("-KILL");
    let _ = watcher.child.wait();
    let before_kill = tempfile::tempdir().unwrap();
    boto3_download(&format!("{dest}_fanout/"), &before_kill.path().join("_fanout"));
    let before_kill = committed(before_kill.path());
    // Overwritten while no watcher ran: a new ETag, a new version, processed again.
    s3_put(&input, &[("one-03.txt".into(), "new content of three\n".into())], 0.0);
    let mut watcher = Watcher::start_urls(&input_url, &dest_url, &dir.path().join("watch2.log"));
    wait_for("every version", Duration::from_secs(180), || s3_committed(&dest_url) >= 522);
    watcher.signal("-TERM");
    let status = watcher.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", std::fs::read_to_string(dir.path().join("watch2.log")).unwrap());

    let back = tempfile::tempdir().unwrap();
    boto3_download(&dest, back.path());
    let keys = shard_keys(back.path());
    every_version_once(&committed(back.path()), &keys, &before_kill);
    // Outputs decoded: each holds its object's word count; the overwritten one its new count.
    let texts: BTreeMap<String, String> = one_by_one
        .into_iter()
        .chain(burst)
        .chain([("one-03.txt".to_string(), "new content of three\n".to_string())])
        .chain([("slow.txt".to_string(), format!("{}tail end\n", big_part.0.repeat(big_part.1)))])
        .collect();
    for (key, text) in &texts {
        let output: serde_json::Value =
            serde_json::from_slice(&std::fs::read(back.path().join(format!("{key}.json"))).unwrap()).unwrap();
        assert_eq!(output["words"], text.split_ascii_whitespace().count(), "{key}");
    }
}

#[test]
fn a_watch_with_a_reduce_keeps_the_result_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let (input, dest) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir(&input).unwrap();
    let log = std::fs::File::create(dir.path().join("watch.log")).unwrap();
    let mut watcher = Watcher {
        child: fanout()
            .current_dir(repo())
            .args(["watch", "jobs/wordfreq.toml", "--input", input.to_str().unwrap()])
            .args(["--output", dest.to_str().unwrap(), "--shard", "object", "--fan-in", "3", "--idle", "300ms"])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    };
    let table = dest.join("frequencies.csv");
    let log_text = || std::fs::read_to_string(dir.path().join("watch.log")).unwrap();
    // A first burst: the table appears once the map has caught up, and agrees with Python.
    let corpus = tempfile::tempdir().unwrap();
    crate::reduce::corpus(corpus.path(), 15);
    let copy = |range: std::ops::Range<usize>| {
        for i in range {
            let name = format!("doc{i:03}.txt");
            std::fs::copy(corpus.path().join(&name), input.join(&name)).unwrap();
        }
    };
    copy(0..10);
    wait_for("the first table", Duration::from_secs(60), || crate::reduce::words_agree("freq", &input, &table).is_ok());
    // More objects and an overwritten one: the table follows, counting the new version only.
    copy(10..15);
    std::fs::write(input.join("doc002.txt"), "brand new words, brand new\n").unwrap();
    wait_for("the table after the second burst", Duration::from_secs(60), || {
        crate::reduce::words_agree("freq", &input, &table).is_ok()
    });
    watcher.signal("-TERM");
    let status = watcher.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", log_text());
    crate::reduce::check_words("freq", &input, &table);
    let job = job_dir(&dest);
    let summary = summary(&job);
    assert_eq!(summary["reduce"]["succeeded"], true, "{summary}");
    // 16 map shards (15 files, one of them twice over) whose 15 outputs (the overwritten
    // one read once) reduce in a tree of fan_in 3: 5, 2, 1.
    let rows = report(&job);
    assert_eq!(rows.iter().filter(|r| r["stage"] == "map").count(), 16);
    let level_1 = rows.iter().filter(|r| r["stage"] == "reduce" && r["shard"].starts_with("L1-")).count();
    assert_eq!(level_1, 5, "{rows:?}");
    assert!(rows.iter().any(|r| r["stage"] == "reduce" && r["shard"] == "L3-00000"), "{rows:?}");
}

#[test]
fn a_failure_stops_counting_once_a_newer_version_of_its_object_commits() {
    let dir = tempfile::tempdir().unwrap();
    let (input, dest) = (dir.path().join("in"), dir.path().join("out"));
    write_files(&input, &[("fine.txt", "ok"), ("bad.txt", "trap")]);
    let wasm = function("misbehave");
    let once = || {
        run_in(
            dir.path(),
            &["watch", "--input", "in", "--output", "out", "--function", wasm.to_str().unwrap()]
                .into_iter()
                .chain(["--once", "--attempts", "1", "--json"])
                .collect::<Vec<_>>(),
        )
    };
    let ran = once();
    ran.assert_code(1);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(
        (summary["shards"]["ok"].as_u64(), summary["shards"]["failed"].as_u64()),
        (Some(1), Some(1)),
        "{summary}"
    );
    // The user mends the object: its new version commits, and the old failure is history.
    // (A later modification time than the failed version's, however coarse the clock.)
    let failed_version = std::fs::metadata(input.join("bad.txt")).unwrap().modified().unwrap();
    std::fs::write(input.join("bad.txt"), "ok").unwrap();
    let mended = std::fs::File::options().write(true).open(input.join("bad.txt")).unwrap();
    mended.set_modified(failed_version + Duration::from_secs(1)).unwrap();
    drop(mended);
    let ran = once();
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["failed"], 0, "{summary}");
    assert_eq!(summary["shards"]["superseded"], 1, "{summary}");
    assert_eq!(summary["shards"]["ok"], 2, "{summary}");
    assert_eq!(summary["shards"]["pending"], 0, "{summary}");
    assert_eq!(std::fs::read_to_string(dest.join("bad.txt.ok")).unwrap(), "fine\n");
    let status = run_in(dir.path(), &["status", "out", "--json"]);
    status.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["shards"]["failed"], 0, "{status}");
    assert_eq!(status["failed"].as_array().unwrap().len(), 0, "{status}");
    // report.csv still tells what happened to the old version.
    let rows = report(&job_dir(&dest));
    assert_eq!(rows.iter().filter(|r| r["status"] == "failed").count(), 1);
}
