//! `fanout worker REQUESTS`: parses the flags, opens REQUESTS and runs one share there
//! (`crate::worker::share`); a worker that cannot answer leaves its error beside the
//! answers, where the committer looks, and exits non-zero.

use super::args::WorkerArgs;
use super::exit::{failed, usage, Failure, EXIT_OK};
use crate::executor::remote::shares_prefix;
use crate::location::Location;
use crate::storage::{self, StorageOptions};
use crate::worker::engine;
use crate::worker::share::{self, ShareError};
use anyhow::anyhow;

impl WorkerArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        let task = engine::task(self.index, |name| std::env::var(name).ok()).map_err(|e| usage(anyhow!(e)))?;
        let index = task.index;
        let mut location = Location::parse(&self.requests).map_err(|e| usage(anyhow!("REQUESTS: {e}")))?;
        if let Some(job_id) = &self.job_id {
            location = location.join(&shares_prefix(job_id));
        }
        let requests = storage::open(&location, &StorageOptions::default())
            .await
            .map_err(|e| failed(anyhow!("{location}: {e}")))?;
        let where_ = location.to_string();
        // The engine's count is checked like --count's, where the job's shares are stored: an
        // array of another size than the job's shares would leave some unrun.
        let engine_count = task.count.filter(|_| self.job_id.is_some());
        for count in self.count.into_iter().chain(engine_count.filter(|&n| Some(n) != self.count)) {
            share::check_count(&requests, &where_, count, index).await.map_err(failure)?;
        }
        let tag = share::worker_tag();
        if let Err(error) = share::answer_share(&requests, &where_, &task, &tag).await {
            share::store_error(&requests, index, &tag, &error.to_string()).await;
            return Err(failure(error));
        }
        Ok(EXIT_OK)
    }
}

fn failure(error: ShareError) -> Failure {
    match error {
        ShareError::Usage(_) => usage(anyhow!(error)),
        other => failed(anyhow!(other)),
    }
}
