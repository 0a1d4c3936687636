//! A fanout function: for every file under /in, `/out/<path>.json` holding
//! `{"file": ..., "words": N, "lines": N, "bytes": N}`. Words are runs of bytes that are
//! not ASCII whitespace (Python's `bytes.split()`), lines are newline bytes. With nothing
//! under /in (record shards), it counts stdin, streamed, and prints one such JSON line.
//!
//! `--merge` is its reduce: every file under /in holds such counts (one JSON object per
//! line; a merged total counts its `files`, a per-file count is one file), and it prints
//! their sums as `{"files": N, "words": W, "lines": L, "bytes": B}`.

use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Default)]
struct Counts {
    words: u64,
    lines: u64,
    bytes: u64,
    in_word: bool,
}

impl Counts {
    /// Counts a block; blocks may split words and lines anywhere.
    fn add(&mut self, data: &[u8]) {
        for &byte in data {
            let space = byte.is_ascii_whitespace();
            if !space && !self.in_word {
                self.words += 1;
            }
            self.in_word = !space;
            self.lines += (byte == b'\n') as u64;
        }
        self.bytes += data.len() as u64;
    }
}

fn count(data: &[u8]) -> Counts {
    let mut counts = Counts::default();
    counts.add(data);
    counts
}

fn json(file: &str, counts: &Counts) -> String {
    let escaped: String = file
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c if (c as u32) < 0x20 => format!("\\u{:04x}", c as u32).chars().collect(),
            c => vec![c],
        })
        .collect();
    format!(
        "{{\"file\":\"{escaped}\",\"words\":{},\"lines\":{},\"bytes\":{}}}",
        counts.words, counts.lines, counts.bytes
    )
}

fn walk(dir: &Path, relative: &Path, found: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let rel = relative.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            walk(&entry.path(), &rel, found)?;
        } else {
            found.push(rel);
        }
    }
    Ok(())
}

/// The number after `"name":` in a flat JSON object of counts (0 when absent).
fn field(line: &str, name: &str) -> Result<u64, String> {
    let Some(at) = line.find(&format!("\"{name}\":")) else { return Ok(0) };
    let rest = line[at + name.len() + 3..].trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().map_err(|_| format!("\"{name}\" is not a count"))
}

fn merge(input: &Path, files: &[PathBuf]) -> std::process::ExitCode {
    let (mut total_files, mut words, mut lines, mut bytes) = (0u64, 0u64, 0u64, 0u64);
    for file in files {
        let text = match std::fs::read_to_string(input.join(file)) {
            Ok(text) => text,
            Err(e) => {
                eprintln!("wordcount --merge: {}: {e}", file.display());
                return std::process::ExitCode::FAILURE;
            }
        };
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let counts = (|| Ok::<_, String>((field(line, "files")?, field(line, "words")?, field(line, "lines")?, field(line, "bytes")?)))();
            match counts {
                Ok((f, w, l, b)) => {
                    total_files += if line.contains("\"files\":") { f } else { 1 };
                    words += w;
                    lines += l;
                    bytes += b;
                }
                Err(e) => {
                    eprintln!("wordcount --merge: {}: {e}", file.display());
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
    }
    println!("{{\"files\": {total_files}, \"words\": {words}, \"lines\": {lines}, \"bytes\": {bytes}}}");
    std::process::ExitCode::SUCCESS
}

fn main() -> std::process::ExitCode {
    let input = Path::new("/in");
    let mut files = Vec::new();
    if let Err(e) = walk(input, Path::new(""), &mut files) {
        eprintln!("wordcount: reading /in: {e}");
        return std::process::ExitCode::FAILURE;
    }
    if std::env::args().any(|arg| arg == "--merge") {
        return merge(input, &files);
    }
    if files.is_empty() {
        // Streamed in blocks: stdin may be far larger than the guest's memory.
        let mut counts = Counts::default();
        let mut block = vec![0u8; 64 << 10];
        let mut stdin = std::io::stdin().lock();
        loop {
            match stdin.read(&mut block) {
                Ok(0) => break,
                Ok(n) => counts.add(&block[..n]),
                Err(e) => {
                    eprintln!("wordcount: reading stdin: {e}");
                    return std::process::ExitCode::FAILURE;
                }
            }
        }
        println!("{}", json("-", &counts));
        return std::process::ExitCode::SUCCESS;
    }
    for file in files {
        let data = match std::fs::read(input.join(&file)) {
            Ok(data) => data,
            Err(e) => {
                eprintln!("wordcount: {}: {e}", file.display());
                return std::process::ExitCode::FAILURE;
            }
        };
        let name = file.to_string_lossy();
        let target = Path::new("/out").join(format!("{name}.json"));
        if let Some(parent) = target.parent() {
            let _ = std::fs::create_dir_all(parent);
        }
        if let Err(e) = std::fs::write(&target, json(&name, &count(&data))) {
            eprintln!("wordcount: {}: {e}", target.display());
            return std::process::ExitCode::FAILURE;
        }
    }
    std::process::ExitCode::SUCCESS
}
