//! Jobs across nodes and failures of nodes, against the real PostgreSQL: a node killed with
//! SIGKILL in another process, leases and fencing, two nodes sharing a queue, graceful
//! shutdown.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use forge::prelude::*;
use forge_runtime::registry::job_handlers;
use forge_runtime::store::{Finish, FinishStatus, ProgressWrite, UpdateBatch};
use forge_runtime::worker::Handler;
use forge_test_support::{wait_for, TestDb};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use sqlx::PgPool;
use support::*;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// A node killed with SIGKILL.

/// Its first attempt hangs (in the process that gets killed); later ones complete.
#[forge::job(max_attempts = 3)]
async fn victim(ctx: &JobContext) -> Result<u32> {
    let n = ctx.attempt();
    effect(ctx.db(), ctx.job_id(), &format!("start {n}")).await?;
    if n == 1 {
        ctx.progress(30, "in the doomed process").await?;
        std::future::pending::<()>().await;
    }
    Ok(n)
}

/// Set in the environment of the child process of the crash test: the database it works on.
const CHILD_DB: &str = "FORGE_JOBS_TEST_CHILD_DB";

/// Not a test of its own: the body of the child process of the crash test, which runs a
/// worker until it is killed.
#[tokio::test]
#[ignore = "run by `a_job_of_a_killed_node_is_run_again_by_another_after_its_lease_runs_out`"]
async fn crash_child_worker() {
    support::crash_child(CHILD_DB, worker_config()).await;
}

/// Ends the lease of `id` in the database now, as a node that stalled past it would leave it.
async fn expire_lease(pool: &PgPool, id: Uuid) {
    sqlx::query(
        "UPDATE forge.jobs SET lease_expires_at = now() - interval '1 second' WHERE id = $1",
    )
    .bind(id)
    .execute(pool)
    .await
    .unwrap();
}

