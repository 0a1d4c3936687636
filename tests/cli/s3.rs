//! fanout against a real S3-compatible server: inputs, outputs, the function and the
//! manifest in S3; what it wrote read back by boto3 and decoded; errors before any work.

use crate::common::*;
use image::GenericImageView;

fn s3_url(s3: &S3, prefix: &str) -> String {
    format!("s3://{}/{prefix}", s3.bucket)
}

#[test]
// Ignored (the runner counts it as skipped) when no S3 test server was configured at
// build time; scripts/test starts one and runs it.
#[cfg_attr(not(fanout_s3_server), ignore = "needs the S3 test server: run scripts/test")]
fn thumbnail_job_from_s3_to_s3_read_back_by_boto3() {
    let s3 = s3();
    let prefix = unique_prefix("thumbs-e2e");
    boto3_upload(&repo().join("examples/data/images"), &format!("{prefix}raw/"));
    // The function too comes from S3.
    let wasm_dir = tempfile::tempdir().unwrap();
    std::fs::copy(function("thumbnail"), wasm_dir.path().join("thumbnail.wasm")).unwrap();
    boto3_upload(wasm_dir.path(), &format!("{prefix}fn/"));

    let ran = run_in(
        &repo(),
        &[
            "run",
            "jobs/thumbnails.toml",
            "--input",
            &s3_url(&s3, &format!("{prefix}raw/")),
            "--function",
            &s3_url(&s3, &format!("{prefix}fn/thumbnail.wasm")),
            "--output",
            &s3_url(&s3, &format!("{prefix}thumbs/")),
            "--json",
        ],
    );
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 4);

    let back = tempfile::tempdir().unwrap();
    let keys = boto3_download(&format!("{prefix}thumbs/"), back.path());
    for name in ["astronaut.jpg", "chelsea_q90.jpg", "coffee.jpg", "logo.jpg"] {
        assert!(keys.contains(&name.to_string()), "{name} missing from {keys:?}");
        let thumb = image::open(back.path().join(name)).unwrap();
        let (w, h) = thumb.dimensions();
        assert_eq!(w.max(h), 256, "{name}");
    }
    assert!(keys.iter().any(|k| k.ends_with("/report.csv") && k.starts_with("_fanout/")), "{keys:?}");
    let job = std::fs::read_dir(back.path().join("_fanout")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(report(&job).len(), 4);

    // status and report read the manifest from S3 too
    let status = run_in(&repo(), &["status", &s3_url(&s3, &format!("{prefix}thumbs/")), "--json"]);
    status.assert_code(0);
    let status: serde_json::Value = serde_json::from_str(&status.stdout).unwrap();
    assert_eq!(status["shards"]["ok"], 4);
    let csv = run_in(&repo(), &["report", &s3_url(&s3, &format!("{prefix}thumbs/")), "--csv"]);
    csv.assert_code(0);
    assert_eq!(csv.stdout.lines().count(), 5, "{}", csv.stdout);
}

#[test]
// Ignored (the runner counts it as skipped) when no S3 test server was configured at
// build time; scripts/test starts one and runs it.
#[cfg_attr(not(fanout_s3_server), ignore = "needs the S3 test server: run scripts/test")]
fn copy_through_s3_returns_every_byte_whatever_the_order_of_sizes() {
    let s3 = s3();
    // Downloads overwrite the files of earlier, bigger or smaller inputs in place (staging's
    // spares, reused once more shards than the 16 staging slots have run), and objects
    // above 16 MiB arrive in parallel ranges: each output must still be exactly its input,
    // no byte of another object left at its end.
    let mut sizes: Vec<usize> = (0..30).map(|i| (1 << 20) + (i * 7919 % 5) * (700 << 10) + i * 13).collect();
    sizes[20] = (17 << 20) + 3;
    sizes[25] = 300 << 10;
    let source = tempfile::tempdir().unwrap();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for (i, size) in sizes.iter().enumerate() {
        let bytes: Vec<u8> = (0..*size)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        std::fs::write(source.path().join(format!("o{i:02}.bin")), bytes).unwrap();
    }
    let prefix = unique_prefix("copy-through");
    boto3_upload(source.path(), &format!("{prefix}src/"));
    let wasm = function("copy");
    let ran = run_in(
        &repo(),
        &[
            "run",
            "--input",
            &s3_url(&s3, &format!("{prefix}src/")),
            "--function",
            wasm.to_str().unwrap(),
            "--output",
            &s3_url(&s3, &format!("{prefix}out/")),
            "--max-workers",
            "1",
            "--json",
        ],
    );
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], sizes.len());
    let back = tempfile::tempdir().unwrap();
    boto3_download(&format!("{prefix}out/"), back.path());
    for i in 0..sizes.len() {
        let name = format!("o{i:02}.bin");
        let original = std::fs::read(source.path().join(&name)).unwrap();
        let copied = std::fs::read(back.path().join(&name)).unwrap();
        assert_eq!(copied.len(), original.len(), "{name}");
        assert!(copied == original, "{name} differs from its input");
    }
}

