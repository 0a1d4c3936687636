//! The job: a job file (`jobs/*.toml`) and CLI flags merged into one resolved, validated
//! [`Job`]. Owns the strict schema, the defaults and the error texts that point at the
//! file, line and field. It reads the job file and nothing else: it never lists inputs,
//! opens storage or loads the function (a glob that matches nothing is found by `plan`).

use crate::location::Location;
use crate::units::{self, Tolerance};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;
use toml::Spanned;

/// Defaults a job gets for every field the user leaves out.
pub mod defaults {
    pub const TIMEOUT: &str = "60s";
    pub const MEMORY: &str = "256MiB";
    pub const IDLE: &str = "1s";
    pub const ATTEMPTS: u32 = 3;
    pub const BACKOFF: &str = "200ms";
    pub const TOLERATED: &str = "0%";
    /// Per shard: more output files than this fails the shard (a guard against runaway guests).
    pub const MAX_FILES: u64 = 4096;
    /// Per shard: more output bytes than this fails the shard.
    pub const MAX_BYTES: &str = "4GiB";
    /// A guest may not ask for more linear memory than this, whatever the job says.
    pub const MEMORY_CEILING: u64 = 4 << 30;
    /// The hard limit of a relative timeout (`timeout = "200%"`), and the limit before
    /// enough shards have finished to know the median.
    pub const TIMEOUT_CAP: &str = "1h";
    /// Backup attempts for stragglers: on, once this share of the shards is done...
    pub const BACKUP_AFTER: &str = "90%";
    /// ...for attempts slower than this many times the median of finished shards.
    pub const BACKUP_FACTOR: f64 = 3.0;
}

/// How a source is cut into shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "per")]
pub enum ShardRule {
    /// One object, one shard.
    Object,
    /// Up to `count` objects a shard, in listing order.
    Objects { count: u64 },
    /// Objects grouped until a shard holds about `bytes` (an object larger alone is one shard).
    Bytes { bytes: u64 },
    /// Records of a CSV/JSONL/text object, `rows` a shard (a CSV shard repeats the header).
    Rows { rows: u64 },
    /// Byte ranges of one object, `bytes` long, cut at line ends when `align_lines`.
    Chunk { bytes: u64, align_lines: bool },
}

impl ShardRule {
    /// Parses the flag form: `object`, `objects=16`, `bytes=64MiB`, `rows=10000`, `chunk=64MiB`.
    pub fn parse_flag(text: &str) -> Result<Self, String> {
        let (kind, value) = text.split_once('=').unwrap_or((text, ""));
        let count = |v: &str| -> Result<u64, String> {
            match v.trim().parse::<u64>() {
                Ok(0) => Err(format!("\"{text}\": the count must be at least 1")),
                Ok(n) => Ok(n),
                Err(_) => Err(format!("\"{text}\": \"{v}\" is not a positive whole number")),
            }
        };
        let size = |v: &str| -> Result<u64, String> {
            match units::parse_size(v)? {
                0 => Err(format!("\"{text}\": the size must be at least 1 byte")),
                n => Ok(n),
            }
        };
        match kind.trim() {
            "object" if value.is_empty() => Ok(ShardRule::Object),
            "objects" => Ok(ShardRule::Objects { count: count(value)? }),
            "bytes" => Ok(ShardRule::Bytes { bytes: size(value)? }),
            "rows" => Ok(ShardRule::Rows { rows: count(value)? }),
            "chunk" => Ok(ShardRule::Chunk { bytes: size(value)?, align_lines: true }),
            _ => {
                Err(format!("\"{text}\" is not a shard rule (use object, objects=N, bytes=SIZE, rows=N or chunk=SIZE)"))
            }
        }
    }

    /// Record rules read one object's bytes and feed them on stdin.
    pub fn is_record_rule(&self) -> bool {
        matches!(self, ShardRule::Rows { .. } | ShardRule::Chunk { .. })
    }
}

