//! The resolved job: every default filled in, every string parsed into the type it means.
//! This is the only job type planning, the pool and the runtime receive, and it is stored
//! as `job.json`. Owns those types, their defaults and the shard rules; it knows nothing
//! of job files or flags (that is `schema` and `resolve`).

use crate::location::Location;
use crate::units::{self, Tolerance};
use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::time::Duration;

/// Defaults a job gets for every field the user leaves out, spelled as in a job file.
pub(crate) mod defaults {
    pub(crate) const TIMEOUT: &str = "60s";
    pub(crate) const MEMORY: &str = "256MiB";
    pub(crate) const IDLE: &str = "1s";
    pub(crate) const ATTEMPTS: u32 = 3;
    pub(crate) const BACKOFF: &str = "200ms";
    pub(crate) const TOLERATED: &str = "0%";
    /// Per shard: more output files than this fails the shard (a guard against runaway guests).
    pub(crate) const MAX_FILES: u64 = 4096;
    /// Per shard: more output bytes than this fails the shard.
    pub(crate) const MAX_BYTES: &str = "4GiB";
    /// A guest may not ask for more linear memory than this, whatever the job says.
    pub(crate) const MEMORY_CEILING: u64 = 4 << 30;
    /// The hard limit of a relative timeout (`timeout = "200%"`), and the limit before
    /// enough shards have finished to know the median.
    pub(crate) const TIMEOUT_CAP: &str = "1h";
    /// Backup attempts for stragglers: on, once this share of the shards is done...
    pub(crate) const BACKUP: bool = true;
    pub(crate) const BACKUP_AFTER: &str = "90%";
    /// ...for attempts slower than this many times the median of finished shards.
    pub(crate) const BACKUP_FACTOR: f64 = 3.0;
    /// Lambda invocations in flight at most: well under an account's default limit (1,000).
    pub(crate) const LAMBDA_CONCURRENCY: usize = 64;
    pub(crate) const FAN_IN: i64 = 256;
}

/// How a source is cut into shards.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "per")]
pub(crate) enum ShardRule {
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
    pub(crate) fn parse_flag(text: &str) -> Result<Self, String> {
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
    pub(crate) fn is_record_rule(&self) -> bool {
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

/// The include globs, compiled once when the job is resolved (or read back from job.json).
/// Stored as the globs the user wrote; `*` matches across folders (`*.jpg` finds `a/b.jpg`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Include {
    globs: Vec<String>,
    /// `None` keeps every key.
    set: Option<GlobSet>,
}

impl Include {
    /// Compiles the globs; the error names the first one that is not a glob.
    pub(crate) fn new(globs: Vec<String>) -> Result<Self, String> {
        if globs.is_empty() {
            return Ok(Include::default());
        }
        let mut builder = GlobSetBuilder::new();
        for glob in &globs {
            if glob.trim().is_empty() {
                return Err("an empty glob matches nothing".to_string());
            }
            let compiled = GlobBuilder::new(glob)
                .literal_separator(false)
                .build()
                .map_err(|e| format!("\"{glob}\" is not a valid glob: {}", e.kind()))?;
            builder.add(compiled);
        }
        let set = builder.build().map_err(|e| format!("the include globs do not build: {e}"))?;
        Ok(Include { globs, set: Some(set) })
    }

    /// True when `key` (relative to the source) is one of the job's inputs.
    pub(crate) fn matches(&self, key: &str) -> bool {
        self.set.as_ref().is_none_or(|set| set.is_match(key))
    }

    pub(crate) fn globs(&self) -> &[String] {
        &self.globs
    }
}

impl PartialEq for Include {
    fn eq(&self, other: &Self) -> bool {
        self.globs == other.globs
    }
}

impl Serialize for Include {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.globs.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Include {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Include::new(Vec::deserialize(deserializer)?).map_err(serde::de::Error::custom)
    }
}

/// The resolved job. Its serialized form is `job.json`'s `job`: keep fields compatible.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) name: String,
    pub(crate) input: Input,
    pub(crate) function: Function,
    pub(crate) output: Output,
    pub(crate) workers: Workers,
    pub(crate) retry: Retry,
    #[serde(default)]
    pub(crate) stragglers: Stragglers,
    #[serde(default)]
    pub(crate) executor: Executor,
    #[serde(default)]
    pub(crate) watch: Watch,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) reduce: Option<Reduce>,
}

