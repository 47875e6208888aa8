//! The runs API against the real PostgreSQL: jobs and workflows listed by every filter and
//! paged newest first, one job with its attempt history, one workflow with its steps and
//! events, and the operator's retry, cancel, delete and replay, by id and by filter.

mod support;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use forge::prelude::*;
use forge::runs::{
    JobAction, JobFilter, JobSelector, Page, RunsError, WorkflowFilter, DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
};
use forge::StepStatus;
use forge_test_support::TestDb;
use serde_json::json;
use support::*;
use uuid::Uuid;

#[forge::job]
async fn runs_idle(_ctx: &JobContext, n: u32) -> Result<u32> {
    Ok(n)
}

#[forge::job(queue = "reports")]
async fn runs_report(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

/// Fails for good (one attempt) until the `fixed` gate is open.
#[forge::job(max_attempts = 1)]
async fn runs_broken(ctx: &JobContext) -> Result<String> {
    if gate_open(ctx.db(), ctx.job_id(), "fixed").await? {
        return Ok("repaired".into());
    }
    Err(Error::msg("the disk is full"))
}

/// Waits for the `approve` event, then ends.
#[forge::workflow(steps = ["prepare", "approve", "finish"])]
async fn runs_approval(ctx: &WorkflowContext, amount: u32) -> Result<u32> {
    let doubled: u32 = ctx
        .step("prepare", move || async move { Ok(amount * 2) })
        .await?;
    let _: serde_json::Value = ctx
        .wait_for_event("approve", Duration::from_secs(3600))
        .await?;
    ctx.step("finish", move || async move { Ok(doubled + 1) })
        .await
}

fn ids(page: &forge::runs::JobPage) -> Vec<Uuid> {
    page.items.iter().map(|j| j.state.job_id).collect()
}

#[tokio::test]
async fn jobs_are_listed_by_each_filter_newest_first_and_paged_without_gaps() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    // No worker: every job stays `pending` unless cancelled below.
    let mut alice = Vec::new();
    for n in 0..7 {
        alice.push(
            forge
                .enqueue(runs_idle::request(n).owner("alice"))
                .await
                .unwrap(),
        );
    }
    let between = Utc::now();
    let bob = forge
        .enqueue(runs_idle::request(99).owner("bob"))
        .await
        .unwrap();
    let report = forge
        .enqueue(runs_report::request().owner("alice"))
        .await
        .unwrap();
    forge.cancel_job(alice[0], None).await.unwrap();

    let all = forge
        .list_jobs(&JobFilter::default(), &Page::default())
        .await
        .unwrap();
    let mut newest_first: Vec<Uuid> = alice.iter().copied().chain([bob, report]).collect();
    newest_first.reverse();
    assert_eq!(ids(&all), newest_first);
    assert_eq!(all.next_cursor, None);
    let first = &all.items[0];
    assert_eq!(
        (
            first.function.as_str(),
            first.queue.as_str(),
            first.owner.as_deref()
        ),
        ("runs_report", "reports", Some("alice"))
    );
    assert_eq!(first.state.status, JobStatus::Pending);
    assert_eq!((first.attempts, first.max_attempts), (0, 3));

    let by = |filter: JobFilter| {
        let forge = forge.clone();
        async move {
            let page = forge.list_jobs(&filter, &Page::default()).await.unwrap();
            ids(&page).into_iter().collect::<HashSet<_>>()
        }
    };
    let owner = |o: &str| JobFilter {
        owner: Some(o.into()),
        ..JobFilter::default()
    };
    assert_eq!(by(owner("bob")).await, HashSet::from([bob]));
    assert_eq!(by(owner("carol")).await, HashSet::new());
    let alice_all: HashSet<Uuid> = alice.iter().copied().chain([report]).collect();
    assert_eq!(by(owner("alice")).await, alice_all);
    let function = JobFilter {
        function: Some("runs_report".into()),
        ..JobFilter::default()
    };
    assert_eq!(by(function).await, HashSet::from([report]));
    let queue = JobFilter {
        queue: Some("reports".into()),
        ..JobFilter::default()
    };
    assert_eq!(by(queue).await, HashSet::from([report]));
    let cancelled = JobFilter {
        status: vec![JobStatus::Cancelled],
        ..JobFilter::default()
    };
    assert_eq!(by(cancelled).await, HashSet::from([alice[0]]));
    let either = JobFilter {
        status: vec![JobStatus::Cancelled, JobStatus::Completed],
        owner: Some("bob".into()),
        ..JobFilter::default()
    };
    assert_eq!(by(either).await, HashSet::new());
    let after = JobFilter {
        created_after: Some(between),
        ..JobFilter::default()
    };
    assert_eq!(by(after).await, HashSet::from([bob, report]));
    let before = JobFilter {
        created_before: Some(between),
        ..JobFilter::default()
    };
    assert_eq!(by(before).await, alice.iter().copied().collect());

    // Pages of 3 over 9 jobs: 3, 3, 3 and no cursor after the last, nothing seen twice.
    let mut seen = Vec::new();
    let mut page = Page::first(3);
    let mut pages = 0;
    loop {
        let p = forge.list_jobs(&JobFilter::default(), &page).await.unwrap();
        pages += 1;
        assert_eq!(p.items.len(), 3);
        seen.extend(ids(&p));
        match p.next_cursor {
            Some(c) => page.cursor = Some(c),
            None => break,
        }
    }
    assert_eq!((pages, seen), (3, newest_first.clone()));
    // A page exactly as long as what is left has no next cursor; one past the end is empty.
    let last = forge
        .list_jobs(&JobFilter::default(), &Page::first(9))
        .await
        .unwrap();
    assert_eq!((last.items.len(), last.next_cursor), (9, None));
    let beyond = Page {
        cursor: Some(newest_first[8].to_string()),
        limit: None,
    };
    let empty = forge
        .list_jobs(&JobFilter::default(), &beyond)
        .await
        .unwrap();
    assert!(empty.items.is_empty() && empty.next_cursor.is_none());

    // Bad pages and ranges name their field.
    for (page, field) in [
        (Page::first(0), "limit"),
        (Page::first(MAX_PAGE_SIZE + 1), "limit"),
        (
            Page {
                cursor: Some("yesterday".into()),
                limit: None,
            },
            "cursor",
        ),
    ] {
        match forge.list_jobs(&JobFilter::default(), &page).await {
            Err(RunsError::Invalid { field: f, .. }) => assert_eq!(f, field),
            other => panic!("{page:?} answered {other:?}"),
        }
    }
    let backwards = JobFilter {
        created_after: Some(between),
        created_before: Some(between),
        ..JobFilter::default()
    };
    assert!(matches!(
        forge.list_jobs(&backwards, &Page::default()).await,
        Err(RunsError::Invalid {
            field: "createdBefore",
            ..
        })
    ));
    assert_eq!(DEFAULT_PAGE_SIZE, 50);

    // One job, restricted to its owner when asked.
    let detail = forge.job_detail(bob, None).await.unwrap().unwrap();
    assert_eq!(detail.args, json!({ "n": 99 }));
    assert!(detail.attempt_history.is_empty(), "never ran");
    assert!(forge.job_detail(bob, Some("bob")).await.unwrap().is_some());
    assert!(forge
        .job_detail(bob, Some("alice"))
        .await
        .unwrap()
        .is_none());
    assert!(forge
        .job_detail(Uuid::now_v7(), None)
        .await
        .unwrap()
        .is_none());
}

