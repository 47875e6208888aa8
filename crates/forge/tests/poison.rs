//! Poison isolation (issue 13): values PostgreSQL cannot store (NUL in text and JSON strings
//! or keys, huge and deeply nested values) in a job's arguments, progress message, output or
//! error, or a workflow's arguments, step output or event, never stall a node. Every job
//! reaches a terminal status within a bounded wait, the bad ones fail saying why, and the
//! innocent jobs claimed beside them complete, in both claim modes (plain and held).
//!
//! The values come from a seeded `fastrand` generator (already a dependency; failures are
//! reproduced from the seed printed, `POISON_SEED=<n>`): every control character, JSON text
//! with `\u0000` and lone surrogate escapes, long and deep values.

mod support;

use std::time::Duration;

use forge::error::{EnqueueError, EventError, StartError};
use forge::prelude::*;
use forge::updates::JobUpdate;
use forge_runtime::store::{FinishStatus, HeldEnd, HeldWrite};
use forge_runtime::value::{MAX_ERROR_CHARS, MAX_VALUE_BYTES, MAX_VALUE_DEPTH};
use forge_test_support::TestDb;
use serde_json::{json, Value};
use support::*;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// The generator.

fn rng() -> fastrand::Rng {
    let seed = std::env::var("POISON_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    eprintln!("POISON_SEED={seed}");
    fastrand::Rng::with_seed(seed)
}

fn random_char(r: &mut fastrand::Rng) -> char {
    match r.u8(..10) {
        // Every control character, NUL included.
        0..=2 => char::from(r.u8(0..0x20)),
        3 => ['"', '\\', '/', '\u{7f}'][r.usize(..4)],
        4 => ['é', '€', '😀', '\u{fffd}', '\u{feff}'][r.usize(..5)],
        _ => char::from(r.u8(0x20..0x7f)),
    }
}

fn random_string(r: &mut fastrand::Rng) -> String {
    let len = match r.u8(..20) {
        0 => r.usize(1_000..20_000),
        _ => r.usize(0..12),
    };
    (0..len).map(|_| random_char(r)).collect()
}

/// JSON text of a string with escapes, some of which (a lone surrogate) no JSON parser may
/// accept: such text never becomes a value, so it cannot reach a write.
fn random_escaped(r: &mut fastrand::Rng) -> Option<Value> {
    let mut text = String::from("\"");
    let mut lone = false;
    for _ in 0..r.usize(1..6) {
        match r.u8(..5) {
            0 => text.push_str("\\u0000"),
            1 => {
                // Followed by a plain character: never half of a pair.
                text.push_str(["\\ud800a", "\\udfffa", "\\udbffa"][r.usize(..3)]);
                lone = true;
            }
            2 => text.push_str("\\ud83d\\ude00"),
            3 => text.push_str(&format!("\\u{:04x}", r.u8(0..0x20))),
            _ => text.push('a'),
        }
    }
    text.push('"');
    let parsed = serde_json::from_str::<Value>(&text);
    assert_eq!(parsed.is_err(), lone, "{text}");
    parsed.ok()
}

fn random_json(r: &mut fastrand::Rng, depth: usize) -> Value {
    match r.u8(..if depth > 4 { 5 } else { 8 }) {
        0 => Value::Null,
        1 => json!(r.bool()),
        2 => json!(r.i64(-1_000_000..1_000_000)),
        3 => random_escaped(r).unwrap_or(Value::Null),
        4 => Value::String(random_string(r)),
        5 => Value::Array(
            (0..r.usize(0..4))
                .map(|_| random_json(r, depth + 1))
                .collect(),
        ),
        _ => Value::Object(
            (0..r.usize(0..4))
                .map(|_| (random_string(r), random_json(r, depth + 1)))
                .collect(),
        ),
    }
}

/// A value of one of the hard shapes, or an ordinary random one.
fn random_value(r: &mut fastrand::Rng) -> Value {
    match r.u8(..12) {
        0 => {
            let mut v = json!("leaf");
            for _ in 0..r.usize(MAX_VALUE_DEPTH - 20..MAX_VALUE_DEPTH + 40) {
                v = if r.bool() {
                    json!([v])
                } else {
                    json!({ "k": v })
                };
            }
            v
        }
        1 => json!({ "big": "x".repeat(MAX_VALUE_BYTES + r.usize(1..1000)) }),
        2 => json!({ "fine": "y".repeat(r.usize(1_000..100_000)) }),
        _ => random_json(r, 0),
    }
}

/// What the value must be to be stored, worked out independently of the runtime's checks:
/// no NUL anywhere (JSON text shows it as `\u0000`), within the size and depth limits.
fn storable(v: &Value) -> bool {
    fn depth(v: &Value) -> usize {
        match v {
            Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
            Value::Object(o) => 1 + o.values().map(depth).max().unwrap_or(0),
            _ => 0,
        }
    }
    let text = serde_json::to_string(v).unwrap();
    !text.contains("\\u0000") && text.len() <= MAX_VALUE_BYTES && depth(v) <= MAX_VALUE_DEPTH
}

// ---------------------------------------------------------------------------------------------
// Jobs.

/// What one job does: made from a seed inside the job, so that its poison does not travel
/// in its arguments (which are checked at enqueue).
#[derive(Debug, Clone)]
struct Case {
    /// Reported with `ctx.progress` first.
    progress: Option<String>,
    /// Returned as the job's error (fatal) instead of its output.
    error: Option<String>,
    output: Value,
}

fn case(seed: u64) -> Case {
    let r = &mut fastrand::Rng::with_seed(seed);
    let mut case = Case {
        progress: None,
        error: None,
        output: json!("innocent"),
    };
    // About a third of the jobs are innocent; the rest carry one random value each.
    match r.u8(..9) {
        0..=2 => {}
        3 | 4 => case.progress = Some(random_string(r)),
        5 => case.error = Some(random_string(r)),
        _ => case.output = random_value(r),
    }
    case
}

#[forge::job(max_attempts = 1)]
async fn poison(
    ctx: &JobContext,
    sleep_ms: u64,
    seed: u64,
    #[allow(unused_variables)] pad: Value,
) -> Result<Value> {
    tokio::time::sleep(Duration::from_millis(sleep_ms)).await;
    let case = case(seed);
    if let Some(message) = case.progress {
        ctx.progress(10, message).await?;
    }
    if let Some(error) = case.error {
        return Err(Error::fatal(error));
    }
    Ok(case.output)
}

/// What a case must end as: `Ok(output)` completed, `Err(words)` failed with an error
/// containing `words`.
fn expected(case: &Case) -> Result<Value, &'static str> {
    if case.progress.as_deref().is_some_and(|m| m.contains('\0')) {
        return Err("NUL character");
    }
    if case.error.is_some() {
        return Err("");
    }
    if storable(&case.output) {
        Ok(case.output.clone())
    } else {
        Err("output")
    }
}

