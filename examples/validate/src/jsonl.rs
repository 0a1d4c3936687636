//! JSONL records: one JSON value a line, streamed, so a shard of any size needs only one
//! line in memory. Valid lines are copied out as they came (the bytes, not a re-serialized
//! value: key order, spacing and number spelling stay the user's).

use crate::shard::{Problem, Shard};
use serde_json::Value;
use std::io::{BufRead, Write};

/// The line without its terminator or surrounding blanks: a parsed record, embedded as JSON.
fn trimmed(line: &[u8]) -> &[u8] {
    line.trim_ascii()
}

/// The line without its terminator (`\n` or `\r\n`): a record that is not JSON, kept whole
/// so that whoever mends it has every byte.
fn unterminated(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

pub fn run(shard: &mut Shard, mut input: impl BufRead, out: &mut impl Write) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(1 << 12);
    let mut number = 0u64;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        number += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue; // blank lines are no records, but they still count as lines
        }
        shard.summary.records += 1;
        let value: Value = match serde_json::from_slice(&line) {
            Ok(v) => v,
            Err(e) => {
                // The record is the raw line as a JSON string (lossy if it is not UTF-8).
                let raw = String::from_utf8_lossy(unterminated(&line));
                let json = serde_json::to_vec(&raw)?;
                shard.summary.rejected += 1;
                shard.reject(&json, &[Problem::new("parse", "", format_args!("not JSON: {e}"))], number)?;
                continue;
            }
        };
        if let Some(problems) = shard.check(&value) {
            shard.summary.rejected += 1;
            // The line parsed, so it is JSON text already: embed it as it is.
            shard.reject(trimmed(&line), &problems, number)?;
            continue;
        }
        match shard.keep(&value, number)? {
            Err(first) => shard.duplicate(trimmed(&line), first, number)?,
            Ok(()) => {
                shard.summary.valid += 1;
                out.write_all(&line)?;
                // A last line with no newline gets one, so part files concatenate cleanly.
                if line.last() != Some(&b'\n') {
                    out.write_all(b"\n")?;
                }
            }
        }
    }
}
