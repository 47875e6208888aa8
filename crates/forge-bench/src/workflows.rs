//! `forge-bench workflows`: a 3-step no-op workflow, measured against no-op jobs in the same
//! run.
//!
//! * **jobs/s**: no-op jobs end to end (as `forge-bench jobs` measures them), the yardstick.
//! * **SQL statements per workflow**: every statement this process sends (sqlx reports each on
//!   its `sqlx::query` tracing target, `BEGIN` and `COMMIT` included), counted while
//!   workflows run one at a time from start to `completed`, and grouped by statement. The
//!   node's background work in that window (polls, lease renewals, the lease reaper) is
//!   counted too, and shown apart. Nothing else runs on the database.
//! * **step→listener latency**: from the moment step `one` returned to the moment the
//!   notification of its completion (the workflow's current step becoming `two`) reached a
//!   `LISTEN` connection of the node, the one the gateway fans out from. Measured on an idle
//!   node (one workflow every 20 ms) and for every workflow of the throughput run.
//! * **workflows/s**: `--count` workflows started in batches of 1,000
//!   ([`Forge::start_workflows`]) as fast as they go in, from the first start to the last
//!   `completed` seen on `forge_workflow_updates`, one worker node in this process.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use forge::prelude::*;
use forge::updates::Event;
use forge_test_support::TestDb;
use tokio::sync::{broadcast, mpsc};
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event as TraceEvent, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use uuid::Uuid;

/// When step `one` of each workflow returned (its first run, not a replay's).
static STEP_ONE_DONE: OnceLock<Mutex<HashMap<Uuid, Instant>>> = OnceLock::new();

fn step_one_done() -> &'static Mutex<HashMap<Uuid, Instant>> {
    STEP_ONE_DONE.get_or_init(Default::default)
}

/// Three steps that do nothing: what is measured is the engine around them.
#[forge::workflow(steps = ["one", "two", "three"])]
async fn bench_three_steps(ctx: &WorkflowContext) -> Result<()> {
    let id = ctx.workflow_id();
    ctx.step("one", move || async move {
        step_one_done().lock().unwrap().insert(id, Instant::now());
        Ok(())
    })
    .await?;
    ctx.step("two", || async { Ok(()) }).await?;
    ctx.step("three", || async { Ok(()) }).await?;
    Ok(())
}

/// A node steps at most `concurrency` workflows at once, and each no-op workflow spends nearly
/// all its time waiting for its step's group commit, so the node's default (sized for jobs
/// that use a core) would measure the slots, not the engine. Workflows that wait on I/O want
/// the same setting in production (docs/concepts.md, Workflows).
pub(crate) const DEFAULT_CONCURRENCY: usize = 256;

pub(crate) struct Settings {
    pub(crate) count: usize,
    pub(crate) samples: usize,
    pub(crate) concurrency: usize,
}

type BenchResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Counts the statements sqlx reports, by statement, while `on`.
#[derive(Default)]
pub(crate) struct StatementCounter {
    pub(crate) on: AtomicBool,
    /// Statement (its first words) → how many, and their total time in seconds.
    pub(crate) counts: Mutex<BTreeMap<String, (u64, f64)>>,
}

static COUNTER: OnceLock<Arc<StatementCounter>> = OnceLock::new();

struct CountLayer(Arc<StatementCounter>);

/// The statement's text: sqlx gives the whole SQL in `db.statement` when it is longer than
/// its 4-word `summary`.
#[derive(Default)]
struct Sql {
    summary: String,
    full: String,
    secs: f64,
}

impl Visit for Sql {
    fn record_f64(&mut self, field: &Field, value: f64) {
        if field.name() == "elapsed_secs" {
            self.secs = value;
        }
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "summary" => self.summary = value.to_string(),
            "db.statement" => self.full = value.to_string(),
            _ => {}
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "summary" {
            self.summary = format!("{value:?}").trim_matches('"').to_string();
        }
    }
}

impl<S: Subscriber> Layer<S> for CountLayer {
    fn register_callsite(&self, meta: &'static Metadata<'static>) -> Interest {
        if meta.target() == "sqlx::query" {
            Interest::always()
        } else {
            Interest::never()
        }
    }

    fn on_event(&self, event: &TraceEvent<'_>, _ctx: Context<'_, S>) {
        if !self.0.on.load(Ordering::Relaxed) {
            return;
        }
        let mut sql = Sql::default();
        event.record(&mut sql);
        let text = if sql.full.trim().is_empty() {
            sql.summary
        } else {
            sql.full
        };
        let words: Vec<&str> = text.split_whitespace().take(12).collect();
        let mut counts = self.0.counts.lock().unwrap();
        let entry = counts.entry(words.join(" ")).or_default();
        entry.0 += 1;
        entry.1 += sql.secs;
    }
}

pub(crate) fn counter() -> Arc<StatementCounter> {
    COUNTER
        .get_or_init(|| {
            let counter = Arc::new(StatementCounter::default());
            let subscriber = tracing_subscriber::registry().with(CountLayer(counter.clone()));
            tracing::subscriber::set_global_default(subscriber)
                .expect("no other tracing subscriber is installed");
            counter
        })
        .clone()
}

