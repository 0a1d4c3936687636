//! fanout against Azure Blob (Azurite) and Google Cloud Storage (fake-gcs-server): a job that
//! reads from one cloud and writes to the other, read back with each cloud's own client; the
//! wrong address, container, bucket or credentials refused in one line before any work.

use crate::common::*;
use sha2::{Digest, Sha256};

/// Input files of several sizes: small ones (one request each way) and one past the 16 MiB
/// threshold (uploaded in blocks, read in one stream).
fn inputs(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut bytes = |size: usize| -> Vec<u8> {
        (0..size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    };
    let files = vec![
        ("a.bin".to_string(), bytes(1000)),
        ("deep/b.bin".to_string(), bytes(300 << 10)),
        ("empty.bin".to_string(), Vec::new()),
        ("large.bin".to_string(), bytes((17 << 20) + 5)),
    ];
    for (name, data) in &files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, data).unwrap();
    }
    files
}

#[test]
// Ignored (the runner counts it as skipped) when the two emulators were not configured at
// build time; scripts/test starts both and runs it.
#[cfg_attr(
    not(all(fanout_azure_server, fanout_gcs_server)),
    ignore = "needs the Azure and GCS test servers: run scripts/test"
)]
fn a_job_reads_from_gcs_and_writes_to_azure_read_back_by_their_own_clients() {
    let (azure, gcs) = (azure(), gcs());
    let prefix = unique_prefix("gs-to-az");
    let source = tempfile::tempdir().unwrap();
    let files = inputs(source.path());
    gcs_upload(source.path(), &format!("{prefix}in/"));
    // The function too comes from GCS.
    let wasm_dir = tempfile::tempdir().unwrap();
    std::fs::copy(function("copy"), wasm_dir.path().join("copy.wasm")).unwrap();
    gcs_upload(wasm_dir.path(), &format!("{prefix}fn/"));

    let dest = format!("az://{}/{prefix}out/", azure.container);
    let ran = run_in(
        &repo(),
        &[
            "run",
            "--input",
            &format!("gs://{}/{prefix}in/", gcs.bucket),
            "--function",
            &format!("gs://{}/{prefix}fn/copy.wasm", gcs.bucket),
            "--output",
            &dest,
            "--json",
        ],
    );
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], files.len(), "{}", ran.stdout);

    // Read back by azure-storage-blob: every output is its input, byte for byte.
    let back = tempfile::tempdir().unwrap();
    let names = azure_download(&format!("{prefix}out/"), back.path());
    for (name, data) in &files {
        assert!(names.contains(name), "{name} missing from {names:?}");
        let copied = std::fs::read(back.path().join(name)).unwrap();
        assert_eq!(copied.len(), data.len(), "{name}");
        assert_eq!(Sha256::digest(&copied), Sha256::digest(data), "{name} differs from its input");
    }
    let job = job_folder(back.path());
    let rows = report(&job);
    assert_eq!(rows.len(), files.len());
    assert!(rows.iter().all(|row| row["status"] == "ok"), "{rows:?}");
    // Nothing was written to the source's cloud.
    assert!(gcs_names(&format!("{prefix}in/_fanout/")).is_empty());

    // status and report read the manifest from Azure too.
    let status = run_in(&repo(), &["status", &dest, "--json"]);
    status.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["shards"]["ok"], files.len());
}

/// Runs `fanout run` with DEST `dest` and `env` changed, expecting a refusal naming `expected`.
fn refused(dest: &str, env: &[(&str, Option<String>)], expected: &str, case: &str) {
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a.txt", "x")]);
    let wasm = function("wordcount");
    let mut command = fanout();
    command.current_dir(work.path()).args(["run", "--input", "in", "--function", wasm.to_str().unwrap()]);
    command.args(["--output", dest]);
    for (key, value) in env {
        match value {
            Some(value) => command.env(key, value),
            None => command.env_remove(key),
        };
    }
    let started = std::time::Instant::now();
    let ran = Ran::from(command.output().unwrap());
    assert_eq!(ran.code, 2, "{case}: {}", ran.stderr);
    assert_eq!(ran.stderr.lines().count(), 1, "{case}: one line, got {}", ran.stderr);
    assert!(ran.stderr.contains("output.dest") && ran.stderr.contains(expected), "{case}: {}", ran.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(30), "{case}: took {:?}", started.elapsed());
}

