//! Helpers for driving the real `fanout` binary in fresh folders.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The fanout binary with a clean slate of fanout settings.
pub fn fanout() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fanout"));
    command.env_remove("FANOUT_STAGING").env("NO_COLOR", "1");
    command
}

pub struct Ran {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "exit code\n--- stdout\n{}\n--- stderr\n{}", self.stdout, self.stderr);
        self
    }

    /// Refused before any work: exit 2 and one line on stderr that contains `named`.
    pub fn assert_refused(&self, named: &str) -> &Self {
        self.assert_code(2);
        let lines: Vec<&str> = self.stderr.lines().collect();
        assert_eq!(lines.len(), 1, "one line: {}", self.stderr);
        assert!(lines[0].contains(named), "{named} named in: {}", lines[0]);
        self
    }
}

impl From<Output> for Ran {
    fn from(output: Output) -> Self {
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// Runs fanout with `args` in `cwd`.
pub fn run_in(cwd: &Path, args: &[&str]) -> Ran {
    fanout().current_dir(cwd).args(args).output().expect("run fanout").into()
}

/// Threads of process `pid` that are fanout's pool workers (named `fanout-worker-N`).
pub fn worker_threads(pid: u32) -> usize {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return 0 };
    tasks
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.starts_with("fanout-worker"))
        .count()
}

/// Waits until `ready` holds, looking every `every`; fails the test naming `what` after
/// `limit`. The one way tests wait: on a fact, never on a fixed sleep.
pub fn eventually(what: &str, limit: std::time::Duration, every: std::time::Duration, mut ready: impl FnMut() -> bool) {
    let until = std::time::Instant::now() + limit;
    while !ready() {
        assert!(std::time::Instant::now() < until, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(every);
    }
}

/// The workers on this machine (`fanout lambda worker`, `fanout worker` in a Slurm task)
/// whose guest has written `name` under /out, by pid: a worker stages each attempt under
/// `<temp dir>/fanout-worker-<pid>/`, where a guest's /out is a folder. With the misbehave
/// function's `holdfirst`, the fact that an attempt is running and cannot finish.
pub fn workers_holding(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str()?.strip_prefix("fanout-worker-")?.parse().ok()?;
            let mut files = walkdir::WalkDir::new(entry.path()).into_iter().flatten();
            files.any(|file| file.file_name() == name).then_some(pid)
        })
        .collect()
}

/// Builds one of the repository's function crates once per test binary and returns its .wasm.
/// Each crate has a lock of its own: tests that need different functions build them side
/// by side instead of queueing behind one build (cargo's own lock on each crate's target
/// folder keeps test processes from building the same crate twice at once).
pub fn function(name: &str) -> PathBuf {
    type Cells = std::sync::Mutex<BTreeMap<String, std::sync::Arc<OnceLock<PathBuf>>>>;
    static BUILT: OnceLock<Cells> = OnceLock::new();
    let cell = BUILT.get_or_init(Default::default).lock().unwrap().entry(name.to_string()).or_default().clone();
    cell.get_or_init(|| {
        let dir = if name == "noop" || name == "copy" {
            repo().join("bench").join(name)
        } else {
            repo().join("examples").join(name)
        };
        fanout::function::build_crate(&dir, true).unwrap_or_else(|e| panic!("building {name}: {e}"))
    })
    .clone()
}

/// Writes `count` input files `{prefix}NN` holding one misbehave command each.
pub fn write_commands(dir: &Path, prefix: &str, count: usize, command: &str) {
    for i in 0..count {
        write_files(dir, &[(&format!("{prefix}{i:03}"), command)]);
    }
}

pub fn write_files(dir: &Path, files: &[(&str, &str)]) {
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
}

