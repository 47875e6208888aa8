//! Leases: renewing the ones a worker holds, recovering the ones that ran out.

use std::time::Duration;

use sqlx::Row;
use uuid::Uuid;

use super::{millis, Store};
use crate::status::JobStatus;

impl Store {
    /// Renews the leases of the jobs `worker_id` runs. Returns the ones it still holds, with
    /// their status (so a missed cancel notification is caught here too); a job not returned
    /// was lost and must stop.
    pub async fn renew_leases(
        &self,
        worker_id: Uuid,
        ids: &[Uuid],
        lease: Duration,
    ) -> Result<Vec<(Uuid, JobStatus)>, sqlx::Error> {
        // Rows that another transaction is writing right now (the node's own writer,
        // recording a start or an end; a cancel request) are skipped, not waited for: the
        // writer's batch and this statement lock rows in different orders, and each such
        // deadlock stalled the renewal for a second, long enough for short leases to run out.
        // A skipped row that is still this worker's is reported held (read from the snapshot)
        // and is renewed at the next heartbeat.
        //
        // A join on `unnest($1)`, not `id = ANY($1)`: with thousands of ids the latter became
        // a scan of the whole table that compared every row with the whole array.
        let rows = sqlx::query(
            "WITH mine AS (
                 SELECT j.id FROM forge.jobs j JOIN unnest($1::uuid[]) AS u(id) ON j.id = u.id
                 WHERE j.worker_id = $2 AND j.status IN ('claimed', 'running', 'cancel_requested')
             ), locked AS (
                 SELECT j.id FROM forge.jobs j JOIN mine ON j.id = mine.id
                 WHERE j.worker_id = $2 AND j.status IN ('claimed', 'running', 'cancel_requested')
                 FOR UPDATE OF j SKIP LOCKED
             ), renewed AS (
                 UPDATE forge.jobs j SET lease_expires_at = now() + $3 * interval '1 millisecond'
                 FROM locked WHERE j.id = locked.id
                 RETURNING j.id, j.status
             )
             SELECT id, status FROM renewed
             UNION ALL
             SELECT j.id, j.status FROM forge.jobs j JOIN mine ON j.id = mine.id
             WHERE j.id NOT IN (SELECT id FROM locked)",
        )
        .bind(ids)
        .bind(worker_id)
        .bind(millis(lease))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let status: String = r.try_get("status")?;
                Ok((
                    r.try_get("id")?,
                    JobStatus::parse(&status).unwrap_or(JobStatus::Running),
                ))
            })
            .collect()
    }

    /// Recovers jobs whose worker stopped renewing its lease (a node that died): they run
    /// again if attempts remain, else end `dead_letter`; a job whose cancel was requested
    /// ends `cancelled`. Returns how many were recovered.
    pub async fn reap_expired_leases(&self) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE forge.jobs j SET
                 status = CASE WHEN j.status = 'cancel_requested' THEN 'cancelled'
                               WHEN j.attempts >= j.max_attempts THEN 'dead_letter'
                               ELSE 'retry' END,
                 error = CASE WHEN j.status = 'cancel_requested' THEN 'cancelled'
                              ELSE 'the worker running this job stopped (lease expired)' END,
                 finished_at = CASE WHEN j.status = 'cancel_requested'
                                      OR j.attempts >= j.max_attempts THEN now() END,
                 attempt_log = CASE WHEN j.status <> 'cancel_requested'
                                     AND j.attempts < j.max_attempts
                     THEN forge.log_attempt(j.attempt_log, jsonb_build_object(
                         'attempt', j.attempts, 'workerId', j.worker_id,
                         'startedAt', CASE WHEN j.status = 'running' THEN j.started_at END,
                         'endedAt', now(), 'outcome', 'retry',
                         'error', 'the worker running this job stopped (lease expired)'))
                     ELSE j.attempt_log END,
                 run_at = now(), lease_expires_at = NULL
             WHERE j.id IN (
                 SELECT id FROM forge.jobs
                 WHERE status IN ('claimed', 'running', 'cancel_requested')
                   AND lease_expires_at < now()
                 LIMIT 1000
                 FOR UPDATE SKIP LOCKED)",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Recovers held claims that were rolled back without being closed (their node died, see
    /// migration 0011): their jobs still waiting are marked `no_hold`, so that only plain
    /// claims, which count the attempt, take them from then on. Returns how many jobs.
    pub async fn reap_lost_held_claims(&self) -> Result<u64, sqlx::Error> {
        // `pg_xact_status` is NULL for a transaction too old to know: it ended long ago.
        let done = sqlx::query(
            "WITH lost AS (
                 DELETE FROM forge.held_claims WHERE id IN (
                     SELECT id FROM forge.held_claims
                     WHERE COALESCE(pg_xact_status(xid), 'aborted') = 'aborted'
                     LIMIT 100
                     FOR UPDATE SKIP LOCKED)
                 RETURNING job_ids
             )
             UPDATE forge.jobs SET no_hold = true
             WHERE id IN (SELECT unnest(job_ids) FROM lost)
               AND status IN ('pending', 'retry') AND NOT no_hold",
        )
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