#[test]
#[cfg_attr(not(fanout_azure_server), ignore = "needs the Azure test server: run scripts/test")]
fn azure_problems_are_one_line_errors_before_any_work() {
    let azure = azure();
    let prefix = unique_prefix("errors");
    let dest = format!("az://{}/{prefix}out/", azure.container);
    let real = std::env::var("AZURE_STORAGE_CONNECTION_STRING").unwrap();
    let with = |name: &str, value: &str| -> String {
        real.split(';')
            .filter(|part| !part.is_empty())
            .map(
                |part| if part.starts_with(&format!("{name}=")) { format!("{name}={value}") } else { part.to_string() },
            )
            .collect::<Vec<_>>()
            .join(";")
    };
    let unreachable = with("BlobEndpoint", "http://127.0.0.1:9/devstoreaccount1");
    refused(
        &dest,
        &[("AZURE_STORAGE_CONNECTION_STRING", Some(unreachable))],
        "cannot reach the Azure Blob endpoint http://127.0.0.1:9/devstoreaccount1",
        "unreachable endpoint",
    );
    // A well-formed key that is not the account's: its first character changed.
    let key = real.split(';').find_map(|part| part.strip_prefix("AccountKey=")).expect("a key");
    let other = if key.starts_with('A') { "B" } else { "A" };
    let wrong_key = with("AccountKey", &format!("{other}{}", &key[1..]));
    refused(&dest, &[("AZURE_STORAGE_CONNECTION_STRING", Some(wrong_key))], "access denied", "wrong key");
    refused(
        &format!("az://no-such-container-for-fanout/{prefix}"),
        &[],
        "the container \"no-such-container-for-fanout\" does not exist",
        "missing container",
    );
    let none = [
        ("AZURE_STORAGE_CONNECTION_STRING", None),
        ("AZURE_STORAGE_ACCOUNT_NAME", None),
        ("AZURE_STORAGE_ACCOUNT", None),
    ];
    refused(&dest, &none, "no usable Azure credentials", "no account named");
    assert!(azure_download(&prefix, tempfile::tempdir().unwrap().path()).is_empty(), "nothing was written");
}

#[test]
#[cfg_attr(not(fanout_gcs_server), ignore = "needs the GCS test server: run scripts/test")]
fn gcs_problems_are_one_line_errors_before_any_work() {
    let gcs = gcs();
    let prefix = unique_prefix("errors");
    let dest = format!("gs://{}/{prefix}out/", gcs.bucket);
    refused(
        &dest,
        &[("STORAGE_EMULATOR_HOST", Some("127.0.0.1:9".into()))],
        "cannot reach the Google Cloud Storage endpoint http://127.0.0.1:9",
        "unreachable endpoint",
    );
    refused(
        &format!("gs://no-such-bucket-for-fanout/{prefix}"),
        &[],
        "the bucket \"no-such-bucket-for-fanout\" does not exist",
        "missing bucket",
    );
    // Off the emulator, with a key file that is not there (the emulator checks no credentials).
    let missing_key = [
        ("STORAGE_EMULATOR_HOST", None),
        ("GOOGLE_APPLICATION_CREDENTIALS", Some("/nonexistent/fanout-key.json".into())),
    ];
    refused(&dest, &missing_key, "no usable Google Cloud credentials", "missing key file");
    assert!(gcs_names(&prefix).is_empty(), "nothing was written");
}

#[test]
// Ignored (the runner counts it as skipped) when the two emulators were not configured at
// build time; scripts/test starts both and runs it.
#[cfg_attr(
    not(all(fanout_azure_server, fanout_gcs_server)),
    ignore = "needs the Azure and GCS test servers: run scripts/test"
)]
fn a_record_job_splits_a_file_on_azure_with_a_side_file_on_gcs_and_reduces_on_gcs_as_it_does_locally() {
    let (azure, gcs) = (azure(), gcs());
    let prefix = unique_prefix("records");
    let work = tempfile::tempdir().unwrap();
    let local_dest = work.path().join("local");
    let local = run_in(
        &repo(),
        &["run", "jobs/validate.toml", "--shard", "rows=150", "--output", local_dest.to_str().unwrap(), "--json"],
    );
    local.assert_code(0);

    // The same records as one blob on Azure, split by byte ranges; the schema on GCS.
    azure_upload(&repo().join("examples/data/records/orders.jsonl"), &format!("{prefix}in/orders.jsonl"));
    let schema_dir = work.path().join("schema");
    std::fs::create_dir(&schema_dir).unwrap();
    std::fs::copy(repo().join("examples/data/records/orders.schema.json"), schema_dir.join("orders.schema.json"))
        .unwrap();
    gcs_upload(&schema_dir, &format!("{prefix}schema/"));
    let dest = format!("gs://{}/{prefix}out/", gcs.bucket);
    let cloud = run_in(
        &repo(),
        &[
            "run",
            "jobs/validate.toml",
            "--input",
            &format!("az://{}/{prefix}in/orders.jsonl", azure.container),
            "--file",
            &format!("schema.json=gs://{}/{prefix}schema/orders.schema.json", gcs.bucket),
            "--shard",
            "rows=150",
            "--output",
            &dest,
            "--json",
        ],
    );
    cloud.assert_code(0);
    let (local_summary, cloud_summary): (serde_json::Value, serde_json::Value) =
        (serde_json::from_str(&local.stdout).unwrap(), serde_json::from_str(&cloud.stdout).unwrap());
    assert_eq!(cloud_summary["shards"]["ok"], local_summary["shards"]["ok"], "{}", cloud.stdout);
    assert!(cloud_summary["shards"]["ok"].as_u64().unwrap() >= 7, "{}", cloud.stdout);

    // Every part, rejected file, summary and the reduce's total: byte-identical to local.
    let back = work.path().join("back");
    gcs_download(&format!("{prefix}out/"), &back);
    let (expected, got) = (tree(&local_dest), tree(&back));
    assert!(expected.contains_key("summary.json") && expected.keys().any(|k| k.starts_with("rejected/")));
    assert_eq!(expected.keys().collect::<Vec<_>>(), got.keys().collect::<Vec<_>>());
    for (name, bytes) in &expected {
        assert!(got[name] == *bytes, "{name} differs from the local run's");
    }
    // report and redrive read the manifest on GCS.
    let report = run_in(&repo(), &["report", &dest, "--csv"]);
    report.assert_code(0);
    let ok_rows = report.stdout.lines().filter(|line| line.contains(",ok,") && line.ends_with(",map")).count() as u64;
    assert_eq!(ok_rows, cloud_summary["shards"]["ok"].as_u64().unwrap(), "{}", report.stdout);
    let redrive = run_in(&repo(), &["redrive", &dest, "--json"]);
    redrive.assert_code(0);
}

