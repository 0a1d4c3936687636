//! The local executor, this machine's worker pool: threads that run invocations, started
//! while shards wait (up to `workers.max`) and stopped after `workers.idle` without work, so
//! an idle pool holds zero threads. Owns the scaling decisions and the per-worker cold/warm
//! accounting. It runs what it is handed and reports back, every task once, even one whose
//! run panicked; it knows nothing of storage, retries or manifests (the coordinator in
//! `run` owns those).

use super::{AttemptDone, Executor, Task};
use crate::events::{Event, EventSink};
use crate::runtime::{InvocationReport, Outcome, Runtime};
use crate::stage;
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::mpsc::UnboundedSender;

/// Guest code runs on the worker's own stack: give it room beyond wasm's 512 KiB.
const WORKER_STACK: usize = 8 << 20;

/// The scaling rule, kept pure so it can be tested without threads or clocks: start a
/// worker when more tasks wait than idle workers can take, up to the maximum.
pub fn should_start_worker(queued: usize, idle: usize, live: usize, max: usize) -> bool {
    queued > idle && live < max
}

/// The queue and the counters, under one lock, so that a worker deciding to exit and a
/// task arriving cannot miss each other.
#[derive(Default)]
struct State {
    queue: VecDeque<Task>,
    live: usize,
    idle: usize,
    next_worker: u32,
    peak: usize,
    stopping: bool,
}

pub struct Pool {
    runtime: Arc<Runtime>,
    state: Mutex<State>,
    work_ready: Condvar,
    max: usize,
    idle_timeout: Duration,
    results: UnboundedSender<AttemptDone>,
    events: EventSink,
}

impl Pool {
    pub fn new(
        runtime: Arc<Runtime>,
        max: usize,
        idle_timeout: Duration,
        results: UnboundedSender<AttemptDone>,
        events: EventSink,
    ) -> Arc<Pool> {
        Arc::new(Pool {
            runtime,
            state: Mutex::new(State::default()),
            work_ready: Condvar::new(),
            max: max.max(1),
            idle_timeout,
            results,
            events,
        })
    }

    /// Queues a task, and starts a worker if no idle one can take it. Once stopping, the
    /// task comes back at once, unrun.
    pub fn submit(self: &Arc<Self>, task: Task) {
        let mut state = self.state.lock().expect("pool lock");
        if state.stopping {
            drop(state);
            let _ = self.results.send(AttemptDone::not_run(&task));
            return;
        }
        state.queue.push_back(task);
        if should_start_worker(state.queue.len(), state.idle, state.live, self.max) {
            state.live += 1;
            state.peak = state.peak.max(state.live);
            let worker = state.next_worker;
            state.next_worker += 1;
            let live = state.live;
            drop(state);
            self.events.emit(Event::Workers { live });
            let pool = self.clone();
            std::thread::Builder::new()
                .name(format!("fanout-worker-{worker}"))
                .stack_size(WORKER_STACK)
                .spawn(move || pool.work(worker))
                .expect("spawn a worker thread");
        } else {
            drop(state);
            self.work_ready.notify_one();
        }
    }

    /// Stops starting queued tasks: they come back at once as cancelled, unrun, without
    /// waiting for a worker to come free (running attempts go on).
    pub fn stop_starting(&self) {
        let queued = {
            let mut state = self.state.lock().expect("pool lock");
            state.stopping = true;
            std::mem::take(&mut state.queue)
        };
        self.work_ready.notify_all();
        for task in queued {
            let _ = self.results.send(AttemptDone::not_run(&task));
        }
    }

    pub fn live(&self) -> usize {
        self.state.lock().expect("pool lock").live
    }

    /// True when a task submitted now would start at once (a worker is idle or may start).
    pub fn can_start_now(&self) -> bool {
        let state = self.state.lock().expect("pool lock");
        state.queue.is_empty() && (state.idle > 0 || state.live < self.max)
    }

    pub fn peak(&self) -> usize {
        self.state.lock().expect("pool lock").peak
    }

