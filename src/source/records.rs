//! Big files cut into record shards: byte ranges that end at record ends (newlines, but
//! not inside a quoted CSV field), N rows or about N bytes each, with a CSV's header
//! repeated before every shard. Reads only the bytes needed to find record ends.

use crate::job::ShardRule;
use crate::storage::{DynStorage, ObjectMeta, StorageError};

/// Bytes read at a time while scanning an object for record ends.
const SCAN_BLOCK: u64 = 8 << 20;

/// A CSV (or TSV) by its key's extension: its first record is a header.
pub fn is_csv(key: &str) -> bool {
    let name = key.rsplit('/').next().unwrap_or(key);
    let extension = name.rsplit_once('.').filter(|(stem, _)| !stem.is_empty()).map(|(_, e)| e.to_ascii_lowercase());
    matches!(extension.as_deref(), Some("csv") | Some("tsv"))
}

/// Cuts one object into record shards: `(start, end, header_len)` byte ranges.
pub async fn record_ranges(
    storage: &DynStorage,
    object: &ObjectMeta,
    rule: &ShardRule,
) -> Result<Vec<(u64, u64, u64)>, StorageError> {
    if object.size == 0 {
        return Ok(Vec::new());
    }
    let csv = is_csv(&object.key);
    let mut scanner = RecordScanner::new(csv);
    let mut ranges = Vec::new();
    match *rule {
        ShardRule::Rows { rows } => {
            // Scan the whole object once, cutting every `rows` records (the CSV header is
            // the first record and is repeated before every shard instead).
            let mut header = 0u64;
            let mut start = 0u64;
            let mut records_in_shard = 0u64;
            let mut offset = 0u64;
            while offset < object.size {
                let block = storage.get_range(&object.key, offset..offset + SCAN_BLOCK).await?;
                if block.is_empty() {
                    break;
                }
                for (i, &byte) in block.iter().enumerate() {
                    if scanner.ends_record(byte) {
                        let end = offset + i as u64 + 1;
                        if csv && header == 0 {
                            header = end;
                            start = end;
                            continue;
                        }
                        records_in_shard += 1;
                        if records_in_shard == rows {
                            ranges.push((start, end, header));
                            start = end;
                            records_in_shard = 0;
                        }
                    }
                }
                offset += block.len() as u64;
            }
            if csv && header == 0 {
                // Only a header (without a line end): no records, no shards.
                return Ok(Vec::new());
            }
            if start < object.size {
                ranges.push((start, object.size, header));
            }
        }
        ShardRule::Chunk { bytes, align_lines } => {
            let header = if csv && align_lines { first_line_end(storage, object).await? } else { 0 };
            let mut start = header;
            while start < object.size {
                let nominal = start.saturating_add(bytes).min(object.size);
                let end = if align_lines && nominal < object.size {
                    next_line_end(storage, object, nominal).await?
                } else {
                    nominal
                };
                ranges.push((start, end, header));
                start = end;
            }
        }
        _ => unreachable!("only record rules come here"),
    }
    Ok(ranges)
}

/// Finds record ends: newlines, except inside a quoted CSV field.
struct RecordScanner {
    csv: bool,
    in_quotes: bool,
}

impl RecordScanner {
    fn new(csv: bool) -> Self {
        RecordScanner { csv, in_quotes: false }
    }

    fn ends_record(&mut self, byte: u8) -> bool {
        if self.csv && byte == b'"' {
            // `""` inside quotes toggles twice: an escaped quote changes nothing.
            self.in_quotes = !self.in_quotes;
        }
        byte == b'\n' && !self.in_quotes
    }
}

async fn first_line_end(storage: &DynStorage, object: &ObjectMeta) -> Result<u64, StorageError> {
    let end = next_line_end(storage, object, 0).await?;
    Ok(end)
}

/// The offset just past the first newline at or after `from` (or the object's end).
async fn next_line_end(storage: &DynStorage, object: &ObjectMeta, from: u64) -> Result<u64, StorageError> {
    let mut offset = from;
    let mut window = 64 << 10;
    while offset < object.size {
        let block = storage.get_range(&object.key, offset..offset + window).await?;
        if block.is_empty() {
            break;
        }
        if let Some(i) = block.iter().position(|&b| b == b'\n') {
            return Ok(offset + i as u64 + 1);
        }
        offset += block.len() as u64;
        window = (window * 2).min(SCAN_BLOCK);
    }
    Ok(object.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_hide_newlines() {
        let mut scanner = RecordScanner::new(true);
        let text = b"a,\"x\ny\"\nb,\"\"\"\"\n";
        let ends: Vec<usize> =
            text.iter().enumerate().filter(|(_, &b)| scanner.ends_record(b)).map(|(i, _)| i).collect();
        assert_eq!(ends, vec![7, 14]);
    }

    #[test]
    fn csv_is_known_by_its_extension() {
        assert!(is_csv("data/big.CSV") && is_csv("t.tsv"));
        assert!(!is_csv("data.csv/part.jsonl") && !is_csv(".csv") && !is_csv("csv"));
    }
}
