//! A shard's counts, and the `--merge` reduce that sums them.
//!
//! A shard summary is `{"records", "valid", "rejected", "duplicates", "errors_by_keyword",
//! "shard"}` with `records == valid + rejected + duplicates`: a duplicate (`--dedupe`) is
//! valid by the schema but dropped, so it is counted apart from the schema rejections.
//! The merge reads every `summaries/*.json` under /in, and also the results of a lower level
//! of a reduce tree (files named `NNNNN-<name>` holding a merged summary, told apart by their
//! `"shards"` field), so a tree of merges adds up to the same totals as one merge.

use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

/// Counts of one shard, or of many once merged.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Summary {
    pub shards: u64,
    pub records: u64,
    pub valid: u64,
    pub rejected: u64,
    pub duplicates: u64,
    /// BTreeMap so the JSON is the same from run to run.
    pub errors_by_keyword: BTreeMap<String, u64>,
    /// Keys that a later shard kept although an earlier shard had kept them too (merge only,
    /// with `--dedupe`).
    pub cross_shard_duplicates: u64,
}

impl Summary {
    pub fn count_keyword(&mut self, keyword: &str) {
        match self.errors_by_keyword.get_mut(keyword) {
            Some(n) => *n += 1,
            None => {
                self.errors_by_keyword.insert(keyword.to_string(), 1);
            }
        }
    }

    /// The JSON of one shard's summary.
    pub fn shard_json(&self, shard: u64) -> Value {
        json!({
            "shard": shard,
            "records": self.records,
            "valid": self.valid,
            "rejected": self.rejected,
            "duplicates": self.duplicates,
            "errors_by_keyword": self.errors_by_keyword,
        })
    }

    /// Adds a summary read from a file: a shard's (no `"shards"`: it counts as one shard) or a
    /// lower level's merge (its `"shards"` and `"cross_shard_duplicates"` are added).
    pub fn add_json(&mut self, v: &Value) -> Result<(), String> {
        let o = v.as_object().ok_or("not a JSON object")?;
        let num = |k: &str| -> Result<u64, String> {
            match o.get(k) {
                None => Ok(0),
                Some(x) => x.as_u64().ok_or_else(|| format!("\"{k}\" is not a count")),
            }
        };
        self.shards += if o.contains_key("shards") { num("shards")? } else { 1 };
        self.records += num("records")?;
        self.valid += num("valid")?;
        self.rejected += num("rejected")?;
        self.duplicates += num("duplicates")?;
        self.cross_shard_duplicates += num("cross_shard_duplicates")?;
        if let Some(m) = o.get("errors_by_keyword") {
            let m = m.as_object().ok_or("\"errors_by_keyword\" is not an object")?;
            for (k, n) in m {
                let n = n.as_u64().ok_or_else(|| format!("errors_by_keyword.{k} is not a count"))?;
                *self.errors_by_keyword.entry(k.clone()).or_insert(0) += n;
            }
        }
        Ok(())
    }
}

/// One key a later shard kept again, for the merge's report.
#[derive(Debug, Clone, PartialEq)]
pub struct CrossDuplicate {
    pub key: Value,
    pub shard: u64,
    pub line: u64,
    pub first_shard: u64,
    pub first_line: u64,
}

/// Most cross-shard duplicates listed in the merge's output (all are counted).
pub const MAX_LISTED: usize = 1000;

/// What `--merge` prints.
pub fn merged_json(total: &Summary, keys_seen: bool, listed: &[CrossDuplicate]) -> Value {
    let mut o = Map::new();
    o.insert("shards".into(), total.shards.into());
    o.insert("records".into(), total.records.into());
    o.insert("valid".into(), total.valid.into());
    o.insert("rejected".into(), total.rejected.into());
    o.insert("duplicates".into(), total.duplicates.into());
    o.insert("errors_by_keyword".into(), json!(total.errors_by_keyword));
    if keys_seen || total.cross_shard_duplicates > 0 {
        o.insert("cross_shard_duplicates".into(), total.cross_shard_duplicates.into());
        let list: Vec<Value> = listed
            .iter()
            .map(|d| {
                json!({"key": d.key, "shard": d.shard, "line": d.line,
                       "first_shard": d.first_shard, "first_line": d.first_line})
            })
            .collect();
        o.insert("cross_shard_duplicate_keys".into(), Value::Array(list));
    }
    Value::Object(o)
}

/// The shard number of a name like `part-00012.json` or `part-00012.jsonl`.
fn part_number(path: &Path) -> Option<u64> {
    let stem = path.file_stem()?.to_str()?;
    stem.strip_prefix("part-")?.parse().ok()
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            walk(&path, files)?;
        } else {
            files.push(path);
        }
    }
    Ok(())
}

fn under(path: &Path, root: &Path, folder: &str) -> bool {
    path.strip_prefix(root).map(|rel| rel.components().any(|c| c.as_os_str() == folder)).unwrap_or(false)
}

/// A lower level's result in a reduce tree: `NNNNN-<name>`.
fn is_lower_level(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    name.len() > 6 && name.as_bytes()[..5].iter().all(u8::is_ascii_digit) && name.as_bytes()[5] == b'-'
}

