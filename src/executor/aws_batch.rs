//! AWS Batch as an engine of the array executor (`array`): each wave is one array job
//! (`SubmitJob` with `arrayProperties`; a lone task is a plain job) in the user's job queue,
//! of a job definition whose image is fanout's, with the command overridden to
//! `worker REQUESTS` and one attempt (the coordinator retries what fails, in an array of
//! only that). Batch sets `AWS_BATCH_JOB_ARRAY_INDEX` in each child; `ListJobs` over the
//! array's children says which run and which ended. Owns the SDK calls; credentials,
//! region and endpoint come from the AWS SDK's usual chain (`AWS_ENDPOINT_URL_BATCH`).

use super::array::{self, ArrayApi, Emission, Submission, TaskState};
use super::shell_quote;
use async_trait::async_trait;
use aws_sdk_batch::types::{ArrayProperties, ContainerOverrides, JobStatus, JobTimeout, KeyValuesPair, RetryStrategy};
use aws_sdk_batch::Client;
use std::collections::BTreeMap;
use std::time::Duration;

/// How often an array's children are looked at.
const FOLLOW_EVERY: Duration = Duration::from_secs(2);

/// Where and what to run, from `[executor]`.
#[derive(Debug, Clone)]
pub struct AwsBatchSettings {
    /// The job queue (a name or an ARN).
    pub queue: String,
    /// The job definition (a name, `name:revision` or an ARN) whose image is fanout's.
    pub definition: String,
    /// The region, when not the SDK's default.
    pub region: Option<String>,
}

/// The array job's name: Batch takes letters, digits, - and _ only, at most 128.
pub fn job_name(job_id: &str) -> String {
    let name: String = format!("fanout-{job_id}")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    name.chars().take(128).collect()
}

/// What `--emit` prints: `SubmitJob`'s input, which `aws batch submit-job --cli-input-json`
/// takes as it is.
pub fn emission(settings: &AwsBatchSettings, submission: &Submission<'_>) -> Emission {
    let mut body = serde_json::json!({
        "jobName": job_name(submission.job_id),
        "jobQueue": settings.queue,
        "jobDefinition": settings.definition,
        "containerOverrides": {"command": submission.args},
        "retryStrategy": {"attempts": submission.task_attempts},
        "timeout": {"attemptDurationSeconds": array::task_timeout(submission.timeout).as_secs()},
    });
    if submission.count > 1 {
        body["arrayProperties"] = serde_json::json!({"size": submission.count});
    }
    let region = settings.region.as_deref().map(|r| format!(" --region {}", shell_quote(r))).unwrap_or_default();
    Emission {
        method: "POST",
        url: format!("https://batch.{}.amazonaws.com/v1/submitjob", settings.region.as_deref().unwrap_or("REGION")),
        body,
        command: format!("aws batch submit-job{region} --cli-input-json file://submit-job.json"),
    }
}

/// AWS Batch through the AWS SDK as an [`ArrayApi`].
pub struct AwsBatchApi {
    settings: AwsBatchSettings,
    client: Client,
    endpoint: String,
}

fn sdk_error<E>(error: &aws_sdk_batch::error::SdkError<E>) -> String
where
    E: aws_sdk_batch::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        aws_sdk_batch::error::SdkError::ServiceError(service) => {
            let code = service.err().code().unwrap_or("error");
            let message = service.err().message().unwrap_or_default();
            format!("{code}: {message} (HTTP {})", service.raw().status().as_u16())
        }
        other => super::rest::one_line(other),
    }
}

impl AwsBatchApi {
    pub async fn connect(settings: AwsBatchSettings) -> AwsBatchApi {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &settings.region {
            loader = loader.region(aws_config::Region::new(region.clone()));
        }
        let shared = loader.load().await;
        let endpoint = crate::aws::configured_endpoint(&shared, "Batch").unwrap_or_else(|| "AWS Batch".to_string());
        let mut config = aws_sdk_batch::config::Builder::from(&shared).timeout_config(
            aws_sdk_batch::config::timeout::TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_timeout(Duration::from_secs(60))
                .build(),
        );
        if shared.region().is_none() {
            config = config.region(aws_sdk_batch::config::Region::new("us-east-1"));
        }
        AwsBatchApi { settings, client: Client::from_conf(config.build()), endpoint }
    }

