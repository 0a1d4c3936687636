//! Google Cloud Run Jobs as an engine of the array executor (`array`): each wave is one
//! execution of a job the user created with fanout's image (`gcloud run jobs create`), started
//! through the Cloud Run Admin API v2 (`jobs/JOB:run`) with overrides: the container's
//! arguments (`worker REQUESTS`), the task count and a timeout. Cloud Run sets
//! `CLOUD_RUN_TASK_INDEX` in each task; the execution's tasks say which run and which
//! ended, and how. Owns the API calls; the bearer token comes from Google's usual chain
//! (`GOOGLE_APPLICATION_CREDENTIALS`, gcloud's application-default file, the metadata
//! server), through `object_store`'s provider, as the gs:// backend gets its own.

use super::array::{self, ArrayApi, Emission, Submission, TaskState};
use super::{rest, shell_quote};
use async_trait::async_trait;
use object_store::gcp::{GcpCredentialProvider, GoogleCloudStorageBuilder};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// How often an execution's tasks are looked at.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);
/// Tasks asked for in one page of a listing (the API's most).
const PAGE: usize = 1000;

/// Where and what to run, from `[executor]`.
#[derive(Debug, Clone)]
pub struct CloudRunSettings {
    pub project: String,
    /// The job's region (`us-central1`...).
    pub region: String,
    /// The Cloud Run job the executions are of, created with fanout's image.
    pub job: String,
}

impl CloudRunSettings {
    fn job_path(&self) -> String {
        format!("projects/{}/locations/{}/jobs/{}", self.project, self.region, self.job)
    }
}

/// The body of `jobs/JOB:run` for `submission`. Cloud Run takes no retries here: a task is
/// started again up to the job's own `maxRetries` (3 unless it was created otherwise).
fn run_body(submission: &Submission<'_>) -> Value {
    json!({
        "overrides": {
            "containerOverrides": [{"args": submission.args}],
            "taskCount": submission.count,
            "timeout": format!("{}s", array::task_timeout(submission.timeout).as_secs()),
        }
    })
}

/// What `--emit` prints: the execution to start, over REST and with gcloud.
pub fn emission(settings: &CloudRunSettings, submission: &Submission<'_>) -> Emission {
    let command = [
        "gcloud run jobs execute".to_string(),
        shell_quote(&settings.job),
        format!("--project {}", shell_quote(&settings.project)),
        format!("--region {}", shell_quote(&settings.region)),
        format!("--tasks {}", submission.count),
        format!("--task-timeout {}s", array::task_timeout(submission.timeout).as_secs()),
        // gcloud splits --args at commas; its ^SEP^ prefix picks another separator.
        format!("--args {}", shell_quote(&format!("^|^{}", submission.args.join("|")))),
    ]
    .join(" ");
    Emission {
        method: "POST",
        url: format!("https://run.googleapis.com/v2/{}:run", settings.job_path()),
        body: run_body(submission),
        command,
    }
}

/// The Cloud Run Admin API v2 as an [`ArrayApi`].
pub struct CloudRunApi {
    settings: CloudRunSettings,
    /// `https://run.googleapis.com`, or gcloud's override `CLOUDSDK_API_ENDPOINT_OVERRIDES_RUN`.
    api: String,
    http: reqwest::Client,
    credentials: GcpCredentialProvider,
}

impl CloudRunApi {
    /// A client from the settings and the environment; nothing is sent yet.
    pub fn new(settings: CloudRunSettings) -> Result<CloudRunApi, String> {
        let api = std::env::var("CLOUDSDK_API_ENDPOINT_OVERRIDES_RUN")
            .ok()
            .filter(|url| !url.trim().is_empty())
            .unwrap_or_else(|| "https://run.googleapis.com".to_string());
        let api = api.trim_end_matches('/').trim_end_matches("/v2").to_string();
        // The gs:// client's credential chain, whose tokens carry the cloud-platform scope;
        // the bucket is never used.
        let store = GoogleCloudStorageBuilder::from_env()
            .with_bucket_name("fanout-cloud-run")
            .build()
            .map_err(|e| format!("no usable Google Cloud credentials: {}", rest::one_line(&e)))?;
        let credentials = store.credentials().clone();
        Ok(CloudRunApi { settings, api, http: rest::client()?, credentials })
    }

