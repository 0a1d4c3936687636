//! `fanout watch`: open everything a job needs (as `run` does), find the watch's earlier
//! runs in DEST and continue them (a restart resumes by itself), then run shards as the
//! watcher finds objects, rewriting the report and summary as they commit, until Ctrl-C
//! or SIGTERM (or, with `--once`, until what was new at the start is done).

use super::args::{OutputFlags, WatchArgs};
use super::common::plan_failure;
use super::exit::{failed, usage, Failure, EXIT_JOB_FAILED, EXIT_OK};
use super::running::{
    check_compatible, executor_for, grace_of, new_document, open_everything, print_outcome, refuse_kubernetes,
    run_reduce, staging_root, watch_signals, write_reports, Opened,
};
use crate::events::{Event, EventSink};
use crate::job::{self, Job};
use crate::manifest::{self, JobDocument, Journal, Manifest, ShardStatus};
use crate::reduce::{self, ReduceRecord, ReduceSummary};
use crate::report::{self, ProgressMode, Summary};
use crate::run::{self, CommitListener, RunResult, RunSetup, RunSpec, Shutdown, WatchRun};
use crate::runtime::LoadReport;
use crate::source::kafka::{GroupOffsets, KafkaTopic};
use crate::source::watch::{self, TopicWatchSpec, WatchSpec};
use crate::source::Reader;
use crate::storage::{DynStorage, StorageOptions};
use crate::units;
use anyhow::anyhow;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where a watch starts: its document (new or stored), what earlier runs committed, the
/// plan segments they stored, and the watcher's starting point.
struct Continued {
    document: JobDocument,
    prior: Journal,
    plan_segments: u64,
    resume: watch::ResumePoint,
}

impl WatchArgs {
    pub(super) async fn execute(self) -> Result<u8, Failure> {
        let quiet = self.output.quiet || self.output.json;
        let (job, origins) = job::resolve(&self.job).map_err(usage)?;
        refuse_unwatchable(&job, &origins)?;
        let grace = grace_of(&self.control.grace)?;
        let options = self.storage.options();
        let opened = open_everything(&job, &origins, &options, quiet).await?;
        if opened.source.single.is_some() {
            return Err(usage(anyhow!(
                "{}input.source: {} is one object; a watch needs a folder or an S3 prefix",
                origins.prefix("input.source"),
                job.input.source
            )));
        }
        let mut continued = continue_or_begin(&job, &opened.dest, &opened.load).await?;
        let mut job = job;
        let group = match opened.source.topic() {
            Some(topic) => Some(follow_topic(&mut job, &mut continued, topic).await?),
            None => None,
        };
        let started = manifest::timestamp(SystemTime::now());
        let Opened { dest, source, runtime, load, workers } = opened;
        let source_reader = source.reader.clone();
        let job_id = continued.document.job_id.clone();
        let manifest = Manifest::new(dest.clone(), &job_id);
        let (events, event_rx) = EventSink::channel();
        announce(&job, &continued, &manifest, &events).await?;
        let progress_done = CancellationToken::new();
        let progress =
            tokio::spawn(report::drive_progress(ProgressMode::detect(quiet), event_rx, progress_done.clone()));
        let staging_root = staging_root(self.control.staging, &job.output.dest, &job_id);
        let _ = tokio::fs::remove_dir_all(&staging_root).await;
        let shutdown = Shutdown::default();
        watch_signals(shutdown.clone(), grace);
        let plan_first = source.topic().is_some();
        let resume = std::mem::take(&mut continued.resume);
        let object_shards = resume.object_shards.clone();
        let shards = start_watching(&job, source, resume, self.once, &shutdown, &events);
        let (snapshots, snapshot_rx) = mpsc::unbounded_channel();
        let reporter = Reporter {
            manifest: manifest.clone(),
            job: job.clone(),
            started,
            load: load.clone(),
            dest: dest.clone(),
            options,
            staging: staging_root.clone(),
            quiet,
            cancel: shutdown.hard.clone(),
            reduced_over: None,
            reduced: None,
        };
        let reporter = tokio::spawn(reporter.keep_up(snapshot_rx));
        let executor = executor_for(&job, &job_id, &dest, runtime, &load, workers, &events)?;
        let setup = RunSetup {
            job: job.clone(),
            document: continued.document,
            write_job_document: false,
            manifest: manifest.clone(),
            source: source_reader,
            dest,
            executor,
            prior: continued.prior,
            record_plan: true,
            staging_root,
            events,
            shutdown,
            watch: Some(WatchRun { plan_segments: continued.plan_segments, snapshots, object_shards, plan_first }),
            on_commit: group.map(|group| group as Arc<dyn CommitListener>),
        };
        let result = run::execute(RunSpec { setup, shards }).await;
        progress_done.cancel();
        let _ = progress.await;
        let reporter = reporter.await.map_err(failed)?;
        finish(result.map_err(failed)?, reporter, &origins, self.output).await
    }
}

