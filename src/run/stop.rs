//! How a run stops early: a first Ctrl-C stops dispatching, a second (or a panic anywhere
//! the run waits on) cancels running attempts, and after a panic the run stops waiting for
//! what cannot come back. Owns nothing but the coordinator's stop flags.

use super::Coordinator;
use crate::events::Event;
use std::time::Duration;

/// How long a run failed by a panic waits for cancelled attempts and publishing to end.
const PANIC_GRACE: Duration = Duration::from_secs(10);

impl Coordinator {
    pub(super) fn begin_stop(&mut self) {
        self.stopping = true;
        self.stats.stopped_early = true;
        self.executor.stop_starting();
        self.events.emit(Event::Stopping { hard: false });
    }

    /// The second Ctrl-C: running attempts are cancelled (they publish nothing).
    pub(super) fn hard_stop(&mut self) {
        if !self.stopping {
            self.begin_stop();
        }
        self.cancel_running();
        self.events.emit(Event::Stopping { hard: true });
    }

    /// Nothing new starts and every running attempt is cancelled (each comes back, and
    /// publishing that has begun ends, before the run does).
    pub(super) fn cancel_running(&mut self) {
        if !self.stopping {
            self.stopping = true;
            self.stats.stopped_early = true;
            self.executor.stop_starting();
        }
        self.hard_stopped = true;
        self.shutdown.hard.cancel();
    }

    /// A panic in a thread or task the run waits on: the run fails with it, keeping what
    /// it committed.
    pub(super) fn on_panic(&mut self, line: String) {
        self.fatal.get_or_insert(format!(
            "an internal error (a bug in fanout) stopped the run: panicked {line}; \
             the manifest holds every shard committed before it"
        ));
        if !self.hard_stopped {
            self.cancel_running();
        }
        // What panicked may have been the task a shard waits for: after the grace, the
        // shards still in flight stay pending (a redrive runs them).
        self.give_up_at.get_or_insert(tokio::time::Instant::now() + PANIC_GRACE);
    }

    /// Stops waiting for what did not come back after a panic.
    pub(super) fn give_up_waiting(&mut self) {
        self.give_up_at = None;
        let left = self.in_flight.len();
        self.events.emit(Event::Note(format!(
            "{left} shard(s) in flight did not come back after the panic: they stay pending"
        )));
        self.in_flight.clear();
    }
}