    fn job_path(&self) -> String {
        self.settings.job_path()
    }

    /// Before anything is written: a token is had, and the job exists.
    pub async fn check(&self) -> Result<(), String> {
        let url = format!("{}/v2/{}", self.api, self.job_path());
        self.call(reqwest::Method::GET, &url, None)
            .await
            .map(|_| ())
            .map_err(|e| format!("cloud run job {} ({url}): {e}", self.job_path()))
    }

    async fn call(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> Result<Value, String> {
        let credential = self
            .credentials
            .get_credential()
            .await
            .map_err(|e| format!("no Google Cloud token: {}", rest::one_line(&e)))?;
        rest::call(&self.http, method, url, &credential.bearer, body).await
    }
}

/// A task's state from its resource: over once it has a completion time.
fn task_state(task: &Value) -> TaskState {
    if task["completionTime"].is_string() {
        let exit = task["lastAttemptResult"]["exitCode"].as_i64().unwrap_or(0);
        let code = task["lastAttemptResult"]["status"]["code"].as_i64().unwrap_or(0);
        let word = if exit == 0 && code == 0 { "SUCCEEDED" } else { "FAILED" };
        TaskState::Ended(word.to_string())
    } else if task["startTime"].is_string() {
        TaskState::Running
    } else {
        TaskState::Waiting
    }
}

#[async_trait]
impl ArrayApi for CloudRunApi {
    fn kind(&self) -> &'static str {
        "cloud-run"
    }

    fn task_name(&self, array: &str, index: usize) -> String {
        let execution = array.rsplit('/').next().unwrap_or(array);
        format!("cloud run execution {execution} task {index}")
    }

    fn follow_every(&self) -> Duration {
        FOLLOW_EVERY
    }

    async fn submit(&self, submission: &Submission<'_>) -> Result<String, String> {
        let url = format!("{}/v2/{}:run", self.api, self.job_path());
        let operation = self
            .call(reqwest::Method::POST, &url, Some(run_body(submission)))
            .await
            .map_err(|e| format!("run: {e}"))?;
        operation["metadata"]["name"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| "run: the operation names no execution".to_string())
    }

    async fn states(&self, array: &str, count: usize) -> Result<BTreeMap<usize, TaskState>, String> {
        let mut states: BTreeMap<usize, TaskState> = (0..count).map(|index| (index, TaskState::Waiting)).collect();
        let mut token = String::new();
        loop {
            let mut url = format!("{}/v2/{array}/tasks?pageSize={PAGE}", self.api);
            if !token.is_empty() {
                url.push_str(&format!("&pageToken={token}"));
            }
            let page = match self.call(reqwest::Method::GET, &url, None).await {
                Ok(page) => page,
                // An execution Cloud Run no longer has: every task has ended.
                Err(e) if e.starts_with("HTTP 404") => return Ok(BTreeMap::new()),
                Err(e) => return Err(e),
            };
            for task in page["tasks"].as_array().into_iter().flatten() {
                if let Some(index) = task["index"].as_u64() {
                    states.insert(index as usize, task_state(task));
                }
            }
            match page["nextPageToken"].as_str() {
                Some(next) if !next.is_empty() => token = next.to_string(),
                _ => return Ok(states),
            }
        }
    }

    async fn cancel(&self, array: &str, pending_only: bool) {
        // Cloud Run cancels an execution whole; on the first stop its tasks finish instead.
        if !pending_only {
            let _ = self.call(reqwest::Method::POST, &format!("{}/v2/{array}:cancel", self.api), None).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_read_as_the_api_describes_them() {
        assert_eq!(task_state(&json!({"index": 0})), TaskState::Waiting);
        assert_eq!(task_state(&json!({"index": 0, "startTime": "t"})), TaskState::Running);
        let done = json!({"startTime": "t", "completionTime": "t", "lastAttemptResult": {"exitCode": 0}});
        assert_eq!(task_state(&done), TaskState::Ended("SUCCEEDED".into()));
        let killed = json!({"completionTime": "t", "lastAttemptResult": {"exitCode": 137, "status": {"code": 2}}});
        assert_eq!(task_state(&killed), TaskState::Ended("FAILED".into()));
    }
}
