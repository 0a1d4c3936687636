//! The Lambda executor, on the coordinator's side: batches attempts into invocations of the
//! worker function, keeps at most `concurrency` of them in flight (fewer while Lambda
//! throttles: additive increase, multiplicative decrease), and turns each answer back into
//! one [`AttemptDone`] per attempt, with the outputs the worker staged. Owns the Lambda
//! client, the batching rule and the invocation accounting (invocations, GB-seconds, cost);
//! it never publishes or commits (the coordinator does, from what it sends back). The
//! function's side is `crate::worker::lambda` (the deployment's bootstrap); `deploy` is the
//! control plane (`fanout lambda deploy`).

pub mod deploy;

use super::remote::protocol::{self, Answer, Payload, Pong, ShardResult};
use super::remote::{attempt_done, failed, JobBase};
use super::{AttemptDone, Executor, Task};
use crate::events::{Event, EventSink};
use crate::source::ShardInput;
use aws_sdk_lambda::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_lambda::operation::invoke::{InvokeError, InvokeOutput};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::Client;
use futures::stream::FuturesUnordered;
use futures::StreamExt;
use serde::Serialize;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc::UnboundedSender;

/// Public Lambda prices (us-east-1, x86_64, November 2026): per GB-second of configured
/// memory times duration, and per request. arm64's GB-second is 20% cheaper.
pub const PRICE_PER_GB_SECOND: f64 = 0.000_016_666_7;
pub const PRICE_PER_REQUEST: f64 = 0.000_000_2;

/// An invocation aims at about this much work, judged from the answers so far.
const BATCH_TARGET_MS: f64 = 1000.0;
/// Attempts in one invocation at most (unless the job asks for fewer).
pub const MAX_BATCH: usize = 256;
/// Time an invocation may take beyond its guests' timeouts (staging, uploads, a cold start).
const INVOCATION_MARGIN: Duration = Duration::from_secs(15);
/// Lambda's own limit on one invocation.
const LAMBDA_MAX_RUN: Duration = Duration::from_secs(15 * 60);
/// A batch throttled this many times in a row fails its attempts (retried as any failure).
const MAX_THROTTLES: u32 = 12;
const MAX_THROTTLE_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    #[error("Lambda at {endpoint}: no function named \"{function}\" ({message})")]
    NoSuchFunction { endpoint: String, function: String, message: String },
    #[error("cannot reach Lambda at {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("Lambda function \"{function}\" at {endpoint} did not answer a ping as a fanout worker: {message}")]
    NotAWorker { endpoint: String, function: String, message: String },
}

/// A Lambda client for one function, checked to be a fanout worker that speaks our protocol.
#[derive(Clone)]
pub struct LambdaFunction {
    client: Client,
    function: String,
    endpoint: String,
}