impl std::fmt::Display for ShardRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShardRule::Object => write!(f, "object"),
            ShardRule::Objects { count } => write!(f, "objects={count}"),
            ShardRule::Bytes { bytes } => write!(f, "bytes={}", units::format_size(*bytes)),
            ShardRule::Rows { rows } => write!(f, "rows={rows}"),
            ShardRule::Chunk { bytes, align_lines } => {
                write!(f, "chunk={}", units::format_size(*bytes))?;
                if !align_lines {
                    write!(f, ",align=none")?;
                }
                Ok(())
            }
        }
    }
}

/// The resolved job: every default filled in, every string parsed. This is the only job
/// type that planning, the pool and the runtime receive; it is stored as `job.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Job {
    pub name: String,
    pub input: Input,
    pub function: Function,
    pub output: Output,
    pub workers: Workers,
    pub retry: Retry,
    #[serde(default)]
    pub stragglers: Stragglers,
}

/// Backup attempts for slow shards at the end of a job (as in MapReduce's backup tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stragglers {
    pub backup: bool,
    /// Backups start once this share (0-1) of the shards is done.
    pub after: f64,
    /// A running attempt slower than this many times the median of finished shards is a straggler.
    pub factor: f64,
}

impl Default for Stragglers {
    fn default() -> Self {
        Stragglers { backup: true, after: 0.9, factor: defaults::BACKUP_FACTOR }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub source: Location,
    /// Globs on keys relative to the source; empty means every object.
    pub include: Vec<String>,
    pub shard: ShardRule,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Function {
    /// A .wasm file, an example crate folder, or an s3:// object.
    pub wasm: Location,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// The hard per-invocation limit (with a relative timeout: its cap).
    pub timeout_ms: u64,
    /// `timeout = "200%"`: stop an attempt that runs longer than this percentage of the
    /// median duration of the shards finished so far (never sooner than one second).
    #[serde(default)]
    pub relative_timeout_percent: Option<f64>,
    pub memory_bytes: u64,
}

impl Function {
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub dest: Location,
    pub max_files: u64,
    pub max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workers {
    /// At least 1: a `max = 0` in the file means the number of cores.
    pub max: usize,
    pub idle_ms: u64,
}

impl Workers {
    pub fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    /// Attempts a shard gets in all, at least 1.
    pub attempts: u32,
    pub backoff_ms: u64,
    pub tolerated: Tolerance,
}

impl Retry {
    pub fn backoff(&self) -> Duration {
        Duration::from_millis(self.backoff_ms)
    }
}

/// What the user typed on the command line, before validation. `None` leaves the job
/// file's field (or its default) alone.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub name: Option<String>,
    pub input: Option<String>,
    pub include: Vec<String>,
    pub shard: Option<String>,
    pub function: Option<String>,
    pub extra_args: Vec<String>,
    pub timeout: Option<String>,
    pub memory: Option<String>,
    pub env: Vec<String>,
    pub output: Option<String>,
    pub max_workers: Option<usize>,
    pub idle: Option<String>,
    pub attempts: Option<u32>,
    pub backoff: Option<String>,
    pub tolerated: Option<String>,
    pub max_files: Option<u64>,
    pub max_bytes: Option<String>,
    pub timeout_cap: Option<String>,
    pub backup: Option<bool>,
    pub backup_after: Option<String>,
    pub backup_factor: Option<f64>,
}

/// A job file or flag that cannot become a job. Each variant names where the problem is.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("{}: cannot read the job file: {source}", file.display())]
    Read { file: PathBuf, source: std::io::Error },
    /// The TOML itself is malformed or has a field the schema does not know.
    #[error("{}:{line}:{column}: {field}{message}", file.display())]
    Syntax { file: PathBuf, line: usize, column: usize, field: String, message: String },
    /// A field parsed but its value is unusable (bad size, duration, glob, location...).
    #[error("{origin}: {field}: {message}")]
    Field { origin: String, field: String, message: String },
    /// A required field is absent from both the file and the flags.
    #[error("{origin}: {field} is missing: {hint}")]
    Missing { origin: String, field: String, hint: String },
}

// ---------------------------------------------------------------- the file's schema

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct JobFile {
    name: Option<Spanned<String>>,
    input: Option<InputTable>,
    function: Option<FunctionTable>,
    output: Option<OutputTable>,
    workers: Option<WorkersTable>,
    retry: Option<RetryTable>,
    stragglers: Option<StragglersTable>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StragglersTable {
    backup: Option<Spanned<bool>>,
    after: Option<Spanned<String>>,
    factor: Option<Spanned<f64>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InputTable {
    source: Option<Spanned<String>>,
    include: Option<Spanned<OneOrMany>>,
    shard: Option<Spanned<ShardTable>>,
}

#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ShardTable {
    per: Option<Spanned<String>>,
    objects: Option<Spanned<i64>>,
    bytes: Option<Spanned<SizeValue>>,
    rows: Option<Spanned<i64>>,
    chunk: Option<Spanned<SizeValue>>,
    align: Option<Spanned<String>>,
}

/// Sizes may be written as `"64MiB"` or as a number of bytes.
#[derive(Deserialize, Clone)]
#[serde(untagged)]
enum SizeValue {
    Bytes(i64),
    Text(String),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct FunctionTable {
    wasm: Option<Spanned<String>>,
    args: Option<Vec<String>>,
    env: Option<Spanned<BTreeMap<String, String>>>,
    timeout: Option<Spanned<String>>,
    timeout_cap: Option<Spanned<String>>,
    memory: Option<Spanned<SizeValue>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct OutputTable {
    dest: Option<Spanned<String>>,
    max_files: Option<Spanned<i64>>,
    max_bytes: Option<Spanned<SizeValue>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct WorkersTable {
    max: Option<Spanned<i64>>,
    idle: Option<Spanned<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RetryTable {
    attempts: Option<Spanned<i64>>,
    backoff: Option<Spanned<String>>,
    tolerated: Option<Spanned<String>>,
}

// ---------------------------------------------------------------- resolution

/// Where a value came from, for error texts: `jobs/x.toml:7` or `--timeout`.
struct Source<'a> {
    file: Option<&'a Path>,
    text: &'a str,
}

impl Source<'_> {
    fn at(&self, span: std::ops::Range<usize>) -> String {
        match self.file {
            Some(file) => format!("{}:{}", file.display(), line_of(self.text, span.start)),
            None => "command line".to_string(),
        }
    }

    fn whole(&self) -> String {
        match self.file {
            Some(file) => file.display().to_string(),
            None => "command line".to_string(),
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].bytes().filter(|&b| b == b'\n').count() + 1
}

/// A value taken from a flag or from the file, with what to call it in errors.
struct Picked<T> {
    value: T,
    origin: String,
    field: String,
}

fn pick<T: Clone>(
    flag: Option<T>,
    flag_name: &str,
    file_value: Option<&Spanned<T>>,
    field: &str,
    src: &Source,
) -> Option<Picked<T>> {
    if let Some(value) = flag {
        return Some(Picked { value, origin: "command line".into(), field: flag_name.into() });
    }
    file_value.map(|spanned| Picked {
        value: spanned.get_ref().clone(),
        origin: src.at(spanned.span()),
        field: field.into(),
    })
}

impl<T> Picked<T> {
    fn error(&self, message: impl Into<String>) -> JobError {
        JobError::Field { origin: self.origin.clone(), field: self.field.clone(), message: message.into() }
    }
}

fn size_of(picked: &Picked<SizeValue>) -> Result<u64, JobError> {
    match &picked.value {
        SizeValue::Bytes(n) if *n >= 0 => Ok(*n as u64),
        SizeValue::Bytes(n) => Err(picked.error(format!("{n} is negative; a size must be at least 0"))),
        SizeValue::Text(text) => units::parse_size(text).map_err(|message| picked.error(message)),
    }
}

fn duration_of(picked: &Picked<String>) -> Result<Duration, JobError> {
    units::parse_duration(&picked.value).map_err(|message| picked.error(message))
}

fn location_of(picked: &Picked<String>) -> Result<Location, JobError> {
    Location::parse(&picked.value).map_err(|e| picked.error(e.to_string()))
}

/// Where the fields that later stages check came from (`jobs/x.toml:3`, or `command line`),
/// so that an error found after resolution (a glob that matches nothing, a missing
/// function) still points at the line to fix.
#[derive(Debug, Clone, Default)]
pub struct Origins(BTreeMap<&'static str, String>);

impl Origins {
    /// `"jobs/x.toml:3: "` for a field set in a file, else an empty string.
    pub fn prefix(&self, field: &str) -> String {
        match self.0.get(field) {
            Some(origin) if origin != "command line" && origin != "default" => format!("{origin}: "),
            _ => String::new(),
        }
    }
}

/// Reads the job file (if any), applies the flags and returns the resolved job.
pub fn resolve(file: Option<&Path>, overrides: &Overrides) -> Result<Job, JobError> {
    resolve_with_origins(file, overrides).map(|(job, _)| job)
}

/// Like [`resolve`], also telling where the fields came from.
pub fn resolve_with_origins(file: Option<&Path>, overrides: &Overrides) -> Result<(Job, Origins), JobError> {
    let text = match file {
        Some(path) => std::fs::read_to_string(path).map_err(|source| JobError::Read { file: path.into(), source })?,
        None => String::new(),
    };
    let parsed: JobFile = match file {
        Some(path) => toml::from_str(&text).map_err(|e| syntax_error(path, &text, e))?,
        None => JobFile::default(),
    };
    let src = Source { file, text: &text };
    resolve_parsed(parsed, &src, overrides)
}

fn syntax_error(file: &Path, text: &str, error: toml::de::Error) -> JobError {
    let start = error.span().map(|s| s.start).unwrap_or(0);
    let line = line_of(text, start);
    let line_start = text[..start.min(text.len())].rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = start.saturating_sub(line_start) + 1;
    let message = error.message().trim().to_string();
    // toml names an unknown key but not its table, and names no key at all for a value of
    // the wrong type: find both, so the user sees `function.args`, not just `args`.
    let key = match message.strip_prefix("unknown field `") {
        Some(rest) => Some(rest.split('`').next().unwrap_or_default().to_string()),
        None => {
            let line_text = text[line_start..].lines().next().unwrap_or_default();
            line_text
                .split_once('=')
                .map(|(key, _)| key.trim().trim_matches('"').to_string())
                .filter(|k| !k.is_empty() && k.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c)))
        }
    };
    let field = match key {
        Some(key) => {
            let table = enclosing_table(text, start);
            let path = if table.is_empty() { key } else { format!("{table}.{key}") };
            format!("{path}: ")
        }
        None => String::new(),
    };
    JobError::Syntax { file: file.into(), line, column, field, message }
}

/// The dotted name of the table that holds `offset`: the last `[header]` above it, plus
/// the key of an inline table (`shard = { ... }`) when the offset sits inside one. A
/// header line itself belongs to the top level (its name is the key in question).
fn enclosing_table(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let current_line = before.rsplit('\n').next().unwrap_or_default();
    if current_line.trim_start().starts_with('[') {
        return String::new();
    }
    let mut table = String::new();
    for line in before.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('[') && !trimmed.starts_with("[[") {
            if let Some(end) = trimmed.find(']') {
                table = trimmed[1..end].trim().to_string();
            }
        }
    }
    if let Some((key, rest)) = current_line.split_once('=') {
        if rest.contains('{') {
            let key = key.trim();
            table = if table.is_empty() { key.to_string() } else { format!("{table}.{key}") };
        }
    }
    table
}

fn resolve_parsed(file: JobFile, src: &Source, o: &Overrides) -> Result<(Job, Origins), JobError> {
    let mut origins = Origins::default();
    let input = file.input.unwrap_or_default();
    let function = file.function.unwrap_or_default();
    let output = file.output.unwrap_or_default();
    let workers = file.workers.unwrap_or_default();
    let retry = file.retry.unwrap_or_default();
    let missing = |field: &str, flag: &str| JobError::Missing {
        origin: src.whole(),
        field: field.to_string(),
        hint: format!("set it in the job file or pass {flag}"),
    };

    // name
    let name = match pick(o.name.clone(), "--name", file.name.as_ref(), "name", src) {
        Some(picked) => {
            let valid = !picked.value.is_empty()
                && picked.value.len() <= 64
                && picked.value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
            if !valid {
                return Err(picked
                    .error(format!("\"{}\" is not a job name (1-64 letters, digits, '-', '_' or '.')", picked.value)));
            }
            picked.value
        }
        None => src
            .file
            .and_then(|f| f.file_stem())
            .map(|s| s.to_string_lossy().into_owned())
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "job".to_string()),
    };

    // input
    let source = pick(o.input.clone(), "--input", input.source.as_ref(), "input.source", src)
        .ok_or_else(|| missing("input.source", "--input SRC"))?;
    let source_location = location_of(&source)?;
    origins.0.insert("input.source", source.origin.clone());
    let include = if !o.include.is_empty() {
        Picked { value: o.include.clone(), origin: "command line".into(), field: "--include".into() }
    } else {
        match &input.include {
            Some(spanned) => Picked {
                value: match spanned.get_ref() {
                    OneOrMany::One(one) => vec![one.clone()],
                    OneOrMany::Many(many) => many.clone(),
                },
                origin: src.at(spanned.span()),
                field: "input.include".into(),
            },
            None => Picked { value: Vec::new(), origin: String::new(), field: String::new() },
        }
    };
    origins.0.insert("input.include", include.origin.clone());
    for glob in &include.value {
        crate::plan::compile_glob(glob).map_err(|message| include.error(message))?;
    }
    let shard = match &o.shard {
        Some(flag) => ShardRule::parse_flag(flag).map_err(|message| JobError::Field {
            origin: "command line".into(),
            field: "--shard".into(),
            message,
        })?,
        None => match &input.shard {
            Some(table) => shard_from_table(table, src)?,
            None => ShardRule::Object,
        },
    };

    // function
    let wasm = pick(o.function.clone(), "--function", function.wasm.as_ref(), "function.wasm", src)
        .ok_or_else(|| missing("function.wasm", "--function F"))?;
    let wasm_location = location_of(&wasm)?;
    origins.0.insert("function.wasm", wasm.origin.clone());
    let mut args = function.args.clone().unwrap_or_default();
    args.extend(o.extra_args.iter().cloned());
    let mut env = BTreeMap::new();
    if let Some(file_env) = &function.env {
        let origin = src.at(file_env.span());
        for (key, value) in file_env.get_ref() {
            check_env_key(key).map_err(|message| JobError::Field {
                origin: origin.clone(),
                field: format!("function.env.{key}"),
                message,
            })?;
            env.insert(key.clone(), value.clone());
        }
    }
    for pair in &o.env {
        let field_error =
            |message: String| JobError::Field { origin: "command line".into(), field: "--env".into(), message };
        let (key, value) = pair.split_once('=').ok_or_else(|| field_error(format!("\"{pair}\" is not K=V")))?;
        check_env_key(key).map_err(field_error)?;
        env.insert(key.to_string(), value.to_string());
    }
    let timeout_pick = pick(o.timeout.clone(), "--timeout", function.timeout.as_ref(), "function.timeout", src)
        .unwrap_or_else(|| default_pick(defaults::TIMEOUT, "function.timeout"));
    let cap_pick =
        pick(o.timeout_cap.clone(), "--timeout-cap", function.timeout_cap.as_ref(), "function.timeout_cap", src);
    let (timeout, relative_timeout_percent) = match timeout_pick.value.trim().strip_suffix('%') {
        Some(percent) => {
            let percent: f64 = percent.trim().parse().map_err(|_| {
                timeout_pick.error(format!(
                    "\"{}\" is not a duration or a share of the median (\"30s\", \"200%\")",
                    timeout_pick.value
                ))
            })?;
            if !(percent > 100.0 && percent <= 100_000.0) {
                return Err(timeout_pick
                    .error(format!("{percent}% of the median would stop typical shards; give more than 100%")));
            }
            let cap = cap_pick
                .as_ref()
                .map(duration_of)
                .transpose()?
                .unwrap_or(units::parse_duration(defaults::TIMEOUT_CAP).expect("the default cap parses"));
            (cap, Some(percent))
        }
        None => {
            if let Some(cap) = &cap_pick {
                return Err(cap.error("timeout_cap goes with a relative timeout (timeout = \"200%\")"));
            }
            (duration_of(&timeout_pick)?, None)
        }
    };
    if timeout.is_zero() {
        return Err(timeout_pick.error("the timeout must be longer than 0"));
    }
    let memory_pick =
        pick(o.memory.clone().map(SizeValue::Text), "--memory", function.memory.as_ref(), "function.memory", src)
            .unwrap_or_else(|| Picked {
                value: SizeValue::Text(defaults::MEMORY.into()),
                origin: "default".into(),
                field: "function.memory".into(),
            });
    let memory = size_of(&memory_pick)?;
    if memory < (1 << 16) {
        return Err(memory_pick.error(format!("{memory} bytes is below one WebAssembly page (64KiB)")));
    }
    if memory > defaults::MEMORY_CEILING {
        return Err(memory_pick.error(format!(
            "{} is above the {} a guest may use",
            units::format_size(memory),
            units::format_size(defaults::MEMORY_CEILING)
        )));
    }

    // output
    let dest = pick(o.output.clone(), "--output", output.dest.as_ref(), "output.dest", src)
        .ok_or_else(|| missing("output.dest", "--output DEST"))?;
    let dest_location = location_of(&dest)?;
    origins.0.insert("output.dest", dest.origin.clone());
    if source_location.contains(&dest_location) {
        return Err(dest.error(format!(
            "{dest_location} lies inside the input {source_location}: outputs would be read back as inputs"
        )));
    }
    let max_files =
        match pick(o.max_files.map(|v| v as i64), "--max-files", output.max_files.as_ref(), "output.max_files", src) {
            Some(p) if p.value < 1 => return Err(p.error(format!("{} must be at least 1", p.value))),
            Some(p) => p.value as u64,
            None => defaults::MAX_FILES,
        };
    let max_bytes_pick = pick(
        o.max_bytes.clone().map(SizeValue::Text),
        "--max-bytes",
        output.max_bytes.as_ref(),
        "output.max_bytes",
        src,
    )
    .unwrap_or_else(|| Picked {
        value: SizeValue::Text(defaults::MAX_BYTES.into()),
        origin: "default".into(),
        field: "output.max_bytes".into(),
    });
    let max_bytes = size_of(&max_bytes_pick)?;

    // workers
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let max_workers =
        match pick(o.max_workers.map(|v| v as i64), "--max-workers", workers.max.as_ref(), "workers.max", src) {
            Some(p) if p.value < 0 => return Err(p.error(format!("{} is negative (0 means one per core)", p.value))),
            Some(p) if p.value > 1024 => {
                return Err(p.error(format!("{} workers is more than the 1024 fanout runs at once", p.value)))
            }
            Some(p) if p.value == 0 => cores,
            Some(p) => p.value as usize,
            None => cores,
        };
    let idle_pick = pick(o.idle.clone(), "--idle", workers.idle.as_ref(), "workers.idle", src)
        .unwrap_or_else(|| default_pick(defaults::IDLE, "workers.idle"));
    let idle = duration_of(&idle_pick)?;

    // retry
    let attempts =
        match pick(o.attempts.map(|v| v as i64), "--attempts", retry.attempts.as_ref(), "retry.attempts", src) {
            Some(p) if !(1..=100).contains(&p.value) => {
                return Err(p.error(format!("{} is not between 1 and 100 (1 means no retry)", p.value)))
            }
            Some(p) => p.value as u32,
            None => defaults::ATTEMPTS,
        };
    let backoff_pick = pick(o.backoff.clone(), "--backoff", retry.backoff.as_ref(), "retry.backoff", src)
        .unwrap_or_else(|| default_pick(defaults::BACKOFF, "retry.backoff"));
    let backoff = duration_of(&backoff_pick)?;
    let tolerated_pick = pick(o.tolerated.clone(), "--tolerated", retry.tolerated.as_ref(), "retry.tolerated", src)
        .unwrap_or_else(|| default_pick(defaults::TOLERATED, "retry.tolerated"));
    let tolerated = Tolerance::parse(&tolerated_pick.value).map_err(|m| tolerated_pick.error(m))?;

    let stragglers_table = file.stragglers.unwrap_or_default();
    let backup = match (o.backup, &stragglers_table.backup) {
        (Some(flag), _) => flag,
        (None, Some(value)) => *value.get_ref(),
        (None, None) => true,
    };
    let after_pick =
        pick(o.backup_after.clone(), "--backup-after", stragglers_table.after.as_ref(), "stragglers.after", src)
            .unwrap_or_else(|| default_pick(defaults::BACKUP_AFTER, "stragglers.after"));
    let after = match Tolerance::parse(&after_pick.value) {
        Ok(Tolerance::Percent(percent)) => percent / 100.0,
        _ => {
            return Err(
                after_pick.error(format!("\"{}\" is not a share of the shards (e.g. \"90%\")", after_pick.value))
            )
        }
    };
    let factor =
        match pick(o.backup_factor, "--backup-factor", stragglers_table.factor.as_ref(), "stragglers.factor", src) {
            Some(p) if !(p.value > 1.0 && p.value.is_finite()) => {
                return Err(p.error(format!("{} must be more than 1 (a multiple of the median duration)", p.value)))
            }
            Some(p) => p.value,
            None => defaults::BACKUP_FACTOR,
        };
    let job = Job {
        name,
        input: Input { source: source_location, include: include.value, shard },
        function: Function {
            wasm: wasm_location,
            args,
            env,
            timeout_ms: timeout.as_millis().max(1) as u64,
            relative_timeout_percent,
            memory_bytes: memory,
        },
        output: Output { dest: dest_location, max_files, max_bytes },
        workers: Workers { max: max_workers, idle_ms: idle.as_millis() as u64 },
        retry: Retry { attempts, backoff_ms: backoff.as_millis() as u64, tolerated },
        stragglers: Stragglers { backup, after, factor },
    };
    Ok((job, origins))
}

fn default_pick(value: &str, field: &str) -> Picked<String> {
    Picked { value: value.to_string(), origin: "default".into(), field: field.into() }
}

fn check_env_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.contains('=') || key.contains('\0') {
        return Err(format!("\"{key}\" is not an environment variable name"));
    }
    if key.starts_with("FANOUT_") {
        return Err(format!("\"{key}\": names starting with FANOUT_ are set by fanout itself"));
    }
    Ok(())
}

fn shard_from_table(table: &Spanned<ShardTable>, src: &Source) -> Result<ShardRule, JobError> {
    let origin = src.at(table.span());
    let t = table.get_ref();
    let err = |field: &str, span: std::ops::Range<usize>, message: String| JobError::Field {
        origin: src.at(span),
        field: format!("input.shard.{field}"),
        message,
    };
    let count = |field: &str, v: &Spanned<i64>| -> Result<u64, JobError> {
        if *v.get_ref() < 1 {
            return Err(err(field, v.span(), format!("{} must be at least 1", v.get_ref())));
        }
        Ok(*v.get_ref() as u64)
    };
    let size = |field: &str, v: &Spanned<SizeValue>| -> Result<u64, JobError> {
        let picked =
            Picked { value: v.get_ref().clone(), origin: src.at(v.span()), field: format!("input.shard.{field}") };
        match size_of(&picked)? {
            0 => Err(picked.error("the size must be at least 1 byte")),
            n => Ok(n),
        }
    };
    let given = [t.per.is_some(), t.objects.is_some(), t.bytes.is_some(), t.rows.is_some(), t.chunk.is_some()]
        .iter()
        .filter(|&&g| g)
        .count();
    if given != 1 {
        return Err(JobError::Field {
            origin,
            field: "input.shard".into(),
            message: "give exactly one of per = \"object\", objects = N, bytes = SIZE, rows = N, chunk = SIZE".into(),
        });
    }
    if let Some(align) = &t.align {
        if t.chunk.is_none() {
            return Err(err("align", align.span(), "align only goes with chunk = SIZE".into()));
        }
    }
    if let Some(per) = &t.per {
        return match per.get_ref().as_str() {
            "object" => Ok(ShardRule::Object),
            other => Err(err("per", per.span(), format!("\"{other}\" is not known (the only value is \"object\")"))),
        };
    }
    if let Some(v) = &t.objects {
        return Ok(ShardRule::Objects { count: count("objects", v)? });
    }
    if let Some(v) = &t.rows {
        return Ok(ShardRule::Rows { rows: count("rows", v)? });
    }
    if let Some(v) = &t.bytes {
        return Ok(ShardRule::Bytes { bytes: size("bytes", v)? });
    }
    let chunk = t.chunk.as_ref().expect("exactly one rule is set");
    let align_lines = match t.align.as_ref().map(|a| (a.get_ref().as_str(), a.span())) {
        None | Some(("line", _)) => true,
        Some(("none", _)) => false,
        Some((other, span)) => {
            return Err(err("align", span, format!("\"{other}\" is not known (use \"line\" or \"none\")")))
        }
    };
    Ok(ShardRule::Chunk { bytes: size("chunk", chunk)?, align_lines })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves `text` as a job file of its own folder, removed afterwards (tests run in
    /// parallel, so no two share a path).
    fn from_text(text: &str, overrides: &Overrides) -> Result<Job, JobError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, text).unwrap();
        resolve(Some(&path), overrides)
    }

