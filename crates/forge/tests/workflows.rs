//! Durable workflows against the real PostgreSQL: steps and their recorded states,
//! compensation, crash recovery in another process, sleeps and events, cancel, the determinism
//! guard, and the updates published on `forge_workflow_updates`.
//!
//! Steps record what they do in a table `effects`, so each test can count how often a step or
//! a compensation really ran and in which order.

mod support;

use std::future::IntoFuture;
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{DateTime, Utc};
use forge::error::{EventError, StartError, WaitError, WorkflowCancelError};
use forge::prelude::*;
use forge::updates::Event;
use forge::{StepStatus, Worker};
use forge_test_support::{wait_for, TestDb};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sqlx::PgPool;
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

/// Records that `what` happened in workflow `wf`.
async fn effect(db: &PgPool, wf: Uuid, what: &str) -> Result<()> {
    sqlx::query("INSERT INTO effects (workflow_id, what) VALUES ($1, $2)")
        .bind(wf)
        .bind(what)
        .execute(db)
        .await?;
    Ok(())
}

/// What happened in workflow `wf`, in order.
async fn effects(db: &PgPool, wf: Uuid) -> Vec<String> {
    sqlx::query_scalar("SELECT what FROM effects WHERE workflow_id = $1 ORDER BY seq")
        .bind(wf)
        .fetch_all(db)
        .await
        .unwrap()
}

/// Whether the gate `name` of workflow `wf` is open; steps poll it to be held at a known point.
async fn gate_open(db: &PgPool, wf: Uuid, name: &str) -> Result<bool> {
    let open: Option<bool> =
        sqlx::query_scalar("SELECT open FROM gates WHERE workflow_id = $1 AND name = $2")
            .bind(wf)
            .bind(name)
            .fetch_optional(db)
            .await?;
    Ok(open.unwrap_or(false))
}

async fn wait_gate(db: &PgPool, wf: Uuid, name: &str) -> Result<()> {
    while !gate_open(db, wf, name).await? {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

async fn open_gate(db: &PgPool, wf: Uuid, name: &str) {
    sqlx::query("INSERT INTO gates (workflow_id, name, open) VALUES ($1, $2, true)")
        .bind(wf)
        .bind(name)
        .execute(db)
        .await
        .unwrap();
}

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        poll_interval: Duration::from_millis(50),
        lease: Duration::from_secs(2),
        heartbeat_interval: Duration::from_millis(300),
        reap_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(2),
        ..WorkerConfig::default()
    }
}

async fn connect(db: &TestDb) -> Forge {
    let forge = Forge::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS effects (seq bigserial PRIMARY KEY, workflow_id uuid,
                                             what text);
         CREATE TABLE IF NOT EXISTS gates (workflow_id uuid, name text, open boolean);
         CREATE TABLE IF NOT EXISTS flags (workflow_id uuid PRIMARY KEY, v integer);",
    )
    .execute(forge.pool())
    .await
    .unwrap();
    forge
}

async fn setup() -> (TestDb, Forge, Worker) {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let worker = forge.start_worker(worker_config()).await.unwrap();
    (db, forge, worker)
}

async fn state(forge: &Forge, id: Uuid) -> WorkflowState {
    forge
        .workflow_state(id)
        .await
        .unwrap()
        .expect("the workflow exists")
}

/// Waits until the workflow's state satisfies `pred`; returns that state.
async fn wait_state(
    forge: &Forge,
    id: Uuid,
    what: &str,
    pred: impl Fn(&WorkflowState) -> bool,
) -> WorkflowState {
    wait_for(what, WAIT, || async {
        let s = state(forge, id).await;
        pred(&s).then_some(s)
    })
    .await
}

async fn wait_status(forge: &Forge, id: Uuid, status: WorkflowStatus) -> WorkflowState {
    wait_state(forge, id, &format!("workflow {status}"), |s| {
        s.status == status
    })
    .await
}

