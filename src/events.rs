//! Events: what a run reports as it goes. The coordinator and the pool emit them and never
//! print; progress bars, plain lines and JSON are consumers (see `report`). Owns only the
//! event vocabulary and the channel that carries it.

use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub enum Event {
    /// The function is compiled (or was loaded from the cache).
    FunctionReady {
        cache_hit: bool,
        load_ms: u64,
        kind: &'static str,
    },
    /// Planning found another shard (`planned` so far).
    Planned {
        planned: u64,
    },
    /// Planning is over: the job has `total` shards.
    PlanComplete {
        total: u64,
    },
    /// A shard committed by an earlier run was skipped.
    Skipped {
        shard: u64,
    },
    WorkerStarted {
        worker: u32,
        live: usize,
    },
    WorkerStopped {
        worker: u32,
        live: usize,
    },
    AttemptStarted {
        shard: u64,
        attempt: u32,
        worker: u32,
        cold: bool,
    },
    /// An attempt ended; `retry` says whether another will follow.
    AttemptFailed {
        shard: u64,
        attempt: u32,
        outcome: String,
        retry: bool,
    },
    /// A shard reached its final state this run (its record is queued for the journal).
    ShardFinished {
        shard: u64,
        ok: bool,
        bytes_in: u64,
        bytes_out: u64,
    },
    /// Records of this many shards are now durable in the journal.
    Committed {
        count: u64,
    },
    /// Stopping early (Ctrl-C): `hard` once running attempts are being cancelled too.
    Stopping {
        hard: bool,
    },
    /// A message for the user that is not an error of the job (e.g. building the function).
    Note(String),
}

/// The sending side; cloning is cheap. Sends never block and never fail the run.
#[derive(Clone, Debug)]
pub struct EventSink(Option<mpsc::UnboundedSender<Event>>);

impl EventSink {
    pub fn channel() -> (EventSink, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSink(Some(tx)), rx)
    }

    /// A sink that drops everything (for commands that draw nothing).
    pub fn none() -> EventSink {
        EventSink(None)
    }

    pub fn emit(&self, event: Event) {
        if let Some(tx) = &self.0 {
            let _ = tx.send(event);
        }
    }
}