/// Statements of the node's background loops, not of any one workflow.
/// Claims and the look for the next due job follow every wake of the worker; they are counted
/// as the workflow's, although some are the worker's idle polling.
fn is_background(sql: &str) -> bool {
    [
        "UPDATE forge.jobs j SET lease_expires_at",
        "UPDATE forge.jobs j SET status = CASE WHEN j.status = 'cancel_requested' THEN",
    ]
    .iter()
    .any(|p| sql.starts_with(p))
}

pub(crate) async fn workflows(s: Settings) -> BenchResult<()> {
    let counter = counter();
    let config = WorkerConfig {
        concurrency: s.concurrency,
        ..WorkerConfig::default()
    };
    println!(
        "forge-bench workflows: a 3-step no-op workflow; {} for throughput, {} counted one at a time, worker concurrency {}",
        s.count, s.samples, config.concurrency
    );
    let jobs_per_sec = crate::noop_jobs_per_sec(s.count, config.clone(), None).await?;
    println!(
        "no-op jobs:          {jobs_per_sec:>7.0} jobs/s  ({} jobs end to end, the yardstick)",
        s.count
    );

    let db = TestDb::new().await;
    let forge = Forge::connect_with(&db.url, 50).await?;
    let worker = forge.start_worker(config).await?;
    let mut events = forge.notifier().await?.subscribe();
    let mut latencies = Vec::new();

    // Warm-up: connections opened, statements prepared.
    for _ in 0..20 {
        let id = forge.start_workflow(bench_three_steps::request()).await?;
        wait_all_completed(&forge, &mut events, HashSet::from([id]), &mut latencies).await?;
    }

    // Step→listener latency on an idle node.
    latencies.clear();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..s.samples {
        tick.tick().await;
        let id = forge.start_workflow(bench_three_steps::request()).await?;
        wait_all_completed(&forge, &mut events, HashSet::from([id]), &mut latencies).await?;
    }
    print_latencies(
        "step→listener, idle:",
        &latencies,
        "one workflow every 20 ms",
    );

    // Statements, one workflow at a time.
    counter.counts.lock().unwrap().clear();
    counter.on.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    for _ in 0..s.samples {
        let id = forge.start_workflow(bench_three_steps::request()).await?;
        wait_all_completed(&forge, &mut events, HashSet::from([id]), &mut latencies).await?;
    }
    let one_at_a_time = t0.elapsed();
    counter.on.store(false, Ordering::SeqCst);
    let counts = std::mem::take(&mut *counter.counts.lock().unwrap());
    let n = s.samples as f64;
    let (mut own, mut background) = (0u64, 0u64);
    println!(
        "SQL statements per workflow, one at a time ({} workflows, {:.2} ms each), with their mean time:",
        s.samples,
        ms(one_at_a_time) / n
    );
    let mut rows: Vec<_> = counts.iter().map(|(sql, c)| (sql.as_str(), *c)).collect();
    // sqlx does not report the `BEGIN` that opens a transaction: one per COMMIT or ROLLBACK.
    let begins: u64 = rows
        .iter()
        .filter(|(sql, _)| *sql == "COMMIT" || *sql == "ROLLBACK")
        .map(|(_, (c, _))| c)
        .sum();
    rows.push((
        "BEGIN (not reported by sqlx: one per COMMIT/ROLLBACK)",
        (begins, 0.0),
    ));
    rows.sort_by_key(|r| std::cmp::Reverse(r.1 .0));
    for (sql, (count, secs)) in rows {
        let bg = is_background(sql);
        if bg {
            background += count;
        } else {
            own += count;
        }
        let mean = if count > 0 && secs > 0.0 {
            format!("{:>6.3} ms", secs * 1000.0 / count as f64)
        } else {
            "         ".into()
        };
        println!(
            "  {:>6.2}  {mean}  {sql}{}",
            count as f64 / n,
            if bg { "  (background)" } else { "" }
        );
    }
    println!(
        "statements/workflow: {:.2} for the workflow (start, claim, job start, load, 3 steps, end, job finish, with their transactions), plus {:.2} of the node's background work in the same time",
        own as f64 / n,
        background as f64 / n
    );

    // Throughput: every workflow started, in batches, as fast as they go in.
    const START_BATCH: usize = 1_000;
    step_one_done().lock().unwrap().clear();
    latencies.clear();
    counter.counts.lock().unwrap().clear();
    counter.on.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let (ids_tx, ids_rx) = mpsc::unbounded_channel();
    let starter = {
        let forge = forge.clone();
        let count = s.count;
        tokio::spawn(async move {
            let mut left = count;
            while left > 0 {
                let n = START_BATCH.min(left);
                let reqs = (0..n).map(|_| bench_three_steps::request());
                let _ = ids_tx.send(forge.start_workflows(reqs).await?);
                left -= n;
            }
            Ok::<_, forge::error::StartError>(t0.elapsed())
        })
    };
    let done = wait_started_completed(&forge, &mut events, ids_rx, &mut latencies).await?;
    let started = starter.await??;
    counter.on.store(false, Ordering::SeqCst);
    let total: u64 = {
        let counts = counter.counts.lock().unwrap();
        let commits: u64 = ["COMMIT", "ROLLBACK"]
            .iter()
            .filter_map(|k| counts.get(*k).map(|c| c.0))
            .sum();
        counts.values().map(|c| c.0).sum::<u64>() + commits
    };
    let per_sec = s.count as f64 / (done - t0).as_secs_f64();
    println!(
        "throughput:          {per_sec:>7.0} workflows/s  ({} workflows in {:.1} ms, all started within {:.1} ms in batches of {START_BATCH}; {:.2} statements/workflow under this load)",
        s.count,
        ms(done - t0),
        ms(started),
        total as f64 / s.count as f64
    );
    println!(
        "workflows/s ÷ no-op jobs/s: {:.3}  (each workflow is 3 steps: {:.0} steps/s)",
        per_sec / jobs_per_sec,
        3.0 * per_sec
    );
    let starting = t0 + started;
    let (during, after): (Vec<_>, Vec<_>) = latencies.iter().partition(|s| s.0 < starting);
    print_latencies(
        "step→listener, load:",
        &latencies,
        "every workflow of the throughput run",
    );
    print_latencies(
        "  while starting:",
        &during,
        "steps that ended while starts went in",
    );
    print_latencies("  after:", &after, "the others");

    worker.shutdown().await;
    forge.close().await;
    Ok(())
}

