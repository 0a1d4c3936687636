//! The coordinator in virtual time: whole runs driven through `execute` with the fake
//! executor on tokio's paused clock, so that retries and their backoff, straggler backups,
//! relative timeouts and soft and hard stops are checked to the millisecond of virtual time
//! in milliseconds of real time. Each test reads back what the manifest committed. Tests
//! only; owns nothing the coordinator uses.

use super::{execute, ExecutorFactory, RunResult, RunSetup, RunSpec, Shutdown};
use crate::events::EventSink;
use crate::executor::fake::{take_turn, Act, Fake, Seen};
use crate::job::{backoff_before, Job};
use crate::location::Location;
use crate::manifest::{
    timestamp, FunctionIdentity, JobDocument, Journal, Manifest, PlanState, ShardRecord, ShardStatus,
};
use crate::runtime::{FunctionKind, Outcome, OutcomeKind};
use crate::source::{PlanTotals, Planned, Reader, Shard, ShardInput};
use crate::storage::{DynStorage, ObjectMeta};
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

const JOB_ID: &str = "clock";
/// What a planned event may lag in virtual time: a tail check comes every 100 ms, and starts
/// one backup at a time.
const SLACK: Duration = Duration::from_millis(250);
/// A run that has not ended after this much virtual time never will: fail rather than spin.
const NEVER: Duration = Duration::from_secs(3600);

fn input_of(shard: u64) -> String {
    format!("input {shard:03}\n")
}

fn output_of(shard: u64) -> String {
    format!("{shard:03}.out")
}

/// Shard `shard` writes `<shard>.out` saying which attempt wrote it, after `ms`.
fn writes(shard: u64, attempt: u32, ms: u64) -> Act {
    Act::ok_with(ms, &output_of(shard), &format!("shard {shard} attempt {attempt}"))
}

/// Where the fake keeps outputs: under `/out` (the coordinator stages and publishes files),
/// or in DEST as remote workers do.
#[derive(Clone, Copy)]
enum Engine {
    Local,
    Remote,
}

/// A job of one-object shards over a folder of small files, its DEST, and its stop.
struct Bench {
    _turn: tokio::sync::MutexGuard<'static, ()>,
    dir: tempfile::TempDir,
    job: Job,
    dest: DynStorage,
    shutdown: Shutdown,
    shards: u64,
}

/// A run that ended, with its journal read back.
struct Ran {
    result: RunResult,
    journal: Journal,
    dest: DynStorage,
    began: Instant,
    took: Duration,
    real: Duration,
}

impl Bench {
    async fn new(shards: u64) -> Bench {
        let turn = take_turn().await;
        let dir = tempfile::tempdir().unwrap();
        let (source, dest_path) = (dir.path().join("source"), dir.path().join("dest"));
        std::fs::create_dir_all(&source).unwrap();
        for shard in 0..shards {
            std::fs::write(source.join(format!("{shard:03}.txt")), input_of(shard)).unwrap();
        }
        let dest = crate::storage::open(&Location::Local(dest_path.clone()), &Default::default()).await.unwrap();
        let job = Job::for_tests(Location::Local(source), Location::Local(dest_path));
        Bench { _turn: turn, dir, job, dest, shutdown: Shutdown::default(), shards }
    }

    fn fake(&self, engine: Engine, slots: usize, script: impl Fn(u64, u32) -> Act + Send + Sync + 'static) -> Fake {
        match engine {
            Engine::Local => Fake::new(slots, script),
            Engine::Remote => Fake::remote(slots, self.dest.clone(), JOB_ID, script),
        }
    }

