//! The operator's reads and writes: jobs and workflows listed by filter, one job with its
//! attempt history, one workflow with its steps and events, and retry, cancel and delete by
//! id or by filter. The shapes callers see are built in [`crate::admin`]; here are the rows.
//!
//! Lists are newest first by id: ids are UUIDv7, so the primary key is in creation order and
//! a page walks it backwards from the cursor (the last id of the previous page) without an
//! index of its own, which every job's insert would pay for.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use super::jobs::{job_row, JOB_COLUMNS};
use super::workflows::{workflow_row, ROW_COLUMNS, WORKFLOW_JOB_PREFIX};
use super::{JobRow, Store, WorkflowRow};
use crate::status::{JobStatus, StepStatus};

/// Which jobs or workflows a list or a bulk operation takes. Every field narrows.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub ids: Option<Vec<Uuid>>,
    pub owner: Option<String>,
    /// The job's function, or the workflow's name.
    pub function: Option<String>,
    pub statuses: Vec<String>,
    pub queue: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
    /// Only ids below this one (the cursor of a page).
    pub before_id: Option<Uuid>,
}

/// The WHERE clause of a [`Selection`] on a table aliased `t`, its values bound as `$1`..`$8`
/// in [`bind_selection`]'s order. `name` is the column holding the function's name.
fn selection_clause(name: &str) -> String {
    format!(
        "($1::uuid[] IS NULL OR t.id = ANY($1))
         AND ($2::text IS NULL OR t.owner = $2)
         AND ($3::text IS NULL OR t.{name} = $3)
         AND (cardinality($4::text[]) = 0 OR t.status = ANY($4))
         AND ($5::text IS NULL OR t.queue = $5)
         AND ($6::timestamptz IS NULL OR t.created_at >= $6)
         AND ($7::timestamptz IS NULL OR t.created_at < $7)
         AND ($8::uuid IS NULL OR t.id < $8)"
    )
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn bind_selection<'q>(q: Query<'q>, s: &'q Selection) -> Query<'q> {
    q.bind(s.ids.as_deref())
        .bind(s.owner.as_deref())
        .bind(s.function.as_deref())
        .bind(&s.statuses)
        .bind(s.queue.as_deref())
        .bind(s.created_after)
        .bind(s.created_before)
        .bind(s.before_id)
}

/// A job with what only the operator's views show.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub row: JobRow,
    /// The node's worker that ran (or runs) the attempt the row describes.
    pub worker_id: Option<Uuid>,
    /// The attempts before the one the row describes, oldest first (see migration 0014).
    pub attempt_log: Vec<Attempt>,
}

/// One attempt of a job.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Attempt {
    pub attempt: i32,
    /// The worker (one per node) that ran it.
    pub worker_id: Option<Uuid>,
    /// None when it ended before its handler started.
    pub started_at: Option<DateTime<Utc>>,
    /// None while it runs.
    pub ended_at: Option<DateTime<Utc>>,
    /// The job's status when the attempt ended (`retry`, `failed`, `completed`, ...), or its
    /// status now for the attempt under way (`claimed`, `running`, `cancel_requested`).
    pub outcome: JobStatus,
    pub error: Option<String>,
}

fn job_record(row: &sqlx::postgres::PgRow) -> Result<JobRecord, sqlx::Error> {
    let log: Option<sqlx::types::Json<Vec<Attempt>>> = row.try_get("attempt_log")?;
    Ok(JobRecord {
        row: job_row(row)?,
        worker_id: row.try_get("worker_id")?,
        attempt_log: log.map(|l| l.0).unwrap_or_default(),
    })
}

/// Up to `limit` jobs of `s`, newest first. Jobs that run workflows are left out: their
/// workflows are listed instead.
pub async fn list_jobs<'e, E: PgExecutor<'e>>(
    exec: E,
    s: &Selection,
    limit: i64,
) -> Result<Vec<JobRecord>, sqlx::Error> {
    let sql = format!(
        "SELECT {JOB_COLUMNS}, worker_id, attempt_log FROM forge.jobs t
         WHERE {} AND t.function_name NOT LIKE '{WORKFLOW_JOB_PREFIX}%'
         ORDER BY t.id DESC LIMIT $9",
        selection_clause("function_name")
    );
    let rows = bind_selection(sqlx::query(&sql), s)
        .bind(limit)
        .fetch_all(exec)
        .await?;
    rows.iter().map(job_record).collect()
}