fn print_latencies(title: &str, samples: &[(Instant, Duration)], how: &str) {
    let mut latencies: Vec<Duration> = samples.iter().map(|s| s.1).collect();
    if latencies.is_empty() {
        println!("{title:<21}no samples (the listener lagged and the bench polled instead)");
        return;
    }
    latencies.sort();
    let pct = |p: f64| latencies[((p * latencies.len() as f64).ceil() as usize).max(1) - 1];
    println!(
        "{title:<21}p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms  ({} samples, {how})",
        ms(pct(0.50)),
        ms(pct(0.90)),
        ms(pct(0.99)),
        ms(latencies[latencies.len() - 1]),
        latencies.len()
    );
}

/// Waits until every workflow of `pending` was published as `completed`; see
/// [`wait_started_completed`].
async fn wait_all_completed(
    forge: &Forge,
    events: &mut broadcast::Receiver<Event>,
    pending: HashSet<Uuid>,
    latencies: &mut Vec<(Instant, Duration)>,
) -> BenchResult<Instant> {
    let (tx, rx) = mpsc::unbounded_channel();
    let _ = tx.send(pending.into_iter().collect());
    drop(tx);
    wait_started_completed(forge, events, rx, latencies).await
}

/// Waits until every workflow whose id comes on `ids` (until it closes) was published as
/// `completed`; returns when the last one was. Updates are read while starts still go in, so
/// that each is timed when it arrives. If the notifier's channel overflowed, the database
/// says when all are done. Adds to `latencies` the time from each step `one` returning to
/// its completion's notification.
async fn wait_started_completed(
    forge: &Forge,
    events: &mut broadcast::Receiver<Event>,
    mut ids: mpsc::UnboundedReceiver<Vec<Uuid>>,
    latencies: &mut Vec<(Instant, Duration)>,
) -> BenchResult<Instant> {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut pending = HashSet::new();
    // Completed before their start call returned.
    let mut early = HashSet::new();
    let mut starting = true;
    while starting || !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(format!("{} workflows did not complete in time", pending.len()).into());
        }
        tokio::select! {
            batch = ids.recv(), if starting => match batch {
                Some(batch) => {
                    for id in batch {
                        if !early.remove(&id) {
                            pending.insert(id);
                        }
                    }
                }
                None => starting = false,
            },
            event = tokio::time::timeout(Duration::from_secs(1), events.recv()) => match event {
                Ok(Ok(Event::WorkflowUpdates(updates))) => {
                    let seen = Instant::now();
                    for u in updates.decode()? {
                        if u.step.as_deref() == Some("two") {
                            if let Some(done) =
                                step_one_done().lock().unwrap().remove(&u.workflow_id)
                            {
                                latencies.push((done, seen - done));
                            }
                        }
                        let s = u.status;
                        if s == WorkflowStatus::Completed {
                            // A completion can outrun the batch of ids its start belongs to.
                            if !pending.remove(&u.workflow_id) {
                                early.insert(u.workflow_id);
                            }
                        } else if s.is_terminal() || s == WorkflowStatus::Compensating {
                            return Err(format!("workflow {} ended {s}", u.workflow_id).into());
                        }
                    }
                }
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                    eprintln!("(the bench's subscriber lagged by {n} notifications; polling instead)");
                    while let Some(batch) = ids.recv().await {
                        pending.extend(batch);
                    }
                    pending.extend(early.drain());
                    let ids: Vec<Uuid> = pending.into_iter().collect();
                    loop {
                        let rows = forge.store().get_workflows(&ids).await?;
                        if rows.iter().all(|r| r.status == WorkflowStatus::Completed) {
                            return Ok(Instant::now());
                        }
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err("notifier stopped".into())
                }
            },
        }
    }
    Ok(Instant::now())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
