//! `fanout run` and `fanout redrive`: open everything a job needs (checking each before any
//! work starts, so a wrong address is exit 2 with nothing written), start or continue the
//! job, draw progress, and write the report and summary at the end.

use super::{failed, usage, Failure, OutputFlags, RedriveArgs, RunArgs, EXIT_JOB_FAILED, EXIT_OK};
use crate::events::{Event, EventSink};
use crate::job::{self, Job, Origins};
use crate::location::Location;
use crate::manifest::{self, FunctionIdentity, JobDocument, Journal, Manifest, PlanState};
use crate::plan::{self, PlanError, PlanTotals, Planned};
use crate::report::{self, ProgressMode};
use crate::run::{self, RunSpec, Shutdown};
use crate::runtime::{Limits, LoadReport, Runtime};
use crate::storage::{self, DynStorage, StorageOptions};
use anyhow::{anyhow, Context};
use bytes::Bytes;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What a job needs opened before it can run.
struct Opened {
    dest: DynStorage,
    source: plan::Source,
    runtime: Arc<Runtime>,
    load: LoadReport,
}

async fn open_everything(
    job: &Job,
    origins: &Origins,
    options: &StorageOptions,
    quiet: bool,
) -> Result<Opened, Failure> {
    let at_dest = origins.prefix("output.dest");
    let dest =
        storage::open(&job.output.dest, options).await.map_err(|e| usage(anyhow!("{at_dest}output.dest: {e}")))?;
    dest.check(true).await.map_err(|e| usage(anyhow!("{at_dest}output.dest: {e}")))?;
    let source = plan::open_source(job, options).await.map_err(|e| plan_failure(e, origins))?;
    let at_function = origins.prefix("function.wasm");
    let function = crate::function::load(&job.function.wasm, options, quiet)
        .await
        .map_err(|e| usage(anyhow!("{at_function}{e}")))?;
    let limits = Limits {
        timeout: job.function.timeout(),
        memory_bytes: job.function.memory_bytes,
        concurrency: job.workers.max,
    };
    let (runtime, load) = tokio::task::spawn_blocking(move || Runtime::load(&function.name, &function.bytes, limits))
        .await
        .expect("loading the function does not panic")
        .map_err(|e| usage(anyhow!("{at_function}function.wasm: {e}")))?;
    Ok(Opened { dest, source, runtime: Arc::new(runtime), load })
}

/// A planning error found before any work: exit 2, pointing at the job file's line.
pub(super) fn plan_failure(error: PlanError, origins: &Origins) -> Failure {
    let at = error.field().map(|field| origins.prefix(field)).unwrap_or_default();
    usage(anyhow!("{at}{error}"))
}

pub async fn run(args: RunArgs) -> Result<u8, Failure> {
    let quiet = args.output.quiet || args.output.json;
    let (job, origins) = job::resolve_with_origins(args.job.job.as_deref(), &args.job.overrides()).map_err(usage)?;
    if args.job_id.is_some() && !args.resume {
        return Err(usage(anyhow!("--job goes with --resume (or use `fanout redrive DEST --job ID`)")));
    }
    let grace = crate::units::parse_duration(&args.grace).map_err(|m| usage(anyhow!("--grace: {m}")))?;
    let options = args.storage.options();
    let opened = open_everything(&job, &origins, &options, quiet).await?;
    let continuing = if args.resume {
        let found = manifest::find_job(&opened.dest, args.job_id.as_deref(), Some(&job.name)).await.map_err(usage)?;
        if let Some(document) = &found {
            check_compatible(document, &job, &opened.load)?;
        } else if !quiet {
            eprintln!("fanout: no earlier job named \"{}\" in {}: starting a new one", job.name, job.output.dest);
        }
        found
    } else {
        None
    };
    execute(job, origins, opened, continuing, args.staging, grace, args.output).await
}