enum Mode {
    /// One slot and jobs of 15 ms: far below the pace at which held claims start.
    Plain,
    /// Hundreds of instant jobs first: the node holds its claims.
    Held,
}

async fn jobs_in(mode: Mode) {
    let mut r = rng();
    let (config, sleep_ms, warm_up) = match mode {
        Mode::Plain => (
            WorkerConfig {
                concurrency: 1,
                ..worker_config()
            },
            15,
            0,
        ),
        // Enough that the claim pace ramps up to held claims even on a loaded machine.
        Mode::Held => (worker_config(), 0, 1500),
    };
    let (_db, forge, worker) = setup(config).await;
    let mut updates = Updates::subscribe(&forge).await;
    match mode {
        Mode::Plain => {
            let written_once = round(&forge, &mut updates, &mut r, sleep_ms, warm_up).await;
            assert_eq!(written_once, 0, "no held claims");
        }
        // Whether the pace reaches held claims depends on the machine's load: every round
        // checks every job, and one of at most three must have held its claims.
        Mode::Held => {
            let mut rounds = 0;
            while round(&forge, &mut updates, &mut r, sleep_ms, warm_up).await == 0 {
                rounds += 1;
                assert!(
                    rounds < 3,
                    "held claims were used in none of {rounds} rounds"
                );
            }
        }
    }
    worker.shutdown().await;
}