/// The watcher of the job's source: a topic's, or a folder's or prefix's.
fn start_watching(
    job: &Job,
    source: crate::source::Source,
    resume: watch::ResumePoint,
    once: bool,
    shutdown: &Shutdown,
    events: &EventSink,
) -> mpsc::Receiver<Result<crate::source::Planned, crate::source::PlanError>> {
    let (stop, events) = (shutdown.soft.clone(), events.clone());
    match source.reader {
        Reader::Topic(topic) => watch::start_topic(TopicWatchSpec {
            topic,
            job: job.clone(),
            from: resume.topic_from,
            first_id: resume.next_id,
            redo: resume.redo,
            once,
            stop,
            events,
        }),
        Reader::Store(storage) => watch::start(WatchSpec {
            job: job.clone(),
            storage,
            location: source.location,
            seen: resume.seen,
            first_id: resume.next_id,
            redo: resume.redo,
            once,
            stop,
            events,
        }),
    }
}

/// The last reports (and reduce), the summary line, and the exit code.
async fn finish(
    result: RunResult,
    mut reporter: Reporter,
    origins: &job::Origins,
    output: OutputFlags,
) -> Result<u8, Failure> {
    if let Some(error) = &result.plan_failure {
        // The source could not be watched (or, with --once, listed): nothing more can come.
        if result.records.is_empty() {
            let error = result.plan_failure.expect("checked above");
            return Err(plan_failure(error, origins));
        }
        eprintln!("fanout: watching stopped: {error}");
    }
    let summary = reporter.update(&result).await?;
    print_outcome(&summary, &reporter.manifest, &reporter.job, output);
    let reduce_ok = summary.reduce.as_ref().is_none_or(|reduce| reduce.succeeded);
    let map_ok = reporter.job.retry.tolerated.allows(summary.shards.failed, summary.shards.total);
    Ok(if map_ok && reduce_ok { EXIT_OK } else { EXIT_JOB_FAILED })
}

/// A watch takes whole objects: a record rule (rows, chunks) cuts objects that keep growing.
/// With a reduce, one object a shard: a newer version of an object must replace that
/// object's map output alone, not a shard's worth of other objects too. And it starts its
/// workers itself, which it cannot do on Kubernetes.
fn refuse_unwatchable(job: &Job, origins: &job::Origins) -> Result<(), Failure> {
    refuse_kubernetes(job)?;
    if job.input.kafka.is_some() {
        // A topic's shards are offset ranges that never change once cut: any rule, any reduce.
        return Ok(());
    }
    if job.input.shard.is_record_rule() {
        return Err(usage(anyhow!(
            "{}input.shard: a watch takes whole objects (object, objects=N, bytes=SIZE), not {}",
            origins.prefix("input.shard"),
            job.input.shard
        )));
    }
    if job.reduce.is_some() && job.input.shard != job::ShardRule::Object {
        return Err(usage(anyhow!(
            "{}input.shard: a watch with [reduce] takes one object a shard (--shard object), not {}: \
             a newer version of an object replaces its own map output, and only that",
            origins.prefix("input.shard"),
            job.input.shard
        )));
    }
    Ok(())
}

/// Says what is watched and how. A continued watch says so; a new one stores its job.json
/// before anything runs, so that `fanout status` finds it while it waits for the first object.
async fn announce(job: &Job, continued: &Continued, manifest: &Manifest, events: &EventSink) -> Result<(), Failure> {
    let how = if job.input.source.is_kafka() {
        format!(
            "a shard closes when full or {} after its first record",
            units::format_duration(std::time::Duration::from_millis(job.watch.max_wait_ms))
        )
    } else if job.input.source.is_s3() {
        format!(
            "listed every {}, less often while idle",
            units::format_duration(std::time::Duration::from_millis(job.watch.interval_ms))
        )
    } else {
        "by file-system notifications".to_string()
    };
    events.emit(Event::Note(format!("watching {} ({how}); Ctrl-C or SIGTERM stops", job.input.source)));
    events.emit(Event::Watching);
    if continued.prior.next_run == 0 {
        return manifest.write_job(&continued.document).await.map_err(failed);
    }
    events.emit(Event::Note(format!(
        "continuing watch {}: {} shards committed before, {} to run again",
        continued.document.job_id,
        continued.prior.latest.len(),
        continued.resume.redo.len()
    )));
    Ok(())
}

/// A watch's reports, and its reduce: run again whenever the map has caught up with every
/// object seen and its outputs changed since the last one. Invocations whose inputs did
/// not change are skipped (their records match), so a new object reruns one path of the
/// tree, not all of it.
struct Reporter {
    manifest: Manifest,
    job: Job,
    started: String,
    load: LoadReport,
    dest: DynStorage,
    options: StorageOptions,
    staging: PathBuf,
    quiet: bool,
    cancel: CancellationToken,
    /// The map outputs (shard and finish time of each) the last reduce read.
    reduced_over: Option<Vec<String>>,
    reduced: Option<(ReduceSummary, Vec<ReduceRecord>)>,
}

