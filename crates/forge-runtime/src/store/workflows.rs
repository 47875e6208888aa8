//! (Over 500 lines: the workflow statements share their fence and their column lists; split
//! them the way `store/jobs/` is split when another concept is added here.)
//!
//! Workflow operations: starting, the engine's fenced reads and writes, events, cancel, and
//! the state clients see.
//!
//! The engine writes through [`write_workflow`], one statement that flushes the step results
//! it holds, records the step it starts and changes the workflow, all fenced by the job (id and
//! attempt) that runs the workflow: a worker that lost its job can no longer change anything.
//! Suspending the workflow inserts, in the same statement, the job that will resume it.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

use super::realtime::DbSnapshot;
use super::Store;
use crate::status::{StepState, StepStatus, WorkflowState, WorkflowStatus};
use crate::value;

/// The `function_name` of the jobs that run the workflow `name`.
pub fn workflow_job_name(name: &str) -> String {
    format!("{WORKFLOW_JOB_PREFIX}{name}")
}

/// Prefix of the job names of workflows (the SQL of this file spells it too).
pub const WORKFLOW_JOB_PREFIX: &str = "workflow:";

/// How many times the job that runs a workflow may be attempted. Its attempts fail only when
/// the engine cannot reach the database or the node dies, never because of a step (steps have
/// their own retries), so the allowance is generous.
pub const WORKFLOW_JOB_ATTEMPTS: i32 = 100;

/// A workflow to insert, with the job that will run it first.
#[derive(Debug, Clone)]
pub struct NewWorkflow {
    pub id: Uuid,
    pub name: String,
    pub args: Value,
    pub owner: Option<String>,
    pub queue: String,
    /// Steps shown as `pending` from the start, in order.
    pub declared_steps: Vec<String>,
    pub idempotency_key: Option<String>,
    pub job_id: Uuid,
}

/// Which job may write to a workflow: the one that runs it now, in this attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    pub workflow_id: Uuid,
    pub job_id: Uuid,
    pub attempt: i32,
}

/// What kind of operation a history entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Step,
    Sleep,
    Event,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Step => "step",
            StepKind::Sleep => "sleep",
            StepKind::Event => "event",
        }
    }
}

/// One entry of a workflow's history (a step row that was reached).
#[derive(Debug, Clone, Deserialize)]
pub struct HistoryEntry {
    pub run_seq: i32,
    pub name: String,
    pub kind: StepKind,
    pub status: StepStatus,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub attempts: i32,
    pub compensation_attempts: i32,
    pub has_compensation: bool,
    pub wake_at: Option<DateTime<Utc>>,
}

/// A workflow as a job that runs it finds it.
#[derive(Debug, Clone)]
pub struct LoadedWorkflow {
    pub name: String,
    pub args: Value,
    /// `created` and `waiting` are already turned into `running` by the load.
    pub status: WorkflowStatus,
    pub error: Option<String>,
    pub owner: Option<String>,
    /// The database's clock at the load.
    pub now: DateTime<Utc>,
    /// Ordered by `run_seq`, from 1 without gaps.
    pub history: Vec<HistoryEntry>,
}

/// Changes a history entry that exists.
#[derive(Debug, Clone)]
pub struct StepUpdate {
    pub run_seq: i32,
    pub status: StepStatus,
    /// `None` keeps the stored output.
    pub output: Option<Value>,
    /// Replaces the stored error (`None` clears it).
    pub error: Option<String>,
    /// `None` keeps the stored count.
    pub compensation_attempts: Option<i32>,
    pub wake_at: Option<DateTime<Utc>>,
}

/// Records an entry of the history: a step that starts (or starts again), a sleep or a wait.
/// It takes the first declared row of its name not reached yet, or a new row.
#[derive(Debug, Clone)]
pub struct StepStart {
    pub run_seq: i32,
    pub name: String,
    pub kind: StepKind,
    pub status: StepStatus,
    pub output: Option<Value>,
    /// `None` keeps the error a row already has (the last failed attempt's).
    pub error: Option<String>,
    pub attempts: i32,
    pub has_compensation: bool,
    pub wake_at: Option<DateTime<Utc>>,
}

