//! Retention: finished jobs and workflows (with their steps and events) are deleted once older
//! than their status's age, in batches, skipping rows someone else holds; nothing unfinished is
//! ever deleted. Ages of zero stand in for "a day later".

use std::time::Duration;

use forge::prelude::*;
use forge::RetentionConfig;
use forge_runtime::maintenance::{retain, Deleted};
use forge_test_support::{wait_for, TestDb};
use sqlx::PgPool;
use uuid::Uuid;

#[forge::job]
async fn retained_noop(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

/// Every age zero: whatever finished is old enough.
fn delete_all_finished() -> RetentionConfig {
    RetentionConfig {
        job_completed: Some(Duration::ZERO),
        job_cancelled: Some(Duration::ZERO),
        job_failed: Some(Duration::ZERO),
        job_dead_letter: Some(Duration::ZERO),
        workflow_completed: Some(Duration::ZERO),
        workflow_compensated: Some(Duration::ZERO),
        workflow_failed: Some(Duration::ZERO),
        ..RetentionConfig::default()
    }
}

/// A job row with `status`, finished `ago` before now if it is a final status, made `ago`
/// ago as its UUIDv7 says.
async fn job(pool: &PgPool, status: &str, ago: Duration) -> Uuid {
    let made = std::time::SystemTime::now() - ago - Duration::from_secs(1);
    let since = made.duration_since(std::time::UNIX_EPOCH).unwrap();
    let id = Uuid::new_v7(uuid::Timestamp::from_unix(
        uuid::NoContext,
        since.as_secs(),
        since.subsec_nanos(),
    ));
    let finished = matches!(status, "completed" | "cancelled" | "failed" | "dead_letter");
    sqlx::query(
        "INSERT INTO forge.jobs (id, function_name, args, status, finished_at)
         VALUES ($1, 'retained_noop', '{}', $2,
                 CASE WHEN $3 THEN now() - $4 * interval '1 millisecond' END)",
    )
    .bind(id)
    .bind(status)
    .bind(finished)
    .bind(ago.as_secs_f64() * 1000.0)
    .execute(pool)
    .await
    .unwrap();
    id
}

/// A workflow row with `status`, one step and one event.
async fn workflow(pool: &PgPool, status: &str) -> Uuid {
    let id = Uuid::now_v7();
    let finished = matches!(status, "completed" | "compensated" | "failed");
    sqlx::query(
        "WITH w AS (
             INSERT INTO forge.workflows (id, name, args, status, job_id, finished_at)
             VALUES ($1, 'retained', '{}', $2, $3,
                     CASE WHEN $4 THEN now() - interval '1 second' END)
             RETURNING id),
         s AS (INSERT INTO forge.workflow_steps (workflow_id, idx, name)
               SELECT id, 0, 'a' FROM w)
         INSERT INTO forge.workflow_events (workflow_id, name, payload)
         SELECT id, 'e', '{}' FROM w",
    )
    .bind(id)
    .bind(status)
    .bind(Uuid::now_v7())
    .bind(finished)
    .execute(pool)
    .await
    .unwrap();
    id
}

async fn statuses(pool: &PgPool, table: &str) -> Vec<String> {
    sqlx::query_scalar(&format!("SELECT status FROM forge.{table} ORDER BY status"))
        .fetch_all(pool)
        .await
        .unwrap()
}

