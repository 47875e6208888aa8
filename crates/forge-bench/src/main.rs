//! Forge's benchmarks. Each run creates its own fresh database on the server at `DATABASE_URL`
//! (default: the local server on 127.0.0.1:5432) and drops it afterwards.
//!
//! ```sh
//! cargo run --release -p forge-bench -- jobs                # 50,000 jobs, 500 latency samples
//! cargo run --release -p forge-bench -- jobs --count 100000 --samples 1000 --concurrency 256
//! cargo run --release -p forge-bench -- workflows           # 50,000 workflows, concurrency 256
//! cargo build --release -p fault-node && cargo run --release -p forge-bench -- faults
//! cargo run --release -p forge-bench -- soak --duration 3m --rate 2000 --keep 10s
//! ```
//!
//! `faults` runs every fault scenario (database restart, crash, outage, LISTEN loss, killed,
//! partitioned and terminated nodes) and prints one table (see `faults.rs`).
//!
//! `soak` runs jobs at a steady rate with retention on and prints the jobs table's size and
//! the node's memory every 10 s (see `soak.rs`); CI does not run it.
//!
//! `workflows` prints no-op jobs/s, the SQL statements one 3-step no-op workflow costs, the
//! latency from a step's end to its notification, and workflows/s with their ratio to jobs/s
//! (see `workflows.rs`). Its worker concurrency defaults to 256, not the node's default: a node
//! steps at most `concurrency` workflows at once, and a no-op workflow spends its time waiting
//! for its own durable writes, not on a core.
//!
//! `jobs` prints three numbers:
//! * bulk enqueue: jobs/s of one `enqueue_many` call, no worker running;
//! * end to end: no-op jobs/s from the first enqueue (bulk) to the last `completed` status seen
//!   on `forge_job_updates`, with one worker node in the same process;
//!   Under it: the SQL statements per job this process sent (from sqlx's tracing events), and
//!   the row writes and commits per job PostgreSQL counted in the bench database;
//! * enqueue→start latency on an idle node, one job every 20 ms: from just before the enqueue
//!   call to the first line of the handler.
//!
//! `FORGE_BENCH_PGBOUNCER=host:port`, the address of a PgBouncer (>= 1.21) in transaction mode
//! in front of the same server (every database name), runs the end-to-end phase a second time
//! with the node's pools through it (its session URL direct, as docs/operations.md says) and
//! prints that rate beside the direct one.
//!
//! `FORGE_BENCH_METRICS=1` runs `jobs` with the Prometheus recorder installed (as a node with
//! `gateway.metrics` on), to measure what counting costs.
//!
//! `RUST_LOG=forge_runtime=debug,forge_bench=trace` logs each claim and write batch of the
//! worker and the steps of each latency probe, to stderr (statements are then not counted).

mod faults;
mod soak;
mod workflows;

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use forge::prelude::*;
use forge::updates::Event;
use forge_test_support::TestDb;
use tokio::sync::{broadcast, mpsc};