async fn lease_expires_at(pool: &PgPool, id: Uuid) -> Option<DateTime<Utc>> {
    sqlx::query_scalar("SELECT lease_expires_at FROM forge.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_job_of_a_killed_node_is_run_again_by_another_after_its_lease_runs_out() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge.enqueue(victim::request()).await.unwrap();

    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "crash_child_worker",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_DB, &db.url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_effect(forge.pool(), id, "start 1").await;
    let r = wait_row(&forge, id, "the child's progress", |r| {
        r.progress == Some(30.0)
    })
    .await;
    assert_eq!((r.status, r.attempts), (JobStatus::Running, 1));
    // The child renews its lease while it lives: it moves past what it was at first.
    let first_lease = lease_expires_at(forge.pool(), id).await.unwrap();
    wait_for("the child to renew its lease", WAIT, || async {
        (lease_expires_at(forge.pool(), id).await.unwrap() > first_lease).then_some(())
    })
    .await;

    // SIGKILL: no clean-up of any kind in the child.
    child.kill().unwrap();
    child.wait().unwrap();
    let expires = lease_expires_at(forge.pool(), id)
        .await
        .expect("the dead node still holds the job");

    let worker = forge.start_worker(worker_config()).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!((r.attempts, r.output), (2, Some(json!(2))));
    assert_eq!(effects(forge.pool(), id).await, ["start 1", "start 2"]);
    // Not taken from the dead node before its lease ran out.
    let restarted = effect_at(forge.pool(), id, "start 2").await;
    assert!(
        restarted >= expires,
        "restarted at {restarted}, lease until {expires}"
    );
    // The new attempt started clean.
    assert_eq!((r.progress, r.message), (None, None));
    // The history tells why there were two attempts, and which node ran each.
    let detail = forge.job_detail(id, None).await.unwrap().unwrap();
    let history = &detail.attempt_history;
    assert_eq!(history.len(), 2, "{history:?}");
    let (first, second) = (&history[0], &history[1]);
    assert_eq!((first.attempt, first.outcome), (1, JobStatus::Retry));
    assert_eq!(
        first.error.as_deref(),
        Some("the worker running this job stopped (lease expired)")
    );
    assert!(first.started_at.is_some() && first.ended_at >= Some(expires));
    assert_ne!(first.worker_id, Some(worker.worker_id()));
    assert!(first.worker_id.is_some());
    assert_eq!((second.attempt, second.outcome), (2, JobStatus::Completed));
    assert_eq!(second.worker_id, Some(worker.worker_id()));
    assert_eq!(second.error, None);
    assert!(second.started_at.unwrap() >= first.ended_at.unwrap());
    assert!(second.ended_at.unwrap() >= second.started_at.unwrap());
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Fencing: writes of an attempt that is no longer the job's change nothing.

/// Attempt 1 reports progress, then waits for the test; attempt 2 waits at its own gate.
/// When attempt 1 is let go, it reports progress again and returns its own output.
#[forge::job(max_attempts = 3)]
async fn overtaken(ctx: &JobContext) -> Result<String> {
    let (db, id, n) = (ctx.db(), ctx.job_id(), ctx.attempt());
    effect(db, id, &format!("start {n}")).await?;
    if n == 1 {
        ctx.progress(40, "attempt 1 working").await?;
    }
    wait_gate(db, id, &format!("attempt {n}")).await?;
    if n == 1 {
        ctx.progress(90, "late news from attempt 1").await?;
    }
    effect(db, id, &format!("end {n}")).await?;
    Ok(format!("output of attempt {n}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_lease_cannot_change_the_job_of_the_next_attempt() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge.enqueue(overtaken::request()).await.unwrap();
    // Node A: one slot, no renewal during the test, a lease long enough that it does not stop
    // the attempt itself (self-fencing) before the test ends.
    let node_a = forge
        .start_worker(WorkerConfig {
            concurrency: 1,
            lease: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(3_600),
            ..worker_config()
        })
        .await
        .unwrap();
    wait_effect(forge.pool(), id, "start 1").await;
    wait_row(&forge, id, "attempt 1's progress", |r| {
        r.progress == Some(40.0)
    })
    .await;
    // As the database sees a node that stalled (a long pause of its process) past its lease.
    expire_lease(forge.pool(), id).await;

    // Its lease runs out; node B reaps the job and runs attempt 2, which starts clean.
    let node_b = forge.start_worker(worker_config()).await.unwrap();
    wait_effect(forge.pool(), id, "start 2").await;
    let r = wait_status(&forge, id, JobStatus::Running).await;
    assert_eq!(r.attempts, 2);
    assert_eq!((r.progress, r.message), (None, None));

    // Attempt 1 wakes up while attempt 2 runs: its progress and its end change nothing.
    open_gate(forge.pool(), id, "attempt 1").await;
    wait_effect(forge.pool(), id, "end 1").await;
    wait_for("node A to be done with attempt 1", WAIT, || async {
        (node_a.running_jobs() == 0).then_some(())
    })
    .await;
    let r = row(&forge, id).await;
    assert_eq!((r.status, r.attempts), (JobStatus::Running, 2));
    assert_eq!((r.progress, r.message, r.output), (None, None, None));

    open_gate(forge.pool(), id, "attempt 2").await;
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!(r.output, Some(json!("output of attempt 2")));
    assert_eq!(
        effects(forge.pool(), id).await,
        ["start 1", "start 2", "end 1", "end 2"]
    );
    node_a.shutdown().await;
    node_b.shutdown().await;
}

#[forge::job]
async fn reports_after_returning(ctx: &JobContext) -> Result<()> {
    ctx.progress(50, "half").await?;
    let late = ctx.clone();
    tokio::spawn(async move {
        let (db, id) = (late.db().clone(), late.job_id());
        wait_gate(&db, id, "late").await?;
        let result = late.progress(99, "after the end").await;
        effect(&db, id, &format!("late progress: {result:?}")).await
    });
    Ok(())
}

#[tokio::test]
async fn a_progress_report_after_the_job_ended_changes_nothing() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let id = forge
        .enqueue(reports_after_returning::request())
        .await
        .unwrap();
    let done = wait_status(&forge, id, JobStatus::Completed).await;
    open_gate(forge.pool(), id, "late").await;
    wait_effect(forge.pool(), id, "late progress: Ok(())").await;
    let r = row(&forge, id).await;
    assert_eq!(r.status, JobStatus::Completed);
    assert_eq!(
        (r.progress, r.message.as_deref()),
        (Some(50.0), Some("half"))
    );
    assert_eq!(r.finished_at, done.finished_at);
    worker.shutdown().await;
}

/// The store's side of fencing, write by write: progress and finishes of an old attempt, and
/// of an attempt that already finished, are not applied.
#[tokio::test]
async fn store_writes_are_fenced_by_attempt_and_status() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge.enqueue(victim::request()).await.unwrap();
    let claim = || async {
        forge
            .store()
            .claim_jobs(
                Uuid::new_v4(),
                &["default".to_string()],
                &["victim".to_string()],
                1,
                Duration::from_secs(30),
            )
            .await
            .unwrap()
    };
    let progress = |attempt: i32, p: f64| UpdateBatch {
        progress: vec![ProgressWrite {
            id,
            attempt,
            progress: p,
            message: Some(format!("from attempt {attempt}")),
        }],
        ..UpdateBatch::default()
    };
    let finish = |attempt: i32, status: FinishStatus| UpdateBatch {
        finishes: vec![Finish {
            id,
            attempt,
            status,
            started: true,
        }],
        ..UpdateBatch::default()
    };
    let store = forge.store();

    assert_eq!(claim().await[0].attempt, 1);
    store.apply_updates(&progress(1, 20.0)).await.unwrap();
    assert_eq!(row(&forge, id).await.progress, Some(20.0));
    // Attempt 1 fails; attempt 2 claims the job, and starts without attempt 1's progress.
    let applied = store
        .apply_updates(&finish(
            1,
            FinishStatus::Retry {
                error: "first".into(),
                delay: Duration::ZERO,
            },
        ))
        .await
        .unwrap();
    assert!(applied.finishes.contains(&id));
    assert_eq!(claim().await[0].attempt, 2);
    let r = row(&forge, id).await;
    assert_eq!((r.progress, r.message, r.error), (None, None, None));

    // Attempt 1 again: neither its progress nor its end is applied.
    store.apply_updates(&progress(1, 70.0)).await.unwrap();
    let applied = store
        .apply_updates(&finish(1, FinishStatus::Completed(json!("stale"))))
        .await
        .unwrap();
    assert!(applied.finishes.is_empty());
    let r = row(&forge, id).await;
    assert_eq!(
        (r.status, r.progress, r.output),
        (JobStatus::Claimed, None, None)
    );

    // Attempt 2 ends; after that, not even its own writes change anything.
    store.apply_updates(&progress(2, 60.0)).await.unwrap();
    store
        .apply_updates(&finish(2, FinishStatus::Completed(json!("fresh"))))
        .await
        .unwrap();
    store.apply_updates(&progress(2, 95.0)).await.unwrap();
    let applied = store
        .apply_updates(&finish(2, FinishStatus::Failed("late".into())))
        .await
        .unwrap();
    assert!(applied.finishes.is_empty());
    let r = row(&forge, id).await;
    assert_eq!(r.status, JobStatus::Completed);
    assert_eq!(
        (r.progress, r.output, r.error),
        (Some(60.0), Some(json!("fresh")), None)
    );
}

// ---------------------------------------------------------------------------------------------
// Two nodes on one queue.

#[forge::job]
async fn count_once(ctx: &JobContext) -> Result<()> {
    // A little work, so that both nodes get some.
    tokio::time::sleep(Duration::from_millis(2)).await;
    sqlx::query("INSERT INTO runs (job_id) VALUES ($1)")
        .bind(ctx.job_id())
        .execute(ctx.db())
        .await?;
    Ok(())
}

/// The `count_once` handler, recording which node ran it. Handlers are plain function
/// pointers, so each node gets its own.
fn on_node(node: &'static str) -> Handler {
    fn run_on(
        node: &'static str,
        ctx: JobContext,
        args: Value,
    ) -> BoxFuture<'static, Result<Value>> {
        let inner = forge_runtime::registry::job("count_once").unwrap().run;
        Box::pin(async move {
            let id = ctx.job_id();
            let out = inner(ctx.clone(), args).await?;
            sqlx::query("UPDATE runs SET node = $2 WHERE job_id = $1")
                .bind(id)
                .bind(node)
                .execute(ctx.db())
                .await?;
            Ok(out)
        })
    }
    fn run_a(ctx: JobContext, args: Value) -> BoxFuture<'static, Result<Value>> {
        run_on("a", ctx, args)
    }
    fn run_b(ctx: JobContext, args: Value) -> BoxFuture<'static, Result<Value>> {
        run_on("b", ctx, args)
    }
    Handler {
        run: if node == "a" { run_a } else { run_b },
        ..job_handlers()["count_once"]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_never_run_the_same_job() {
    const JOBS: usize = 400;
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    sqlx::query("CREATE TABLE runs (job_id uuid NOT NULL, node text)")
        .execute(forge.pool())
        .await
        .unwrap();
    let mut nodes = Vec::new();
    for name in ["a", "b"] {
        // Each node its own pool and listener, as separate processes would have.
        let node = Forge::connect(&db.url).await.unwrap();
        let config = WorkerConfig {
            concurrency: 8,
            claim_batch: 20,
            ..worker_config()
        };
        let handlers = HashMap::from([("count_once".to_string(), on_node(name))]);
        nodes.push(node.start_worker_with(config, handlers).await.unwrap());
    }
    let ids = forge
        .enqueue_many((0..JOBS).map(|_| count_once::request()))
        .await
        .unwrap();
    wait_for("every job to complete", Duration::from_secs(60), || async {
        let done: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM forge.jobs WHERE status = 'completed' AND id = ANY($1)",
        )
        .bind(&ids)
        .fetch_one(forge.pool())
        .await
        .unwrap();
        (done == JOBS as i64).then_some(())
    })
    .await;
    let twice: Vec<(Uuid, i64)> =
        sqlx::query_as("SELECT job_id, count(*) FROM runs GROUP BY job_id HAVING count(*) <> 1")
            .fetch_all(forge.pool())
            .await
            .unwrap();
    assert_eq!(twice, [], "jobs run more than once");
    let per_node: Vec<(String, i64)> =
        sqlx::query_as("SELECT node, count(*) FROM runs GROUP BY node ORDER BY node")
            .fetch_all(forge.pool())
            .await
            .unwrap();
    assert_eq!(per_node.iter().map(|n| n.1).sum::<i64>(), JOBS as i64);
    assert_eq!(
        per_node.iter().map(|n| n.0.as_str()).collect::<Vec<_>>(),
        ["a", "b"],
        "both nodes should have run jobs: {per_node:?}"
    );
    let attempts: i32 = sqlx::query_scalar("SELECT max(attempts) FROM forge.jobs")
        .fetch_one(forge.pool())
        .await
        .unwrap();
    assert_eq!(attempts, 1);
    for node in nodes {
        node.shutdown().await;
    }
}