impl LambdaFunction {
    /// A client from the AWS default chain (`AWS_ENDPOINT_URL_LAMBDA` or `AWS_ENDPOINT_URL`
    /// for another endpoint), with the SDK's retries off: a function error must not run the
    /// function again, and throttles are retried here, with AIMD.
    pub async fn connect(function: &str) -> LambdaFunction {
        let shared = aws_config::defaults(aws_config::BehaviorVersion::latest()).load().await;
        let endpoint = crate::aws::configured_endpoint(&shared, "Lambda").unwrap_or_else(|| "AWS Lambda".to_string());
        let mut config = aws_sdk_lambda::config::Builder::from(&shared)
            .retry_config(aws_sdk_lambda::config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_sdk_lambda::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .build(),
            );
        if shared.region().is_none() {
            config = config.region(aws_sdk_lambda::config::Region::new("us-east-1"));
        }
        LambdaFunction { client: Client::from_conf(config.build()), function: function.to_string(), endpoint }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The endpoint, as messages name it.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// One invocation that runs nothing: proves the endpoint answers, the function exists,
    /// and it is a fanout worker speaking this protocol, before any shard is sent.
    pub async fn ping(&self) -> Result<Pong, LambdaError> {
        let payload = serde_json::to_vec(&Payload::Ping {}).expect("a ping serializes");
        let call = self.client.invoke().function_name(&self.function).payload(Blob::new(payload)).send();
        let not_a_worker = |message: String| LambdaError::NotAWorker {
            endpoint: self.endpoint.clone(),
            function: self.function.clone(),
            message,
        };
        let output = match tokio::time::timeout(Duration::from_secs(60), call).await {
            Err(_) => return Err(not_a_worker("no answer within 60 s".into())),
            Ok(Ok(output)) => output,
            Ok(Err(error)) => {
                return Err(match &error {
                    SdkError::ServiceError(service)
                        if service.err().is_resource_not_found_exception()
                            || service.raw().status().as_u16() == 404 =>
                    {
                        LambdaError::NoSuchFunction {
                            endpoint: self.endpoint.clone(),
                            function: self.function.clone(),
                            message: service.err().message().unwrap_or("not found").to_string(),
                        }
                    }
                    SdkError::ServiceError(service) => not_a_worker(error_text(service.err(), service.raw())),
                    other => LambdaError::Unreachable { endpoint: self.endpoint.clone(), message: causes(other) },
                })
            }
        };
        let body = output.payload().map(|b| b.as_ref().to_vec()).unwrap_or_default();
        if let Some(kind) = output.function_error() {
            return Err(not_a_worker(format!("{kind}: {}", String::from_utf8_lossy(&body))));
        }
        let pong: Pong = serde_json::from_slice(&body)
            .map_err(|_| not_a_worker(format!("it answered {}", String::from_utf8_lossy(&body))))?;
        if pong.protocol != protocol::PROTOCOL {
            return Err(not_a_worker(format!(
                "it runs fanout {} (protocol {}), this is fanout {} (protocol {}): deploy this version with `fanout lambda deploy`",
                pong.fanout,
                pong.protocol,
                env!("CARGO_PKG_VERSION"),
                protocol::PROTOCOL
            )));
        }
        Ok(pong)
    }
}

/// An error and its causes on one line, each said once.
pub fn causes(error: &dyn std::error::Error) -> String {
    let mut parts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !parts.iter().any(|part| part.contains(&text)) {
            parts.push(text);
        }
        source = cause.source();
    }
    parts.join(": ")
}

/// The text of a Lambda error: its code and message, or the body's first line.
fn error_text(error: &InvokeError, raw: &aws_sdk_lambda::config::http::HttpResponse) -> String {
    match (error.code(), error.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => {
            let body = raw.body().bytes().map(String::from_utf8_lossy).unwrap_or_default();
            format!("HTTP {}: {}", raw.status().as_u16(), body.lines().next().unwrap_or_default())
        }
    }
}

/// What a job's invocations cost, for `summary.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LambdaStats {
    pub kind: &'static str,
    pub function: String,
    pub concurrency: usize,
    pub invocations: u64,
    /// Invocations Lambda refused for lack of capacity (429, 5xx); their attempts were sent again.
    pub throttles: u64,
    /// Invocations whose worker crashed, timed out or could not answer.
    pub worker_errors: u64,
    pub attempts_sent: u64,
    pub largest_batch: usize,
    /// Execution environments that answered.
    pub environments: usize,
    pub memory_mb: u64,
    pub billed_ms: u64,
    pub gb_seconds: f64,
    /// `gb_seconds * PRICE_PER_GB_SECOND + invocations * PRICE_PER_REQUEST`, in US dollars.
    pub cost_usd: f64,
    pub price_per_gb_second: f64,
    pub price_per_request: f64,
}

/// How much the executor may send at once.
#[derive(Debug, Clone, Copy)]
pub struct Capacity {
    /// Invocations in flight at most.
    pub concurrency: usize,
    /// Attempts one invocation carries at most.
    pub max_batch: usize,
}

/// Decaying sums of invocation time and attempts carried: their ratio is what an attempt
/// costs an invocation, recent answers counting most.
#[derive(Default)]
struct Recent {
    ms: f64,
    attempts: f64,
}

impl Recent {
    const DECAY: f64 = 0.8;

    fn add(&mut self, ms: f64, attempts: f64) {
        self.ms = self.ms * Self::DECAY + ms;
        self.attempts = self.attempts * Self::DECAY + attempts;
    }

    fn per_attempt_ms(&self) -> Option<f64> {
        (self.attempts > 0.0).then(|| self.ms / self.attempts)
    }
}

struct State {
    queue: VecDeque<Task>,
    in_flight: usize,
    /// In-flight invocations allowed now (AIMD), at most `concurrency`.
    limit: f64,
    peak: usize,
    stopping: bool,
    /// Milliseconds of recent invocations and the attempts they carried.
    recent: Recent,
    environments: HashMap<String, u32>,
    throttled: HashMap<(u64, u32), u32>,
    resume_at: Option<Instant>,
    wake_scheduled: bool,
    stats: LambdaStats,
}

