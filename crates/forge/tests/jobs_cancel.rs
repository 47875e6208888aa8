//! Cancelling jobs against the real PostgreSQL, in every status: at once when the job is not
//! running; through `check_cancelled` (or an abort after the grace period) when it is; never
//! for a finished job or by someone else than its owner. And `check_cancelled` never goes to
//! the database.

mod support;

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use forge::error::CancelError;
use forge::prelude::*;
use forge_runtime::store::{StartWrite, UpdateBatch};
use forge_test_support::{wait_for, TestDb};
use serde_json::json;
use support::*;
use uuid::Uuid;

#[forge::job]
async fn recorded(ctx: &JobContext) -> Result<()> {
    effect(ctx.db(), ctx.job_id(), "ran").await
}

#[tokio::test]
async fn cancelling_a_pending_job_cancels_it_at_once_and_it_never_runs() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge.enqueue(recorded::request()).await.unwrap();
    assert_eq!(
        forge.cancel_job(id, None).await.unwrap(),
        JobStatus::Cancelled
    );
    let r = row(&forge, id).await;
    assert_eq!((r.status, r.attempts), (JobStatus::Cancelled, 0));
    assert_eq!(r.error.as_deref(), Some("cancelled"));
    assert!(r.finished_at.is_some());

    // A job enqueued after it runs; the cancelled one does not.
    let worker = forge.start_worker(worker_config()).await.unwrap();
    let after = forge.enqueue(recorded::request()).await.unwrap();
    wait_status(&forge, after, JobStatus::Completed).await;
    assert_eq!(effects(forge.pool(), id).await, Vec::<String>::new());
    assert_eq!(row(&forge, id).await.status, JobStatus::Cancelled);
    worker.shutdown().await;
}

#[tokio::test]
async fn cancelling_a_claimed_job_cancels_it_at_once_and_fences_off_its_start() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge.enqueue(recorded::request()).await.unwrap();
    let claimed = forge
        .store()
        .claim_jobs(
            Uuid::new_v4(),
            &["default".to_string()],
            &["recorded".to_string()],
            1,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(row(&forge, id).await.status, JobStatus::Claimed);

    assert_eq!(
        forge.cancel_job(id, None).await.unwrap(),
        JobStatus::Cancelled
    );
    let r = row(&forge, id).await;
    assert_eq!(r.status, JobStatus::Cancelled);
    // The claiming worker's `running` write comes too late and changes nothing.
    let applied = forge
        .store()
        .apply_updates(&UpdateBatch {
            starts: vec![StartWrite { id, attempt: 1 }],
            ..UpdateBatch::default()
        })
        .await
        .unwrap();
    assert!(applied.starts.is_empty());
    let after = row(&forge, id).await;
    assert_eq!(
        (after.status, after.started_at),
        (JobStatus::Cancelled, None)
    );
}

#[forge::job(max_attempts = 3, backoff = "1h", max_backoff = "1h")]
async fn fails_once(ctx: &JobContext) -> Result<()> {
    effect(ctx.db(), ctx.job_id(), "ran").await?;
    Err(Error::msg("not yet"))
}

#[tokio::test]
async fn cancelling_a_job_waiting_to_retry_cancels_it_at_once() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let id = forge.enqueue(fails_once::request()).await.unwrap();
    wait_status(&forge, id, JobStatus::Retry).await;
    assert_eq!(
        forge.cancel_job(id, None).await.unwrap(),
        JobStatus::Cancelled
    );
    let r = row(&forge, id).await;
    assert_eq!((r.status, r.attempts), (JobStatus::Cancelled, 1));
    assert!(r.finished_at.is_some());
    worker.shutdown().await;
}

