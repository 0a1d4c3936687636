//! The job file's schema and the job's flags, declared once. Each table of a job file
//! (`[input]`, `[function]`...) is one struct that derives both serde (the TOML table) and
//! clap (its flags), so a new field is one member here: its TOML key is the member's name,
//! its flag is in its `#[arg]`, and its doc comment is the flag's help. Every value is a
//! [`Given`]: the raw value the user wrote, with where it came from. Owns parsing and the
//! rule that a flag overrides its field; turning values into a job is `resolve`'s work.

use super::error::{JobError, JobText, Origin};
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;
use toml::Spanned;

/// A value as the user gave it, where it came from, and what to call it in an error:
/// `workers.max` when it is from the file, `--max-workers` when it is from a flag.
#[derive(Debug, Clone)]
pub(crate) struct Given<T> {
    pub(crate) value: T,
    origin: Origin,
    field: String,
    /// Where the value sits in the job file, until `overlay` turns it into a line.
    span: Option<Range<usize>>,
}

impl<T> Given<T> {
    /// fanout's default for `field`.
    pub(crate) fn by_default(value: T, field: &str) -> Self {
        Given { value, origin: Origin::Default, field: field.to_string(), span: None }
    }

    pub(crate) fn origin(&self) -> &Origin {
        &self.origin
    }

    /// An error about this value, naming its line (or flag) and field.
    pub(crate) fn error(&self, message: impl Into<String>) -> JobError {
        JobError::Field { origin: self.origin.clone(), field: self.field.clone(), message: message.into() }
    }

    /// An error about one entry of this value (`function.env.KEY`; a flag is named alone).
    pub(crate) fn entry_error(&self, entry: &str, message: impl Into<String>) -> JobError {
        let field = match self.origin {
            Origin::Flag => self.field.clone(),
            _ => format!("{}.{entry}", self.field),
        };
        JobError::Field { origin: self.origin.clone(), field, message: message.into() }
    }

    /// Another value from the same place (one entry of a list or table).
    fn with<U>(&self, value: U) -> Given<U> {
        Given { value, origin: self.origin.clone(), field: self.field.clone(), span: self.span.clone() }
    }

    fn name(&mut self, naming: &Naming) {
        match self.span.take() {
            Some(span) => {
                self.origin = naming.text.origin_at(span.start);
                self.field = naming.file_field.clone();
            }
            None => self.field = naming.flag.clone().unwrap_or_else(|| naming.file_field.clone()),
        }
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Given<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<T>::deserialize(deserializer)?;
        let span = spanned.span();
        Ok(Given { value: spanned.into_inner(), origin: Origin::Default, field: String::new(), span: Some(span) })
    }
}

/// The flag form: what clap parses a flag's text with.
impl<T: std::str::FromStr> std::str::FromStr for Given<T>
where
    T::Err: std::fmt::Display,
{
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let value = text.parse().map_err(|e: T::Err| e.to_string())?;
        Ok(Given { value, origin: Origin::Flag, field: String::new(), span: None })
    }
}

/// What a member is called in errors: its dotted TOML path and its flag.
struct Naming<'a> {
    text: &'a JobText<'a>,
    file_field: String,
    flag: Option<String>,
}

impl<'a> Naming<'a> {
    fn new(text: &'a JobText<'a>, table: &str, member: &str, flags: &BTreeMap<String, String>) -> Self {
        let file_field = if table.is_empty() { member.to_string() } else { format!("{table}.{member}") };
        Naming { text, file_field, flag: flags.get(member).cloned() }
    }
}

/// The flag of each member of a clap struct (`max` -> `--max-workers`), read from clap's
/// own declaration so that an error names the flag the user typed.
fn flag_names<T: clap::Args>() -> BTreeMap<String, String> {
    T::augment_args(clap::Command::new("fanout"))
        .get_arguments()
        .filter_map(|arg| Some((arg.get_id().to_string(), format!("--{}", arg.get_long()?))))
        .collect()
}

