//! Record shards: rows of a CSV or JSONL object, and line-aligned byte chunks, fed on stdin;
//! each shard's stdout becomes `part-NNNNN<ext>`.

use crate::common::*;

fn parts(dest: &std::path::Path, ext: &str) -> Vec<serde_json::Value> {
    let mut names: Vec<String> = std::fs::read_dir(dest)
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().into_string().ok())
        .filter(|n| n.starts_with("part-") && n.ends_with(ext))
        .collect();
    names.sort();
    names.iter().map(|n| serde_json::from_slice(&std::fs::read(dest.join(n)).unwrap()).unwrap()).collect()
}

#[test]
fn csv_rows_repeat_the_header_and_keep_quoted_newlines_whole() {
    let work = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,comment\n");
    for i in 0..25 {
        // every fifth row has a newline inside a quoted field: still one record
        if i % 5 == 0 {
            csv.push_str(&format!("{i},\"two\nlines\"\n"));
        } else {
            csv.push_str(&format!("{i},plain words here\n"));
        }
    }
    write_files(work.path(), &[("table.csv", &csv)]);
    let wasm = function("wordcount");
    run_in(
        work.path(),
        &["run", "--input", "table.csv", "--function", wasm.to_str().unwrap(), "--output", "out", "--shard", "rows=10"],
    )
    .assert_code(0);
    let parts = parts(&work.path().join("out"), ".csv");
    assert_eq!(parts.len(), 3, "25 rows in shards of 10");
    let header = "id,comment\n".len() as u64;
    let total_bytes: u64 = parts.iter().map(|p| p["bytes"].as_u64().unwrap() - header).sum();
    assert_eq!(total_bytes, csv.len() as u64 - header, "every byte once, plus a header per shard");
    // 10 rows + header, two of them two lines long
    assert_eq!(parts[0]["lines"], 1 + 10 + 2);
    assert_eq!(parts[2]["lines"], 1 + 5 + 1);
}

#[test]
fn line_aligned_chunks_cover_the_object_exactly_once() {
    let work = tempfile::tempdir().unwrap();
    let text: String = (0..5000).map(|i| format!("{{\"n\": {i}, \"words\": \"alpha beta gamma\"}}\n")).collect();
    write_files(work.path(), &[("events.jsonl", &text)]);
    let wasm = function("wordcount");
    run_in(
        work.path(),
        &[
            "run",
            "--input",
            "events.jsonl",
            "--function",
            wasm.to_str().unwrap(),
            "--output",
            "out",
            "--shard",
            "chunk=16KiB",
        ],
    )
    .assert_code(0);
    let parts = parts(&work.path().join("out"), ".jsonl");
    assert!(parts.len() >= 10, "{} chunks", parts.len());
    assert_eq!(parts.iter().map(|p| p["lines"].as_u64().unwrap()).sum::<u64>(), 5000, "no line lost or cut");
    assert_eq!(parts.iter().map(|p| p["bytes"].as_u64().unwrap()).sum::<u64>(), text.len() as u64);
    assert_eq!(
        parts.iter().map(|p| p["words"].as_u64().unwrap()).sum::<u64>(),
        text.split_ascii_whitespace().count() as u64
    );
}
