//! The life of a job against the real PostgreSQL: every status it goes through (stored and
//! published on `forge_job_updates`), progress, jobs scheduled for later, priority order,
//! arguments checked at enqueue, idempotency keys, and concurrent migrations.

mod support;

use std::time::Duration;

use forge::error::{EnqueueError, ProgressError};
use forge::prelude::*;
use forge::updates::{Event, JobUpdate};
use forge_runtime::store::{FinishStatus, HeldEnd, HeldWrite, MIGRATIONS};
use forge_test_support::TestDb;
use serde::{Deserialize, Serialize};
use serde_json::json;
use support::*;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Statuses.

#[forge::job]
async fn gated_echo(ctx: &JobContext, text: String) -> Result<String> {
    effect(ctx.db(), ctx.job_id(), "started").await?;
    wait_gate(ctx.db(), ctx.job_id(), "go").await?;
    ctx.progress(50, "half way").await?;
    Ok(text.to_uppercase())
}

#[tokio::test]
async fn a_job_goes_pending_claimed_running_completed_stored_and_published() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let mut updates = Updates::subscribe(&forge).await;

    // No worker yet: the job waits, stored as `pending`.
    let id = forge
        .enqueue(gated_echo::request("hello".into()))
        .await
        .unwrap();
    let r = row(&forge, id).await;
    assert_eq!(r.status, JobStatus::Pending);
    assert_eq!(r.attempts, 0);
    assert_eq!((r.started_at, r.finished_at), (None, None));

    let worker = forge.start_worker(worker_config()).await.unwrap();
    wait_effect(forge.pool(), id, "started").await;
    // The handler is held at its gate: the job is stored as `running`, one attempt made.
    let r = wait_status(&forge, id, JobStatus::Running).await;
    assert_eq!(r.attempts, 1);
    assert!(r.started_at.is_some());
    assert_eq!((r.progress, r.output.clone()), (None, None));

    open_gate(forge.pool(), id, "go").await;
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!(r.output, Some(json!("HELLO")));
    assert_eq!(r.state().output, Some(json!("HELLO")));
    assert_eq!(r.progress, Some(50.0));
    assert_eq!(r.message.as_deref(), Some("half way"));
    assert_eq!((r.error, r.attempts), (None, 1));
    assert!(r.finished_at.unwrap() >= r.started_at.unwrap());

    // Every transition was published, in order, and the progress report in between.
    let published = updates.until_status(id, JobStatus::Completed).await;
    assert_eq!(
        statuses(&published),
        [JobStatus::Claimed, JobStatus::Running, JobStatus::Completed],
        "{published:?}"
    );
    let progress: Vec<_> = published
        .iter()
        .filter(|u| u.progress.is_some())
        .map(|u| (u.status, u.progress, u.message.as_deref()))
        .collect();
    assert_eq!(
        progress[0],
        (JobStatus::Running, Some(50.0), Some("half way"))
    );
    assert!(published.iter().all(|u| u.attempt == 1));
    worker.shutdown().await;
}

#[forge::job]
async fn quick(_ctx: &JobContext, n: u32) -> Result<u32> {
    Ok(n * 2)
}

/// A job that ends within the deferral of its `running` write records start and end in one
/// write; `running` must still be published, before the final status.
#[tokio::test]
async fn a_short_job_still_publishes_running_before_its_end() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let mut updates = Updates::subscribe(&forge).await;
    let ids = forge
        .enqueue_many((0..20).map(quick::request))
        .await
        .unwrap();
    for (n, id) in ids.iter().enumerate() {
        let published = updates.until_status(*id, JobStatus::Completed).await;
        assert_eq!(
            statuses(&published),
            [JobStatus::Claimed, JobStatus::Running, JobStatus::Completed],
            "{published:?}"
        );
        let r = row(&forge, *id).await;
        assert_eq!(r.output, Some(json!(n as u32 * 2)));
        assert!(r.started_at.is_some() && r.finished_at.is_some());
    }
    worker.shutdown().await;
}

