//! A fanout function: for every file under /in, `/out/<path>.json` holding
//! `{"file": ..., "words": N, "lines": N, "bytes": N}`. Words are runs of non-whitespace,
//! lines are newline characters (as `wc -w` and `wc -l` count them). With nothing under
//! /in (record shards), it counts stdin, streamed, and prints one such JSON line on stdout.

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

fn main() -> std::process::ExitCode {
    let input = Path::new("/in");
    let mut files = Vec::new();
    if let Err(e) = walk(input, Path::new(""), &mut files) {
        eprintln!("wordcount: reading /in: {e}");
        return std::process::ExitCode::FAILURE;
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