/// Works until it sees the cancel request.
#[forge::job]
async fn cooperative(ctx: &JobContext) -> Result<()> {
    effect(ctx.db(), ctx.job_id(), "started").await?;
    loop {
        if let Err(e) = ctx.check_cancelled().await {
            effect(ctx.db(), ctx.job_id(), "saw the request").await?;
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn cancelling_a_running_job_requests_it_and_the_handler_stops_at_check_cancelled() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let mut updates = Updates::subscribe(&forge).await;
    let id = forge.enqueue(cooperative::request()).await.unwrap();
    wait_effect(forge.pool(), id, "started").await;
    wait_status(&forge, id, JobStatus::Running).await;

    assert_eq!(
        forge.cancel_job(id, None).await.unwrap(),
        JobStatus::CancelRequested
    );
    let r = wait_status(&forge, id, JobStatus::Cancelled).await;
    // Stopped by the handler itself, well before the 10 s grace: the plain error of
    // `check_cancelled`, not the abort's.
    assert_eq!(r.error.as_deref(), Some("cancelled"));
    assert_eq!(
        effects(forge.pool(), id).await,
        ["started", "saw the request"]
    );
    assert!(r.finished_at.is_some());
    // Asking again once it is over is refused.
    assert!(matches!(
        forge.cancel_job(id, None).await,
        Err(CancelError::AlreadyFinished(JobStatus::Cancelled))
    ));
    let published = updates.until_status(id, JobStatus::Cancelled).await;
    use JobStatus::*;
    assert_eq!(
        statuses(&published),
        [Claimed, Running, CancelRequested, Cancelled]
    );
    worker.shutdown().await;
}

/// Job ids whose handler future was dropped (aborted) before it returned.
static DROPPED: Mutex<Vec<Uuid>> = Mutex::new(Vec::new());

struct DropGuard(Uuid);

impl Drop for DropGuard {
    fn drop(&mut self) {
        DROPPED.lock().unwrap().push(self.0);
    }
}

/// Ignores cancel requests.
#[forge::job]
async fn stubborn(ctx: &JobContext) -> Result<()> {
    let _guard = DropGuard(ctx.job_id());
    effect(ctx.db(), ctx.job_id(), "started").await?;
    tokio::time::sleep(Duration::from_secs(3_600)).await;
    Ok(())
}

#[tokio::test]
async fn a_handler_ignoring_the_request_is_aborted_after_the_grace_and_the_job_is_cancelled() {
    let (_db, forge, worker) = setup(WorkerConfig {
        cancel_grace: Duration::from_millis(300),
        ..worker_config()
    })
    .await;
    let id = forge.enqueue(stubborn::request()).await.unwrap();
    wait_effect(forge.pool(), id, "started").await;
    wait_status(&forge, id, JobStatus::Running).await;
    assert_eq!(
        forge.cancel_job(id, None).await.unwrap(),
        JobStatus::CancelRequested
    );
    // Asking twice is not an error.
    assert_eq!(
        forge.cancel_job(id, None).await.unwrap(),
        JobStatus::CancelRequested
    );
    let r = wait_status(&forge, id, JobStatus::Cancelled).await;
    let error = r.error.unwrap();
    assert!(error.contains("did not stop within 300ms"), "{error}");
    wait_for("the handler to be dropped", WAIT, || async {
        DROPPED.lock().unwrap().contains(&id).then_some(())
    })
    .await;
    wait_for("the worker to be idle", WAIT, || async {
        (worker.running_jobs() == 0).then_some(())
    })
    .await;
    worker.shutdown().await;
}

/// Finishes its work whatever happens, then ends as `outcome` says.
#[forge::job(max_attempts = 3, backoff = "50ms")]
async fn finishes_anyway(ctx: &JobContext, outcome: String) -> Result<String> {
    effect(ctx.db(), ctx.job_id(), "started").await?;
    wait_gate(ctx.db(), ctx.job_id(), "go").await?;
    match outcome.as_str() {
        "ok" => Ok("the work was done".into()),
        _ => Err(Error::msg("failed after the request")),
    }
}

#[tokio::test]
async fn a_handler_returning_after_a_cancel_request_ends_with_its_own_result() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let mut updates = Updates::subscribe(&forge).await;

    // Ok: the work was done, so the job is `completed` with its output.
    let id = forge
        .enqueue(finishes_anyway::request("ok".into()))
        .await
        .unwrap();
    wait_effect(forge.pool(), id, "started").await;
    wait_status(&forge, id, JobStatus::Running).await;
    assert_eq!(
        forge.cancel_job(id, None).await.unwrap(),
        JobStatus::CancelRequested
    );
    open_gate(forge.pool(), id, "go").await;
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!(r.output, Some(json!("the work was done")));
    assert_eq!(r.error, None);
    let published = updates.until_status(id, JobStatus::Completed).await;
    use JobStatus::*;
    assert_eq!(
        statuses(&published),
        [Claimed, Running, CancelRequested, Completed]
    );

    // A retryable error after the request is not retried: the user asked it to stop.
    let id = forge
        .enqueue(finishes_anyway::request("err".into()))
        .await
        .unwrap();
    wait_effect(forge.pool(), id, "started").await;
    wait_status(&forge, id, JobStatus::Running).await;
    forge.cancel_job(id, None).await.unwrap();
    open_gate(forge.pool(), id, "go").await;
    let r = wait_status(&forge, id, JobStatus::Cancelled).await;
    assert_eq!(r.attempts, 1);
    assert_eq!(effects(forge.pool(), id).await, ["started"]);
    worker.shutdown().await;
}

#[forge::job(max_attempts = 1)]
async fn outcome(_ctx: &JobContext, fail: bool) -> Result<u32> {
    if fail {
        return Err(Error::msg("nope"));
    }
    Ok(7)
}

#[tokio::test]
async fn cancelling_a_finished_job_is_an_error_that_changes_nothing() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let done = forge.enqueue(outcome::request(false)).await.unwrap();
    let failed = forge.enqueue(outcome::request(true)).await.unwrap();
    let done_row = wait_status(&forge, done, JobStatus::Completed).await;
    let failed_row = wait_status(&forge, failed, JobStatus::Failed).await;
    for (id, before) in [(done, done_row), (failed, failed_row)] {
        let err = forge.cancel_job(id, None).await.unwrap_err();
        let CancelError::AlreadyFinished(status) = err else {
            panic!("expected AlreadyFinished, got {err:?}");
        };
        assert_eq!(status, before.status);
        assert_eq!(
            err_text(id, &forge).await,
            format!("job already finished with status `{}`", before.status)
        );
        let after = row(&forge, id).await;
        assert_eq!(
            (after.status, after.output, after.error, after.finished_at),
            (
                before.status,
                before.output,
                before.error,
                before.finished_at
            )
        );
    }
    worker.shutdown().await;
}

