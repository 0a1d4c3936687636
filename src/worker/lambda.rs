//! `fanout lambda worker`: the Lambda Runtime API loop (`lambda_runtime`) around the one
//! worker. Each invocation carries a batch of attempts (or a ping); the answer carries
//! their results, or names the object in DEST holding them when they would not fit
//! Lambda's payload. Only a worker that cannot work (a panic, a crash, Lambda's own
//! timeout) shows up as a Lambda error.

use super::Warm;
use crate::executor::remote::protocol::{self, Answer, Payload, Pong, Request};
use lambda_runtime::{service_fn, LambdaEvent};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc;

/// Variables real Lambda sets, which `lambda_runtime` needs; a local test sets them too.
const LAMBDA_VARIABLES: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{0} is not set: `fanout lambda worker` runs inside AWS Lambda (as the deployment's bootstrap), or beside a Lambda emulator with the variables Lambda sets")]
    NotInLambda(&'static str),
    #[error("the Lambda Runtime API at {api}: {message}")]
    Runtime { api: String, message: String },
}

/// Serves invocations until the Runtime API goes away.
pub async fn serve() -> Result<(), WorkerError> {
    for variable in LAMBDA_VARIABLES {
        if std::env::var_os(variable).is_none() {
            return Err(WorkerError::NotInLambda(variable));
        }
    }
    // Lambda's file system is read-only but for /tmp: compiled code is cached there.
    if std::env::var_os("FANOUT_CACHE_DIR").is_none() {
        std::env::set_var("FANOUT_CACHE_DIR", std::env::temp_dir().join("fanout-cache"));
    }
    let memory_mb = std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").ok().and_then(|m| m.parse().ok()).unwrap_or(0);
    let environment = std::env::var("AWS_LAMBDA_LOG_STREAM_NAME").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string();
        format!("{host}-{}", std::process::id())
    });
    let parallel = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let warm = Arc::new(Warm::new(environment, memory_mb, parallel));
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").unwrap_or_default();
    lambda_runtime::run(service_fn(move |event: LambdaEvent<serde_json::Value>| {
        let warm = warm.clone();
        async move { warm.handle(event.payload).await }
    }))
    .await
    .map_err(|e| WorkerError::Runtime { api, message: e.to_string() })
}

impl Warm {
    async fn handle(self: Arc<Self>, payload: serde_json::Value) -> Result<serde_json::Value, lambda_runtime::Error> {
        let payload: Payload = serde_json::from_value(payload).map_err(|e| format!("not a fanout request: {e}"))?;
        let request = match payload {
            Payload::Ping {} => {
                let pong = Pong { fanout: env!("CARGO_PKG_VERSION").to_string(), protocol: protocol::PROTOCOL };
                return Ok(serde_json::to_value(pong)?);
            }
            Payload::Work(request) => *request,
        };
        if request.protocol != protocol::PROTOCOL {
            return Err(format!(
                "this worker speaks protocol {}, the coordinator {}: deploy the same fanout version",
                protocol::PROTOCOL,
                request.protocol
            )
            .into());
        }
        let started = Instant::now();
        let (results_tx, mut results_rx) = mpsc::unbounded_channel();
        self.work(&request, &results_tx).await;
        drop(results_tx);
        let mut results = Vec::with_capacity(request.orders.len());
        while let Some(result) = results_rx.recv().await {
            results.push(result);
        }
        results.sort_by_key(|r| r.shard);
        self.requests.fetch_add(1, Ordering::Relaxed);
        let mut answer = Answer {
            protocol: protocol::PROTOCOL,
            environment: self.environment.clone(),
            memory_mb: self.memory_mb,
            duration_ms: 0,
            results,
            results_key: None,
        };
        self.spill_if_too_big(&request, &mut answer).await?;
        answer.duration_ms = started.elapsed().as_millis() as u64;
        Ok(serde_json::to_value(answer)?)
    }

    /// An answer over Lambda's payload limit (a batch of shards with thousands of outputs)
    /// goes to DEST instead, beside the attempts' outputs, and the answer names it.
    /// `FANOUT_LAMBDA_ANSWER_LIMIT` lowers the limit, for the tests.
    async fn spill_if_too_big(&self, request: &Request, answer: &mut Answer) -> Result<(), lambda_runtime::Error> {
        let limit = std::env::var("FANOUT_LAMBDA_ANSWER_LIMIT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(protocol::PAYLOAD_LIMIT);
        let results = serde_json::to_vec(&answer.results)?;
        let Some(first) = request.orders.first() else { return Ok(()) };
        if results.len() <= limit {
            return Ok(());
        }
        let key = format!("{}results.json", first.staging_prefix);
        let dest = self.storage(&request.job.output.dest).await?;
        dest.put(&key, bytes::Bytes::from(results)).await.map_err(|e| format!("storing a large answer: {e}"))?;
        answer.results.clear();
        answer.results_key = Some(key);
        Ok(())
    }
}
