//! Resource isolation: request load cannot starve the work that keeps jobs alive. The worker's
//! claims, writes and lease renewals run on the internal pool, so a request pool held by slow
//! queries does not let a running job's lease run out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use forge::prelude::*;
use forge::DatabaseConfig;
use forge_test_support::{wait_for, TestDb};
use sqlx::PgPool;

/// Set by the test when the job may end. In-process on purpose: waiting at a gate in the
/// database would need the request pool the test keeps busy.
static RELEASE: AtomicBool = AtomicBool::new(false);

#[forge::job(max_attempts = 3)]
async fn outlives_its_lease(ctx: &JobContext) -> Result<()> {
    ctx.progress(10, "started").await?;
    while !RELEASE.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

#[tokio::test]
async fn a_saturated_request_pool_lets_no_lease_expire() {
    let db = TestDb::new().await;
    let forge = Forge::connect_with_config(
        &db.url,
        DatabaseConfig {
            max_connections: 2,
            // Long, so that the saturating queries queue rather than fail.
            acquire_timeout: Duration::from_secs(30),
            ..DatabaseConfig::default()
        },
    )
    .await
    .unwrap();
    let lease = Duration::from_secs(1);
    let worker = forge
        .start_worker(WorkerConfig {
            concurrency: 2,
            poll_interval: Duration::from_millis(50),
            lease,
            heartbeat_interval: Duration::from_millis(250),
            reap_interval: Duration::from_millis(100),
            ..WorkerConfig::default()
        })
        .await
        .unwrap();
    // The test's own eyes on the database, outside the node's pools.
    let observer = PgPool::connect(&db.url).await.unwrap();

    let id = forge.enqueue(outlives_its_lease::request()).await.unwrap();
    wait_for("the job to run", Duration::from_secs(10), || async {
        let s: String = sqlx::query_scalar("SELECT status FROM forge.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(&observer)
            .await
            .ok()?;
        (s == "running").then_some(())
    })
    .await;

    // Four slow queries for two connections: the pool stays saturated for 4 leases.
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let pool = forge.pool().clone();
            tokio::spawn(async move {
                sqlx::query("SELECT pg_sleep(2)")
                    .execute(&pool)
                    .await
                    .unwrap();
            })
        })
        .collect();
    wait_for(
        "the request pool to be saturated",
        Duration::from_secs(5),
        || async {
            let p = forge.pool();
            (p.size() == 2 && p.num_idle() == 0).then_some(())
        },
    )
    .await;

    // While it is, the job's lease keeps being renewed and nobody takes the job over.
    let watch_until = tokio::time::Instant::now() + 3 * lease;
    while tokio::time::Instant::now() < watch_until {
        let (status, attempts, lease_left_ms): (String, i32, f64) = sqlx::query_as(
            "SELECT status, attempts,
                    extract(epoch FROM lease_expires_at - now())::float8 * 1000
             FROM forge.jobs WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&observer)
        .await
        .unwrap();
        assert_eq!((status.as_str(), attempts), ("running", 1));
        assert!(
            lease_left_ms > 0.0,
            "the lease ran out while requests held the pool ({lease_left_ms:.0} ms left)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        forge.pool().num_idle() == 0,
        "the pool must still be saturated at the end of the watch"
    );

    RELEASE.store(true, Ordering::SeqCst);
    wait_for("the job to complete", Duration::from_secs(15), || async {
        let (s, attempts): (String, i32) =
            sqlx::query_as("SELECT status, attempts FROM forge.jobs WHERE id = $1")
                .bind(id)
                .fetch_one(&observer)
                .await
                .ok()?;
        (s == "completed").then_some(attempts)
    })
    .await;
    let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM forge.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(&observer)
        .await
        .unwrap();
    assert_eq!(attempts, 1, "the job ran once");
    for s in slow {
        s.await.unwrap();
    }
    worker.shutdown().await;
    forge.close().await;
}