impl Reporter {
    /// Rewrites report.csv and summary.json from each snapshot the run sends (the latest
    /// only, when several wait), until the run ends; then hands itself back for the last.
    async fn keep_up(mut self, mut snapshots: mpsc::UnboundedReceiver<RunResult>) -> Reporter {
        while let Some(mut snapshot) = snapshots.recv().await {
            while let Ok(newer) = snapshots.try_recv() {
                snapshot = newer;
            }
            // A report that cannot be written now is written again with the next snapshot.
            let _ = self.update(&snapshot).await;
        }
        self
    }

    async fn update(&mut self, result: &RunResult) -> Result<Summary, Failure> {
        let caught_up = result.stats.shards_pending == 0 && result.succeeded;
        if self.job.reduce.is_some() && caught_up && !self.cancel.is_cancelled() {
            let stamps: Vec<String> = reduce::map_outputs(&result.records).into_iter().map(|i| i.stamp).collect();
            if !stamps.is_empty() && self.reduced_over.as_ref() != Some(&stamps) {
                let (job, manifest, dest) = (&self.job, &self.manifest, &self.dest);
                let reduced =
                    run_reduce(job, manifest, dest, &self.options, &self.staging, self.quiet, result, &self.cancel)
                        .await?;
                self.reduced = Some(reduced);
                self.reduced_over = Some(stamps);
            }
        }
        write_reports(&self.manifest, &self.job, &self.started, result, &self.load, self.reduced.as_ref()).await
    }
}

/// A watch over a topic: where it starts (a new watch's start position, looked up now and
/// stored in its job.json; a continued watch's, from there), where each partition goes on
/// from (the end of the stored plan), and the group's offsets, following its commits.
async fn follow_topic(
    job: &mut Job,
    continued: &mut Continued,
    topic: &Arc<KafkaTopic>,
) -> Result<Arc<GroupOffsets>, Failure> {
    let stored = continued.document.job.input.kafka.as_ref().and_then(|kafka| kafka.bounds.clone());
    let bounds = match stored {
        Some(bounds) => bounds,
        None => {
            let start = job.input.kafka.as_ref().expect("a topic's job has [input.kafka]").start;
            topic.bounds(start).await.map_err(|e| usage(anyhow!("input.source: {e}")))?
        }
    };
    for kafka in [job.input.kafka.as_mut(), continued.document.job.input.kafka.as_mut()].into_iter().flatten() {
        kafka.bounds = Some(bounds.clone());
    }
    let resume = &mut continued.resume;
    let mut firsts = std::collections::BTreeMap::new();
    for bound in &bounds {
        resume.topic_from.entry(bound.partition).or_insert(bound.start);
        firsts.insert(bound.partition, resume.topic_first.get(&bound.partition).copied().unwrap_or(bound.start));
    }
    let group = GroupOffsets::start(topic, firsts).map_err(|e| usage(anyhow!("input.source: {e}")))?;
    group.committed(std::mem::take(&mut resume.topic_done));
    Ok(group)
}

/// The latest watch of this name in DEST, continued; or a new one.
async fn continue_or_begin(job: &Job, dest: &DynStorage, load: &LoadReport) -> Result<Continued, Failure> {
    let jobs = manifest::list_jobs(dest).await.map_err(usage)?;
    let earlier = jobs.into_iter().rev().find(|d| d.watch && d.job.name == job.name);
    let Some(document) = earlier else {
        let document = new_document(job, load, true);
        return Ok(Continued {
            document,
            prior: Journal::default(),
            plan_segments: 0,
            resume: watch::ResumePoint::default(),
        });
    };
    check_compatible(&document, job, load).map_err(|_| {
        usage(anyhow!(
            "the watch \"{}\" in {} ran with another job (inputs, function or arguments differ); \
             give this one another name",
            job.name,
            job.output.dest
        ))
    })?;
    let manifest = Manifest::new(dest.clone(), &document.job_id);
    let prior = manifest.read_journal().await.map_err(failed)?;
    let (plan, plan_segments) = manifest.read_open_plan().await.map_err(failed)?;
    let committed = prior.latest.iter().map(|(id, record)| (*id, record.status == ShardStatus::Ok)).collect();
    let resume = watch::resume_point(plan, &committed);
    // A run that was not stopped cleanly may have been stopped mid-attempt: a new run
    // number keeps this run's journal segments apart from its.
    let mut prior = prior;
    prior.next_run = prior.next_run.max(1);
    Ok(Continued { document, prior, plan_segments, resume })
}
