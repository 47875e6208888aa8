//! `forge-bench workflows`: a 3-step no-op workflow, measured two ways.
//!
//! * **SQL statements per workflow**: every statement this process sends (sqlx reports each on
//!   its `sqlx::query` tracing target, `BEGIN` and `COMMIT` included), counted while
//!   workflows run one at a time from start to `completed`, and grouped by statement. The
//!   node's background work in that window (polls, lease renewals, the lease reaper) is
//!   counted too, and shown apart. Nothing else runs on the database.
//! * **workflows/s**: `--count` workflows started at once (from 64 tasks), from the first
//!   start to the last `completed` seen on `forge_workflow_updates`, one worker node in this
//!   process.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use forge::prelude::*;
use forge::updates::Event;
use forge_test_support::TestDb;
use tokio::sync::broadcast;
use tracing::field::{Field, Visit};
use tracing::subscriber::Interest;
use tracing::{Event as TraceEvent, Metadata, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use uuid::Uuid;

/// Three steps that do nothing: what is measured is the engine around them.
#[forge::workflow(steps = ["one", "two", "three"])]
async fn bench_three_steps(ctx: &WorkflowContext) -> Result<()> {
    ctx.step("one", || async { Ok(()) }).await?;
    ctx.step("two", || async { Ok(()) }).await?;
    ctx.step("three", || async { Ok(()) }).await?;
    Ok(())
}

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
    let db = TestDb::new().await;
    let forge = Forge::connect_with(&db.url, 50).await?;
    let worker = forge.start_worker(config).await?;
    let mut events = forge.notifier().await?.subscribe();

    // Warm-up: connections opened, statements prepared.
    for _ in 0..20 {
        let id = forge.start_workflow(bench_three_steps::request()).await?;
        wait_all_completed(&forge, &mut events, HashSet::from([id])).await?;
    }

    // Statements, one workflow at a time.
    counter.counts.lock().unwrap().clear();
    counter.on.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    for _ in 0..s.samples {
        let id = forge.start_workflow(bench_three_steps::request()).await?;
        wait_all_completed(&forge, &mut events, HashSet::from([id])).await?;
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

    // Throughput: everything started at once.
    counter.counts.lock().unwrap().clear();
    counter.on.store(true, Ordering::SeqCst);
    let t0 = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let per_task = s.count.div_ceil(64);
    let mut starters = Vec::new();
    for t in 0..64 {
        let forge = forge.clone();
        let tx = tx.clone();
        let n = per_task.min(s.count.saturating_sub(t * per_task));
        starters.push(tokio::spawn(async move {
            for _ in 0..n {
                let id = forge.start_workflow(bench_three_steps::request()).await?;
                let _ = tx.send(id);
            }
            Ok::<_, forge::error::StartError>(())
        }));
    }
    drop(tx);
    for s in starters {
        s.await??;
    }
    let started = t0.elapsed();
    let mut ids = HashSet::new();
    while let Some(id) = rx.recv().await {
        ids.insert(id);
    }
    let done = wait_all_completed(&forge, &mut events, ids).await?;
    counter.on.store(false, Ordering::SeqCst);
    let total: u64 = {
        let counts = counter.counts.lock().unwrap();
        let commits: u64 = ["COMMIT", "ROLLBACK"]
            .iter()
            .filter_map(|k| counts.get(*k).map(|c| c.0))
            .sum();
        counts.values().map(|c| c.0).sum::<u64>() + commits
    };
    println!(
        "throughput:          {:>7.0} workflows/s  ({} workflows in {:.1} ms, all started within {:.1} ms; {:.2} statements/workflow under this load)",
        s.count as f64 / (done - t0).as_secs_f64(),
        s.count,
        ms(done - t0),
        ms(started),
        total as f64 / s.count as f64
    );

    worker.shutdown().await;
    forge.close().await;
    Ok(())
}

/// Waits until every workflow of `pending` was published as `completed`; returns when the last
/// one was. If the notifier's channel overflowed, the database says when all are done.
async fn wait_all_completed(
    forge: &Forge,
    events: &mut broadcast::Receiver<Event>,
    mut pending: HashSet<Uuid>,
) -> BenchResult<Instant> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(format!("{} workflows did not complete in time", pending.len()).into());
        }
        match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            Ok(Ok(Event::WorkflowUpdates(updates))) => {
                for u in updates.decode()? {
                    match u.status {
                        WorkflowStatus::Completed => {
                            pending.remove(&u.workflow_id);
                        }
                        s if s.is_terminal() || s == WorkflowStatus::Compensating => {
                            return Err(format!("workflow {} ended {s}", u.workflow_id).into());
                        }
                        _ => {}
                    }
                }
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                eprintln!("(the bench's subscriber lagged by {n} notifications; polling instead)");
                let ids: Vec<Uuid> = pending.into_iter().collect();
                loop {
                    let rows = forge.store().get_workflows(&ids).await?;
                    if rows.iter().all(|r| r.status == WorkflowStatus::Completed) {
                        return Ok(Instant::now());
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => return Err("notifier stopped".into()),
        }
    }
    Ok(Instant::now())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