    /// Before anything is written: the queue and the definition exist, and the queue takes jobs.
    pub async fn check(&self) -> Result<(), String> {
        let at = |what: &str, e: String| format!("aws batch {what} ({}): {e}", self.endpoint);
        let queues = self
            .client
            .describe_job_queues()
            .job_queues(&self.settings.queue)
            .send()
            .await
            .map_err(|e| at("DescribeJobQueues", sdk_error(&e)))?;
        let queue = queues.job_queues().first().ok_or_else(|| format!("no job queue {}", self.settings.queue))?;
        if queue.state().map(|state| state.as_str()) == Some("DISABLED") {
            return Err(format!("the job queue {} is disabled", self.settings.queue));
        }
        let definitions = self
            .client
            .describe_job_definitions()
            .job_definitions(&self.settings.definition)
            .send()
            .await
            .map_err(|e| at("DescribeJobDefinitions", sdk_error(&e)))?;
        if definitions.job_definitions().is_empty() {
            return Err(format!("no job definition {}", self.settings.definition));
        }
        Ok(())
    }
}

/// A child's status as a task state.
fn task_state(status: &JobStatus) -> TaskState {
    match status {
        JobStatus::Running => TaskState::Running,
        JobStatus::Succeeded | JobStatus::Failed => TaskState::Ended(status.as_str().to_string()),
        _ => TaskState::Waiting,
    }
}

#[async_trait]
impl ArrayApi for AwsBatchApi {
    fn kind(&self) -> &'static str {
        "aws-batch"
    }

    fn task_name(&self, array: &str, index: usize) -> String {
        format!("aws batch job {array}:{index}")
    }

    fn follow_every(&self) -> Duration {
        FOLLOW_EVERY
    }

    async fn submit(&self, submission: &Submission<'_>) -> Result<String, String> {
        let command = submission.args.to_vec();
        let mut request = self
            .client
            .submit_job()
            .job_name(job_name(submission.job_id))
            .job_queue(&self.settings.queue)
            .job_definition(&self.settings.definition)
            .container_overrides(ContainerOverrides::builder().set_command(Some(command)).build())
            .retry_strategy(RetryStrategy::builder().attempts(submission.task_attempts as i32).build())
            .timeout(
                JobTimeout::builder()
                    .attempt_duration_seconds(array::task_timeout(submission.timeout).as_secs() as i32)
                    .build(),
            );
        // Batch's arrays have 2 to 10,000 children; one task is a plain job (index 0).
        if submission.count > 1 {
            request = request.array_properties(ArrayProperties::builder().size(submission.count as i32).build());
        }
        let submitted = request.send().await.map_err(|e| format!("SubmitJob: {}", sdk_error(&e)))?;
        submitted.job_id().map(str::to_string).ok_or_else(|| "SubmitJob: the answer has no job id".to_string())
    }

    async fn states(&self, array: &str, count: usize) -> Result<BTreeMap<usize, TaskState>, String> {
        let mut states: BTreeMap<usize, TaskState> = (0..count).map(|index| (index, TaskState::Waiting)).collect();
        if count == 1 {
            let described = self
                .client
                .describe_jobs()
                .jobs(array)
                .send()
                .await
                .map_err(|e| format!("DescribeJobs: {}", sdk_error(&e)))?;
            return Ok(match described.jobs().first().and_then(|job| job.status()) {
                Some(status) => BTreeMap::from([(0, task_state(status))]),
                // A job Batch no longer has: it has ended.
                None => BTreeMap::new(),
            });
        }
        // A filter lists the children in every status at once (jobStatus is then ignored).
        let every = KeyValuesPair::builder().name("AFTER_CREATED_AT").values("0").build();
        let mut pages = self.client.list_jobs().array_job_id(array).filters(every).into_paginator().send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| format!("ListJobs: {}", sdk_error(&e)))?;
            for child in page.job_summary_list() {
                let index = child.array_properties().and_then(|properties| properties.index());
                if let (Some(index), Some(status)) = (index, child.status()) {
                    states.insert(index as usize, task_state(status));
                }
            }
        }
        Ok(states)
    }

    async fn cancel(&self, array: &str, pending_only: bool) {
        let reason = "stopped by fanout";
        // CancelJob stops the children that have not started; TerminateJob all of them.
        if pending_only {
            let _ = self.client.cancel_job().job_id(array).reason(reason).send().await;
        } else {
            let _ = self.client.terminate_job().job_id(array).reason(reason).send().await;
        }
    }
}
