//! The exit-code contract (documented API: scripts depend on it) and the error type that
//! carries its code to `main`. Owns nothing else.

/// Every shard succeeded, or the failures are within `retry.tolerated`.
pub(super) const EXIT_OK: u8 = 0;
/// The job failed (too many failed shards, stopped early, or an error during the run).
pub(super) const EXIT_JOB_FAILED: u8 = 1;
/// Bad usage or a bad job file, found before any work started; nothing was written.
pub(super) const EXIT_USAGE: u8 = 2;

/// An error with the exit code it deserves.
#[derive(Debug)]
pub(super) enum Failure {
    /// Found before any work started: exit 2.
    Usage(anyhow::Error),
    /// The job ran and failed, or a command failed after it started: exit 1.
    Job(anyhow::Error),
}

impl Failure {
    pub(super) fn code(&self) -> u8 {
        match self {
            Failure::Usage(_) => EXIT_USAGE,
            Failure::Job(_) => EXIT_JOB_FAILED,
        }
    }

    pub(super) fn error(&self) -> &anyhow::Error {
        match self {
            Failure::Usage(error) | Failure::Job(error) => error,
        }
    }
}

pub(super) fn usage(error: impl Into<anyhow::Error>) -> Failure {
    Failure::Usage(error.into())
}

pub(super) fn failed(error: impl Into<anyhow::Error>) -> Failure {
    Failure::Job(error.into())
}

/// A launch refused (nothing written) is a usage error; one that failed later, a job failure.
impl From<crate::launch::LaunchError> for Failure {
    fn from(error: crate::launch::LaunchError) -> Self {
        match error {
            crate::launch::LaunchError::Refused(_) => Failure::Usage(error.into()),
            crate::launch::LaunchError::Failed(_) => Failure::Job(error.into()),
        }
    }
}