/// The one job folder under `dest/_fanout/`.
pub fn job_dir(dest: &Path) -> PathBuf {
    // `files/` and `functions/` hold what every job of DEST shares (side files, stored functions).
    let mut jobs: Vec<PathBuf> = std::fs::read_dir(dest.join("_fanout"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| !path.ends_with("files") && !path.ends_with("functions"))
        .collect();
    jobs.sort();
    assert_eq!(jobs.len(), 1, "expected one job under {}: {jobs:?}", dest.display());
    jobs.pop().unwrap()
}

/// report.csv as rows of column -> value.
pub fn report(job_dir: &Path) -> Vec<BTreeMap<String, String>> {
    let mut reader = csv::Reader::from_path(job_dir.join("report.csv")).expect("report.csv");
    let headers = reader.headers().unwrap().clone();
    reader
        .records()
        .map(|row| headers.iter().zip(row.unwrap().iter()).map(|(h, v)| (h.to_string(), v.to_string())).collect())
        .collect()
}

pub fn summary(job_dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(job_dir.join("summary.json")).expect("summary.json")).unwrap()
}

/// Every commit record in the journal, in write order. A segment being written is a
/// temporary file until it is renamed into place: it is not part of the journal yet (as
/// fanout's own listing skips it), and may be gone by the time it would be read.
pub fn journal(job_dir: &Path) -> Vec<serde_json::Value> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(job_dir.join("shards"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|path| !path.file_name().unwrap().to_string_lossy().starts_with(".fanout-tmp-"))
        .collect();
    segments.sort();
    segments
        .iter()
        .flat_map(|path| {
            std::fs::read_to_string(path)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// How many commit records the journal holds for each shard.
pub fn commits_per_shard(journal: &[serde_json::Value]) -> BTreeMap<u64, usize> {
    let mut commits = BTreeMap::new();
    for record in journal {
        *commits.entry(record["shard"].as_u64().unwrap()).or_default() += 1;
    }
    commits
}

/// Every file below `dir`, relative, sorted, with its bytes; `_fanout/` left out.
pub fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = BTreeMap::new();
    if !dir.exists() {
        return files;
    }
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry.unwrap();
        if entry.file_type().is_file() {
            let relative = entry.path().strip_prefix(dir).unwrap().to_string_lossy().into_owned();
            if !relative.starts_with("_fanout/") {
                files.insert(relative, std::fs::read(entry.path()).unwrap());
            }
        }
    }
    files
}

/// The S3 test server from `scripts/test` (or `scripts/test-s3 start`). The S3 tests are
/// ignored when none was configured at build time (see build.rs); one that runs needs it.
pub struct S3 {
    pub bucket: String,
}

pub fn s3() -> S3 {
    match (std::env::var("FANOUT_TEST_BUCKET"), std::env::var("AWS_ENDPOINT_URL")) {
        (Ok(bucket), Ok(_)) => S3 { bucket },
        _ => panic!(
            "no S3 test server: FANOUT_TEST_BUCKET and AWS_ENDPOINT_URL are unset (run the tests with scripts/test)"
        ),
    }
}

/// A key prefix no other test or run uses.
pub fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{test}-{}-{nanos}/", std::process::id())
}

