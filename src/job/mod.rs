//! The job: a job file (`jobs/*.toml`) and CLI flags merged into one resolved, validated
//! [`Job`]. The schema (`schema`) declares each field once, for the file and its flag; the
//! resolution (`resolve`) checks and parses every value into the typed job (`model`);
//! errors (`error`) point at the file, line and field. It reads the job file and nothing
//! else.

mod error;
mod kafka;
mod model;
mod resolve;
mod schema;

#[cfg(test)]
use error::JobError;
pub(crate) use kafka::{secret_settings, secret_variable};
pub(crate) use model::{
    backoff_before, Executor, Function, Include, Job, KafkaInput, KafkaStart, PartitionBounds, RecordFormat,
    ReduceStep, Sandbox, ShardRule, SideFile, Stragglers,
};
pub(crate) use resolve::{is_dns_name, resolve, resolve_function, Origins};
pub(crate) use schema::JobArgs;

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The job flags exactly as the CLI declares them.
    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        job: JobArgs,
    }

    /// Resolves `text` as a job file of its own folder (removed afterwards: tests run in
    /// parallel, so no two share a path), with `flags` typed after it on the command line.
    fn from_text(text: &str, flags: &[&str]) -> Result<Job, JobError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("job.toml");
        std::fs::write(&path, text).unwrap();
        let path = path.to_str().unwrap();
        let mut args = Flags::parse_from(["fanout", path].iter().chain(flags)).job;
        args.file = Some(path.into());
        resolve(&args).map(|(job, _)| job)
    }

    const MINIMAL: &str =
        "[input]\nsource = \"/data/in\"\n[function]\nwasm = \"/f.wasm\"\n[output]\ndest = \"/data/out\"\n";

    #[test]
    fn defaults_fill_every_field() {
        let job = from_text(MINIMAL, &[]).unwrap();
        assert_eq!(job.input.shard, ShardRule::Object);
        assert_eq!(job.function.timeout_ms, 60_000);
        assert_eq!(job.function.memory_bytes, 256 << 20);
        assert_eq!(job.retry.attempts, 3);
        assert!(job.workers.max >= 1);
        assert_eq!(job.workers.idle_ms, 1000);
        assert_eq!(job.stragglers, Stragglers { backup: true, after: 0.9, factor: 3.0 });
    }

    #[test]
    fn a_flag_overrides_the_same_field_set_in_the_file() {
        let file = "[input]\nsource = \"/data/in\"\ninclude = \"*.png\"\nshard = { objects = 4 }\n\
                    [function]\nwasm = \"/f.wasm\"\ntimeout = \"9s\"\nargs = [\"--a\"]\nenv = { A = \"file\", B = \"b\" }\n\
                    [output]\ndest = \"/data/out\"\n[workers]\nmax = 7\n[stragglers]\nbackup = true\n";
        let from_file = from_text(file, &[]).unwrap();
        assert_eq!(from_file.function.timeout_ms, 9000);
        assert_eq!(from_file.input.shard, ShardRule::Objects { count: 4 });
        assert_eq!(from_file.workers.max, 7);
        assert_eq!(from_file.input.include.globs(), ["*.png"]);

        let flags = [
            "--timeout",
            "2s",
            "--shard",
            "objects=16",
            "--max-workers",
            "3",
            "--include",
            "*.jpg",
            "--env",
            "A=flag",
            "--no-backup",
            "--output",
            "/elsewhere",
            "--",
            "--x",
        ];
        let job = from_text(file, &flags).unwrap();
        assert_eq!(job.function.timeout_ms, 2000);
        assert_eq!(job.input.shard, ShardRule::Objects { count: 16 });
        assert_eq!(job.workers.max, 3);
        assert_eq!(job.input.include.globs(), ["*.jpg"], "--include replaces the file's globs");
        assert_eq!(job.output.dest.to_string(), "/elsewhere");
        assert!(!job.stragglers.backup);
        // --env adds to the file's table (a flag wins for the same key); -- ARGS are appended.
        let env: Vec<(&str, &str)> = job.function.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(env, [("A", "flag"), ("B", "b")]);
        assert_eq!(job.function.args, ["--a", "--x"]);
    }

    #[test]
    fn errors_name_the_flag_or_the_line_that_set_the_value() {
        let file = format!("{MINIMAL}[retry]\nbackoff = \"soonish\"\n");
        let err = from_text(&file, &[]).unwrap_err().to_string();
        assert!(
            err.ends_with(":8: retry.backoff: \"soonish\" is not a duration (examples: \"30s\", \"200ms\", \"2m\")"),
            "{err}"
        );
        let err = from_text(&file, &["--backoff", "later"]).unwrap_err().to_string();
        assert_eq!(err, "command line: --backoff: \"later\" is not a duration (examples: \"30s\", \"200ms\", \"2m\")");
        let err = from_text(MINIMAL, &["--max-workers", "5000"]).unwrap_err().to_string();
        assert_eq!(err, "command line: --max-workers: 5000 workers is more than the 1024 fanout runs at once");
        let err = from_text(MINIMAL, &["--env", "FANOUT_JOB=x"]).unwrap_err().to_string();
        assert!(err.starts_with("command line: --env: \"FANOUT_JOB\""), "{err}");
    }

    #[test]
    fn a_field_in_the_wrong_table_is_refused() {
        // `timeout` lands in [output] here, which must be refused: placement matters.
        let err = from_text(&format!("{MINIMAL}timeout = \"9s\"\n"), &[]).unwrap_err().to_string();
        assert!(err.contains("output.timeout: unknown field `timeout`"), "{err}");
    }

    #[test]
    fn unknown_field_names_table_and_line() {
        let text = "[input]\nsource = \"/in\"\nshard = { objcts = 3 }\n";
        let err = from_text(text, &[]).unwrap_err().to_string();
        assert!(err.contains(":3:"), "{err}");
        assert!(err.contains("input.shard.objcts"), "{err}");
    }
}
