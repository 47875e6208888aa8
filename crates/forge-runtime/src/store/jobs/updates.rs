//! A worker's batched writes (starts, progress, finishes) and cancel requests.

use std::collections::HashSet;

use serde_json::Value;
use uuid::Uuid;

use super::{millis, Applied, FinishStatus, ProgressWrite, Store, UpdateBatch};
use crate::error::CancelError;
use crate::status::JobStatus;

impl Store {
    /// Applies a worker node's batch of writes in one transaction (one commit, and so one
    /// round of notifications, for the whole batch).
    pub async fn apply_updates(&self, batch: &UpdateBatch) -> Result<Applied, sqlx::Error> {
        let kinds = [
            !batch.starts.is_empty(),
            !batch.progress.is_empty(),
            !batch.finishes.is_empty(),
        ];
        if kinds.iter().filter(|&&k| k).count() > 1 {
            let mut tx = self.pool.begin().await?;
            let applied = apply_updates_on(&mut tx, batch).await?;
            tx.commit().await?;
            Ok(applied)
        } else {
            // One statement is atomic on its own: BEGIN and COMMIT would be two more
            // round-trips on the hot path.
            let mut conn = self.pool.acquire().await?;
            apply_updates_on(&mut conn, batch).await
        }
    }

    /// Asks for a job to be cancelled. Not yet running: `cancelled` at once. Running:
    /// `cancel_requested`, and the handler stops at its next `check_cancelled()`. `owner`
    /// restricts the request to that owner's jobs (`None`: a privileged caller).
    pub async fn request_cancel(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<JobStatus, CancelError> {
        let status: Option<String> = sqlx::query_scalar(
            "UPDATE forge.jobs SET
                 status = CASE WHEN status = 'running' THEN 'cancel_requested' ELSE 'cancelled' END,
                 error = CASE WHEN status = 'running' THEN error ELSE 'cancelled' END,
                 finished_at = CASE WHEN status = 'running' THEN NULL ELSE now() END,
                 worker_id = CASE WHEN status = 'running' THEN worker_id END,
                 lease_expires_at = CASE WHEN status = 'running' THEN lease_expires_at END
             WHERE id = $1 AND ($2::text IS NULL OR owner = $2)
               AND status IN ('pending', 'claimed', 'retry', 'running')
             RETURNING status",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        if let Some(s) = status {
            return Ok(JobStatus::parse(&s).unwrap_or(JobStatus::Cancelled));
        }
        let current: Option<String> = sqlx::query_scalar(
            "SELECT status FROM forge.jobs WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
        )
        .bind(id)
        .bind(owner)
        .fetch_optional(&self.pool)
        .await?;
        match current.as_deref().and_then(JobStatus::parse) {
            None => Err(CancelError::NotFound),
            // Asking twice is not an error.
            Some(JobStatus::CancelRequested) => Ok(JobStatus::CancelRequested),
            Some(s) => Err(CancelError::AlreadyFinished(s)),
        }
    }
}

/// The status, output, error and retry delay (ms) a finish writes.
pub(super) fn finish_columns(
    f: &FinishStatus,
) -> (JobStatus, Option<&Value>, Option<&str>, Option<f64>) {
    match f {
        FinishStatus::Completed(v) => (JobStatus::Completed, Some(v), None, None),
        FinishStatus::Retry { error, delay } => (
            JobStatus::Retry,
            None,
            Some(error.as_str()),
            Some(millis(*delay)),
        ),
        FinishStatus::Failed(e) => (JobStatus::Failed, None, Some(e.as_str()), None),
        FinishStatus::DeadLetter(e) => (JobStatus::DeadLetter, None, Some(e.as_str()), None),
        FinishStatus::Cancelled(e) => (JobStatus::Cancelled, None, Some(e.as_str()), None),
    }
}

/// The statements of [`Store::apply_updates`], on one connection (in a transaction or not).
///
/// Each joins the jobs to arrays of the writes, and also names the jobs with
/// `id = ANY(ARRAY(SELECT unnest($1)))`. Joined only, or named with `id = ANY($1)`, a
/// statement's first (custom) plans, made knowing how many writes there are, read the whole
/// table once there are a few hundred writes (500 of 50,000 jobs: a sequential scan of 4 ms
/// instead of 1 ms by the primary key). The array built by a subquery hides its length from
/// the planner, which then always looks the jobs up by key. The same goes for
/// [`HeldClaim::close`] and [`Store::release_jobs`].
async fn apply_updates_on(
    conn: &mut sqlx::PgConnection,
    batch: &UpdateBatch,
) -> Result<Applied, sqlx::Error> {
    let mut applied = Applied::default();
    if !batch.starts.is_empty() {
        let ids: Vec<Uuid> = batch.starts.iter().map(|s| s.id).collect();
        let attempts: Vec<i32> = batch.starts.iter().map(|s| s.attempt).collect();
        let started: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE forge.jobs j SET status = 'running', started_at = now()
             FROM unnest($1::uuid[], $2::int[]) AS u(id, attempt)
             WHERE j.id = ANY(ARRAY(SELECT unnest($1::uuid[]))) AND j.id = u.id
               AND j.attempts = u.attempt AND j.status = 'claimed'
             RETURNING j.id",
        )
        .bind(&ids)
        .bind(&attempts)
        .fetch_all(&mut *conn)
        .await?;
        applied.starts = started.into_iter().collect();
    }
    if !batch.progress.is_empty() {
        // Of several reports of one attempt in a batch only the last counts (an UPDATE joined
        // to several rows for one job applies an arbitrary one of them).
        let mut seen = HashSet::new();
        let mut latest: Vec<&ProgressWrite> = batch
            .progress
            .iter()
            .rev()
            .filter(|p| seen.insert((p.id, p.attempt)))
            .collect();
        latest.reverse();
        let ids: Vec<Uuid> = latest.iter().map(|p| p.id).collect();
        let attempts: Vec<i32> = latest.iter().map(|p| p.attempt).collect();
        let values: Vec<f64> = latest.iter().map(|p| p.progress).collect();
        let messages: Vec<Option<&str>> = latest.iter().map(|p| p.message.as_deref()).collect();
        sqlx::query(
            "UPDATE forge.jobs j SET progress = u.progress, message = u.message
             FROM unnest($1::uuid[], $2::int[], $3::float8[], $4::text[])
                 AS u(id, attempt, progress, message)
             WHERE j.id = ANY(ARRAY(SELECT unnest($1::uuid[]))) AND j.id = u.id
               AND j.attempts = u.attempt
               AND j.status IN ('claimed', 'running', 'cancel_requested')",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&values)
        .bind(&messages)
        .execute(&mut *conn)
        .await?;
    }
    if !batch.finishes.is_empty() {
        let n = batch.finishes.len();
        let mut ids = Vec::with_capacity(n);
        let mut attempts = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut outputs: Vec<Option<&Value>> = Vec::with_capacity(n);
        let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
        let mut delays: Vec<Option<f64>> = Vec::with_capacity(n);
        let mut started: Vec<bool> = Vec::with_capacity(n);
        for f in &batch.finishes {
            ids.push(f.id);
            attempts.push(f.attempt);
            started.push(f.started);
            let (status, output, error, delay) = finish_columns(&f.status);
            statuses.push(status.as_str());
            outputs.push(output);
            errors.push(error);
            delays.push(delay);
        }
        // A job whose cancel was requested and that then failed in any way ends
        // `cancelled`: the user asked for it to stop, and it stopped. `worker_id` stays: it
        // names the node of the attempt the row describes (attempt history). An attempt
        // that another may follow moves to `attempt_log`; a final one stays in the row.
        let finished: Vec<Uuid> = sqlx::query_scalar(
            "UPDATE forge.jobs j SET
                 status = CASE WHEN j.status = 'cancel_requested' AND u.status <> 'completed'
                               THEN 'cancelled' ELSE u.status END,
                 output = u.output,
                 error = CASE WHEN j.status = 'cancel_requested' AND u.status <> 'completed'
                              THEN COALESCE(j.error, u.error) ELSE u.error END,
                 run_at = CASE WHEN u.status = 'retry' AND j.status <> 'cancel_requested'
                               THEN now() + u.delay_ms * interval '1 millisecond'
                               ELSE j.run_at END,
                 finished_at = CASE WHEN u.status = 'retry' AND j.status <> 'cancel_requested'
                                    THEN NULL ELSE now() END,
                 started_at = CASE WHEN u.started AND j.status = 'claimed' THEN now()
                                   ELSE j.started_at END,
                 attempt_log = CASE WHEN u.status = 'retry' AND j.status <> 'cancel_requested'
                     THEN forge.log_attempt(j.attempt_log, jsonb_build_object(
                         'attempt', j.attempts, 'workerId', j.worker_id,
                         'startedAt', CASE WHEN j.status = 'running' THEN j.started_at
                                           WHEN u.started THEN now() END,
                         'endedAt', now(), 'outcome', 'retry', 'error', u.error))
                     ELSE j.attempt_log END,
                 lease_expires_at = NULL
             FROM unnest($1::uuid[], $2::int[], $3::text[], $4::jsonb[], $5::text[],
                         $6::float8[], $7::bool[])
                 AS u(id, attempt, status, output, error, delay_ms, started)
             WHERE j.id = ANY(ARRAY(SELECT unnest($1::uuid[]))) AND j.id = u.id
               AND j.attempts = u.attempt
               AND j.status IN ('claimed', 'running', 'cancel_requested')
             RETURNING j.id",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(&statuses)
        .bind(&outputs)
        .bind(&errors)
        .bind(&delays)
        .bind(&started)
        .fetch_all(&mut *conn)
        .await?;
        applied.finishes = finished.into_iter().collect();
    }
    Ok(applied)
}
