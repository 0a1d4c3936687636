//! fanout's integration tests: each drives the real binary in a fresh folder and checks
//! what a user would see (exit codes, messages, outputs decoded, the manifest).

mod common;

mod bad_jobs;
mod clouds;
mod dataproc;
mod engines;
mod examples;
mod image;
mod interrupt;
mod k8s;
mod kafka;
mod lambda;
mod native;
mod panics;
mod pdf;
mod python;
mod records;
mod reduce;
mod report;
mod resume;
mod s3;
mod sandbox;
mod serve;
mod side_files;
mod slurm;
mod storage;
mod tail;
mod watch;