/// One job with its arguments and attempt history, restricted to `owner`'s when given.
pub async fn job_record_by_id<'e, E: PgExecutor<'e>>(
    exec: E,
    id: Uuid,
    owner: Option<&str>,
) -> Result<Option<(JobRecord, Value)>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS}, worker_id, attempt_log, args FROM forge.jobs
         WHERE id = $1 AND ($2::text IS NULL OR owner = $2)"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(exec)
    .await?;
    row.map(|r| Ok((job_record(&r)?, r.try_get("args")?)))
        .transpose()
}

/// Up to `limit` workflows of `s`, newest first.
pub async fn list_workflows<'e, E: PgExecutor<'e>>(
    exec: E,
    s: &Selection,
    limit: i64,
) -> Result<Vec<(WorkflowRow, String)>, sqlx::Error> {
    let sql = format!(
        "SELECT {ROW_COLUMNS}, w.queue FROM forge.workflows w
         WHERE w.id IN (SELECT t.id FROM forge.workflows t WHERE {}
                        ORDER BY t.id DESC LIMIT $9)
         ORDER BY w.id DESC",
        selection_clause("name")
    );
    let rows = bind_selection(sqlx::query(&sql), s)
        .bind(limit)
        .fetch_all(exec)
        .await?;
    rows.iter()
        .map(|r| Ok((workflow_row(r)?, r.try_get("queue")?)))
        .collect()
}

/// A step with its timing and attempts.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepDetail {
    pub name: String,
    /// `step`, `sleep` or `event` (a wait for one).
    pub kind: String,
    pub status: StepStatus,
    pub error: Option<String>,
    pub attempts: i32,
    pub compensation_attempts: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub compensated_at: Option<DateTime<Utc>>,
    /// A sleep's end, an event wait's deadline, or a failed attempt's next try.
    pub wake_at: Option<DateTime<Utc>>,
}

/// An event sent to a workflow.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReceivedEvent {
    pub name: String,
    pub payload: Value,
    pub received_at: DateTime<Utc>,
    /// Whether a wait took it (an event waits for a wait of its name otherwise).
    pub consumed: bool,
}

/// One workflow with what only the operator's views show.
#[derive(Debug, Clone)]
pub struct WorkflowRecord {
    pub row: WorkflowRow,
    pub args: Value,
    pub queue: String,
    pub resume_at: Option<DateTime<Utc>>,
    pub steps: Vec<StepDetail>,
    pub events: Vec<ReceivedEvent>,
}

/// Most events a workflow's record carries, the newest.
pub const MAX_EVENTS_SHOWN: i64 = 100;

/// One workflow with its steps in display order and its newest events, restricted to
/// `owner`'s when given. Reads in one statement, so steps and events match the row.
pub async fn workflow_record_by_id<'e, E: PgExecutor<'e>>(
    exec: E,
    id: Uuid,
    owner: Option<&str>,
) -> Result<Option<WorkflowRecord>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {ROW_COLUMNS}, w.args, w.queue, w.resume_at,
            (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                 'name', s.name, 'kind', s.kind, 'status', s.status, 'error', s.error,
                 'attempts', s.attempts, 'compensationAttempts', s.compensation_attempts,
                 'startedAt', s.started_at, 'finishedAt', s.finished_at,
                 'compensatedAt', s.compensated_at, 'wakeAt', s.wake_at)
                 ORDER BY s.run_seq NULLS LAST, s.idx), '[]')
             FROM forge.workflow_steps s WHERE s.workflow_id = w.id) AS step_records,
            (SELECT COALESCE(jsonb_agg(jsonb_build_object(
                 'name', e.name, 'payload', e.payload, 'receivedAt', e.received_at,
                 'consumed', e.consumed_by IS NOT NULL) ORDER BY e.id), '[]')
             FROM (SELECT * FROM forge.workflow_events
                   WHERE workflow_id = w.id ORDER BY id DESC LIMIT {MAX_EVENTS_SHOWN}) e)
                AS event_records
         FROM forge.workflows w WHERE w.id = $1 AND ($2::text IS NULL OR w.owner = $2)"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(exec)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let steps: sqlx::types::Json<Vec<StepDetail>> = row.try_get("step_records")?;
    let events: sqlx::types::Json<Vec<ReceivedEvent>> = row.try_get("event_records")?;
    Ok(Some(WorkflowRecord {
        row: workflow_row(&row)?,
        args: row.try_get("args")?,
        queue: row.try_get("queue")?,
        resume_at: row.try_get("resume_at")?,
        steps: steps.0,
        events: events.0,
    }))
}