async fn err_text(id: Uuid, forge: &Forge) -> String {
    forge.cancel_job(id, None).await.unwrap_err().to_string()
}

#[tokio::test]
async fn only_the_owner_or_a_privileged_caller_may_cancel() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge
        .enqueue(recorded::request().owner("alice"))
        .await
        .unwrap();
    // Someone else is told there is no such job, and nothing changes.
    assert!(matches!(
        forge.cancel_job(id, Some("mallory")).await,
        Err(CancelError::NotFound)
    ));
    assert_eq!(row(&forge, id).await.status, JobStatus::Pending);
    assert!(matches!(
        forge.cancel_job(Uuid::new_v4(), Some("alice")).await,
        Err(CancelError::NotFound)
    ));
    assert_eq!(
        forge.cancel_job(id, Some("alice")).await.unwrap(),
        JobStatus::Cancelled
    );

    // A privileged caller (no owner given) may cancel anyone's job, and ownerless ones.
    let other = forge
        .enqueue(recorded::request().owner("bob"))
        .await
        .unwrap();
    assert_eq!(
        forge.cancel_job(other, None).await.unwrap(),
        JobStatus::Cancelled
    );
    let ownerless = forge.enqueue(recorded::request()).await.unwrap();
    assert!(matches!(
        forge.cancel_job(ownerless, Some("alice")).await,
        Err(CancelError::NotFound)
    ));
    assert_eq!(
        forge.cancel_job(ownerless, None).await.unwrap(),
        JobStatus::Cancelled
    );
}

// ---------------------------------------------------------------------------------------------
// `check_cancelled` is cheap: it never touches the database.