fn steps(s: &WorkflowState) -> Vec<(&str, StepStatus)> {
    s.steps
        .iter()
        .map(|st| (st.name.as_str(), st.status))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// A workflow of four steps.

#[forge::workflow(steps = ["one", "two", "three", "four"])]
async fn four_steps(ctx: &WorkflowContext, tag: String) -> Result<String> {
    let id = ctx.workflow_id();
    let mut seen = Vec::new();
    for name in ["one", "two", "three", "four"] {
        let out: String = ctx
            .step(name, || async {
                effect(ctx.db(), id, name).await?;
                Ok(format!("{tag}:{name}"))
            })
            .await?;
        seen.push(out);
    }
    Ok(seen.join(","))
}

#[tokio::test]
async fn four_steps_complete_with_their_states_recorded_in_order() {
    let (_db, forge, worker) = setup().await;
    let id = forge
        .start_workflow(four_steps::request("x".into()))
        .await
        .unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Completed).await;
    assert_eq!(
        steps(&s),
        vec![
            ("one", StepStatus::Completed),
            ("two", StepStatus::Completed),
            ("three", StepStatus::Completed),
            ("four", StepStatus::Completed),
        ]
    );
    assert_eq!(s.output, Some(json!("x:one,x:two,x:three,x:four")));
    assert_eq!(s.error, None);
    assert_eq!(s.waiting_for, None);
    assert_eq!(
        effects(forge.pool(), id).await,
        ["one", "two", "three", "four"]
    );
    // The wire form is the spec's, camelCase.
    let wire = serde_json::to_value(&s).unwrap();
    assert_eq!(wire["workflowId"], json!(id));
    assert_eq!(
        wire["steps"][0],
        json!({"name": "one", "status": "completed", "error": null})
    );
    assert!(wire.get("waitingFor").is_some());
    worker.shutdown().await;
}

#[tokio::test]
async fn every_change_is_published_on_forge_workflow_updates() {
    let (_db, forge, worker) = setup().await;
    let mut events = forge.notifier().await.unwrap().subscribe();
    let id = forge
        .start_workflow(four_steps::request("u".into()))
        .await
        .unwrap();
    let mut seen: Vec<(WorkflowStatus, Option<String>)> = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.last().map(|(s, _)| *s) != Some(WorkflowStatus::Completed) {
        let event = tokio::time::timeout_at(deadline, events.recv())
            .await
            .expect("the completed update arrives in time")
            .unwrap();
        if let Event::WorkflowUpdates(updates) = event {
            assert!(updates.as_str().len() < 8000);
            for u in updates.decode().unwrap() {
                assert!(u.xid > 0);
                if u.workflow_id == id {
                    seen.push((u.status, u.step));
                }
            }
        }
    }
    let step = |s: &str| Some(s.to_string());
    let expected = [
        (WorkflowStatus::Created, None),
        (WorkflowStatus::Running, None),
        (WorkflowStatus::Running, step("one")),
        (WorkflowStatus::Running, step("two")),
        (WorkflowStatus::Running, step("three")),
        (WorkflowStatus::Running, step("four")),
        (WorkflowStatus::Completed, step("four")),
    ];
    assert_eq!(seen, expected);
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Declared steps.

#[forge::workflow(steps = ["a", "b", "c"])]
async fn gated(ctx: &WorkflowContext) -> Result<()> {
    let id = ctx.workflow_id();
    ctx.step("a", || wait_gate(ctx.db(), id, "a")).await?;
    ctx.step("b", || async { Ok(()) }).await?;
    ctx.step("c", || async { Ok(()) }).await?;
    Ok(())
}

#[tokio::test]
async fn declared_steps_are_pending_before_they_run() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge.start_workflow(gated::request()).await.unwrap();
    let s = state(&forge, id).await;
    assert_eq!(s.status, WorkflowStatus::Created);
    assert_eq!(
        steps(&s),
        vec![
            ("a", StepStatus::Pending),
            ("b", StepStatus::Pending),
            ("c", StepStatus::Pending),
        ]
    );
    let worker = forge.start_worker(worker_config()).await.unwrap();
    let s = wait_state(&forge, id, "step a running", |s| {
        s.steps[0].status == StepStatus::Running
    })
    .await;
    assert_eq!(s.status, WorkflowStatus::Running);
    assert_eq!(s.step.as_deref(), Some("a"));
    assert_eq!(
        steps(&s),
        vec![
            ("a", StepStatus::Running),
            ("b", StepStatus::Pending),
            ("c", StepStatus::Pending),
        ]
    );
    open_gate(forge.pool(), id, "a").await;
    let s = wait_status(&forge, id, WorkflowStatus::Completed).await;
    assert!(s.steps.iter().all(|st| st.status == StepStatus::Completed));
    worker.shutdown().await;
}

/// Steps that were not declared appear when they start, after the ones that started before.
#[forge::workflow(steps = ["declared_first", "declared_last"])]
async fn with_dynamic_steps(ctx: &WorkflowContext, extra: u32) -> Result<()> {
    ctx.step("declared_first", || async { Ok(()) }).await?;
    for i in 0..extra {
        ctx.step(format!("extra_{i}"), || async { Ok(()) }).await?;
    }
    ctx.step("declared_last", || async { Ok(()) }).await?;
    Ok(())
}

