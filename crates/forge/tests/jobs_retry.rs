//! How jobs fail against the real PostgreSQL: retries with exponential backoff, `dead_letter`
//! once attempts run out, `failed` for fatal errors and single-attempt jobs, panics and
//! timeouts.

mod support;

use std::time::Duration;

use chrono::{DateTime, Utc};
use forge::prelude::*;
use serde_json::json;
use support::*;
use uuid::Uuid;

/// The start of attempt `n` as the handler recorded it.
async fn attempt_started(forge: &Forge, id: Uuid, n: u32) -> DateTime<Utc> {
    effect_at(forge.pool(), id, &format!("start {n}")).await
}

async fn attempt_failed(forge: &Forge, id: Uuid, n: u32) -> DateTime<Utc> {
    effect_at(forge.pool(), id, &format!("fail {n}")).await
}

fn millis(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_milliseconds()
}

// Fails `failures` times, then succeeds. Backoff 400 ms, doubling: with ±25% jitter the
// second attempt starts at least 300 ms after the first failed, the third at least 600 ms
// after the second failed.
#[forge::job(max_attempts = 5, backoff = "400ms", max_backoff = "10s")]
async fn flaky(ctx: &JobContext, failures: u32) -> Result<u32> {
    let n = ctx.attempt();
    effect(ctx.db(), ctx.job_id(), &format!("start {n}")).await?;
    if n <= failures {
        ctx.progress(10 * n, format!("attempt {n}")).await?;
        effect(ctx.db(), ctx.job_id(), &format!("fail {n}")).await?;
        return Err(Error::msg(format!("flaky failure {n}")));
    }
    Ok(n)
}

#[tokio::test]
async fn a_retryable_error_retries_with_growing_backoff_then_completes() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let mut updates = Updates::subscribe(&forge).await;
    let id = forge.enqueue(flaky::request(2)).await.unwrap();

    // Between attempts the job waits as `retry`, its error kept and its next run scheduled
    // after the backoff.
    let r = wait_status(&forge, id, JobStatus::Retry).await;
    assert_eq!(r.error.as_deref(), Some("flaky failure 1"));
    assert_eq!(r.finished_at, None);
    let failed_1 = attempt_failed(&forge, id, 1).await;
    assert!(
        millis(failed_1, r.run_at) >= 300,
        "first retry scheduled {} ms after the failure",
        millis(failed_1, r.run_at)
    );

    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!((r.attempts, r.output.clone()), (3, Some(json!(3))));
    assert_eq!(r.error, None);
    // Each attempt is in the history with how it ended: why the job retried needs no logs.
    let history = forge
        .job_detail(id, None)
        .await
        .unwrap()
        .unwrap()
        .attempt_history;
    let summary: Vec<_> = history
        .iter()
        .map(|a| (a.attempt, a.outcome, a.error.clone()))
        .collect();
    assert_eq!(
        summary,
        [
            (1, JobStatus::Retry, Some("flaky failure 1".to_string())),
            (2, JobStatus::Retry, Some("flaky failure 2".to_string())),
            (3, JobStatus::Completed, None),
        ]
    );
    for (a, next) in history.iter().zip(history.iter().skip(1)) {
        assert!(a.started_at.unwrap() <= a.ended_at.unwrap(), "{a:?}");
        assert!(
            a.ended_at.unwrap() <= next.started_at.unwrap(),
            "{a:?} then {next:?}"
        );
        assert_eq!(a.worker_id, Some(worker.worker_id()));
    }
    let gap_1 = millis(failed_1, attempt_started(&forge, id, 2).await);
    let gap_2 = millis(
        attempt_failed(&forge, id, 2).await,
        attempt_started(&forge, id, 3).await,
    );
    assert!(
        gap_1 >= 300,
        "second attempt {gap_1} ms after the first failed"
    );
    assert!(
        gap_2 >= 600,
        "third attempt {gap_2} ms after the second failed"
    );
    // Bounded above too: the backoff is not stuck at its maximum or the poll interval.
    assert!(
        gap_2 < 10_000,
        "third attempt {gap_2} ms after the second failed"
    );

    let published = updates.until_status(id, JobStatus::Completed).await;
    use JobStatus::*;
    assert_eq!(
        statuses(&published),
        [Claimed, Running, Retry, Claimed, Running, Retry, Claimed, Running, Completed],
        "{published:?}"
    );
    // Each attempt's updates carry its number; a new attempt starts without the progress of
    // the previous one.
    let claims: Vec<_> = published
        .iter()
        .filter(|u| u.status == Claimed)
        .map(|u| (u.attempt, u.progress, u.message.clone()))
        .collect();
    assert_eq!(claims, [(1, None, None), (2, None, None), (3, None, None)]);
    assert_eq!(r.progress, None);
    worker.shutdown().await;
}

#[forge::job(max_attempts = 3, backoff = "50ms")]
async fn always_fails(ctx: &JobContext) -> Result<()> {
    Err(Error::msg(format!("failure on attempt {}", ctx.attempt())))
}

