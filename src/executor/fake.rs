//! A fake executor for tests: it runs no guest, and answers each [`Task`] after a scripted
//! delay with a scripted outcome (success with output files, a failure such as an exit or a
//! trap, or a run that lasts until it is cancelled). Its delays are tokio sleeps, so under
//! a paused clock (`#[tokio::test(start_paused = true)]`) a job of minutes runs in
//! milliseconds while the coordinator sees every attempt start and end in virtual time. It
//! keeps the executor contract as the real ones do: every task answered exactly once, at most
//! `slots` running at once and the rest queued, queued tasks given back unrun after
//! `stop_starting`, a cancelled task answered `Cancelled` at once. It stages like a remote
//! engine (outputs stored under an attempt's own prefix in DEST) or like the local pool
//! (outputs written under the task's `/out`). It records what it saw for tests to check,
//! and owns nothing else; compiled for tests only.

use super::{AttemptDone, Executor, Task};
use crate::executor::remote::protocol;
use crate::runtime::capture::Captured;
use crate::runtime::{InvocationReport, Outcome};
use crate::stage::{self, OutputFile, OutputFrom};
use crate::storage::DynStorage;
use bytes::Bytes;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::Instant;

/// Held by the tests that run a coordinator or check executors, one at a time: a run
/// hears of every panic in the process (`crate::panics`), so a check failing beside it
/// would fail the run too and the check's own message would go unprinted.
pub async fn take_turn() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// What one attempt does when it runs.
#[derive(Debug, Clone)]
pub enum Act {
    /// Succeeds after `after`, leaving these files (name, bytes) as its outputs.
    Succeed { after: Duration, files: Vec<(String, Bytes)> },
    /// Ends after `after` as `outcome` (an exit, a trap, a timeout, an error).
    Fail { after: Duration, outcome: Outcome },
    /// Runs until it is cancelled.
    Hang,
}

impl Act {
    pub fn ok_with(ms: u64, name: &str, body: &str) -> Act {
        Act::Succeed {
            after: Duration::from_millis(ms),
            files: vec![(name.to_string(), Bytes::from(body.to_string()))],
        }
    }

    pub fn fail(ms: u64, outcome: Outcome) -> Act {
        Act::Fail { after: Duration::from_millis(ms), outcome }
    }
}

/// Which act attempt `attempt` of shard `shard` plays.
pub type Script = Box<dyn Fn(u64, u32) -> Act + Send + Sync>;

/// Where a successful attempt's outputs are left.
pub enum Staging {
    /// Under the task's `/out`, checked as the pool checks them: the coordinator stages
    /// inputs and publishes files.
    Local,
    /// Under an attempt's own prefix in DEST, as remote workers leave them.
    Remote { dest: DynStorage, job_id: String },
}

/// What the fake saw of one task, in virtual time.
#[derive(Debug, Clone)]
pub struct Seen {
    pub shard: u64,
    pub attempt: u32,
    /// A backup (it had an `/out` of its own to make).
    pub backup: bool,
    /// Unset for a task given back unrun.
    pub started: Option<Instant>,
    pub ended: Option<Instant>,
    pub outcome: Option<Outcome>,
    pub answers: u32,
}

#[derive(Default)]
struct State {
    queue: VecDeque<Task>,
    running: usize,
    peak: usize,
    stopping: bool,
    seen: Vec<Seen>,
    nonce: u64,
}

impl State {
    fn seen_mut(&mut self, task: &Task) -> Option<&mut Seen> {
        self.seen.iter_mut().rev().find(|s| (s.shard, s.attempt) == (task.shard.id, task.attempt))
    }
}

struct Inner {
    script: Script,
    staging: Staging,
    slots: usize,
    in_flight: usize,
    results: Mutex<Option<UnboundedSender<AttemptDone>>>,
    state: Mutex<State>,
    /// The virtual start, and the wall time it stands for (answers carry wall times).
    epoch: (Instant, SystemTime),
}

/// The fake engine; clones share it (the test keeps one to read what it saw).
#[derive(Clone)]
pub struct Fake(Arc<Inner>);

impl Fake {
    /// A fake that runs `slots` attempts at once, staging like the local pool.
    pub fn new(slots: usize, script: impl Fn(u64, u32) -> Act + Send + Sync + 'static) -> Fake {
        Fake::build(slots, Staging::Local, Box::new(script))
    }

    /// A fake remote engine: outputs are stored in `dest` as workers store them.
    pub fn remote(
        slots: usize,
        dest: DynStorage,
        job_id: &str,
        script: impl Fn(u64, u32) -> Act + Send + Sync + 'static,
    ) -> Fake {
        Fake::build(slots, Staging::Remote { dest, job_id: job_id.to_string() }, Box::new(script))
    }

    fn build(slots: usize, staging: Staging, script: Script) -> Fake {
        Fake(Arc::new(Inner {
            script,
            staging,
            slots: slots.max(1),
            in_flight: (slots * 4).max(16),
            results: Mutex::new(None),
            state: Mutex::new(State::default()),
            epoch: (Instant::now(), SystemTime::now()),
        }))
    }

    /// Answers go to `results` (the coordinator's channel, given when it makes its executor).
    pub fn connect(&self, results: UnboundedSender<AttemptDone>) {
        *self.0.results.lock().expect("fake results") = Some(results);
    }

    /// Every task submitted so far, in submission order.
    pub fn seen(&self) -> Vec<Seen> {
        self.0.state().seen.clone()
    }

    /// The attempts of `shard`, in submission order.
    pub fn attempts_of(&self, shard: u64) -> Vec<Seen> {
        self.seen().into_iter().filter(|seen| seen.shard == shard).collect()
    }
}