#[test]
// Ignored (the runner counts it as skipped) when no S3 test server was configured at
// build time; scripts/test starts one and runs it.
#[cfg_attr(not(fanout_s3_server), ignore = "needs the S3 test server: run scripts/test")]
fn s3_problems_are_one_line_errors_before_any_work() {
    let s3 = s3();
    let work = tempfile::tempdir().unwrap();
    write_files(&work.path().join("in"), &[("a.txt", "x")]);
    let prefix = unique_prefix("errors");
    let dest = s3_url(&s3, &format!("{prefix}out/"));
    let wasm = function("wordcount");
    let base = ["run", "--input", "in", "--function", wasm.to_str().unwrap()];
    // (what, environment for fanout, DEST, expected error text)
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, String, &'a str);
    let cases: Vec<Case> = vec![
        (
            "unreachable endpoint",
            vec![("AWS_ENDPOINT_URL", "http://127.0.0.1:9".into())],
            dest.clone(),
            "cannot reach the S3 endpoint http://127.0.0.1:9",
        ),
        ("wrong secret", vec![("AWS_SECRET_ACCESS_KEY", "0".repeat(64))], dest.clone(), "access denied"),
        (
            "missing bucket",
            vec![],
            "s3://no-such-bucket-for-fanout/out/".into(),
            "the bucket \"no-such-bucket-for-fanout\" does not exist",
        ),
        (
            "key without rights",
            vec![
                ("AWS_ACCESS_KEY_ID", std::env::var("FANOUT_TEST_DENIED_KEY_ID").unwrap()),
                ("AWS_SECRET_ACCESS_KEY", std::env::var("FANOUT_TEST_DENIED_SECRET").unwrap()),
            ],
            dest.clone(),
            "access denied",
        ),
    ];
    for (case, env, dest, expected) in cases {
        let mut command = fanout();
        command.current_dir(work.path()).args(base).args(["--output", &dest]);
        for (key, value) in env {
            command.env(key, value);
        }
        let ran = Ran::from(command.output().unwrap());
        assert_eq!(ran.code, 2, "{case}: {}", ran.stderr);
        assert_eq!(ran.stderr.lines().count(), 1, "{case}: one line, got {}", ran.stderr);
        assert!(ran.stderr.contains("output.dest") && ran.stderr.contains(expected), "{case}: {}", ran.stderr);
    }
    assert!(boto3_download(&format!("{prefix}out/"), work.path()).is_empty(), "nothing was written");
}

#[test]
// Ignored (the runner counts it as skipped) when no S3 test server was configured at
// build time; scripts/test starts one and runs it.
#[cfg_attr(not(fanout_s3_server), ignore = "needs the S3 test server: run scripts/test")]
fn a_large_prefix_is_listed_across_pages_and_planned() {
    let s3 = s3();
    let prefix = unique_prefix("large-prefix");
    const OBJECTS: usize = 10_500;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        use futures::{StreamExt, TryStreamExt};
        let location = fanout::location::Location::S3 { bucket: s3.bucket.clone(), prefix: prefix.clone() };
        let storage = fanout::storage::open(&location, &Default::default()).await.unwrap();
        futures::stream::iter(0..OBJECTS)
            .map(|i| {
                let storage = storage.clone();
                async move { storage.put(&format!("o{i:05}.txt"), bytes::Bytes::from(format!("{i}"))).await }
            })
            .buffer_unordered(64)
            .try_collect::<Vec<()>>()
            .await
            .unwrap();
    });
    let ran = run_in(
        &repo(),
        &[
            "plan",
            "--input",
            &s3_url(&s3, &prefix),
            "--function",
            "x.wasm",
            "--output",
            "/tmp/unused",
            "--shard",
            "objects=100",
        ],
    );
    ran.assert_code(0);
    assert!(
        ran.stdout.contains(&format!("105 shards (objects=100), {OBJECTS} objects")),
        "{}",
        ran.stdout.lines().last().unwrap()
    );
    let last = ran.stdout.lines().rev().nth(1).unwrap();
    assert!(last.starts_with("00104  100 objects") && last.ends_with("o10400.txt .. o10499.txt"), "{last}");
}