#[test]
#[cfg_attr(
    not(all(fanout_azure_server, fanout_gcs_server)),
    ignore = "needs the Azure and GCS test servers: run scripts/test"
)]
fn watch_once_takes_each_new_or_changed_blob_once_from_azure_to_gcs_and_back() {
    let (azure, gcs) = (azure(), gcs());
    let prefix = unique_prefix("watch-clouds");
    let watch = |input: &str, dest: &str| -> serde_json::Value {
        let ran = run_in(
            &repo(),
            &["watch", "--input", input, "--function", function("copy").to_str().unwrap(), "--output", dest]
                .iter()
                .copied()
                .chain(["--once", "--json"])
                .collect::<Vec<_>>(),
        );
        ran.assert_code(0);
        serde_json::from_str(&ran.stdout).unwrap_or_else(|e| panic!("{e}: {}", ran.stdout))
    };
    let files = tempfile::tempdir().unwrap();
    let put = |name: &str, text: &str| {
        let path = files.path().join(name.replace('/', "_"));
        std::fs::write(&path, text).unwrap();
        azure_upload(&path, &format!("{prefix}in/{name}"));
    };
    let az_in = format!("az://{}/{prefix}in/", azure.container);
    let gs_out = format!("gs://{}/{prefix}out/", gcs.bucket);
    for (name, text) in [("a.txt", "one"), ("b.txt", "two"), ("deep/c.txt", "three")] {
        put(name, text);
    }
    // A watch job goes on from run to run: its counts are the job's so far.
    let counts = |summary: serde_json::Value| (summary["shards"]["total"].clone(), summary["shards"]["ok"].clone());
    assert_eq!(counts(watch(&az_in, &gs_out)), (3.into(), 3.into()));
    // Nothing new: no shard. One new blob and one overwritten: a shard each.
    assert_eq!(counts(watch(&az_in, &gs_out)), (3.into(), 3.into()));
    put("d.txt", "four");
    put("a.txt", "one, again");
    assert_eq!(counts(watch(&az_in, &gs_out)), (5.into(), 5.into()));
    let back = tempfile::tempdir().unwrap();
    gcs_download(&format!("{prefix}out/"), back.path());
    let read = |name: &str| std::fs::read_to_string(back.path().join(name)).unwrap();
    assert_eq!(
        (read("a.txt"), read("b.txt"), read("deep/c.txt"), read("d.txt")),
        ("one, again".to_string(), "two".to_string(), "three".to_string(), "four".to_string())
    );

    // And the other way: a GCS prefix watched into Azure.
    gcs_upload(files.path(), &format!("{prefix}gs-in/"));
    let gs_in = format!("gs://{}/{prefix}gs-in/", gcs.bucket);
    let az_out = format!("az://{}/{prefix}az-out/", azure.container);
    assert_eq!(counts(watch(&gs_in, &az_out)), (4.into(), 4.into()));
    assert_eq!(counts(watch(&gs_in, &az_out)), (4.into(), 4.into()));
    let back = tempfile::tempdir().unwrap();
    let names = azure_download(&format!("{prefix}az-out/"), back.path());
    let outputs: Vec<&String> = names.iter().filter(|name| !name.starts_with("_fanout/")).collect();
    assert_eq!(outputs.len(), 4, "{names:?}");
    assert_eq!(std::fs::read_to_string(back.path().join("a.txt")).unwrap(), "one, again");
}