    /// The next task, or `None` once the worker has been idle for `idle_timeout`.
    fn next_task(&self) -> Option<(Task, bool)> {
        let mut state = self.state.lock().expect("pool lock");
        let deadline = Instant::now() + self.idle_timeout;
        loop {
            if let Some(task) = state.queue.pop_front() {
                return Some((task, state.stopping));
            }
            let now = Instant::now();
            if now >= deadline {
                state.live -= 1;
                let live = state.live;
                drop(state);
                self.events.emit(Event::Workers { live });
                return None;
            }
            state.idle += 1;
            state = self.work_ready.wait_timeout(state, deadline - now).expect("pool lock").0;
            state.idle -= 1;
        }
    }

    fn work(self: Arc<Self>, worker: u32) {
        // Each worker drives its guests on a runtime of its own: guest file calls run inline
        // here, and timeouts and cancellation are tokio timers on this thread; a native
        // command's pipes and exit are read by its I/O driver.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a worker runtime");
        let mut cold = true;
        while let Some((task, stopping)) = self.next_task() {
            let (shard, attempt) = (task.shard.id, task.attempt);
            let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.run_task(&runtime, task, stopping, worker, cold)
            }));
            let (done, ran) = ran.unwrap_or_else(|_| {
                // A bug in fanout, told to the run by the panic hook; the attempt still gets
                // an answer (a worker process waits for one) and the thread goes on, so
                // that queued attempts are answered too.
                let message = "an internal error (a bug in fanout) ended this attempt".to_string();
                let now = SystemTime::now();
                let done = AttemptDone {
                    shard,
                    attempt,
                    worker,
                    worker_name: None,
                    cold_start: false,
                    started: now,
                    finished: now,
                    report: InvocationReport::not_run(Outcome::Error(message)),
                    outputs: None,
                };
                (done, false)
            });
            cold = cold && !ran;
            if self.results.send(done).is_err() {
                // The run is over and nobody waits for results: leave.
                self.leave();
                return;
            }
        }
    }

    fn leave(&self) {
        let mut state = self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        state.live -= 1;
        let live = state.live;
        drop(state);
        self.events.emit(Event::Workers { live });
    }

    /// Runs one task (unless stopping or cancelled) and says how it went, and whether the
    /// guest ran.
    fn run_task(
        &self,
        runtime: &tokio::runtime::Runtime,
        task: Task,
        stopping: bool,
        worker: u32,
        cold: bool,
    ) -> (AttemptDone, bool) {
        crate::panics::injected("worker-thread");
        let started = SystemTime::now();
        let ran = !(stopping || task.cancel.is_cancelled());
        let report = if ran {
            task.started.start(tokio::time::Instant::now());
            if task.make_out_dir {
                let _ = std::fs::create_dir_all(&task.outputs.0);
            }
            runtime.block_on(self.runtime.invoke(&task.invocation, &task.cancel))
        } else {
            InvocationReport::not_run(Outcome::Cancelled)
        };
        // The guest just wrote /out: listing it here is a few cached metadata calls,
        // cheaper than handing the attempt to another thread to do it.
        let outputs = report.outcome.is_ok().then(|| stage::scan_outputs(&task.outputs.0, task.outputs.1));
        let done = AttemptDone {
            shard: task.shard.id,
            attempt: task.attempt,
            worker,
            worker_name: None,
            cold_start: cold && ran,
            started,
            finished: SystemTime::now(),
            report,
            outputs,
        };
        (done, ran)
    }
}

impl Executor for Arc<Pool> {
    fn submit(&self, task: Task) {
        Pool::submit(self, task)
    }
    fn stop_starting(&self) {
        Pool::stop_starting(self)
    }
    fn can_start_now(&self) -> bool {
        Pool::can_start_now(self)
    }
    fn live(&self) -> usize {
        Pool::live(self)
    }
    fn peak(&self) -> usize {
        Pool::peak(self)
    }
    fn shards_in_flight(&self) -> usize {
        (self.max * 4).max(16)
    }
}

#[cfg(test)]
mod tests {
    use super::should_start_worker;

    #[test]
    fn scaling_rule() {
        assert!(should_start_worker(1, 0, 0, 2), "a waiting task and no worker starts one");
        assert!(!should_start_worker(1, 1, 1, 2), "an idle worker takes it");
        assert!(should_start_worker(3, 1, 1, 2), "a backlog beyond the idle workers grows the pool");
        assert!(!should_start_worker(5, 0, 2, 2), "never beyond the maximum");
        assert!(!should_start_worker(0, 0, 0, 2), "no work, no worker");
    }
}