struct Inner {
    lambda: LambdaFunction,
    events: EventSink,
    concurrency: usize,
    max_batch: usize,
    base: JobBase,
    state: Mutex<State>,
    results: UnboundedSender<AttemptDone>,
    nonce: AtomicU64,
}

/// The executor; cheap to clone.
#[derive(Clone)]
pub struct LambdaExecutor(Arc<Inner>);

impl LambdaExecutor {
    pub fn new(
        lambda: LambdaFunction,
        capacity: Capacity,
        base: JobBase,
        results: UnboundedSender<AttemptDone>,
        events: EventSink,
    ) -> LambdaExecutor {
        let concurrency = capacity.concurrency.max(1);
        let stats = LambdaStats {
            kind: "lambda",
            function: lambda.function.clone(),
            concurrency,
            price_per_gb_second: PRICE_PER_GB_SECOND,
            price_per_request: PRICE_PER_REQUEST,
            ..Default::default()
        };
        let seed = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
        LambdaExecutor(Arc::new(Inner {
            lambda,
            events,
            concurrency,
            max_batch: capacity.max_batch.clamp(1, MAX_BATCH),
            base,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                in_flight: 0,
                limit: concurrency as f64,
                peak: 0,
                stopping: false,
                recent: Recent::default(),
                environments: HashMap::new(),
                throttled: HashMap::new(),
                resume_at: None,
                wake_scheduled: false,
                stats,
            }),
            results,
            nonce: AtomicU64::new(seed ^ ((std::process::id() as u64) << 32)),
        }))
    }
}

/// How many queued attempts the next invocation takes: about `BATCH_TARGET_MS` of work,
/// one until an answer has shown how long an attempt takes, and never more than an equal
/// share of the queue among the invocations allowed in flight (a batch answers as a whole:
/// the fewer shards share one, the less a slow one holds back).
pub fn batch_size(per_attempt_ms: Option<f64>, queued: usize, invocations: usize, max_batch: usize) -> usize {
    let target = match per_attempt_ms {
        None => 1,
        Some(ms) => (BATCH_TARGET_MS / ms.max(0.05)) as usize,
    };
    let fair = queued.div_ceil(invocations.max(1));
    target.clamp(1, max_batch.max(1)).min(fair).max(1)
}

/// About how many bytes an attempt adds to a request: its arguments, environment and the
/// shard's keys (a shard of many objects lists them all), with room for the JSON around them.
fn order_bytes(task: &Task) -> usize {
    let shard = match &task.shard.input {
        ShardInput::Objects { objects } => objects.iter().map(|o| o.key.len() + 48).sum::<usize>(),
        ShardInput::Records { key, .. } => key.len() + 96,
        ShardInput::Kafka { .. } => 128,
    };
    512 + shard
        + task.invocation.argv.iter().map(|a| a.len() + 4).sum::<usize>()
        + task.invocation.env.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>()
}

/// How an invocation ended, as far as its attempts are concerned.
enum Ended {
    Answered(Answer),
    /// The worker crashed, timed out or answered nonsense: every attempt failed.
    WorkerFailed(String),
    /// Lambda refused it for lack of capacity: the attempts go back to the queue.
    Throttled(String),
}