/// How a flag's value meets the file's: a flag replaces a single value; repeated flags
/// replace a list, or add to it when the entries are keyed (`--env K=V`).
trait Layer: Sized {
    fn layer(file: Self, flags: Self, naming: &Naming) -> Self;
}

impl<T> Layer for Option<Given<T>> {
    fn layer(file: Self, flags: Self, naming: &Naming) -> Self {
        let mut given = flags.or(file)?;
        given.name(naming);
        Some(given)
    }
}

/// Entries of a repeatable field.
trait Entry {
    /// True when flags add entries to the file's rather than replace them.
    const FLAGS_ADD: bool;
}

impl Entry for String {
    const FLAGS_ADD: bool = false;
}

impl<T: Entry> Layer for Vec<Given<T>> {
    fn layer(mut file: Self, flags: Self, naming: &Naming) -> Self {
        let mut all = if T::FLAGS_ADD {
            file.extend(flags);
            file
        } else if flags.is_empty() {
            file
        } else {
            flags
        };
        for given in &mut all {
            given.name(naming);
        }
        all
    }
}

/// Declares one table of the job file and its flags. The struct derives serde and clap;
/// `overlay` lays the flags over the file's values, member by member, and names each.
macro_rules! job_table {
    (
        $(#[$meta:meta])*
        struct $name:ident in $table:literal {
            $( $(#[$member_meta:meta])* $member:ident: $ty:ty, )*
        }
    ) => {
        #[derive(clap::Args, serde::Deserialize, Debug, Clone, Default)]
        #[serde(deny_unknown_fields)]
        $(#[$meta])*
        pub(crate) struct $name {
            $( $(#[$member_meta])* pub(crate) $member: $ty, )*
        }

        impl $name {
            /// The flags' values over the file's, each named for error texts.
            pub(crate) fn overlay(self, flags: Self, text: &JobText) -> Self {
                let names = flag_names::<Self>();
                $name {
                    $( $member: Layer::layer(self.$member, flags.$member, &Naming::new(text, $table, stringify!($member), &names)), )*
                }
            }
        }
    };
}

/// Sizes may be written as `"64MiB"` or as a number of bytes.
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub(crate) enum SizeValue {
    Bytes(i64),
    Text(String),
}

impl std::str::FromStr for SizeValue {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(SizeValue::Text(text.to_string()))
    }
}

/// A native command: a list of words in the file, one string on the command line (split
/// like a shell's words when resolved, where a bad quote can be reported).
#[derive(Deserialize, Debug, Clone)]
#[serde(untagged)]
pub(crate) enum CommandWords {
    Words(Vec<String>),
    Line(String),
}

impl std::str::FromStr for CommandWords {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(CommandWords::Line(text.to_string()))
    }
}

/// The shard rule: a table in the file (`{ objects = 16 }`), a rule on the command line
/// (`--shard objects=16`).
#[derive(Debug, Clone)]
pub(crate) enum ShardSpec {
    Table(ShardTable),
    Rule(String),
}

impl<'de> Deserialize<'de> for ShardSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        ShardTable::deserialize(deserializer).map(ShardSpec::Table)
    }
}

impl std::str::FromStr for ShardSpec {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(ShardSpec::Rule(text.to_string()))
    }
}

/// `input.shard` as a table: exactly one rule, each member with its own line for errors.
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct ShardTable {
    pub(crate) per: Option<Spanned<String>>,
    pub(crate) objects: Option<Spanned<i64>>,
    pub(crate) bytes: Option<Spanned<SizeValue>>,
    pub(crate) rows: Option<Spanned<i64>>,
    pub(crate) chunk: Option<Spanned<SizeValue>>,
    pub(crate) align: Option<Spanned<String>>,
}

/// One named value (an environment variable, a side file): an entry of a table such as
/// `env`, or a `--env K=V` flag (split and checked when the job is resolved, so the error
/// names the flag).
#[derive(Debug, Clone)]
pub(crate) enum NamedValue {
    Entry(String, String),
    Flag(String),
}

impl Entry for NamedValue {
    const FLAGS_ADD: bool = true;
}

impl std::str::FromStr for NamedValue {
    type Err = std::convert::Infallible;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(NamedValue::Flag(text.to_string()))
    }
}

