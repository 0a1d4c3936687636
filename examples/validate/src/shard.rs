//! What a shard's records go through once parsed: the schema check, `--dedupe`, and where
//! each record ends up (valid output, rejected file, summary, kept keys). Shared by the
//! JSONL and CSV readers so both count and write the same way.

use crate::summary::Summary;
use jsonschema::Validator;
use serde_json::Value;
use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

/// One error of a record: its keyword (for `errors_by_keyword`) and `"<path>: <message>"`.
pub struct Problem {
    pub keyword: &'static str,
    pub text: String,
}

impl Problem {
    /// `path` is a JSON pointer; the root is written `/` so every message starts with `/`.
    pub fn new(keyword: &'static str, path: &str, message: impl std::fmt::Display) -> Problem {
        let path = if path.is_empty() { "/" } else { path };
        Problem { keyword, text: format!("{path}: {message}") }
    }
}

/// Keywords as `'static` strings, so counting them costs no allocation; a keyword outside
/// this list (a custom one) is counted as "other".
fn static_keyword(k: &str) -> &'static str {
    const KNOWN: &[&str] = &[
        "additionalItems",
        "additionalProperties",
        "anyOf",
        "pattern",
        "const",
        "contains",
        "contentEncoding",
        "contentMediaType",
        "dependentRequired",
        "dependentSchemas",
        "enum",
        "exclusiveMaximum",
        "exclusiveMinimum",
        "falseSchema",
        "format",
        "maxItems",
        "maximum",
        "maxLength",
        "maxProperties",
        "minItems",
        "minimum",
        "minLength",
        "minProperties",
        "multipleOf",
        "not",
        "oneOf",
        "propertyNames",
        "required",
        "type",
        "unevaluatedItems",
        "unevaluatedProperties",
        "uniqueItems",
        "$ref",
        "$dynamicRef",
        "items",
        "prefixItems",
        "if",
        "then",
        "else",
        "allOf",
        "dependencies",
    ];
    KNOWN.iter().find(|&&x| x == k).copied().unwrap_or("other")
}

/// The `--dedupe` state: the first line each key value was kept at.
pub struct Dedupe {
    pub field: String,
    seen: HashMap<String, u64>,
    keys_out: Option<BufWriter<File>>,
}

impl Dedupe {
    pub fn new(field: String) -> Dedupe {
        Dedupe { field, seen: HashMap::new(), keys_out: None }
    }
}

pub struct Shard {
    pub validator: Validator,
    pub summary: Summary,
    pub number: u64,
    /// Where `/out` is (a folder of the host when run natively for tests).
    pub out_dir: PathBuf,
    pub dedupe: Option<Dedupe>,
    /// Opened on the first rejected record: a shard with none writes no rejected file.
    rejected: Option<BufWriter<File>>,
}

impl Shard {
    pub fn new(validator: Validator, number: u64, out_dir: PathBuf, dedupe: Option<String>) -> Shard {
        Shard {
            validator,
            summary: Summary::default(),
            number,
            out_dir,
            dedupe: dedupe.map(Dedupe::new),
            rejected: None,
        }
    }

    fn create(&self, folder: &str, ext: &str) -> std::io::Result<BufWriter<File>> {
        let dir = self.out_dir.join(folder);
        std::fs::create_dir_all(&dir)?;
        let f = File::create(dir.join(format!("part-{:05}{ext}", self.number)))?;
        Ok(BufWriter::with_capacity(1 << 16, f))
    }

    /// The schema's errors of a record, or None when it is valid. `is_valid` first: it
    /// stops at the first failure and builds no error, and most records are valid.
    pub fn check(&self, record: &Value) -> Option<Vec<Problem>> {
        if self.validator.is_valid(record) {
            return None;
        }
        let problems: Vec<Problem> = self
            .validator
            .iter_errors(record)
            .map(|e| Problem::new(static_keyword(e.kind().keyword()), e.instance_path().as_str(), &e))
            .collect();
        // is_valid and iter_errors agree, but never let a record through with no reason.
        if problems.is_empty() {
            return Some(vec![Problem::new("other", "", "invalid")]);
        }
        Some(problems)
    }

    /// A valid record: with `--dedupe`, Err(first line) when its key was kept before, else
    /// Ok (and its key is remembered and written to `/out/keys/`).
    pub fn keep(&mut self, record: &Value, line: u64) -> std::io::Result<Result<(), u64>> {
        let Some(d) = self.dedupe.as_mut() else { return Ok(Ok(())) };
        // A record with no such field (or null there) has no key: never a duplicate.
        let key = match record.get(&d.field) {
            None | Some(Value::Null) => return Ok(Ok(())),
            Some(k) => k,
        };
        let text = key.to_string();
        if let Some(&first) = d.seen.get(&text) {
            return Ok(Err(first));
        }
        if d.keys_out.is_none() {
            let dir = self.out_dir.join("keys");
            std::fs::create_dir_all(&dir)?;
            let f = File::create(dir.join(format!("part-{:05}.jsonl", self.number)))?;
            d.keys_out = Some(BufWriter::with_capacity(1 << 16, f));
        }
        let out = d.keys_out.as_mut().expect("opened above");
        writeln!(out, "[{line},{text}]")?;
        d.seen.insert(text, line);
        Ok(Ok(()))
    }

    /// Writes a rejected record: `record_json` is already JSON text.
    pub fn reject(&mut self, record_json: &[u8], problems: &[Problem], line: u64) -> std::io::Result<()> {
        for p in problems {
            self.summary.count_keyword(p.keyword);
        }
        if self.rejected.is_none() {
            self.rejected = Some(self.create("rejected", ".jsonl")?);
        }
        let out = self.rejected.as_mut().expect("opened above");
        let texts: Vec<&str> = problems.iter().map(|p| p.text.as_str()).collect();
        out.write_all(b"{\"record\":")?;
        out.write_all(record_json)?;
        out.write_all(b",\"errors\":")?;
        serde_json::to_writer(&mut *out, &texts)?;
        writeln!(out, ",\"line\":{line}}}")?;
        Ok(())
    }

    /// The duplicate of a record kept at line `first`.
    pub fn duplicate(&mut self, record_json: &[u8], first: u64, line: u64) -> std::io::Result<()> {
        let field = self.dedupe.as_ref().map(|d| d.field.clone()).unwrap_or_default();
        let p = Problem::new(
            "duplicate",
            &format!("/{}", escape_pointer(&field)),
            format_args!("duplicate of line {first}"),
        );
        self.summary.duplicates += 1;
        self.reject(record_json, &[p], line)
    }

    /// Flushes the rejected and keys files and writes `/out/summaries/part-NNNNN.json`.
    pub fn finish(mut self) -> std::io::Result<()> {
        if let Some(mut r) = self.rejected.take() {
            r.flush()?;
        }
        if let Some(d) = self.dedupe.as_mut() {
            if let Some(mut k) = d.keys_out.take() {
                k.flush()?;
            }
        }
        let mut out = self.create("summaries", ".json")?;
        serde_json::to_writer(&mut out, &self.summary.shard_json(self.number))?;
        out.write_all(b"\n")?;
        out.flush()
    }
}

/// A JSON pointer segment (RFC 6901): `~` as `~0`, `/` as `~1`.
pub fn escape_pointer(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}
