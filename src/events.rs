//! Events: what a run reports as it goes. The coordinator and the executors emit them and never
//! print; progress bars, plain lines and JSON are consumers (see `report`). Owns only the
//! event vocabulary and the channel that carries it.

use tokio::sync::mpsc;

#[derive(Debug, Clone)]
pub enum Event {
    /// Planning found another shard (`planned` so far).
    Planned { planned: u64 },
    /// The source is watched: shards keep coming, and there is no total.
    Watching,
    /// Planning is over: the job has `total` shards.
    PlanComplete { total: u64 },
    /// A shard committed by an earlier run was skipped.
    Skipped,
    /// A worker started or stopped: `live` workers now.
    Workers { live: usize },
    /// An attempt ended; `retry` says whether another will follow.
    AttemptFailed { shard: u64, attempt: u32, outcome: String, retry: bool },
    /// A shard reached its final state this run (its record is queued for the journal).
    ShardFinished { ok: bool },
    /// Stopping early (Ctrl-C): `hard` once running attempts are being cancelled too.
    Stopping { hard: bool },
    /// A message for the user that is not an error of the job (e.g. building the function).
    Note(String),
}

/// The sending side; cloning is cheap. Sends never block and never fail the run.
#[derive(Clone, Debug)]
pub struct EventSink(mpsc::UnboundedSender<Event>);

impl EventSink {
    pub fn channel() -> (EventSink, mpsc::UnboundedReceiver<Event>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (EventSink(tx), rx)
    }

    pub fn emit(&self, event: Event) {
        let _ = self.0.send(event);
    }
}