/// `include = "*.jpg"` or `include = ["*.jpg", "*.png"]`.
fn one_or_many<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Given<String>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let given = Given::<OneOrMany>::deserialize(deserializer)?;
    let globs = match &given.value {
        OneOrMany::One(one) => vec![one.clone()],
        OneOrMany::Many(many) => many.clone(),
    };
    Ok(globs.into_iter().map(|glob| given.with(glob)).collect())
}

/// `env = { K = "V" }`, `files = { NAME = "PATH" }`: one entry per key, each at the table's line.
fn named_values<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Given<NamedValue>>, D::Error> {
    let given = Given::<BTreeMap<String, String>>::deserialize(deserializer)?;
    Ok(given.value.iter().map(|(k, v)| given.with(NamedValue::Entry(k.clone(), v.clone()))).collect())
}

job_table! {
    /// `[input]`: what the job reads and how it is cut into shards.
    #[command(next_help_heading = "Input ([input] in a job file)")]
    struct InputTable in "input" {
        /// Input: a folder, s3:// (az://, gs://) bucket/prefix/, file:///path, or one CSV/JSONL/text object.
        #[arg(long = "input", value_name = "SRC")]
        source: Option<Given<String>>,
        /// Keep only keys matching this glob (repeatable).
        #[arg(long, value_name = "GLOB")]
        #[serde(default, deserialize_with = "one_or_many")]
        include: Vec<Given<String>>,
        /// Shard rule: object, objects=N, bytes=SIZE, rows=N, chunk=SIZE.
        #[arg(long, value_name = "RULE")]
        shard: Option<Given<ShardSpec>>,
        /// `[input.kafka]`, for a kafka:// source (its flags are the --kafka-* below).
        #[arg(skip)]
        kafka: Option<Given<KafkaTable>>,
        /// Kafka: the consumer group whose offsets follow the job (default: the job's name).
        #[arg(long = "kafka-group", value_name = "GROUP")]
        #[serde(skip)]
        kafka_group: Option<Given<String>>,
        /// Kafka: where a new job starts: committed, earliest, latest, or a time (RFC 3339).
        #[arg(long = "kafka-start", value_name = "WHERE")]
        #[serde(skip)]
        kafka_start: Option<Given<String>>,
        /// Kafka: records on stdin as lines, or length-prefixed (4-byte big-endian length).
        #[arg(long = "kafka-format", value_name = "FORMAT")]
        #[serde(skip)]
        kafka_format: Option<Given<String>>,
    }
}

/// `[input.kafka]`: the consumer group, where to start, the record format, and librdkafka
/// settings passed through (`settings = { "security.protocol" = "SASL_SSL" }`).
#[derive(Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct KafkaTable {
    pub(crate) group: Option<Spanned<String>>,
    pub(crate) start: Option<Spanned<toml::Value>>,
    pub(crate) format: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) settings: BTreeMap<String, Spanned<String>>,
}