#[tokio::test]
async fn a_job_that_keeps_failing_ends_dead_letter_with_its_last_error() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let mut updates = Updates::subscribe(&forge).await;
    let id = forge.enqueue(always_fails::request()).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::DeadLetter).await;
    assert_eq!(r.attempts, 3);
    assert_eq!(r.error.as_deref(), Some("failure on attempt 3"));
    assert!(r.finished_at.is_some());
    assert_eq!(r.output, None);
    let published = updates.until_status(id, JobStatus::DeadLetter).await;
    use JobStatus::*;
    assert_eq!(
        statuses(&published),
        [Claimed, Running, Retry, Claimed, Running, Retry, Claimed, Running, DeadLetter],
        "{published:?}"
    );

    // The enqueue can allow fewer attempts than the attribute.
    let id = forge
        .enqueue(always_fails::request().max_attempts(2))
        .await
        .unwrap();
    let r = wait_status(&forge, id, JobStatus::DeadLetter).await;
    assert_eq!(r.attempts, 2);
    assert_eq!(r.error.as_deref(), Some("failure on attempt 2"));
    worker.shutdown().await;
}

#[forge::job(max_attempts = 5, backoff = "50ms")]
async fn refuses(ctx: &JobContext, how: String) -> Result<()> {
    effect(ctx.db(), ctx.job_id(), "ran").await?;
    match how.as_str() {
        "fatal" => Err(Error::fatal("the input can never work")),
        "fatal_ext" => Err(std::io::Error::other("bad file")).fatal(),
        _ => Err(Error::msg("try again")),
    }
}

#[tokio::test]
async fn a_fatal_error_or_a_single_attempt_ends_failed_at_once() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let mut updates = Updates::subscribe(&forge).await;
    for (how, max_attempts, error) in [
        ("fatal", None, "the input can never work"),
        ("fatal_ext", None, "bad file"),
        // Retryable, but only one attempt allowed: `failed`, not `dead_letter`.
        ("retry", Some(1), "try again"),
    ] {
        let mut req = refuses::request(how.into());
        if let Some(n) = max_attempts {
            req = req.max_attempts(n);
        }
        let id = forge.enqueue(req).await.unwrap();
        let r = wait_status(&forge, id, JobStatus::Failed).await;
        assert_eq!(r.attempts, 1, "{how}");
        assert_eq!(r.error.as_deref(), Some(error), "{how}");
        assert!(r.finished_at.is_some());
        assert_eq!(effects(forge.pool(), id).await, ["ran"], "{how} ran again");
        let published = updates.until_status(id, JobStatus::Failed).await;
        assert_eq!(
            statuses(&published),
            [JobStatus::Claimed, JobStatus::Running, JobStatus::Failed]
        );
    }
    worker.shutdown().await;
}

#[forge::job(max_attempts = 1)]
async fn panics(ctx: &JobContext, message: String) -> Result<()> {
    effect(ctx.db(), ctx.job_id(), "ran").await?;
    panic!("{message}");
}

#[forge::job(max_attempts = 2, backoff = "50ms")]
async fn panics_once(ctx: &JobContext) -> Result<u32> {
    if ctx.attempt() == 1 {
        let v: Vec<u32> = Vec::new();
        return Ok(v[3]);
    }
    Ok(ctx.attempt())
}

#[tokio::test]
async fn a_panic_fails_the_job_and_the_worker_runs_the_next_one() {
    // One slot: the job after the panic runs on the same worker.
    let (_db, forge, worker) = setup(WorkerConfig {
        concurrency: 1,
        ..worker_config()
    })
    .await;
    let id = forge
        .enqueue(panics::request("handler blew up".into()))
        .await
        .unwrap();
    let r = wait_status(&forge, id, JobStatus::Failed).await;
    let error = r.error.unwrap();
    assert!(error.contains("panicked"), "{error}");
    assert!(error.contains("handler blew up"), "{error}");

    // A panic is a retryable failure: with attempts left, the job runs again.
    let id = forge.enqueue(panics_once::request()).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!((r.attempts, r.output), (2, Some(json!(2))));

    for _ in 0..3 {
        let id = forge
            .enqueue(panics::request("again".into()))
            .await
            .unwrap();
        wait_status(&forge, id, JobStatus::Failed).await;
    }
    let id = forge.enqueue(flaky::request(0)).await.unwrap();
    wait_status(&forge, id, JobStatus::Completed).await;
    wait_for_idle(&worker).await;
    worker.shutdown().await;
}

async fn wait_for_idle(worker: &forge::Worker) {
    forge_test_support::wait_for("the worker to be idle", WAIT, || async {
        (worker.running_jobs() == 0).then_some(())
    })
    .await
}

#[forge::job(max_attempts = 2, timeout = "300ms", backoff = "50ms")]
async fn hangs(ctx: &JobContext, attempts_hanging: u32) -> Result<String> {
    effect(ctx.db(), ctx.job_id(), &format!("start {}", ctx.attempt())).await?;
    if ctx.attempt() <= attempts_hanging {
        tokio::time::sleep(Duration::from_secs(3_600)).await;
    }
    Ok("done".into())
}

#[tokio::test]
async fn a_timeout_is_a_retryable_failure() {
    let (_db, forge, worker) = setup(worker_config()).await;
    // Hangs once, then completes on its second attempt.
    let id = forge.enqueue(hangs::request(1)).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!((r.attempts, r.output), (2, Some(json!("done"))));
    let gap = millis(
        attempt_started(&forge, id, 1).await,
        attempt_started(&forge, id, 2).await,
    );
    assert!(gap >= 300, "the first attempt was stopped after {gap} ms");

    // Hangs every time: retried, then `dead_letter` (not `failed`), saying why.
    let id = forge.enqueue(hangs::request(2)).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::DeadLetter).await;
    assert_eq!(r.attempts, 2);
    assert_eq!(r.error.as_deref(), Some("job timed out after 300ms"));
    wait_for_idle(&worker).await;
    worker.shutdown().await;
}