/// Enqueues `warm_up` instant jobs and 60 random cases after them, and checks how each case
/// ended; returns how many cases were written once (held claims).
async fn round(
    forge: &Forge,
    updates: &mut Updates,
    r: &mut fastrand::Rng,
    sleep_ms: u64,
    warm_up: usize,
) -> usize {
    let stored = job_count(forge.pool()).await;
    let mut requests: Vec<_> = (0..warm_up)
        .map(|_| poison::request(0, 0, json!(null)))
        .collect();
    let mut seeds = Vec::new();
    for _ in 0..60 {
        let seed = r.u64(..);
        // One in six with arguments that cannot be stored.
        let pad = if r.u8(..6) == 0 {
            random_value(r)
        } else {
            json!(null)
        };
        let req = poison::request(sleep_ms, seed, pad.clone());
        // The arguments object is one level above the argument.
        if storable(&json!({ "pad": pad })) {
            requests.push(req);
            seeds.push(seed);
            continue;
        }
        // Refused at enqueue, naming the argument and where in it, and nothing is stored.
        match forge.enqueue(req).await {
            Err(EnqueueError::InvalidArgs(e)) => {
                assert!(e.field == "pad" || e.field == ".", "{e:?}");
            }
            other => panic!("{other:?} for {pad:?}"),
        }
    }
    assert_eq!(
        job_count(forge.pool()).await,
        stored,
        "refused arguments store nothing"
    );
    let ids = forge.enqueue_many(requests).await.unwrap();
    let ids = &ids[warm_up..];

    let mut written_once = 0;
    for (seed, id) in seeds.iter().zip(ids) {
        let case = case(*seed);
        let r = wait_row(forge, *id, "a terminal status", |r| r.status.is_terminal()).await;
        match expected(&case) {
            Ok(output) => {
                assert_eq!(r.status, JobStatus::Completed, "{case:?}: {r:?}");
                assert_eq!(r.output, Some(output));
            }
            Err(words) => {
                assert_eq!(r.status, JobStatus::Failed, "{case:?}: {r:?}");
                let error = r.error.clone().unwrap_or_default();
                assert!(error.contains(words), "{error}");
                assert!(!error.contains('\0'));
                assert!(error.chars().count() <= MAX_ERROR_CHARS + 20);
                if let Some(e) = &case.error {
                    if !e.contains('\0') && e.chars().count() <= MAX_ERROR_CHARS {
                        assert_eq!(&error, e);
                    }
                }
            }
        }
        assert_eq!(r.attempts, 1);
        if r.progress.is_some() {
            let message = r.message.clone().unwrap_or_default();
            assert!(case.progress.as_deref().unwrap().starts_with(&message));
        }
        let published: Vec<JobUpdate> = updates.until_status(*id, r.status).await;
        if published.first().map(|u| u.xid) == published.last().map(|u| u.xid) {
            written_once += 1;
        }
    }
    written_once
}

#[tokio::test]
async fn poison_values_fail_their_own_job_only_with_plain_claims() {
    jobs_in(Mode::Plain).await;
}

#[tokio::test]
async fn poison_values_fail_their_own_job_only_with_held_claims() {
    jobs_in(Mode::Held).await;
}

// ---------------------------------------------------------------------------------------------
// The database's own refusal, should a value get past the checks: a held claim's close.

#[forge::job]
async fn plain_quick(_ctx: &JobContext, n: u32) -> Result<u32> {
    Ok(n)
}

#[tokio::test]
async fn a_held_close_the_database_refuses_fails_only_the_refused_jobs() {
    let db = TestDb::new().await;
    let forge = connect(&db).await;
    let ids = forge
        .enqueue_many((0..7).map(plain_quick::request))
        .await
        .unwrap();
    let (claim, jobs) = forge
        .store()
        .claim_held(&["default".into()], &["plain_quick".into()], 10)
        .await
        .unwrap();
    assert_eq!(jobs.len(), 7);
    // Written straight to the store, past the checks: jobs 2 and 5 carry a NUL.
    let writes: Vec<HeldWrite> = ids
        .iter()
        .enumerate()
        .map(|(n, id)| HeldWrite {
            id: *id,
            attempt: 1,
            end: HeldEnd::Finished(FinishStatus::Completed(match n {
                2 => json!({"a": "x\u{0}"}),
                _ => json!(n),
            })),
            progress: (n == 5).then(|| (50.0, Some("half\u{0}way".to_string()))),
        })
        .collect();
    tokio::time::timeout(
        WAIT,
        claim.close(Uuid::now_v7(), Duration::from_secs(30), &writes),
    )
    .await
    .expect("the close ends")
    .unwrap();
    for (n, id) in ids.iter().enumerate() {
        let r = row(&forge, *id).await;
        if n == 2 || n == 5 {
            assert_eq!(r.status, JobStatus::Failed, "{n}");
            let error = r.error.unwrap();
            assert!(
                error.starts_with("the database refused this job's data: "),
                "{error}"
            );
            assert_eq!(r.message, None);
        } else {
            assert_eq!((r.status, r.output), (JobStatus::Completed, Some(json!(n))));
        }
        assert_eq!(r.attempts, 1);
    }
}