/// The `--merge` reduce over the folder `root` (/in): the merged summary's JSON.
pub fn merge(root: &Path) -> Result<Value, String> {
    let mut files = Vec::new();
    walk(root, &mut files).map_err(|e| format!("{}: {e}", root.display()))?;
    // Sorted so that "first" in a cross-shard duplicate is the lowest shard, run after run.
    files.sort_by_key(|p| (part_number(p), p.clone()));
    let mut total = Summary::default();
    let mut keys_seen = false;
    let mut first: HashMap<String, (u64, u64)> = HashMap::new();
    let mut listed = Vec::new();
    for path in &files {
        let summary = under(path, root, "summaries") && path.extension().is_some_and(|e| e == "json");
        let keys = under(path, root, "keys") && path.extension().is_some_and(|e| e == "jsonl");
        if !(summary || keys || is_lower_level(path)) {
            continue; // part files, rejected records: not the merge's business
        }
        let text = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        if keys {
            keys_seen = true;
            let shard = part_number(path).ok_or_else(|| format!("{}: not a part-NNNNN name", path.display()))?;
            for (i, line) in text.split(|&b| b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                let (line_no, key) =
                    parse_key_line(line).ok_or_else(|| format!("{}:{}: not a key line", path.display(), i + 1))?;
                let text_key = key.to_string();
                match first.get(&text_key) {
                    Some(&(s0, l0)) => {
                        total.cross_shard_duplicates += 1;
                        if listed.len() < MAX_LISTED {
                            listed.push(CrossDuplicate { key, shard, line: line_no, first_shard: s0, first_line: l0 });
                        }
                    }
                    None => {
                        first.insert(text_key, (shard, line_no));
                    }
                }
            }
            continue;
        }
        let v: Value = match serde_json::from_slice(&text) {
            Ok(v) => v,
            // A lower-level name that is not a summary is some other object: skip it.
            Err(_) if !summary => continue,
            Err(e) => return Err(format!("{}: not JSON: {e}", path.display())),
        };
        if !summary && !v.get("shards").is_some_and(Value::is_u64) {
            continue;
        }
        total.add_json(&v).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    Ok(merged_json(&total, keys_seen, &listed))
}

/// A line of `keys/part-NNNNN.jsonl`: `[line, key]`.
pub fn parse_key_line(line: &[u8]) -> Option<(u64, Value)> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let mut a = match v {
        Value::Array(a) if a.len() == 2 => a,
        _ => return None,
    };
    let key = a.pop()?;
    let n = a.pop()?.as_u64()?;
    Some((n, key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_shards_and_lower_levels() {
        let mut s = Summary::default();
        s.add_json(&json!({"records": 3, "valid": 2, "rejected": 1, "duplicates": 0,
                           "errors_by_keyword": {"type": 2}}))
            .unwrap();
        s.add_json(&json!({"shards": 4, "records": 10, "valid": 5, "rejected": 4, "duplicates": 1,
                           "errors_by_keyword": {"type": 1, "required": 3}, "cross_shard_duplicates": 2}))
            .unwrap();
        assert_eq!(s.shards, 5);
        assert_eq!(s.records, 13);
        assert_eq!(s.errors_by_keyword["type"], 3);
        assert_eq!(s.errors_by_keyword["required"], 3);
        assert_eq!(s.cross_shard_duplicates, 2);
        assert!(s.add_json(&json!({"records": -1})).is_err());
    }

    #[test]
    fn merges_a_folder() {
        let root = std::env::temp_dir().join(format!("validate-merge-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(root.join("summaries")).unwrap();
        std::fs::create_dir_all(root.join("keys")).unwrap();
        std::fs::create_dir_all(root.join("rejected")).unwrap();
        std::fs::write(
            root.join("summaries/part-00000.json"),
            r#"{"records":2,"valid":1,"rejected":1,"duplicates":0,"errors_by_keyword":{"parse":1}}"#,
        )
        .unwrap();
        std::fs::write(
            root.join("summaries/part-00001.json"),
            r#"{"records":3,"valid":3,"rejected":0,"duplicates":0,"errors_by_keyword":{}}"#,
        )
        .unwrap();
        std::fs::write(root.join("part-00000.jsonl"), "{\"records\": 99}\n").unwrap();
        std::fs::write(root.join("rejected/part-00000.jsonl"), "junk\n").unwrap();
        std::fs::write(root.join("keys/part-00000.jsonl"), "[1,\"a\"]\n[2,\"b\"]\n").unwrap();
        std::fs::write(root.join("keys/part-00001.jsonl"), "[1,\"b\"]\n[2,\"c\"]\n[3,7]\n").unwrap();
        let v = merge(&root).unwrap();
        assert_eq!(v["shards"], 2);
        assert_eq!(v["records"], 5);
        assert_eq!(v["valid"], 4);
        assert_eq!(v["errors_by_keyword"]["parse"], 1);
        assert_eq!(v["cross_shard_duplicates"], 1);
        assert_eq!(
            v["cross_shard_duplicate_keys"][0],
            json!({"key": "b", "shard": 1, "line": 1, "first_shard": 0, "first_line": 2})
        );
        // A lower level's result beside them adds up too.
        std::fs::write(root.join("00003-totals.json"), v.to_string()).unwrap();
        let w = merge(&root).unwrap();
        assert_eq!(w["shards"], 4);
        assert_eq!(w["records"], 10);
        assert_eq!(w["cross_shard_duplicates"], 2);
        std::fs::remove_dir_all(&root).unwrap();
    }
}
