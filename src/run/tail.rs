//! The tail of a job: relative timeouts and backup attempts for stragglers. Owns the
//! decisions (pure functions of durations and shares, tested without clocks) and the
//! running median they are based on; the coordinator applies them.

use crate::job::Stragglers;
use std::time::Duration;

/// Finished shards needed before the median means anything.
pub const MIN_SAMPLES: usize = 3;
/// A relative timeout never stops an attempt sooner than this.
pub const RELATIVE_TIMEOUT_FLOOR: Duration = Duration::from_secs(1);

/// Durations of the shards finished so far, and their median (recomputed lazily).
#[derive(Debug, Default)]
pub struct Durations {
    samples: Vec<u64>,
    median: Option<Duration>,
    stale: bool,
}

impl Durations {
    pub fn add(&mut self, duration_ms: u64) {
        self.samples.push(duration_ms);
        self.stale = true;
    }

    /// The median, once there are `MIN_SAMPLES` samples.
    pub fn median(&mut self) -> Option<Duration> {
        if self.stale {
            self.stale = false;
            self.median = (self.samples.len() >= MIN_SAMPLES).then(|| {
                let mut copy = self.samples.clone();
                let middle = copy.len() / 2;
                let (_, median, _) = copy.select_nth_unstable(middle);
                Duration::from_millis(*median)
            });
        }
        self.median
    }
}

/// How long an attempt may run under `timeout = "P%"`.
pub fn relative_limit(median: Duration, percent: f64) -> Duration {
    median.mul_f64(percent / 100.0).max(RELATIVE_TIMEOUT_FLOOR)
}

/// Whether a running attempt is a straggler that deserves a backup now.
pub fn wants_backup(
    policy: &Stragglers,
    done: u64,
    total: Option<u64>,
    median: Option<Duration>,
    elapsed: Duration,
) -> bool {
    let (Some(total), Some(median)) = (total, median) else { return false };
    policy.backup && total > 0 && done as f64 >= policy.after * total as f64 && elapsed > median.mul_f64(policy.factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_needs_enough_samples() {
        let mut durations = Durations::default();
        durations.add(10);
        durations.add(30);
        assert_eq!(durations.median(), None);
        durations.add(20);
        assert_eq!(durations.median(), Some(Duration::from_millis(20)));
        for _ in 0..10 {
            durations.add(1000);
        }
        assert_eq!(durations.median(), Some(Duration::from_secs(1)));
    }

    #[test]
    fn relative_limits_have_a_floor() {
        assert_eq!(relative_limit(Duration::from_secs(2), 200.0), Duration::from_secs(4));
        assert_eq!(relative_limit(Duration::from_millis(10), 300.0), Duration::from_secs(1));
    }

    #[test]
    fn backups_only_at_the_tail_and_for_slow_attempts() {
        let policy = Stragglers::default();
        let median = Some(Duration::from_millis(100));
        let slow = Duration::from_millis(400);
        assert!(wants_backup(&policy, 95, Some(100), median, slow));
        assert!(!wants_backup(&policy, 80, Some(100), median, slow), "before 90% of shards are done");
        assert!(!wants_backup(&policy, 95, Some(100), median, Duration::from_millis(250)), "not 3x the median");
        assert!(!wants_backup(&policy, 95, None, median, slow), "while planning goes on");
        assert!(!wants_backup(&policy, 95, Some(100), None, slow), "without a median");
        let off = Stragglers { backup: false, ..policy };
        assert!(!wants_backup(&off, 95, Some(100), median, slow));
    }
}