// ---------------------------------------------------------------------------------------------
// Graceful shutdown.

#[forge::job]
async fn blocker(ctx: &JobContext) -> Result<String> {
    effect(ctx.db(), ctx.job_id(), "started").await?;
    wait_gate(ctx.db(), ctx.job_id(), "go").await?;
    Ok("finished during shutdown".into())
}

#[forge::job]
async fn noop(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_running_jobs_finish_and_releases_the_unstarted_ones() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    // Many quick jobs first, so that the node gets going and claims ahead of its one slot;
    // the blocker next; more quick jobs, claimed while the blocker holds the slot.
    forge
        .enqueue_many((0..300).map(|_| noop::request().priority(0)))
        .await
        .unwrap();
    let blocked = forge.enqueue(blocker::request().priority(1)).await.unwrap();
    let behind = forge
        .enqueue_many((0..300).map(|_| noop::request().priority(2)))
        .await
        .unwrap();
    let worker = forge
        .start_worker(WorkerConfig {
            concurrency: 1,
            shutdown_grace: Duration::from_secs(15),
            ..worker_config()
        })
        .await
        .unwrap();
    wait_effect(forge.pool(), blocked, "started").await;
    wait_status(&forge, blocked, JobStatus::Running).await;
    let claimed_behind = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM forge.jobs WHERE status = 'claimed' AND id = ANY($1)",
        )
        .bind(&behind)
        .fetch_one(forge.pool())
        .await
        .unwrap()
    };
    wait_for("jobs claimed behind the blocker", WAIT, || async {
        (claimed_behind().await > 0).then_some(())
    })
    .await;

    let shutdown = tokio::spawn(worker.shutdown());
    // Shutting down releases what never started, while the blocker still runs.
    wait_for("the unstarted jobs released", WAIT, || async {
        (claimed_behind().await == 0).then_some(())
    })
    .await;
    assert!(
        !shutdown.is_finished(),
        "shutdown did not wait for the running job"
    );
    assert_eq!(row(&forge, blocked).await.status, JobStatus::Running);
    open_gate(forge.pool(), blocked, "go").await;
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();

    let r = row(&forge, blocked).await;
    assert_eq!(r.status, JobStatus::Completed);
    assert_eq!(r.output, Some(json!("finished during shutdown")));
    // Every job behind it either ran or is back to `pending` as if never claimed.
    let left: Vec<(String, i32)> = sqlx::query_as(
        "SELECT status, attempts FROM forge.jobs WHERE id = ANY($1) AND status <> 'completed'",
    )
    .bind(&behind)
    .fetch_all(forge.pool())
    .await
    .unwrap();
    assert!(!left.is_empty());
    assert!(
        left.iter().all(|(s, a)| s == "pending" && *a == 0),
        "{left:?}"
    );
    // Nothing is lost: another node runs them.
    let worker = forge.start_worker(worker_config()).await.unwrap();
    for id in &behind {
        wait_status(&forge, *id, JobStatus::Completed).await;
    }
    worker.shutdown().await;
}