/// Does nothing: what is measured is the runtime around it.
#[forge::job(max_attempts = 1)]
async fn bench_noop(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

/// Where the latency probe reports the moment its handler started.
static PROBE_STARTS: OnceLock<mpsc::UnboundedSender<(u32, Instant)>> = OnceLock::new();

#[forge::job(max_attempts = 1)]
async fn bench_probe(_ctx: &JobContext, seq: u32) -> Result<()> {
    let started = Instant::now();
    tracing::trace!(seq, "probe started");
    if let Some(tx) = PROBE_STARTS.get() {
        let _ = tx.send((seq, started));
    }
    Ok(())
}

struct Settings {
    count: usize,
    samples: usize,
    concurrency: usize,
    claim_batch: usize,
}

fn usage() -> ! {
    eprintln!(
        "usage: forge-bench jobs|workflows [--count N] [--samples N] [--concurrency N] [--claim-batch N]\n       forge-bench faults [--short]\n       forge-bench soak [--duration 3m] [--rate 2000] [--keep 10s]"
    );
    std::process::exit(2);
}

fn parse_settings(mut args: impl Iterator<Item = String>, concurrency: usize) -> Settings {
    let defaults = WorkerConfig::default();
    let mut s = Settings {
        count: 50_000,
        samples: 500,
        concurrency,
        claim_batch: defaults.claim_batch,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|&v| v > 0)
            .unwrap_or_else(|| usage());
        match flag.as_str() {
            "--count" => s.count = value,
            "--samples" => s.samples = value,
            "--concurrency" => s.concurrency = value,
            "--claim-batch" => s.claim_batch = value,
            _ => usage(),
        }
    }
    s
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("jobs") => {
            // `RUST_LOG=forge_runtime=debug,forge_bench=trace` shows the worker's claims and
            // write batches, and the steps of each latency probe (statements are then not
            // counted: both need the one global tracing subscriber).
            let logging = std::env::var_os("RUST_LOG").is_some();
            if logging {
                tracing_subscriber::fmt()
                    .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                    .with_writer(std::io::stderr)
                    .init();
            }
            jobs(
                parse_settings(args, WorkerConfig::default().concurrency),
                logging,
            )
            .await
        }
        Some("workflows") => {
            let s = parse_settings(args, workflows::DEFAULT_CONCURRENCY);
            let settings = workflows::Settings {
                count: s.count,
                samples: s.samples,
                concurrency: s.concurrency,
            };
            workflows::workflows(settings).await
        }
        Some("faults") => faults::faults(args).await,
        Some("soak") => soak::soak(soak::parse(args)).await,
        _ => usage(),
    }
}

async fn jobs(s: Settings, logging: bool) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let config = WorkerConfig {
        concurrency: s.concurrency,
        claim_batch: s.claim_batch,
        ..WorkerConfig::default()
    };
    // `FORGE_BENCH_METRICS=1` records metrics into the Prometheus recorder the gateway
    // installs, as a node with `gateway.metrics` on does: the cost of counting, measured.
    let metrics = std::env::var_os("FORGE_BENCH_METRICS").is_some_and(|v| v == "1");
    if metrics {
        forge_gateway::metrics::install();
    }
    println!(
        "forge-bench jobs: {} jobs, {} latency samples, worker concurrency {}, claim batch {}, metrics {}",
        s.count,
        s.samples,
        config.concurrency,
        config.claim_batch,
        if metrics { "recorded" } else { "off" }
    );

    // Bulk enqueue, with no worker competing for the database.
    {
        let db = TestDb::new().await;
        let forge = Forge::connect(&db.url).await?;
        let reqs: Vec<_> = (0..s.count).map(|_| bench_noop::request()).collect();
        let t0 = Instant::now();
        forge.enqueue_many(reqs).await?;
        let took = t0.elapsed();
        println!(
            "bulk enqueue:       {:>9.0} jobs/s  ({} jobs in {:.1} ms)",
            s.count as f64 / took.as_secs_f64(),
            s.count,
            ms(took)
        );
        forge.close().await;
    }

    // End to end: every job enqueued at once, until the last completion is published.
    let db = TestDb::new().await;
    {
        // Counting statements costs a tracing event per statement: a few per thousand jobs.
        let counter = (!logging).then(workflows::counter);
        let forge = Forge::connect(&db.url).await?;
        let worker = forge.start_worker(config.clone()).await?;
        let mut events = forge.notifier().await?.subscribe();
        let reqs: Vec<_> = (0..s.count).map(|_| bench_noop::request()).collect();
        if let Some(c) = &counter {
            c.counts.lock().unwrap().clear();
            c.on.store(true, Ordering::SeqCst);
        }
        let t0 = Instant::now();
        let ids = forge.enqueue_many(reqs).await?;
        let enqueued = t0.elapsed();
        let took = wait_all_completed(&forge, &mut events, ids.into_iter().collect()).await?;
        if let Some(c) = &counter {
            c.on.store(false, Ordering::SeqCst);
        }
        println!(
            "end to end:         {:>9.0} jobs/s  ({} no-op jobs in {:.1} ms, enqueue {:.1} ms)",
            s.count as f64 / (took - t0).as_secs_f64(),
            s.count,
            ms(took - t0),
            ms(enqueued)
        );
        worker.shutdown().await;
        forge.close().await;
        if let Some(c) = counter {
            print_statements(&c.counts.lock().unwrap(), s.count);
        }
        print_row_writes(&db, s.count).await?;
        if let Some(bouncer) = pgbouncer_address() {
            let direct = s.count as f64 / (took - t0).as_secs_f64();
            let pooled = noop_jobs_per_sec(s.count, config.clone(), Some(&bouncer)).await?;
            println!(
                "end to end, PgBouncer: {pooled:>6.0} jobs/s  ({:.2}x direct; transaction mode at {bouncer}, session URL direct)",
                pooled / direct
            );
        }
    }

    let forge = Forge::connect(&db.url).await?;
    let worker = forge.start_worker(config).await?;

    // Latency on an idle node.
    {
        let (tx, mut starts) = mpsc::unbounded_channel();
        PROBE_STARTS.set(tx).expect("set once");
        // The first few probes warm up connections and statement caches; they are not counted.
        const WARMUP: usize = 20;
        let mut latencies = Vec::with_capacity(s.samples);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 0..(WARMUP + s.samples) as u32 {
            tick.tick().await;
            let t0 = Instant::now();
            tracing::trace!(seq, "enqueue");
            forge.enqueue(bench_probe::request(seq)).await?;
            tracing::trace!(seq, "enqueued");
            let (got, started) = tokio::time::timeout(Duration::from_secs(5), starts.recv())
                .await?
                .expect("the probe channel stays open");
            assert_eq!(got, seq, "probes start in order");
            if seq as usize >= WARMUP {
                latencies.push(started - t0);
            }
        }
        latencies.sort();
        let pct = |p: f64| latencies[((p * latencies.len() as f64).ceil() as usize).max(1) - 1];
        println!(
            "enqueue→start:      p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms  ({} samples, one every 20 ms)",
            ms(pct(0.50)),
            ms(pct(0.90)),
            ms(pct(0.99)),
            ms(*latencies.last().expect("at least one sample")),
            latencies.len()
        );
    }

    worker.shutdown().await;
    forge.close().await;
    Ok(())
}