#[tokio::test]
async fn operators_retry_cancel_and_delete_jobs_by_id_and_by_filter() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let worker = forge.start_worker(worker_config()).await.unwrap();
    let broken = forge.enqueue(runs_broken::request()).await.unwrap();
    let r = wait_status(&forge, broken, JobStatus::Failed).await;
    assert_eq!(r.error.as_deref(), Some("the disk is full"));

    // Retried after the cause is fixed: a new attempt, the failed one kept in the history.
    open_gate(forge.pool(), broken, "fixed").await;
    forge.retry_job(broken).await.unwrap();
    let r = wait_status(&forge, broken, JobStatus::Completed).await;
    assert_eq!((r.attempts, r.max_attempts), (2, 2));
    assert_eq!(r.output, Some(json!("repaired")));
    let history = forge
        .job_detail(broken, None)
        .await
        .unwrap()
        .unwrap()
        .attempt_history;
    let outcomes: Vec<_> = history
        .iter()
        .map(|a| (a.attempt, a.outcome, a.error.clone()))
        .collect();
    assert_eq!(
        outcomes,
        [
            (1, JobStatus::Failed, Some("the disk is full".to_string())),
            (2, JobStatus::Completed, None),
        ]
    );
    assert!(history
        .iter()
        .all(|a| a.worker_id == Some(worker.worker_id())));

    // What cannot be done says why.
    let conflict = |r: Result<(), RunsError>| match r {
        Err(RunsError::Conflict(m)) => m,
        other => panic!("expected a conflict, got {other:?}"),
    };
    let m = conflict(forge.retry_job(broken).await);
    assert!(
        m.contains("`completed`") && m.contains("only `failed` and `dead_letter`"),
        "{m}"
    );
    let m = conflict(forge.cancel_any_job(broken).await);
    assert!(m.contains("already finished"), "{m}");
    assert!(matches!(
        forge.retry_job(Uuid::now_v7()).await,
        Err(RunsError::NotFound("job"))
    ));

    // Three more fail; retry all failed ones by filter: a count, and each runs again.
    let mut failed = Vec::new();
    for _ in 0..3 {
        failed.push(forge.enqueue(runs_broken::request()).await.unwrap());
    }
    for &id in &failed {
        wait_status(&forge, id, JobStatus::Failed).await;
        open_gate(forge.pool(), id, "fixed").await;
    }
    let filter = JobFilter {
        status: vec![JobStatus::Failed, JobStatus::DeadLetter],
        ..JobFilter::default()
    };
    let n = forge
        .act_on_jobs(JobAction::Retry, &JobSelector::filter(filter.clone()))
        .await
        .unwrap();
    assert_eq!(n, 3);
    for &id in &failed {
        wait_status(&forge, id, JobStatus::Completed).await;
    }
    assert_eq!(
        forge
            .act_on_jobs(JobAction::Retry, &JobSelector::filter(filter))
            .await
            .unwrap(),
        0
    );
    worker.shutdown().await;

    // Without a worker: cancel waiting jobs by filter, then delete finished ones by filter.
    let mut waiting = Vec::new();
    for n in 0..4 {
        waiting.push(
            forge
                .enqueue(runs_idle::request(n).owner("dave"))
                .await
                .unwrap(),
        );
    }
    let other = forge
        .enqueue(runs_idle::request(9).owner("erin"))
        .await
        .unwrap();
    let dave = JobFilter {
        owner: Some("dave".into()),
        ..JobFilter::default()
    };
    let n = forge
        .act_on_jobs(JobAction::Cancel, &JobSelector::filter(dave.clone()))
        .await
        .unwrap();
    assert_eq!(n, 4);
    for &id in &waiting {
        assert_eq!(row(&forge, id).await.status, JobStatus::Cancelled);
    }
    assert_eq!(row(&forge, other).await.status, JobStatus::Pending);
    // Deleting a job that may still run is refused; a finished one goes.
    let m = conflict(forge.delete_job(other).await);
    assert!(m.contains("cancel it first"), "{m}");
    let n = forge
        .act_on_jobs(JobAction::Delete, &JobSelector::filter(dave))
        .await
        .unwrap();
    assert_eq!(n, 4);
    for &id in &waiting {
        assert!(forge.job(id).await.unwrap().is_none());
    }
    forge.delete_job(broken).await.unwrap();
    assert!(forge.job(broken).await.unwrap().is_none());
    // By ids: only those whose status allows it count.
    let n = forge
        .act_on_jobs(
            JobAction::Cancel,
            &JobSelector::ids([other, failed[0], Uuid::now_v7()]),
        )
        .await
        .unwrap();
    assert_eq!(n, 1);
    // A selector must say which jobs.
    assert!(matches!(
        forge
            .act_on_jobs(JobAction::Delete, &JobSelector::default())
            .await,
        Err(RunsError::Invalid {
            field: "jobIds",
            ..
        })
    ));
}