// ---------------------------------------------------------------------------------------------
// Workflows: arguments, step outputs, events, outputs.

#[forge::workflow]
async fn poisoned_flow(ctx: &WorkflowContext, tag: Value) -> Result<Value> {
    let stepped: Value = ctx.step("produce", || async { Ok(json!("made")) }).await?;
    let event: Value = ctx.wait_for_event("data", Duration::from_secs(60)).await?;
    Ok(json!({ "tag": tag, "step": stepped, "event": event }))
}

#[tokio::test]
async fn poison_arguments_and_events_of_workflows_are_refused_and_others_run() {
    let mut r = rng();
    let (_db, forge, worker) = setup(worker_config()).await;
    let mut started = Vec::new();
    for _ in 0..16 {
        let tag = random_value(&mut r);
        let sent = forge
            .start_workflow(poisoned_flow::request(tag.clone()))
            .await;
        if storable(&json!({ "tag": tag })) {
            started.push((sent.unwrap(), tag));
        } else {
            // Refused at start, naming the argument; nothing is stored.
            match sent {
                Err(StartError::InvalidArgs(e)) => {
                    assert!(e.field == "tag" || e.field == ".", "{e:?}")
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let mut events = Vec::new();
    for (id, _) in &started {
        let payload = random_value(&mut r);
        let sent = forge
            .send_workflow_event(*id, "data", payload.clone())
            .await;
        if storable(&payload) {
            sent.unwrap();
            events.push(payload);
        } else {
            assert!(matches!(sent, Err(EventError::Unstorable(_))), "{sent:?}");
            forge
                .send_workflow_event(*id, "data", json!("innocent"))
                .await
                .unwrap();
            events.push(json!("innocent"));
        }
    }
    for ((id, tag), event) in started.iter().zip(events) {
        wait_workflow_terminal(&forge, *id).await;
        let row = forge.workflow(*id).await.unwrap().unwrap();
        // The output holds the event one level deeper than it was sent: a payload at the
        // depth limit fits as an event but not inside the output, which is then refused and
        // the workflow compensated, naming where.
        if storable(&json!({ "tag": tag, "step": "made", "event": event })) {
            assert_eq!(row.status, WorkflowStatus::Completed, "{row:?}");
            assert_eq!(row.output.unwrap()["tag"], *tag);
        } else {
            assert_eq!(row.status, WorkflowStatus::Compensated, "{row:?}");
            let error = row.error.unwrap_or_default();
            assert!(error.starts_with("the workflow's output "), "{error}");
        }
    }
    worker.shutdown().await;
}

#[forge::workflow]
async fn poisoned_step(ctx: &WorkflowContext, seed: u64) -> Result<Value> {
    let mut r = fastrand::Rng::with_seed(seed);
    let out = random_value(&mut r);
    ctx.step("produce", || async move { Ok(out) }).await
}

#[tokio::test]
async fn a_step_output_that_cannot_be_stored_fails_its_workflow_at_once() {
    let mut r = rng();
    let (_db, forge, worker) = setup(worker_config()).await;
    let mut started = Vec::new();
    for _ in 0..16 {
        let seed = r.u64(..);
        let output = random_value(&mut fastrand::Rng::with_seed(seed));
        let id = forge
            .start_workflow(poisoned_step::request(seed))
            .await
            .unwrap();
        started.push((id, output));
    }
    for (id, output) in started {
        wait_workflow_terminal(&forge, id).await;
        let row = forge.workflow(id).await.unwrap().unwrap();
        if storable(&output) {
            assert_eq!(row.status, WorkflowStatus::Completed, "{row:?}");
            assert_eq!(row.output, Some(output));
        } else {
            // The body fails, and there is nothing to undo.
            assert_eq!(row.status, WorkflowStatus::Compensated, "{row:?}");
            let error = row.error.unwrap_or_default();
            assert!(error.contains("the output of step `produce`"), "{error}");
        }
    }
    worker.shutdown().await;
}

async fn wait_workflow_terminal(forge: &Forge, id: Uuid) {
    forge_test_support::wait_for("a terminal workflow status", WAIT, || async {
        let row = forge.workflow(id).await.unwrap().unwrap();
        matches!(
            row.status,
            WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Compensated
        )
        .then_some(())
    })
    .await;
}