/// How `fanout watch` looks for new objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Watch {
    /// Between listings of an S3 prefix while objects arrive.
    pub(crate) interval_ms: u64,
    /// A local file is ready once unchanged this long (a closed or renamed file at once).
    pub(crate) settle_ms: u64,
    /// A Kafka shard closes this long after its first record, full or not.
    #[serde(default = "default_max_wait_ms")]
    pub(crate) max_wait_ms: u64,
}

fn default_max_wait_ms() -> u64 {
    5_000
}

impl Default for Watch {
    fn default() -> Self {
        Watch { interval_ms: 2_000, settle_ms: 1_000, max_wait_ms: default_max_wait_ms() }
    }
}

/// The step after the map: a function over every map output (a tree of invocations when
/// there are more than `fan_in`), or their concatenation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Reduce {
    pub(crate) step: ReduceStep,
    pub(crate) fan_in: usize,
    /// The final object's key under DEST.
    pub(crate) output: String,
    pub(crate) attempts: u32,
    pub(crate) timeout_ms: u64,
    pub(crate) memory_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub(crate) enum ReduceStep {
    Function { wasm: Location, args: Vec<String> },
    Concat,
}

/// Where a job's attempts run.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub(crate) enum Executor {
    /// This machine's worker pool.
    #[default]
    Local,
    /// AWS Lambda: `function` runs `fanout lambda worker`; at most `concurrency` invocations
    /// are in flight, each carrying at most `batch` shards (`None`: as many as make about a
    /// second of work).
    Lambda {
        function: String,
        concurrency: usize,
        #[serde(default)]
        batch: Option<usize>,
    },
    /// A Slurm cluster: job arrays of `fanout worker` tasks, at most `concurrency` running
    /// at once, submitted with the extra `sbatch` arguments `args`; the tasks run `worker`
    /// (`None`: this fanout binary, at its path here).
    Slurm {
        concurrency: usize,
        #[serde(default)]
        args: Vec<String>,
        #[serde(default)]
        worker: Option<String>,
    },
    /// Google Cloud Run Jobs: each wave an execution of the job `job` (created with fanout's
    /// image) in project `project` of `region`, at most `concurrency` tasks per execution.
    CloudRun { concurrency: usize, project: String, region: String, job: String },
    /// AWS Batch: each wave an array job in the job queue `queue` of the job definition
    /// `definition` (fanout's image), at most `concurrency` children per array.
    AwsBatch {
        concurrency: usize,
        queue: String,
        definition: String,
        #[serde(default)]
        region: Option<String>,
    },
    /// IBM Cloud Code Engine: each wave a job run of the job `job` (created with fanout's
    /// image) in project `project` of `region`, at most `concurrency` indices per run.
    CodeEngine { concurrency: usize, project: String, region: String, job: String },
    /// A Kubernetes Indexed Job (`fanout k8s` prints it; kubectl applies it): at most
    /// `concurrency` pods at once, each running `fanout worker` from `image`, with S3
    /// credentials from the Secret `secret`. `fanout status DEST --follow` commits.
    Kubernetes {
        concurrency: usize,
        image: String,
        #[serde(default)]
        secret: Option<String>,
    },
}

impl Executor {
    /// Its `executor.kind`, as job files and summaries name it.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Executor::Local => "local",
            Executor::Lambda { .. } => "lambda",
            Executor::Slurm { .. } => "slurm",
            Executor::CloudRun { .. } => "cloud-run",
            Executor::AwsBatch { .. } => "aws-batch",
            Executor::CodeEngine { .. } => "code-engine",
            Executor::Kubernetes { .. } => "kubernetes",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Input {
    pub(crate) source: Location,
    /// Globs on keys relative to the source; none keeps every object.
    pub(crate) include: Include,
    pub(crate) shard: ShardRule,
    /// Set when the source is a Kafka topic (`[input.kafka]`, with its defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) kafka: Option<KafkaInput>,
}

/// How a Kafka topic is read: `[input.kafka]` resolved. Credentials are not here: they come
/// from the environment when the client is made, so job.json never holds one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct KafkaInput {
    /// The consumer group whose offsets follow what the job committed.
    pub(crate) group: String,
    pub(crate) start: KafkaStart,
    pub(crate) format: RecordFormat,
    /// librdkafka settings passed through (`security.protocol`, `sasl.mechanism`...).
    pub(crate) settings: BTreeMap<String, String>,
    /// The offsets each partition is read between, fixed when the job starts and stored with
    /// it, so that planning again after a crash cuts the same shards. A watch reads on past
    /// `end`; its bounds say only where it started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) bounds: Option<Vec<PartitionBounds>>,
}