pub async fn redrive(args: RedriveArgs) -> Result<u8, Failure> {
    let quiet = args.output.quiet || args.output.json;
    let grace = crate::units::parse_duration(&args.grace).map_err(|m| usage(anyhow!("--grace: {m}")))?;
    let options = args.storage.options();
    let (_, document) = super::inspect::open_job(&args.dest, args.job_id.as_deref(), &options).await?;
    let job = document.job.clone();
    let opened = open_everything(&job, &Origins::default(), &options, quiet).await?;
    if opened.load.sha256 != document.function.sha256 {
        return Err(usage(anyhow!(
            "function.wasm: {} changed since job {} ran (sha256 {} then, {} now); run it as a new job instead",
            job.function.wasm,
            document.job_id,
            &document.function.sha256[..12],
            &opened.load.sha256[..12]
        )));
    }
    execute(job, Origins::default(), opened, Some(document), args.staging, grace, args.output).await
}

/// Refuses to resume a job whose inputs, function or outputs differ from this one.
fn check_compatible(stored: &JobDocument, job: &Job, load: &LoadReport) -> Result<(), Failure> {
    let then = &stored.job;
    let differences: [(&str, String, String); 7] = [
        ("input.source", then.input.source.to_string(), job.input.source.to_string()),
        ("input.include", format!("{:?}", then.input.include), format!("{:?}", job.input.include)),
        ("input.shard", then.input.shard.to_string(), job.input.shard.to_string()),
        ("function.wasm", stored.function.sha256.clone(), load.sha256.clone()),
        ("function.args", format!("{:?}", then.function.args), format!("{:?}", job.function.args)),
        ("function.env", format!("{:?}", then.function.env), format!("{:?}", job.function.env)),
        ("output.dest", then.output.dest.to_string(), job.output.dest.to_string()),
    ];
    for (field, before, now) in differences {
        if before != now {
            return Err(usage(anyhow!(
                "cannot resume job {}: {field} differs (the job ran with {before}, now {now}); run without --resume to start a new job",
                stored.job_id
            )));
        }
    }
    Ok(())
}

/// Streams a stored plan back, segment by segment.
fn stored_plan(manifest: Manifest, segments: u64, totals: PlanTotals) -> mpsc::Receiver<Result<Planned, PlanError>> {
    let (tx, rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        for segment in 0..segments {
            match manifest.read_plan_segment(segment).await {
                Ok(shards) => {
                    for shard in shards {
                        if tx.send(Ok(Planned::Shard(shard))).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(PlanError::Stored(e.to_string()))).await;
                    return;
                }
            }
        }
        let _ = tx.send(Ok(Planned::Done(totals))).await;
    });
    rx
}

fn staging_root(flag: Option<PathBuf>, dest: &Location, job_id: &str) -> PathBuf {
    if let Some(dir) = flag.or_else(|| std::env::var_os("FANOUT_STAGING").map(PathBuf::from)) {
        return dir.join(job_id);
    }
    match dest {
        // Inside DEST: outputs then reach their place by rename, not by copy.
        Location::Local(path) => path.join(manifest::FANOUT_DIR).join(job_id).join("staging"),
        Location::S3 { .. } => std::env::temp_dir().join("fanout-staging").join(job_id),
    }
}

/// Ctrl-C (or SIGTERM) once: stop dispatching; again, or after `grace`: cancel running attempts.
fn watch_signals(shutdown: Shutdown, grace: Duration) {
    tokio::spawn(async move {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let signalled = async {
            match terminate.as_mut() {
                Some(term) => tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} },
                None => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        };
        signalled.await;
        shutdown.soft.cancel();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match terminate.as_mut() { Some(term) => { term.recv().await; } None => std::future::pending::<()>().await } } => {}
            _ = tokio::time::sleep(grace) => {}
        }
        shutdown.hard.cancel();
    });
}