/// What an operator does to jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    /// `failed` and `dead_letter` jobs get a new attempt, due now; the attempt that ended is
    /// moved to the attempt history, and `max_attempts` grows to allow the new one.
    Retry,
    /// As [`Store::request_cancel`]: waiting jobs end `cancelled`, running ones become
    /// `cancel_requested`.
    Cancel,
    /// Finished jobs (`completed`, `failed`, `dead_letter`, `cancelled`) are deleted.
    Delete,
}

impl JobAction {
    /// The statuses a job must have for the action to apply.
    pub fn applies_to(self) -> &'static [&'static str] {
        match self {
            JobAction::Retry => &["failed", "dead_letter"],
            JobAction::Cancel => &["pending", "claimed", "retry", "running"],
            JobAction::Delete => &["completed", "failed", "dead_letter", "cancelled"],
        }
    }
}

/// Rows one bulk statement changes at most; a bulk action runs as many as it needs.
pub const BULK_BATCH: i64 = 1_000;

/// Applies `action` to up to [`BULK_BATCH`] jobs of `s` whose status allows it (the
/// selection's own statuses, if any, narrow further), newest first. Returns the ids changed;
/// the smallest is the cursor of the next batch. Jobs that run workflows are never taken.
///
/// Jobs named by id wait for a row another transaction holds (a worker's write, or a claim
/// held while its jobs start: at most `worker::HOLD_LIMIT`), then are judged by their status after it:
/// skipping them would leave a job just started uncancelled with nothing said. A filter skips
/// such rows instead, so that a large action never queues behind the workers.
pub async fn act_on_jobs<'e, E: PgExecutor<'e>>(
    exec: E,
    action: JobAction,
    s: &Selection,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let change = match action {
        JobAction::Retry => {
            "UPDATE forge.jobs j SET
                 status = 'pending', run_at = now(),
                 max_attempts = GREATEST(j.max_attempts, j.attempts + 1),
                 attempt_log = CASE WHEN j.attempts > 0 THEN
                     forge.log_attempt(j.attempt_log, jsonb_build_object(
                         'attempt', j.attempts, 'workerId', j.worker_id,
                         'startedAt', j.started_at, 'endedAt', j.finished_at,
                         'outcome', j.status, 'error', j.error))
                     ELSE j.attempt_log END,
                 output = NULL, error = NULL, progress = NULL, message = NULL,
                 started_at = NULL, finished_at = NULL, worker_id = NULL,
                 lease_expires_at = NULL
             FROM picked WHERE j.id = picked.id RETURNING j.id"
        }
        JobAction::Cancel => {
            "UPDATE forge.jobs j SET
                 status = CASE WHEN j.status = 'running' THEN 'cancel_requested'
                               ELSE 'cancelled' END,
                 error = CASE WHEN j.status = 'running' THEN j.error ELSE 'cancelled' END,
                 finished_at = CASE WHEN j.status = 'running' THEN NULL ELSE now() END,
                 lease_expires_at = CASE WHEN j.status = 'running' THEN j.lease_expires_at END
             FROM picked WHERE j.id = picked.id RETURNING j.id"
        }
        JobAction::Delete => {
            "DELETE FROM forge.jobs j USING picked WHERE j.id = picked.id RETURNING j.id"
        }
    };
    let sql = format!(
        "WITH picked AS (
             SELECT t.id FROM forge.jobs t
             WHERE {} AND t.status = ANY($9) AND t.function_name NOT LIKE '{WORKFLOW_JOB_PREFIX}%'
             ORDER BY t.id DESC LIMIT {BULK_BATCH}
             FOR UPDATE {}
         ) {change}",
        selection_clause("function_name"),
        if s.ids.is_some() { "" } else { "SKIP LOCKED" }
    );
    let statuses: Vec<&str> = action.applies_to().to_vec();
    let rows = bind_selection(sqlx::query(&sql), s)
        .bind(&statuses)
        .fetch_all(exec)
        .await?;
    rows.iter().map(|r| r.try_get("id")).collect()
}

impl Store {
    /// See [`act_on_jobs`].
    pub async fn act_on_jobs(
        &self,
        action: JobAction,
        s: &Selection,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        act_on_jobs(&self.pool, action, s).await
    }