/// The claim itself, as the store performs it: `claimed`, one attempt, owned by the claiming
/// worker with a lease.
#[tokio::test]
async fn claiming_marks_the_job_claimed_with_a_lease() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge.enqueue(quick::request(1)).await.unwrap();
    let worker_id = Uuid::new_v4();
    let claimed = forge
        .store()
        .claim_jobs(
            worker_id,
            &["default".to_string()],
            &["quick".to_string()],
            10,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!((claimed[0].id, claimed[0].attempt), (id, 1));
    let r = row(&forge, id).await;
    assert_eq!((r.status, r.attempts), (JobStatus::Claimed, 1));
    let (owner, leased): (Option<Uuid>, bool) =
        sqlx::query_as("SELECT worker_id, lease_expires_at > now() FROM forge.jobs WHERE id = $1")
            .bind(id)
            .fetch_one(forge.pool())
            .await
            .unwrap();
    assert_eq!(owner, Some(worker_id));
    assert!(leased);
    // Claimed is taken: a second claim finds nothing.
    let again = forge
        .store()
        .claim_jobs(
            Uuid::new_v4(),
            &["default".to_string()],
            &["quick".to_string()],
            10,
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    assert!(again.is_empty());
}

// ---------------------------------------------------------------------------------------------
// Progress.

#[forge::job(max_attempts = 3)]
async fn bad_progress(ctx: &JobContext) -> Result<Vec<String>> {
    let mut refused = Vec::new();
    for p in [-1.0, 100.5, f64::NAN, f64::INFINITY] {
        match ctx.progress(p, "nope").await {
            Ok(()) => return Err(Error::fatal(format!("progress {p} was accepted"))),
            Err(e) => refused.push(e.to_string()),
        }
    }
    ctx.progress(0, "start").await?;
    ctx.progress(100, "end").await?;
    Ok(refused)
}

#[forge::job(max_attempts = 3)]
async fn progress_over(ctx: &JobContext, percent: f64) -> Result<()> {
    ctx.progress(10, "fine").await?;
    ctx.progress(percent, "too far").await?;
    Ok(())
}

#[tokio::test]
async fn progress_out_of_range_is_refused_and_changes_nothing() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let id = forge.enqueue(bad_progress::request()).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    let refused: Vec<String> = serde_json::from_value(r.output.unwrap()).unwrap();
    assert_eq!(refused.len(), 4);
    assert_eq!(
        refused[0],
        ProgressError::OutOfRange(-1.0).to_string(),
        "the error says what is wrong"
    );
    assert!(refused[1].contains("100.5"), "{}", refused[1]);
    // The bounds themselves are accepted; the last accepted value is the one stored.
    assert_eq!(r.progress, Some(100.0));
    assert_eq!(r.message.as_deref(), Some("end"));

    // Passed on with `?`, the refusal is a bug in the job, not worth retrying: `failed` at
    // once, with the reason kept, and the last valid progress left as it was.
    let id = forge.enqueue(progress_over::request(101.0)).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Failed).await;
    assert_eq!(r.attempts, 1);
    assert_eq!(
        r.error.as_deref(),
        Some("progress must be a number from 0 to 100, got 101")
    );
    assert_eq!(r.progress, Some(10.0));
    worker.shutdown().await;
}

#[forge::job(max_attempts = 1)]
async fn divides_by_zero(ctx: &JobContext, own_message: bool) -> Result<i32> {
    let answer = sqlx::query_scalar("SELECT 1 / 0").fetch_one(ctx.db()).await;
    if own_message {
        return answer.map_err(|e| Error::fatal(format!("could not divide: {e}")));
    }
    Ok(answer?)
}

/// A database error passed on with `?` is shown to followers as a stable sentence with its
/// SQLSTATE, not the driver's text; a message the job wrote itself is kept as it is.
#[tokio::test]
async fn a_database_error_shows_its_sqlstate_not_the_drivers_text() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let id = forge
        .enqueue(divides_by_zero::request(false))
        .await
        .unwrap();
    let r = wait_status(&forge, id, JobStatus::Failed).await;
    assert_eq!(
        r.error.as_deref(),
        Some("a database statement failed (SQLSTATE 22012)")
    );
    let id = forge.enqueue(divides_by_zero::request(true)).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Failed).await;
    assert_eq!(
        r.error.as_deref(),
        Some("could not divide: error returned from database: division by zero")
    );
    worker.shutdown().await;
}

#[forge::job]
async fn chatty(ctx: &JobContext) -> Result<()> {
    ctx.progress(5, "é".repeat(2_000)).await?;
    Ok(())
}

#[tokio::test]
async fn a_long_progress_message_is_cut_to_fit_a_notification() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let mut updates = Updates::subscribe(&forge).await;
    let id = forge.enqueue(chatty::request()).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!(
        r.message.as_deref().map(|m| m.chars().count()),
        Some(forge_runtime::worker::MAX_MESSAGE_CHARS)
    );
    let published = updates.until_status(id, JobStatus::Completed).await;
    assert!(published
        .iter()
        .any(|u| u.message.as_deref() == r.message.as_deref()));
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// When jobs run: scheduled for later, and by priority.

#[forge::job]
async fn stamp(ctx: &JobContext, label: String) -> Result<()> {
    effect(ctx.db(), ctx.job_id(), &label).await
}

#[tokio::test]
async fn a_job_scheduled_for_later_does_not_run_before_its_time() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let later = forge
        .enqueue(stamp::request("later".into()).delay(Duration::from_millis(1_500)))
        .await
        .unwrap();
    let run_at = row(&forge, later).await.run_at;
    // A job enqueued after it, due now, runs first; the scheduled one is still waiting.
    let now = forge.enqueue(stamp::request("now".into())).await.unwrap();
    wait_status(&forge, now, JobStatus::Completed).await;
    let r = row(&forge, later).await;
    assert_eq!((r.status, r.attempts), (JobStatus::Pending, 0));

    let r = wait_status(&forge, later, JobStatus::Completed).await;
    let ran_at = effect_at(forge.pool(), later, "later").await;
    assert!(ran_at >= run_at, "ran at {ran_at}, scheduled for {run_at}");
    assert!(r.started_at.unwrap() >= run_at);
    worker.shutdown().await;
}