#[tokio::test]
async fn dynamic_steps_appear_in_the_order_they_ran() {
    let (_db, forge, worker) = setup().await;
    let id = forge
        .start_workflow(with_dynamic_steps::request(2))
        .await
        .unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Completed).await;
    let names: Vec<_> = s.steps.iter().map(|st| st.name.as_str()).collect();
    assert_eq!(
        names,
        ["declared_first", "extra_0", "extra_1", "declared_last"]
    );
    worker.shutdown().await;
}

/// No `steps = [...]`: the macro reads the literal step names (and event waits) from the body,
/// so every step is listed from the start.
#[forge::workflow]
async fn undeclared_steps(ctx: &WorkflowContext) -> Result<()> {
    ctx.step("first", || async { Ok(()) }).await?;
    let _: serde_json::Value = ctx.wait_for_event("go", Duration::from_secs(60)).await?;
    ctx.step("last", || async { Ok(()) }).await
}

#[tokio::test]
async fn steps_named_by_literals_are_listed_from_the_start_without_a_declaration() {
    let (_db, forge, worker) = setup().await;
    let id = forge
        .start_workflow(undeclared_steps::request())
        .await
        .unwrap();
    let at_start = forge.workflow_state(id).await.unwrap().unwrap();
    let names: Vec<_> = at_start.steps.iter().map(|st| st.name.as_str()).collect();
    assert_eq!(names, ["first", "go", "last"]);
    let s = wait_status(&forge, id, WorkflowStatus::Waiting).await;
    assert_eq!(
        steps(&s),
        vec![
            ("first", StepStatus::Completed),
            ("go", StepStatus::Running),
            ("last", StepStatus::Pending),
        ]
    );
    forge.cancel_workflow(id, None).await.unwrap();
    worker.shutdown().await;
}

/// Two steps run at once; their order in the history is the order the body asked for them.
#[forge::workflow]
async fn fan_out(ctx: &WorkflowContext) -> Result<u32> {
    let id = ctx.workflow_id();
    let side = |name: &'static str, millis: u64| {
        ctx.step(name, move || async move {
            tokio::time::sleep(Duration::from_millis(millis)).await;
            effect(ctx.db(), id, name).await?;
            Ok(millis as u32)
        })
        .into_future()
    };
    let (left, right) = tokio::join!(side("left", 80), side("right", 10));
    let sum = left? + right?;
    ctx.step("after", || async move { Ok(sum) }).await
}

#[tokio::test]
async fn steps_may_run_concurrently() {
    let (_db, forge, worker) = setup().await;
    let id = forge.start_workflow(fan_out::request()).await.unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Completed).await;
    assert_eq!(s.output, Some(json!(90)));
    assert_eq!(
        steps(&s),
        vec![
            ("left", StepStatus::Completed),
            ("right", StepStatus::Completed),
            ("after", StepStatus::Completed),
        ]
    );
    assert_eq!(effects(forge.pool(), id).await, ["right", "left"]);
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Failure and compensation.

/// Four compensated steps; step `fail_at` fails for good, and the compensation of step
/// `undo_fails_at` fails on every attempt.
#[forge::workflow(steps = ["s1", "s2", "s3", "s4"])]
async fn saga(ctx: &WorkflowContext, fail_at: u32, undo_fails_at: u32) -> Result<()> {
    let id = ctx.workflow_id();
    for n in 1..=4u32 {
        let name = format!("s{n}");
        let db = ctx.db().clone();
        ctx.step(name.clone(), || async {
            if n == fail_at {
                return Err(Error::fatal(format!("step {n} broke")));
            }
            effect(ctx.db(), id, &format!("do:{n}")).await?;
            Ok(n)
        })
        .compensate(move |out: u32| {
            let db = db.clone();
            async move {
                effect(&db, id, &format!("undo:{out}")).await?;
                if out == undo_fails_at {
                    return Err(Error::msg(format!("cannot undo {out}")));
                }
                Ok(())
            }
        })
        .retries(1)
        .backoff(Duration::from_millis(20))
        .await?;
    }
    Ok(())
}