/// Hands the workflow to a new job due at `run_at` (the job is inserted by the same
/// statement). The running job then ends, and no worker slot is held until then.
#[derive(Debug, Clone, Copy)]
pub struct Park {
    pub job_id: Uuid,
    pub run_at: DateTime<Utc>,
}

/// One fenced write of the engine. `updates` always apply; the rest only while the workflow
/// has the status `expect` (a cancel may have turned it `compensating` meanwhile).
#[derive(Debug, Clone)]
pub struct WorkflowWrite {
    pub fence: Fence,
    pub updates: Vec<StepUpdate>,
    pub expect: WorkflowStatus,
    pub start: Option<StepStart>,
    pub status: WorkflowStatus,
    /// `None` keeps the current step.
    pub step: Option<String>,
    pub waiting_for: Option<String>,
    /// `None` keeps the stored output / error.
    pub output: Option<Value>,
    pub error: Option<String>,
    pub park: Option<Park>,
    /// The workflow ends: steps never reached become `skipped`.
    pub finish: bool,
}

/// What became of a [`WorkflowWrite`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Applied,
    /// Only the `updates` applied: the workflow had this status instead of the expected one.
    StatusWas(WorkflowStatus),
    /// The job no longer runs the workflow: nothing was written.
    Lost,
}

/// A workflow as stored, with its steps, for status reads.
#[derive(Debug, Clone)]
pub struct WorkflowRow {
    pub id: Uuid,
    pub name: String,
    pub status: WorkflowStatus,
    pub step: Option<String>,
    pub waiting_for: Option<String>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// In display order: started steps in the order they started, then the declared steps
    /// not reached yet.
    pub steps: Vec<StepState>,
}

impl WorkflowRow {
    /// The state clients see. Output is only shown once completed.
    pub fn state(&self) -> WorkflowState {
        WorkflowState {
            workflow_id: self.id,
            status: self.status,
            step: self.step.clone(),
            waiting_for: self.waiting_for.clone(),
            steps: self.steps.clone(),
            output: if self.status == WorkflowStatus::Completed {
                self.output.clone()
            } else {
                None
            },
            error: self.error.clone(),
        }
    }
}

/// What a cancel request did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// The workflow is (now, or already was) `compensating`.
    Compensating,
    NotFound,
    AlreadyFinished(WorkflowStatus),
}

/// What delivering an event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliverOutcome {
    /// Stored; `woken` when the workflow was waiting for it and was handed to a job due now.
    Delivered {
        woken: bool,
    },
    NotFound,
    AlreadyFinished(WorkflowStatus),
}

fn status_of(s: &str) -> Result<WorkflowStatus, sqlx::Error> {
    WorkflowStatus::parse(s).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "status".into(),
        source: format!("unknown workflow status `{s}`").into(),
    })
}

/// The columns and steps of [`WorkflowRow`]; `w` is the workflows table.
const ROW_COLUMNS: &str = "w.id, w.name, w.status, w.step, w.waiting_for, w.output, w.error, \
    w.owner, w.created_at, w.started_at, w.finished_at,
    (SELECT COALESCE(jsonb_agg(jsonb_build_object('name', s.name, 'status', s.status,
                                                  'error', s.error)
                               ORDER BY s.run_seq NULLS LAST, s.idx), '[]')
     FROM forge.workflow_steps s WHERE s.workflow_id = w.id) AS steps";

fn workflow_row(row: &sqlx::postgres::PgRow) -> Result<WorkflowRow, sqlx::Error> {
    let status: String = row.try_get("status")?;
    let steps: sqlx::types::Json<Vec<StepState>> = row.try_get("steps")?;
    Ok(WorkflowRow {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        status: status_of(&status)?,
        step: row.try_get("step")?,
        waiting_for: row.try_get("waiting_for")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        owner: row.try_get("owner")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        steps: steps.0,
    })
}