#[tokio::test]
async fn jobs_run_by_priority_then_by_run_at() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let base = chrono::Utc::now() - chrono::Duration::seconds(60);
    // (label, priority, seconds after `base`): lower priority numbers run first; equal
    // priorities run oldest `run_at` first.
    let jobs = [
        ("e", 10, 0),
        ("c", 3, 5),
        ("a", -1, 9),
        ("d", 3, 7),
        ("b", 0, 1),
        ("f", 20, 2),
    ];
    let mut ids = Vec::new();
    for (label, priority, secs) in jobs {
        let req = stamp::request(label.into())
            .priority(priority)
            .run_at(base + chrono::Duration::seconds(secs));
        ids.push(forge.enqueue(req).await.unwrap());
    }
    let worker = forge
        .start_worker(WorkerConfig {
            concurrency: 1,
            ..worker_config()
        })
        .await
        .unwrap();
    for id in &ids {
        wait_status(&forge, *id, JobStatus::Completed).await;
    }
    let order: Vec<String> = sqlx::query_scalar("SELECT what FROM effects ORDER BY seq")
        .fetch_all(forge.pool())
        .await
        .unwrap();
    assert_eq!(order, ["a", "b", "c", "d", "e", "f"]);
    worker.shutdown().await;
}

#[forge::job(priority = -5, queue = "special")]
async fn special(ctx: &JobContext) -> Result<()> {
    effect(ctx.db(), ctx.job_id(), "special").await
}

#[tokio::test]
async fn the_attribute_options_set_priority_and_queue_and_a_node_serves_its_queues_only() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge.enqueue(special::request()).await.unwrap();
    let r = row(&forge, id).await;
    assert_eq!((r.priority, r.queue.as_str()), (-5, "special"));
    assert_eq!(r.max_attempts, 3);

    // A node on the default queue leaves it alone (a default-queue job shows it is working).
    let default_node = forge.start_worker(worker_config()).await.unwrap();
    let other = forge.enqueue(stamp::request("x".into())).await.unwrap();
    wait_status(&forge, other, JobStatus::Completed).await;
    assert_eq!(row(&forge, id).await.status, JobStatus::Pending);

    let special_node = forge
        .start_worker(WorkerConfig {
            queues: vec!["special".into()],
            ..worker_config()
        })
        .await
        .unwrap();
    wait_status(&forge, id, JobStatus::Completed).await;
    default_node.shutdown().await;
    special_node.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Enqueueing: arguments checked, idempotency keys.

#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
struct Address {
    city: String,
    zip: u32,
}

#[forge::job]
async fn typed_args(
    _ctx: &JobContext,
    user_id: Uuid,
    count: u32,
    address: Address,
    tags: Vec<String>,
) -> Result<String> {
    Ok(format!(
        "{user_id}:{count}:{}:{}:{}",
        address.city,
        address.zip,
        tags.join("+")
    ))
}

