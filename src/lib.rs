//! fanout: a batch map runner. A dataset is cut into shards, one sandboxed WebAssembly
//! invocation runs per shard on an autoscaled worker pool, and every output lands in
//! object storage with a manifest of what happened to each shard.
//!
//! The modules, in the direction dependencies point:
//! - [`cli`]: the command line and exit codes; the only place that prints errors.
//! - [`job`]: job file + flags -> one resolved [`job::Job`] ([`units`] parses sizes/durations,
//!   [`location`] parses addresses).
//! - [`plan`]: the source listing -> a stream of shards.
//! - [`run`]: the coordinator of one run: staging, dispatch, retries, publishing, commits.
//! - [`pool`]: worker threads that scale with the backlog and exit when idle.
//! - [`runtime`]: wasmtime: compile once (cached on disk), a fresh sandbox per invocation.
//! - [`stage`]: inputs into a staging folder, outputs out of `/out` into DEST.
//! - [`storage`]: the storage trait with the local and S3 backends.
//! - [`manifest`]: what fanout writes under `DEST/_fanout/<job-id>/`, and reading it back.
//! - [`report`], [`timeline`], [`events`]: progress, report.csv, summary.json, plots.
//! - [`function`]: finding the function's bytes (a file, an object, or a crate to build).

pub mod cli;
pub mod events;
pub mod function;
pub mod job;
pub mod location;
pub mod manifest;
pub mod plan;
pub mod pool;
pub mod report;
pub mod run;
pub mod runtime;
pub mod stage;
pub mod storage;
pub mod timeline;
pub mod units;