impl Inner {
    /// Starts invocations while the limit allows and attempts wait.
    fn pump(self: &Arc<Self>) {
        let mut state = self.state.lock().expect("lambda state");
        if state.stopping {
            for task in std::mem::take(&mut state.queue) {
                let _ = self.results.send(AttemptDone::not_run(&task));
            }
            return;
        }
        if let Some(at) = state.resume_at {
            if Instant::now() < at {
                if !state.wake_scheduled {
                    state.wake_scheduled = true;
                    let inner = self.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep_until(at.into()).await;
                        inner.state.lock().expect("lambda state").wake_scheduled = false;
                        inner.pump();
                    });
                }
                return;
            }
            state.resume_at = None;
        }
        loop {
            let allowed = (state.limit.floor() as usize).max(1);
            if state.in_flight >= allowed || state.queue.is_empty() {
                return;
            }
            let size = batch_size(state.recent.per_attempt_ms(), state.queue.len(), allowed, self.max_batch);
            let mut batch = Vec::with_capacity(size);
            let mut bytes = 0;
            while batch.len() < size {
                let Some(task) = state.queue.pop_front() else { break };
                if task.cancel.is_cancelled() {
                    let _ = self.results.send(AttemptDone::not_run(&task));
                    continue;
                }
                let order_bytes = order_bytes(&task);
                if !batch.is_empty() && bytes + order_bytes > protocol::PAYLOAD_LIMIT / 2 {
                    state.queue.push_front(task);
                    break;
                }
                bytes += order_bytes;
                batch.push(task);
            }
            if batch.is_empty() {
                continue;
            }
            state.in_flight += 1;
            state.peak = state.peak.max(state.in_flight);
            self.events.emit(Event::Workers { live: state.in_flight });
            state.stats.largest_batch = state.stats.largest_batch.max(batch.len());
            state.stats.attempts_sent += batch.len() as u64;
            let inner = self.clone();
            tokio::spawn(async move { inner.invoke(batch).await });
        }
    }

    fn request_for(&self, batch: &[Task]) -> Payload {
        Payload::Work(Box::new(self.base.request(batch, &self.nonce)))
    }

    /// One invocation: its attempts come back answered, failed, cancelled, or queued again.
    async fn invoke(self: Arc<Self>, batch: Vec<Task>) {
        let sent = SystemTime::now();
        for task in &batch {
            task.started.start(tokio::time::Instant::now());
        }
        let body = serde_json::to_vec(&self.request_for(&batch)).expect("a request serializes");
        // The worker runs a batch's attempts side by side, each within function.timeout; a
        // worker that is gone (killed, or a runtime that crashed without a word, which the
        // emulator never reports) is given up on after the worst case and a margin for staging.
        let deadline =
            self.base.job.function.timeout().saturating_mul(batch.len() as u32).min(LAMBDA_MAX_RUN) + INVOCATION_MARGIN;
        let call = self.lambda.client.invoke().function_name(&self.lambda.function).payload(Blob::new(body)).send();
        let call = tokio::time::timeout(deadline, call);
        tokio::pin!(call);
        // An attempt cancelled meanwhile (a lost race, a relative timeout, Ctrl-C twice) is
        // answered at once; whatever its worker does later is ignored.
        let mut open: Vec<Option<Task>> = batch.into_iter().map(Some).collect();
        let mut cancellations: FuturesUnordered<_> = open
            .iter()
            .enumerate()
            .map(|(i, task)| {
                let token = task.as_ref().expect("all open").cancel.clone();
                async move {
                    token.cancelled().await;
                    i
                }
            })
            .collect();
        let ended = loop {
            tokio::select! {
                result = &mut call => break self.classify(result),
                Some(i) = cancellations.next() => {
                    if let Some(task) = open[i].take() {
                        let done = AttemptDone { started: sent, ..AttemptDone::not_run(&task) };
                        let _ = self.results.send(done);
                    }
                    if open.iter().all(Option::is_none) {
                        break Ended::WorkerFailed(String::new());
                    }
                }
            }
        };
        let open: Vec<Task> = open.into_iter().flatten().collect();
        let ended = match ended {
            Ended::Answered(answer) if answer.results_key.is_some() => self.fetch_results(answer).await,
            other => other,
        };
        match ended {
            Ended::Answered(answer) => self.answered(answer, open, sent),
            Ended::WorkerFailed(message) => {
                let mut state = self.state.lock().expect("lambda state");
                if !open.is_empty() {
                    state.stats.invocations += 1;
                    state.stats.worker_errors += 1;
                }
                drop(state);
                for task in &open {
                    let _ = self.results.send(failed(task, sent, format!("lambda: {message}")));
                }
            }
            Ended::Throttled(message) => self.throttled(open, sent, message),
        }
        {
            let mut state = self.state.lock().expect("lambda state");
            state.in_flight -= 1;
            // Progress counts invocations in flight as the pool's workers.
            self.events.emit(Event::Workers { live: state.in_flight });
        }
        self.pump();
    }

    fn classify(
        &self,
        result: Result<Result<InvokeOutput, SdkError<InvokeError>>, tokio::time::error::Elapsed>,
    ) -> Ended {
        let output = match result {
            Err(_) => return Ended::WorkerFailed("the worker did not answer in time".into()),
            Ok(Ok(output)) => output,
            Ok(Err(SdkError::ServiceError(service))) => {
                let (error, raw) = (service.err(), service.raw());
                let status = raw.status().as_u16();
                let body = raw.body().bytes().unwrap_or_default();
                // The emulator answers a function error with 500 and the error as body (real
                // Lambda: 200 and X-Amz-Function-Error, handled below).
                let function_error = serde_json::from_slice::<serde_json::Value>(body)
                    .ok()
                    .filter(|v| v.get("errorType").is_some() || v.get("errorMessage").is_some());
                return match function_error {
                    Some(value) if status == 500 => {
                        Ended::WorkerFailed(format!("the worker failed: {}", worker_error(&value)))
                    }
                    _ if error.is_too_many_requests_exception() || status == 429 || (500..600).contains(&status) => {
                        Ended::Throttled(error_text(error, raw))
                    }
                    _ if status == 408 => Ended::WorkerFailed("the invocation timed out".into()),
                    _ => Ended::WorkerFailed(error_text(error, raw)),
                };
            }
            Ok(Err(other)) => {
                return Ended::WorkerFailed(format!(
                    "no answer from Lambda at {}: {}",
                    self.lambda.endpoint,
                    causes(&other)
                ))
            }
        };
        let body = output.payload().map(|b| b.as_ref()).unwrap_or_default();
        if output.function_error().is_some() {
            let value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
            return Ended::WorkerFailed(format!("the worker failed: {}", worker_error(&value)));
        }
        match serde_json::from_slice::<Answer>(body) {
            Ok(answer) => Ended::Answered(answer),
            Err(e) => Ended::WorkerFailed(format!("the worker's answer is not readable: {e}")),
        }
    }

    /// The results a worker stored in DEST because they did not fit its answer.
    async fn fetch_results(&self, mut answer: Answer) -> Ended {
        let Some(key) = answer.results_key.take() else { return Ended::Answered(answer) };
        let stored = match self.base.dest.get(&key).await {
            Ok(stored) => stored,
            Err(e) => return Ended::WorkerFailed(format!("reading the worker's results from {key}: {e}")),
        };
        match serde_json::from_slice(&stored) {
            Ok(results) => {
                answer.results = results;
                Ended::Answered(answer)
            }
            Err(e) => Ended::WorkerFailed(format!("the worker's results in {key} are not readable: {e}")),
        }
    }

    fn answered(&self, answer: Answer, open: Vec<Task>, sent: SystemTime) {
        let mut by_attempt: HashMap<(u64, u32), ShardResult> =
            answer.results.into_iter().map(|r| ((r.shard, r.attempt), r)).collect();
        let mut state = self.state.lock().expect("lambda state");
        let next = state.environments.len() as u32;
        let lane = *state.environments.entry(answer.environment.clone()).or_insert(next);
        state.stats.environments = state.environments.len();
        state.stats.invocations += 1;
        state.stats.memory_mb = answer.memory_mb;
        state.stats.billed_ms += answer.duration_ms;
        state.stats.gb_seconds += answer.duration_ms as f64 / 1000.0 * answer.memory_mb as f64 / 1024.0;
        state.stats.cost_usd =
            state.stats.gb_seconds * PRICE_PER_GB_SECOND + state.stats.invocations as f64 * PRICE_PER_REQUEST;
        // An attempt's cost is judged from recent answers weighted by the attempts they
        // carried (a batch of 100 says more than a batch of 1), leaving out an answer that
        // compiled the function once there is any other.
        let compiled = by_attempt.values().any(|r| r.cold_start);
        if !compiled || state.recent.attempts == 0.0 {
            state.recent.add(answer.duration_ms as f64, by_attempt.len().max(1) as f64);
        }
        // Additive increase: one more invocation in flight per `limit` answered.
        state.limit = (state.limit + 1.0 / state.limit.max(1.0)).min(self.concurrency as f64);
        for task in &open {
            state.throttled.remove(&(task.shard.id, task.attempt));
        }
        drop(state);
        for task in open {
            let done = match by_attempt.remove(&(task.shard.id, task.attempt)) {
                Some(result) => attempt_done(result, lane, &answer.environment),
                None => failed(&task, sent, "lambda: the worker's answer has no result for this attempt".into()),
            };
            let _ = self.results.send(done);
        }
    }

    /// Multiplicative decrease, a pause, and the attempts back at the head of the queue.
    fn throttled(&self, open: Vec<Task>, sent: SystemTime, message: String) {
        let mut state = self.state.lock().expect("lambda state");
        state.stats.throttles += 1;
        state.limit = (state.limit / 2.0).max(1.0);
        let mut worst = 0;
        let mut given_up = Vec::new();
        for task in open.into_iter().rev() {
            // Not running: waiting for the throttle to pass is no part of its run time.
            task.started.reset();
            let count = state.throttled.entry((task.shard.id, task.attempt)).or_insert(0);
            *count += 1;
            worst = worst.max(*count);
            if *count >= MAX_THROTTLES {
                given_up.push(task);
            } else {
                state.queue.push_front(task);
            }
        }
        let wait = Duration::from_millis(100).saturating_mul(1 << worst.min(6)).min(MAX_THROTTLE_WAIT);
        state.resume_at = Some(Instant::now() + wait);
        drop(state);
        for task in given_up {
            let text = format!("lambda: throttled {MAX_THROTTLES} times in a row: {message}");
            let _ = self.results.send(failed(&task, sent, text));
        }
    }
}

