//! The worker pool: threads that run invocations, started while shards wait (up to
//! `workers.max`) and stopped after `workers.idle` without work, so an idle pool holds
//! zero threads. Owns the scaling decisions and the per-worker cold/warm accounting. It
//! runs what it is handed and reports back; it knows nothing of storage, retries or
//! manifests (the coordinator in `run` owns those).

use crate::events::{Event, EventSink};
use crate::runtime::{Invocation, InvocationReport, Outcome, Runtime};
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc::UnboundedSender;
use tokio_util::sync::CancellationToken;

/// Guest code runs on the worker's own stack: give it room beyond wasm's 512 KiB.
const WORKER_STACK: usize = 8 << 20;

/// One attempt at one shard, ready to run.
pub struct Task {
    pub shard: u64,
    pub attempt: u32,
    pub invocation: Invocation,
    pub cancel: CancellationToken,
}

/// What the pool sends back for every task.
pub struct AttemptDone {
    pub shard: u64,
    pub attempt: u32,
    pub worker: u32,
    pub cold_start: bool,
    pub started: SystemTime,
    pub finished: SystemTime,
    pub report: InvocationReport,
}

/// The pool's counters; all changes happen under one lock so that a worker deciding to
/// exit and a task arriving cannot miss each other.
#[derive(Debug, Default)]
struct Counts {
    live: usize,
    idle: usize,
    next_worker: u32,
    peak: usize,
    cold_starts: u64,
}

/// The scaling rule, kept pure so it can be tested without threads or clocks: start a
/// worker when more tasks wait than idle workers can take, up to the maximum.
pub fn should_start_worker(queued: usize, idle: usize, live: usize, max: usize) -> bool {
    queued > idle && live < max
}

pub struct Pool {
    runtime: Arc<Runtime>,
    queue: Sender<Task>,
    queue_rx: Receiver<Task>,
    counts: Arc<Mutex<Counts>>,
    max: usize,
    idle_timeout: Duration,
    results: UnboundedSender<AttemptDone>,
    events: EventSink,
    /// Set when the run stops early: queued tasks are handed back unrun, as cancelled.
    stopping: AtomicBool,
}

impl Pool {
    pub fn new(
        runtime: Arc<Runtime>,
        max: usize,
        idle_timeout: Duration,
        results: UnboundedSender<AttemptDone>,
        events: EventSink,
    ) -> Arc<Pool> {
        let (queue, queue_rx) = crossbeam_channel::unbounded();
        Arc::new(Pool {
            runtime,
            queue,
            queue_rx,
            counts: Arc::new(Mutex::new(Counts::default())),
            max: max.max(1),
            idle_timeout,
            results,
            events,
            stopping: AtomicBool::new(false),
        })
    }

    /// Stops starting queued tasks; running ones go on (their own tokens cancel them).
    pub fn stop_starting(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Queues a task and starts a worker if none is free to take it.
    pub fn submit(self: &Arc<Self>, task: Task) {
        self.queue.send(task).expect("the pool holds its own receiver");
        let mut counts = self.counts.lock().expect("pool lock");
        if should_start_worker(self.queue_rx.len(), counts.idle, counts.live, self.max) {
            counts.live += 1;
            counts.peak = counts.peak.max(counts.live);
            let worker = counts.next_worker;
            counts.next_worker += 1;
            let live = counts.live;
            drop(counts);
            self.events.emit(Event::WorkerStarted { worker, live });
            let pool = self.clone();
            std::thread::Builder::new()
                .name(format!("fanout-worker-{worker}"))
                .stack_size(WORKER_STACK)
                .spawn(move || pool.work(worker))
                .expect("spawn a worker thread");
        }
    }

    pub fn live(&self) -> usize {
        self.counts.lock().expect("pool lock").live
    }

    pub fn peak(&self) -> usize {
        self.counts.lock().expect("pool lock").peak
    }

    pub fn cold_starts(&self) -> u64 {
        self.counts.lock().expect("pool lock").cold_starts
    }

    fn work(self: Arc<Self>, worker: u32) {
        // Each worker drives its guests on a runtime of its own: guest file calls run inline
        // here, and timeouts and cancellation are tokio timers on this thread.
        let runtime = tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a worker runtime");
        let mut cold = true;
        loop {
            self.counts.lock().expect("pool lock").idle += 1;
            let task = match self.queue_rx.recv_timeout(self.idle_timeout) {
                Ok(task) => {
                    self.counts.lock().expect("pool lock").idle -= 1;
                    task
                }
                Err(RecvTimeoutError::Timeout) => {
                    let mut counts = self.counts.lock().expect("pool lock");
                    counts.idle -= 1;
                    if !self.queue_rx.is_empty() {
                        continue;
                    }
                    counts.live -= 1;
                    let live = counts.live;
                    drop(counts);
                    self.events.emit(Event::WorkerStopped { worker, live });
                    return;
                }
                Err(RecvTimeoutError::Disconnected) => unreachable!("the pool holds its own sender"),
            };
            let started = SystemTime::now();
            let report = if self.stopping.load(Ordering::SeqCst) || task.cancel.is_cancelled() {
                InvocationReport::not_run(Outcome::Cancelled)
            } else {
                if cold {
                    self.counts.lock().expect("pool lock").cold_starts += 1;
                }
                self.events.emit(Event::AttemptStarted { shard: task.shard, attempt: task.attempt, worker, cold });
                let report = runtime.block_on(self.runtime.invoke(&task.invocation, &task.cancel));
                report
            };
            let ran = !matches!(report.outcome, Outcome::Cancelled) || !report.elapsed.is_zero();
            let done = AttemptDone {
                shard: task.shard,
                attempt: task.attempt,
                worker,
                cold_start: cold,
                started,
                finished: SystemTime::now(),
                report,
            };
            cold = cold && !ran;
            if self.results.send(done).is_err() {
                // The coordinator is gone (the run ended): nothing is waiting for results.
                let mut counts = self.counts.lock().expect("pool lock");
                counts.live -= 1;
                return;
            }
        }
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