#[test]
// Ignored (the runner counts it as skipped) when no S3 test server was configured at
// build time; scripts/test starts one and runs it.
#[cfg_attr(not(fanout_s3_server), ignore = "needs the S3 test server: run scripts/test")]
fn killed_s3_job_resumes_without_redoing_committed_shards() {
    let s3 = s3();
    let work = tempfile::tempdir().unwrap();
    write_commands(&work.path().join("in"), "f", 80, "work 25");
    let prefix = unique_prefix("s3-resume");
    let dest = s3_url(&s3, &prefix);
    let wasm = function("misbehave");
    let args = ["run", "--input", "in", "--function", wasm.to_str().unwrap(), "--output", &dest];
    let mut child = fanout().current_dir(work.path()).args(args).arg("--quiet").spawn().unwrap();
    // wait for the first journal segment in S3, then SIGKILL
    eventually("a commit", std::time::Duration::from_secs(60), std::time::Duration::from_millis(50), || {
        let listed = boto3(
            "r = s3.list_objects_v2(Bucket=bucket, Prefix=sys.argv[1])\nprint(sum('/shards/' in o['Key'] for o in r.get('Contents', [])))",
            &[&prefix],
        );
        listed.trim() != "0"
    });
    child.kill().unwrap();
    child.wait().unwrap();
    let ran = run_in(work.path(), &[&args[..], &["--resume", "--json"]].concat());
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["shards"]["ok"], 80);
    assert!(summary["shards"]["skipped"].as_u64().unwrap() > 0);
    let back = tempfile::tempdir().unwrap();
    let keys = boto3_download(&prefix, back.path());
    let outputs: Vec<&String> = keys.iter().filter(|k| !k.starts_with("_fanout/")).collect();
    assert_eq!(outputs.len(), 80, "{outputs:?}");
    let job = std::fs::read_dir(back.path().join("_fanout")).unwrap().next().unwrap().unwrap().path();
    let mut ok: Vec<u64> =
        journal(&job).iter().filter(|r| r["status"] == "ok").map(|r| r["shard"].as_u64().unwrap()).collect();
    ok.sort();
    assert_eq!(ok, (0..80).collect::<Vec<u64>>(), "each shard committed exactly once");
}

#[test]
// Ignored (the runner counts it as skipped) when no S3 test server was configured at
// build time; scripts/test starts one and runs it.
#[cfg_attr(not(fanout_s3_server), ignore = "needs the S3 test server: run scripts/test")]
fn an_endpoint_given_for_s3_alone_is_used_with_path_style_addressing() {
    // As the AWS SDKs define it: AWS_ENDPOINT_URL_S3 applies to S3 only, and wins over
    // AWS_ENDPOINT_URL. The server is named by a host name, as a user's would be: in the
    // AWS default (virtual-host) style the client would look up `<bucket>.localhost`, so this
    // passes only if the S3 endpoint switches to path style too. (For an IP address the SDK
    // uses path style by itself.)
    let s3 = s3();
    let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap().replace("127.0.0.1", "localhost");
    assert!(endpoint.contains("localhost"), "{endpoint}");
    let work = tempfile::tempdir().unwrap();
    write_commands(&work.path().join("in"), "f", 3, "ok");
    let prefix = unique_prefix("s3-endpoint");
    let dest = s3_url(&s3, &prefix);
    let wasm = function("misbehave");
    let ran = fanout()
        .current_dir(work.path())
        .env_remove("AWS_ENDPOINT_URL")
        .env("AWS_ENDPOINT_URL_S3", &endpoint)
        .args(["run", "--input", "in", "--function", wasm.to_str().unwrap(), "--output", &dest, "--quiet"])
        .output()
        .unwrap();
    Ran::from(ran).assert_code(0);
    let outputs = boto3(
        "r = s3.list_objects_v2(Bucket=bucket, Prefix=sys.argv[1])\n\
         print(sorted(o['Key'].rsplit('/', 1)[1] for o in r.get('Contents', []) if '/_fanout/' not in o['Key']))",
        &[&prefix],
    );
    assert_eq!(outputs.trim(), "['f000.ok', 'f001.ok', 'f002.ok']");
    // A wrong global endpoint does not matter when the S3 one is right.
    let status = fanout()
        .current_dir(work.path())
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ENDPOINT_URL_S3", &endpoint)
        .args(["status", &dest])
        .output()
        .unwrap();
    let status = Ran::from(status);
    status.assert_code(0);
    assert!(status.stdout.contains("3 shards: 3 done"), "{}", status.stdout);
}