#[tokio::test]
async fn json_arguments_that_do_not_fit_are_refused_naming_the_field_and_nothing_is_written() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let user = Uuid::new_v4();
    let good = json!({
        "userId": user, "count": 3, "address": {"city": "Oslo", "zip": 150}, "tags": ["a", "b"]
    });
    let with = |path: &str, value: serde_json::Value| {
        let mut v = good.clone();
        match path.split_once('.') {
            Some((outer, inner)) => v[outer][inner] = value,
            None => v[path] = value,
        }
        v
    };
    let without = |field: &str| {
        let mut v = good.clone();
        v.as_object_mut().unwrap().remove(field);
        v
    };
    let cases = [
        (with("count", json!("three")), "count", "expected u32"),
        (with("count", json!(-1)), "count", "expected u32"),
        (with("userId", json!("not-a-uuid")), "userId", "UUID"),
        (
            with("address.zip", json!("x")),
            "address.zip",
            "expected u32",
        ),
        (
            with("tags", json!(["a", 2])),
            "tags[1]",
            "expected a string",
        ),
        (without("count"), "count", "missing field"),
        (with("extra", json!(1)), "extra", "unknown field"),
        // Rust's names are not the wire's: `user_id` is `userId`.
        (
            {
                let mut v = without("userId");
                v["user_id"] = json!(user);
                v
            },
            "user_id",
            "unknown field",
        ),
        (json!([1, 2]), ".", "must be a JSON object"),
    ];
    for (args, field, message) in cases {
        let err = forge
            .enqueue_json("typed_args", args.clone())
            .await
            .expect_err(&format!("{args} was accepted"));
        let EnqueueError::InvalidArgs(e) = &err else {
            panic!("{args}: expected invalid arguments, got {err:?}");
        };
        assert_eq!(e.field, field, "{args}: {e}");
        assert!(e.message.contains(message), "{args}: {e}");
        assert!(err.to_string().contains(field), "{err}");
    }
    let err = forge
        .enqueue_json("no_such_job", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, EnqueueError::UnknownJob(ref n) if n == "no_such_job"));
    let err = forge
        .enqueue(
            typed_args::request(
                user,
                1,
                Address {
                    city: "x".into(),
                    zip: 1,
                },
                vec![],
            )
            .max_attempts(0),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            EnqueueError::InvalidOption {
                field: "max_attempts",
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(
        job_count(forge.pool()).await,
        0,
        "a refused enqueue wrote a row"
    );

    // The same arguments, well-formed, are accepted and run.
    let id = forge.enqueue_json("typed_args", good).await.unwrap();
    assert_eq!(job_count(forge.pool()).await, 1);
    let worker = forge.start_worker(worker_config()).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!(r.output, Some(json!(format!("{user}:3:Oslo:150:a+b"))));
    worker.shutdown().await;
}

#[tokio::test]
async fn one_bad_job_in_a_bulk_enqueue_writes_none_of_them() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let reqs = vec![
        JobRequest::<serde_json::Value>::new("quick", json!({"n": 1})),
        JobRequest::new("quick", json!({"n": "two"})),
        JobRequest::new("quick", json!({"n": 3})),
    ];
    let err = forge.enqueue_many(reqs).await.unwrap_err();
    assert!(
        matches!(err, EnqueueError::InvalidArgs(ref e) if e.field == "n"),
        "{err:?}"
    );
    assert_eq!(job_count(forge.pool()).await, 0);
}

#[tokio::test]
async fn an_idempotency_key_returns_the_existing_job() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let first = forge
        .enqueue(quick::request(1).idempotency_key("order-42"))
        .await
        .unwrap();
    // Even with other arguments: the key names the job.
    let second = forge
        .enqueue(quick::request(2).idempotency_key("order-42"))
        .await
        .unwrap();
    assert_eq!(first, second);
    let ids = forge
        .enqueue_many([
            quick::request(3).idempotency_key("order-42"),
            quick::request(4).idempotency_key("order-43"),
            quick::request(5),
        ])
        .await
        .unwrap();
    assert_eq!(ids[0], first);
    assert_ne!(ids[1], first);
    assert_eq!(job_count(forge.pool()).await, 3);

    // Still the same job once it has run.
    let worker = forge.start_worker(worker_config()).await.unwrap();
    let r = wait_status(&forge, first, JobStatus::Completed).await;
    assert_eq!(r.output, Some(json!(2)));
    let again = forge
        .enqueue(quick::request(9).idempotency_key("order-42"))
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(job_count(forge.pool()).await, 3);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_job_enqueued_in_a_transaction_exists_only_if_it_commits() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let mut tx = forge.pool().begin().await.unwrap();
    forge::queue::enqueue(&mut tx, quick::request(1))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(job_count(forge.pool()).await, 0);
    let mut tx = forge.pool().begin().await.unwrap();
    let id = forge::queue::enqueue(&mut tx, quick::request(2))
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(row(&forge, id).await.status, JobStatus::Pending);
}