/// Inserts a workflow, its declared steps and its first job in one statement. With an
/// idempotency key that is taken, nothing is inserted and the id of the workflow holding the
/// key is returned (waiting, if that workflow is being inserted concurrently, for its
/// transaction to end).
pub async fn insert_workflow<'e, E: PgExecutor<'e>>(
    exec: E,
    wf: &NewWorkflow,
) -> Result<Uuid, sqlx::Error> {
    // `DO UPDATE` rather than `DO NOTHING`: it returns the row holding the key, even one
    // committed after this statement's snapshot was taken. `xmax = 0` tells a fresh insert.
    sqlx::query_scalar(
        "WITH wf AS (
             INSERT INTO forge.workflows AS w (id, name, args, owner, queue, idempotency_key,
                                               job_id, resume_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, now())
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL
                 DO UPDATE SET idempotency_key = w.idempotency_key
             RETURNING id, xmax::text = '0' AS inserted
         ), steps AS (
             INSERT INTO forge.workflow_steps (workflow_id, idx, name)
             SELECT wf.id, s.ord, s.name
             FROM wf, unnest($8::text[]) WITH ORDINALITY AS s(name, ord)
             WHERE wf.inserted
         ), job AS (
             INSERT INTO forge.jobs (id, function_name, args, queue, max_attempts)
             SELECT $7, $9, jsonb_build_object('workflowId', wf.id), $5, $10
             FROM wf WHERE wf.inserted
         )
         SELECT id FROM wf",
    )
    .bind(wf.id)
    .bind(&wf.name)
    .bind(&wf.args)
    .bind(&wf.owner)
    .bind(&wf.queue)
    .bind(&wf.idempotency_key)
    .bind(wf.job_id)
    .bind(&wf.declared_steps)
    .bind(workflow_job_name(&wf.name))
    .bind(WORKFLOW_JOB_ATTEMPTS)
    .fetch_one(exec)
    .await
}

/// A workflow and its steps, if it exists.
pub async fn get_workflow<'e, E: PgExecutor<'e>>(
    exec: E,
    id: Uuid,
) -> Result<Option<WorkflowRow>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {ROW_COLUMNS} FROM forge.workflows w WHERE w.id = $1"
    ))
    .bind(id)
    .fetch_optional(exec)
    .await?;
    row.as_ref().map(workflow_row).transpose()
}

/// Takes the workflow over for the job `job_id` in attempt `attempt`: afterwards only writes
/// fenced by that job and attempt change it. `None` when that job no longer runs the workflow
/// (it was handed to another job) or the workflow has ended.
pub async fn load_workflow<'e, E: PgExecutor<'e>>(
    exec: E,
    workflow_id: Uuid,
    job_id: Uuid,
    attempt: i32,
) -> Result<Option<LoadedWorkflow>, sqlx::Error> {
    let row = sqlx::query(
        "WITH w AS (
             UPDATE forge.workflows SET
                 attempt = $3,
                 resume_at = NULL,
                 status = CASE WHEN status IN ('created', 'waiting') THEN 'running' ELSE status END,
                 waiting_for = CASE WHEN status IN ('created', 'waiting') THEN NULL
                                    ELSE waiting_for END,
                 started_at = COALESCE(started_at, now()),
                 updated_at = now()
             WHERE id = $1 AND job_id = $2
               AND status IN ('created', 'running', 'waiting', 'compensating')
             RETURNING name, args, status, error, owner
         )
         SELECT w.*, clock_timestamp() AS now,
                (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                            'run_seq', run_seq, 'name', name, 'kind', kind, 'status', status,
                            'output', output, 'error', error, 'attempts', attempts,
                            'compensation_attempts', compensation_attempts,
                            'has_compensation', has_compensation, 'wake_at', wake_at)
                            ORDER BY run_seq), '[]')
                 FROM forge.workflow_steps
                 WHERE workflow_id = $1 AND run_seq IS NOT NULL) AS history
         FROM w",
    )
    .bind(workflow_id)
    .bind(job_id)
    .bind(attempt)
    .fetch_optional(exec)
    .await?;
    let Some(row) = row else { return Ok(None) };
    let status: String = row.try_get("status")?;
    let history: sqlx::types::Json<Vec<HistoryEntry>> = row.try_get("history")?;
    Ok(Some(LoadedWorkflow {
        name: row.try_get("name")?,
        args: row.try_get("args")?,
        status: status_of(&status)?,
        error: row.try_get("error")?,
        owner: row.try_get("owner")?,
        now: row.try_get("now")?,
        history: history.0,
    }))
}