/// Where a new job starts reading each partition.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "at")]
pub(crate) enum KafkaStart {
    /// The group's committed offset (the earliest record when the group has none).
    Committed,
    Earliest,
    Latest,
    /// The first record at or after this time (milliseconds since the Unix epoch).
    Timestamp {
        ms: i64,
    },
}

/// How records reach the function on stdin.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum RecordFormat {
    /// Each record's value, then a newline (a value holding a newline fails its shard).
    Lines,
    /// Each record's value after its length as a 4-byte big-endian number (binary payloads).
    LengthPrefixed,
}

/// The offsets of one partition a job reads: `start` (the first) up to `end` (exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct PartitionBounds {
    pub(crate) partition: i32,
    pub(crate) start: i64,
    pub(crate) end: i64,
}

/// How a native command is isolated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Sandbox {
    /// bubblewrap: namespaces, read-only system folders, nothing else of the host.
    #[default]
    Bubblewrap,
    /// No isolation: only when a job names it (job.json and the summary say so).
    None,
}

impl Sandbox {
    fn is_default(&self) -> bool {
        *self == Sandbox::default()
    }
}

impl std::fmt::Display for Sandbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Sandbox::Bubblewrap => "bubblewrap",
            Sandbox::None => "none",
        })
    }
}

/// The placeholders a native command's words may hold.
pub(crate) const PLACEHOLDERS: &[&str] = &["in", "name", "stem", "ext", "out"];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Function {
    /// A .wasm file, an example crate folder, or an s3:// object. For a native command,
    /// none (or the stored form of the command, where a committer fetches it from DEST).
    #[serde(default)]
    pub(crate) wasm: Option<Location>,
    /// A Python function: a script, or a folder with `main.py` (built into a component).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) python: Option<std::path::PathBuf>,
    /// A native command's words, placeholders unexpanded (`args` follow them).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) command: Option<Vec<String>>,
    /// Written into job.json only when it is not the default (`none`, asked for by name).
    #[serde(default, skip_serializing_if = "Sandbox::is_default")]
    pub(crate) sandbox: Sandbox,
    pub(crate) args: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    /// Side files, by the name the function sees them under (`/files/NAME`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub(crate) files: BTreeMap<String, SideFile>,
    /// The hard per-invocation limit (with a relative timeout: its cap).
    pub(crate) timeout_ms: u64,
    /// `timeout = "200%"`: stop an attempt that runs longer than this percentage of the
    /// median duration of the shards finished so far (never sooner than one second).
    #[serde(default)]
    pub(crate) relative_timeout_percent: Option<f64>,
    pub(crate) memory_bytes: u64,
}

/// A file every invocation sees read-only at `/files/NAME`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SideFile {
    /// Where it is read from, as given: a local path or an object.
    pub(crate) source: Location,
    /// Its SHA-256, once `launch::open` has read it: remote workers fetch it by this.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) sha256: String,
}

