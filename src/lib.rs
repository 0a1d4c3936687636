//! fanout: a batch map runner. A dataset is cut into shards, one sandboxed WebAssembly
//! invocation runs per shard on an autoscaled worker pool, and every output lands in
//! object storage with a manifest of what happened to each shard.
//!
//! The modules, each listed after every module it depends on (`scripts/check-imports
//! --order` checks this, and that no files depend on each other in a loop):
//! - [`location`], [`units`]: addresses (`s3://`, paths) and human sizes, durations, shares.
//! - [`aws`]: AWS settings more than one client reads (per-service endpoints).
//! - [`storage`]: the storage trait with the local and S3 backends.
//! - [`job`]: job file + flags -> one resolved job.
//! - [`runtime`]: wasmtime: compile once (cached on disk), a fresh sandbox per invocation.
//! - [`events`]: what a run reports as it goes (the coordinator and pool emit, reporters draw).
//! - [`function`]: finding the function's bytes (a file, an object, or a crate to build).
//! - [`kafka`]: a Kafka topic as a source: its offsets, ranges cut and read back, group offsets.
//! - [`plan`]: the source listing -> a stream of shards.
//! - [`manifest`]: what fanout writes under `DEST/_fanout/<job-id>/`, and reading it back.
//! - [`stage`]: inputs into a staging folder, outputs out of `/out` into DEST.
//! - [`timeline`]: the SVG plot of a job's attempts.
//! - [`watch`]: a source watched for new objects -> a stream of shards that never ends.
//! - [`executor`]: the trait every executor implements (attempts in, outcomes out).
//! - [`pool`]: worker threads that scale with the backlog and exit when idle.
//! - [`lambda`]: AWS Lambda: the executor that invokes it, the worker it invokes, deploy.
//! - [`slurm`]: Slurm: job arrays of `fanout worker` tasks, followed until they answer.
//! - [`kubernetes`]: the Indexed Job `fanout k8s` prints, and the committer that follows it.
//! - [`run`]: the coordinator of one run: staging, dispatch, retries, publishing, commits.
//! - [`reduce`]: the step after the map: a tree of reduce invocations, or a concatenation.
//! - [`report`]: progress, report.csv, summary.json.
//! - [`cli`]: the command line and exit codes; the only place that prints errors.
//!
//! Only what the binary and the integration tests use is public.

pub(crate) mod aws;
pub mod cli;
pub(crate) mod events;
pub(crate) mod executor;
pub mod function;
pub(crate) mod job;
pub(crate) mod kafka;
pub(crate) mod kubernetes;
pub(crate) mod lambda;
pub mod location;
pub(crate) mod manifest;
pub(crate) mod plan;
pub(crate) mod pool;
pub(crate) mod reduce;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod runtime;
pub(crate) mod slurm;
pub(crate) mod stage;
pub mod storage;
pub(crate) mod timeline;
pub(crate) mod units;
pub(crate) mod watch;