async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn finished_rows_go_after_their_status_age_and_unfinished_ones_stay() {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    let pool = forge.pool();
    for status in [
        "pending",
        "running",
        "retry",
        "cancel_requested",
        "completed",
        "cancelled",
        "failed",
        "dead_letter",
    ] {
        job(pool, status, Duration::from_secs(2)).await;
    }
    for status in ["running", "waiting", "completed", "compensated", "failed"] {
        workflow(pool, status).await;
    }

    // The defaults keep everything that finished two seconds ago.
    let kept = retain(forge.store(), &RetentionConfig::default())
        .await
        .unwrap();
    assert_eq!(kept, Deleted::default());

    // Completed and cancelled jobs are due; failed ones keep their own, longer age.
    let config = RetentionConfig {
        job_completed: Some(Duration::ZERO),
        job_cancelled: Some(Duration::ZERO),
        ..RetentionConfig::default()
    };
    let d = retain(forge.store(), &config).await.unwrap();
    assert_eq!(
        d,
        Deleted {
            jobs: 2,
            workflows: 0,
            schedule_ticks: 0
        }
    );
    assert_eq!(
        statuses(pool, "jobs").await,
        [
            "cancel_requested",
            "dead_letter",
            "failed",
            "pending",
            "retry",
            "running"
        ]
    );

    let d = retain(forge.store(), &delete_all_finished()).await.unwrap();
    assert_eq!(
        d,
        Deleted {
            jobs: 2,
            workflows: 3,
            schedule_ticks: 0
        }
    );
    assert_eq!(
        statuses(pool, "jobs").await,
        ["cancel_requested", "pending", "retry", "running"]
    );
    assert_eq!(statuses(pool, "workflows").await, ["running", "waiting"]);
    // Steps and events went with their workflows.
    assert_eq!(
        count(pool, "SELECT count(*) FROM forge.workflow_steps").await,
        2
    );
    assert_eq!(
        count(pool, "SELECT count(*) FROM forge.workflow_events").await,
        2
    );

    // The off switch.
    job(pool, "completed", Duration::from_secs(2)).await;
    let off = RetentionConfig {
        enabled: false,
        ..delete_all_finished()
    };
    assert_eq!(
        retain(forge.store(), &off).await.unwrap(),
        Deleted::default()
    );
    forge.close().await;
}

#[tokio::test]
async fn an_age_is_measured_from_the_end_and_old_rows_go_with_the_defaults() {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    let pool = forge.pool();
    let day = Duration::from_secs(24 * 3600);
    let old_completed = job(pool, "completed", day + Duration::from_secs(60)).await;
    let young_failed = job(pool, "failed", 2 * day).await;
    let old_failed = job(pool, "dead_letter", 15 * day).await;
    let d = retain(forge.store(), &RetentionConfig::default())
        .await
        .unwrap();
    assert_eq!(
        d,
        Deleted {
            jobs: 2,
            workflows: 0,
            schedule_ticks: 0
        }
    );
    let left: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM forge.jobs")
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(left, [young_failed]);
    assert!(!left.contains(&old_completed) && !left.contains(&old_failed));
    forge.close().await;
}

#[tokio::test]
async fn batches_skip_rows_someone_holds_instead_of_waiting() {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    let pool = forge.pool();
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(job(pool, "completed", Duration::from_secs(2)).await);
    }
    // Another transaction (a worker's, another node's) holds one of them.
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM forge.jobs WHERE id = $1 FOR UPDATE")
        .bind(ids[3])
        .execute(&mut *holder)
        .await
        .unwrap();

    let config = RetentionConfig {
        batch: 2,
        ..delete_all_finished()
    };
    let d = tokio::time::timeout(Duration::from_secs(5), retain(forge.store(), &config))
        .await
        .expect("retention waited for a locked row")
        .unwrap();
    assert_eq!(d.jobs, 6, "every row but the held one, in batches of two");
    holder.rollback().await.unwrap();
    let d = retain(forge.store(), &config).await.unwrap();
    assert_eq!(d.jobs, 1);
    forge.close().await;
}

#[tokio::test]
async fn a_worker_node_deletes_what_it_finished_once_old_enough() {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    let worker = forge
        .start_worker(WorkerConfig {
            poll_interval: Duration::from_millis(50),
            retention: RetentionConfig {
                interval: Duration::from_millis(100),
                ..delete_all_finished()
            },
            ..WorkerConfig::default()
        })
        .await
        .unwrap();
    let id = forge.enqueue(retained_noop::request()).await.unwrap();
    wait_for(
        "the finished job to be deleted",
        Duration::from_secs(10),
        || async { forge.job(id).await.unwrap().is_none().then_some(()) },
    )
    .await;
    worker.shutdown().await;
    forge.close().await;
}
