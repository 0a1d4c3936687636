//! Kubernetes as an engine, without a coordinator in the cluster. `fanout k8s` stores the
//! job's shares as requests (`_fanout/<job>/k8s/<index>.json`, the Lambda worker's
//! protocol) and prints a `batch/v1` Job in Indexed completion mode whose pod `i` runs
//! `fanout worker DEST --job ID --count N` on share `i` (Kubernetes sets
//! `JOB_COMPLETION_INDEX`). Pods retry a
//! failed attempt themselves (`retry_up_to`), as no coordinator hands their shards out
//! again, and store their answers beside the requests as they go. The committer is
//! [`Follower`], the executor behind `fanout status DEST --follow`: it hands the
//! coordinator each attempt the pods answered for, so that publishing, commits and reports
//! are the coordinator's, as on every engine; a lease (`remote::lease`) keeps it one at a time.
//! Owns the Job's shape, the shares' layout and the reading of answers; it never talks to
//! a cluster (kubectl does, and the pods read only DEST and the source).

use super::remote::protocol::{Answer, ShardResult};
use super::remote::{self, JobBase, Stored, WORKER_OVERHEAD_MB};
pub use super::remote::{shares_prefix, Shares, SHARES};
use super::{AttemptDone, Executor, Task};
use crate::events::{Event, EventSink};
use crate::storage::DynStorage;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc::UnboundedSender;

/// Beside the shares' requests: who commits the job now, and when it last said so.
pub const COMMITTER: &str = "committer.json";
/// How often the committer looks for new answers.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// A worker heard from within this long counts as running.
const RECENTLY: Duration = Duration::from_secs(10);

/// What the printed Job is made of.
pub struct JobSpec<'a> {
    pub name: &'a str,
    pub namespace: Option<&'a str>,
    pub job_id: &'a str,
    pub image: &'a str,
    pub secret: Option<&'a str>,
    /// The job's DEST, as the pods reach it (an s3:// prefix).
    pub dest: &'a str,
    pub completions: usize,
    pub parallelism: usize,
    pub backoff_limit_per_index: u32,
    pub cpus: u32,
    pub guest_memory_bytes: u64,
    /// Plain settings the pods need (an S3 endpoint); secrets come from `secret` only.
    pub env: Vec<(String, String)>,
    /// The function is a native command that bubblewrap sandboxes inside the pod.
    pub bubblewrap: bool,
}

/// A Kubernetes object name from a job id: lowercase, `[a-z0-9-]`, at most 63 characters
/// (the limit of the label Kubernetes derives from a Job's name).
pub fn job_name(job_id: &str) -> String {
    let mut name: String = format!("fanout-{job_id}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    name.truncate(63);
    name.trim_end_matches('-').to_string()
}

/// The `batch/v1` Job: Indexed, one pod per share, no more than `parallelism` at once, a
/// failed pod retried `backoff_limit_per_index` times, locked down (no privileges, a
/// read-only root, `/tmp` its only scratch).
pub fn job_manifest(spec: &JobSpec) -> Value {
    let memory_mb = spec.guest_memory_bytes.div_ceil(1 << 20) * u64::from(spec.cpus) + WORKER_OVERHEAD_MB;
    let labels = json!({ "app.kubernetes.io/name": "fanout", "fanout/job": label_value(spec.job_id) });
    let mut env = vec![
        json!({ "name": "FANOUT_WORKER_CORES", "value": spec.cpus.to_string() }),
        json!({ "name": "TMPDIR", "value": "/tmp" }),
        json!({ "name": "FANOUT_CACHE_DIR", "value": "/tmp/fanout-cache" }),
    ];
    env.extend(spec.env.iter().map(|(name, value)| json!({ "name": name, "value": value })));
    let mut container = json!({
        "name": "worker",
        "image": spec.image,
        "args": ["worker", spec.dest, "--job", spec.job_id, "--count", spec.completions.to_string()],
        "env": env,
        "resources": {
            "requests": { "cpu": spec.cpus.to_string(), "memory": format!("{memory_mb}Mi") },
            "limits": { "memory": format!("{memory_mb}Mi") },
        },
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": true,
            "runAsUser": 65532,
            "capabilities": { "drop": ["ALL"] },
            "seccompProfile": { "type": "RuntimeDefault" },
        },
        "volumeMounts": [{ "name": "tmp", "mountPath": "/tmp" }],
    });
    if let Some(secret) = spec.secret {
        container["envFrom"] = json!([{ "secretRef": { "name": secret } }]);
    }
    // bubblewrap makes user, mount and PID namespaces and mounts a fresh /proc in them: the
    // runtime's default seccomp and AppArmor profiles forbid the first, and its masked /proc
    // the last, unless the pod has a user namespace of its own (hostUsers: false), which also
    // keeps the pod's root unprivileged on the node.
    if spec.bubblewrap {
        let security = &mut container["securityContext"];
        security["seccompProfile"] = json!({ "type": "Unconfined" });
        security["appArmorProfile"] = json!({ "type": "Unconfined" });
        security["procMount"] = json!("Unmasked");
    }
    let mut metadata = json!({ "name": spec.name, "labels": labels });
    if let Some(namespace) = spec.namespace {
        metadata["namespace"] = json!(namespace);
    }
    json!({
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": metadata,
        "spec": {
            "completionMode": "Indexed",
            "completions": spec.completions,
            "parallelism": spec.parallelism.min(spec.completions),
            "backoffLimitPerIndex": spec.backoff_limit_per_index,
            "template": {
                "metadata": { "labels": labels },
                "spec": pod_spec(container, spec.bubblewrap),
            },
        },
    })
}

