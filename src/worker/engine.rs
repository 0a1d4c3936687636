//! Which batch engine started a `fanout worker`, told by the variables each engine sets for
//! the tasks of an array: the share this task runs, how many shares the engine was asked for
//! (where it says), which attempt of the task this is, and a name for the report's `worker`
//! column. No engine needs a flag for any of it. Reads only the variables it is handed (the
//! process environment in use, a table in tests); knows nothing of requests or storage.

use std::fmt;

/// The engines whose array tasks a worker recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArrayEngine {
    /// A Slurm array task: `SLURM_ARRAY_TASK_ID`.
    Slurm,
    /// A pod of a Kubernetes Indexed Job: `JOB_COMPLETION_INDEX`.
    Kubernetes,
    /// A task of a Google Cloud Run job execution: `CLOUD_RUN_TASK_INDEX`.
    CloudRun,
    /// An instance of an IBM Cloud Code Engine job run: `JOB_INDEX`, with `CE_JOBRUN`.
    CodeEngine,
    /// A child of an AWS Batch array job (`AWS_BATCH_JOB_ARRAY_INDEX`), or a lone Batch job.
    AwsBatch,
}

impl fmt::Display for ArrayEngine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ArrayEngine::Slurm => "slurm",
            ArrayEngine::Kubernetes => "kubernetes",
            ArrayEngine::CloudRun => "cloud-run",
            ArrayEngine::CodeEngine => "code-engine",
            ArrayEngine::AwsBatch => "aws-batch",
        })
    }
}

/// This worker's task, as its engine (or `--index`) describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    pub engine: Option<ArrayEngine>,
    pub index: usize,
    /// The shares the engine runs, when it says (a check against the stored job's).
    pub count: Option<usize>,
    /// 1 for a task's first run, 2 for its first retry..., when the engine says.
    pub attempt: Option<u32>,
    /// What the report calls this worker: the engine's name for the task, and the machine.
    pub name: String,
}