/// Runs a boto3 snippet (an S3 client that is not fanout's) with `s3`, `bucket` bound.
pub fn boto3(script: &str, args: &[&str]) -> String {
    let prelude = "import sys, os, boto3\nfrom botocore.config import Config\n\
        s3 = boto3.client('s3', endpoint_url=os.environ['AWS_ENDPOINT_URL'], config=Config(s3={'addressing_style': 'path'}))\n\
        bucket = os.environ['FANOUT_TEST_BUCKET']\n";
    let output = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .args(args)
        .output()
        .expect("python3");
    assert!(output.status.success(), "boto3 failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The one job's folder in a DEST read back into `dir` (the functions' and side files'
/// stores beside it are not jobs).
pub fn job_folder(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir.join("_fanout"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| !p.ends_with("functions") && !p.ends_with("files"))
        .expect("a job folder")
}

/// A remote executor's DEST read back with boto3: report.csv's rows, the job's folder, and
/// the copy (the functions' store beside the job, where remote workers fetch the
/// function, is not a job).
pub fn s3_report(prefix: &str) -> (Vec<BTreeMap<String, String>>, PathBuf, tempfile::TempDir) {
    let back = tempfile::tempdir().unwrap();
    boto3_download(prefix, back.path());
    let job = job_folder(back.path());
    (report(&job), job, back)
}

/// Uploads every file below `dir` to `s3://bucket/prefix` with boto3.
pub fn boto3_upload(dir: &Path, prefix: &str) {
    boto3(
        "root, prefix = sys.argv[1], sys.argv[2]\n\
         for base, _, files in os.walk(root):\n\
         \x20   for f in files:\n\
         \x20       path = os.path.join(base, f)\n\
         \x20       s3.upload_file(path, bucket, prefix + os.path.relpath(path, root))\n",
        &[dir.to_str().unwrap(), prefix],
    );
}

/// Downloads every object under `s3://bucket/prefix` into `dir` with boto3; returns the keys.
pub fn boto3_download(prefix: &str, dir: &Path) -> Vec<String> {
    let listed = boto3(
        "prefix, root = sys.argv[1], sys.argv[2]\n\
         for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix):\n\
         \x20   for o in page.get('Contents', []):\n\
         \x20       rel = o['Key'][len(prefix):]\n\
         \x20       os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)\n\
         \x20       s3.download_file(bucket, o['Key'], os.path.join(root, rel))\n\
         \x20       print(rel)\n",
        &[prefix, dir.to_str().unwrap()],
    );
    listed.lines().map(str::to_string).collect()
}

/// Each shard's first input key, by shard id as `report.csv` writes it, from the stored plan.
pub fn keys_by_shard(job: &Path) -> BTreeMap<String, String> {
    let plan = std::fs::read_to_string(job.join("plan/000000.jsonl")).unwrap();
    plan.lines()
        .map(|line| {
            let shard: serde_json::Value = serde_json::from_str(line).unwrap();
            (shard["id"].to_string(), shard["objects"][0]["key"].as_str().unwrap().to_string())
        })
        .collect()
}

/// report.csv's rows of the one job in `dest`, by the key of each shard's one object.
pub fn rows_by_key(dest: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let job = job_dir(dest);
    let keys = keys_by_shard(&job);
    report(&job).into_iter().map(|row| (keys[&row["shard"]].clone(), row)).collect()
}

/// The Azure Blob emulator from `scripts/test` (or `scripts/test-azure start`): its tests are
/// ignored when none was configured at build time (see build.rs); one that runs needs it.
pub struct Azure {
    pub container: String,
}

pub fn azure() -> Azure {
    match (std::env::var("FANOUT_TEST_AZURE_CONTAINER"), std::env::var("AZURE_STORAGE_CONNECTION_STRING")) {
        (Ok(container), Ok(_)) => Azure { container },
        _ => panic!("no Azure test server: FANOUT_TEST_AZURE_CONTAINER is unset (run the tests with scripts/test)"),
    }
}

/// The Google Cloud Storage emulator from `scripts/test` (or `scripts/test-gcs start`).
pub struct Gcs {
    pub bucket: String,
}

pub fn gcs() -> Gcs {
    match (std::env::var("FANOUT_TEST_GCS_BUCKET"), std::env::var("STORAGE_EMULATOR_HOST")) {
        (Ok(bucket), Ok(_)) => Gcs { bucket },
        _ => panic!("no GCS test server: FANOUT_TEST_GCS_BUCKET is unset (run the tests with scripts/test)"),
    }
}

/// Runs a snippet with Microsoft's azure-storage-blob (an Azure client that is not fanout's),
/// `container` bound to the test container's client.
pub fn azure_python(script: &str, args: &[&str]) -> String {
    let prelude = "import sys, os\nfrom azure.storage.blob import BlobServiceClient\n\
        service = BlobServiceClient.from_connection_string(os.environ['AZURE_STORAGE_CONNECTION_STRING'])\n\
        container = service.get_container_client(os.environ['FANOUT_TEST_AZURE_CONTAINER'])\n";
    let python = std::env::var("FANOUT_TEST_AZURE_PYTHON").expect("FANOUT_TEST_AZURE_PYTHON (scripts/test-azure)");
    let output = Command::new(python).arg("-c").arg(format!("{prelude}{script}")).args(args).output().expect("python");
    assert!(output.status.success(), "azure-storage-blob failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Downloads every blob under `prefix` into `dir` with azure-storage-blob; returns the names
/// below the prefix.
pub fn azure_download(prefix: &str, dir: &Path) -> Vec<String> {
    let listed = azure_python(
        "prefix, root = sys.argv[1], sys.argv[2]\n\
         for blob in container.list_blobs(name_starts_with=prefix):\n\
         \x20   rel = blob.name[len(prefix):]\n\
         \x20   os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)\n\
         \x20   with open(os.path.join(root, rel), 'wb') as f:\n\
         \x20       container.download_blob(blob.name).readinto(f)\n\
         \x20   print(rel)\n",
        &[prefix, dir.to_str().unwrap()],
    );
    listed.lines().map(str::to_string).collect()
}

/// Uploads the local file `path` as the blob `name` with azure-storage-blob.
pub fn azure_upload(path: &Path, name: &str) {
    azure_python(
        "with open(sys.argv[1], 'rb') as body:\n\x20   container.upload_blob(sys.argv[2], body, overwrite=True)\n",
        &[path.to_str().unwrap(), name],
    );
}

/// Runs a snippet against the GCS emulator's own JSON API (plain HTTP, not fanout's client
/// nor the proxy in front of it), with `api` (its base URL) and `bucket` bound.
pub fn gcs_json(script: &str, args: &[&str]) -> String {
    let prelude = "import sys, os, json, urllib.request, urllib.parse\n\
        api = os.environ['FANOUT_TEST_GCS_JSON']\n\
        bucket = os.environ['FANOUT_TEST_GCS_BUCKET']\n\
        def names(prefix):\n\
        \x20   token, found = None, []\n\
        \x20   while True:\n\
        \x20       q = {'prefix': prefix, 'maxResults': '500'}\n\
        \x20       if token: q['pageToken'] = token\n\
        \x20       page = json.load(urllib.request.urlopen(f'{api}/storage/v1/b/{bucket}/o?' + urllib.parse.urlencode(q)))\n\
        \x20       found += [o['name'] for o in page.get('items', [])]\n\
        \x20       token = page.get('nextPageToken')\n\
        \x20       if not token: return found\n";
    let output =
        Command::new("python3").arg("-c").arg(format!("{prelude}{script}")).args(args).output().expect("python3");
    assert!(output.status.success(), "the GCS JSON API failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Uploads every file below `dir` to `gs://bucket/prefix` through the emulator's JSON API.
pub fn gcs_upload(dir: &Path, prefix: &str) {
    gcs_json(
        "root, prefix = sys.argv[1], sys.argv[2]\n\
         for base, _, files in os.walk(root):\n\
         \x20   for f in files:\n\
         \x20       path = os.path.join(base, f)\n\
         \x20       name = prefix + os.path.relpath(path, root)\n\
         \x20       with open(path, 'rb') as body:\n\
         \x20           request = urllib.request.Request(f'{api}/upload/storage/v1/b/{bucket}/o?' + urllib.parse.urlencode({'uploadType': 'media', 'name': name}), data=body, method='POST', headers={'Content-Length': str(os.path.getsize(path))})\n\
         \x20           urllib.request.urlopen(request).read()\n",
        &[dir.to_str().unwrap(), prefix],
    );
}

/// Downloads every object under `gs://bucket/prefix` into `dir` through the emulator's JSON
/// API; returns the names below the prefix.
pub fn gcs_download(prefix: &str, dir: &Path) -> Vec<String> {
    let listed = gcs_json(
        "prefix, root = sys.argv[1], sys.argv[2]\n\
         for name in names(prefix):\n\
         \x20   rel = name[len(prefix):]\n\
         \x20   os.makedirs(os.path.dirname(os.path.join(root, rel)), exist_ok=True)\n\
         \x20   url = f'{api}/storage/v1/b/{bucket}/o/' + urllib.parse.quote(name, safe='') + '?alt=media'\n\
         \x20   with open(os.path.join(root, rel), 'wb') as f:\n\
         \x20       f.write(urllib.request.urlopen(url).read())\n\
         \x20   print(rel)\n",
        &[prefix, dir.to_str().unwrap()],
    );
    listed.lines().map(str::to_string).collect()
}

/// The object names under `gs://bucket/prefix`, from the emulator's JSON API.
pub fn gcs_names(prefix: &str) -> Vec<String> {
    gcs_json("for name in names(sys.argv[1]): print(name)\n", &[prefix]).lines().map(str::to_string).collect()
}