/// Locks the workflow row for the rest of the transaction, if `fence` still holds; returns
/// its status. Event delivery locks the same row, so after this no event can slip in between
/// looking for one and suspending to wait for it.
pub async fn lock_workflow(
    conn: &mut PgConnection,
    fence: Fence,
) -> Result<Option<WorkflowStatus>, sqlx::Error> {
    let status: Option<String> = sqlx::query_scalar(
        "SELECT status FROM forge.workflows
         WHERE id = $1 AND job_id = $2 AND attempt = $3
         FOR UPDATE",
    )
    .bind(fence.workflow_id)
    .bind(fence.job_id)
    .bind(fence.attempt)
    .fetch_optional(conn)
    .await?;
    status.as_deref().map(status_of).transpose()
}

/// Takes the oldest event `name` not taken yet for the wait at `run_seq`, or the one that wait
/// took already (so that taking is idempotent when the write after it was lost).
pub async fn take_event(
    conn: &mut PgConnection,
    workflow_id: Uuid,
    name: &str,
    run_seq: i32,
) -> Result<Option<Value>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE forge.workflow_events SET consumed_by = $3
         WHERE id = (
             SELECT id FROM forge.workflow_events
             WHERE workflow_id = $1 AND name = $2 AND (consumed_by IS NULL OR consumed_by = $3)
             ORDER BY consumed_by NULLS LAST, id
             LIMIT 1)
         RETURNING payload",
    )
    .bind(workflow_id)
    .bind(name)
    .bind(run_seq)
    .fetch_optional(conn)
    .await
}

