//! Jobs whose workers the user's own tools start: `fanout k8s` (a Kubernetes Indexed Job),
//! `fanout run --emit` (an array of Cloud Run Jobs, Code Engine or AWS Batch), and `fanout
//! status --follow`, their committer. `k8s` and `--emit` open and check what the job needs
//! (exit 2 with nothing written when it cannot run; the engine itself is not asked), plan it
//! whole, store the plan, the shares' requests and then `job.json` in DEST, and print what
//! to submit: the Job for kubectl, the engine's API request and CLI command. `status
//! --follow` is the coordinator of any run, continuing the stored job with an executor that
//! follows the workers' answers.

use super::args::{K8sArgs, RunArgs, StatusArgs};
use super::common::{follow_command, open_job, plan_failure};
use super::exit::{failed, usage, Failure, EXIT_OK};
use super::running::{open_everything, Launch};
use crate::events::EventSink;
use crate::executor::array::{Emission, Submission};
use crate::executor::aws_batch::{self, AwsBatchSettings};
use crate::executor::cloud_run::{self, CloudRunSettings};
use crate::executor::code_engine::{self, CodeEngineSettings};
use crate::executor::kubernetes::{self, JobSpec, Shares};
use crate::executor::remote::lease::{CommitterLease, Guard};
use crate::executor::remote::protocol::{self, Order, Request};
use crate::executor::remote::WORKER_OVERHEAD_MB;
use crate::job::{self, Executor, Job, Origins, Sandbox};
use crate::launch::{new_document, Opened, Starter, StoredFunction, Workers};
use crate::manifest::{JobDocument, Manifest, PlanState};
use crate::source::{self, PlanTotals, Planned, Shard};
use crate::stage::Call;
use anyhow::anyhow;
use bytes::Bytes;
use futures::StreamExt;
use std::time::Duration;

/// Shards per stored plan segment, as a run stores them.
const PLAN_SEGMENT: usize = 10_000;
/// Workers an emitted array's task may use up (its first start and the engine's retries),
/// as a Kubernetes Job's share does with `--backoff-limit-per-index 3`.
const EMITTED_TASK_ATTEMPTS: u32 = 4;

/// A job stored for followers: its document as stored, and its shares.
struct StoredJob {
    job_id: String,
    shards: u64,
    shares: usize,
    /// The engine's name for the job, stored with the shares.
    engine_job_name: String,
}

/// Plans the job whole and stores it for workers the user starts: the plan, `shares` shares'
/// requests (at most one per shard), how they were cut, and last `job.json` (the job exists for
/// `status` and `--follow` only once all of it is stored).
async fn store_for_followers(
    job: &Job,
    origins: &Origins,
    opened: Opened,
    shares: usize,
    workers_per_share: u32,
    engine_job_name: impl FnOnce(&str) -> String,
) -> Result<StoredJob, Failure> {
    let Opened { dest, source, load, workers: Workers::Elsewhere(function), .. } = opened else {
        unreachable!("a job for followers opens with its workers elsewhere")
    };
    let (shards, totals) = plan_whole(job, source, origins).await?;
    let mut document = new_document(job, &load, false);
    document.emitted = !matches!(job.executor, Executor::Kubernetes { .. });
    let job_id = document.job_id.clone();
    let manifest = Manifest::new(dest.clone(), &job_id);
    let segments = shards.chunks(PLAN_SEGMENT).count() as u64;
    for (segment, chunk) in shards.chunks(PLAN_SEGMENT).enumerate() {
        manifest.write_plan_segment(segment as u64, chunk).await.map_err(failed)?;
    }
    let total = totals.shards;
    document.plan = PlanState { complete: true, segments, totals: Some(totals) };
    let count = shares.min(shards.len()).max(1);
    let engine_job_name = engine_job_name(&job_id);
    let cut = Shares {
        first_shards: store_shares(&document, &function, &dest, shards, count).await?,
        pods_per_share: workers_per_share,
        job_name: engine_job_name.clone(),
    };
    let prefix = kubernetes::shares_prefix(&job_id);
    let body = Bytes::from(serde_json::to_vec_pretty(&cut).expect("shares serialize"));
    dest.put(&format!("{prefix}{}", kubernetes::SHARES), body).await.map_err(failed)?;
    manifest.write_job(&document).await.map_err(failed)?;
    Ok(StoredJob { job_id, shards: total, shares: count, engine_job_name })
}