job_table! {
    /// `[function]`: the WebAssembly function and the limits of each invocation.
    #[command(next_help_heading = "Function ([function])")]
    struct FunctionTable in "function" {
        /// The function: a .wasm file, an s3:// (az://, gs://) object, or a crate folder to build.
        #[arg(long = "function", value_name = "F")]
        wasm: Option<Given<String>>,
        /// A Python function instead: a .py script, or a folder with main.py (and requirements.txt).
        #[arg(long = "python", value_name = "SCRIPT")]
        python: Option<Given<String>>,
        /// A native command instead, e.g. "convert {in} -resize 64x64 {out}/{stem}.png" (split
        /// like a shell's words, never run by a shell; placeholders {in} {name} {stem} {ext} {out}).
        #[arg(long = "command", value_name = "COMMAND")]
        command: Option<Given<CommandWords>>,
        /// How a native command is isolated: bubblewrap (the default), or none.
        #[arg(long, value_name = "SANDBOX")]
        sandbox: Option<Given<String>>,
        /// Set in the file; arguments after `--` on the command line are appended.
        #[arg(skip)]
        args: Option<Given<Vec<String>>>,
        /// An environment variable for the function (repeatable).
        #[arg(long, value_name = "K=V")]
        #[serde(default, deserialize_with = "named_values")]
        env: Vec<Given<NamedValue>>,
        /// A file the function reads at /files/NAME, read-only (repeatable): NAME=PATH, a local
        /// path or an s3:// (az://, gs://) object.
        #[arg(long = "file", value_name = "NAME=PATH")]
        #[serde(default, deserialize_with = "named_values")]
        files: Vec<Given<NamedValue>>,
        /// Per-invocation time limit (e.g. 30s), or a share of the median shard (e.g. 200%).
        #[arg(long, value_name = "DURATION")]
        timeout: Option<Given<String>>,
        /// The hard limit of a relative timeout (--timeout 200%), e.g. 10m.
        #[arg(long, value_name = "DURATION")]
        timeout_cap: Option<Given<String>>,
        /// Per-invocation memory limit (e.g. 256MiB).
        #[arg(long, value_name = "SIZE")]
        memory: Option<Given<SizeValue>>,
    }
}

job_table! {
    /// `[output]`: where outputs land, and what one shard may write.
    #[command(next_help_heading = "Output ([output])")]
    struct OutputTable in "output" {
        /// Output: a folder or s3:// (az://, gs://) bucket/prefix/.
        #[arg(long = "output", value_name = "DEST")]
        dest: Option<Given<String>>,
        /// Most output files per shard.
        #[arg(long, value_name = "N")]
        max_files: Option<Given<i64>>,
        /// Most output bytes per shard (e.g. 1GiB).
        #[arg(long, value_name = "SIZE")]
        max_bytes: Option<Given<SizeValue>>,
    }
}

job_table! {
    /// `[workers]`: the pool that runs attempts.
    #[command(next_help_heading = "Workers ([workers])")]
    struct WorkersTable in "workers" {
        /// Most workers at once (0 = one per core).
        #[arg(long = "max-workers", value_name = "N")]
        max: Option<Given<i64>>,
        /// A worker idle this long exits (e.g. 1s).
        #[arg(long, value_name = "DURATION")]
        idle: Option<Given<String>>,
    }
}

job_table! {
    /// `[retry]`: attempts per shard, and how many failed shards the job tolerates.
    #[command(next_help_heading = "Retries ([retry])")]
    struct RetryTable in "retry" {
        /// Attempts per shard (1 = no retry).
        #[arg(long, value_name = "N")]
        attempts: Option<Given<i64>>,
        /// Wait before the first retry; doubles for each next one (e.g. 200ms).
        #[arg(long, value_name = "DURATION")]
        backoff: Option<Given<String>>,
        /// Failed shards the job tolerates: a share ("5%") or a count ("3").
        #[arg(long, value_name = "SHARE")]
        tolerated: Option<Given<String>>,
    }
}

job_table! {
    /// `[stragglers]`: backup attempts for slow shards at the end of a job.
    #[command(next_help_heading = "Stragglers ([stragglers])")]
    struct StragglersTable in "stragglers" {
        /// No backup attempts for stragglers.
        #[arg(long = "no-backup", num_args = 0, default_missing_value = "false")]
        backup: Option<Given<bool>>,
        /// Start backup attempts once this share of shards is done (e.g. 90%).
        #[arg(long = "backup-after", value_name = "SHARE")]
        after: Option<Given<String>>,
        /// A straggler runs longer than this many times the median shard (e.g. 3).
        #[arg(long = "backup-factor", value_name = "N")]
        factor: Option<Given<f64>>,
    }
}