#[tokio::test]
async fn a_failing_step_compensates_the_completed_ones_newest_first() {
    let (_db, forge, worker) = setup().await;
    let id = forge.start_workflow(saga::request(3, 0)).await.unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Compensated).await;
    assert_eq!(
        steps(&s),
        vec![
            ("s1", StepStatus::Compensated),
            ("s2", StepStatus::Compensated),
            ("s3", StepStatus::Failed),
            ("s4", StepStatus::Skipped),
        ]
    );
    assert_eq!(s.steps[2].error.as_deref(), Some("step 3 broke"));
    assert_eq!(s.error.as_deref(), Some("step 3 broke"));
    assert_eq!(s.output, None);
    assert_eq!(
        effects(forge.pool(), id).await,
        ["do:1", "do:2", "undo:2", "undo:1"]
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn a_failing_compensation_ends_failed_with_both_errors() {
    let (_db, forge, worker) = setup().await;
    let id = forge.start_workflow(saga::request(3, 2)).await.unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Failed).await;
    assert_eq!(
        steps(&s),
        vec![
            ("s1", StepStatus::Completed),
            ("s2", StepStatus::Failed),
            ("s3", StepStatus::Failed),
            ("s4", StepStatus::Skipped),
        ]
    );
    let error = s.error.unwrap();
    assert!(error.contains("step 3 broke"), "{error}");
    assert!(error.contains("cannot undo 2"), "{error}");
    assert!(s.steps[1]
        .error
        .as_deref()
        .unwrap()
        .contains("cannot undo 2"));
    // Tried twice (one retry), then the compensations stop: step 1 is not undone.
    assert_eq!(
        effects(forge.pool(), id).await,
        ["do:1", "do:2", "undo:2", "undo:2"]
    );
    worker.shutdown().await;
}

#[forge::workflow]
async fn flaky(ctx: &WorkflowContext, failures: u32) -> Result<u32> {
    let id = ctx.workflow_id();
    ctx.step("flaky", || async {
        effect(ctx.db(), id, "try").await?;
        let tries = effects(ctx.db(), id).await.len() as u32;
        if tries <= failures {
            return Err(Error::msg(format!("failure {tries}")));
        }
        Ok(tries)
    })
    .retries(3)
    .backoff(Duration::from_millis(20))
    .await
}

#[tokio::test]
async fn a_step_is_retried_with_backoff_without_holding_a_worker() {
    let (_db, forge, worker) = setup().await;
    let id = forge.start_workflow(flaky::request(2)).await.unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Completed).await;
    assert_eq!(s.output, Some(json!(3)));
    assert_eq!(s.steps[0].status, StepStatus::Completed);
    assert_eq!(s.steps[0].error, None);

    // Out of retries: the step fails, and with nothing to undo the workflow is compensated.
    let id = forge.start_workflow(flaky::request(10)).await.unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Compensated).await;
    assert_eq!(s.steps[0].status, StepStatus::Failed);
    assert_eq!(s.error.as_deref(), Some("failure 4"));
    assert_eq!(effects(forge.pool(), id).await.len(), 4);
    worker.shutdown().await;
}

