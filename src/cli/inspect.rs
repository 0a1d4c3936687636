//! `fanout plan`, `fanout status` and `fanout report`: commands that read a job or its
//! manifest and print; none of them runs a function or writes to DEST.

use super::{failed, usage, Failure, PlanArgs, ReportArgs, StatusArgs, EXIT_OK};
use crate::location::Location;
use crate::manifest::{self, JobDocument, Journal, Manifest, ShardStatus};
use crate::plan::{self, Planned};
use crate::report;
use crate::storage::{self, DynStorage};
use anyhow::anyhow;
use std::io::Write;

pub async fn plan(args: PlanArgs) -> Result<u8, Failure> {
    let (job, origins) =
        crate::job::resolve_with_origins(args.job.job.as_deref(), &args.job.overrides()).map_err(usage)?;
    let source = plan::open_source(&job, &args.storage.options())
        .await
        .map_err(|e| super::running::plan_failure(e, &origins))?;
    let mut shards = plan::stream(&job, source);
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some(planned) = shards.recv().await {
        match planned.map_err(|e| super::running::plan_failure(e, &origins))? {
            Planned::Shard(shard) => {
                if args.output.json {
                    serde_json::to_writer(&mut out, &shard).expect("a shard serializes");
                    let _ = writeln!(out);
                } else if !args.output.quiet {
                    let _ = writeln!(out, "{:05}  {}", shard.id, shard.describe());
                }
            }
            Planned::Done(totals) => {
                if args.output.json {
                    let _ = writeln!(
                        out,
                        "{}",
                        serde_json::json!({ "totals": totals, "rule": job.input.shard.to_string() })
                    );
                } else {
                    let _ = writeln!(
                        out,
                        "{} shards ({}), {} objects, {} from {}",
                        totals.shards,
                        job.input.shard,
                        totals.objects,
                        crate::units::format_size(totals.bytes),
                        job.input.source
                    );
                }
            }
        }
    }
    let _ = out.flush();
    Ok(EXIT_OK)
}

/// Opens DEST and finds the job named (or the latest): a usage error when there is none.
pub(super) async fn open_job(
    dest: &str,
    job_id: Option<&str>,
    options: &storage::StorageOptions,
) -> Result<(DynStorage, JobDocument), Failure> {
    let location = Location::parse(dest).map_err(usage)?;
    let storage = storage::open(&location, options).await.map_err(usage)?;
    let no_jobs = || usage(manifest::ManifestError::NoJobs { dest: location.to_string() });
    match storage.check(false).await {
        // A folder that is not there holds no job: say that, not "no such object".
        Err(e) if e.is_not_found() => return Err(no_jobs()),
        checked => checked.map_err(usage)?,
    }
    let document = manifest::find_job(&storage, job_id, None).await.map_err(usage)?.ok_or_else(no_jobs)?;
    Ok((storage, document))
}

/// Counts by state, from the stored plan and the journal.
struct State {
    total: u64,
    plan_complete: bool,
    journal: Journal,
}

impl State {
    fn count(&self, status: ShardStatus) -> u64 {
        self.journal.latest.values().filter(|r| r.status == status).count() as u64
    }
}

async fn read_state(manifest: &Manifest, document: &JobDocument) -> Result<State, Failure> {
    let journal = manifest.read_journal().await.map_err(failed)?;
    let recorded = journal.latest.keys().next_back().map(|k| k + 1).unwrap_or(0);
    let total = match (&document.plan.totals, document.plan.complete) {
        (Some(totals), true) => totals.shards,
        _ => recorded,
    };
    Ok(State { total, plan_complete: document.plan.complete, journal })
}