impl Inner {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("fake state")
    }

    fn wall(&self, at: Instant) -> SystemTime {
        self.epoch.1 + at.duration_since(self.epoch.0)
    }

    /// Sends the one answer of `task`, and notes it.
    fn answer(
        &self,
        state: &mut State,
        task: &Task,
        report: InvocationReport,
        span: (Instant, Instant),
        outputs: Option<Result<Vec<OutputFile>, String>>,
    ) {
        let (started, ended) = span;
        if let Some(seen) = state.seen_mut(task) {
            seen.ended = Some(ended);
            seen.outcome = Some(report.outcome.clone());
            seen.answers += 1;
        }
        let done = AttemptDone {
            shard: task.shard.id,
            attempt: task.attempt,
            worker: 0,
            worker_name: Some("fake".into()),
            cold_start: false,
            started: self.wall(started),
            finished: self.wall(ended),
            report,
            outputs,
        };
        if let Some(results) = self.results.lock().expect("fake results").as_ref() {
            let _ = results.send(done);
        }
    }

    fn not_run(&self, state: &mut State, task: &Task) {
        let now = Instant::now();
        self.answer(state, task, InvocationReport::not_run(Outcome::Cancelled), (now, now), None);
    }

    /// Starts `task` now, in a task of its own.
    fn start(self: &Arc<Self>, state: &mut State, task: Task) {
        let now = Instant::now();
        state.running += 1;
        state.peak = state.peak.max(state.running);
        if let Some(seen) = state.seen_mut(&task) {
            seen.started = Some(now);
        }
        task.started.start(now);
        let act = (self.script)(task.shard.id, task.attempt);
        let inner = self.clone();
        tokio::spawn(async move { inner.run(task, act, now).await });
    }

    /// Plays `act`, answers, and starts what waits.
    async fn run(self: Arc<Self>, task: Task, act: Act, started: Instant) {
        let (after, ending) = match act {
            Act::Succeed { after, files } => (Some(after), Ok(files)),
            Act::Fail { after, outcome } => (Some(after), Err(outcome)),
            Act::Hang => (None, Err(Outcome::Cancelled)),
        };
        let finished = async {
            match after {
                Some(after) => tokio::time::sleep(after).await,
                None => std::future::pending().await,
            }
        };
        let (outcome, outputs) = tokio::select! {
            _ = task.cancel.cancelled() => (Outcome::Cancelled, None),
            _ = finished => match ending {
                Ok(files) => (Outcome::Ok, Some(self.leave_outputs(&task, files).await)),
                Err(outcome) => (outcome, None),
            },
        };
        let ended = Instant::now();
        let report = InvocationReport {
            outcome,
            stdout: Captured::default(),
            stderr: Captured::default(),
            elapsed: ended.duration_since(started),
        };
        let mut state = self.state();
        self.answer(&mut state, &task, report, (started, ended), outputs);
        state.running -= 1;
        while state.running < self.slots && !state.stopping {
            let Some(next) = state.queue.pop_front() else { break };
            if next.cancel.is_cancelled() {
                self.not_run(&mut state, &next);
            } else {
                self.start(&mut state, next);
            }
        }
    }

    /// Leaves a successful attempt's files where its engine would, and lists them.
    async fn leave_outputs(&self, task: &Task, files: Vec<(String, Bytes)>) -> Result<Vec<OutputFile>, String> {
        match &self.staging {
            Staging::Local => {
                let (out_dir, rules) = task.outputs.clone();
                std::fs::create_dir_all(&out_dir).map_err(|e| e.to_string())?;
                for (name, body) in files {
                    let path = out_dir.join(&name);
                    std::fs::create_dir_all(path.parent().expect("an output has a folder"))
                        .map_err(|e| e.to_string())?;
                    std::fs::write(&path, body).map_err(|e| e.to_string())?;
                }
                stage::scan_outputs(&out_dir, rules)
            }
            Staging::Remote { dest, job_id } => {
                let nonce = {
                    let mut state = self.state();
                    state.nonce += 1;
                    state.nonce
                };
                let prefix = protocol::staging_prefix(job_id, task.shard.id, task.attempt, nonce);
                let mut listed = Vec::new();
                for (name, body) in files {
                    let staged = format!("{prefix}{name}");
                    let size = body.len() as u64;
                    dest.put(&staged, body).await.map_err(|e| e.to_string())?;
                    listed.push(OutputFile { from: OutputFrom::Staged(staged), key: name, size });
                }
                Ok(listed)
            }
        }
    }
}

impl Executor for Fake {
    fn submit(&self, task: Task) {
        let inner = &self.0;
        let mut state = inner.state();
        state.seen.push(Seen {
            shard: task.shard.id,
            attempt: task.attempt,
            backup: task.make_out_dir,
            started: None,
            ended: None,
            outcome: None,
            answers: 0,
        });
        if state.stopping {
            inner.not_run(&mut state, &task);
        } else if state.running < inner.slots && state.queue.is_empty() {
            inner.start(&mut state, task);
        } else {
            state.queue.push_back(task);
        }
    }

    fn stop_starting(&self) {
        let inner = &self.0;
        let mut state = inner.state();
        state.stopping = true;
        for task in std::mem::take(&mut state.queue) {
            inner.not_run(&mut state, &task);
        }
    }

    fn can_start_now(&self) -> bool {
        let state = self.0.state();
        !state.stopping && state.queue.is_empty() && state.running < self.0.slots
    }

    fn live(&self) -> usize {
        self.0.state().running
    }

    fn peak(&self) -> usize {
        self.0.state().peak
    }

    fn stages_locally(&self) -> bool {
        matches!(self.0.staging, Staging::Local)
    }

    fn shards_in_flight(&self) -> usize {
        self.0.in_flight
    }
}
