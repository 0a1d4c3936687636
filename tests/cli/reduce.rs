//! `[reduce]`: word frequencies and totals merged by a tree of reduces, checked by an
//! independent Python script; `concat = true` in shard order; a failing reduce fails the job.

use crate::common::*;
use std::path::Path;

/// A corpus of `files` text files with words that need care: commas, quotes, bytes that
/// are not UTF-8, tabs and CRs between words, a file without a final newline.
pub fn corpus(dir: &Path, files: usize) {
    let words: [&[u8]; 12] = [
        b"alpha",
        b"beta",
        b"a,b",
        b"\"quoted\"",
        b"caf\xc3\xa9",
        b"\xff\xferaw",
        b"x",
        b"y,\"z",
        b"The",
        b"the",
        b"end.",
        b"42",
    ];
    let mut state = 7u64;
    for f in 0..files {
        let mut text = Vec::new();
        for w in 0..(50 + f * 13 % 200) {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            text.extend_from_slice(words[(state >> 33) as usize % words.len()]);
            text.extend_from_slice(match w % 7 {
                0 => b"\n",
                1 => b"\t",
                2 => b" \r\n",
                _ => b" ",
            });
        }
        if f % 5 == 0 {
            text.extend_from_slice(b"last-word-no-newline");
        }
        std::fs::write(dir.join(format!("doc{f:03}.txt")), text).unwrap();
    }
}

pub fn check_words(mode: &str, corpus: &Path, result: &Path) {
    if let Err(difference) = words_agree(mode, corpus, result) {
        panic!("check-words {mode}: {difference}");
    }
}

/// scripts/check-words on `result`: Ok, or what differs.
pub fn words_agree(mode: &str, corpus: &Path, result: &Path) -> Result<(), String> {
    let output = std::process::Command::new(repo().join("scripts/check-words"))
        .args([mode, corpus.to_str().unwrap(), result.to_str().unwrap()])
        .output()
        .expect("python3");
    match output.status.success() {
        true => Ok(()),
        false => Err(format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))),
    }
}

#[test]
fn word_frequencies_reduce_in_a_tree_and_agree_with_python() {
    let dir = tempfile::tempdir().unwrap();
    let (input, dest) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir(&input).unwrap();
    corpus(&input, 30);
    let args = [
        "run",
        "jobs/wordfreq.toml",
        "--input",
        input.to_str().unwrap(),
        "--output",
        dest.to_str().unwrap(),
        "--shard",
        "object",
        "--fan-in",
        "3",
        "--json",
    ];
    let ran = run_in(&repo(), &args);
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    // 30 tables -> 10 -> 4 -> 2 -> 1.
    assert_eq!(summary["reduce"]["levels"], 4, "{summary}");
    assert_eq!(summary["reduce"]["invocations"], 17, "{summary}");
    check_words("freq", &input, &dest.join("frequencies.csv"));
    // Intermediate results stay in the manifest, never beside the outputs.
    let job = job_dir(&dest);
    assert!(job.join("reduce/L1/00009-frequencies.csv").is_file());
    let rows = report(&job);
    let reduce_rows: Vec<_> = rows.iter().filter(|r| r["stage"] == "reduce").collect();
    assert_eq!(reduce_rows.len(), 17);
    assert!(reduce_rows.iter().all(|r| r["status"] == "ok"));
    assert_eq!(rows.iter().filter(|r| r["stage"] == "map").count(), 30);
    // The timeline draws the reduce invocations on a lane per level, after the map.
    let svg_path = dir.path().join("timeline.svg");
    run_in(&repo(), &["report", dest.to_str().unwrap(), "--plot", svg_path.to_str().unwrap()]).assert_code(0);
    let text = std::fs::read_to_string(&svg_path).unwrap();
    let svg = roxmltree::Document::parse(&text).expect("the plot is well-formed XML");
    let reduce_boxes = svg.descendants().filter(|n| n.attribute("data-stage") == Some("reduce")).count();
    assert_eq!(reduce_boxes, 17);
    let lanes: Vec<&str> = svg.descendants().filter_map(|n| n.attribute("data-workers")).collect();
    assert_eq!(lanes.iter().filter(|w| w.starts_with("reduce-L")).count(), 4, "{lanes:?}");

    // Resumed: every map shard and every reduce invocation is already done.
    let mut resumed = args.to_vec();
    resumed.insert(2, "--resume");
    let ran = run_in(&repo(), &resumed);
    ran.assert_code(0);
    let summary: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(summary["reduce"]["skipped"], 17, "{summary}");
    assert_eq!(summary["shards"]["skipped"], 30, "{summary}");
    check_words("freq", &input, &dest.join("frequencies.csv"));
}

#[test]
fn word_count_totals_agree_with_python() {
    let dir = tempfile::tempdir().unwrap();
    let (input, dest) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir(&input).unwrap();
    corpus(&input, 12);
    let ran = run_in(
        &repo(),
        &[
            "run",
            "jobs/wordcount.toml",
            "--input",
            input.to_str().unwrap(),
            "--output",
            dest.to_str().unwrap(),
            "--fan-in",
            "2",
        ],
    );
    ran.assert_code(0);
    assert!(ran.stdout.contains("reduce:"), "{}", ran.stdout);
    check_words("totals", &input, &dest.join("totals.json"));
}