/// `FORGE_BENCH_PGBOUNCER`: `host:port` of a transaction-mode PgBouncer.
fn pgbouncer_address() -> Option<String> {
    std::env::var("FORGE_BENCH_PGBOUNCER")
        .ok()
        .filter(|a| !a.is_empty())
}

/// `url` with its `host:port` replaced by `address`.
fn with_address(url: &str, address: &str) -> String {
    let start = url.find("//").map_or(0, |i| i + 2);
    let start = url[start..].find('@').map_or(start, |i| start + i + 1);
    let end = url[start..].find('/').map_or(url.len(), |i| start + i);
    format!("{}{address}{}", &url[..start], &url[end..])
}

/// No-op jobs/s end to end on a fresh database: every job enqueued at once, until the last
/// completion is published (the yardstick of `forge-bench workflows`). With `pgbouncer`, the
/// node's pools go through it and its session connections direct.
async fn noop_jobs_per_sec(
    count: usize,
    config: WorkerConfig,
    pgbouncer: Option<&str>,
) -> std::result::Result<f64, Box<dyn std::error::Error>> {
    let db = TestDb::new().await;
    let forge = match pgbouncer {
        None => Forge::connect(&db.url).await?,
        Some(address) => {
            let database = forge::DatabaseConfig {
                session_url: Some(db.url.clone()),
                ..forge::DatabaseConfig::default()
            };
            Forge::connect_with_config(&with_address(&db.url, address), database).await?
        }
    };
    let worker = forge.start_worker(config).await?;
    let mut events = forge.notifier().await?.subscribe();
    let reqs: Vec<_> = (0..count).map(|_| bench_noop::request()).collect();
    let t0 = Instant::now();
    let ids = forge.enqueue_many(reqs).await?;
    let done = wait_all_completed(&forge, &mut events, ids.into_iter().collect()).await?;
    worker.shutdown().await;
    forge.close().await;
    Ok(count as f64 / (done - t0).as_secs_f64())
}