#[forge::job(max_attempts = 2)]
async fn overstays(ctx: &JobContext) -> Result<u32> {
    effect(ctx.db(), ctx.job_id(), &format!("start {}", ctx.attempt())).await?;
    if ctx.attempt() == 1 {
        std::future::pending::<()>().await;
    }
    Ok(ctx.attempt())
}

#[tokio::test]
async fn a_job_still_running_after_the_shutdown_grace_is_interrupted_and_runs_again() {
    let (_db, forge, worker) = setup(WorkerConfig {
        shutdown_grace: Duration::from_millis(300),
        ..worker_config()
    })
    .await;
    let id = forge.enqueue(overstays::request()).await.unwrap();
    wait_effect(forge.pool(), id, "start 1").await;
    wait_status(&forge, id, JobStatus::Running).await;
    tokio::time::timeout(WAIT, worker.shutdown()).await.unwrap();
    let r = row(&forge, id).await;
    assert_eq!(r.status, JobStatus::Retry);
    assert!(r.error.unwrap().contains("shut down"));
    let worker = forge.start_worker(worker_config()).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!((r.attempts, r.output), (2, Some(json!(2))));
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The lease reaper's other outcomes.

/// Never returns, and ignores cancel requests.
#[forge::job(max_attempts = 1)]
async fn hangs_forever(ctx: &JobContext) -> Result<()> {
    effect(ctx.db(), ctx.job_id(), "started").await?;
    std::future::pending().await
}

/// A node that stopped renewing its leases (stalled), with a reaper that runs often.
fn stalled_node() -> WorkerConfig {
    WorkerConfig {
        lease: Duration::from_millis(500),
        heartbeat_interval: Duration::from_secs(3_600),
        cancel_grace: Duration::from_secs(3_600),
        shutdown_grace: Duration::from_millis(200),
        ..worker_config()
    }
}

#[tokio::test]
async fn a_lost_lease_with_no_attempts_left_ends_dead_letter() {
    let (_db, forge, worker) = setup(stalled_node()).await;
    let id = forge.enqueue(hangs_forever::request()).await.unwrap();
    wait_effect(forge.pool(), id, "started").await;
    let r = wait_status(&forge, id, JobStatus::DeadLetter).await;
    assert_eq!(r.attempts, 1);
    assert!(r.error.unwrap().contains("lease expired"));
    assert!(r.finished_at.is_some());
    tokio::time::timeout(WAIT, worker.shutdown()).await.unwrap();
    // The interrupted handler's end is fenced off.
    assert_eq!(row(&forge, id).await.status, JobStatus::DeadLetter);
}

#[tokio::test]
async fn a_lost_lease_of_a_job_whose_cancel_was_requested_ends_cancelled() {
    // A longer lease than the other stalled node's: the request must come before it runs out.
    let (_db, forge, worker) = setup(WorkerConfig {
        lease: Duration::from_secs(2),
        ..stalled_node()
    })
    .await;
    let id = forge
        .enqueue(hangs_forever::request().max_attempts(3))
        .await
        .unwrap();
    wait_effect(forge.pool(), id, "started").await;
    wait_status(&forge, id, JobStatus::Running).await;
    assert_eq!(
        forge.cancel_job(id, None).await.unwrap(),
        JobStatus::CancelRequested
    );
    // The handler ignores the request and its node is stalled: the reaper ends the job,
    // `cancelled` rather than run again.
    let r = wait_status(&forge, id, JobStatus::Cancelled).await;
    assert_eq!(r.attempts, 1);
    tokio::time::timeout(WAIT, worker.shutdown()).await.unwrap();
    let r = row(&forge, id).await;
    assert_eq!((r.status, r.attempts), (JobStatus::Cancelled, 1));
}

// ---------------------------------------------------------------------------------------------
// A node that finds out it lost a lease stops the attempt.

/// (job, attempt) of handlers dropped before they returned.
static DROPPED: std::sync::Mutex<Vec<(Uuid, u32)>> = std::sync::Mutex::new(Vec::new());

struct AttemptGuard(Uuid, u32);

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        DROPPED.lock().unwrap().push((self.0, self.1));
    }
}