job_table! {
    /// `[executor]`: where attempts run: this machine's pool, AWS Lambda, Slurm or Kubernetes.
    #[command(next_help_heading = "Executor ([executor])")]
    struct ExecutorTable in "executor" {
        /// Where shards run: local (this machine's pool), lambda, slurm, cloud-run, code-engine, aws-batch or kubernetes (`fanout k8s`).
        #[arg(long = "executor", value_name = "KIND")]
        kind: Option<Given<String>>,
        /// The Lambda function running `fanout lambda worker` (a name or an ARN).
        #[arg(long = "lambda-function", value_name = "NAME")]
        function: Option<Given<String>>,
        /// Invocations in flight (lambda) or array tasks running (slurm) at most.
        #[arg(long, value_name = "N")]
        concurrency: Option<Given<i64>>,
        /// Shards per invocation at most (lambda; default: about a second of work each).
        #[arg(long = "lambda-batch", value_name = "N")]
        batch: Option<Given<i64>>,
        /// An extra sbatch argument (slurm; repeatable), e.g. --slurm-arg=--partition=cpu.
        #[arg(long = "slurm-arg", value_name = "ARG", allow_hyphen_values = true)]
        #[serde(default, deserialize_with = "one_or_many")]
        slurm_args: Vec<Given<String>>,
        /// The fanout binary Slurm's tasks run, as the nodes see it (default: this one's path).
        #[arg(long = "slurm-worker", value_name = "PATH")]
        worker: Option<Given<String>>,
        /// The container image whose entrypoint is fanout (kubernetes), e.g. REGISTRY/fanout:TAG.
        #[arg(long, value_name = "IMAGE")]
        image: Option<Given<String>>,
        /// The Kubernetes Secret whose keys become the pods' environment (S3 credentials).
        #[arg(long, value_name = "NAME")]
        secret: Option<Given<String>>,
        /// The cloud project the engine runs in (cloud-run: the project; code-engine: the project's id).
        #[arg(long, value_name = "ID")]
        project: Option<Given<String>>,
        /// The cloud region the engine runs in (cloud-run: us-central1...; code-engine: us-south...;
        /// aws-batch: default the AWS SDK's).
        #[arg(long, value_name = "REGION")]
        region: Option<Given<String>>,
        /// The engine's job whose runs execute the shards, created with fanout's image (cloud-run,
        /// code-engine; aws-batch: the job definition).
        #[arg(id = "engine_job", long = "engine-job", value_name = "NAME")]
        job: Option<Given<String>>,
        /// The job queue the arrays are submitted to (aws-batch; the AWS CLI's `--job-queue`).
        #[arg(id = "job_queue", long = "job-queue", value_name = "NAME")]
        queue: Option<Given<String>>,
    }
}

job_table! {
    /// `[watch]`: how `fanout watch` looks for new objects.
    #[command(next_help_heading = "Watch ([watch], for fanout watch)")]
    struct WatchTable in "watch" {
        /// How often an S3 prefix is listed while objects arrive (backs off to 30s when idle).
        #[arg(long = "watch-interval", value_name = "DURATION")]
        interval: Option<Given<String>>,
        /// A local file is taken once its size and time stayed the same this long.
        #[arg(long, value_name = "DURATION")]
        settle: Option<Given<String>>,
        /// A Kafka shard closes this long after its first record, full or not (default 5s).
        #[arg(long = "max-wait", value_name = "DURATION")]
        max_wait: Option<Given<String>>,
    }
}

