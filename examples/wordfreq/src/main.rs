//! A fanout function for word frequencies. Words are maximal runs of bytes that are not
//! ASCII whitespace (Python's `bytes.split()`), counted as bytes: a word that is not valid
//! UTF-8 is written as its bytes.
//!
//! Map (no arguments): counts every word of every file under /in (or of stdin, for record
//! shards) and writes `/out/wordfreq/<shard>.csv`. Reduce (`--merge`): sums every such
//! table under /in and prints one. A table is CSV with the header `word,count`, sorted by
//! count descending then word (byte order); a word holding `,` or `"` is quoted.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

type Counts = HashMap<Vec<u8>, u64>;

fn count_words(data: &[u8], counts: &mut Counts) {
    for word in data.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()) {
        match counts.get_mut(word) {
            Some(n) => *n += 1,
            None => {
                counts.insert(word.to_vec(), 1);
            }
        }
    }
}

/// Counts a stream in blocks, carrying a word cut at a block's end into the next.
fn count_stream(mut reader: impl Read, counts: &mut Counts) -> std::io::Result<()> {
    let mut block = vec![0u8; 1 << 20];
    let mut carry: Vec<u8> = Vec::new();
    loop {
        let n = reader.read(&mut block)?;
        if n == 0 {
            count_words(&carry, counts);
            return Ok(());
        }
        let data = &block[..n];
        let cut = data.iter().rposition(|b| b.is_ascii_whitespace());
        match cut {
            Some(cut) => {
                carry.extend_from_slice(&data[..cut]);
                count_words(&carry, counts);
                carry.clear();
                carry.extend_from_slice(&data[cut..]);
            }
            None => carry.extend_from_slice(data),
        }
    }
}

fn write_table(counts: Counts, out: &mut impl Write) -> std::io::Result<()> {
    let mut rows: Vec<(Vec<u8>, u64)> = counts.into_iter().collect();
    rows.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let mut out = std::io::BufWriter::with_capacity(1 << 16, out);
    out.write_all(b"word,count\n")?;
    for (word, count) in rows {
        if word.iter().any(|&b| b == b',' || b == b'"') {
            out.write_all(b"\"")?;
            for &b in &word {
                if b == b'"' {
                    out.write_all(b"\"\"")?;
                } else {
                    out.write_all(&[b])?;
                }
            }
            out.write_all(b"\"")?;
        } else {
            out.write_all(&word)?;
        }
        writeln!(out, ",{count}")?;
    }
    out.flush()
}

/// Adds a table's rows to `counts`. The count is after the last comma; a quoted word has
/// its doubled quotes undone. Words hold no newline, so a row is one line.
fn merge_table(data: &[u8], counts: &mut Counts) -> Result<(), String> {
    let mut lines = data.split(|&b| b == b'\n');
    match lines.next() {
        Some(b"word,count") => {}
        _ => return Err("not a word,count table".into()),
    }
    for (number, line) in lines.enumerate() {
        if line.is_empty() {
            continue;
        }
        let comma = line.iter().rposition(|&b| b == b',').ok_or(format!("line {}: no count", number + 2))?;
        let count: u64 = std::str::from_utf8(&line[comma + 1..])
            .ok()
            .and_then(|text| text.parse().ok())
            .ok_or(format!("line {}: the count is not a number", number + 2))?;
        let field = &line[..comma];
        let word = if field.len() >= 2 && field[0] == b'"' && field[field.len() - 1] == b'"' {
            let inner = &field[1..field.len() - 1];
            let mut word = Vec::with_capacity(inner.len());
            let mut i = 0;
            while i < inner.len() {
                word.push(inner[i]);
                i += if inner[i] == b'"' && inner.get(i + 1) == Some(&b'"') { 2 } else { 1 };
            }
            word
        } else {
            field.to_vec()
        };
        *counts.entry(word).or_insert(0) += count;
    }
    Ok(())
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

fn run() -> Result<(), String> {
    let input = Path::new("/in");
    let mut files = Vec::new();
    walk(input, Path::new(""), &mut files).map_err(|e| format!("reading /in: {e}"))?;
    let merging = std::env::args().any(|arg| arg == "--merge");
    let mut counts = Counts::new();
    for file in &files {
        let path = input.join(file);
        if merging {
            let data = std::fs::read(&path).map_err(|e| format!("{}: {e}", file.display()))?;
            merge_table(&data, &mut counts).map_err(|e| format!("{}: {e}", file.display()))?;
        } else {
            let reader = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", file.display()))?;
            count_stream(reader, &mut counts).map_err(|e| format!("{}: {e}", file.display()))?;
        }
    }
    if merging {
        return write_table(counts, &mut std::io::stdout().lock()).map_err(|e| format!("writing stdout: {e}"));
    }
    if files.is_empty() {
        count_stream(std::io::stdin().lock(), &mut counts).map_err(|e| format!("reading stdin: {e}"))?;
        return write_table(counts, &mut std::io::stdout().lock()).map_err(|e| format!("writing stdout: {e}"));
    }
    let shard = std::env::var("FANOUT_SHARD").unwrap_or_else(|_| "0".into());
    std::fs::create_dir_all("/out/wordfreq").map_err(|e| format!("/out/wordfreq: {e}"))?;
    let target = format!("/out/wordfreq/{shard:0>5}.csv");
    let mut file = std::fs::File::create(&target).map_err(|e| format!("{target}: {e}"))?;
    write_table(counts, &mut file).map_err(|e| format!("{target}: {e}"))
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("wordfreq: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_table_round_trips_quotes_commas_and_raw_bytes() {
        let mut counts = Counts::new();
        count_words(b"a,b \"q\" a,b \xff\xfe zz\n", &mut counts);
        let mut table = Vec::new();
        write_table(counts.clone(), &mut table).unwrap();
        let mut back = Counts::new();
        merge_table(&table, &mut back).unwrap();
        assert_eq!(back, counts);
        assert!(table.starts_with(b"word,count\n\"a,b\",2\n"), "{}", String::from_utf8_lossy(&table));
    }

    #[test]
    fn a_word_across_blocks_is_one_word() {
        let data = vec![b'x'; (1 << 20) + 10];
        let mut counts = Counts::new();
        count_stream(&data[..], &mut counts).unwrap();
        assert_eq!(counts.len(), 1);
    }
}