/// The task `vars` describe. `--index` (`flag`) wins over the engine's index; the engine is
/// still named. A variable that is set but not a number is an error naming it.
pub fn task(flag: Option<usize>, vars: impl Fn(&str) -> Option<String>) -> Result<Task, String> {
    let var = |name: &str| vars(name).map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    let number = |name: &str| -> Result<Option<u64>, String> {
        var(name).map(|v| v.parse().map_err(|_| format!("${name} is {v:?}, not a number"))).transpose()
    };
    let index_from = |name: &str| -> Result<Option<usize>, String> { Ok(number(name)?.map(|n| n as usize)) };
    let count_from = |name: &str| -> Result<Option<usize>, String> { Ok(number(name)?.map(|n| n as usize)) };
    // Engines that count retries from 0 (Slurm's restarts, Cloud Run's and Code Engine's
    // retries) and AWS Batch, whose first attempt is 1.
    let retries = |name: &str| -> Result<Option<u32>, String> { Ok(number(name)?.map(|n| n as u32 + 1)) };
    let host = var("SLURMD_NODENAME")
        .or_else(|| var("HOSTNAME"))
        .unwrap_or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string());

    let (engine, index, count, attempt) = if let Some(index) = index_from("SLURM_ARRAY_TASK_ID")? {
        (Some(ArrayEngine::Slurm), Some(index), count_from("SLURM_ARRAY_TASK_COUNT")?, retries("SLURM_RESTART_COUNT")?)
    } else if let Some(index) = index_from("JOB_COMPLETION_INDEX")? {
        (Some(ArrayEngine::Kubernetes), Some(index), None, None)
    } else if let Some(index) = index_from("CLOUD_RUN_TASK_INDEX")? {
        (
            Some(ArrayEngine::CloudRun),
            Some(index),
            count_from("CLOUD_RUN_TASK_COUNT")?,
            retries("CLOUD_RUN_TASK_ATTEMPT")?,
        )
    } else if var("CE_JOBRUN").is_some() {
        // JOB_INDEX alone is too common a name to trust; with CE_JOBRUN it is Code Engine's.
        let index = index_from("JOB_INDEX")?.ok_or("$CE_JOBRUN is set but $JOB_INDEX is not: which share?")?;
        (Some(ArrayEngine::CodeEngine), Some(index), count_from("JOB_ARRAY_SIZE")?, retries("JOB_INDEX_RETRY_COUNT")?)
    } else if var("AWS_BATCH_JOB_ID").is_some() {
        let attempt = number("AWS_BATCH_JOB_ATTEMPT")?.map(|n| n as u32);
        match index_from("AWS_BATCH_JOB_ARRAY_INDEX")? {
            Some(index) => (Some(ArrayEngine::AwsBatch), Some(index), count_from("AWS_BATCH_JOB_ARRAY_SIZE")?, attempt),
            // An array job needs two children at least: a job of one share is a lone job.
            None => (Some(ArrayEngine::AwsBatch), Some(0), Some(1), attempt),
        }
    } else {
        (None, None, None, None)
    };
    let index = flag.or(index).ok_or(
        "which share? pass --index N, or run as an array task of Slurm, Kubernetes (Indexed Job), \
         Cloud Run Jobs, Code Engine or AWS Batch",
    )?;
    let said = |name: &str| var(name).unwrap_or_else(|| "?".into());
    let mut name = match engine {
        Some(ArrayEngine::Slurm) => format!("slurm {}_{index} on {host}", said("SLURM_ARRAY_JOB_ID")),
        // A pod's hostname is the pod's name.
        Some(ArrayEngine::Kubernetes) => format!("pod {host} (index {index})"),
        Some(ArrayEngine::CloudRun) => format!("cloud-run {} task {index} on {host}", said("CLOUD_RUN_EXECUTION")),
        Some(ArrayEngine::CodeEngine) => format!("code-engine {} index {index} on {host}", said("CE_JOBRUN")),
        // A child's job id is the array's id and its index already.
        Some(ArrayEngine::AwsBatch) => format!("aws-batch {} on {host}", said("AWS_BATCH_JOB_ID")),
        None => format!("worker {index} on {host}"),
    };
    if let Some(attempt) = attempt.filter(|&a| a > 1) {
        name.push_str(&format!(", attempt {attempt}"));
    }
    Ok(Task { engine, index, count, attempt, name })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn task_of(flag: Option<usize>, vars: &[(&str, &str)]) -> Result<Task, String> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        task(flag, |name| vars.get(name).cloned())
    }

    #[test]
    fn each_engine_is_known_by_its_own_variables() {
        // (variables, engine, index, count, attempt, name)
        type Case<'a> = (&'a [(&'a str, &'a str)], ArrayEngine, usize, Option<usize>, Option<u32>, &'a str);
        let cases: [Case; 6] = [
            (
                &[("SLURM_ARRAY_TASK_ID", "3"), ("SLURM_ARRAY_JOB_ID", "77"), ("SLURMD_NODENAME", "n1")],
                ArrayEngine::Slurm,
                3,
                None,
                None,
                "slurm 77_3 on n1",
            ),
            (
                &[("JOB_COMPLETION_INDEX", "2"), ("HOSTNAME", "thumbs-2-x")],
                ArrayEngine::Kubernetes,
                2,
                None,
                None,
                "pod thumbs-2-x (index 2)",
            ),
            (
                &[
                    ("CLOUD_RUN_TASK_INDEX", "5"),
                    ("CLOUD_RUN_TASK_COUNT", "8"),
                    ("CLOUD_RUN_TASK_ATTEMPT", "1"),
                    ("CLOUD_RUN_EXECUTION", "thumbs-abc"),
                    ("HOSTNAME", "h"),
                ],
                ArrayEngine::CloudRun,
                5,
                Some(8),
                Some(2),
                "cloud-run thumbs-abc task 5 on h, attempt 2",
            ),
            (
                &[
                    ("CE_JOBRUN", "run-1"),
                    ("JOB_INDEX", "4"),
                    ("JOB_ARRAY_SIZE", "6"),
                    ("JOB_INDEX_RETRY_COUNT", "0"),
                    ("HOSTNAME", "h"),
                ],
                ArrayEngine::CodeEngine,
                4,
                Some(6),
                Some(1),
                "code-engine run-1 index 4 on h",
            ),
            (
                &[
                    ("AWS_BATCH_JOB_ID", "a1b2:7"),
                    ("AWS_BATCH_JOB_ARRAY_INDEX", "7"),
                    ("AWS_BATCH_JOB_ARRAY_SIZE", "10"),
                    ("AWS_BATCH_JOB_ATTEMPT", "3"),
                    ("HOSTNAME", "ip-10-0-0-1"),
                ],
                ArrayEngine::AwsBatch,
                7,
                Some(10),
                Some(3),
                "aws-batch a1b2:7 on ip-10-0-0-1, attempt 3",
            ),
            // A Batch job of one share is no array: no index variable, share 0 of 1.
            (
                &[("AWS_BATCH_JOB_ID", "lone"), ("AWS_BATCH_JOB_ATTEMPT", "1"), ("HOSTNAME", "h")],
                ArrayEngine::AwsBatch,
                0,
                Some(1),
                Some(1),
                "aws-batch lone on h",
            ),
        ];
        for (vars, engine, index, count, attempt, name) in cases {
            let found = task_of(None, vars).unwrap();
            assert_eq!(found, Task { engine: Some(engine), index, count, attempt, name: name.to_string() }, "{vars:?}");
        }
    }

    #[test]
    fn the_flag_wins_and_mistakes_are_named() {
        let found = task_of(Some(9), &[("CLOUD_RUN_TASK_INDEX", "1"), ("HOSTNAME", "h")]).unwrap();
        assert_eq!((found.engine, found.index), (Some(ArrayEngine::CloudRun), 9));
        assert_eq!(task_of(Some(2), &[("HOSTNAME", "h")]).unwrap().name, "worker 2 on h");
        assert!(task_of(None, &[("HOSTNAME", "h")]).unwrap_err().starts_with("which share?"));
        // JOB_INDEX without CE_JOBRUN is not Code Engine's.
        assert!(task_of(None, &[("JOB_INDEX", "1")]).is_err());
        let error = task_of(None, &[("CLOUD_RUN_TASK_INDEX", "one")]).unwrap_err();
        assert_eq!(error, "$CLOUD_RUN_TASK_INDEX is \"one\", not a number");
        assert!(task_of(None, &[("CE_JOBRUN", "r")]).unwrap_err().contains("$JOB_INDEX is not"));
    }
}
