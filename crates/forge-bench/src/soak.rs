//! `forge-bench soak`: jobs at a steady high rate for minutes, with retention on and short
//! ages, one worker node in this process. Every 10 s it prints the jobs finished so far, the
//! rows `forge.jobs` holds, its size on disk (`pg_total_relation_size`, indexes and TOAST
//! included) and this process's resident memory. After the first rounds of retention both
//! sizes should stay flat: what is deleted is reused (autovacuum marks it free; on a server
//! with autovacuum off the bench runs `VACUUM` itself, and says so), and nothing in the node
//! grows with the jobs it has run.
//!
//! Not run in CI: it takes minutes.

use std::time::{Duration, Instant};

use forge::prelude::*;
use forge::RetentionConfig;
use forge_test_support::TestDb;

/// A short job with a progress report and a small output, like a real one.
#[forge::job(max_attempts = 1)]
async fn soak_work(ctx: &JobContext, n: u32) -> Result<String> {
    ctx.progress(50, "half way").await?;
    Ok(format!("done {n}"))
}

pub(crate) struct Settings {
    pub(crate) duration: Duration,
    /// Jobs enqueued per second.
    pub(crate) rate: usize,
    /// How long a finished job is kept.
    pub(crate) keep: Duration,
}

type BenchResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn usage() -> ! {
    eprintln!("usage: forge-bench soak [--duration 3m] [--rate 2000] [--keep 10s]");
    std::process::exit(2);
}

pub(crate) fn parse(mut args: impl Iterator<Item = String>) -> Settings {
    let mut s = Settings {
        duration: Duration::from_secs(180),
        rate: 2000,
        keep: Duration::from_secs(10),
    };
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_else(|| usage());
        match flag.as_str() {
            "--duration" => s.duration = duration(&value).unwrap_or_else(|| usage()),
            "--keep" => s.keep = duration(&value).unwrap_or_else(|| usage()),
            "--rate" => {
                s.rate = value
                    .parse()
                    .ok()
                    .filter(|&r| r > 0)
                    .unwrap_or_else(|| usage())
            }
            _ => usage(),
        }
    }
    s
}

/// `90s`, `3m`, or plain seconds.
fn duration(v: &str) -> Option<Duration> {
    let (n, unit) = match v.strip_suffix('m') {
        Some(n) => (n, 60),
        None => (v.strip_suffix('s').unwrap_or(v), 1),
    };
    n.parse::<u64>().ok().map(|n| Duration::from_secs(n * unit))
}

pub(crate) async fn soak(s: Settings) -> BenchResult<()> {
    println!(
        "forge-bench soak: {} jobs/s for {:?}, finished jobs kept {:?} (retention every 1 s)",
        s.rate, s.duration, s.keep
    );
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await?;
    let worker = forge
        .start_worker(WorkerConfig {
            retention: RetentionConfig {
                interval: Duration::from_secs(1),
                job_completed: Some(s.keep),
                job_cancelled: Some(s.keep),
                job_failed: Some(s.keep),
                job_dead_letter: Some(s.keep),
                ..RetentionConfig::default()
            },
            ..WorkerConfig::default()
        })
        .await?;
    let observer = sqlx::PgPool::connect(&db.url).await?;
    // Retention deletes; autovacuum makes the space reusable. A server with autovacuum off
    // (test servers often are) gets a VACUUM of the table every 10 s from here instead.
    let autovacuum: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&observer)
        .await?;
    let vacuum = autovacuum != "on";
    if vacuum {
        println!("(the server's autovacuum is off: this bench runs VACUUM forge.jobs every 10 s)");
    }

    // Enqueues every 50 ms what the rate asks for, from its own task.
    let enqueuer = {
        let forge = forge.clone();
        let per_tick = (s.rate / 20).max(1);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            let mut n = 0u32;
            loop {
                tick.tick().await;
                let reqs: Vec<_> = (0..per_tick)
                    .map(|i| soak_work::request(n.wrapping_add(i as u32)))
                    .collect();
                n = n.wrapping_add(per_tick as u32);
                if let Err(e) = forge.enqueue_many(reqs).await {
                    eprintln!("enqueue failed: {e}");
                }
            }
        })
    };

    println!(
        "{:>6}  {:>10}  {:>10}  {:>12}  {:>10}",
        "time", "finished", "jobs rows", "jobs table", "node RSS"
    );
    let started = Instant::now();
    let mut report = tokio::time::interval(Duration::from_secs(10));
    report.tick().await;
    while started.elapsed() < s.duration {
        report.tick().await;
        if vacuum {
            sqlx::query("VACUUM forge.jobs").execute(&observer).await?;
        }
        let (rows, size, finished): (i64, i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM forge.jobs),
                    pg_total_relation_size('forge.jobs'),
                    (SELECT n_tup_del FROM pg_stat_user_tables
                     WHERE schemaname = 'forge' AND relname = 'jobs')
                    + (SELECT count(*) FROM forge.jobs WHERE status = 'completed')",
        )
        .fetch_one(&observer)
        .await?;
        println!(
            "{:>5}s  {:>10}  {:>10}  {:>9.1} MB  {:>7.1} MB",
            started.elapsed().as_secs(),
            finished,
            rows,
            size as f64 / 1e6,
            rss_bytes().unwrap_or(0) as f64 / 1e6
        );
    }
    enqueuer.abort();
    worker.shutdown().await;
    forge.close().await;
    observer.close().await;
    Ok(())
}

/// This process's resident set size, from `/proc/self/status` (Linux).
fn rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}