    const MINIMAL: &str =
        "[input]\nsource = \"/data/in\"\n[function]\nwasm = \"/f.wasm\"\n[output]\ndest = \"/data/out\"\n";

    #[test]
    fn defaults_fill_every_field() {
        let job = from_text(MINIMAL, &Overrides::default()).unwrap();
        assert_eq!(job.input.shard, ShardRule::Object);
        assert_eq!(job.function.timeout_ms, 60_000);
        assert_eq!(job.function.memory_bytes, 256 << 20);
        assert_eq!(job.retry.attempts, 3);
        assert!(job.workers.max >= 1);
        assert_eq!(job.workers.idle_ms, 1000);
    }

    #[test]
    fn flags_override_fields() {
        let overrides = Overrides {
            timeout: Some("2s".into()),
            shard: Some("objects=16".into()),
            max_workers: Some(3),
            env: vec!["A=1".into()],
            extra_args: vec!["--x".into()],
            ..Default::default()
        };
        let job = from_text(&format!("{MINIMAL}timeout = \"9s\"\n"), &overrides);
        // `timeout` lands in [output] here, which must be refused, proving placement matters
        assert!(job.unwrap_err().to_string().contains("output.timeout"));
        let job = from_text(MINIMAL, &overrides).unwrap();
        assert_eq!(job.function.timeout_ms, 2000);
        assert_eq!(job.input.shard, ShardRule::Objects { count: 16 });
        assert_eq!(job.workers.max, 3);
        assert_eq!(job.function.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(job.function.args, vec!["--x".to_string()]);
    }

    #[test]
    fn unknown_field_names_table_and_line() {
        let text = "[input]\nsource = \"/in\"\nshard = { objcts = 3 }\n";
        let err = from_text(text, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains(":3:"), "{err}");
        assert!(err.contains("input.shard.objcts"), "{err}");
    }

    #[test]
    fn bad_values_name_line_and_field() {
        let text = format!("{MINIMAL}[retry]\nbackoff = \"soonish\"\n");
        let err = from_text(&text, &Overrides::default()).unwrap_err().to_string();
        assert!(err.contains(":8: retry.backoff:"), "{err}");
    }

    #[test]
    fn shard_flags() {
        assert_eq!(ShardRule::parse_flag("bytes=64MiB").unwrap(), ShardRule::Bytes { bytes: 64 << 20 });
        assert!(ShardRule::parse_flag("objects=0").is_err());
        assert!(ShardRule::parse_flag("pages=3").is_err());
    }
}
