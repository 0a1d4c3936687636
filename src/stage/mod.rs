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
    /// A native command's words (its argv before `args`), placeholders unexpanded.
    pub command: Option<&'a [String]>,
    /// The key (under `/in`) of the shard's one object, for a command's placeholders.
    pub object: Option<&'a str>,
}

impl Call<'_> {
    /// argv and the whole environment the guest sees: nothing of the host's.
    pub fn argv_env(&self) -> (Vec<String>, Vec<(String, String)>) {
        let mut env: Vec<(String, String)> = self.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        env.push(("FANOUT_JOB".into(), self.job_id.to_string()));
        env.push(("FANOUT_SHARD".into(), self.shard.to_string()));
        env.push(("FANOUT_SHARDS".into(), self.shards_hint.to_string()));
        env.push(("FANOUT_ATTEMPT".into(), self.attempt.to_string()));
        let argv = match self.command {
            Some(words) => words.iter().chain(self.args).map(|word| expand(word, self.object)).collect(),
            None => std::iter::once(self.name.to_string()).chain(self.args.iter().cloned()).collect(),
        };
        (argv, env)
    }
}

/// A command word with its placeholders filled in for the shard's one object (`key`, as
/// staged under `/in`): `{in}` its path in the sandbox, `{name}` its file name, `{stem}`
/// that name without its extension, `{ext}` the extension (no dot), `{out}` the output
/// folder. `{{` and `}}` are braces. The job's check made sure every placeholder is known,
/// and that the input's ones come with one object a shard.
pub fn expand(word: &str, key: Option<&str>) -> String {
    if !word.contains(['{', '}']) {
        return word.to_string();
    }
    let key = key.unwrap_or_default();
    let name = key.rsplit('/').next().unwrap_or_default();
    let (stem, ext) = match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => (stem, ext),
        _ => (name, ""),
    };
    let mut expanded = String::with_capacity(word.len() + key.len());
    let mut rest = word;
    while let Some(at) = rest.find(['{', '}']) {
        expanded.push_str(&rest[..at]);
        let (brace, after) = (&rest[at..at + 1], &rest[at + 1..]);
        if after.starts_with(brace) || brace == "}" {
            expanded.push_str(brace);
            rest = after.strip_prefix(brace).unwrap_or(after);
            continue;
        }
        let Some(end) = after.find('}') else {
            expanded.push_str(rest);
            return expanded;
        };
        match &after[..end] {
            "in" => expanded.push_str(&format!("/in/{key}")),
            "name" => expanded.push_str(name),
            "stem" => expanded.push_str(stem),
            "ext" => expanded.push_str(ext),
            "out" => expanded.push_str("/out"),
            other => expanded.push_str(&format!("{{{other}}}")),
        }
        rest = &after[end + 1..];
    }
    expanded.push_str(rest);
    expanded
}

/// The sandbox of one attempt staged in `slot`: `/in` is the slot's, `/out` is `out_dir`
/// (the slot's own, or a backup's beside it). A record shard's stdout is its output, capped
/// at `max_output_bytes`; otherwise stdout is log, truncated at [`LOG_CAP`]. `files` is the
/// job's side-file folder, seen at `/files`.
#[allow(clippy::too_many_arguments)]
pub fn invocation(
    slot: &Slot,
    out_dir: PathBuf,
    files: Option<PathBuf>,
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
        files_dir: files,
        stdin,
        stdout: slot.stdout(attempt),
        stdout_cap: if is_records { max_output_bytes } else { LOG_CAP },
        stdout_overflow: if is_records { Overflow::Fail } else { Overflow::Truncate },
        stderr: slot.stderr(attempt),
        stderr_cap: LOG_CAP,
    }
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn placeholders_name_the_one_input_inside_the_sandbox() {
        let key = Some("photos/IMG 1.large.jpg");
        assert_eq!(expand("{in}", key), "/in/photos/IMG 1.large.jpg");
        assert_eq!(expand("{out}/{stem}.webp", key), "/out/IMG 1.large.webp");
        assert_eq!(expand("{name}:{ext}", key), "IMG 1.large.jpg:jpg");
        assert_eq!(expand("{{literal}} }}", key), "{literal} }");
        assert_eq!(expand("-resize", key), "-resize");
        assert_eq!(expand("{stem}", Some("README")), "README");
        assert_eq!(expand("{stem}|{ext}", Some(".bashrc")), ".bashrc|");
    }
}