/// Applies one write of the engine; see [`WorkflowWrite`].
pub async fn write_workflow<'e, E: PgExecutor<'e>>(
    exec: E,
    w: &WorkflowWrite,
) -> Result<WriteOutcome, sqlx::Error> {
    let n = w.updates.len();
    let mut seqs = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut outputs: Vec<Option<&Value>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<String>> = Vec::with_capacity(n);
    let mut comp_attempts = Vec::with_capacity(n);
    let mut wake_ats = Vec::with_capacity(n);
    for u in &w.updates {
        seqs.push(u.run_seq);
        statuses.push(u.status.as_str());
        outputs.push(u.output.as_ref());
        errors.push(u.error.clone().map(value::error_text));
        comp_attempts.push(u.compensation_attempts);
        wake_ats.push(u.wake_at);
    }
    let s = w.start.as_ref();
    let row = sqlx::query(&format!(
        "WITH wf AS (
             SELECT id, status, name, queue FROM forge.workflows
             WHERE id = $1 AND job_id = $2 AND attempt = $3
             FOR UPDATE
         ), ok AS (
             SELECT id FROM wf WHERE status = $4
         ), updated AS (
             UPDATE forge.workflow_steps s SET
                 status = u.status,
                 output = COALESCE(u.output, s.output),
                 error = u.error,
                 compensation_attempts = COALESCE(u.comp_attempts, s.compensation_attempts),
                 wake_at = u.wake_at,
                 finished_at = CASE WHEN u.status IN ('completed', 'failed')
                                     AND s.status IS DISTINCT FROM u.status
                                    THEN now() ELSE s.finished_at END,
                 compensated_at = CASE WHEN u.status = 'compensated' THEN now()
                                       ELSE s.compensated_at END
             FROM wf, unnest($5::int[], $6::text[], $7::jsonb[], $8::text[], $9::int[],
                             $10::timestamptz[])
                      AS u(run_seq, status, output, error, comp_attempts, wake_at)
             WHERE s.workflow_id = wf.id AND s.run_seq = u.run_seq
         ), target AS (
             SELECT COALESCE(
                 (SELECT idx FROM forge.workflow_steps WHERE workflow_id = $1 AND run_seq = $11),
                 (SELECT min(idx) FROM forge.workflow_steps
                  WHERE workflow_id = $1 AND run_seq IS NULL AND status = 'pending'
                    AND name = $12),
                 (SELECT COALESCE(max(idx), 0) + 1 FROM forge.workflow_steps
                  WHERE workflow_id = $1)) AS idx
             FROM ok WHERE $11::int IS NOT NULL
         ), started AS (
             INSERT INTO forge.workflow_steps AS s
                 (workflow_id, idx, run_seq, name, kind, status, output, error, attempts,
                  has_compensation, wake_at, started_at, finished_at)
             SELECT $1, target.idx, $11, $12, $13, $14, $15, $16, $17, $18, $19, now(),
                    CASE WHEN $14 IN ('completed', 'failed') THEN now() END
             FROM target
             ON CONFLICT (workflow_id, idx) DO UPDATE SET
                 run_seq = EXCLUDED.run_seq, kind = EXCLUDED.kind, status = EXCLUDED.status,
                 output = EXCLUDED.output, error = COALESCE(EXCLUDED.error, s.error),
                 attempts = EXCLUDED.attempts, has_compensation = EXCLUDED.has_compensation,
                 wake_at = EXCLUDED.wake_at, started_at = COALESCE(s.started_at, now()),
                 finished_at = EXCLUDED.finished_at
         ), skipped AS (
             UPDATE forge.workflow_steps s SET status = 'skipped'
             FROM ok WHERE $27 AND s.workflow_id = ok.id AND s.status = 'pending'
         ), changed AS (
             UPDATE forge.workflows w SET
                 status = $20,
                 step = COALESCE($21, w.step),
                 waiting_for = $22,
                 output = COALESCE($23, w.output),
                 error = COALESCE($24, w.error),
                 job_id = COALESCE($25, w.job_id),
                 resume_at = $26,
                 updated_at = now(),
                 finished_at = CASE WHEN $27 THEN now() END
             FROM ok WHERE w.id = ok.id
             RETURNING w.id
         ){park}
         SELECT status, EXISTS (SELECT 1 FROM ok) AS applied FROM wf",
        // Only a write that parks has the INSERT: any INSERT statement on `forge.jobs`, even
        // of no rows, wakes every worker.
        park = if w.park.is_some() {
            ", parked AS (
             INSERT INTO forge.jobs (id, function_name, args, queue, max_attempts, run_at)
             SELECT $25, 'workflow:' || wf.name, jsonb_build_object('workflowId', wf.id),
                    wf.queue, $28, $26
             FROM wf JOIN changed ON changed.id = wf.id
         )"
        } else {
            ""
        }
    ))
    .bind(w.fence.workflow_id)
    .bind(w.fence.job_id)
    .bind(w.fence.attempt)
    .bind(w.expect.as_str())
    .bind(&seqs)
    .bind(&statuses)
    .bind(&outputs)
    .bind(&errors)
    .bind(&comp_attempts)
    .bind(&wake_ats)
    .bind(s.map(|s| s.run_seq))
    .bind(s.map(|s| s.name.as_str()))
    .bind(s.map(|s| s.kind.as_str()))
    .bind(s.map(|s| s.status.as_str()))
    .bind(s.and_then(|s| s.output.as_ref()))
    .bind(s.and_then(|s| s.error.clone()).map(value::error_text))
    .bind(s.map(|s| s.attempts))
    .bind(s.map(|s| s.has_compensation))
    .bind(s.and_then(|s| s.wake_at))
    .bind(w.status.as_str())
    .bind(w.step.as_deref())
    .bind(w.waiting_for.as_deref())
    .bind(w.output.as_ref())
    .bind(w.error.clone().map(value::error_text))
    .bind(w.park.map(|p| p.job_id))
    .bind(w.park.map(|p| p.run_at))
    .bind(w.finish)
    .bind(WORKFLOW_JOB_ATTEMPTS)
    .fetch_optional(exec)
    .await?;
    let Some(row) = row else {
        return Ok(WriteOutcome::Lost);
    };
    if row.try_get("applied")? {
        Ok(WriteOutcome::Applied)
    } else {
        let status: String = row.try_get("status")?;
        Ok(WriteOutcome::StatusWas(status_of(&status)?))
    }
}

