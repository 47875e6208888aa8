//! Workflow rows: starting, the state clients see, events and cancel. The engine's fenced
//! reads and writes are in `engine`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use super::realtime::DbSnapshot;
use super::Store;
use crate::status::{StepState, WorkflowState, WorkflowStatus};

mod engine;

pub use engine::*;
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
    /// The W3C `traceparent` of the span that started it (see [`crate::trace`]): every job
    /// that runs it continues that trace.
    pub trace_context: Option<String>,
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

pub(super) fn status_of(s: &str) -> Result<WorkflowStatus, sqlx::Error> {
    WorkflowStatus::parse(s).ok_or_else(|| sqlx::Error::ColumnDecode {
        index: "status".into(),
        source: format!("unknown workflow status `{s}`").into(),
    })
}

/// The columns and steps of [`WorkflowRow`]; `w` is the workflows table.
pub(super) const ROW_COLUMNS: &str =
    "w.id, w.name, w.status, w.step, w.waiting_for, w.output, w.error, \
    w.owner, w.created_at, w.started_at, w.finished_at,
    (SELECT COALESCE(jsonb_agg(jsonb_build_object('name', s.name, 'status', s.status,
                                                  'error', s.error)
                               ORDER BY s.run_seq NULLS LAST, s.idx), '[]')
     FROM forge.workflow_steps s WHERE s.workflow_id = w.id) AS steps";

pub(super) fn workflow_row(row: &sqlx::postgres::PgRow) -> Result<WorkflowRow, sqlx::Error> {
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
    let ids = insert_workflows(exec, std::slice::from_ref(wf)).await?;
    ids.into_iter().next().ok_or(sqlx::Error::RowNotFound)
}

impl Store {
    /// Inserts one workflow as [`insert_workflow`] does, within the start timeout
    /// ([`DatabaseConfig::start_timeout`](super::DatabaseConfig::start_timeout)).
    pub async fn insert_workflow(&self, wf: &NewWorkflow) -> Result<Uuid, sqlx::Error> {
        let (mut conn, deadline) = self.start_connection().await?;
        let answer = deadline.wait(insert_workflow(&mut *conn, wf)).await;
        deadline.settle(conn, answer)
    }
}