async fn execute(
    job: Job,
    origins: Origins,
    opened: Opened,
    continuing: Option<JobDocument>,
    staging: Option<PathBuf>,
    grace: Duration,
    output: OutputFlags,
) -> Result<u8, Failure> {
    let started = manifest::timestamp(SystemTime::now());
    let Opened { dest, source, runtime, load } = opened;
    let source_storage = source.storage.clone();
    let new_job = continuing.is_none();
    let (document, prior, shards, record_plan) = match continuing {
        None => {
            let document = JobDocument {
                job_id: manifest::new_job_id(&job.name),
                fanout_version: env!("CARGO_PKG_VERSION").to_string(),
                created: started.clone(),
                job: job.clone(),
                function: FunctionIdentity { sha256: load.sha256.clone(), kind: load.kind.to_string() },
                plan: PlanState::default(),
            };
            let shards = plan::stream(&job, source);
            (document, Journal::default(), shards, true)
        }
        Some(document) => {
            let manifest = Manifest::new(dest.clone(), &document.job_id);
            let prior = manifest.read_journal().await.map_err(failed)?;
            match (&document.plan.totals, document.plan.complete) {
                (Some(totals), true) => {
                    let shards = stored_plan(manifest, document.plan.segments, totals.clone());
                    (document, prior, shards, false)
                }
                _ => {
                    let shards = plan::stream(&job, source);
                    (document, prior, shards, true)
                }
            }
        }
    };
    let job_id = document.job_id.clone();
    let manifest = Manifest::new(dest.clone(), &job_id);
    let staging_root = staging_root(staging, &job.output.dest, &job_id);
    // Leftovers of a killed run are never published: they go before anything starts.
    let _ = tokio::fs::remove_dir_all(&staging_root).await;

    let quiet = output.quiet || output.json;
    let (events, event_rx) = EventSink::channel();
    let progress_done = CancellationToken::new();
    let progress = tokio::spawn(report::drive_progress(ProgressMode::detect(quiet), event_rx, progress_done.clone()));
    events.emit(Event::FunctionReady { cache_hit: load.cache_hit, load_ms: load.load_ms, kind: load.kind });
    if !new_job {
        events.emit(Event::Note(format!("continuing job {job_id}")));
    }
    let shutdown = Shutdown::default();
    watch_signals(shutdown.clone(), grace);

    let spec = RunSpec {
        job: job.clone(),
        document: document.clone(),
        write_job_document: new_job,
        manifest: manifest.clone(),
        source: source_storage,
        dest,
        runtime,
        prior,
        shards,
        record_plan,
        staging_root,
        events,
        shutdown,
    };
    let result = run::execute(spec).await;
    progress_done.cancel();
    let _ = progress.await;
    let result = result.map_err(failed)?;

    if new_job && result.records.is_empty() && result.stats.shards_total == 0 {
        // Planning failed before the first shard: nothing ran and nothing was written.
        return Err(match result.plan_failure {
            Some(error) => plan_failure(error, &origins),
            None => usage(anyhow!("input.source: the plan is empty")),
        });
    }
    let summary = report::summarize(
        &job_id,
        &job.name,
        &job.output.dest.to_string(),
        &manifest.location(),
        &started,
        &result.stats,
        &result.records,
        &load,
        result.succeeded,
    );
    let total = result.plan_totals.as_ref().map(|t| t.shards).unwrap_or(result.stats.shards_total);
    manifest
        .put("report.csv", Bytes::from(report::report_csv(&result.records, total)))
        .await
        .context("writing report.csv")
        .map_err(failed)?;
    let summary_json = serde_json::to_vec_pretty(&summary).expect("a summary serializes");
    manifest
        .put("summary.json", Bytes::from(summary_json.clone()))
        .await
        .context("writing summary.json")
        .map_err(failed)?;

    if output.json {
        println!("{}", String::from_utf8_lossy(&summary_json));
    } else if !output.quiet {
        println!("{}", report::summary_line(&summary));
        if let Some(error) = &summary.plan_error {
            eprintln!("fanout: planning failed: {error}");
        }
        for failure in summary.failures.iter().take(5) {
            eprintln!(
                "fanout: shard {:05} failed after {}: {} (log: {})",
                failure.shard,
                report::attempts_phrase(failure.attempts),
                failure.error,
                manifest.storage().root().join(&manifest.log_key(failure.shard))
            );
        }
        if summary.shards.failed > 5 {
            eprintln!(
                "fanout: ... {} failed shards in all; see `fanout status {}`",
                summary.shards.failed, job.output.dest
            );
        }
    }
    if result.stats.stopped_early || summary.shards.pending > 0 {
        eprintln!("fanout: to finish this job, run: fanout redrive {} --job {job_id}", job.output.dest);
    }
    Ok(if result.succeeded { EXIT_OK } else { EXIT_JOB_FAILED })
}