/// Holds the last free connection of its node's pool while it calls `check_cancelled`: if a
/// call needed the database, it would wait for that connection and never return.
#[forge::job(max_attempts = 1)]
async fn tight_loop(ctx: &JobContext, calls: u32) -> Result<u32> {
    // Written (and so `running`) before the connection is taken.
    ctx.progress(1, "looping").await?;
    let mut conn = ctx.db().acquire().await?;
    let note = |what: &'static str| {
        sqlx::query("INSERT INTO effects (job_id, what) VALUES ($1, $2)")
            .bind(ctx.job_id())
            .bind(what)
    };
    note("holding").execute(&mut *conn).await?;
    for _ in 0..calls {
        ctx.check_cancelled().await?;
    }
    note("looped").execute(&mut *conn).await?;
    // The request reaches the handler by notification, with the connection still held.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        if let Err(e) = ctx.check_cancelled().await {
            note("saw the request").execute(&mut *conn).await?;
            return Err(e);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    Ok(calls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_cancelled_never_goes_to_the_database() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    // The worker's node: two connections, one of them its LISTEN connection.
    let node = Forge::connect_with(&db.url, 2).await.unwrap();
    let worker = node
        .start_worker(WorkerConfig {
            cancel_grace: Duration::from_secs(60),
            ..worker_config()
        })
        .await
        .unwrap();
    let id = forge.enqueue(tight_loop::request(100_000)).await.unwrap();
    wait_effect(forge.pool(), id, "looped").await;
    assert_eq!(row(&forge, id).await.status, JobStatus::Running);
    assert_eq!(
        forge.cancel_job(id, None).await.unwrap(),
        JobStatus::CancelRequested
    );
    let r = wait_status(&forge, id, JobStatus::Cancelled).await;
    assert_eq!(r.error.as_deref(), Some("cancelled"));
    assert_eq!(
        effects(forge.pool(), id).await,
        ["holding", "looped", "saw the request"]
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn cancel_requests_reach_the_right_jobs_only() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let ids: Vec<Uuid> = futures::future::join_all(
        (0..3).map(|_| async { forge.enqueue(cooperative::request()).await.unwrap() }),
    )
    .await;
    for id in &ids {
        wait_effect(forge.pool(), *id, "started").await;
        wait_status(&forge, *id, JobStatus::Running).await;
    }
    forge.cancel_job(ids[1], None).await.unwrap();
    wait_status(&forge, ids[1], JobStatus::Cancelled).await;
    let still: HashSet<JobStatus> = [row(&forge, ids[0]).await, row(&forge, ids[2]).await]
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(still, HashSet::from([JobStatus::Running]));
    for id in [ids[0], ids[2]] {
        forge.cancel_job(id, None).await.unwrap();
        wait_status(&forge, id, JobStatus::Cancelled).await;
    }
    worker.shutdown().await;
}

/// Takes its node's last free connection before the worker can write `running`, so that the
/// job stays `claimed` in the database while the handler runs; then works until stopped.
#[forge::job(max_attempts = 1)]
async fn grabs_the_pool(ctx: &JobContext) -> Result<()> {
    let _guard = DropGuard(ctx.job_id());
    let mut conn = ctx.db().acquire().await?;
    sqlx::query("INSERT INTO effects (job_id, what) VALUES ($1, 'holding')")
        .bind(ctx.job_id())
        .execute(&mut *conn)
        .await?;
    loop {
        ctx.check_cancelled().await?;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_cancelled_while_claimed_by_a_worker_is_dropped_by_it_and_never_started() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    // One connection, shared by the worker and the handler (a pool the caller brings serves
    // both): the handler takes it, so the worker's `running` write waits.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    let node = Forge::from_store(forge_runtime::store::Store::new(pool));
    let worker = node
        .start_worker(WorkerConfig {
            concurrency: 1,
            cancel_grace: Duration::from_secs(3_600),
            ..worker_config()
        })
        .await
        .unwrap();
    // The handler nearly always wins the connection; if the `running` write got it first,
    // the attempt is a plain running cancel, and the next job tries again.
    let mut claimed_path = false;
    for _ in 0..5 {
        let id = forge.enqueue(grabs_the_pool::request()).await.unwrap();
        wait_effect(forge.pool(), id, "holding").await;
        let before = row(&forge, id).await.status;
        let requested = forge.cancel_job(id, None).await.unwrap();
        wait_status(&forge, id, JobStatus::Cancelled).await;
        wait_for("the handler to be stopped", WAIT, || async {
            DROPPED.lock().unwrap().contains(&id).then_some(())
        })
        .await;
        wait_for("the slot to be free", WAIT, || async {
            (worker.running_jobs() == 0).then_some(())
        })
        .await;
        let r = row(&forge, id).await;
        assert_eq!(r.status, JobStatus::Cancelled);
        if before == JobStatus::Claimed {
            assert_eq!(requested, JobStatus::Cancelled);
            // The worker's `running` write, let through once the handler was stopped, was
            // fenced off.
            assert_eq!(
                (r.started_at, r.error.as_deref()),
                (None, Some("cancelled"))
            );
            claimed_path = true;
            break;
        }
        assert_eq!(
            (before, requested),
            (JobStatus::Running, JobStatus::CancelRequested)
        );
    }
    assert!(claimed_path, "the job was never cancelled while claimed");
    // The worker is free for the next job.
    let next = forge.enqueue(recorded::request()).await.unwrap();
    wait_status(&forge, next, JobStatus::Completed).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn a_cancel_request_whose_notification_was_lost_is_caught_by_the_heartbeat() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let id = forge.enqueue(cooperative::request()).await.unwrap();
    wait_effect(forge.pool(), id, "started").await;
    wait_status(&forge, id, JobStatus::Running).await;
    // The request written with triggers off: nothing is published, as if the node's LISTEN
    // connection had dropped the notification.
    let mut tx = forge.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE forge.jobs SET status = 'cancel_requested' WHERE id = $1")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Cancelled).await;
    assert_eq!(r.error.as_deref(), Some("cancelled"));
    assert_eq!(
        effects(forge.pool(), id).await,
        ["started", "saw the request"]
    );
    worker.shutdown().await;
}