/// `errorType: errorMessage` of a worker's error.
fn worker_error(value: &serde_json::Value) -> String {
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).unwrap_or_default().to_string();
    match (field("errorType"), field("errorMessage")) {
        (kind, message) if kind.is_empty() && message.is_empty() => value.to_string(),
        (kind, message) => format!("{kind}: {message}"),
    }
}

impl Executor for LambdaExecutor {
    fn submit(&self, task: Task) {
        self.0.state.lock().expect("lambda state").queue.push_back(task);
        self.0.pump();
    }

    fn stop_starting(&self) {
        self.0.state.lock().expect("lambda state").stopping = true;
        self.0.pump();
    }

    fn can_start_now(&self) -> bool {
        let state = self.0.state.lock().expect("lambda state");
        state.queue.is_empty() && state.in_flight < (state.limit.floor() as usize).max(1)
    }

    fn live(&self) -> usize {
        self.0.state.lock().expect("lambda state").in_flight
    }

    fn peak(&self) -> usize {
        self.0.state.lock().expect("lambda state").peak
    }

    fn summary(&self) -> Option<serde_json::Value> {
        serde_json::to_value(&self.0.state.lock().expect("lambda state").stats).ok()
    }

    fn stages_locally(&self) -> bool {
        false
    }

    fn sweep(&self) -> futures::future::BoxFuture<'static, ()> {
        self.0.base.sweep_attempts()
    }

    fn shards_in_flight(&self) -> usize {
        (self.0.concurrency * 32).clamp(256, 65_536)
    }
}