pub async fn status(args: StatusArgs) -> Result<u8, Failure> {
    let (storage, document) = open_job(&args.dest, args.job_id.as_deref(), &args.storage.options()).await?;
    let manifest = Manifest::new(storage.clone(), &document.job_id);
    let state = read_state(&manifest, &document).await?;
    let ok = state.count(ShardStatus::Ok);
    let failed_count = state.count(ShardStatus::Failed);
    let pending = state.total.saturating_sub(ok + failed_count);
    let failures: Vec<_> = state.journal.latest.values().filter(|r| r.status == ShardStatus::Failed).collect();
    if args.output.json {
        let json = serde_json::json!({
            "job_id": document.job_id,
            "name": document.job.name,
            "created": document.created,
            "plan_complete": state.plan_complete,
            "shards": { "total": state.total, "ok": ok, "failed": failed_count, "pending": pending },
            "failed": failures.iter().map(|r| serde_json::json!({
                "shard": r.shard,
                "outcome": r.outcome,
                "attempts": r.attempts,
                "error": r.error,
                "log": storage.root().join(&manifest.log_key(r.shard)).to_string(),
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&json).expect("json"));
        return Ok(EXIT_OK);
    }
    if args.output.quiet {
        return Ok(EXIT_OK);
    }
    println!("job {} ({}), created {}", document.job_id, document.job.name, document.created);
    println!(
        "  {} shards{}: {} done, {} failed, {} pending",
        state.total,
        if state.plan_complete { "" } else { " planned so far (planning did not finish)" },
        ok,
        failed_count,
        pending
    );
    for record in failures {
        println!(
            "  failed {:05} after {}: {} (log: {})",
            record.shard,
            crate::report::attempts_phrase(record.attempts),
            record.error.as_deref().unwrap_or(&record.outcome),
            storage.root().join(&manifest.log_key(record.shard))
        );
    }
    if failed_count + pending > 0 {
        println!("  run them again with: fanout redrive {} --job {}", args.dest, document.job_id);
    }
    Ok(EXIT_OK)
}

pub async fn report(args: ReportArgs) -> Result<u8, Failure> {
    let (storage, document) = open_job(&args.dest, args.job_id.as_deref(), &args.storage.options()).await?;
    let manifest = Manifest::new(storage, &document.job_id);
    if args.json {
        let summary =
            manifest.get("summary.json").await.map_err(|e| failed(anyhow!("{e} (the job has not finished a run)")))?;
        println!("{}", String::from_utf8_lossy(&summary).trim_end());
        return Ok(EXIT_OK);
    }
    let state = read_state(&manifest, &document).await?;
    if args.csv {
        let csv = report::report_csv(&state.journal.latest, state.total);
        std::io::stdout().write_all(&csv).map_err(failed)?;
        return Ok(EXIT_OK);
    }
    if let Some(path) = args.plot {
        let svg = crate::timeline::svg(&state.journal.latest, &document.job_id).map_err(failed)?;
        std::fs::write(&path, svg).map_err(|e| failed(anyhow!("{}: {e}", path.display())))?;
        println!("wrote {} ({} shards)", path.display(), state.journal.latest.len());
        return Ok(EXIT_OK);
    }
    let records: Vec<_> = state.journal.latest.values().collect();
    let mut durations: Vec<u64> =
        records.iter().filter(|r| r.status == ShardStatus::Ok).map(|r| r.duration_ms).collect();
    durations.sort_unstable();
    let percentile =
        |p: f64| durations.get(((durations.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0);
    let mut outcomes = std::collections::BTreeMap::<&str, u64>::new();
    for record in &records {
        *outcomes.entry(record.outcome.as_str()).or_default() += 1;
    }
    println!("job {} ({})", document.job_id, document.job.name);
    println!(
        "  shards: {} total, {} ok, {} failed",
        state.total,
        state.count(ShardStatus::Ok),
        state.count(ShardStatus::Failed)
    );
    println!("  outcomes: {}", outcomes.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", "));
    println!(
        "  duration of ok shards: median {}ms, p90 {}ms, max {}ms",
        percentile(0.5),
        percentile(0.9),
        durations.last().copied().unwrap_or(0)
    );
    println!(
        "  bytes: {} in, {} out",
        crate::units::format_size(records.iter().map(|r| r.bytes_in).sum()),
        crate::units::format_size(records.iter().map(|r| r.bytes_out).sum())
    );
    Ok(EXIT_OK)
}
