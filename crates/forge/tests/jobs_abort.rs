//! A job that kills its own process (here `std::process::abort()`) while its node holds its
//! claim (held-claim mode, see the worker module docs): the claim is rolled back with the
//! node, but its jobs are then taken by plain claims only (migration 0011), so the job's
//! attempts are counted and it ends `dead_letter` after `max_attempts`, while the jobs held
//! beside it run once each.

mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use forge::prelude::*;
use forge_test_support::TestDb;
use serde_json::{json, Value};
use support::*;
use uuid::Uuid;

#[forge::job(max_attempts = 3)]
async fn aborter(ctx: &JobContext) -> Result<()> {
    // Seen from another connection, a job of a held claim is still stored as it was before
    // its claim: not `claimed` or `running`.
    let status: String = sqlx::query_scalar("SELECT status FROM forge.jobs WHERE id = $1")
        .bind(ctx.job_id())
        .fetch_one(ctx.db())
        .await?;
    let held = !matches!(status.as_str(), "claimed" | "running");
    let mode = if held { "held" } else { "plain" };
    effect(
        ctx.db(),
        ctx.job_id(),
        &format!("start {} {mode}", ctx.attempt()),
    )
    .await?;
    std::process::abort();
}

#[forge::job]
async fn bystander(_ctx: &JobContext, n: u32) -> Result<u32> {
    Ok(n)
}

/// Set in the environment of the child processes: the database they work on.
const CHILD_DB: &str = "FORGE_ABORT_TEST_CHILD_DB";

/// Not a test of its own: the body of the child processes, nodes that the aborting job kills.
#[tokio::test]
#[ignore = "run by `a_job_that_aborts_its_node_in_a_held_claim_ends_dead_letter`"]
async fn abort_child_worker() {
    support::crash_child(CHILD_DB, worker_config()).await;
}

fn spawn_child(url: &str) -> std::process::Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "abort_child_worker",
            "--exact",
            "--ignored",
            "--test-threads=1",
        ])
        .env(CHILD_DB, url)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

async fn no_hold(forge: &Forge, id: Uuid) -> bool {
    sqlx::query_scalar("SELECT no_hold FROM forge.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(forge.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_job_that_aborts_its_node_in_a_held_claim_ends_dead_letter() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    // Hundreds of instant jobs first (priority 0): the node is holding its claims by the time
    // it reaches the aborting job and its neighbours (priorities 5 and 6), claimed together.
    let mut batch: Vec<JobRequest<Value>> = (0..10)
        .map(|n| JobRequest::new("bystander", json!({ "n": n })).priority(5))
        .collect();
    // After its neighbours: once they are left to plain claims, they run before it.
    batch.insert(5, JobRequest::new("aborter", json!({})).priority(6));
    let ids = forge.enqueue_many(batch).await.unwrap();
    let (aborter_id, neighbours) = (ids[5], [&ids[..5], &ids[6..]].concat());

    // A node, restarted each time the job kills it, until the job has ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut crashes = 0;
    let mut warm_up = Vec::new();
    loop {
        // Each new node too is holding its claims when it reaches the job: without the
        // record of lost claims it would crash in a held claim every time, uncounted.
        warm_up.extend(
            forge
                .enqueue_many((0..1500).map(bystander::request))
                .await
                .unwrap(),
        );
        let mut child = spawn_child(&db.url);
        let ended = loop {
            if row(&forge, aborter_id).await.status.is_terminal() {
                break true;
            }
            if child.try_wait().unwrap().is_some() {
                crashes += 1;
                break false;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the job did not end after {crashes} crashes: {:?}",
                row(&forge, aborter_id).await
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        if ended {
            let _ = child.kill();
            child.wait().unwrap();
            break;
        }
    }

    let r = row(&forge, aborter_id).await;
    assert_eq!((r.status, r.attempts), (JobStatus::DeadLetter, 3), "{r:?}");
    // Every run in a held claim was uncounted and rolled back; the reaper found it and left
    // the job to plain claims, which counted each of the next runs. Without that record each
    // new node, holding its claims again by the time it reaches the job, would crash uncounted
    // until the deadline. (A held run whose claim closed before the abort, because the job
    // had already outlived `START_DEFER` on a busy machine, was counted like a plain one.)
    let runs = effects(forge.pool(), aborter_id).await;
    // Whether a node is holding its claims depends on its pace, which a busy machine can
    // keep low: the test only shows something when the job did run in a held claim.
    assert_eq!(
        runs[0], "start 1 held",
        "{runs:?}: the node was not holding its claims"
    );
    assert_eq!(runs.len(), crashes, "one run per crash: {runs:?}");
    assert!(
        runs.last().is_some_and(|r| r.starts_with("start 3 ")),
        "the third attempt was the last: {runs:?}"
    );
    // Runs beyond the three counted attempts crashed in a held claim and were rolled back.
    let rolled_back = runs.len() > 3;
    if rolled_back {
        assert!(no_hold(&forge, aborter_id).await);
    }
    // The neighbours complete. One running beside it when it kills the node loses that
    // attempt, as in any crash of a node. (Which of them shared its held claim depends on the
    // machine's pace, so their marks are not checked here: `no_hold` of the job itself is.)
    for id in &neighbours {
        let r = wait_status(&forge, *id, JobStatus::Completed).await;
        assert!(r.attempts <= 2, "{r:?}");
    }
    for id in &warm_up {
        wait_status(&forge, *id, JobStatus::Completed).await;
    }
}
