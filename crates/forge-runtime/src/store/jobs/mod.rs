//! Job operations. Every write a worker makes is fenced by the attempt number it was given at
//! claim time, so a worker that lost its lease can no longer change the job.
//!
//! Here: the rows and the write types. `insert` (INSERT, COPY, eager start), `claims` (plain
//! and held claims, release), `updates` (a writer's batch, cancel requests), `leases`
//! (renewal, reaping).

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgExecutor, Row};
use uuid::Uuid;

mod claims;
mod insert;
mod leases;
mod updates;

pub use claims::{HeldClaim, HeldEnd, HeldWrite};
pub use insert::insert_jobs;

use super::Store;
use crate::status::{JobState, JobStatus};

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub id: Uuid,
    pub function_name: String,
    pub args: Value,
    pub queue: String,
    pub priority: i32,
    pub max_attempts: i32,
    /// `None` runs as soon as possible.
    pub run_at: Option<DateTime<Utc>>,
    pub owner: Option<String>,
    pub idempotency_key: Option<String>,
    /// The W3C `traceparent` of the span that started it (see [`crate::trace`]).
    pub trace_context: Option<String>,
}

/// A job a worker has claimed: everything it needs to run it.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    pub id: Uuid,
    pub function_name: String,
    pub args: Value,
    pub attempt: i32,
    pub max_attempts: i32,
    pub owner: Option<String>,
    /// When the attempt was due: the job's start time, or its retry's.
    pub run_at: DateTime<Utc>,
    /// The trace the attempt continues (see [`crate::trace`]).
    pub trace_context: Option<String>,
}

/// A job as stored, for status queries.
#[derive(Debug, Clone)]
pub struct JobRow {
    pub id: Uuid,
    pub function_name: String,
    pub status: JobStatus,
    pub queue: String,
    pub priority: i32,
    pub attempts: i32,
    pub max_attempts: i32,
    pub run_at: DateTime<Utc>,
    pub progress: Option<f64>,
    pub message: Option<String>,
    pub output: Option<Value>,
    pub error: Option<String>,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobRow {
    /// The state clients see. Output is only shown once completed.
    pub fn state(&self) -> JobState {
        JobState {
            job_id: self.id,
            status: self.status,
            progress: self.progress,
            message: self.message.clone(),
            output: if self.status == JobStatus::Completed {
                self.output.clone()
            } else {
                None
            },
            error: self.error.clone(),
        }
    }
}

/// The handler of this attempt started.
#[derive(Debug, Clone)]
pub struct StartWrite {
    pub id: Uuid,
    pub attempt: i32,
}

/// A progress report of this attempt.
#[derive(Debug, Clone)]
pub struct ProgressWrite {
    pub id: Uuid,
    pub attempt: i32,
    pub progress: f64,
    pub message: Option<String>,
}

/// How an attempt ended.
#[derive(Debug, Clone)]
pub enum FinishStatus {
    Completed(Value),
    /// Run again after `delay`.
    Retry {
        error: String,
        delay: Duration,
    },
    Failed(String),
    DeadLetter(String),
    Cancelled(String),
}

#[derive(Debug, Clone)]
pub struct Finish {
    pub id: Uuid,
    pub attempt: i32,
    pub status: FinishStatus,
    /// The attempt ended before its start was written (a short job): this write records the
    /// start too, and `running` is published just before the final status.
    pub started: bool,
}

/// Writes a worker node gathered while the previous batch was being written. They are applied
/// in one transaction: starts, then progress, then finishes, so for any one job they land in
/// the order they were made.
#[derive(Debug, Default)]
pub struct UpdateBatch {
    pub starts: Vec<StartWrite>,
    pub progress: Vec<ProgressWrite>,
    pub finishes: Vec<Finish>,
}

impl UpdateBatch {
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty() && self.progress.is_empty() && self.finishes.is_empty()
    }
}

/// Which writes of a batch took effect (the rest were fenced off).
#[derive(Debug, Default)]
pub struct Applied {
    pub starts: HashSet<Uuid>,
    pub finishes: HashSet<Uuid>,
}

pub(super) const JOB_COLUMNS: &str =
    "id, function_name, status, queue, priority, attempts, max_attempts, \
    run_at, progress, message, output, error, owner, created_at, started_at, finished_at";

pub(super) fn job_row(row: &sqlx::postgres::PgRow) -> Result<JobRow, sqlx::Error> {
    let status: String = row.try_get("status")?;
    Ok(JobRow {
        id: row.try_get("id")?,
        function_name: row.try_get("function_name")?,
        status: JobStatus::parse(&status).ok_or_else(|| sqlx::Error::ColumnDecode {
            index: "status".into(),
            source: format!("unknown job status `{status}`").into(),
        })?,
        queue: row.try_get("queue")?,
        priority: row.try_get("priority")?,
        attempts: row.try_get("attempts")?,
        max_attempts: row.try_get("max_attempts")?,
        run_at: row.try_get("run_at")?,
        progress: row.try_get("progress")?,
        message: row.try_get("message")?,
        output: row.try_get("output")?,
        error: row.try_get("error")?,
        owner: row.try_get("owner")?,
        created_at: row.try_get("created_at")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
    })
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A job's stored row, if it exists.
pub async fn get_job<'e, E: PgExecutor<'e>>(
    exec: E,
    id: Uuid,
) -> Result<Option<JobRow>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM forge.jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(exec)
    .await?;
    row.as_ref().map(job_row).transpose()
}

impl Store {
    pub async fn get_job(&self, id: Uuid) -> Result<Option<JobRow>, sqlx::Error> {
        get_job(&self.pool, id).await
    }

    /// The current state of several jobs at once (for re-reading after a reconnect).
    pub async fn get_jobs(&self, ids: &[Uuid]) -> Result<Vec<JobRow>, sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT {JOB_COLUMNS} FROM forge.jobs WHERE id = ANY($1)"
        ))
        .bind(ids)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(job_row).collect()
    }
}