impl Function {
    /// The field that gives the function: `function.wasm`, `function.python` or `function.command`.
    pub(crate) fn field(&self) -> &'static str {
        match (&self.command, &self.python) {
            (Some(_), _) => "function.command",
            (None, Some(_)) => "function.python",
            (None, None) => "function.wasm",
        }
    }

    /// The function as the user named it, for messages.
    pub(crate) fn shown(&self) -> String {
        match (&self.wasm, &self.python, &self.command) {
            (Some(wasm), _, _) => wasm.to_string(),
            (None, Some(script), _) => script.display().to_string(),
            (None, None, Some(words)) => words.first().cloned().unwrap_or_default(),
            (None, None, None) => "the function".into(),
        }
    }

    pub(crate) fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Output {
    pub(crate) dest: Location,
    pub(crate) max_files: u64,
    pub(crate) max_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Workers {
    /// At least 1: a `max = 0` in the file means the number of cores.
    pub(crate) max: usize,
    pub(crate) idle_ms: u64,
}

impl Workers {
    pub(crate) fn idle(&self) -> Duration {
        Duration::from_millis(self.idle_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Retry {
    /// Attempts a shard gets in all, at least 1.
    pub(crate) attempts: u32,
    pub(crate) backoff_ms: u64,
    pub(crate) tolerated: Tolerance,
}

impl Retry {
    pub(crate) fn backoff(&self) -> Duration {
        Duration::from_millis(self.backoff_ms)
    }
}

/// Longest wait between retries, whatever the attempt number.
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// The delay before attempt `next` (2, 3, ...) of a shard: `backoff`, doubling each time.
pub(crate) fn backoff_before(next_attempt_of_run: u32, backoff: Duration) -> Duration {
    let doublings = next_attempt_of_run.saturating_sub(2).min(16);
    backoff.saturating_mul(1 << doublings).min(MAX_BACKOFF)
}

/// Backup attempts for slow shards at the end of a job (as in MapReduce's backup tasks).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Stragglers {
    pub(crate) backup: bool,
    /// Backups start once this share (0-1) of the shards is done.
    pub(crate) after: f64,
    /// A running attempt slower than this many times the median of finished shards is a straggler.
    pub(crate) factor: f64,
}

/// `"90%"` as the share 0.9, for `stragglers.after`.
pub(crate) fn share_of_shards(text: &str) -> Result<f64, String> {
    match Tolerance::parse(text) {
        Ok(Tolerance::Percent(percent)) => Ok(percent / 100.0),
        _ => Err(format!("\"{text}\" is not a share of the shards (e.g. \"90%\")")),
    }
}

impl Default for Stragglers {
    fn default() -> Self {
        Stragglers {
            backup: defaults::BACKUP,
            after: share_of_shards(defaults::BACKUP_AFTER).expect("the default share parses"),
            factor: defaults::BACKUP_FACTOR,
        }
    }
}

/// A job with every default, reading `source` and writing `dest`, for tests that build a
/// run without a job file (the coordinator's and the executors').
#[cfg(test)]
impl Job {
    pub(crate) fn for_tests(source: Location, dest: Location) -> Job {
        Job {
            name: "test".into(),
            input: Input { source, include: Include::default(), shard: ShardRule::Object, kafka: None },
            function: Function {
                wasm: Some(Location::Local("/nowhere/f.wasm".into())),
                python: None,
                command: None,
                sandbox: Sandbox::default(),
                args: Vec::new(),
                env: BTreeMap::new(),
                files: BTreeMap::new(),
                timeout_ms: 60_000,
                relative_timeout_percent: None,
                memory_bytes: 64 << 20,
            },
            output: Output { dest, max_files: defaults::MAX_FILES, max_bytes: 1 << 30 },
            workers: Workers { max: 4, idle_ms: 1000 },
            retry: Retry { attempts: defaults::ATTEMPTS, backoff_ms: 200, tolerated: Tolerance::Count(0) },
            stragglers: Stragglers::default(),
            executor: Executor::Local,
            watch: Watch::default(),
            reduce: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_flags() {
        assert_eq!(ShardRule::parse_flag("bytes=64MiB").unwrap(), ShardRule::Bytes { bytes: 64 << 20 });
        assert!(ShardRule::parse_flag("objects=0").is_err());
        assert!(ShardRule::parse_flag("pages=3").is_err());
    }

    #[test]
    fn globs_cross_folders_and_bad_ones_are_named() {
        let include = Include::new(vec!["*.jpg".into()]).unwrap();
        assert!(include.matches("a/b/c.jpg"));
        assert!(!include.matches("a/b/c.png"));
        assert!(Include::default().matches("anything"));
        let err = Include::new(vec!["*.png".into(), "[abc".into()]).unwrap_err();
        assert!(err.contains("[abc"), "{err}");
    }

    #[test]
    fn include_round_trips_through_job_json() {
        let include = Include::new(vec!["*.jpg".into(), "raw/**".into()]).unwrap();
        let json = serde_json::to_string(&include).unwrap();
        assert_eq!(json, r#"["*.jpg","raw/**"]"#);
        let back: Include = serde_json::from_str(&json).unwrap();
        assert_eq!(back, include);
        assert!(back.matches("raw/x/y.tif"));
    }
}