    /// Stops softly after `soft`, and hard after `hard`, counted from now.
    fn stop_after(&self, soft: Option<Duration>, hard: Option<Duration>) {
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let start = Instant::now();
            if let Some(soft) = soft {
                tokio::time::sleep_until(start + soft).await;
                shutdown.soft.cancel();
            }
            if let Some(hard) = hard {
                tokio::time::sleep_until(start + hard).await;
                shutdown.hard.cancel();
            }
        });
    }

    fn shard(&self, id: u64) -> Shard {
        let object = ObjectMeta::new(format!("{id:03}.txt"), input_of(id).len() as u64);
        Shard { id, input: ShardInput::Objects { objects: vec![object] } }
    }

    /// Runs the job to its end on `fake`, its plan known from the start.
    async fn run(&self, fake: &Fake) -> Ran {
        let (began, real) = (Instant::now(), std::time::Instant::now());
        let (tx, shards) = tokio::sync::mpsc::channel(self.shards as usize + 1);
        for id in 0..self.shards {
            tx.try_send(Ok(Planned::Shard(self.shard(id)))).unwrap();
        }
        let bytes = (0..self.shards).map(|id| input_of(id).len() as u64).sum();
        let totals = PlanTotals { shards: self.shards, objects: self.shards, bytes, elapsed_ms: 0 };
        tx.try_send(Ok(Planned::Done(totals))).unwrap();
        let connected = fake.clone();
        let executor: ExecutorFactory = Box::new(move |results| {
            connected.connect(results);
            Box::new(connected)
        });
        let manifest = Manifest::new(self.dest.clone(), JOB_ID);
        let document = JobDocument {
            job_id: JOB_ID.into(),
            fanout_version: "test".into(),
            created: timestamp(SystemTime::now()),
            job: self.job.clone(),
            function: FunctionIdentity { sha256: "0".repeat(64), kind: FunctionKind::Module },
            plan: PlanState::default(),
            watch: false,
            emitted: false,
        };
        let Location::Local(source) = &self.job.input.source else { unreachable!("a folder") };
        let source = crate::storage::open(&Location::Local(source.clone()), &Default::default()).await.unwrap();
        let setup = RunSetup {
            job: self.job.clone(),
            document,
            write_job_document: true,
            manifest: manifest.clone(),
            source: Reader::Store(source),
            dest: self.dest.clone(),
            executor,
            prior: Journal::default(),
            record_plan: true,
            staging_root: self.dir.path().join("staging"),
            events: EventSink::channel().0,
            shutdown: self.shutdown.clone(),
            watch: None,
            on_commit: None,
        };
        let ended = tokio::time::timeout(NEVER, execute(RunSpec { setup, shards })).await;
        let result = ended
            .expect("the run did not end within an hour of virtual time")
            .expect("the run succeeds or fails, without an error");
        let (took, real) = (began.elapsed(), real.elapsed());
        let journal = manifest.read_journal().await.unwrap();
        eprintln!("{took:?} of virtual time in {real:?}");
        Ran { result, journal, dest: self.dest.clone(), began, took, real }
    }
}

impl Ran {
    fn record(&self, shard: u64) -> &ShardRecord {
        self.journal.latest.get(&shard).unwrap_or_else(|| panic!("shard {shard} has no record"))
    }

    async fn output(&self, shard: u64) -> Option<String> {
        let body = self.dest.get(&output_of(shard)).await.ok()?;
        Some(String::from_utf8(body.to_vec()).unwrap())
    }

    /// The paused clock ran the job: it took less real time than virtual time.
    fn was_virtual(&self) {
        assert!(self.real < self.took, "{:?} of real time for {:?} of virtual time", self.real, self.took);
    }
}

fn ran_for(seen: &Seen) -> Duration {
    seen.ended.expect("ended") - seen.started.expect("started")
}

fn within(value: Duration, low: Duration, what: &str) {
    assert!(value >= low && value < low + SLACK, "{what}: {value:?}, expected {low:?} (+{SLACK:?} at most)");
}

#[tokio::test(start_paused = true)]
async fn retries_wait_the_backoff_doubling_each_time() {
    let mut bench = Bench::new(3).await;
    bench.job.retry.backoff_ms = 300;
    let fake = bench.fake(Engine::Local, 4, |shard, attempt| match (shard, attempt) {
        (0, 1) => Act::fail(1000, Outcome::Exit(1)),
        (0, 2) => Act::fail(500, Outcome::Trap("unreachable".into())),
        (shard, attempt) => writes(shard, attempt, 100),
    });
    let ran = bench.run(&fake).await;
    let tries = fake.attempts_of(0);
    assert_eq!(tries.len(), 3, "{tries:?}");
    let backoff = bench.job.retry.backoff();
    assert_eq!(backoff_before(3, backoff), Duration::from_millis(600), "the second retry waits twice as long");
    for (n, pair) in tries.windows(2).enumerate() {
        let waited = pair[1].started.unwrap() - pair[0].ended.unwrap();
        within(waited, backoff_before(n as u32 + 2, backoff), &format!("the wait before attempt {}", n + 2));
    }
    let record = ran.record(0);
    assert_eq!((record.status, record.attempts, record.outcome), (ShardStatus::Ok, 3, OutcomeKind::Ok));
    let earlier: Vec<OutcomeKind> = record.earlier.iter().map(|span| span.outcome).collect();
    assert_eq!(earlier, [OutcomeKind::Exit, OutcomeKind::Trap]);
    assert_eq!(ran.output(0).await.as_deref(), Some("shard 0 attempt 3"), "only the last attempt published");
    assert_eq!(ran.result.stats.retries, 2);
    assert!(ran.result.succeeded);
    within(ran.took, Duration::from_millis(1000 + 300 + 500 + 600 + 100), "the run");
    ran.was_virtual();
}