impl K8sArgs {
    /// The flags only `fanout k8s` has, checked before anything is opened.
    fn check_flags(&self) -> Result<(), Failure> {
        if self.cpus == 0 || self.shares == Some(0) {
            return Err(usage(anyhow!("--cpus and --shares: at least 1")));
        }
        for (flag, name) in [("--job-name", &self.job_name), ("--namespace", &self.namespace)] {
            match name {
                Some(name) if name.len() > 63 || name.contains('.') || !job::is_dns_name(name) => {
                    return Err(usage(anyhow!(
                        "{flag}: {name:?} is not a Kubernetes name (a-z, 0-9 and -, at most 63)"
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }

    pub(super) async fn execute(self) -> Result<u8, Failure> {
        let quiet = self.output.quiet || self.output.json;
        self.check_flags()?;
        let mut job_args = self.job.clone();
        job_args.flags.executor.kind = Some("kubernetes".parse().expect("a word parses"));
        let (mut job, origins) = job::resolve(&job_args).map_err(usage)?;
        let options = self.storage.options();
        let opened = open_everything(&mut job, &origins, &options, quiet, Starter::User).await?;
        let Executor::Kubernetes { concurrency, image, secret } = &job.executor else {
            unreachable!("the kind was set to kubernetes")
        };
        let shares = self.shares.unwrap_or(*concurrency);
        let workers_per_share = self.backoff_limit_per_index + 1;
        let name_of = |job_id: &str| self.job_name.clone().unwrap_or_else(|| kubernetes::job_name(job_id));
        let stored = store_for_followers(&job, &origins, opened, shares, workers_per_share, name_of).await?;
        let (job_id, count, name) = (stored.job_id.clone(), stored.shares, stored.engine_job_name.clone());
        let endpoint = options.endpoint_url.clone().map(|url| ("AWS_ENDPOINT_URL_S3".to_string(), url));
        let dest_url = job.output.dest.to_string();
        let spec = JobSpec {
            name: &name,
            namespace: self.namespace.as_deref(),
            job_id: &job_id,
            image,
            secret: secret.as_deref(),
            dest: &dest_url,
            completions: count,
            parallelism: *concurrency,
            backoff_limit_per_index: self.backoff_limit_per_index,
            cpus: self.cpus,
            guest_memory_bytes: job.function.memory_bytes,
            env: endpoint.into_iter().collect(),
            bubblewrap: job.function.command.is_some() && job.function.sandbox == Sandbox::Bubblewrap,
        };
        let manifest = kubernetes::job_manifest(&spec);
        match self.output.json {
            // kubectl reads JSON as well.
            true => println!("{}", serde_json::to_string_pretty(&manifest).expect("a Job serializes")),
            false => print!("{}", kubernetes::to_yaml(&manifest)),
        }
        if !quiet {
            eprintln!(
                "fanout: job {job_id}: {} shards in {count} shares, stored in {}; after `kubectl apply -f`, \
                 commit what the pods do with: {}",
                stored.shards,
                job.output.dest,
                follow_command(&job.output.dest.to_string(), &job_id)
            );
        }
        Ok(EXIT_OK)
    }
}

/// `fanout run JOB --executor cloud-run|code-engine|aws-batch --emit`: stores the job as
/// `fanout k8s` does and prints the array to submit (the API request's body on stdout, the
/// engine's CLI command and the committer's on stderr; all of it as one JSON with --json).
pub(super) async fn emit(run: RunArgs) -> Result<u8, Failure> {
    let quiet = run.output.quiet || run.output.json;
    let (mut job, origins) = job::resolve(&run.job).map_err(usage)?;
    let concurrency = match &job.executor {
        Executor::CloudRun { concurrency, .. }
        | Executor::CodeEngine { concurrency, .. }
        | Executor::AwsBatch { concurrency, .. } => *concurrency,
        Executor::Kubernetes { .. } => {
            return Err(usage(anyhow!(
                "--emit: for Kubernetes, `fanout k8s JOB.toml --image IMAGE` stores the job and prints its Job"
            )))
        }
        other => {
            return Err(usage(anyhow!(
                "--emit: the {} executor is started by fanout itself; --emit is for cloud-run, code-engine and \
                 aws-batch (and `fanout k8s` for Kubernetes)",
                other.kind()
            )))
        }
    };
    let options = run.storage.options();
    let opened = open_everything(&mut job, &origins, &options, quiet, Starter::User).await?;
    let name_of = |job_id: &str| match &job.executor {
        Executor::CloudRun { job, .. } | Executor::CodeEngine { job, .. } => job.clone(),
        _ => aws_batch::job_name(job_id),
    };
    let stored = store_for_followers(&job, &origins, opened, concurrency, EMITTED_TASK_ATTEMPTS, name_of).await?;
    let dest = job.output.dest.to_string();
    let args = ["worker", &dest, "--job", &stored.job_id, "--count", &stored.shares.to_string()].map(String::from);
    let submission = Submission {
        args: &args,
        count: stored.shares,
        concurrency,
        job_id: &stored.job_id,
        memory_mb: job.function.memory_bytes.div_ceil(1 << 20) + WORKER_OVERHEAD_MB,
        timeout: job.function.timeout(),
        task_attempts: EMITTED_TASK_ATTEMPTS,
    };
    let emission: Emission = match &job.executor {
        Executor::CloudRun { project, region, job, .. } => cloud_run::emission(
            &CloudRunSettings { project: project.clone(), region: region.clone(), job: job.clone() },
            &submission,
        ),
        Executor::CodeEngine { project, region, job, .. } => code_engine::emission(
            &CodeEngineSettings { project: project.clone(), region: region.clone(), job: job.clone() },
            &submission,
        ),
        Executor::AwsBatch { queue, definition, region, .. } => aws_batch::emission(
            &AwsBatchSettings { queue: queue.clone(), definition: definition.clone(), region: region.clone() },
            &submission,
        ),
        _ => unreachable!("checked above"),
    };
    let follow = follow_command(&dest, &stored.job_id);
    if run.output.json {
        let mut whole = serde_json::to_value(&emission).expect("an emission serializes");
        whole["job_id"] = stored.job_id.clone().into();
        whole["follow"] = follow.into();
        println!("{}", serde_json::to_string_pretty(&whole).expect("json"));
        return Ok(EXIT_OK);
    }
    println!("{}", serde_json::to_string_pretty(&emission.body).expect("a body serializes"));
    let retries = match &job.executor {
        // Cloud Run takes a task's retries from the job, not the request.
        Executor::CloudRun { job, .. } => format!(
            "the job {job} must allow {} retries (gcloud's default, --max-retries 3) for the committer to know when a task gave up.",
            EMITTED_TASK_ATTEMPTS - 1
        ),
        Executor::AwsBatch { .. } => "save the body above as submit-job.json for that command".to_string(),
        _ => String::new(),
    };
    if !quiet {
        eprintln!(
            "fanout: job {}: {} shards in {} shares, stored in {dest}. Submit the array with the body above \
             ({} {}), or with:\n  {}\nthen commit what its tasks do with:\n  {follow}",
            stored.job_id, stored.shards, stored.shares, emission.method, emission.url, emission.command
        );
        if !retries.is_empty() {
            eprintln!("fanout: {retries}");
        }
    }
    Ok(EXIT_OK)
}

/// Every shard of the job, planned before anything is stored.
async fn plan_whole(job: &Job, source: source::Source, origins: &Origins) -> Result<(Vec<Shard>, PlanTotals), Failure> {
    let (events, _) = EventSink::channel();
    let mut planned = source::stream(job, source, events);
    let mut shards = Vec::new();
    while let Some(next) = planned.recv().await {
        match next.map_err(|e| plan_failure(e, origins))? {
            Planned::Shard(shard) => shards.push(shard),
            Planned::Done(totals) if shards.is_empty() => {
                let _ = totals;
                break;
            }
            Planned::Done(totals) => return Ok((shards, totals)),
        }
    }
    Err(usage(anyhow!("{}input.source: the plan is empty", origins.prefix("input.source"))))
}

/// Stores `count` shares' requests (contiguous runs of the plan); returns each share's
/// first shard.
async fn store_shares(
    document: &JobDocument,
    function: &StoredFunction,
    dest: &crate::storage::DynStorage,
    shards: Vec<Shard>,
    count: usize,
) -> Result<Vec<u64>, Failure> {
    let job = &document.job;
    let total = shards.len() as u64;
    let nonce = std::process::id() as u64 ^ document.created.len() as u64;
    let order = |shard: Shard| {
        let call = Call {
            job_id: &document.job_id,
            name: &job.name,
            args: &job.function.args,
            env: &job.function.env,
            shard: shard.id,
            shards_hint: total,
            attempt: 1,
            command: job.function.command.as_deref(),
            object: shard.only_object(),
        };
        let (argv, env) = call.argv_env();
        let staging_prefix = protocol::staging_prefix(&document.job_id, shard.id, 1, nonce);
        Order { shard, attempt: 1, argv, env, staging_prefix }
    };
    let mut rest = shards;
    let mut requests = Vec::with_capacity(count);
    for share in 0..count {
        let take = rest.len().div_ceil(count - share);
        let tail = rest.split_off(take);
        let orders: Vec<Order> = std::mem::replace(&mut rest, tail).into_iter().map(order).collect();
        requests.push(Request {
            protocol: protocol::PROTOCOL,
            job_id: document.job_id.clone(),
            job: job.clone(),
            function_key: function.key.clone(),
            python_compiled: function.python_compiled.clone(),
            function_sha256: document.function.sha256.clone(),
            orders,
            retry_up_to: Some(job.retry.attempts),
        });
    }
    let first_shards = requests.iter().map(|r| r.orders.first().map_or(0, |o| o.shard.id)).collect();
    let prefix = kubernetes::shares_prefix(&document.job_id);
    let stored: Vec<Result<(), String>> = futures::stream::iter(requests.into_iter().enumerate())
        .map(|(index, request)| {
            let key = format!("{prefix}{index}.json");
            async move {
                let body = Bytes::from(serde_json::to_vec(&request).expect("a request serializes"));
                dest.put(&key, body).await.map_err(|e| format!("{key}: {e}"))
            }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    if let Some(Err(e)) = stored.into_iter().find(Result::is_err) {
        return Err(failed(anyhow!("storing the shares: {e}")));
    }
    Ok(first_shards)
}

/// `fanout status DEST --follow`: commits a Kubernetes job's answers until every shard has
/// its outcome, then writes the report, as a run's coordinator does.
pub(super) async fn follow(args: StatusArgs) -> Result<u8, Failure> {
    let quiet = args.output.quiet || args.output.json;
    let options = args.storage.options();
    let (_, document) = open_job(&args.target.dest, args.target.job_id.as_deref(), &options).await?;
    let mut job = document.job.clone();
    // The committer may run anywhere: it takes the function from DEST, where the pods do.
    job.function.wasm = Some(job.output.dest.join(&protocol::function_key(&document.function.sha256)));
    job.function.python = None;
    if !document.is_followed() {
        return Err(usage(anyhow!(
            "--follow commits what the workers of a job made by `fanout k8s` or `fanout run --emit` answer; job {} \
             was run by fanout on the {} executor: `fanout status` shows it, `fanout redrive` finishes it",
            document.job_id,
            job.executor.kind()
        )));
    }
    let opened = open_everything(&mut job, &Origins::default(), &options, quiet, Starter::User).await?;
    if opened.load.sha256 != document.function.sha256 {
        return Err(usage(anyhow!(
            "{}: not the function job {} was made with",
            protocol::function_key(&document.function.sha256),
            document.job_id
        )));
    }
    let lease_key = format!("{}{}", kubernetes::shares_prefix(&document.job_id), kubernetes::COMMITTER);
    let lease = CommitterLease::take(&opened.dest, &lease_key, &document.job_id).await.map_err(usage)?;
    let lost = lease.lost();
    if lease.guard() == Guard::Lease && !quiet {
        eprintln!(
            "note: {} ignores conditional writes, so the committer's lease cannot stop a second committer started \
             in the same instant; start one only",
            opened.dest.root()
        );
    }
    let (dest_url, job_id) = (opened.dest.root().to_string(), document.job_id.clone());
    let following = Launch {
        job,
        origins: Origins::default(),
        opened,
        continuing: Some(document),
        staging: None,
        grace: Duration::from_secs(1),
        output: args.output,
        options,
    }
    .run();
    // A committer that lost its lease (another took it over, thinking this one gone) stops
    // at once: what it committed stays, the other finishes the rest.
    let followed = tokio::select! {
        followed = following => followed,
        _ = lost.cancelled() => Err(failed(anyhow!(
            "{}: another committer took over job {} (this one could not renew its lease in time); it finishes the job",
            dest_url, job_id
        ))),
    };
    lease.release().await;
    followed
}