/// Waits until every job of `pending` was published as `completed` and returns when the last
/// one was. If the notifier's channel overflowed, some updates were not seen: the database
/// then says when all are done (to within the polling interval).
async fn wait_all_completed(
    forge: &Forge,
    events: &mut broadcast::Receiver<Event>,
    mut pending: HashSet<uuid::Uuid>,
) -> std::result::Result<Instant, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + Duration::from_secs(300);
    while !pending.is_empty() {
        if Instant::now() > deadline {
            return Err(format!("{} jobs did not complete in time", pending.len()).into());
        }
        match tokio::time::timeout(Duration::from_secs(1), events.recv()).await {
            Ok(Ok(Event::JobUpdates(updates))) => {
                for u in updates.iter() {
                    match u.status {
                        JobStatus::Completed => {
                            pending.remove(&u.job_id);
                        }
                        JobStatus::Failed | JobStatus::DeadLetter | JobStatus::Cancelled => {
                            return Err(format!("job {} ended {}", u.job_id, u.status).into());
                        }
                        _ => {}
                    }
                }
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(n))) => {
                eprintln!("(the bench's subscriber lagged by {n} notifications; polling instead)");
                return poll_all_completed(forge, pending).await;
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => return Err("notifier stopped".into()),
        }
    }
    Ok(Instant::now())
}

async fn poll_all_completed(
    forge: &Forge,
    pending: HashSet<uuid::Uuid>,
) -> std::result::Result<Instant, Box<dyn std::error::Error>> {
    let ids: Vec<_> = pending.into_iter().collect();
    loop {
        let rows = forge.store().get_jobs(&ids).await?;
        if rows.iter().all(|r| r.status == JobStatus::Completed) {
            return Ok(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// SQL statements per job during the end-to-end run, as sqlx reported them.
fn print_statements(counts: &BTreeMap<String, (u64, f64)>, jobs: usize) {
    let mut rows: Vec<(&str, u64)> = counts.iter().map(|(k, v)| (k.as_str(), v.0)).collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.1));
    // sqlx does not report the `BEGIN` that opens a transaction: one per COMMIT or ROLLBACK.
    let begins: u64 = rows
        .iter()
        .filter(|(sql, _)| *sql == "COMMIT" || *sql == "ROLLBACK")
        .map(|r| r.1)
        .sum();
    let total = rows.iter().map(|r| r.1).sum::<u64>() + begins;
    println!(
        "  statements/job:   {:.4} ({} statements for {} jobs), the most frequent:",
        total as f64 / jobs as f64,
        total,
        jobs
    );
    for (sql, n) in rows.iter().take(8) {
        println!("    {:>7}  {}", n, sql);
    }
    if begins > 0 {
        println!("    {begins:>7}  BEGIN (not reported by sqlx)");
    }
}

/// Row writes per job during the end-to-end run, from PostgreSQL's statistics of the bench
/// database (nothing else writes there). The pool is closed first: a backend sends its
/// statistics when it exits.
async fn print_row_writes(
    db: &TestDb,
    jobs: usize,
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let pool = sqlx::PgPool::connect(&db.url).await?;
    let mut left: i64 = 1;
    for _ in 0..100 {
        left = sqlx::query_scalar(
            // The notifier's LISTEN connection (`forge-listener`) outlives the pools; it
            // writes nothing.
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database()
               AND application_name IN ('forge', 'forge-internal')",
        )
        .fetch_one(&pool)
        .await?;
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (ins, upd, hot, commits): (i64, i64, i64, i64) = sqlx::query_as(
        "SELECT t.n_tup_ins, t.n_tup_upd, t.n_tup_hot_upd, d.xact_commit
         FROM pg_stat_user_tables t, pg_stat_database d
         WHERE t.schemaname = 'forge' AND t.relname = 'jobs' AND d.datname = current_database()",
    )
    .fetch_one(&pool)
    .await?;
    let n = jobs as f64;
    println!(
        "  row writes/job:   {:.2} inserts, {:.2} updates ({:.0}% HOT); {:.4} commits/job in the database{}",
        ins as f64 / n,
        upd as f64 / n,
        if upd > 0 { 100.0 * hot as f64 / upd as f64 } else { 0.0 },
        commits as f64 / n,
        if left > 0 { " (some backends had not exited: counts may be low)" } else { "" }
    );
    pool.close().await;
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