fn pod_spec(container: Value, bubblewrap: bool) -> Value {
    let mut pod = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "containers": [container],
        "volumes": [{ "name": "tmp", "emptyDir": {} }],
    });
    if bubblewrap {
        pod["hostUsers"] = json!(false);
    }
    pod
}

/// A label value: at most 63 characters of `[A-Za-z0-9._-]`, alphanumeric at both ends.
fn label_value(text: &str) -> String {
    let mut value: String =
        text.chars().map(|c| if c.is_ascii_alphanumeric() || "._-".contains(c) { c } else { '-' }).collect();
    value.truncate(63);
    value.trim_matches(|c: char| !c.is_ascii_alphanumeric()).to_string()
}

/// YAML for kubectl. Scalars are written as JSON (a JSON string is a YAML double-quoted
/// scalar), so no value is ever read back as something else ("no", "1.10", "0o7").
pub fn to_yaml(value: &Value) -> String {
    let mut out = String::new();
    write_yaml(value, 0, &mut out);
    out
}

fn write_yaml(value: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match value {
        Value::Object(map) => {
            for (key, item) in map {
                let key = yaml_key(key);
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        write_yaml(item, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}{key}:\n"));
                        write_yaml(item, indent, out);
                    }
                    scalar => out.push_str(&format!("{pad}{key}: {scalar}\n")),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        // The item's first line takes the dash in its indent.
                        let mut nested = String::new();
                        write_yaml(item, indent + 2, &mut nested);
                        out.push_str(&format!("{pad}- {}", &nested[indent + 2..]));
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}-\n"));
                        write_yaml(item, indent + 2, out);
                    }
                    scalar => out.push_str(&format!("{pad}- {scalar}\n")),
                }
            }
        }
        scalar => out.push_str(&format!("{pad}{scalar}\n")),
    }
}

fn yaml_key(key: &str) -> String {
    let plain = !key.is_empty()
        && key.chars().all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
        && key.starts_with(|c: char| c.is_ascii_alphabetic());
    if plain {
        key.to_string()
    } else {
        Value::String(key.to_string()).to_string()
    }
}

/// The shards the pods have answered for successfully so far (committed or not).
pub async fn answered(dest: &DynStorage, job_id: &str) -> HashSet<u64> {
    remote::succeeded_under(dest, &shares_prefix(job_id)).await.into_iter().map(|(r, _)| r.shard).collect()
}

#[derive(Default, Serialize)]
struct FollowStats {
    kind: &'static str,
    shares: usize,
    /// Workers (pods) that answered, and worker errors stored beside the answers.
    workers: usize,
    worker_errors: usize,
}

