//! Resolution: the job file's tables with the flags laid over them become one [`Job`],
//! table by table, each value checked and parsed with an error that names its line (or
//! flag) and field. Owns the validation rules and the filling of defaults; it reads the job
//! file and nothing else (it never lists inputs, opens storage or loads the function: a glob
//! that matches nothing is found by `source`).

use super::error::{syntax_error, JobError, JobText, Origin};
use super::model::{
    defaults, share_of_shards, Executor, Function, Include, Input, Job, Output, Reduce, ReduceStep, Retry, Sandbox,
    ShardRule, SideFile, Stragglers, Watch, Workers, PLACEHOLDERS,
};
use super::schema::{
    CommandWords, ExecutorTable, FunctionTable, Given, InputTable, JobArgs, JobFile, NamedValue, OutputTable,
    ReduceTable, RetryTable, ShardSpec, ShardTable, SizeValue, StragglersTable, WatchTable, WorkersTable,
};
use crate::location::Location;
use crate::units::{self, Tolerance};
use std::collections::BTreeMap;
use std::time::Duration;
use toml::Spanned;

/// Where the fields that later stages check came from, so that an error found after
/// resolution (a glob that matches nothing, a missing function) still points at the line.
#[derive(Debug, Clone, Default)]
pub(crate) struct Origins(BTreeMap<&'static str, Origin>);

impl Origins {
    /// `"jobs/x.toml:3: "` for a field set in a file, else an empty string.
    pub(crate) fn prefix(&self, field: &str) -> String {
        match self.0.get(field) {
            Some(origin @ Origin::File { .. }) => format!("{origin}: "),
            _ => String::new(),
        }
    }

    fn note<T>(&mut self, field: &'static str, given: &Given<T>) {
        self.0.insert(field, given.origin().clone());
    }
}

/// Reads the job file (if any), lays the flags over it and returns the resolved job, with
/// where its checked-later fields came from.
pub(crate) fn resolve(args: &JobArgs) -> Result<(Job, Origins), JobError> {
    let file = args.file.as_deref();
    let text = read_job_file(file)?;
    let text = JobText { file, text: &text };
    let fields = parsed(&text)?.overlay(args.flags.clone(), &text);
    let mut origins = Origins::default();
    let name = resolve_name(fields.name, &text)?;
    // The executor's check names these fields as the user gave them.
    let addresses = (fields.input.source.clone(), fields.output.dest.clone());
    let input = resolve_input(fields.input, &name, &text, &mut origins)?;
    let function = resolve_function_table(fields.function, &args.args, &input, &text, &mut origins)?;
    let output = resolve_output(fields.output, &input.source, &text, &mut origins)?;
    let executor = resolve_executor(fields.executor, addresses, &input, &output, &text.whole())?;
    let retry = resolve_retry(fields.retry)?;
    let reduce = resolve_reduce(fields.reduce, &function, &retry, &input, &text)?;
    let job = Job {
        name,
        input,
        function,
        output,
        workers: resolve_workers(fields.workers)?,
        retry,
        stragglers: resolve_stragglers(fields.stragglers)?,
        executor,
        watch: resolve_watch(fields.watch)?,
        reduce,
    };
    Ok((job, origins))
}

/// The job file's text (empty without one).
fn read_job_file(file: Option<&std::path::Path>) -> Result<String, JobError> {
    match file {
        Some(path) => std::fs::read_to_string(path).map_err(|source| JobError::Read { file: path.into(), source }),
        None => Ok(String::new()),
    }
}

fn parsed(text: &JobText) -> Result<JobFile, JobError> {
    match text.file {
        Some(path) => toml::from_str(text.text).map_err(|e| syntax_error(path, text.text, e)),
        None => Ok(JobFile::default()),
    }
}

/// The function of a job file and flags, the job's name and its `[workers]`, for `fanout
/// serve`: each request is the input and the answer the output, so `input` and `output` may
/// be left out (and are not opened when given); the function, its arguments, environment,
/// side files, timeout and memory are the job's.
pub(crate) fn resolve_function(args: &JobArgs) -> Result<(String, Function, Workers, Origins), JobError> {
    let file = args.file.as_deref();
    let text = read_job_file(file)?;
    let text = JobText { file, text: &text };
    let mut fields = parsed(&text)?.overlay(args.flags.clone(), &text);
    let mut origins = Origins::default();
    let name = resolve_name(fields.name, &text)?;
    // A request is one file: the shard rule a command's {key} placeholders read.
    fields.input.source.get_or_insert_with(|| Given::by_default(".".to_string(), "input.source"));
    fields.input.shard = None;
    let input = resolve_input(fields.input, &name, &text, &mut Origins::default())?;
    let function = resolve_function_table(fields.function, &args.args, &input, &text, &mut origins)?;
    Ok((name, function, resolve_workers(fields.workers)?, origins))
}

/// A required field, or the error saying where to set it./// A required field, or the error saying where to set it.
fn required<T>(given: Option<Given<T>>, field: &str, flag: &str, text: &JobText) -> Result<Given<T>, JobError> {
    given.ok_or_else(|| JobError::Missing {
        whole: text.whole(),
        field: field.to_string(),
        hint: format!("set it in the job file or pass {flag}"),
    })
}

/// A required address (`input.source`, `function.wasm`, `output.dest`): the value as given,
/// for error texts, and the location it names. Where it came from is noted in `origins`.
fn required_location(
    given: Option<Given<String>>,
    field: &'static str,
    flag: &str,
    text: &JobText,
    origins: &mut Origins,
) -> Result<(Given<String>, Location), JobError> {
    let given = required(given, field, flag, text)?;
    let location = location_of(&given)?;
    origins.note(field, &given);
    Ok((given, location))
}

fn or_default(given: Option<Given<String>>, default: &str, field: &str) -> Given<String> {
    given.unwrap_or_else(|| Given::by_default(default.to_string(), field))
}

fn bytes_of(value: &SizeValue) -> Result<u64, String> {
    match value {
        SizeValue::Bytes(n) if *n >= 0 => Ok(*n as u64),
        SizeValue::Bytes(n) => Err(format!("{n} is negative; a size must be at least 0")),
        SizeValue::Text(text) => units::parse_size(text),
    }
}

fn size_of(given: &Given<SizeValue>) -> Result<u64, JobError> {
    bytes_of(&given.value).map_err(|message| given.error(message))
}

fn duration_of(given: &Given<String>) -> Result<Duration, JobError> {
    units::parse_duration(&given.value).map_err(|message| given.error(message))
}

/// An address fanout reads or writes objects at: anything but a Kafka topic.
fn location_of(given: &Given<String>) -> Result<Location, JobError> {
    match Location::parse(&given.value).map_err(|e| given.error(e.to_string()))? {
        Location::Kafka { .. } => Err(given.error("a Kafka topic can only be input.source")),
        location => Ok(location),
    }
}

fn resolve_name(given: Option<Given<String>>, text: &JobText) -> Result<String, JobError> {
    let Some(given) = given else {
        let stem = text.file.and_then(|f| f.file_stem()).map(|s| s.to_string_lossy().into_owned());
        return Ok(stem.filter(|s| !s.is_empty()).unwrap_or_else(|| "job".to_string()));
    };
    let name = &given.value;
    let valid =
        !name.is_empty() && name.len() <= 64 && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if !valid {
        return Err(given.error(format!("\"{name}\" is not a job name (1-64 letters, digits, '-', '_' or '.')")));
    }
    Ok(given.value)
}

fn resolve_input(table: InputTable, name: &str, text: &JobText, origins: &mut Origins) -> Result<Input, JobError> {
    let given = required(table.source.clone(), "input.source", "--input SRC", text)?;
    let source = Location::parse(&given.value).map_err(|e| given.error(e.to_string()))?;
    origins.note("input.source", &given);
    let kafka = super::kafka::resolve_kafka(&table, source.is_kafka(), name, text)?;
    let mut include = Include::default();
    if let Some(first) = table.include.first() {
        origins.note("input.include", first);
        let globs = table.include.iter().map(|g| g.value.clone()).collect();
        include = Include::new(globs).map_err(|message| first.error(message))?;
    }
    let shard = match &table.shard {
        None => None,
        Some(given) => Some((
            given,
            match &given.value {
                ShardSpec::Rule(rule) => ShardRule::parse_flag(rule).map_err(|message| given.error(message))?,
                ShardSpec::Table(shard_table) => shard_from_table(given, shard_table, text)?,
            },
        )),
    };
    let shard = match (&kafka, shard) {
        (Some(_), shard) => super::kafka::kafka_shard_rule(shard)?,
        (None, shard) => shard.map_or(ShardRule::Object, |(_, rule)| rule),
    };
    Ok(Input { source, include, shard, kafka })
}

fn resolve_function_table(
    table: FunctionTable,
    extra_args: &[String],
    input: &Input,
    text: &JobText,
    origins: &mut Origins,
) -> Result<Function, JobError> {
    let sandbox = resolve_sandbox(table.sandbox)?;
    let (wasm, python, command) = match (table.wasm, table.python, table.command) {
        (wasm, python, command) if wasm.is_some() as u8 + python.is_some() as u8 + command.is_some() as u8 > 1 => {
            return Err(one_function_kind(wasm, python, command));
        }
        (_, _, Some(command)) => (None, None, Some(resolve_command(command, input)?)),
        (_, Some(python), _) => (None, Some(resolve_python(python, origins)?), None),
        (wasm, None, None) => {
            (Some(required_location(wasm, "function.wasm", "--function F", text, origins)?.1), None, None)
        }
    };
    let mut args = table.args.map(|given| given.value).unwrap_or_default();
    args.extend(extra_args.iter().cloned());
    let mut env = BTreeMap::new();
    for given in &table.env {
        let (key, value) = match &given.value {
            NamedValue::Entry(key, value) => (key.clone(), value.clone()),
            NamedValue::Flag(pair) => {
                let (key, value) = pair.split_once('=').ok_or_else(|| given.error(format!("\"{pair}\" is not K=V")))?;
                (key.to_string(), value.to_string())
            }
        };
        check_env_key(&key).map_err(|message| given.entry_error(&key, message))?;
        env.insert(key, value);
    }
    let files = resolve_files(&table.files, origins)?;
    let (timeout, relative_timeout_percent) = resolve_timeout(table.timeout, table.timeout_cap)?;
    let memory = or_default_size(table.memory, defaults::MEMORY, "function.memory");
    let memory_bytes = size_of(&memory)?;
    if memory_bytes < (1 << 16) {
        return Err(memory.error(format!("{memory_bytes} bytes is below one WebAssembly page (64KiB)")));
    }
    if memory_bytes > defaults::MEMORY_CEILING {
        return Err(memory.error(format!(
            "{} is above the {} a guest may use",
            units::format_size(memory_bytes),
            units::format_size(defaults::MEMORY_CEILING)
        )));
    }
    Ok(Function {
        wasm,
        python,
        command,
        sandbox,
        args,
        env,
        files,
        timeout_ms: timeout.as_millis().max(1) as u64,
        relative_timeout_percent,
        memory_bytes,
    })
}

/// Side files: each name one plain file name (what the function opens under `/files/`),
/// each source a local path or an object.
fn resolve_files(given: &[Given<NamedValue>], origins: &mut Origins) -> Result<BTreeMap<String, SideFile>, JobError> {
    let mut files = BTreeMap::new();
    // Which names a `--file` flag gave: a flag overrides the job file's side file of the same
    // name, as every flag overrides its field; twice in one place is still an error.
    let mut flagged = std::collections::BTreeSet::new();
    for entry in given {
        let (name, source, from_flag) = match &entry.value {
            NamedValue::Entry(name, source) => (name.clone(), source.clone(), false),
            NamedValue::Flag(pair) => {
                let (name, source) =
                    pair.split_once('=').ok_or_else(|| entry.error(format!("\"{pair}\" is not NAME=PATH")))?;
                (name.to_string(), source.to_string(), true)
            }
        };
        let plain = !name.is_empty() && name != "." && name != ".." && !name.contains(['/', '\0']) && name.len() <= 255;
        if !plain {
            return Err(entry.entry_error(&name, format!("\"{name}\" is not a file name (one name, no '/')")));
        }
        let source = match Location::parse(&source).map_err(|e| entry.entry_error(&name, e.to_string()))? {
            Location::Kafka { .. } => return Err(entry.entry_error(&name, "a Kafka topic is not a file")),
            location => location,
        };
        let given_before = files.insert(name.clone(), SideFile { source, sha256: String::new() }).is_some();
        let overrides_the_job_file = from_flag && !flagged.contains(&name);
        if given_before && !overrides_the_job_file {
            return Err(entry.entry_error(&name, format!("\"{name}\" is given twice")));
        }
        if from_flag {
            flagged.insert(name.clone());
        }
        origins.note("function.files", entry);
    }
    Ok(files)
}

/// The error for a function given two ways: it names the later field given, and the other.
fn one_function_kind(
    wasm: Option<Given<String>>,
    python: Option<Given<String>>,
    command: Option<Given<CommandWords>>,
) -> JobError {
    let mut given: Vec<&str> = Vec::new();
    if wasm.is_some() {
        given.push("function.wasm");
    }
    if python.is_some() {
        given.push("function.python");
    }
    let listed = given.join(" and ");
    match (command, python) {
        (Some(command), _) => {
            command.error(format!("give the function one way: {listed} or function.command, not both"))
        }
        (None, Some(python)) => python.error("give the function one way: function.wasm or function.python, not both"),
        (None, None) => unreachable!("two kinds were given"),
    }
}

/// A Python function's script or folder: a local path (fanout builds it on this machine).
fn resolve_python(given: Given<String>, origins: &mut Origins) -> Result<std::path::PathBuf, JobError> {
    match Location::parse(&given.value).map_err(|e| given.error(e.to_string()))? {
        Location::Local(path) => {
            origins.note("function.python", &given);
            Ok(path)
        }
        other => Err(given.error(format!(
            "{other} is not a local path: a Python function is built on this machine from a script or a folder"
        ))),
    }
}

fn resolve_sandbox(given: Option<Given<String>>) -> Result<Sandbox, JobError> {
    let Some(given) = given else { return Ok(Sandbox::default()) };
    match given.value.as_str() {
        "bubblewrap" => Ok(Sandbox::Bubblewrap),
        "none" => Ok(Sandbox::None),
        other => Err(given.error(format!("\"{other}\" is not a sandbox: \"bubblewrap\" (the default) or \"none\""))),
    }
}

/// A native command's words: split like a shell's when given as one string, never empty,
/// and every `{placeholder}` one fanout knows; the ones naming the input need one object a
/// shard.
fn resolve_command(given: Given<CommandWords>, input: &Input) -> Result<Vec<String>, JobError> {
    let words = match &given.value {
        CommandWords::Words(words) => words.clone(),
        CommandWords::Line(line) => shlex::split(line)
            .ok_or_else(|| given.error(format!("{line:?} has an unclosed quote or a trailing backslash")))?,
    };
    if words.first().is_none_or(|program| program.is_empty()) {
        return Err(given.error("the command is empty: name a program, e.g. [\"convert\", \"{in}\", ...]"));
    }
    for word in &words {
        for name in placeholders(word).map_err(|message| given.error(message))? {
            if !PLACEHOLDERS.contains(&name) {
                return Err(given.error(format!(
                    "{{{name}}} in {} is not a placeholder: use {{in}} {{name}} {{stem}} {{ext}} {{out}} \
                     (write {{{{ and }}}} for braces)",
                    shown(word)
                )));
            }
            if name != "out" && input.shard != ShardRule::Object {
                return Err(given.error(format!(
                    "{{{name}}} names the shard's one input, but input.shard is {}: use shard = \"object\", \
                     or read /in (records arrive on stdin)",
                    input.shard
                )));
            }
        }
    }
    Ok(words)
}

/// The placeholder names in one word of a command (`{{` and `}}` are literal braces).
pub(crate) fn placeholders(word: &str) -> Result<Vec<&str>, String> {
    let mut names = Vec::new();
    let mut rest = word;
    while let Some(at) = rest.find(['{', '}']) {
        let (brace, after) = (&rest[at..at + 1], &rest[at + 1..]);
        if after.starts_with(brace) {
            rest = &after[1..];
            continue;
        }
        if brace == "}" {
            return Err(format!("{} has a lone }} (write }}}} for a brace)", shown(word)));
        }
        let end =
            after.find('}').ok_or_else(|| format!("{} has an unclosed {{ (write {{{{ for a brace)", shown(word)))?;
        names.push(&after[..end]);
        rest = &after[end + 1..];
    }
    Ok(names)
}

/// A command word as an error shows it: quoted, and its start only when it is long (a
/// script given inline).
fn shown(word: &str) -> String {
    const LONGEST: usize = 40;
    match word.char_indices().nth(LONGEST) {
        Some((cut, _)) => format!("{:?}...", &word[..cut]),
        None => format!("{word:?}"),
    }
}

fn or_default_size(given: Option<Given<SizeValue>>, default: &str, field: &str) -> Given<SizeValue> {
    given.unwrap_or_else(|| Given::by_default(SizeValue::Text(default.to_string()), field))
}

/// `timeout = "30s"` (a hard limit) or `"200%"` (a share of the median, capped by
/// `timeout_cap`): the hard limit, and the share when there is one.
fn resolve_timeout(
    timeout: Option<Given<String>>,
    cap: Option<Given<String>>,
) -> Result<(Duration, Option<f64>), JobError> {
    let timeout = or_default(timeout, defaults::TIMEOUT, "function.timeout");
    let (limit, percent) = match timeout.value.trim().strip_suffix('%') {
        Some(percent) => {
            let percent: f64 = percent.trim().parse().map_err(|_| {
                timeout.error(format!(
                    "\"{}\" is not a duration or a share of the median (\"30s\", \"200%\")",
                    timeout.value
                ))
            })?;
            if !(percent > 100.0 && percent <= 100_000.0) {
                return Err(
                    timeout.error(format!("{percent}% of the median would stop typical shards; give more than 100%"))
                );
            }
            (duration_of(&or_default(cap, defaults::TIMEOUT_CAP, "function.timeout_cap"))?, Some(percent))
        }
        None => {
            if let Some(cap) = &cap {
                return Err(cap.error("timeout_cap goes with a relative timeout (timeout = \"200%\")"));
            }
            (duration_of(&timeout)?, None)
        }
    };
    if limit.is_zero() {
        return Err(timeout.error("the timeout must be longer than 0"));
    }
    Ok((limit, percent))
}

fn resolve_output(
    table: OutputTable,
    source: &Location,
    text: &JobText,
    origins: &mut Origins,
) -> Result<Output, JobError> {
    let (dest, dest_location) = required_location(table.dest, "output.dest", "--output DEST", text, origins)?;
    if source.contains(&dest_location) {
        return Err(
            dest.error(format!("{dest_location} lies inside the input {source}: outputs would be read back as inputs"))
        );
    }
    let max_files = match table.max_files {
        Some(given) if given.value < 1 => return Err(given.error(format!("{} must be at least 1", given.value))),
        Some(given) => given.value as u64,
        None => defaults::MAX_FILES,
    };
    let max_bytes = size_of(&or_default_size(table.max_bytes, defaults::MAX_BYTES, "output.max_bytes"))?;
    Ok(Output { dest: dest_location, max_files, max_bytes })
}

/// Workers fanout runs at most, whatever the job asks.
const MOST_WORKERS: i64 = 1024;

fn resolve_workers(table: WorkersTable) -> Result<Workers, JobError> {
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let max = match table.max {
        Some(given) if given.value < 0 => {
            return Err(given.error(format!("{} is negative (0 means one per core)", given.value)))
        }
        Some(given) if given.value > MOST_WORKERS => {
            return Err(
                given.error(format!("{} workers is more than the {MOST_WORKERS} fanout runs at once", given.value))
            )
        }
        Some(given) if given.value > 0 => given.value as usize,
        _ => cores,
    };
    let idle = duration_of(&or_default(table.idle, defaults::IDLE, "workers.idle"))?;
    Ok(Workers { max, idle_ms: idle.as_millis() as u64 })
}

fn resolve_retry(table: RetryTable) -> Result<Retry, JobError> {
    let attempts = match table.attempts {
        Some(given) if !(1..=100).contains(&given.value) => {
            return Err(given.error(format!("{} is not between 1 and 100 (1 means no retry)", given.value)))
        }
        Some(given) => given.value as u32,
        None => defaults::ATTEMPTS,
    };
    let backoff = duration_of(&or_default(table.backoff, defaults::BACKOFF, "retry.backoff"))?;
    let tolerated = or_default(table.tolerated, defaults::TOLERATED, "retry.tolerated");
    Ok(Retry {
        attempts,
        backoff_ms: backoff.as_millis() as u64,
        tolerated: Tolerance::parse(&tolerated.value).map_err(|message| tolerated.error(message))?,
    })
}

/// Lambda invocations in flight at most, whatever the job asks (AWS's own account limit is
/// raised on request; beyond this one coordinator would be the bottleneck).
const MOST_INVOCATIONS: i64 = 10_000;

/// Shards one invocation carries at most (Lambda's 6 MB payload allows far more; beyond
/// this, one slow shard would hold back too many others).
const MOST_BATCH: i64 = 256;

/// Workers elsewhere (`who`) see neither this machine's files nor its paths: their job
/// reads and writes object-store addresses (s3://, az://, gs://). The error names the field as the user gave it.
fn refuse_local_paths(
    (source, dest): (Option<Given<String>>, Option<Given<String>>),
    input: &Input,
    output: &Output,
    who: &str,
) -> Result<(), JobError> {
    for (given, location) in [(source, &input.source), (dest, &output.dest)] {
        // A Kafka source is refused for remote workers by its own rule (`resolve_executor`).
        if let Some(given) = given.filter(|_| !location.is_object_store() && !location.is_kafka()) {
            return Err(given.error(format!(
                "{location} is a local path, and {who} cannot reach this machine's files: this job reads and writes s3://, az:// or gs:// addresses"
            )));
        }
    }
    Ok(())
}

/// A Kubernetes object name (RFC 1123 subdomain): lowercase letters, digits, `-` and `.`.
pub(crate) fn is_dns_name(name: &str) -> bool {
    let fits = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.';
    (1..=253).contains(&name.len())
        && name.chars().all(fits)
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// `[executor]`: a lambda or kubernetes job needs its input and output in S3, since its
/// workers are elsewhere and see neither this machine's files nor its paths.
fn resolve_executor(
    table: ExecutorTable,
    addresses: (Option<Given<String>>, Option<Given<String>>),
    input: &Input,
    output: &Output,
    whole: &str,
) -> Result<Executor, JobError> {
    let kind = or_default(table.kind, "local", "executor.kind");
    let concurrency = match &table.concurrency {
        Some(given) if !(1..=MOST_INVOCATIONS).contains(&given.value) => {
            return Err(given.error(format!("{} is not between 1 and {MOST_INVOCATIONS}", given.value)))
        }
        Some(given) => given.value as usize,
        None => defaults::LAMBDA_CONCURRENCY,
    };
    if input.source.is_kafka() && kind.value != "local" {
        return Err(kind.error(format!(
            "a Kafka source runs on the local executor only (the {} workers would each need the brokers and \
             the group's offsets; not supported yet)",
            kind.value
        )));
    }
    match kind.value.as_str() {
        "local" => Ok(Executor::Local),
        "lambda" => {
            let function = table.function.ok_or_else(|| {
                kind.error("a lambda job needs its function: set executor.function or pass --lambda-function NAME")
            })?;
            if function.value.trim().is_empty() {
                return Err(function.error("the Lambda function's name is empty"));
            }
            refuse_local_paths(addresses, input, output, "Lambda workers")?;
            let batch = match table.batch {
                Some(given) if !(1..=MOST_BATCH).contains(&given.value) => {
                    return Err(given.error(format!("{} is not between 1 and {MOST_BATCH}", given.value)))
                }
                given => given.map(|g| g.value as usize),
            };
            Ok(Executor::Lambda { function: function.value, concurrency, batch })
        }
        "slurm" => {
            let args = table.slurm_args.into_iter().map(|given| given.value).collect();
            let worker = match table.worker {
                Some(given) if given.value.trim().is_empty() => return Err(given.error("the worker's path is empty")),
                given => given.map(|g| g.value),
            };
            Ok(Executor::Slurm { concurrency, args, worker })
        }
        "kubernetes" | "k8s" => {
            refuse_local_paths(addresses, input, output, "Kubernetes pods")?;
            let image = table.image.ok_or_else(|| JobError::Missing {
                whole: whole.to_string(),
                field: "executor.image".into(),
                hint: "the pods run fanout from a container image: set executor.image or pass --image IMAGE".into(),
            })?;
            if image.value.trim().is_empty() {
                return Err(image.error("the image is empty"));
            }
            let secret = match table.secret {
                Some(given) if !is_dns_name(&given.value) => {
                    return Err(given.error(format!("{:?} is not a Kubernetes object name", given.value)))
                }
                given => given.map(|g| g.value),
            };
            Ok(Executor::Kubernetes { concurrency, image: image.value, secret })
        }
        "aws-batch" => {
            refuse_local_paths(addresses, input, output, "AWS Batch's containers")?;
            let queue = required_setting(
                table.queue,
                "queue",
                whole,
                "the AWS Batch job queue: set executor.queue or pass --job-queue NAME".to_string(),
            )?;
            let definition = required_setting(
                table.job,
                "job",
                whole,
                "the AWS Batch job definition with fanout's image: set executor.job or pass --engine-job NAME"
                    .to_string(),
            )?;
            let region = table.region.map(|given| given.value).filter(|region| !region.trim().is_empty());
            Ok(Executor::AwsBatch { concurrency, queue, definition, region })
        }
        engine @ ("code-engine" | "cloud-run") => {
            let (who, project_hint) = match engine {
                "code-engine" => ("Code Engine's instances", "the Code Engine project's id"),
                _ => ("Cloud Run's tasks", "the Google Cloud project"),
            };
            refuse_local_paths(addresses, input, output, who)?;
            let required = |given, field, hint| required_setting(given, field, whole, hint);
            let project = required(
                table.project,
                "project",
                format!("{project_hint}: set executor.project or pass --project ID"),
            )?;
            let region = required(
                table.region,
                "region",
                "the job's region: set executor.region or pass --region REGION".to_string(),
            )?;
            let job = required(
                table.job,
                "job",
                format!("the {engine} job created with fanout's image: set executor.job or pass --engine-job NAME"),
            )?;
            Ok(match engine {
                "code-engine" => Executor::CodeEngine { concurrency, project, region, job },
                _ => Executor::CloudRun { concurrency, project, region, job },
            })
        }
        other => Err(kind.error(format!(
            "\"{other}\" is not an executor (use local, lambda, slurm, cloud-run, code-engine, aws-batch or kubernetes)"
        ))),
    }
}

/// An engine's setting that must be given and not blank.
fn required_setting(given: Option<Given<String>>, field: &str, whole: &str, hint: String) -> Result<String, JobError> {
    match given {
        Some(given) if given.value.trim().is_empty() => Err(given.error(format!("the {field} is empty"))),
        Some(given) => Ok(given.value),
        None => Err(JobError::Missing { whole: whole.to_string(), field: format!("executor.{field}"), hint }),
    }
}

fn resolve_stragglers(table: StragglersTable) -> Result<Stragglers, JobError> {
    let after = or_default(table.after, defaults::BACKUP_AFTER, "stragglers.after");
    let factor = match table.factor {
        Some(given) if !(given.value > 1.0 && given.value.is_finite()) => {
            return Err(given.error(format!("{} must be more than 1 (a multiple of the median duration)", given.value)))
        }
        Some(given) => given.value,
        None => defaults::BACKUP_FACTOR,
    };
    Ok(Stragglers {
        backup: table.backup.map_or(defaults::BACKUP, |given| given.value),
        after: share_of_shards(&after.value).map_err(|message| after.error(message))?,
        factor,
    })
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

/// `input.shard` written as a table: exactly one rule, each member checked at its own line.
fn shard_from_table(given: &Given<ShardSpec>, table: &ShardTable, text: &JobText) -> Result<ShardRule, JobError> {
    let err = |member: &str, span: std::ops::Range<usize>, message: String| JobError::Field {
        origin: text.origin_at(span.start),
        field: format!("input.shard.{member}"),
        message,
    };
    let count = |member: &str, v: &Spanned<i64>| -> Result<u64, JobError> {
        match *v.get_ref() {
            n if n < 1 => Err(err(member, v.span(), format!("{n} must be at least 1"))),
            n => Ok(n as u64),
        }
    };
    let size = |member: &str, v: &Spanned<SizeValue>| -> Result<u64, JobError> {
        match bytes_of(v.get_ref()).map_err(|message| err(member, v.span(), message))? {
            0 => Err(err(member, v.span(), "the size must be at least 1 byte".into())),
            n => Ok(n),
        }
    };
    let t = table;
    let given_rules = [t.per.is_some(), t.objects.is_some(), t.bytes.is_some(), t.rows.is_some(), t.chunk.is_some()];
    if given_rules.iter().filter(|&&g| g).count() != 1 {
        return Err(
            given.error("give exactly one of per = \"object\", objects = N, bytes = SIZE, rows = N, chunk = SIZE")
        );
    }
    if let (Some(align), None) = (&t.align, &t.chunk) {
        return Err(err("align", align.span(), "align only goes with chunk = SIZE".into()));
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

fn resolve_watch(table: WatchTable) -> Result<Watch, JobError> {
    let defaults = Watch::default();
    let mut watch = defaults.clone();
    if let Some(given) = &table.interval {
        let interval = duration_of(given)?;
        if interval < Duration::from_millis(100) {
            return Err(given.error("list at most ten times a second (give 100ms or more)"));
        }
        watch.interval_ms = interval.as_millis() as u64;
    }
    if let Some(given) = &table.settle {
        watch.settle_ms = duration_of(given)?.as_millis() as u64;
    }
    if let Some(given) = &table.max_wait {
        let max_wait = duration_of(given)?;
        if max_wait < Duration::from_millis(10) {
            return Err(given.error("give 10ms or more"));
        }
        watch.max_wait_ms = max_wait.as_millis() as u64;
    }
    Ok(watch)
}

/// Keys a reduce may not write: fanout's own folder.
fn check_reduce_output(given: &Given<String>) -> Result<(), JobError> {
    crate::storage::validate_key(&given.value).map_err(|e| given.error(e.to_string()))?;
    if given.value.split('/').next() == Some(crate::storage::FANOUT_DIR) {
        return Err(given.error(format!("{} is fanout's own folder", crate::storage::FANOUT_DIR)));
    }
    Ok(())
}

/// `[reduce]`: a function or `concat = true` (not both), with its own limits defaulting to
/// the map's.
fn resolve_reduce(
    table: ReduceTable,
    function: &Function,
    retry: &Retry,
    input: &Input,
    text: &JobText,
) -> Result<Option<Reduce>, JobError> {
    let concat = table.concat.as_ref().is_some_and(|given| given.value);
    let step = match (&table.wasm, concat) {
        (None, false) => {
            // Reduce fields without a reduce step are a mistake, not something to ignore.
            const NEEDS: &str = "[reduce] needs a function (wasm = ...) or concat = true";
            let stray = table
                .output
                .as_ref()
                .map(|given| given.error(NEEDS))
                .or_else(|| table.fan_in.as_ref().map(|given| given.error(NEEDS)))
                .or_else(|| table.args.as_ref().map(|given| given.error(NEEDS)));
            return stray.map_or(Ok(None), Err);
        }
        (Some(wasm), true) => {
            return Err(wasm.error("give either a reduce function or concat = true, not both"));
        }
        (Some(wasm), false) => {
            let args = table.args.as_ref().map(|given| given.value.clone()).unwrap_or_default();
            ReduceStep::Function { wasm: location_of(wasm)?, args }
        }
        (None, true) => {
            if let Some(given) = &table.args {
                return Err(given.error("concat = true takes no arguments"));
            }
            // Every Kafka shard is records, whichever rule cut it.
            if !input.shard.is_record_rule() && input.kafka.is_none() {
                let given = table.concat.as_ref().expect("concat is set");
                return Err(given
                    .error("concat joins record outputs (part-NNNNN): it needs a record shard rule (rows or chunk)"));
            }
            ReduceStep::Concat
        }
    };
    let fan_in = match &table.fan_in {
        Some(given) if !(2..=100_000).contains(&given.value) => {
            return Err(given.error(format!("{} is not between 2 and 100000", given.value)))
        }
        Some(given) => given.value as usize,
        None => defaults::FAN_IN as usize,
    };
    let Some(output) = table.output else {
        return Err(JobError::Missing {
            whole: text.whole(),
            field: "reduce.output".into(),
            hint: "name the final object under DEST (output = \"totals.json\") or pass --reduce-output KEY".into(),
        });
    };
    check_reduce_output(&output)?;
    let attempts = match &table.attempts {
        Some(given) if !(1..=100).contains(&given.value) => {
            return Err(given.error(format!("{} is not between 1 and 100 (1 means no retry)", given.value)))
        }
        Some(given) => given.value as u32,
        None => retry.attempts,
    };
    let timeout_ms = match &table.timeout {
        Some(given) => duration_of(given)?.as_millis().max(1) as u64,
        None => function.timeout_ms,
    };
    let memory_bytes = match &table.memory {
        Some(given) => size_of(given)?,
        None => function.memory_bytes,
    };
    Ok(Some(Reduce { step, fan_in, output: output.value, attempts, timeout_ms, memory_bytes }))
}