#[tokio::test]
async fn a_bulk_action_works_through_more_jobs_than_one_batch() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let requests: Vec<_> = (0..2_500).map(runs_idle::request).collect();
    forge.enqueue_many(requests).await.unwrap();
    let n = forge
        .act_on_jobs(
            JobAction::Cancel,
            &JobSelector::filter(JobFilter::default()),
        )
        .await
        .unwrap();
    assert_eq!(n, 2_500);
    let n = forge
        .act_on_jobs(
            JobAction::Delete,
            &JobSelector::filter(JobFilter {
                status: vec![JobStatus::Cancelled],
                ..JobFilter::default()
            }),
        )
        .await
        .unwrap();
    assert_eq!(n, 2_500);
    assert_eq!(job_count(forge.pool()).await, 0);
}

/// A worker holds a job's row while it writes it or while the job starts in a held claim: an
/// action naming the job waits for it and acts on what it finds then; a filter passes it by.
#[tokio::test]
async fn a_job_named_by_id_is_waited_for_while_a_worker_holds_its_row() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge.enqueue(runs_idle::request(1)).await.unwrap();
    let mut held = forge.pool().begin().await.unwrap();
    sqlx::query("SELECT 1 FROM forge.jobs WHERE id = $1 FOR UPDATE")
        .bind(id)
        .execute(&mut *held)
        .await
        .unwrap();

    let by_filter = forge
        .act_on_jobs(
            JobAction::Cancel,
            &JobSelector::filter(JobFilter::default()),
        )
        .await
        .unwrap();
    assert_eq!(by_filter, 0, "a filter does not wait");

    let by_id = {
        let forge = forge.clone();
        tokio::spawn(async move {
            forge
                .act_on_jobs(JobAction::Cancel, &JobSelector::ids([id]))
                .await
        })
    };
    // Still waiting while the row is held (a bounded check: it must not have finished).
    let early = tokio::time::timeout(Duration::from_millis(300), async {
        while !by_id.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(early.is_err(), "the action did not wait for the held row");
    held.commit().await.unwrap();
    assert_eq!(by_id.await.unwrap().unwrap(), 1);
    let row = forge.job(id).await.unwrap().unwrap();
    assert_eq!(row.status, JobStatus::Cancelled);
}

#[tokio::test]
async fn workflows_are_listed_and_shown_with_steps_events_and_what_they_wait_for() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let worker = forge.start_worker(worker_config()).await.unwrap();
    let first = forge
        .start_workflow(runs_approval::request(5).owner("alice"))
        .await
        .unwrap();
    let second = forge
        .start_workflow(runs_approval::request(7).owner("bob"))
        .await
        .unwrap();
    let waiting = |id: Uuid| {
        let forge = forge.clone();
        async move {
            forge_test_support::wait_for("the workflow to wait", WAIT, || async {
                let w = forge.workflow_detail(id, None).await.unwrap()?;
                (w.workflow.state.status == WorkflowStatus::Waiting).then_some(w)
            })
            .await
        }
    };
    let w = waiting(first).await;
    waiting(second).await;
    assert_eq!(
        w.workflow.state.waiting_for.as_deref(),
        Some("event:approve")
    );
    assert_eq!(w.workflow.name, "runs_approval");
    assert_eq!(w.args, json!({ "amount": 5 }));
    assert!(w.resume_at.is_some(), "the wait's deadline");
    let steps: Vec<_> = w
        .step_details
        .iter()
        .map(|s| (s.name.as_str(), s.kind.as_str(), s.status))
        .collect();
    assert_eq!(
        steps,
        [
            ("prepare", "step", StepStatus::Completed),
            ("approve", "event", StepStatus::Running),
            ("finish", "step", StepStatus::Pending),
        ]
    );
    assert_eq!(w.step_details[0].attempts, 1);
    assert!(w.step_details[0].finished_at.is_some());

    // An event nobody waits for is shown, not consumed.
    forge
        .send_workflow_event(first, "unrelated", json!({ "note": 1 }))
        .await
        .unwrap();
    let w = forge.workflow_detail(first, None).await.unwrap().unwrap();
    assert_eq!(w.events.len(), 1);
    assert_eq!(
        (w.events[0].name.as_str(), w.events[0].consumed),
        ("unrelated", false)
    );

    // Lists: by owner, name, status; newest first; the owner's restriction on one.
    let list = |filter: WorkflowFilter| {
        let forge = forge.clone();
        async move {
            forge
                .list_workflows(&filter, &Page::default())
                .await
                .unwrap()
                .items
                .iter()
                .map(|w| w.state.workflow_id)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(list(WorkflowFilter::default()).await, [second, first]);
    let alice = WorkflowFilter {
        owner: Some("alice".into()),
        ..WorkflowFilter::default()
    };
    assert_eq!(list(alice).await, [first]);
    let named = WorkflowFilter {
        name: Some("runs_approval".into()),
        status: vec![WorkflowStatus::Waiting],
        ..WorkflowFilter::default()
    };
    assert_eq!(list(named).await, [second, first]);
    let done = WorkflowFilter {
        status: vec![WorkflowStatus::Completed],
        ..WorkflowFilter::default()
    };
    assert!(list(done.clone()).await.is_empty());
    assert!(forge
        .workflow_detail(first, Some("bob"))
        .await
        .unwrap()
        .is_none());
    // Their jobs are not listed as jobs.
    let jobs = forge
        .list_jobs(&JobFilter::default(), &Page::default())
        .await
        .unwrap();
    assert!(jobs.items.is_empty(), "{:?}", jobs.items);

    // A running workflow is not replayed; a finished one is, as a new run.
    match forge.replay_workflow(first).await {
        Err(RunsError::Conflict(m)) => assert!(m.contains("`waiting`"), "{m}"),
        other => panic!("{other:?}"),
    }
    forge
        .send_workflow_event(first, "approve", json!({}))
        .await
        .unwrap();
    forge_test_support::wait_for("the workflow to complete", WAIT, || async {
        let w = forge.workflow_detail(first, None).await.unwrap()?;
        (w.workflow.state.status == WorkflowStatus::Completed).then_some(())
    })
    .await;
    assert_eq!(list(done).await, [first]);
    let w = forge.workflow_detail(first, None).await.unwrap().unwrap();
    assert_eq!(w.workflow.state.output, Some(json!(11)));
    assert!(w.events.iter().any(|e| e.name == "approve" && e.consumed));
    let replay = forge.replay_workflow(first).await.unwrap();
    assert_ne!(replay, first);
    let again = waiting(replay).await;
    assert_eq!(again.args, json!({ "amount": 5 }));
    assert_eq!(again.workflow.owner.as_deref(), Some("alice"));
    worker.shutdown().await;
}
