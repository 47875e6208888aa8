//! What the test files of the facade (`jobs_*.rs`, `workflows.rs`) share: a node per test on its own database, handlers
//! that record what they do in a table (`effects`) and stop at gates the test opens, bounded
//! waits on stored states, and a recorder of what `forge_job_updates` published.
//!
//! Each test file is its own binary and uses a different part of this module.
#![allow(dead_code)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use forge::prelude::*;
use forge::updates::{Event, JobUpdate};
use forge::Worker;
use forge_runtime::store::JobRow;
use forge_test_support::{wait_for, TestDb};
use sqlx::PgPool;
use tokio::sync::broadcast;
use uuid::Uuid;

/// Longest any single wait may take: generous, because the machine is small and busy.
pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// Short polls and graces, so that every test runs in about a second. The lease is long enough
/// that a busy machine does not let it run out under a live node (a test that wants it to run
/// out sets its own).
pub(crate) fn worker_config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 4,
        poll_interval: Duration::from_millis(50),
        lease: Duration::from_secs(5),
        heartbeat_interval: Duration::from_millis(300),
        reap_interval: Duration::from_millis(200),
        cancel_grace: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(5),
        ..WorkerConfig::default()
    }
}

/// The body of a crash test's child process: a node on the database named by `env` whose
/// worker (`config`, with a one-second lease) runs until the parent kills it. Returns at once
/// when `env` is not set: the child test is ignored, and only a crash test starts it.
pub(crate) async fn crash_child(env: &str, config: WorkerConfig) {
    let Ok(url) = std::env::var(env) else {
        return;
    };
    let forge = Forge::connect(&url).await.unwrap();
    let _worker = forge
        .start_worker(WorkerConfig {
            lease: Duration::from_secs(1),
            heartbeat_interval: Duration::from_millis(250),
            ..config
        })
        .await
        .unwrap();
    std::future::pending::<()>().await;
}

/// A node on `db`, with the tables the handlers of the tests write to.
pub(crate) async fn connect(db: &TestDb) -> Forge {
    let forge = Forge::connect(&db.url).await.unwrap();
    create_tables(forge.pool()).await;
    forge
}

pub(crate) async fn create_tables(pool: &PgPool) {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS effects (
             seq bigserial PRIMARY KEY, job_id uuid NOT NULL, what text NOT NULL,
             at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE TABLE IF NOT EXISTS gates (job_id uuid NOT NULL, name text NOT NULL);",
    )
    .execute(pool)
    .await
    .unwrap();
}

/// A database, a node on it, and a worker with `config`.
pub(crate) async fn setup(config: WorkerConfig) -> (TestDb, Forge, Worker) {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let worker = forge.start_worker(config).await.unwrap();
    (db, forge, worker)
}

/// Records that `what` happened in job `job`, with the database's clock.
pub(crate) async fn effect(db: &PgPool, job: Uuid, what: &str) -> Result<()> {
    sqlx::query("INSERT INTO effects (job_id, what) VALUES ($1, $2)")
        .bind(job)
        .bind(what)
        .execute(db)
        .await?;
    Ok(())
}

/// What happened in job `job`, in order.
pub(crate) async fn effects(db: &PgPool, job: Uuid) -> Vec<String> {
    sqlx::query_scalar("SELECT what FROM effects WHERE job_id = $1 ORDER BY seq")
        .bind(job)
        .fetch_all(db)
        .await
        .unwrap()
}

/// When `what` was first recorded for job `job`.
pub(crate) async fn effect_at(db: &PgPool, job: Uuid, what: &str) -> DateTime<Utc> {
    sqlx::query_scalar("SELECT min(at) FROM effects WHERE job_id = $1 AND what = $2")
        .bind(job)
        .bind(what)
        .fetch_one(db)
        .await
        .unwrap()
}

/// Waits until `what` was recorded for job `job`.
pub(crate) async fn wait_effect(db: &PgPool, job: Uuid, what: &str) {
    wait_for(&format!("effect `{what}` of job {job}"), WAIT, || async {
        effects(db, job)
            .await
            .iter()
            .any(|e| e == what)
            .then_some(())
    })
    .await
}

pub(crate) async fn gate_open(db: &PgPool, job: Uuid, name: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM gates WHERE job_id = $1 AND name = $2)")
            .bind(job)
            .bind(name)
            .fetch_one(db)
            .await?,
    )
}

/// Holds a handler until the test opens the gate `name` of its job.
pub(crate) async fn wait_gate(db: &PgPool, job: Uuid, name: &str) -> Result<()> {
    while !gate_open(db, job, name).await? {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

pub(crate) async fn open_gate(db: &PgPool, job: Uuid, name: &str) {
    sqlx::query("INSERT INTO gates (job_id, name) VALUES ($1, $2)")
        .bind(job)
        .bind(name)
        .execute(db)
        .await
        .unwrap();
}

pub(crate) async fn row(forge: &Forge, id: Uuid) -> JobRow {
    forge.job(id).await.unwrap().expect("the job exists")
}

/// Waits until the stored job satisfies `pred`; returns that row.
pub(crate) async fn wait_row(
    forge: &Forge,
    id: Uuid,
    what: &str,
    pred: impl Fn(&JobRow) -> bool,
) -> JobRow {
    wait_for(what, WAIT, || async {
        let r = row(forge, id).await;
        pred(&r).then_some(r)
    })
    .await
}

pub(crate) async fn wait_status(forge: &Forge, id: Uuid, status: JobStatus) -> JobRow {
    wait_row(forge, id, &format!("job {id} {status:?}"), |r| {
        r.status == status
    })
    .await
}

/// How many job rows exist.
pub(crate) async fn job_count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM forge.jobs")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// What `forge_job_updates` published, as this node's notifier received it. Subscribe before
/// enqueueing so that nothing is missed.
pub(crate) struct Updates {
    rx: broadcast::Receiver<Event>,
    seen: Vec<JobUpdate>,
}

impl Updates {
    pub(crate) async fn subscribe(forge: &Forge) -> Updates {
        Updates {
            rx: forge.notifier().await.unwrap().subscribe(),
            seen: Vec::new(),
        }
    }

    /// The updates of job `id` received until one satisfies `last` (included).
    pub(crate) async fn until(
        &mut self,
        id: Uuid,
        last: impl Fn(&JobUpdate) -> bool,
    ) -> Vec<JobUpdate> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(end) = self.seen.iter().position(|u| u.job_id == id && last(u)) {
                // Updates of other jobs stay for later calls.
                let rest = self.seen.split_off(end + 1);
                let upto = std::mem::replace(&mut self.seen, rest);
                let (mine, others): (Vec<_>, Vec<_>) =
                    upto.into_iter().partition(|u| u.job_id == id);
                self.seen.splice(0..0, others);
                return mine;
            }
            let event = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "timed out waiting for an update of job {id}; got {:?}",
                        self.seen
                    )
                })
                .expect("the notifier keeps up");
            if let Event::JobUpdates(updates) = event {
                self.seen.extend(updates.iter().cloned());
            }
        }
    }

    /// The updates of job `id` until it reaches `status`.
    pub(crate) async fn until_status(&mut self, id: Uuid, status: JobStatus) -> Vec<JobUpdate> {
        self.until(id, |u| u.status == status).await
    }
}

/// The statuses of `updates`, each run of repeats (progress reports) collapsed into one.
pub(crate) fn statuses(updates: &[JobUpdate]) -> Vec<JobStatus> {
    let mut out: Vec<JobStatus> = updates.iter().map(|u| u.status).collect();
    out.dedup();
    out
}
