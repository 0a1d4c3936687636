//! IBM Cloud Code Engine as an engine of the array executor (`array`): each wave is one job
//! run of a job the user created with fanout's image (`ibmcloud ce job create`), submitted
//! through Code Engine's REST API v2 (`POST /projects/{id}/job_runs`) with the run's
//! arguments (`worker REQUESTS`), its array indices (`scale_array_spec`) and no retries of
//! its own (the coordinator retries what fails, in a run of only that). Code Engine sets
//! `JOB_INDEX` and `CE_JOBRUN` in each instance; the run's `indices_details` say which
//! indices run, succeeded or failed. Owns the API calls and the IAM token exchange (an API
//! key for a bearer token, renewed before it expires); nothing of the waves.

use super::array::{self, ArrayApi, Emission, Submission, TaskState};
use super::{rest, shell_quote};
use async_trait::async_trait;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How often a run's indices are looked at.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);
/// A token is renewed this long before IAM says it expires.
const RENEW_BEFORE: Duration = Duration::from_secs(300);

/// Where and what to run, from `[executor]` and the environment.
#[derive(Debug, Clone)]
pub struct CodeEngineSettings {
    /// The project's id (a UUID, `ibmcloud ce project current`).
    pub project: String,
    /// The region (`us-south`, `eu-de`...): the API is `api.REGION.codeengine.cloud.ibm.com`.
    pub region: String,
    /// The job the runs are of, created with fanout's image.
    pub job: String,
}

/// The body of `POST /projects/{id}/job_runs` for `submission`.
fn job_run_body(settings: &CodeEngineSettings, submission: &Submission<'_>) -> Value {
    json!({
        "job_name": settings.job,
        "run_arguments": submission.args,
        "scale_array_spec": format!("0-{}", submission.count - 1),
        "scale_retry_limit": submission.task_attempts.saturating_sub(1),
        "scale_max_execution_time": array::task_timeout(submission.timeout).as_secs(),
        "scale_memory_limit": format!("{}G", memory_gb(submission)),
        "run_env_variables": [{"type": "literal", "name": "FANOUT_JOB", "value": submission.job_id}],
    })
}

/// Code Engine's memory sizes go in steps; whole gigabytes are always accepted.
fn memory_gb(submission: &Submission<'_>) -> u64 {
    submission.memory_mb.div_ceil(1024).max(1)
}

/// What `--emit` prints: the job run to submit, over REST and with the ibmcloud CLI.
pub fn emission(settings: &CodeEngineSettings, submission: &Submission<'_>) -> Emission {
    // `ibmcloud ce` runs in the selected project; select the job's first.
    let mut command = vec![
        format!("ibmcloud ce project select --id {} &&", shell_quote(&settings.project)),
        "ibmcloud ce jobrun submit".to_string(),
        format!("--job {}", shell_quote(&settings.job)),
        format!("--array-indices 0-{}", submission.count - 1),
        format!("--retrylimit {}", submission.task_attempts.saturating_sub(1)),
        format!("--maxexecutiontime {}", array::task_timeout(submission.timeout).as_secs()),
        format!("--memory {}G", memory_gb(submission)),
        format!("--env FANOUT_JOB={}", shell_quote(submission.job_id)),
    ];
    // `=` keeps an argument that starts with -- from reading as the CLI's own flag.
    command.extend(submission.args.iter().map(|arg| format!("--argument={}", shell_quote(arg))));
    Emission {
        method: "POST",
        url: format!(
            "https://api.{}.codeengine.cloud.ibm.com/v2/projects/{}/job_runs",
            settings.region, settings.project
        ),
        body: job_run_body(settings, submission),
        command: command.join(" "),
    }
}

/// The API's base URL and the API key, from the environment as IBM's own SDKs read them:
/// `CODE_ENGINE_URL` (else the region's), `CODE_ENGINE_AUTH_URL` (else IAM's), and the key
/// in `CODE_ENGINE_APIKEY` or the CLI's `IBMCLOUD_API_KEY`.
struct Endpoints {
    api: String,
    iam: String,
    api_key: String,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|value| !value.trim().is_empty())
}

impl Endpoints {
    fn from_env(region: &str) -> Result<Endpoints, String> {
        let api = env("CODE_ENGINE_URL").unwrap_or_else(|| format!("https://api.{region}.codeengine.cloud.ibm.com/v2"));
        let iam = env("CODE_ENGINE_AUTH_URL").unwrap_or_else(|| "https://iam.cloud.ibm.com".to_string());
        let api_key = env("CODE_ENGINE_APIKEY").or_else(|| env("IBMCLOUD_API_KEY")).ok_or_else(|| {
            "no IBM Cloud API key: set IBMCLOUD_API_KEY (or CODE_ENGINE_APIKEY) to a key that may run the job"
                .to_string()
        })?;
        Ok(Endpoints {
            api: api.trim_end_matches('/').to_string(),
            iam: iam.trim_end_matches('/').to_string(),
            api_key,
        })
    }
}

/// Code Engine's REST API v2 as an [`ArrayApi`].
pub struct CodeEngineApi {
    settings: CodeEngineSettings,
    endpoints: Endpoints,
    http: reqwest::Client,
    token: Mutex<Option<(String, Instant)>>,
}

impl CodeEngineApi {
    /// A client from the settings and the environment; nothing is sent yet.
    pub fn new(settings: CodeEngineSettings) -> Result<CodeEngineApi, String> {
        let endpoints = Endpoints::from_env(&settings.region)?;
        let http = rest::client()?;
        Ok(CodeEngineApi { settings, endpoints, http, token: Mutex::new(None) })
    }