/// Stores an event for a workflow. If the workflow is suspended waiting for an event of that
/// name, it is handed to a new job due now (`resume_job`), and the job that would have woken
/// it at the wait's deadline is dropped.
///
/// One statement, so it can run in any transaction (a mutation's: the event then exists only
/// if the mutation commits). Its UPDATE of the workflow row waits for a concurrent suspension
/// to commit and then sees it, so an event is never left unseen by a waiting workflow.
pub async fn deliver_event<'e, E: PgExecutor<'e>>(
    exec: E,
    workflow_id: Uuid,
    name: &str,
    payload: &Value,
    resume_job: Uuid,
) -> Result<DeliverOutcome, sqlx::Error> {
    let row = sqlx::query(
        "WITH old AS (
             SELECT job_id FROM forge.workflows WHERE id = $1
         ), w AS (
             UPDATE forge.workflows SET
                 job_id = CASE WHEN resume_at IS NOT NULL AND status = 'waiting'
                                AND waiting_for = 'event:' || $2 THEN $4 ELSE job_id END,
                 resume_at = CASE WHEN resume_at IS NOT NULL AND status = 'waiting'
                                   AND waiting_for = 'event:' || $2 THEN now()
                                  ELSE resume_at END
             WHERE id = $1
             RETURNING id, status, name, queue, job_id = $4 AS woken
         ), ev AS (
             INSERT INTO forge.workflow_events (workflow_id, name, payload)
             SELECT id, $2, $3 FROM w
             WHERE status NOT IN ('completed', 'compensated', 'failed')
         ), dropped AS (
             DELETE FROM forge.jobs j USING w, old
             WHERE w.woken AND j.id = old.job_id AND j.id <> $4 AND j.status = 'pending'
         ), job AS (
             INSERT INTO forge.jobs (id, function_name, args, queue, max_attempts)
             SELECT $4, 'workflow:' || w.name, jsonb_build_object('workflowId', w.id),
                    w.queue, $5
             FROM w WHERE w.woken
         )
         SELECT status, woken FROM w",
    )
    .bind(workflow_id)
    .bind(name)
    .bind(payload)
    .bind(resume_job)
    .bind(WORKFLOW_JOB_ATTEMPTS)
    .fetch_optional(exec)
    .await?;
    let Some(row) = row else {
        return Ok(DeliverOutcome::NotFound);
    };
    let status = status_of(&row.try_get::<String, _>("status")?)?;
    if status.is_terminal() {
        return Ok(DeliverOutcome::AlreadyFinished(status));
    }
    Ok(DeliverOutcome::Delivered {
        woken: row.try_get("woken")?,
    })
}

