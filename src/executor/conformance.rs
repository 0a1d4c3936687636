//! The executor contract, checked: one suite of checks (as `storage` has for its backends)
//! that every executor passes, whatever runs its attempts. Every submitted task is answered
//! exactly once, with the outcome it ran to; after `stop_starting`, tasks that had not
//! started come back `Cancelled` and unrun (no time in a guest, no start marked) while
//! running ones go on; a cancelled task comes back `Cancelled`, promptly when it was running,
//! unrun when it was still waiting. Run against the local pool (a real wasm module), the
//! Kubernetes `Follower` (answers written into DEST as pods write them) and the fake remote
//! engine. Owns the checks and the three subjects; tests only.

use super::fake::{take_turn, Act, Fake};
use super::kubernetes::{shares_prefix, Follower, Shares, SHARES};
use super::local::Pool;
use super::remote::protocol::{self, Answer, ShardResult};
use super::remote::{JobBase, StoredFile};
use super::{AttemptDone, Executor, StartClock, Task};
use crate::events::EventSink;
use crate::job::Job;
use crate::location::Location;
use crate::runtime::capture::Overflow;
use crate::runtime::{Invocation, Limits, Outcome, Runtime};
use crate::source::{Shard, ShardInput};
use crate::stage::OutputRules;
use crate::storage::{DynStorage, ObjectMeta};
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio_util::sync::CancellationToken;

/// How long an executor may take to answer what it owes; a running attempt that is
/// cancelled must be answered within it. The Follower looks at DEST once a second.
const PROMPT: Duration = Duration::from_secs(3);
/// How long "no answer" is watched for.
const QUIET: Duration = Duration::from_millis(300);
/// What a failing task ends as, on every subject.
const FAILURE: Outcome = Outcome::Exit(3);

/// What a task does when it runs; each subject makes its tasks play their role its own way.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Succeed,
    Fail,
    /// Runs until cancelled (or, for the Follower, no pod ever answers).
    Hang,
}

/// An executor under test.
trait Subject {
    /// Attempts the executor runs at once; 0 when it runs nothing itself (the Follower).
    fn slots(&self) -> usize;
    fn executor(&mut self, results: UnboundedSender<AttemptDone>) -> Box<dyn Executor>;
    /// A task of attempt `attempt` of shard `shard` that plays `role` when it runs.
    async fn task(&mut self, shard: u64, attempt: u32, role: Role) -> Task;
}

/// A task whose sandbox has its own folders under `dir` (the pool runs it there).
fn task_in(dir: &Path, shard: u64, attempt: u32, env: Vec<(String, String)>) -> Task {
    let root = dir.join(format!("{shard}-{attempt}"));
    let (in_dir, out_dir) = (root.join("in"), root.join("out"));
    std::fs::create_dir_all(&in_dir).unwrap();
    std::fs::create_dir_all(&out_dir).unwrap();
    let invocation = Invocation {
        argv: vec!["f".into()],
        env,
        in_dir,
        out_dir: out_dir.clone(),
        files_dir: None,
        stdin: None,
        stdout: root.join("stdout"),
        stdout_cap: 1 << 20,
        stdout_overflow: Overflow::Truncate,
        stderr: root.join("stderr"),
        stderr_cap: 1 << 20,
    };
    Task {
        shard: Shard {
            id: shard,
            input: ShardInput::Objects { objects: vec![ObjectMeta::new(format!("{shard}"), 1)] },
        },
        attempt,
        invocation,
        cancel: CancellationToken::new(),
        started: Arc::new(StartClock::default()),
        outputs: (out_dir, OutputRules { max_files: 16, max_bytes: 1 << 20 }),
        make_out_dir: false,
    }
}

/// A submitted task, as the suite keeps watching it.
struct Sent {
    shard: u64,
    attempt: u32,
    cancel: CancellationToken,
    started: Arc<StartClock>,
}

async fn submit<S: Subject>(subject: &mut S, executor: &dyn Executor, shard: u64, attempt: u32, role: Role) -> Sent {
    let task = subject.task(shard, attempt, role).await;
    let sent = Sent { shard, attempt, cancel: task.cancel.clone(), started: task.started.clone() };
    executor.submit(task);
    sent
}

/// The next `count` answers, or a failure naming what is missing after `PROMPT`.
async fn answers(results: &mut UnboundedReceiver<AttemptDone>, count: usize, what: &str) -> Vec<AttemptDone> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + PROMPT;
    while got.len() < count {
        match tokio::time::timeout_at(deadline, results.recv()).await {
            Ok(Some(done)) => got.push(done),
            _ => panic!("{what}: {} of {count} answers came within {PROMPT:?}", got.len()),
        }
    }
    got
}