#[test]
fn concat_joins_record_outputs_in_shard_order() {
    let dir = tempfile::tempdir().unwrap();
    let (input, dest) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir(&input).unwrap();
    let lines: String = (0..1000).map(|i| format!("{{\"n\": {i}, \"text\": \"{}\"}}\n", "w ".repeat(i % 17))).collect();
    std::fs::write(input.join("events.jsonl"), &lines).unwrap();
    let ran = run_in(
        &repo(),
        &[
            "run",
            "--input",
            input.join("events.jsonl").to_str().unwrap(),
            "--shard",
            "rows=37",
            "--function",
            function("wordcount").to_str().unwrap(),
            "--output",
            dest.to_str().unwrap(),
            "--reduce-concat",
            "--reduce-output",
            "all-counts.jsonl",
        ],
    );
    ran.assert_code(0);
    let mut parts: Vec<_> = std::fs::read_dir(&dest)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("part-"))
        .collect();
    parts.sort();
    assert_eq!(parts.len(), 28);
    let expected: Vec<u8> = parts.iter().flat_map(|p| std::fs::read(dest.join(p)).unwrap()).collect();
    let joined = std::fs::read(dest.join("all-counts.jsonl")).unwrap();
    assert_eq!(joined, expected);
    // Each line is one shard's count, in shard order: the first shard holds lines 0..37.
    let first: serde_json::Value = serde_json::from_slice(joined.split(|&b| b == b'\n').next().unwrap()).unwrap();
    let words: usize = (0..37).map(|i| 4 + i % 17).sum();
    assert_eq!(first["words"], words);
}

#[test]
fn a_failing_reduce_fails_the_job_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let (input, dest) = (dir.path().join("in"), dir.path().join("out"));
    std::fs::create_dir(&input).unwrap();
    corpus(&input, 4);
    // wordcount's JSON is not the table wordfreq --merge reads.
    let ran = run_in(
        &repo(),
        &[
            "run",
            "jobs/wordcount.toml",
            "--input",
            input.to_str().unwrap(),
            "--output",
            dest.to_str().unwrap(),
            "--reduce",
            "examples/wordfreq",
        ],
    );
    ran.assert_code(1);
    assert!(ran.stdout.contains("reduce failed: L1-00000") && ran.stdout.contains("exit"), "{}", ran.stdout);
    assert!(!dest.join("totals.json").exists());
    let rows = report(&job_dir(&dest));
    let row = rows.iter().find(|r| r["stage"] == "reduce").unwrap();
    assert_eq!(row["status"], "failed");
    assert_eq!(row["attempts"], "3");
    let log = std::fs::read_to_string(job_dir(&dest).join("logs/reduce-L1-00000.txt")).unwrap();
    assert!(log.contains("not a word,count table"), "{log}");
}

#[test]
fn reduce_fields_are_checked_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("bad.toml");
    std::fs::write(
        &job,
        "[input]\nsource = \"in\"\n[function]\nwasm = \"f.wasm\"\n[output]\ndest = \"out\"\n[reduce]\nwasm = \"r.wasm\"\nfan_in = 1\noutput = \"t.json\"\n",
    )
    .unwrap();
    let ran = run_in(dir.path(), &["run", job.to_str().unwrap()]);
    ran.assert_code(2);
    assert!(ran.stderr.contains("bad.toml:9") && ran.stderr.contains("reduce.fan_in"), "{}", ran.stderr);
    std::fs::write(
        &job,
        "[input]\nsource = \"in\"\n[function]\nwasm = \"f.wasm\"\n[output]\ndest = \"out\"\n[reduce]\nwasm = \"r.wasm\"\n",
    )
    .unwrap();
    let ran = run_in(dir.path(), &["run", job.to_str().unwrap()]);
    ran.assert_code(2);
    assert!(ran.stderr.contains("reduce.output"), "{}", ran.stderr);
    assert!(!dir.path().join("out").exists());
}

#[test]
#[cfg_attr(not(fanout_s3_server), ignore = "needs the S3 test server: run scripts/test")]
fn concat_in_s3_copies_large_outputs_server_side_and_gathers_small_ones() {
    let s3 = s3();
    let prefix = unique_prefix("concat");
    let dir = tempfile::tempdir().unwrap();
    // One record per line, of mixed sizes, shard by shard: an output of 5 MiB or more is
    // copied (UploadPartCopy), smaller ones are gathered into parts of 5 MiB; a pseudo-random
    // fill shows any misplaced byte.
    let sizes: [usize; 6] = [6 << 20, 100, 3 << 20, 3 << 20, 12 << 20, 10];
    let mut expected = Vec::new();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    for size in sizes {
        expected.extend((1..size).map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b'a' + (state % 26) as u8
        }));
        expected.push(b'\n');
    }
    let input = dir.path().join("lines.txt");
    std::fs::write(&input, &expected).unwrap();
    let dest = format!("s3://{}/{prefix}out/", s3.bucket);
    let ran = run_in(
        &repo(),
        &[
            "run",
            "--input",
            input.to_str().unwrap(),
            "--shard",
            "rows=1",
            "--function",
            function("copy").to_str().unwrap(),
            "--output",
            &dest,
            "--reduce-concat",
            "--reduce-output",
            "all.bin",
        ],
    );
    ran.assert_code(0);
    let back = tempfile::tempdir().unwrap();
    boto3_download(&format!("{prefix}out/"), back.path());
    let joined = std::fs::read(back.path().join("all.bin")).unwrap();
    assert_eq!(report(&job_dir(back.path())).iter().filter(|row| row["stage"] == "map").count(), 6);
    assert!(joined == expected, "all.bin is not the six parts joined in order");
    // The layout: the first copied; the second, third and 2 MiB of the fourth gathered; the
    // rest of the fourth and 4 MiB of the fifth gathered; the fifth's rest copied; the
    // sixth alone as the last part.
    let parts = boto3(
        "print(s3.head_object(Bucket=bucket, Key=sys.argv[1], PartNumber=1)['PartsCount'])",
        &[&format!("{prefix}out/all.bin")],
    );
    assert_eq!(parts.trim(), "5");
}