    /// See [`job_record_by_id`].
    pub async fn job_record(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<Option<(JobRecord, Value)>, sqlx::Error> {
        job_record_by_id(&self.pool, id, owner).await
    }
}

/// How many jobs wait or run, by queue and status (`pending`, `retry`, `claimed`, `running`,
/// `cancel_requested`), and how many workflows have not finished, by status. Finished runs
/// are not counted: they would make each reading scan every row retention keeps, and the
/// node's counters of ended attempts say the same.
pub async fn count_unfinished<'e, E: PgExecutor<'e> + Copy>(
    exec: E,
) -> Result<(Vec<(String, String, i64)>, Vec<(String, i64)>), sqlx::Error> {
    let jobs: Vec<(String, String, i64)> = sqlx::query_as(
        "SELECT queue, status, count(*) FROM forge.jobs
         WHERE status IN ('pending', 'retry', 'claimed', 'running', 'cancel_requested')
         GROUP BY queue, status",
    )
    .fetch_all(exec)
    .await?;
    let workflows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT status, count(*) FROM forge.workflows
         WHERE status IN ('created', 'running', 'waiting', 'compensating')
         GROUP BY status",
    )
    .fetch_all(exec)
    .await?;
    Ok((jobs, workflows))
}

/// What the jobs created since a time did, by queue: one row per queue.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct QueueActivity {
    pub queue: String,
    pub sampled: i64,
    pub completed: i64,
    /// `failed` and `dead_letter`.
    pub failed: i64,
    pub cancelled: i64,
    /// Due → start of the latest attempt, in milliseconds, over the jobs that started.
    pub wait_p50_ms: Option<f64>,
    pub wait_p99_ms: Option<f64>,
    /// Run time of the jobs that finished, in milliseconds.
    pub run_p50_ms: Option<f64>,
    pub run_p99_ms: Option<f64>,
    /// When the oldest job of the sample was created.
    pub oldest: Option<DateTime<Utc>>,
}

/// Jobs that finished in one minute, by outcome.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MinuteActivity {
    pub minute: DateTime<Utc>,
    pub completed: i64,
    pub failed: i64,
}

/// The newest `limit` jobs created at or after `since` (workflows' own jobs included: they
/// take the queue's slots too), summarised by queue and by minute of finishing. Ids are
/// UUIDv7, so "created since" is a range of the primary key and the read costs at most
/// `limit` rows, however busy the installation is.
pub async fn recent_activity<'e, E: PgExecutor<'e> + Copy>(
    exec: E,
    since: DateTime<Utc>,
    limit: i64,
) -> Result<(Vec<QueueActivity>, Vec<MinuteActivity>), sqlx::Error> {
    let millis = u64::try_from(since.timestamp_millis()).unwrap_or(0);
    let floor = uuid::Builder::from_unix_timestamp_millis(millis, &[0; 10]).into_uuid();
    const SAMPLE: &str = "SELECT queue, status, run_at, created_at, started_at, finished_at
         FROM forge.jobs WHERE id >= $1 ORDER BY id DESC LIMIT $2";
    let queues = sqlx::query_as::<_, QueueActivity>(&format!(
        "WITH recent AS ({SAMPLE})
         SELECT queue, count(*) AS sampled,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status IN ('failed', 'dead_letter')) AS failed,
           count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY 1000 * extract(epoch FROM started_at - run_at))
             FILTER (WHERE started_at IS NOT NULL) AS wait_p50_ms,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY 1000 * extract(epoch FROM started_at - run_at))
             FILTER (WHERE started_at IS NOT NULL) AS wait_p99_ms,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY 1000 * extract(epoch FROM finished_at - started_at))
             FILTER (WHERE finished_at IS NOT NULL AND started_at IS NOT NULL) AS run_p50_ms,
           percentile_cont(0.99) WITHIN GROUP (ORDER BY 1000 * extract(epoch FROM finished_at - started_at))
             FILTER (WHERE finished_at IS NOT NULL AND started_at IS NOT NULL) AS run_p99_ms,
           min(created_at) AS oldest
         FROM recent GROUP BY queue ORDER BY queue"
    ))
    .bind(floor)
    .bind(limit)
    .fetch_all(exec)
    .await?;
    let minutes = sqlx::query_as::<_, MinuteActivity>(&format!(
        "WITH recent AS ({SAMPLE})
         SELECT date_trunc('minute', finished_at) AS minute,
           count(*) FILTER (WHERE status = 'completed') AS completed,
           count(*) FILTER (WHERE status IN ('failed', 'dead_letter')) AS failed
         FROM recent WHERE finished_at IS NOT NULL
         GROUP BY 1 ORDER BY 1"
    ))
    .bind(floor)
    .bind(limit)
    .fetch_all(exec)
    .await?;
    Ok((queues, minutes))
}