/// Inserts workflows as [`insert_workflow`] does, all in one statement; returns their ids in
/// order. Two of them with the same idempotency key are one workflow.
pub async fn insert_workflows<'e, E: PgExecutor<'e>>(
    exec: E,
    wfs: &[NewWorkflow],
) -> Result<Vec<Uuid>, sqlx::Error> {
    // A statement may not insert-or-update one row twice: a key repeated in the batch is
    // inserted once, and its later requests get the same id.
    let mut first_of_key: HashMap<&str, usize> = HashMap::new();
    let mut same_as: Vec<Option<usize>> = Vec::with_capacity(wfs.len());
    let mut rows: Vec<&NewWorkflow> = Vec::with_capacity(wfs.len());
    for wf in wfs {
        match wf.idempotency_key.as_deref() {
            Some(key) => match first_of_key.get(key) {
                Some(&at) => same_as.push(Some(at)),
                None => {
                    first_of_key.insert(key, rows.len());
                    same_as.push(None);
                    rows.push(wf);
                }
            },
            None => {
                same_as.push(None);
                rows.push(wf);
            }
        }
    }
    let steps: Vec<sqlx::types::Json<&Vec<String>>> = rows
        .iter()
        .map(|w| sqlx::types::Json(&w.declared_steps))
        .collect();
    // `DO UPDATE` rather than `DO NOTHING`: it returns the row holding the key, even one
    // committed after this statement's snapshot was taken. `xmax = 0` tells a fresh insert.
    // The rows are matched back by id, or by key for a keyed start, as two joins: one join on
    // `id = .. OR key = ..` can only be a nested loop, which made a batch of 1,000 starts
    // compare a million pairs (300 ms of the database's time).
    // The steps' insert is published by the workflows' trigger (see `engine`).
    let found: Vec<(i64, Uuid)> = sqlx::query_as(
        "WITH flag AS (
             SELECT set_config('forge.workflow_steps_published', 'on', true)
         ), n AS (
             SELECT u.* FROM flag,
                 unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::text[], $6::text[],
                        $7::uuid[], $8::jsonb[], $10::text[]) WITH ORDINALITY
                 AS u(id, name, args, owner, queue, key, job_id, steps, trace_context, ord)
         ), wf AS (
             INSERT INTO forge.workflows AS w (id, name, args, owner, queue, idempotency_key,
                                               job_id, resume_at, trace_context)
             SELECT id, name, args, owner, queue, key, job_id, now(), trace_context
             FROM n ORDER BY ord
             ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL
                 DO UPDATE SET idempotency_key = w.idempotency_key
             RETURNING id, idempotency_key, xmax::text = '0' AS inserted
         ), steps AS (
             INSERT INTO forge.workflow_steps (workflow_id, idx, name)
             SELECT n.id, s.ord, s.name
             FROM wf JOIN n ON n.id = wf.id,
                  jsonb_array_elements_text(n.steps) WITH ORDINALITY AS s(name, ord)
             WHERE wf.inserted
         ), job AS (
             INSERT INTO forge.jobs (id, function_name, args, queue, max_attempts,
                                     trace_context)
             SELECT n.job_id, 'workflow:' || n.name, jsonb_build_object('workflowId', n.id),
                    n.queue, $9, n.trace_context
             FROM wf JOIN n ON n.id = wf.id WHERE wf.inserted
         )
         SELECT ord, id FROM (
             SELECT n.ord, wf.id FROM n JOIN wf ON wf.id = n.id WHERE n.key IS NULL
             UNION ALL
             SELECT n.ord, wf.id FROM n JOIN wf ON wf.idempotency_key = n.key
         ) found
         ORDER BY ord",
    )
    .bind(rows.iter().map(|w| w.id).collect::<Vec<_>>())
    .bind(rows.iter().map(|w| w.name.as_str()).collect::<Vec<_>>())
    .bind(rows.iter().map(|w| &w.args).collect::<Vec<_>>())
    .bind(rows.iter().map(|w| w.owner.as_deref()).collect::<Vec<_>>())
    .bind(rows.iter().map(|w| w.queue.as_str()).collect::<Vec<_>>())
    .bind(
        rows.iter()
            .map(|w| w.idempotency_key.as_deref())
            .collect::<Vec<_>>(),
    )
    .bind(rows.iter().map(|w| w.job_id).collect::<Vec<_>>())
    .bind(&steps)
    .bind(WORKFLOW_JOB_ATTEMPTS)
    .bind(
        rows.iter()
            .map(|w| w.trace_context.as_deref())
            .collect::<Vec<_>>(),
    )
    .fetch_all(exec)
    .await?;
    if found.len() != rows.len() {
        return Err(sqlx::Error::RowNotFound);
    }
    let inserted: Vec<Uuid> = found.into_iter().map(|(_, id)| id).collect();
    let mut ids = Vec::with_capacity(wfs.len());
    let mut next = 0;
    for same in same_as {
        match same {
            Some(at) => ids.push(inserted[at]),
            None => {
                ids.push(inserted[next]);
                next += 1;
            }
        }
    }
    Ok(ids)
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
             RETURNING id, status, name, queue, trace_context, job_id = $4 AS woken
         ), ev AS (
             INSERT INTO forge.workflow_events (workflow_id, name, payload)
             SELECT id, $2, $3 FROM w
             WHERE status NOT IN ('completed', 'compensated', 'failed')
         ), dropped AS (
             DELETE FROM forge.jobs j USING w, old
             WHERE w.woken AND j.id = old.job_id AND j.id <> $4 AND j.status = 'pending'
         ), job AS (
             INSERT INTO forge.jobs (id, function_name, args, queue, max_attempts,
                                     trace_context)
             SELECT $4, 'workflow:' || w.name, jsonb_build_object('workflowId', w.id),
                    w.queue, $5, w.trace_context
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
             RETURNING id, status, name, queue, trace_context, job_id = $3 AS woken
         ), dropped AS (
             DELETE FROM forge.jobs j USING w, old
             WHERE w.woken AND j.id = old.job_id AND j.id <> $3 AND j.status = 'pending'
         ), job AS (
             INSERT INTO forge.jobs (id, function_name, args, queue, max_attempts,
                                     trace_context)
             SELECT $3, 'workflow:' || w.name, jsonb_build_object('workflowId', w.id),
                    w.queue, $4, w.trace_context
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