#[derive(Default)]
struct State {
    /// By shard and attempt: a shard may have two attempts owed at once (a backup).
    owed: HashMap<(u64, u32), Task>,
    following: bool,
    stopping: bool,
    shares: Option<Shares>,
    seen: HashSet<String>,
    /// Every result the pods stored, by shard and attempt; the first answer for an attempt counts.
    results: HashMap<(u64, u32), (ShardResult, String)>,
    /// Shares some worker finished (its `done` marker), and what failed workers said.
    finished: HashSet<usize>,
    errors: BTreeMap<usize, Vec<String>>,
    /// Each worker's lane, first and last moment of work, and when it was last heard from.
    lanes: HashMap<String, u32>,
    spans: HashMap<String, (u64, u64)>,
    heard: HashMap<String, Instant>,
    peak: usize,
    stats: FollowStats,
}

struct Inner {
    base: JobBase,
    results: UnboundedSender<AttemptDone>,
    events: EventSink,
    state: Mutex<State>,
}

/// The committer's executor: it starts nothing, and answers each attempt the coordinator
/// hands it with what the pods stored for it.
#[derive(Clone)]
pub struct Follower(Arc<Inner>);

impl Follower {
    /// `kind`: the engine whose workers answer, as summaries name it ("kubernetes", "cloud-run"...).
    pub fn new(
        base: JobBase,
        kind: &'static str,
        results: UnboundedSender<AttemptDone>,
        events: EventSink,
    ) -> Follower {
        let state = State { stats: FollowStats { kind, ..Default::default() }, ..Default::default() };
        Follower(Arc::new(Inner { base, results, events, state: Mutex::new(state) }))
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("follower state")
    }

    async fn follow(self: Arc<Self>) {
        let prefix = shares_prefix(&self.base.job_id);
        let key = format!("{prefix}{SHARES}");
        let read = async {
            let body = self.base.dest.get(&key).await.map_err(|e| e.to_string())?;
            serde_json::from_slice::<Shares>(&body).map_err(|e| e.to_string())
        };
        let shares = match read.await {
            Ok(shares) => shares,
            Err(why) => {
                let message = format!("{key}: {why} (was this job made by `fanout k8s` or `fanout run --emit`?)");
                let owed: Vec<Task> = self.state().owed.drain().map(|(_, task)| task).collect();
                for task in owed {
                    let _ = self.results.send(remote::failed(&task, SystemTime::now(), message.clone()));
                }
                self.state().following = false;
                return;
            }
        };
        {
            let mut state = self.state();
            state.stats.shares = shares.first_shards.len();
            state.shares = Some(shares);
        }
        loop {
            self.read_new(&prefix).await;
            self.settle();
            if self.done_following() {
                return;
            }
            tokio::time::sleep(FOLLOW_EVERY).await;
        }
    }

    /// True (and no longer following) once nothing is owed, or the coordinator stops.
    fn done_following(&self) -> bool {
        let mut state = self.state();
        if state.owed.is_empty() || state.stopping {
            state.following = false;
            return true;
        }
        false
    }

    /// Answers, end markers and worker errors stored since the last look.
    async fn read_new(&self, prefix: &str) {
        let mut seen = std::mem::take(&mut self.state().seen);
        // A look that fails (S3 unreachable a moment) is made again at the next.
        let read = remote::read_new(&self.base.dest, prefix, &mut seen, remote::every_file).await.unwrap_or_default();
        let mut state = self.state();
        state.seen = seen;
        for (file, stored) in read {
            match stored {
                Stored::Done => {
                    state.finished.insert(file.share);
                }
                Stored::Error(said) => {
                    state.errors.entry(file.share).or_default().push(said);
                    state.stats.worker_errors += 1;
                }
                Stored::Answer(answer) => state.take_answer(answer),
            }
        }
    }

