//! Staging: a shard's inputs fetched into a local folder before its attempt runs, and an
//! attempt's `/out` checked and published to DEST after it succeeds. Owns the staging
//! layout and the output rules (regular files only, no path outside DEST, nothing under
//! `_fanout/`, at most `max_files` files and `max_bytes` bytes). It moves bytes; it does
//! not decide retries or write commit records.
//!
//! Staging happens in reusable *slots*, one per shard in flight, each with `in/` and `out/`
//! made once per run: creating and deleting two folders per shard costs more than a no-op
//! shard itself on ext4 (inode allocation scans recently deleted inodes). A slot is emptied
//! between shards by removing exactly what was put there, except that big downloaded
//! inputs are kept as *spares*: the next download into the slot overwrites a spare in place
//! instead of writing a new file. On a VM whose free memory goes back to the host, a new
//! file's pages are slow to write the first time (measured 1.5 s/GB against 0.15 s/GB
//! for overwriting cached pages here), and a remote input is written once per byte.

//!
//! [`slots`] owns the slots and their spares, [`inputs`] fetches a shard's inputs (objects,
//! records) into a slot ([`staged`]: what it put there, and why it failed), [`outputs`] checks an attempt's `/out` and publishes it; this file
//! has what a guest is given wherever it runs (argv, env, its sandbox's folders).

mod inputs;
mod outputs;
mod slots;
mod staged;

pub use inputs::{full_message, stage};
pub use outputs::{publish, scan_outputs, OutputFile, OutputFrom, OutputRules, PublishError};
pub use slots::{discard_dir, make_slots, remote_slots, Slot};
pub use staged::{StageError, Staged};

use crate::runtime::capture::Overflow;
use crate::runtime::Invocation;
use std::path::PathBuf;

/// Bytes of a guest's stderr (and of stdout, when it is not an output) kept per attempt.
pub const LOG_CAP: u64 = 1 << 20;

/// What a guest is told and given, wherever it runs: argv, env, and the shard's numbers.
pub struct Call<'a> {
    pub job_id: &'a str,
    pub name: &'a str,
    pub args: &'a [String],
    pub env: &'a std::collections::BTreeMap<String, String>,
    pub shard: u64,
    pub shards_hint: u64,
    pub attempt: u32,
}

impl Call<'_> {
    /// argv and the whole environment the guest sees: nothing of the host's.
    pub fn argv_env(&self) -> (Vec<String>, Vec<(String, String)>) {
        let mut env: Vec<(String, String)> = self.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.push(("FANOUT_JOB".into(), self.job_id.to_string()));
        env.push(("FANOUT_SHARD".into(), self.shard.to_string()));
        env.push(("FANOUT_SHARDS".into(), self.shards_hint.to_string()));
        env.push(("FANOUT_ATTEMPT".into(), self.attempt.to_string()));
        let mut argv = vec![self.name.to_string()];
        argv.extend(self.args.iter().cloned());
        (argv, env)
    }
}

/// The sandbox of one attempt staged in `slot`: `/in` is the slot's, `/out` is `out_dir`
/// (the slot's own, or a backup's beside it). A record shard's stdout is its output, capped
/// at `max_output_bytes`; otherwise stdout is log, truncated at [`LOG_CAP`].
pub fn invocation(
    slot: &Slot,
    out_dir: PathBuf,
    attempt: u32,
    (argv, env): (Vec<String>, Vec<(String, String)>),
    stdin: Option<PathBuf>,
    is_records: bool,
    max_output_bytes: u64,
) -> Invocation {
    Invocation {
        argv,
        env,
        in_dir: slot.in_dir.clone(),
        out_dir,
        stdin,
        stdout: slot.stdout(attempt),
        stdout_cap: if is_records { max_output_bytes } else { LOG_CAP },
        stdout_overflow: if is_records { Overflow::Fail } else { Overflow::Truncate },
        stderr: slot.stderr(attempt),
        stderr_cap: LOG_CAP,
    }
}
