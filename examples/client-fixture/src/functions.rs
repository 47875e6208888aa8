//! The functions the client's integration tests call: jobs that report progress, fail, or
//! wait for a gate; a workflow that waits for an event; a table read by a live query.

use std::time::Duration;

use forge::prelude::*;
use forge::workflow::send_event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct StepsDone {
    pub steps: u32,
    pub label: String,
}

/// Reports progress `steps` times, `delay_ms` apart, then answers how many it made.
#[forge::job(max_attempts = 1, timeout = "2m")]
pub(crate) async fn count_steps(
    ctx: &JobContext,
    steps: u32,
    delay_ms: u64,
    label: String,
) -> Result<StepsDone> {
    if steps == 0 {
        return Err(Error::invalid_arg("steps", "must be at least 1"));
    }
    for i in 1..=steps {
        ctx.check_cancelled().await?;
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        ctx.progress(
            f64::from(i) * 100.0 / f64::from(steps),
            format!("step {i} of {steps}"),
        )
        .await?;
    }
    Ok(StepsDone { steps, label })
}

/// Fails at once with `reason`, with no retry.
#[forge::job(max_attempts = 1)]
pub(crate) async fn failing_job(_ctx: &JobContext, reason: String) -> Result<()> {
    Err(Error::fatal(reason))
}

/// Reports progress while it waits for the gate `gate` to be opened (`open_gate`), then ends;
/// so that a test decides when it finishes. Stops at a cancel.
#[forge::job(max_attempts = 1, timeout = "5m")]
pub(crate) async fn gated_job(ctx: &JobContext, gate: String) -> Result<String> {
    let mut beat = 0u32;
    loop {
        ctx.check_cancelled().await?;
        let open: Option<bool> =
            sqlx::query_scalar("SELECT true FROM fixture_gates WHERE name = $1")
                .bind(&gate)
                .fetch_optional(ctx.db())
                .await?;
        if open.is_some() {
            return Ok(format!("passed {gate}"));
        }
        beat += 1;
        // Progress stays below 100 until the gate opens; the message changes every beat.
        ctx.progress(
            f64::from(beat % 90),
            format!("waiting for gate {gate} ({beat})"),
        )
        .await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Opens the gate `name`.
#[forge::mutation]
pub(crate) async fn open_gate(ctx: &MutationContext, name: String) -> Result<()> {
    let mut db = ctx.db().await?;
    sqlx::query("INSERT INTO fixture_gates (name) VALUES ($1) ON CONFLICT DO NOTHING")
        .bind(&name)
        .execute(&mut *db)
        .await?;
    Ok(())
}

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Approved {
    pub title: String,
    pub approved_by: String,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Approval {
    by: String,
}

/// Prepares, waits for the `approved` event (`approve`), then finishes.
#[forge::workflow(steps = ["prepare", "approved", "finish"])]
pub(crate) async fn approval(ctx: &WorkflowContext, title: String) -> Result<Approved> {
    let prepared: String = ctx
        .step("prepare", || async { Ok(format!("prepared {title}")) })
        .await?;
    let approval: Approval = ctx
        .wait_for_event("approved", Duration::from_secs(600))
        .await?;
    ctx.step("finish", || async {
        Ok(Approved {
            title: prepared.trim_start_matches("prepared ").to_string(),
            approved_by: approval.by.clone(),
        })
    })
    .await
}

/// Sends `approved` to the workflow `workflow_id`.
#[forge::mutation]
pub(crate) async fn approve(ctx: &MutationContext, workflow_id: Uuid) -> Result<()> {
    let by = ctx.user().map(|u| u.id.clone()).unwrap_or_default();
    let mut db = ctx.db().await?;
    send_event(
        &mut *db,
        workflow_id,
        "approved",
        serde_json::json!({ "by": by }),
    )
    .await
    .map_err(|e| Error::conflict(e.to_string()))
}

#[derive(Debug, Serialize, Deserialize, JsonSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Note {
    pub id: i64,
    pub topic: String,
    pub text: String,
}

/// The notes of `topic`, oldest first.
#[forge::query]
pub(crate) async fn list_notes(ctx: &QueryContext, topic: String) -> Result<Vec<Note>> {
    let mut db = ctx.db().await?;
    Ok(sqlx::query_as::<_, Note>(
        "SELECT id, topic, text FROM fixture_notes WHERE topic = $1 ORDER BY id",
    )
    .bind(&topic)
    .fetch_all(&mut *db)
    .await?)
}

/// Adds a note to `topic`.
#[forge::mutation]
pub(crate) async fn add_note(ctx: &MutationContext, topic: String, text: String) -> Result<Note> {
    if text.is_empty() {
        return Err(Error::invalid_arg("text", "must not be empty"));
    }
    let mut db = ctx.db().await?;
    Ok(sqlx::query_as::<_, Note>(
        "INSERT INTO fixture_notes (topic, text) VALUES ($1, $2) RETURNING id, topic, text",
    )
    .bind(&topic)
    .bind(&text)
    .fetch_one(&mut *db)
    .await?)
}

/// 2^60: more than a JavaScript number holds exactly (the client must refuse it loudly).
#[forge::query(public)]
pub(crate) async fn big_number(_ctx: &QueryContext) -> Result<i64> {
    Ok(1 << 60)
}