#[forge::workflow]
async fn misbehaving(ctx: &WorkflowContext, panic: bool) -> Result<()> {
    ctx.step("misbehave", || async {
        if panic {
            panic!("boom");
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        Ok(())
    })
    .retries(0)
    .timeout(Duration::from_millis(100))
    .await
}

#[tokio::test]
async fn a_panicking_or_hanging_step_fails_like_an_error() {
    let (_db, forge, worker) = setup().await;
    let panics = forge
        .start_workflow(misbehaving::request(true))
        .await
        .unwrap();
    let hangs = forge
        .start_workflow(misbehaving::request(false))
        .await
        .unwrap();
    let s = wait_status(&forge, panics, WorkflowStatus::Compensated).await;
    let error = s.steps[0].error.as_deref().unwrap();
    assert!(error.contains("panicked: boom"), "{error}");
    let s = wait_status(&forge, hangs, WorkflowStatus::Compensated).await;
    let error = s.steps[0].error.as_deref().unwrap();
    assert!(error.contains("timed out after 100ms"), "{error}");
    // The worker survived both.
    let again = forge
        .start_workflow(four_steps::request("after".into()))
        .await
        .unwrap();
    wait_status(&forge, again, WorkflowStatus::Completed).await;
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// A crash: the process running the workflow is killed; another one resumes it.

#[forge::workflow(steps = ["first", "second", "third", "fourth"])]
async fn crash_course(ctx: &WorkflowContext) -> Result<()> {
    let id = ctx.workflow_id();
    ctx.step("first", || effect(ctx.db(), id, "first")).await?;
    ctx.step("second", || effect(ctx.db(), id, "second"))
        .await?;
    ctx.step("third", || async {
        effect(ctx.db(), id, "third").await?;
        wait_gate(ctx.db(), id, "third").await
    })
    .await?;
    ctx.step("fourth", || effect(ctx.db(), id, "fourth"))
        .await?;
    Ok(())
}

/// Set in the environment of the child process of the crash test: the database it works on.
const CHILD_DB: &str = "FORGE_WORKFLOW_TEST_CHILD_DB";

/// Not a test of its own: the body of the child process of the crash test, which runs a
/// worker until it is killed.
#[tokio::test]
#[ignore = "run by `a_killed_process_is_resumed_by_another_without_rerunning_completed_steps`"]
async fn crash_child_worker() {
    support::crash_child(CHILD_DB, worker_config()).await;
}

#[tokio::test]
async fn a_killed_process_is_resumed_by_another_without_rerunning_completed_steps() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge.start_workflow(crash_course::request()).await.unwrap();

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
    let s = wait_state(&forge, id, "step three running in the child", |s| {
        s.steps[2].status == StepStatus::Running
    })
    .await;
    assert_eq!(
        &steps(&s)[..2],
        [
            ("first", StepStatus::Completed),
            ("second", StepStatus::Completed)
        ]
    );
    // Inside the step, not just recorded as started.
    wait_for("step three's effect", WAIT, || async {
        effects(forge.pool(), id)
            .await
            .contains(&"third".to_string())
            .then_some(())
    })
    .await;
    // SIGKILL: no clean-up of any kind in the child.
    child.kill().unwrap();
    child.wait().unwrap();

    open_gate(forge.pool(), id, "third").await;
    let worker = forge.start_worker(worker_config()).await.unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Completed).await;
    assert!(s.steps.iter().all(|st| st.status == StepStatus::Completed));
    // The completed steps ran once; the interrupted one ran again.
    assert_eq!(
        effects(forge.pool(), id).await,
        ["first", "second", "third", "third", "fourth"]
    );
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Sleeping and waiting for events.

#[forge::workflow]
async fn napper(ctx: &WorkflowContext, millis: u64) -> Result<()> {
    let id = ctx.workflow_id();
    ctx.step("before", || effect(ctx.db(), id, "before"))
        .await?;
    ctx.sleep(Duration::from_millis(millis)).named("nap").await;
    ctx.step("after", || effect(ctx.db(), id, "after")).await?;
    Ok(())
}

#[tokio::test]
async fn sleep_suspends_durably_and_resumes_when_due() {
    let (_db, forge, worker) = setup().await;
    let id = forge.start_workflow(napper::request(1_500)).await.unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Waiting).await;
    assert_eq!(s.step.as_deref(), Some("nap"));
    let timer = s.waiting_for.clone().unwrap();
    let at: DateTime<Utc> = timer
        .strip_prefix("timer:")
        .unwrap_or_else(|| panic!("waitingFor is a timer: {timer}"))
        .parse()
        .unwrap();
    let left = at - Utc::now();
    assert!(
        left > chrono::Duration::zero() && left < chrono::Duration::milliseconds(1_600),
        "{timer}"
    );
    assert_eq!(
        steps(&s),
        vec![
            ("before", StepStatus::Completed),
            ("nap", StepStatus::Running),
            // Listed from the start: the macro read its literal name from the body.
            ("after", StepStatus::Pending),
        ]
    );
    // No worker holds a waiting workflow.
    wait_for("the worker to be idle", WAIT, || async {
        (worker.running_jobs() == 0).then_some(())
    })
    .await;

    let s = wait_status(&forge, id, WorkflowStatus::Completed).await;
    assert!(Utc::now() >= at);
    assert_eq!(
        steps(&s),
        vec![
            ("before", StepStatus::Completed),
            ("nap", StepStatus::Completed),
            ("after", StepStatus::Completed),
        ]
    );
    assert_eq!(effects(forge.pool(), id).await, ["before", "after"]);
    worker.shutdown().await;
}

#[tokio::test]
async fn a_sleeping_workflow_survives_a_restart() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let worker = forge.start_worker(worker_config()).await.unwrap();
    let id = forge.start_workflow(napper::request(800)).await.unwrap();
    wait_status(&forge, id, WorkflowStatus::Waiting).await;
    worker.shutdown().await;
    forge.pool().close().await;

    // A new node, a new pool: the workflow wakes there.
    let forge = connect(&db).await;
    let worker = forge.start_worker(worker_config()).await.unwrap();
    wait_status(&forge, id, WorkflowStatus::Completed).await;
    assert_eq!(effects(forge.pool(), id).await, ["before", "after"]);
    worker.shutdown().await;
}

#[derive(Debug, Serialize, Deserialize)]
struct Confirmation {
    code: String,
}