job_table! {
    /// `[reduce]`: one step after the map, over every map output.
    #[command(next_help_heading = "Reduce ([reduce])")]
    struct ReduceTable in "reduce" {
        /// The reduce function: a .wasm file, an s3:// (az://, gs://) object, or a crate folder to build.
        #[arg(id = "reduce_wasm", long = "reduce", value_name = "F")]
        wasm: Option<Given<String>>,
        /// Concatenate the map's outputs in shard order instead of running a function.
        #[arg(long = "reduce-concat", num_args = 0, default_missing_value = "true")]
        concat: Option<Given<bool>>,
        /// The reduce function's arguments.
        #[arg(skip)]
        args: Option<Given<Vec<String>>>,
        /// Map outputs one reduce invocation reads at most; more make a tree of reduces.
        #[arg(long, value_name = "N")]
        fan_in: Option<Given<i64>>,
        /// The final object, under DEST.
        #[arg(id = "reduce_output", long = "reduce-output", value_name = "KEY")]
        output: Option<Given<String>>,
        /// Attempts per reduce invocation (default: retry.attempts).
        #[arg(skip)]
        attempts: Option<Given<i64>>,
        /// Time limit of one reduce invocation (default: function.timeout).
        #[arg(skip)]
        timeout: Option<Given<String>>,
        /// Memory limit of one reduce invocation (default: function.memory).
        #[arg(skip)]
        memory: Option<Given<SizeValue>>,
    }
}

/// A whole job: the file's top level, whose tables are flattened into the flags of every
/// command that builds a job.
#[derive(clap::Args, Deserialize, Debug, Clone, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct JobFile {
    /// Job name (default: the job file's name).
    #[arg(long, help_heading = "Job")]
    pub(crate) name: Option<Given<String>>,
    #[command(flatten)]
    #[serde(default)]
    pub(crate) input: InputTable,
    #[command(flatten)]
    #[serde(default)]
    pub(crate) function: FunctionTable,
    #[command(flatten)]
    #[serde(default)]
    pub(crate) output: OutputTable,
    #[command(flatten)]
    #[serde(default)]
    pub(crate) workers: WorkersTable,
    #[command(flatten)]
    #[serde(default)]
    pub(crate) retry: RetryTable,
    #[command(flatten)]
    #[serde(default)]
    pub(crate) stragglers: StragglersTable,
    #[command(flatten)]
    #[serde(default)]
    pub(crate) executor: ExecutorTable,
    #[command(flatten)]
    #[serde(default)]
    pub(crate) watch: WatchTable,
    #[command(flatten)]
    #[serde(default)]
    pub(crate) reduce: ReduceTable,
}

impl JobFile {
    /// The flags over the file, table by table; every value named for error texts.
    pub(crate) fn overlay(self, flags: JobFile, text: &JobText) -> JobFile {
        let names = flag_names::<JobFile>();
        JobFile {
            name: Layer::layer(self.name, flags.name, &Naming::new(text, "", "name", &names)),
            input: self.input.overlay(flags.input, text),
            function: self.function.overlay(flags.function, text),
            output: self.output.overlay(flags.output, text),
            workers: self.workers.overlay(flags.workers, text),
            retry: self.retry.overlay(flags.retry, text),
            stragglers: self.stragglers.overlay(flags.stragglers, text),
            executor: self.executor.overlay(flags.executor, text),
            watch: self.watch.overlay(flags.watch, text),
            reduce: self.reduce.overlay(flags.reduce, text),
        }
    }
}

/// What builds a job on the command line: a job file, flags over its fields, and
/// arguments for the function.
#[derive(clap::Args, Debug, Clone, Default)]
pub(crate) struct JobArgs {
    /// The job file (TOML). Optional when --input, --function and --output are given.
    #[arg(value_name = "JOB.toml")]
    pub(crate) file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) flags: JobFile,
    /// Arguments appended to the function's arguments.
    #[arg(last = true, value_name = "ARGS", help_heading = "Function ([function])")]
    pub(crate) args: Vec<String>,
}
