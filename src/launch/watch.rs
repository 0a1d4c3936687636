//! What a watch needs beyond a run's launch: refusing jobs a watch cannot keep (records cut
//! from growing objects, a reduce over several objects a shard, Kubernetes), finding the
//! watch's earlier runs in DEST and where to go on from, the topic's bounds and group,
//! starting the watcher of the source, running it ([`WatchLaunch`]), and the [`Reporter`] that keeps report.csv,
//! summary.json and the reduce up to date while shards commit.

use super::{check_compatible, failed, new_document, refuse_kubernetes, refused, run_reduce, write_reports};
use super::{executor_for, staging_root, watch_signals, LaunchError, Opened, ReduceSpec};
use crate::events::{Event, EventSink};
use crate::job::{self, Job};
use crate::manifest::{self, JobDocument, Journal, Manifest, ShardStatus};
use crate::reduce::{self, ReduceRecord, ReduceSummary};
use crate::report::Summary;
use crate::run::{self, CommitListener, RunResult, RunSetup, RunSpec, Shutdown, WatchRun};
use crate::runtime::LoadReport;
use crate::source::kafka::{GroupOffsets, KafkaTopic};
use crate::source::watch::{self, TopicWatchSpec, WatchSpec};
use crate::source::{PlanError, Planned, Reader, Source};
use crate::storage::{DynStorage, StorageOptions};
use crate::units;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where a watch starts: its document (new or stored), what earlier runs committed, the
/// plan segments they stored, and the watcher's starting point.
pub struct Continued {
    pub document: JobDocument,
    pub prior: Journal,
    pub plan_segments: u64,
    pub resume: watch::ResumePoint,
}

/// A watch takes whole objects: a record rule (rows, chunks) cuts objects that keep growing.
/// With a reduce, one object a shard: a newer version of an object must replace that
/// object's map output alone, not a shard's worth of other objects too. And it starts its
/// workers itself, which it cannot do on Kubernetes.
pub fn refuse_unwatchable(job: &Job, origins: &job::Origins) -> Result<(), LaunchError> {
    refuse_kubernetes(job)?;
    if job.input.kafka.is_some() {
        // A topic's shards are offset ranges that never change once cut: any rule, any reduce.
        return Ok(());
    }
    if job.input.shard.is_record_rule() {
        return Err(refused(format!(
            "{}input.shard: a watch takes whole objects (object, objects=N, bytes=SIZE), not {}",
            origins.prefix("input.shard"),
            job.input.shard
        )));
    }
    if job.reduce.is_some() && job.input.shard != job::ShardRule::Object {
        return Err(refused(format!(
            "{}input.shard: a watch with [reduce] takes one object a shard (--shard object), not {}: \
             a newer version of an object replaces its own map output, and only that",
            origins.prefix("input.shard"),
            job.input.shard
        )));
    }
    Ok(())
}