#[tokio::test]
async fn a_bulk_enqueue_stores_every_job_as_given() {
    // Enough jobs for the COPY path of a bulk enqueue, each with its own settings.
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let reqs = (0..150u32).map(|n| {
        let req = quick::request(n)
            .priority(n as i32 % 7 - 3)
            .max_attempts(1 + n % 4);
        let req = if n.is_multiple_of(2) {
            req.owner(format!("user-{n}"))
        } else {
            req
        };
        if n.is_multiple_of(3) {
            req.queue("other")
        } else {
            req
        }
    });
    let ids = forge.enqueue_many(reqs).await.unwrap();
    assert_eq!(ids.len(), 150);
    let before: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(forge.pool())
        .await
        .unwrap();
    for (n, id) in ids.iter().enumerate() {
        let n = n as u32;
        let r = row(&forge, *id).await;
        assert_eq!(r.function_name, "quick");
        assert_eq!(r.status, JobStatus::Pending);
        assert_eq!(r.attempts, 0);
        assert_eq!(r.priority, n as i32 % 7 - 3, "job {n}");
        assert_eq!(r.max_attempts, 1 + n as i32 % 4, "job {n}");
        let owner = (n.is_multiple_of(2)).then(|| format!("user-{n}"));
        assert_eq!(r.owner, owner, "job {n}");
        assert_eq!(
            r.queue,
            if n.is_multiple_of(3) {
                "other"
            } else {
                "default"
            }
        );
        assert!(r.run_at <= before);
        let args: serde_json::Value =
            sqlx::query_scalar("SELECT args FROM forge.jobs WHERE id = $1")
                .bind(id)
                .fetch_one(forge.pool())
                .await
                .unwrap();
        assert_eq!(args, json!({ "n": n }));
    }

    // In a transaction, a bulk enqueue is all or nothing with it.
    let mut tx = forge.pool().begin().await.unwrap();
    forge::queue::enqueue_many(&mut tx, (0..100).map(quick::request))
        .await
        .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(job_count(forge.pool()).await, 150);

    // And they run.
    let worker = forge.start_worker(worker_config()).await.unwrap();
    for (n, id) in ids.iter().enumerate().filter(|(n, _)| !n.is_multiple_of(3)) {
        let r = wait_status(&forge, *id, JobStatus::Completed).await;
        assert_eq!(r.output, Some(json!(n * 2)));
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn short_jobs_run_fast_are_written_once_each_and_every_status_is_published() {
    // A node running many short jobs holds its claims (see the worker docs): each job is
    // written once, from `pending` to `completed`, in the transaction that locked it. What is
    // published is the same as for a job claimed the usual way.
    let (_db, forge, worker) = setup(worker_config()).await;
    let mut updates = Updates::subscribe(&forge).await;
    let ids = forge
        .enqueue_many((0..400).map(quick::request))
        .await
        .unwrap();
    let mut written_once = 0;
    for (n, id) in ids.iter().enumerate() {
        let published = updates.until_status(*id, JobStatus::Completed).await;
        assert_eq!(
            statuses(&published),
            [JobStatus::Claimed, JobStatus::Running, JobStatus::Completed],
            "job {n}"
        );
        assert!(published.iter().all(|u| u.attempt == 1));
        // Claimed and ended in one transaction: a held claim.
        if published[0].xid == published[published.len() - 1].xid {
            written_once += 1;
        }
        let r = row(&forge, *id).await;
        assert_eq!((r.attempts, r.output), (1, Some(json!(n * 2))));
        assert!(r.started_at.is_some() && r.finished_at >= r.started_at);
    }
    // The first jobs are claimed the usual way, until the node has measured its pace.
    assert!(written_once > 100, "{written_once} of 400 written once");
    worker.shutdown().await;
}

#[tokio::test]
async fn a_held_claim_publishes_each_status_its_jobs_went_through_once() {
    // Closing a held claim publishes its updates itself, not through the trigger: the same
    // sequence as for a job claimed the usual way, once, with the id of its transaction.
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let mut events = forge.notifier().await.unwrap().subscribe();
    let ids = forge
        .enqueue_many((0..6).map(quick::request))
        .await
        .unwrap();
    let (claim, jobs) = forge
        .store()
        .claim_held(&["default".into()], &["quick".into()], 10)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 6);
    let message = "half \"way\"\n\u{1}é".to_string();
    let writes: Vec<HeldWrite> = [
        (HeldEnd::Claimed, None),
        (HeldEnd::Running, Some((50.0, Some(message.clone())))),
        (
            HeldEnd::Finished(FinishStatus::Completed(json!("done"))),
            None,
        ),
        (
            HeldEnd::Finished(FinishStatus::Retry {
                error: "again".into(),
                delay: Duration::from_secs(60),
            }),
            Some((10.0, None)),
        ),
        (HeldEnd::Finished(FinishStatus::Failed("boom".into())), None),
        (
            HeldEnd::Finished(FinishStatus::Cancelled("stop".into())),
            None,
        ),
    ]
    .into_iter()
    .zip(&ids)
    .map(|((end, progress), id)| HeldWrite {
        id: *id,
        attempt: 1,
        end,
        progress,
    })
    .collect();
    claim
        .close(Uuid::now_v7(), Duration::from_secs(30), &writes)
        .await
        .unwrap();
    // A later update, from another transaction: once it arrives, all of the close's have.
    let sentinel = forge.enqueue(quick::request(9)).await.unwrap();
    forge.cancel_job(sentinel, None).await.unwrap();
    let mut published = Vec::new();
    while !published
        .iter()
        .any(|u: &JobUpdate| u.job_id == sentinel && u.status == JobStatus::Cancelled)
    {
        let event = tokio::time::timeout(Duration::from_secs(15), events.recv())
            .await
            .expect("updates")
            .unwrap();
        if let Event::JobUpdates(updates) = event {
            published.extend(updates.iter().cloned());
        }
    }

    use JobStatus::*;
    type Published<'a> = (JobStatus, Option<f64>, Option<&'a str>);
    let expected: [&[Published]; 6] = [
        &[(Claimed, None, None)],
        &[(Claimed, None, None), (Running, Some(50.0), Some(&message))],
        &[
            (Claimed, None, None),
            (Running, None, None),
            (Completed, None, None),
        ],
        &[
            (Claimed, None, None),
            (Running, None, None),
            (Retry, Some(10.0), None),
        ],
        &[
            (Claimed, None, None),
            (Running, None, None),
            (Failed, None, None),
        ],
        &[
            (Claimed, None, None),
            (Running, None, None),
            (Cancelled, None, None),
        ],
    ];
    for (id, expected) in ids.iter().zip(expected) {
        let mine: Vec<_> = published.iter().filter(|u| u.job_id == *id).collect();
        let got: Vec<_> = mine
            .iter()
            .map(|u| (u.status, u.progress, u.message.as_deref()))
            .collect();
        assert_eq!(got, expected, "job {id}");
        assert!(mine.iter().all(|u| u.attempt == 1), "{mine:?}");
        // The transaction that wrote the row (xmin is the low 32 bits of its xid8).
        let xmin: i64 =
            sqlx::query_scalar("SELECT xmin::text::bigint FROM forge.jobs WHERE id = $1")
                .bind(id)
                .fetch_one(forge.pool())
                .await
                .unwrap();
        assert!(
            mine.iter().all(|u| u.xid & 0xffff_ffff == xmin as u64),
            "{mine:?}"
        );
    }
    let stored: Vec<JobStatus> = futures::future::join_all(ids.iter().map(|id| row(&forge, *id)))
        .await
        .iter()
        .map(|r| r.status)
        .collect();
    assert_eq!(
        stored,
        [Claimed, Running, Completed, Retry, Failed, Cancelled]
    );
}