    /// Hands over every owed attempt the pods have answered for, fails those no pod will,
    /// and gives back unrun those the coordinator cancelled (the pods' answer is not awaited).
    fn settle(&self) {
        let mut state = self.state();
        let State { owed, results, shares, finished, errors, lanes, .. } = &mut *state;
        let Some(shares) = shares.as_ref() else { return };
        let mut settled = Vec::new();
        for (&(shard, attempt), task) in owed.iter() {
            if task.cancel.is_cancelled() {
                settled.push(((shard, attempt), AttemptDone::not_run(task)));
                continue;
            }
            if let Some((result, environment)) = results.remove(&(shard, attempt)) {
                let lane = lanes.get(&environment).copied().unwrap_or(0);
                settled.push(((shard, attempt), remote::attempt_done(result, lane, &environment)));
                continue;
            }
            let share = shares.share_of(shard);
            let given_up = errors.get(&share).filter(|said| said.len() >= shares.pods_per_share as usize);
            let message = if let Some(said) = given_up {
                format!(
                    "share {share} failed in {} workers (as many as the engine starts it: a Kubernetes Job's \
                     backoffLimitPerIndex + 1, the tasks' retries + 1 elsewhere): {}",
                    said.len(),
                    said.last().map(String::as_str).unwrap_or_default()
                )
            } else if finished.contains(&share) {
                let last = results.keys().filter(|(s, _)| *s == shard).map(|(_, a)| *a).max();
                match last {
                    Some(last) => {
                        format!("the workers ran attempts up to {last} of shard {shard:05}, not {}", task.attempt)
                    }
                    None => {
                        format!(
                            "share {share}'s workers finished without an attempt {} of shard {shard:05}",
                            task.attempt
                        )
                    }
                }
            } else {
                continue;
            };
            settled.push(((shard, attempt), remote::failed(task, SystemTime::now(), message)));
        }
        for (owed_attempt, done) in settled {
            owed.remove(&owed_attempt);
            let _ = self.results.send(done);
        }
        let live = state.heard.values().filter(|at| at.elapsed() < RECENTLY).count();
        self.events.emit(Event::Workers { live });
    }
}

impl State {
    fn take_answer(&mut self, answer: Answer) {
        let environment = answer.environment;
        let next = self.lanes.len() as u32;
        self.lanes.entry(environment.clone()).or_insert(next);
        self.stats.workers = self.lanes.len();
        self.heard.insert(environment.clone(), Instant::now());
        for result in answer.results {
            let span = self.spans.entry(environment.clone()).or_insert((result.started_ms, result.finished_ms));
            *span = (span.0.min(result.started_ms), span.1.max(result.finished_ms));
            self.results.entry((result.shard, result.attempt)).or_insert((result, environment.clone()));
        }
        let spans: Vec<(u64, u64)> = self.spans.values().copied().collect();
        self.peak = self.peak.max(remote::most_at_once(&spans));
    }
}

impl Executor for Follower {
    fn submit(&self, task: Task) {
        let mut state = self.0.state();
        if state.stopping {
            let _ = self.0.results.send(AttemptDone::not_run(&task));
            return;
        }
        state.owed.insert((task.shard.id, task.attempt), task);
        if !state.following {
            state.following = true;
            tokio::spawn(self.0.clone().follow());
        }
    }

    /// Stops following: the pods go on, and their answers wait for the next follower.
    fn stop_starting(&self) {
        let mut state = self.0.state();
        state.stopping = true;
        for (_, task) in state.owed.drain() {
            let _ = self.0.results.send(AttemptDone::not_run(&task));
        }
    }

    fn can_start_now(&self) -> bool {
        !self.0.state().stopping
    }

    fn live(&self) -> usize {
        self.0.state().heard.values().filter(|at| at.elapsed() < RECENTLY).count()
    }

    fn peak(&self) -> usize {
        self.0.state().peak
    }

    fn summary(&self) -> Option<Value> {
        serde_json::to_value(&self.0.state().stats).ok()
    }

    fn stages_locally(&self) -> bool {
        false
    }

    fn sweep(&self) -> futures::future::BoxFuture<'static, ()> {
        self.0.base.sweep_attempts()
    }

    fn shards_in_flight(&self) -> usize {
        remote::BATCH_ENGINE_IN_FLIGHT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_keeps_every_value_a_string_or_number_as_given() {
        let value = json!({ "a": { "b": ["x", 1, { "c": "no", "d": [] }] }, "e": "1.10", "weird key": true });
        let yaml = to_yaml(&value);
        assert_eq!(yaml, "a:\n  b:\n  - \"x\"\n  - 1\n  - c: \"no\"\n    d: []\ne: \"1.10\"\n\"weird key\": true\n");
    }

    #[test]
    fn names_fit_kubernetes() {
        let name = job_name("Thumbnails_2026-11-30T01:02:03Z-ab12-and-a-very-long-tail-that-goes-on-and-on");
        assert!(name.len() <= 63 && name.starts_with("fanout-thumbnails-"), "{name}");
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{name}");
        assert!(!name.ends_with('-'));
    }
}