#[tokio::test(start_paused = true)]
async fn retries_stop_at_the_last_attempt_and_the_shard_fails() {
    let bench = Bench::new(2).await;
    let fake = bench.fake(Engine::Remote, 4, |shard, attempt| match shard {
        1 => Act::fail(200, Outcome::Trap("wasm trap: unreachable".into())),
        _ => writes(shard, attempt, 100),
    });
    let ran = bench.run(&fake).await;
    let tries = fake.attempts_of(1);
    assert_eq!(tries.len(), bench.job.retry.attempts as usize, "no attempt beyond retry.attempts");
    assert!(tries.iter().all(|t| matches!(t.outcome, Some(Outcome::Trap(_))) && t.answers == 1));
    let span = tries[2].ended.unwrap() - tries[0].started.unwrap();
    within(span, Duration::from_millis(3 * 200 + 200 + 400), "three attempts and two backoffs");
    let record = ran.record(1);
    assert_eq!((record.status, record.attempts, record.outcome), (ShardStatus::Failed, 3, OutcomeKind::Trap));
    assert!(record.error.as_deref().is_some_and(|e| e.contains("unreachable")), "{:?}", record.error);
    assert_eq!(record.earlier.len(), 2);
    assert_eq!(ran.record(0).status, ShardStatus::Ok);
    let log = Manifest::new(ran.dest.clone(), JOB_ID).get("logs/00001.txt").await.expect("a failure's log");
    assert!(!log.is_empty());
    assert_eq!((ran.result.stats.shards_failed, ran.result.stats.retries), (1, 2));
    assert!(!ran.result.succeeded, "a failed shard fails the job (retry.tolerated is 0)");
    ran.was_virtual();
}

#[tokio::test(start_paused = true)]
async fn a_straggler_gets_a_backup_and_the_first_to_finish_wins() {
    // 18 of 20 shards take 1 s. Shard 18 would never end, and its backup takes 1 s; shard 19
    // takes 5 s, and its backup would never end. Backups start once 90% are done, for
    // attempts running 3x the median (3 s).
    let bench = Bench::new(20).await;
    let fake = bench.fake(Engine::Remote, 32, |shard, attempt| match (shard, attempt) {
        (18, 1) | (19, 2) => Act::Hang,
        (19, 1) => writes(19, 1, 5000),
        (shard, attempt) => writes(shard, attempt, 1000),
    });
    let ran = bench.run(&fake).await;
    assert_eq!(fake.seen().len(), 22, "one backup each for the two stragglers, none for the others");
    let median_times_factor = Duration::from_secs(3);
    let [original, backup]: [Seen; 2] = fake.attempts_of(18).try_into().expect("two attempts of shard 18");
    assert!(backup.backup && !original.backup);
    within(backup.started.unwrap() - original.started.unwrap(), median_times_factor, "shard 18's backup");
    assert_eq!((&backup.outcome, &original.outcome), (&Some(Outcome::Ok), &Some(Outcome::Cancelled)));
    within(original.ended.unwrap() - backup.ended.unwrap(), Duration::ZERO, "the loser cancelled when the backup won");
    let [original, backup]: [Seen; 2] = fake.attempts_of(19).try_into().expect("two attempts of shard 19");
    within(backup.started.unwrap() - original.started.unwrap(), median_times_factor, "shard 19's backup");
    assert_eq!((&original.outcome, &backup.outcome), (&Some(Outcome::Ok), &Some(Outcome::Cancelled)));
    within(ran_for(&original), Duration::from_secs(5), "shard 19's original");
    within(
        backup.ended.unwrap() - original.ended.unwrap(),
        Duration::ZERO,
        "the backup cancelled when the original won",
    );
    assert!(ran.record(18).backup && !ran.record(19).backup);
    assert_eq!(ran.output(18).await.as_deref(), Some("shard 18 attempt 2"));
    assert_eq!(ran.output(19).await.as_deref(), Some("shard 19 attempt 1"));
    assert_eq!((ran.result.stats.backups, ran.result.stats.backups_won), (2, 1));
    assert!(ran.result.succeeded);
    within(ran.took, Duration::from_secs(5), "the run");
    ran.was_virtual();
}