// ---------------------------------------------------------------------------------------------
// Eager start: a job enqueued by a node whose worker is idle is inserted claimed by it.

/// Whether job `id` was claimed by the statement that inserted it: only then does its lease
/// run from the moment it was created (a claim is a later transaction, with a later `now()`).
/// Valid until the first heartbeat renews the lease (false while no lease is held).
async fn claimed_at_insert(forge: &Forge, id: Uuid, lease: Duration) -> bool {
    sqlx::query_scalar(
        "SELECT COALESCE(lease_expires_at - created_at = $2 * interval '1 millisecond', false)
         FROM forge.jobs WHERE id = $1",
    )
    .bind(id)
    .bind(lease.as_millis() as f64)
    .fetch_one(forge.pool())
    .await
    .unwrap()
}

fn eager_config(concurrency: usize) -> WorkerConfig {
    WorkerConfig {
        concurrency,
        // No renewal during the test: the lease stays as the claim wrote it.
        heartbeat_interval: Duration::from_secs(600),
        ..worker_config()
    }
}

#[tokio::test]
async fn a_job_enqueued_on_an_idle_node_starts_without_waiting_for_a_claim() {
    let config = eager_config(2);
    let (_db, forge, worker) = setup(config.clone()).await;
    let mut updates = Updates::subscribe(&forge).await;
    // The worker is idle once its first claim found nothing; a job run to its end makes sure
    // of that. Each later job finds it idle again, unless a wake-up of the worker is still
    // being handled: a few tries.
    let warm_up = forge.enqueue(quick::request(0)).await.unwrap();
    wait_status(&forge, warm_up, JobStatus::Completed).await;
    let mut eager = None;
    for _ in 0..5 {
        let id = forge
            .enqueue(gated_echo::request("eager".into()))
            .await
            .unwrap();
        wait_effect(forge.pool(), id, "started").await;
        let claimed_now = claimed_at_insert(&forge, id, config.lease).await;
        open_gate(forge.pool(), id, "go").await;
        wait_status(&forge, id, JobStatus::Completed).await;
        if claimed_now {
            eager = Some(id);
            break;
        }
    }
    let id = eager.expect("a job enqueued on the idle node was claimed at insert");
    let r = row(&forge, id).await;
    assert_eq!((r.attempts, r.output), (1, Some(json!("EAGER"))));
    // Every status is still published, in order, `claimed` first.
    let published = updates.until_status(id, JobStatus::Completed).await;
    assert_eq!(
        statuses(&published),
        [JobStatus::Claimed, JobStatus::Running, JobStatus::Completed]
    );
    assert_eq!(published[0].attempt, 1);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_job_enqueued_on_a_busy_node_waits_for_a_claim() {
    let config = eager_config(1);
    let (_db, forge, worker) = setup(config.clone()).await;
    let busy = forge
        .enqueue(gated_echo::request("busy".into()))
        .await
        .unwrap();
    wait_effect(forge.pool(), busy, "started").await;
    // The one slot is taken: the next job is queued, not given to the busy worker at insert
    // (the worker may still claim it ahead, to run it next).
    let next = forge.enqueue(quick::request(21)).await.unwrap();
    assert!(!claimed_at_insert(&forge, next, config.lease).await);
    // A job with an idempotency key is never claimed at insert (it may be an existing job).
    open_gate(forge.pool(), busy, "go").await;
    wait_status(&forge, next, JobStatus::Completed).await;
    let keyed = forge
        .enqueue(gated_echo::request("keyed".into()).idempotency_key("k"))
        .await
        .unwrap();
    wait_effect(forge.pool(), keyed, "started").await;
    assert!(!claimed_at_insert(&forge, keyed, config.lease).await);
    open_gate(forge.pool(), keyed, "go").await;
    wait_status(&forge, keyed, JobStatus::Completed).await;
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Migrations.

#[tokio::test]
async fn nodes_migrating_at_the_same_moment_end_with_one_schema() {
    let db = TestDb::new().await;
    let nodes = futures::future::join_all((0..4).map(|_| Forge::connect_with(&db.url, 2))).await;
    for n in &nodes {
        assert!(n.is_ok(), "{n:?}");
    }
    let forge = nodes.into_iter().next().unwrap().unwrap();
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM forge.schema_migrations ORDER BY version")
            .fetch_all(forge.pool())
            .await
            .unwrap();
    let expected: Vec<i32> = MIGRATIONS.iter().map(|m| m.0).collect();
    assert_eq!(versions, expected);
    // Running them again is a no-op.
    Forge::connect(&db.url).await.unwrap();
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM forge.schema_migrations")
        .fetch_one(forge.pool())
        .await
        .unwrap();
    assert_eq!(count, MIGRATIONS.len() as i64);
    assert!(forge.store().is_ready().await);
    // The database enforces the statuses.
    let id = forge.enqueue(quick::request(1)).await.unwrap();
    let bad = sqlx::query("UPDATE forge.jobs SET status = 'done' WHERE id = $1")
        .bind(id)
        .execute(forge.pool())
        .await;
    assert!(bad.is_err());
}

// ---------------------------------------------------------------------------------------------
// What is published, and what the registry knows.

#[forge::job]
async fn big_output(ctx: &JobContext, n: u32) -> Result<String> {
    ctx.progress(n % 100, format!("{n:>4}{}", "m".repeat(490)))
        .await?;
    Ok(format!("SECRET-OUTPUT-{n}-{}", "x".repeat(10_000)))
}

#[tokio::test]
async fn updates_are_batched_below_the_payload_limit_and_never_carry_the_output() {
    let (_db, forge, worker) = setup(WorkerConfig {
        concurrency: 16,
        ..worker_config()
    })
    .await;
    let mut listener = sqlx::postgres::PgListener::connect_with(forge.pool())
        .await
        .unwrap();
    listener.listen(forge::updates::JOB_UPDATES).await.unwrap();
    let ids = forge
        .enqueue_many((0..200).map(big_output::request))
        .await
        .unwrap();
    let mut completed = std::collections::HashSet::new();
    let mut largest = 0;
    let mut most_updates = 0;
    while completed.len() < ids.len() {
        let n = tokio::time::timeout(WAIT, listener.recv())
            .await
            .expect("updates keep coming")
            .unwrap();
        let payload = n.payload();
        largest = largest.max(payload.len());
        assert!(
            !payload.contains("SECRET-OUTPUT"),
            "the output was published"
        );
        let updates: Vec<serde_json::Value> = serde_json::from_str(payload).unwrap();
        most_updates = most_updates.max(updates.len());
        for u in updates {
            assert!(u.get("output").is_none());
            if u["status"] == "completed" {
                completed.insert(u["job_id"].as_str().unwrap().to_string());
            }
        }
    }
    assert!(largest < 8_000, "a payload of {largest} bytes");
    assert!(most_updates > 1, "every notification carried one update");
    worker.shutdown().await;
}

#[tokio::test]
async fn the_registry_describes_each_job_from_its_signature_and_options() {
    let def = forge_runtime::registry::job("typed_args").expect("registered by the attribute");
    let args: Vec<_> = def
        .args
        .iter()
        .map(|a| (a.name, a.rust_name, a.rust_type))
        .collect();
    assert_eq!(
        args,
        [
            ("userId", "user_id", "Uuid"),
            ("count", "count", "u32"),
            ("address", "address", "Address"),
            ("tags", "tags", "Vec<String>"),
        ]
    );
    assert_eq!(def.output_type, "String");
    let o = forge_runtime::registry::job("special").unwrap().options;
    assert_eq!((o.priority, o.queue, o.max_attempts), (-5, "special", 3));
    let names: Vec<_> = forge_runtime::registry::jobs().map(|d| d.name).collect();
    assert!(names.windows(2).all(|w| w[0] < w[1]), "{names:?}");
    for name in ["gated_echo", "quick", "stamp", "typed_args", "special"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    // The argument schema is what the gateway and the TypeScript generator read.
    let mut gen = schemars::SchemaGenerator::default();
    let schema = serde_json::to_value((def.args_schema)(&mut gen)).unwrap();
    let props = schema["properties"].as_object().unwrap();
    assert_eq!(
        props.keys().map(String::as_str).collect::<Vec<_>>(),
        ["address", "count", "tags", "userId"]
    );
}

#[tokio::test]
async fn one_idempotency_key_twice_in_one_bulk_enqueue_makes_one_job() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let ids = forge
        .enqueue_many([
            quick::request(1).idempotency_key("same"),
            quick::request(2).idempotency_key("same"),
        ])
        .await
        .unwrap();
    assert_eq!(ids[0], ids[1]);
    assert_eq!(job_count(forge.pool()).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_enqueues_with_one_idempotency_key_all_get_the_one_job() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    for round in 0..5 {
        let key = format!("race-{round}");
        let results = futures::future::join_all(
            (0..16).map(|n| forge.enqueue(quick::request(n).idempotency_key(key.clone()))),
        )
        .await;
        let ids: Vec<Uuid> = results
            .into_iter()
            .map(|r| r.expect("every enqueue succeeds"))
            .collect();
        assert!(ids.iter().all(|id| *id == ids[0]), "{ids:?}");
    }
    assert_eq!(job_count(forge.pool()).await, 5);
}

// ---------------------------------------------------------------------------------------------
// Polling is only the fallback: an idle node wakes on notifications and on the next due job.

#[forge::job(max_attempts = 2, backoff = "100ms")]
async fn fails_first(ctx: &JobContext) -> Result<u32> {
    if ctx.attempt() == 1 {
        return Err(Error::msg("first attempt fails"));
    }
    Ok(ctx.attempt())
}

#[tokio::test]
async fn an_idle_node_does_not_wait_for_its_poll_to_run_new_retried_or_scheduled_jobs() {
    // A poll longer than every wait of this test: a job that waited for it would time out.
    let (_db, forge, worker) = setup(WorkerConfig {
        poll_interval: Duration::from_secs(600),
        ..worker_config()
    })
    .await;
    // Let the node settle into its idle wait first.
    let first = forge.enqueue(quick::request(1)).await.unwrap();
    wait_status(&forge, first, JobStatus::Completed).await;

    let new = forge.enqueue(quick::request(2)).await.unwrap();
    wait_status(&forge, new, JobStatus::Completed).await;
    let retried = forge.enqueue(fails_first::request()).await.unwrap();
    let r = wait_status(&forge, retried, JobStatus::Completed).await;
    assert_eq!(r.attempts, 2);
    let scheduled = forge
        .enqueue(quick::request(3).delay(Duration::from_millis(500)))
        .await
        .unwrap();
    wait_status(&forge, scheduled, JobStatus::Completed).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn polling_finds_a_job_whose_notification_never_came() {
    let (_db, forge, worker) = setup(WorkerConfig {
        poll_interval: Duration::from_millis(200),
        ..worker_config()
    })
    .await;
    let first = forge.enqueue(quick::request(1)).await.unwrap();
    wait_status(&forge, first, JobStatus::Completed).await;
    // Inserted with triggers off: no `forge_jobs_available` notification is sent.
    let id = Uuid::now_v7();
    let mut tx = forge.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL session_replication_role = replica")
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO forge.jobs (id, function_name, args) VALUES ($1, 'quick', '{\"n\": 21}')",
    )
    .bind(id)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!(r.output, Some(json!(42)));
    worker.shutdown().await;
}

/// Reports progress from several tasks at once, as a job working on chunks in parallel does.
#[forge::job]
async fn parallel_progress(ctx: &JobContext, rounds: u32) -> Result<()> {
    for round in 0..rounds {
        let base = f64::from(round) * 4.0;
        futures::join!(
            ctx.progress(base + 1.0, format!("{round}: a")),
            ctx.progress(base + 2.0, format!("{round}: b")),
            ctx.progress(base + 3.0, format!("{round}: c")),
        )
        .0?;
    }
    Ok(())
}

#[tokio::test]
async fn the_last_of_several_progress_reports_made_at_once_is_the_one_kept() {
    let (_db, forge, worker) = setup(worker_config()).await;
    let mut updates = Updates::subscribe(&forge).await;
    let id = forge.enqueue(parallel_progress::request(10)).await.unwrap();
    let r = wait_status(&forge, id, JobStatus::Completed).await;
    assert_eq!(r.progress, Some(39.0));
    assert_eq!(r.message.as_deref(), Some("9: c"));
    // Published in the order they were made: progress never goes back.
    let published = updates.until_status(id, JobStatus::Completed).await;
    let values: Vec<f64> = published.iter().filter_map(|u| u.progress).collect();
    assert!(values.windows(2).all(|w| w[0] <= w[1]), "{values:?}");
    worker.shutdown().await;
}

#[tokio::test]
async fn a_delay_too_long_to_represent_is_refused_not_a_panic() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let req = std::panic::catch_unwind(|| quick::request(1).delay(Duration::MAX))
        .expect("building the request does not panic");
    let result = forge.enqueue(req).await;
    // Refused naming the option, or scheduled at the latest representable time: either way
    // the job does not run now.
    match result {
        Err(EnqueueError::InvalidOption { field, .. }) => assert_eq!(field, "run_at"),
        Err(e) => panic!("unexpected error: {e:?}"),
        Ok(id) => assert!(
            row(&forge, id).await.run_at > chrono::Utc::now() + chrono::Duration::days(365 * 1000)
        ),
    }
}