/// Fails if anything is answered within `QUIET`.
async fn no_answer(results: &mut UnboundedReceiver<AttemptDone>, what: &str) {
    if let Ok(Some(done)) = tokio::time::timeout(QUIET, results.recv()).await {
        panic!("{what}: shard {} attempt {} was answered ({:?})", done.shard, done.attempt, done.report.outcome);
    }
}

/// Waits until each of `sent` has started running.
/// One hanging task for every slot of the executor, each seen started.
async fn fill_slots<S: Subject>(subject: &mut S, executor: &dyn Executor) -> Vec<Sent> {
    let mut running = Vec::new();
    for shard in 0..subject.slots() as u64 {
        running.push(submit(subject, executor, shard, 1, Role::Hang).await);
    }
    until_started(&running).await;
    running
}

async fn until_started(sent: &[Sent]) {
    let deadline = tokio::time::Instant::now() + PROMPT;
    while !sent.iter().all(|s| s.started.get().is_some()) {
        assert!(tokio::time::Instant::now() < deadline, "tasks to fill the executor did not start");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn key(done: &AttemptDone) -> (u64, u32) {
    (done.shard, done.attempt)
}

/// Came back unrun: cancelled, no time in a guest, never marked as started.
fn assert_unrun(done: &AttemptDone, sent: &Sent) {
    assert_eq!(done.report.outcome, Outcome::Cancelled, "shard {} attempt {}", done.shard, done.attempt);
    assert_eq!(done.report.elapsed, Duration::ZERO, "shard {} ran", done.shard);
    assert!(sent.started.get().is_none(), "shard {} was marked as started", done.shard);
}

/// Every task answered once, with the outcome it ran to; two attempts of one shard at once
/// (an attempt and its backup) are two tasks.
async fn every_task_is_answered_exactly_once<S: Subject>(mut subject: S) {
    let (tx, mut results) = mpsc::unbounded_channel();
    let executor = subject.executor(tx);
    let mut roles = HashMap::new();
    for shard in 0..6 {
        let role = if shard % 2 == 0 { Role::Succeed } else { Role::Fail };
        submit(&mut subject, &*executor, shard, 1, role).await;
        roles.insert((shard, 1), role);
    }
    submit(&mut subject, &*executor, 0, 2, Role::Succeed).await;
    roles.insert((0, 2), Role::Succeed);
    let got = answers(&mut results, roles.len(), "every task answered").await;
    no_answer(&mut results, "nothing answered twice").await;
    let keys: HashSet<(u64, u32)> = got.iter().map(key).collect();
    assert_eq!(keys.len(), got.len(), "a task answered twice");
    assert_eq!(keys, roles.keys().copied().collect::<HashSet<_>>());
    for done in &got {
        match roles[&key(done)] {
            Role::Succeed => {
                assert_eq!(done.report.outcome, Outcome::Ok, "shard {}", done.shard);
                assert!(matches!(done.outputs, Some(Ok(_))), "a success lists its outputs");
            }
            _ => assert_eq!(done.report.outcome, FAILURE, "shard {}", done.shard),
        }
    }
}

/// After `stop_starting`, what waits comes back unrun at once, what runs goes on, and what
/// is submitted afterwards comes back unrun too.
async fn queued_tasks_come_back_unrun_after_stop_starting<S: Subject>(mut subject: S) {
    let (tx, mut results) = mpsc::unbounded_channel();
    let executor = subject.executor(tx);
    let running = fill_slots(&mut subject, &*executor).await;
    let mut queued = Vec::new();
    for shard in 100..103 {
        // Were one of these started, it would never come back: the check would fail.
        queued.push(submit(&mut subject, &*executor, shard, 1, Role::Hang).await);
    }
    no_answer(&mut results, "nothing ends before the stop").await;
    executor.stop_starting();
    let got = answers(&mut results, queued.len(), "queued tasks given back").await;
    for done in &got {
        let sent = queued.iter().find(|s| (s.shard, s.attempt) == key(done)).expect("a queued task");
        assert_unrun(done, sent);
    }
    let late = submit(&mut subject, &*executor, 200, 1, Role::Succeed).await;
    let got = answers(&mut results, 1, "a task submitted after the stop").await;
    assert_unrun(&got[0], &late);
    no_answer(&mut results, "running attempts go on after a soft stop").await;
    for sent in &running {
        sent.cancel.cancel();
    }
    let got = answers(&mut results, running.len(), "running tasks cancelled").await;
    assert!(got.iter().all(|done| done.report.outcome == Outcome::Cancelled));
    no_answer(&mut results, "nothing answered twice").await;
}

/// A cancelled running task comes back `Cancelled` within `PROMPT`; one cancelled while it
/// waited comes back unrun; the rest run as if nothing happened.
async fn cancellation_is_honoured<S: Subject>(mut subject: S) {
    let (tx, mut results) = mpsc::unbounded_channel();
    let executor = subject.executor(tx);
    let running = fill_slots(&mut subject, &*executor).await;
    let waiting = submit(&mut subject, &*executor, 100, 1, Role::Hang).await;
    let after = submit(&mut subject, &*executor, 101, 1, Role::Succeed).await;
    waiting.cancel.cancel();
    if let Some(first) = running.first() {
        first.cancel.cancel();
        let got = answers(&mut results, 1, "a cancelled running task").await;
        assert_eq!((key(&got[0]), &got[0].report.outcome), ((first.shard, first.attempt), &Outcome::Cancelled));
    }
    for sent in running.iter().skip(1) {
        sent.cancel.cancel();
    }
    let got = answers(&mut results, running.len().saturating_sub(1) + 2, "the rest").await;
    let of = |sent: &Sent| got.iter().find(|done| key(done) == (sent.shard, sent.attempt)).expect("answered");
    assert_unrun(of(&waiting), &waiting);
    assert_eq!(of(&after).report.outcome, Outcome::Ok, "a task behind a cancelled one still runs");
    no_answer(&mut results, "nothing answered twice").await;
}

/// The local pool, one worker, running a module that plays its role by how many variables
/// its environment holds: none succeeds, one exits 3, two spins until interrupted.
struct PoolSubject {
    dir: tempfile::TempDir,
    runtime: Arc<Runtime>,
}

const ROLES_WAT: &str = r#"(module
  (import "wasi_snapshot_preview1" "environ_sizes_get" (func $sizes (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func (export "_start")
    (drop (call $sizes (i32.const 0) (i32.const 4)))
    (if (i32.eq (i32.load (i32.const 0)) (i32.const 1)) (then (call $exit (i32.const 3))))
    (if (i32.ge_u (i32.load (i32.const 0)) (i32.const 2)) (then (loop $spin (br $spin))))))"#;

impl PoolSubject {
    fn new(runtime: &Arc<Runtime>) -> PoolSubject {
        PoolSubject { dir: tempfile::tempdir().unwrap(), runtime: runtime.clone() }
    }
}

impl Subject for PoolSubject {
    fn slots(&self) -> usize {
        1
    }

    fn executor(&mut self, results: UnboundedSender<AttemptDone>) -> Box<dyn Executor> {
        let (events, _) = EventSink::channel();
        Box::new(Pool::new(self.runtime.clone(), 1, Duration::from_millis(200), results, events))
    }

    async fn task(&mut self, shard: u64, attempt: u32, role: Role) -> Task {
        let variables = match role {
            Role::Succeed => 0,
            Role::Fail => 1,
            Role::Hang => 2,
        };
        let env = (0..variables).map(|i| (format!("V{i}"), "1".to_string())).collect();
        task_in(self.dir.path(), shard, attempt, env)
    }
}

/// The Follower of one share; its "pods" are this subject, which stores an answer for every
/// task that succeeds or fails (before it is submitted) and none for one that hangs.
struct FollowerSubject {
    dir: tempfile::TempDir,
    dest: DynStorage,
    job: Job,
}

const JOB_ID: &str = "conformance";

impl FollowerSubject {
    async fn new() -> FollowerSubject {
        let dir = tempfile::tempdir().unwrap();
        let dest_path = dir.path().join("dest");
        let dest = crate::storage::open(&Location::Local(dest_path.clone()), &Default::default()).await.unwrap();
        let shares = Shares { first_shards: vec![0], pods_per_share: 1, job_name: "fanout-conformance".into() };
        let body = Bytes::from(serde_json::to_vec(&shares).unwrap());
        dest.put(&format!("{}{SHARES}", shares_prefix(JOB_ID)), body).await.unwrap();
        let job = Job::for_tests(Location::Local(dir.path().join("source")), Location::Local(dest_path));
        FollowerSubject { dir, dest, job }
    }
}

impl Subject for FollowerSubject {
    fn slots(&self) -> usize {
        0
    }

    fn executor(&mut self, results: UnboundedSender<AttemptDone>) -> Box<dyn Executor> {
        let base = JobBase {
            job_id: JOB_ID.into(),
            dest: self.dest.clone(),
            job: self.job.clone(),
            function_key: protocol::function_key("0"),
            python_compiled: None,
            function_sha256: "0".into(),
        };
        let (events, _) = EventSink::channel();
        Box::new(Follower::new(base, "kubernetes", results, events))
    }

    async fn task(&mut self, shard: u64, attempt: u32, role: Role) -> Task {
        let outcome = match role {
            Role::Succeed => Outcome::Ok,
            Role::Fail => FAILURE,
            Role::Hang => return task_in(self.dir.path(), shard, attempt, Vec::new()),
        };
        let result = ShardResult {
            shard,
            attempt,
            outputs: outcome.is_ok().then(|| Ok(Vec::new())),
            outcome,
            cold_start: false,
            started_ms: 1,
            finished_ms: 2,
            elapsed_ms: 1,
            stdout: String::new(),
            stdout_truncated: false,
            stderr: String::new(),
            stderr_truncated: false,
        };
        let answer = Answer {
            protocol: protocol::PROTOCOL,
            environment: format!("pod-{shard}-{attempt}"),
            memory_mb: 0,
            duration_ms: 0,
            results: vec![result],
            results_key: None,
        };
        let name = StoredFile::answer_name(0, &format!("pod-{shard}-{attempt}"), 0);
        let body = Bytes::from(serde_json::to_vec(&answer).unwrap());
        self.dest.put(&format!("{}{name}", shares_prefix(JOB_ID)), body).await.unwrap();
        task_in(self.dir.path(), shard, attempt, Vec::new())
    }
}

/// The fake remote engine, one attempt at a time, each task playing the role it was made with.
struct FakeSubject {
    dir: tempfile::TempDir,
    dest: DynStorage,
    roles: Arc<Mutex<HashMap<(u64, u32), Role>>>,
}

impl FakeSubject {
    async fn new() -> FakeSubject {
        let dir = tempfile::tempdir().unwrap();
        let dest = crate::storage::open(&Location::Local(dir.path().join("dest")), &Default::default()).await.unwrap();
        FakeSubject { dir, dest, roles: Default::default() }
    }
}

impl Subject for FakeSubject {
    fn slots(&self) -> usize {
        1
    }

    fn executor(&mut self, results: UnboundedSender<AttemptDone>) -> Box<dyn Executor> {
        let roles = self.roles.clone();
        let fake = Fake::remote(1, self.dest.clone(), JOB_ID, move |shard, attempt| {
            match roles.lock().unwrap()[&(shard, attempt)] {
                Role::Succeed => Act::ok_with(50, &format!("{shard}.txt"), "done"),
                Role::Fail => Act::fail(50, FAILURE),
                Role::Hang => Act::Hang,
            }
        });
        fake.connect(results);
        Box::new(fake)
    }

    async fn task(&mut self, shard: u64, attempt: u32, role: Role) -> Task {
        self.roles.lock().unwrap().insert((shard, attempt), role);
        task_in(self.dir.path(), shard, attempt, Vec::new())
    }
}

/// In real time: the pool's workers are threads of their own, which a paused clock would
/// not wait for.
#[tokio::test]
async fn the_local_pool_keeps_the_contract() {
    let _turn = take_turn().await;
    let wasm = wat::parse_str(ROLES_WAT).unwrap();
    let limits = Limits { timeout: Duration::from_secs(60), memory_bytes: 16 << 20, concurrency: 1 };
    let runtime = Arc::new(Runtime::load("roles", &wasm, limits).unwrap().0);
    every_task_is_answered_exactly_once(PoolSubject::new(&runtime)).await;
    queued_tasks_come_back_unrun_after_stop_starting(PoolSubject::new(&runtime)).await;
    cancellation_is_honoured(PoolSubject::new(&runtime)).await;
}

#[tokio::test(start_paused = true)]
async fn the_kubernetes_follower_keeps_the_contract() {
    let _turn = take_turn().await;
    every_task_is_answered_exactly_once(FollowerSubject::new().await).await;
    queued_tasks_come_back_unrun_after_stop_starting(FollowerSubject::new().await).await;
    cancellation_is_honoured(FollowerSubject::new().await).await;
}

#[tokio::test(start_paused = true)]
async fn the_fake_remote_engine_keeps_the_contract() {
    let _turn = take_turn().await;
    every_task_is_answered_exactly_once(FakeSubject::new().await).await;
    queued_tasks_come_back_unrun_after_stop_starting(FakeSubject::new().await).await;
    cancellation_is_honoured(FakeSubject::new().await).await;
}