#[forge::workflow(steps = ["send", "wait_confirm", "activate"])]
async fn confirm_flow(ctx: &WorkflowContext, timeout_ms: u64) -> Result<String> {
    let id = ctx.workflow_id();
    ctx.step("send", || effect(ctx.db(), id, "send")).await?;
    let confirmation = ctx
        .wait_for_event::<Confirmation>("confirmed", Duration::from_millis(timeout_ms))
        .named("wait_confirm")
        .await;
    match confirmation {
        Ok(c) => {
            ctx.step("activate", || async {
                effect(ctx.db(), id, "activate").await?;
                Ok(c.code.clone())
            })
            .await
        }
        Err(WaitError::TimedOut { .. }) => {
            ctx.step("expire", || effect(ctx.db(), id, "expire"))
                .await?;
            Ok("expired".into())
        }
        Err(e) => Err(e.into()),
    }
}

#[tokio::test]
async fn wait_for_event_suspends_until_the_event_arrives() {
    let (_db, forge, worker) = setup().await;
    let id = forge
        .start_workflow(confirm_flow::request(60_000))
        .await
        .unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Waiting).await;
    assert_eq!(s.waiting_for.as_deref(), Some("event:confirmed"));
    assert_eq!(s.step.as_deref(), Some("wait_confirm"));
    assert_eq!(
        steps(&s),
        vec![
            ("send", StepStatus::Completed),
            ("wait_confirm", StepStatus::Running),
            ("activate", StepStatus::Pending),
        ]
    );
    wait_for("the worker to be idle", WAIT, || async {
        (worker.running_jobs() == 0).then_some(())
    })
    .await;

    // An event of another name does not wake it.
    forge
        .send_workflow_event(id, "other", json!({}))
        .await
        .unwrap();
    // Delivered inside a caller's transaction: it counts once that commits.
    let mut tx = forge.pool().begin().await.unwrap();
    forge::workflow::send_event(&mut *tx, id, "confirmed", json!({"code": "c-42"}))
        .await
        .unwrap();
    tx.commit().await.unwrap();

    let s = wait_status(&forge, id, WorkflowStatus::Completed).await;
    assert_eq!(s.output, Some(json!("c-42")));
    assert_eq!(
        steps(&s),
        vec![
            ("send", StepStatus::Completed),
            ("wait_confirm", StepStatus::Completed),
            ("activate", StepStatus::Completed),
        ]
    );
    assert_eq!(effects(forge.pool(), id).await, ["send", "activate"]);

    // Finished workflows take no events; unknown ones neither.
    let err = forge
        .send_workflow_event(id, "confirmed", json!({}))
        .await
        .unwrap_err();
    assert!(
        matches!(err, EventError::AlreadyFinished(WorkflowStatus::Completed)),
        "{err:?}"
    );
    let err = forge
        .send_workflow_event(Uuid::now_v7(), "confirmed", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(err, EventError::NotFound), "{err:?}");
    worker.shutdown().await;
}

#[tokio::test]
async fn an_event_sent_before_the_wait_is_not_lost() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let id = forge
        .start_workflow(confirm_flow::request(60_000))
        .await
        .unwrap();
    // Not even started yet.
    forge
        .send_workflow_event(id, "confirmed", json!({"code": "early"}))
        .await
        .unwrap();
    let worker = forge.start_worker(worker_config()).await.unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Completed).await;
    assert_eq!(s.output, Some(json!("early")));
    worker.shutdown().await;
}

#[tokio::test]
async fn a_wait_that_times_out_is_an_error_the_workflow_handles() {
    let (_db, forge, worker) = setup().await;
    let id = forge
        .start_workflow(confirm_flow::request(300))
        .await
        .unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Completed).await;
    assert_eq!(s.output, Some(json!("expired")));
    assert_eq!(
        steps(&s),
        vec![
            ("send", StepStatus::Completed),
            ("wait_confirm", StepStatus::Failed),
            ("expire", StepStatus::Completed),
            ("activate", StepStatus::Skipped),
        ]
    );
    let error = s.steps[1].error.as_deref().unwrap();
    assert!(
        error.contains("timed out") && error.contains("confirmed"),
        "{error}"
    );
    assert_eq!(effects(forge.pool(), id).await, ["send", "expire"]);
    worker.shutdown().await;
}