/// Asks for a workflow to be cancelled: it becomes `compensating` (error `cancelled`) at
/// once. A suspended workflow is handed to a new job due now (`resume_job`) that runs the
/// compensations; a running one sees the cancel at its next step. `owner` restricts the
/// request to that owner's workflows (`None`: a privileged caller).
pub async fn cancel_workflow<'e, E: PgExecutor<'e>>(
    exec: E,
    workflow_id: Uuid,
    owner: Option<&str>,
    resume_job: Uuid,
) -> Result<CancelOutcome, sqlx::Error> {
    let row = sqlx::query(
        "WITH old AS (
             SELECT job_id FROM forge.workflows WHERE id = $1
         ), w AS (
             UPDATE forge.workflows SET
                 status = CASE WHEN status IN ('created', 'running', 'waiting')
                               THEN 'compensating' ELSE status END,
                 error = CASE WHEN status IN ('created', 'running', 'waiting')
                              THEN 'cancelled' ELSE error END,
                 waiting_for = CASE WHEN status IN ('created', 'running', 'waiting')
                                    THEN NULL ELSE waiting_for END,
                 job_id = CASE WHEN status IN ('created', 'running', 'waiting')
                                AND resume_at IS NOT NULL THEN $3 ELSE job_id END,
                 resume_at = CASE WHEN status IN ('created', 'running', 'waiting')
                                   AND resume_at IS NOT NULL THEN now() ELSE resume_at END,
                 updated_at = now()
             WHERE id = $1 AND ($2::text IS NULL OR owner = $2)
             RETURNING id, status, name, queue, job_id = $3 AS woken
         ), dropped AS (
             DELETE FROM forge.jobs j USING w, old
             WHERE w.woken AND j.id = old.job_id AND j.id <> $3 AND j.status = 'pending'
         ), job AS (
             INSERT INTO forge.jobs (id, function_name, args, queue, max_attempts)
             SELECT $3, 'workflow:' || w.name, jsonb_build_object('workflowId', w.id),
                    w.queue, $4
             FROM w WHERE w.woken
         )
         SELECT status FROM w",
    )
    .bind(workflow_id)
    .bind(owner)
    .bind(resume_job)
    .bind(WORKFLOW_JOB_ATTEMPTS)
    .fetch_optional(exec)
    .await?;
    let Some(row) = row else {
        return Ok(CancelOutcome::NotFound);
    };
    let status = status_of(&row.try_get::<String, _>("status")?)?;
    Ok(if status.is_terminal() {
        CancelOutcome::AlreadyFinished(status)
    } else {
        CancelOutcome::Compensating
    })
}

impl Store {
    /// See [`get_workflow`].
    pub async fn get_workflow(&self, id: Uuid) -> Result<Option<WorkflowRow>, sqlx::Error> {
        get_workflow(&self.pool, id).await
    }

    /// The state clients see of the workflow `id`, if it exists.
    pub async fn workflow_state(&self, id: Uuid) -> Result<Option<WorkflowState>, sqlx::Error> {
        Ok(self.get_workflow(id).await?.map(|w| w.state()))
    }

    /// Several workflows at once (those that exist), for re-reading after a reconnect.
    pub async fn get_workflows(&self, ids: &[Uuid]) -> Result<Vec<WorkflowRow>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {ROW_COLUMNS} FROM forge.workflows w WHERE w.id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(workflow_row).collect()
    }

    /// The workflows `ids` (those that exist) and the snapshot they were read with, in one
    /// statement: with the `xid` of each update on `forge_workflow_updates`,
    /// [`DbSnapshot::sees`] tells whether the read already reflects it.
    pub async fn get_workflows_with_snapshot(
        &self,
        ids: &[Uuid],
    ) -> Result<(DbSnapshot, Vec<WorkflowRow>), sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT s.snapshot, {ROW_COLUMNS}
             FROM (SELECT pg_current_snapshot()::text AS snapshot) s
             LEFT JOIN forge.workflows w ON w.id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        let text: String = match rows.first() {
            Some(row) => row.try_get("snapshot")?,
            None => return Err(sqlx::Error::RowNotFound),
        };
        let snapshot = DbSnapshot::parse(&text).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "snapshot".into(),
            source: format!("unreadable snapshot `{text}`").into(),
        })?;
        let mut workflows = Vec::with_capacity(rows.len());
        for row in &rows {
            // The one row of a read that matched nothing has no workflow columns.
            if row.try_get::<Option<Uuid>, _>("id")?.is_some() {
                workflows.push(workflow_row(row)?);
            }
        }
        Ok((snapshot, workflows))
    }
}