    /// Before anything is written: the key buys a token, and the job exists.
    pub async fn check(&self) -> Result<(), String> {
        let url = format!("{}/projects/{}/jobs/{}", self.endpoints.api, self.settings.project, self.settings.job);
        self.call(reqwest::Method::GET, &url, None).await.map(|_| ()).map_err(|e| {
            format!("code engine job {} in project {} ({}): {e}", self.settings.job, self.settings.project, url)
        })
    }

    /// A bearer token from IAM, kept until shortly before it expires.
    async fn bearer(&self) -> Result<String, String> {
        let mut token = self.token.lock().await;
        if let Some((value, until)) = token.as_ref() {
            if Instant::now() < *until {
                return Ok(value.clone());
            }
        }
        let url = format!("{}/identity/token", self.endpoints.iam);
        let form = [("grant_type", "urn:ibm:params:oauth:grant-type:apikey"), ("apikey", &self.endpoints.api_key)];
        let response = self
            .http
            .post(&url)
            .header("Accept", "application/json")
            .form(&form)
            .send()
            .await
            .map_err(|e| format!("IAM ({url}) does not answer: {}", rest::one_line(&e)))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let said = rest::api_message(&body, &text);
            return Err(format!("IAM ({url}) refused the API key (HTTP {}): {said}", status.as_u16()));
        }
        let value = body["access_token"].as_str().ok_or("IAM's answer has no access_token")?.to_string();
        let lasts = Duration::from_secs(body["expires_in"].as_u64().unwrap_or(3600));
        *token = Some((value.clone(), Instant::now() + lasts.saturating_sub(RENEW_BEFORE)));
        Ok(value)
    }

    /// One authorized request; the answer's JSON, or the API's message.
    async fn call(&self, method: reqwest::Method, url: &str, body: Option<Value>) -> Result<Value, String> {
        rest::call(&self.http, method, url, &self.bearer().await?, body).await
    }
}

/// Code Engine's index lists ("0-3,5,7-8") as indices.
fn indices(list: &str) -> Vec<usize> {
    let mut found = Vec::new();
    for part in list.split(',').map(str::trim).filter(|part| !part.is_empty()) {
        match part.split_once('-') {
            Some((from, to)) => {
                if let (Ok(from), Ok(to)) = (from.trim().parse::<usize>(), to.trim().parse::<usize>()) {
                    found.extend(from..=to);
                }
            }
            None => found.extend(part.parse::<usize>().ok()),
        }
    }
    found
}

#[async_trait]
impl ArrayApi for CodeEngineApi {
    fn kind(&self) -> &'static str {
        "code-engine"
    }

    fn task_name(&self, array: &str, index: usize) -> String {
        format!("code engine job run {array} index {index}")
    }

    fn follow_every(&self) -> Duration {
        FOLLOW_EVERY
    }

    async fn submit(&self, submission: &Submission<'_>) -> Result<String, String> {
        let url = format!("{}/projects/{}/job_runs", self.endpoints.api, self.settings.project);
        let body = job_run_body(&self.settings, submission);
        let run = self.call(reqwest::Method::POST, &url, Some(body)).await.map_err(|e| format!("job_runs: {e}"))?;
        run["name"].as_str().map(str::to_string).ok_or_else(|| "job_runs: the answer names no run".to_string())
    }

    async fn states(&self, array: &str, count: usize) -> Result<BTreeMap<usize, TaskState>, String> {
        let url = format!("{}/projects/{}/job_runs/{array}", self.endpoints.api, self.settings.project);
        let run = match self.call(reqwest::Method::GET, &url, None).await {
            Ok(run) => run,
            // A run Code Engine no longer has (deleted, expired): every index has ended.
            Err(e) if e.starts_with("HTTP 404") => return Ok(BTreeMap::new()),
            Err(e) => return Err(e),
        };
        let details = &run["status_details"]["indices_details"];
        let mut states: BTreeMap<usize, TaskState> = (0..count).map(|index| (index, TaskState::Waiting)).collect();
        for (field, state) in [
            ("running", TaskState::Running),
            ("succeeded", TaskState::Ended("SUCCEEDED".into())),
            ("failed", TaskState::Ended("FAILED".into())),
        ] {
            for index in indices(details[field].as_str().unwrap_or_default()) {
                states.insert(index, state.clone());
            }
        }
        // A run over as a whole has no index left waiting.
        if matches!(run["status"].as_str(), Some("completed" | "failed")) {
            for state in states.values_mut().filter(|state| !matches!(state, TaskState::Ended(_))) {
                *state = TaskState::Ended("ENDED".into());
            }
        }
        Ok(states)
    }

    async fn cancel(&self, array: &str, pending_only: bool) {
        // Code Engine stops a run by deleting it, running instances too: on the first stop
        // they finish instead.
        if pending_only {
            return;
        }
        let url = format!("{}/projects/{}/job_runs/{array}", self.endpoints.api, self.settings.project);
        let _ = self.call(reqwest::Method::DELETE, &url, None).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lists_read_as_code_engine_writes_them() {
        assert_eq!(indices("0-3,5, 7-8"), vec![0, 1, 2, 3, 5, 7, 8]);
        assert_eq!(indices(""), Vec::<usize>::new());
        assert_eq!(indices("4"), vec![4]);
    }
}