#[tokio::test]
async fn events_racing_the_wait_are_never_lost() {
    let (_db, forge, worker) = setup().await;
    // Each event is sent at a different moment around the one the workflow suspends: a lost
    // wake-up would leave its workflow waiting for the (one minute) timeout.
    let mut ids = Vec::new();
    for i in 0..30u64 {
        let id = forge
            .start_workflow(confirm_flow::request(60_000))
            .await
            .unwrap();
        let forge = forge.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_micros(i * 700)).await;
            forge
                .send_workflow_event(id, "confirmed", json!({"code": format!("c{i}")}))
                .await
                .unwrap();
        });
        ids.push((i, id));
    }
    for (i, id) in ids {
        let s = wait_status(&forge, id, WorkflowStatus::Completed).await;
        assert_eq!(s.output, Some(json!(format!("c{i}"))));
    }
    worker.shutdown().await;
}

#[tokio::test]
async fn a_mutation_starts_workflows_and_sends_events_in_its_transaction() {
    let (_db, forge, worker) = setup().await;
    let user = forge::User {
        id: "carol".into(),
        roles: vec![],
    };
    // Rolled back: no workflow.
    let ctx = MutationContext::new(forge.store().clone(), Some(user.clone()));
    let gone = ctx
        .start_workflow(confirm_flow::request(60_000))
        .await
        .unwrap();
    ctx.rollback().await.unwrap();
    assert!(forge.workflow_state(gone).await.unwrap().is_none());

    let ctx = MutationContext::new(forge.store().clone(), Some(user));
    let id = ctx
        .start_workflow(confirm_flow::request(60_000))
        .await
        .unwrap();
    ctx.commit().await.unwrap();
    assert_eq!(
        forge.workflow(id).await.unwrap().unwrap().owner.as_deref(),
        Some("carol")
    );
    wait_status(&forge, id, WorkflowStatus::Waiting).await;

    // An event sent by a mutation that fails is never seen.
    let ctx = MutationContext::new(forge.store().clone(), None);
    ctx.send_workflow_event(id, "confirmed", json!({"code": "rolled-back"}))
        .await
        .unwrap();
    ctx.rollback().await.unwrap();
    let ctx = MutationContext::new(forge.store().clone(), None);
    ctx.send_workflow_event(id, "confirmed", json!({"code": "committed"}))
        .await
        .unwrap();
    ctx.commit().await.unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Completed).await;
    assert_eq!(s.output, Some(json!("committed")));
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Cancel.

#[forge::workflow(steps = ["book", "wait_payment", "ship"])]
async fn cancellable(ctx: &WorkflowContext) -> Result<()> {
    let id = ctx.workflow_id();
    let db = ctx.db().clone();
    ctx.step("book", || async {
        effect(ctx.db(), id, "book").await?;
        Ok("booking-1".to_string())
    })
    .compensate(move |booking: String| {
        let db = db.clone();
        async move { effect(&db, id, &format!("unbook:{booking}")).await }
    })
    .await?;
    ctx.wait_for_event::<serde_json::Value>("paid", Duration::from_secs(3600))
        .named("wait_payment")
        .await?;
    ctx.step("ship", || effect(ctx.db(), id, "ship")).await
}

