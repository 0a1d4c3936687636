//! `fanout plan`, `fanout status` and `fanout report`: commands that read a job or its
//! manifest and print; none of them runs a function or writes to DEST.

use super::args::{PlanArgs, ReportArgs, StatusArgs};
use super::common::{follow_command, open_job, plan_failure, redrive_command};
use super::exit::{failed, usage, Failure, EXIT_OK};
use crate::events::EventSink;
use crate::executor::kubernetes;
use crate::job::Executor;
use crate::manifest::{self, Counts, JobDocument, Journal, Manifest, ShardStatus};
use crate::report;
use crate::source::{self, Planned};
use anyhow::anyhow;
use std::collections::HashSet;
use std::io::Write;

impl PlanArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        let (job, origins) = crate::job::resolve(&self.job).map_err(usage)?;
        let source = source::open_source(&job, &self.storage.options()).await.map_err(|e| plan_failure(e, &origins))?;
        let (events, _) = EventSink::channel();
        let mut shards = source::stream(&job, source, events);
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        while let Some(planned) = shards.recv().await {
            match planned.map_err(|e| plan_failure(e, &origins))? {
                Planned::Shard(shard) if self.output.json => {
                    serde_json::to_writer(&mut out, &shard).expect("a shard serializes");
                    let _ = writeln!(out);
                }
                Planned::Shard(shard) if !self.output.quiet => {
                    let _ = writeln!(out, "{:05}  {}", shard.id, shard.describe());
                }
                Planned::Shard(_) => {}
                Planned::Done(totals) if self.output.json => {
                    let totals = serde_json::json!({ "totals": totals, "rule": job.input.shard.to_string() });
                    let _ = writeln!(out, "{totals}");
                }
                Planned::Done(totals) => {
                    let bytes = crate::units::format_size(totals.bytes);
                    let things = if job.input.source.is_kafka() { "records" } else { "objects" };
                    let _ = writeln!(
                        out,
                        "{} shards ({}), {} {things}, {bytes} from {}",
                        totals.shards, job.input.shard, totals.objects, job.input.source
                    );
                }
            }
        }
        let _ = out.flush();
        Ok(EXIT_OK)
    }
}

/// What the manifest says of a job: its shards by state, from the stored plan and journal.
struct State {
    total: u64,
    plan_complete: bool,
    journal: Journal,
    counts: Counts,
}

async fn read_state(manifest: &Manifest, document: &JobDocument) -> Result<State, Failure> {
    let journal = manifest.read_journal().await.map_err(failed)?;
    let recorded = journal.latest.keys().next_back().map(|k| k + 1).unwrap_or(0);
    let total = match (&document.plan.totals, document.plan.complete) {
        (Some(totals), true) => totals.shards,
        _ => recorded,
    };
    let counts = Counts::of(journal.latest.values());
    Ok(State { total, plan_complete: document.plan.complete, journal, counts })
}

impl StatusArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        if self.follow {
            return super::followed::follow(self).await;
        }
        let (storage, document) =
            open_job(&self.target.dest, self.target.job_id.as_deref(), &self.storage.options()).await?;
        let manifest = Manifest::new(storage.clone(), &document.job_id);
        let state = read_state(&manifest, &document).await?;
        let Counts { ok, failed: failed_count, superseded } = state.counts;
        let pending = state.total.saturating_sub(ok + failed_count + superseded);
        let replaced = manifest::superseded_failures(state.journal.latest.values());
        let failures: Vec<_> = state
            .journal
            .latest
            .values()
            .filter(|r| r.status == ShardStatus::Failed && !replaced.contains(&r.shard))
            .collect();
        let log_of = |shard: u64| storage.root().join(&manifest.log_key(shard)).to_string();
        if self.output.json {
            let json = serde_json::json!({
                "job_id": document.job_id,
                "name": document.job.name,
                "created": document.created,
                "plan_complete": state.plan_complete,
                "shards": {
                    "total": state.total, "ok": ok, "failed": failed_count, "superseded": superseded, "pending": pending
                },
                "failed": failures.iter().map(|r| serde_json::json!({
                    "shard": r.shard,
                    "outcome": r.outcome,
                    "attempts": r.attempts,
                    "error": r.error,
                    "log": log_of(r.shard),
                })).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&json).expect("json"));
            return Ok(EXIT_OK);
        }
        if self.output.quiet {
            return Ok(EXIT_OK);
        }
        println!("job {} ({}), created {}", document.job_id, document.job.name, document.created);
        let so_far = if state.plan_complete { "" } else { " planned so far (planning did not finish)" };
        println!("  {} shards{so_far}: {ok} done, {failed_count} failed, {pending} pending", state.total);
        for record in failures {
            let error = record.error.clone().unwrap_or_else(|| record.outcome.to_string());
            let attempts = report::attempts_phrase(record.attempts);
            println!("  failed {:05} after {attempts}: {error} (log: {})", record.shard, log_of(record.shard));
        }
        let followed = document.is_followed();
        if followed && pending > 0 {
            let committed: HashSet<u64> = state.journal.latest.keys().copied().collect();
            let waiting = kubernetes::answered(&storage, &document.job_id).await.difference(&committed).count();
            let workers = match document.job.executor {
                Executor::Kubernetes { .. } => "the Kubernetes Job's pods".to_string(),
                ref engine => format!("the {} array's tasks", engine.kind()),
            };
            println!("  {waiting} pending shards answered by {workers}, not committed yet");
            println!("  commit what they do with: {}", follow_command(&self.target.dest, &document.job_id));
        } else if !followed && failed_count + pending > 0 {
            println!("  run them again with: {}", redrive_command(&self.target.dest, &document.job_id));
        }
        Ok(EXIT_OK)
    }
}

impl ReportArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        let (storage, document) =
            open_job(&self.target.dest, self.target.job_id.as_deref(), &self.storage.options()).await?;
        let manifest = Manifest::new(storage, &document.job_id);
        if self.json {
            let summary = manifest
                .get("summary.json")
                .await
                .map_err(|e| failed(anyhow!("{e} (the job has not finished a run)")))?;
            println!("{}", String::from_utf8_lossy(&summary).trim_end());
            return Ok(EXIT_OK);
        }
        let state = read_state(&manifest, &document).await?;
        if self.csv {
            let reduce = crate::reduce::read_records(&manifest).await.map_err(failed)?;
            let csv = report::report_csv(&state.journal.latest, state.total, &reduce);
            std::io::stdout().write_all(&csv).map_err(failed)?;
            return Ok(EXIT_OK);
        }
        if let Some(path) = self.plot {
            let reduce = crate::reduce::read_records(&manifest).await.map_err(failed)?;
            let reduce: Vec<(u32, &_)> = reduce.iter().map(|r| (r.level, &r.record)).collect();
            let svg = crate::timeline::svg(&state.journal.latest, &reduce, &document.job_id).map_err(failed)?;
            std::fs::write(&path, svg).map_err(|e| failed(anyhow!("{}: {e}", path.display())))?;
            println!("wrote {} ({} shards)", path.display(), state.journal.latest.len());
            return Ok(EXIT_OK);
        }
        let title = format!("job {} ({})", document.job_id, document.job.name);
        print!("{}", report::table(&title, &state.journal.latest, state.total));
        Ok(EXIT_OK)
    }
}