/// The latest watch of this name in DEST, continued; or a new one.
pub async fn continue_or_begin(job: &Job, dest: &DynStorage, load: &LoadReport) -> Result<Continued, LaunchError> {
    let jobs = manifest::list_jobs(dest).await.map_err(refused)?;
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
        refused(format!(
            "the watch \"{}\" in {} ran with another job (inputs, function or arguments differ); \
             give this one another name",
            job.name, job.output.dest
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

/// A watch over a topic: where it starts (a new watch's start position, looked up now and
/// stored in its job.json; a continued watch's, from there), where each partition goes on
/// from (the end of the stored plan), and the group's offsets, following its commits.
pub async fn follow_topic(
    job: &mut Job,
    continued: &mut Continued,
    topic: &Arc<KafkaTopic>,
) -> Result<Arc<GroupOffsets>, LaunchError> {
    let stored = continued.document.job.input.kafka.as_ref().and_then(|kafka| kafka.bounds.clone());
    let bounds = match stored {
        Some(bounds) => bounds,
        None => {
            let start = job.input.kafka.as_ref().expect("a topic's job has [input.kafka]").start;
            topic.bounds(start).await.map_err(|e| refused(format!("input.source: {e}")))?
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
    let group = GroupOffsets::start(topic, firsts).map_err(|e| refused(format!("input.source: {e}")))?;
    group.committed(std::mem::take(&mut resume.topic_done));
    Ok(group)
}

/// Says what is watched and how. A continued watch says so; a new one stores its job.json
/// before anything runs, so that `fanout status` finds it while it waits for the first object.
pub async fn announce(
    job: &Job,
    continued: &Continued,
    manifest: &Manifest,
    events: &EventSink,
) -> Result<(), LaunchError> {
    let how = if job.input.source.is_kafka() {
        format!(
            "a shard closes when full or {} after its first record",
            units::format_duration(std::time::Duration::from_millis(job.watch.max_wait_ms))
        )
    } else if job.input.source.is_object_store() {
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

/// The watcher of the job's source: a topic's, or a folder's or prefix's.
pub fn start_watching(
    job: &Job,
    source: Source,
    resume: watch::ResumePoint,
    once: bool,
    shutdown: &Shutdown,
    events: &EventSink,
) -> mpsc::Receiver<Result<Planned, PlanError>> {
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

/// A watch's reports, and its reduce: run again whenever the map has caught up with every
/// object seen and its outputs changed since the last one. Invocations whose inputs did
/// not change are skipped (their records match), so a new object reruns one path of the
/// tree, not all of it.
pub struct Reporter {
    pub manifest: Manifest,
    pub job: Job,
    pub started: String,
    pub load: LoadReport,
    pub dest: DynStorage,
    pub options: StorageOptions,
    pub staging: PathBuf,
    pub quiet: bool,
    pub cancel: CancellationToken,
    /// The map outputs (shard and finish time of each) the last reduce read.
    pub reduced_over: Option<Vec<String>>,
    pub reduced: Option<(ReduceSummary, Vec<ReduceRecord>)>,
}

impl Reporter {
    /// Rewrites report.csv and summary.json from each snapshot the run sends (the latest
    /// only, when several wait), until the run ends; then hands itself back for the last.
    pub async fn keep_up(mut self, mut snapshots: mpsc::UnboundedReceiver<RunResult>) -> Reporter {
        while let Some(mut snapshot) = snapshots.recv().await {
            while let Ok(newer) = snapshots.try_recv() {
                snapshot = newer;
            }
            // A report that cannot be written now is written again with the next snapshot.
            let _ = self.update(&snapshot).await;
        }
        self
    }

    pub async fn update(&mut self, result: &RunResult) -> Result<Summary, LaunchError> {
        let caught_up = result.stats.shards_pending == 0 && result.succeeded;
        if self.job.reduce.is_some() && caught_up && !self.cancel.is_cancelled() {
            let stamps: Vec<String> = reduce::map_outputs(&result.records).into_iter().map(|i| i.stamp).collect();
            if !stamps.is_empty() && self.reduced_over.as_ref() != Some(&stamps) {
                let spec = ReduceSpec {
                    job: &self.job,
                    manifest: &self.manifest,
                    dest: &self.dest,
                    options: &self.options,
                    staging: &self.staging,
                    quiet: self.quiet,
                    cancel: &self.cancel,
                };
                self.reduced = Some(run_reduce(spec, result).await?);
                self.reduced_over = Some(stamps);
            }
        }
        write_reports(&self.manifest, &self.job, &self.started, result, &self.load, self.reduced.as_ref()).await
    }
}

/// A watch needs a folder, a prefix or a topic to follow, not one object.
pub fn refuse_one_object(source: &Source, job: &Job, origins: &job::Origins) -> Result<(), LaunchError> {
    match source.single {
        Some(_) => Err(refused(format!(
            "{}input.source: {} is one object; a watch needs a folder or an S3 prefix",
            origins.prefix("input.source"),
            job.input.source
        ))),
        None => Ok(()),
    }
}

/// A watch about to start: resolved and opened.
pub struct WatchLaunch {
    pub job: Job,
    pub opened: Opened,
    /// `--staging`, when given.
    pub staging: Option<PathBuf>,
    /// How long a stop waits for running attempts before cancelling them.
    pub grace: Duration,
    pub options: StorageOptions,
    pub quiet: bool,
    /// `--once`: stop when what was new at the start is done.
    pub once: bool,
}

impl WatchLaunch {
    /// Continues the watch's earlier runs (or begins one) and runs shards as the watcher
    /// finds them, keeping the reports up to date, until it is stopped. Hands back the
    /// run's result and the reporter, for the last reports.
    pub async fn run(self, events: EventSink) -> Result<(RunResult, Reporter), LaunchError> {
        let WatchLaunch { mut job, opened, staging, grace, options, quiet, once } = self;
        let mut continued = continue_or_begin(&job, &opened.dest, &opened.load).await?;
        let group = match opened.source.topic() {
            Some(topic) => Some(follow_topic(&mut job, &mut continued, topic).await?),
            None => None,
        };
        let started = manifest::timestamp(SystemTime::now());
        let Opened { dest, source, runtime, load, workers, .. } = opened;
        let reader = source.reader.clone();
        let job_id = continued.document.job_id.clone();
        let manifest = Manifest::new(dest.clone(), &job_id);
        announce(&job, &continued, &manifest, &events).await?;
        let staging_root = staging_root(staging, &job.output.dest, &job_id);
        let _ = tokio::fs::remove_dir_all(&staging_root).await;
        let shutdown = Shutdown::default();
        watch_signals(shutdown.clone(), grace);
        let plan_first = source.topic().is_some();
        let resume = std::mem::take(&mut continued.resume);
        let object_shards = resume.object_shards.clone();
        let shards = start_watching(&job, source, resume, once, &shutdown, &events);
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
        let setup = RunSetup {
            executor: executor_for(&job, &job_id, &dest, runtime, &load, workers, &events)?,
            job,
            document: continued.document,
            write_job_document: false,
            manifest,
            source: reader,
            dest,
            prior: continued.prior,
            record_plan: true,
            staging_root,
            events,
            shutdown,
            watch: Some(WatchRun { plan_segments: continued.plan_segments, snapshots, object_shards, plan_first }),
            on_commit: group.map(|group| group as Arc<dyn CommitListener>),
        };
        let result = run::execute(RunSpec { setup, shards }).await;
        let reporter = reporter.await.map_err(failed)?;
        Ok((result.map_err(failed)?, reporter))
    }
}