#[tokio::test]
async fn cancel_runs_the_compensations_of_completed_steps() {
    let (_db, forge, worker) = setup().await;
    let id = forge
        .start_workflow(cancellable::request().owner("alice"))
        .await
        .unwrap();
    wait_status(&forge, id, WorkflowStatus::Waiting).await;

    let err = forge
        .cancel_workflow(id, Some("mallory"))
        .await
        .unwrap_err();
    assert!(matches!(err, WorkflowCancelError::NotFound), "{err:?}");
    let status = forge.cancel_workflow(id, Some("alice")).await.unwrap();
    assert_eq!(status, WorkflowStatus::Compensating);

    let s = wait_status(&forge, id, WorkflowStatus::Compensated).await;
    assert_eq!(s.error.as_deref(), Some("cancelled"));
    assert_eq!(s.waiting_for, None);
    assert_eq!(
        steps(&s),
        vec![
            ("book", StepStatus::Compensated),
            ("wait_payment", StepStatus::Failed),
            ("ship", StepStatus::Skipped),
        ]
    );
    assert_eq!(
        effects(forge.pool(), id).await,
        ["book", "unbook:booking-1"]
    );
    let err = forge.cancel_workflow(id, None).await.unwrap_err();
    assert!(
        matches!(
            err,
            WorkflowCancelError::AlreadyFinished(WorkflowStatus::Compensated)
        ),
        "{err:?}"
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn cancel_of_a_running_step_compensates_it_once_it_completes() {
    let (_db, forge, worker) = setup().await;
    let id = forge.start_workflow(saga::request(0, 0)).await.unwrap();
    // Hold nothing: cancel while the steps run, and check the end state is consistent.
    wait_state(&forge, id, "a step done", |s| {
        s.steps[0].status == StepStatus::Completed
    })
    .await;
    forge.cancel_workflow(id, None).await.ok();
    let s = wait_state(&forge, id, "the end", |s| s.status.is_terminal()).await;
    // Either it finished before the cancel landed, or every completed step was undone.
    if s.status == WorkflowStatus::Compensated {
        let done = effects(forge.pool(), id).await;
        let did = done.iter().filter(|e| e.starts_with("do:")).count();
        let undid = done.iter().filter(|e| e.starts_with("undo:")).count();
        assert_eq!(did, undid, "{done:?}");
        assert!(s
            .steps
            .iter()
            .all(|st| st.status != StepStatus::Completed && st.status != StepStatus::Running));
    } else {
        assert_eq!(s.status, WorkflowStatus::Completed);
    }
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// The determinism guard.

/// Asks for `alpha` or `gamma` first depending on a flag in the database: flipping the flag
/// while the workflow waits stands for its code changing under it.
#[forge::workflow]
async fn fickle(ctx: &WorkflowContext) -> Result<()> {
    let id = ctx.workflow_id();
    let v: i32 = sqlx::query_scalar("SELECT v FROM flags WHERE workflow_id = $1")
        .bind(id)
        .fetch_one(ctx.db())
        .await?;
    let first = if v == 1 { "alpha" } else { "gamma" };
    ctx.step(first, || effect(ctx.db(), id, first)).await?;
    ctx.wait_for_event::<serde_json::Value>("go", Duration::from_secs(3600))
        .await?;
    ctx.step("beta", || effect(ctx.db(), id, "beta")).await
}

#[tokio::test]
async fn a_replay_asking_for_other_steps_fails_clearly() {
    let (_db, forge, worker) = setup().await;
    let mut tx = forge.pool().begin().await.unwrap();
    let id = forge::workflow::start(&mut *tx, fickle::request())
        .await
        .unwrap();
    sqlx::query("INSERT INTO flags (workflow_id, v) VALUES ($1, 1)")
        .bind(id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    wait_status(&forge, id, WorkflowStatus::Waiting).await;

    sqlx::query("UPDATE flags SET v = 2 WHERE workflow_id = $1")
        .bind(id)
        .execute(forge.pool())
        .await
        .unwrap();
    forge
        .send_workflow_event(id, "go", json!(null))
        .await
        .unwrap();
    let s = wait_status(&forge, id, WorkflowStatus::Failed).await;
    let error = s.error.unwrap();
    assert!(
        error.contains("`gamma`") && error.contains("`alpha`") && error.contains("position 1"),
        "{error}"
    );
    // Nothing ran under the wrong name, and nothing after.
    assert_eq!(effects(forge.pool(), id).await, ["alpha"]);
    assert_eq!(s.steps[0].status, StepStatus::Completed);
    worker.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// Starting.

#[tokio::test]
async fn start_json_checks_arguments_and_writes_nothing_on_error() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let err = forge
        .start_workflow_json("four_steps", json!({"tag": 5}), None)
        .await
        .unwrap_err();
    match err {
        StartError::InvalidArgs(e) => assert_eq!(e.field, "tag"),
        e => panic!("{e:?}"),
    }
    let err = forge
        .start_workflow_json("four_steps", json!({}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, StartError::InvalidArgs(e) if e.field == "tag"),
        "{err:?}"
    );
    let err = forge
        .start_workflow_json("nope", json!({}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, StartError::UnknownWorkflow(ref n) if n == "nope"),
        "{err:?}"
    );
    let rows: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM forge.workflows) + (SELECT count(*) FROM forge.jobs)",
    )
    .fetch_one(forge.pool())
    .await
    .unwrap();
    assert_eq!(rows, 0);

    let id = forge
        .start_workflow_json("four_steps", json!({"tag": "t"}), Some("bob".into()))
        .await
        .unwrap();
    let row = forge.workflow(id).await.unwrap().unwrap();
    assert_eq!(row.owner.as_deref(), Some("bob"));
    assert_eq!(row.name, "four_steps");
}

#[tokio::test]
async fn an_idempotency_key_starts_one_workflow() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let req = || four_steps::request("k".into()).idempotency_key("order-7");
    let a = forge.start_workflow(req()).await.unwrap();
    let b = forge.start_workflow(req()).await.unwrap();
    assert_eq!(a, b);
    let (workflows, jobs): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM forge.workflows), (SELECT count(*) FROM forge.jobs)",
    )
    .fetch_one(forge.pool())
    .await
    .unwrap();
    assert_eq!((workflows, jobs), (1, 1));
}