#[cfg(test)]
mod tests {
    use super::{batch_size, Recent};

    #[test]
    fn an_attempt_costs_what_recent_answers_say_weighted_by_what_they_carried() {
        let mut recent = Recent::default();
        assert_eq!(recent.per_attempt_ms(), None);
        recent.add(300.0, 1.0);
        assert_eq!(recent.per_attempt_ms(), Some(300.0));
        // One batch of a hundred outweighs the lone slow attempt before it.
        recent.add(50.0, 100.0);
        let ms = recent.per_attempt_ms().unwrap();
        assert!((2.0..3.0).contains(&ms), "{ms}");
        // Old answers fade: slower shards now show within a few answers.
        for _ in 0..10 {
            recent.add(1000.0, 10.0);
        }
        assert!(recent.per_attempt_ms().unwrap() > 80.0);
    }

    #[test]
    fn batches_aim_at_a_second_and_share_the_queue() {
        assert_eq!(batch_size(None, 1000, 4, 256), 1, "one attempt until an answer shows how long they take");
        assert_eq!(batch_size(Some(10.0), 1000, 4, 256), 100, "a second of 10 ms attempts");
        assert_eq!(batch_size(Some(10.0), 40, 4, 256), 10, "four invocations share forty attempts");
        assert_eq!(batch_size(Some(0.001), 100_000, 1, 256), 256, "never beyond the largest batch");
        assert_eq!(batch_size(Some(0.001), 100_000, 1, 8), 8, "nor beyond the job's");
        assert_eq!(batch_size(Some(5000.0), 1000, 4, 256), 1, "slow attempts go one by one");
    }
}