#[forge::job(max_attempts = 3)]
async fn outlived(ctx: &JobContext) -> Result<u32> {
    let n = ctx.attempt();
    let _guard = AttemptGuard(ctx.job_id(), n);
    effect(ctx.db(), ctx.job_id(), &format!("start {n}")).await?;
    if n == 1 {
        std::future::pending::<()>().await;
    }
    wait_gate(ctx.db(), ctx.job_id(), "finish").await?;
    Ok(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_heartbeat_finds_the_lease_gone_stops_the_attempt() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge.enqueue(outlived::request()).await.unwrap();
    // Node A's lease runs out in the database before its next renewal (a long pause, say),
    // and node B takes the job meanwhile.
    let node_a = forge
        .start_worker(WorkerConfig {
            concurrency: 1,
            lease: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(3),
            ..worker_config()
        })
        .await
        .unwrap();
    wait_effect(forge.pool(), id, "start 1").await;
    expire_lease(forge.pool(), id).await;
    let node_b = forge.start_worker(worker_config()).await.unwrap();
    wait_effect(forge.pool(), id, "start 2").await;

    wait_for("node A to stop attempt 1", WAIT, || async {
        DROPPED.lock().unwrap().contains(&(id, 1)).then_some(())
    })
    .await;
    wait_for("node A to be idle", WAIT, || async {
        (node_a.running_jobs() == 0).then_some(())
    })
    .await;
    let r = row(&forge, id).await;
    assert_eq!((r.status, r.attempts), (JobStatus::Running, 2));
    assert!(!DROPPED.lock().unwrap().contains(&(id, 2)));

    open_gate(forge.pool(), id, "finish").await;
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!(r.output, Some(json!(2)));
    node_a.shutdown().await;
    node_b.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Concurrency of a node.

static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static MOST: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

#[forge::job]
async fn occupies_a_slot(_ctx: &JobContext) -> Result<()> {
    use std::sync::atomic::Ordering::SeqCst;
    let now = RUNNING.fetch_add(1, SeqCst) + 1;
    MOST.fetch_max(now, SeqCst);
    tokio::time::sleep(Duration::from_millis(30)).await;
    RUNNING.fetch_sub(1, SeqCst);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_runs_at_most_its_concurrency_at_once() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let err = forge
        .start_worker(WorkerConfig {
            concurrency: 0,
            ..worker_config()
        })
        .await
        .err()
        .expect("a node without slots is refused");
    assert!(err.to_string().contains("concurrency"), "{err}");

    let ids = forge
        .enqueue_many((0..40).map(|_| occupies_a_slot::request()))
        .await
        .unwrap();
    let worker = forge
        .start_worker(WorkerConfig {
            concurrency: 3,
            ..worker_config()
        })
        .await
        .unwrap();
    for id in &ids {
        wait_status(&forge, *id, JobStatus::Completed).await;
    }
    assert_eq!(MOST.load(std::sync::atomic::Ordering::SeqCst), 3);
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Leases of a live node.

#[forge::job(max_attempts = 3)]
async fn outlasts_its_lease(ctx: &JobContext) -> Result<u32> {
    effect(ctx.db(), ctx.job_id(), &format!("start {}", ctx.attempt())).await?;
    // More than two leases.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    Ok(ctx.attempt())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_running_longer_than_its_lease_keeps_it_while_its_node_lives() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let config = WorkerConfig {
        lease: Duration::from_millis(1_500),
        heartbeat_interval: Duration::from_millis(100),
        reap_interval: Duration::from_millis(50),
        ..worker_config()
    };
    // Two nodes whose reapers look often; either may run the job.
    let a = forge.start_worker(config.clone()).await.unwrap();
    let b = forge.start_worker(config).await.unwrap();
    let id = forge.enqueue(outlasts_its_lease::request()).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!((r.attempts, r.output), (1, Some(json!(1))));
    assert_eq!(effects(forge.pool(), id).await, ["start 1"]);
    a.shutdown().await;
    b.shutdown().await;
}

#[forge::job(max_attempts = 3)]
async fn cannot_renew(ctx: &JobContext) -> Result<()> {
    let _guard = AttemptGuard(ctx.job_id(), ctx.attempt());
    effect(ctx.db(), ctx.job_id(), &format!("start {}", ctx.attempt())).await?;
    std::future::pending().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_cannot_renew_a_lease_stops_the_attempt_before_the_lease_runs_out() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge.enqueue(cannot_renew::request()).await.unwrap();
    // No renewal (as when the database cannot be reached): the node must stop the attempt
    // itself, so that no other node's attempt can overlap it in time (self-fencing).
    let worker = forge
        .start_worker(WorkerConfig {
            concurrency: 1,
            lease: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(3_600),
            reap_interval: Duration::from_secs(3_600),
            ..worker_config()
        })
        .await
        .unwrap();
    wait_effect(forge.pool(), id, "start 1").await;
    wait_for("the attempt to stop itself", WAIT, || async {
        DROPPED.lock().unwrap().contains(&(id, 1)).then_some(())
    })
    .await;
    let lease_left: bool =
        sqlx::query_scalar("SELECT lease_expires_at > now() FROM forge.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(forge.pool())
            .await
            .unwrap();
    assert!(
        lease_left,
        "the attempt stopped only after its lease ran out"
    );
    worker.shutdown().await;
}