#[tokio::test(start_paused = true)]
async fn a_relative_timeout_cancels_an_attempt_far_beyond_the_median() {
    // timeout = "200%": three shards take 2 s, so the fourth may run 4 s before it is stopped.
    let mut bench = Bench::new(4).await;
    bench.job.function.relative_timeout_percent = Some(200.0);
    bench.job.stragglers.backup = false;
    let fake = bench.fake(Engine::Remote, 4, |shard, attempt| match (shard, attempt) {
        (3, 1) => Act::Hang,
        (shard, attempt) => writes(shard, attempt, 2000),
    });
    let ran = bench.run(&fake).await;
    let [first, second]: [Seen; 2] = fake.attempts_of(3).try_into().expect("two attempts of shard 3");
    assert_eq!(first.outcome, Some(Outcome::Cancelled));
    within(ran_for(&first), Duration::from_secs(4), "the timed-out attempt");
    within(second.started.unwrap() - first.ended.unwrap(), bench.job.retry.backoff(), "the retry's backoff");
    let record = ran.record(3);
    assert_eq!((record.status, record.attempts), (ShardStatus::Ok, 2));
    assert_eq!(record.earlier.iter().map(|span| span.outcome).collect::<Vec<_>>(), [OutcomeKind::Timeout]);
    assert_eq!(ran.result.stats.outcomes.get(&OutcomeKind::Timeout), Some(&1));
    assert_eq!(ran.output(3).await.as_deref(), Some("shard 3 attempt 2"));
    ran.was_virtual();
}

#[tokio::test(start_paused = true)]
async fn a_soft_stop_lets_running_attempts_finish_and_starts_nothing_new() {
    // Two of five 10 s shards run; a soft stop at 1 s.
    let bench = Bench::new(5).await;
    let fake = bench.fake(Engine::Remote, 2, |shard, attempt| writes(shard, attempt, 10_000));
    bench.stop_after(Some(Duration::from_secs(1)), None);
    let ran = bench.run(&fake).await;
    let (ran_through, given_back): (Vec<Seen>, Vec<Seen>) = fake.seen().into_iter().partition(|s| s.started.is_some());
    assert_eq!((ran_through.len(), given_back.len()), (2, 3), "{:?}", fake.seen());
    for seen in &ran_through {
        assert_eq!(seen.outcome, Some(Outcome::Ok), "shard {} was let finish", seen.shard);
        within(ran_for(seen), Duration::from_secs(10), "a running attempt");
        assert_eq!(ran.record(seen.shard).status, ShardStatus::Ok);
        assert!(ran.output(seen.shard).await.is_some());
    }
    for seen in &given_back {
        assert_eq!((&seen.outcome, seen.answers), (&Some(Outcome::Cancelled), 1));
        within(seen.ended.unwrap() - ran.began, Duration::from_secs(1), "a queued attempt given back");
        assert!(!ran.journal.latest.contains_key(&seen.shard), "shard {} stays pending", seen.shard);
        assert!(ran.output(seen.shard).await.is_none());
    }
    assert_eq!(ran.journal.latest.len(), 2);
    assert!(ran.result.stats.stopped_early && !ran.result.succeeded);
    assert_eq!(ran.result.stats.shards_pending, 3);
    within(ran.took, Duration::from_secs(10), "the run");
    ran.was_virtual();
}

#[tokio::test(start_paused = true)]
async fn a_hard_stop_cancels_running_attempts_and_commits_nothing() {
    // Ctrl-C twice: a soft stop at 1 s, then a hard one at 2 s, over four 10 s shards that
    // stage and publish through this machine's slots.
    let bench = Bench::new(4).await;
    let fake = bench.fake(Engine::Local, 2, |shard, attempt| writes(shard, attempt, 10_000));
    bench.stop_after(Some(Duration::from_secs(1)), Some(Duration::from_secs(2)));
    let ran = bench.run(&fake).await;
    let (cancelled, given_back): (Vec<Seen>, Vec<Seen>) = fake.seen().into_iter().partition(|s| s.started.is_some());
    assert_eq!((cancelled.len(), given_back.len()), (2, 2), "{:?}", fake.seen());
    for seen in &cancelled {
        assert_eq!((&seen.outcome, seen.answers), (&Some(Outcome::Cancelled), 1));
        within(seen.ended.unwrap() - ran.began, Duration::from_secs(2), "a running attempt cancelled");
    }
    for seen in &given_back {
        within(seen.ended.unwrap() - ran.began, Duration::from_secs(1), "a queued attempt given back");
    }
    assert!(ran.journal.latest.is_empty(), "nothing committed: {:?}", ran.journal.latest.keys());
    for shard in 0..4 {
        assert!(ran.output(shard).await.is_none(), "shard {shard} published nothing");
    }
    assert!(ran.result.stats.stopped_early && !ran.result.succeeded);
    assert_eq!(ran.result.stats.shards_pending, 4);
    within(ran.took, Duration::from_secs(2), "the run");
    ran.was_virtual();
}
