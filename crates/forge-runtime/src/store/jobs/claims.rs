//! Claims: taking runnable jobs for a worker, plain (written `claimed`) or held (locked by
//! an open transaction and written once, when closed); giving back unstarted ones.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use uuid::Uuid;

use super::updates::finish_columns;
use super::{millis, ClaimedJob, FinishStatus, Store};
use crate::publish::{encode_job_updates, JobUpdate};
use crate::status::JobStatus;
use crate::store::refused_data;

/// A claimed job from a row of a claim: `id`, `function_name`, `args`, `attempt` (the one the
/// claim starts), `max_attempts`, `owner`, `run_at`, `trace_context`.
fn claimed_job(r: &sqlx::postgres::PgRow) -> Result<ClaimedJob, sqlx::Error> {
    Ok(ClaimedJob {
        id: r.try_get("id")?,
        function_name: r.try_get("function_name")?,
        args: r.try_get("args")?,
        attempt: r.try_get("attempt")?,
        max_attempts: r.try_get("max_attempts")?,
        owner: r.try_get("owner")?,
        run_at: r.try_get("run_at")?,
        trace_context: r.try_get("trace_context")?,
    })
}

/// `FROM` and the rest of the query that picks the jobs a claim takes, as `p`, and locks them:
/// queues `$1`, at most `$2` jobs, of functions `$3`. One ordered scan of `jobs_runnable` per
/// queue, stopping after `$2` rows. With `queue = ANY($1)` instead, PostgreSQL 15 cannot read
/// that index in order: it fetched and sorted the whole backlog on every claim (60 ms with
/// 50,000 jobs waiting). Rows a queue's scan locks but the final LIMIT drops stay locked until
/// the claim's transaction ends.
macro_rules! runnable_jobs {
    ($filter:literal) => {
        concat!(
            "FROM unnest($1::text[]) AS q(name)
         CROSS JOIN LATERAL (
             SELECT id, function_name, args, attempts, max_attempts, owner, priority, run_at,
                    trace_context
             FROM forge.jobs
             WHERE status IN ('pending', 'retry') AND queue = q.name
               AND run_at <= now() AND function_name = ANY($3) ",
            $filter,
            "
             ORDER BY priority, run_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         ) p
         ORDER BY p.priority, p.run_at
         LIMIT $2"
        )
    };
}

impl Store {
    /// Claims up to `limit` runnable jobs of `queues` whose function is one of `functions`
    /// (the ones this node can run) for `worker_id`, highest priority
    /// (lowest number) first, then oldest `run_at`. Each claim starts a new attempt: the
    /// attempt counter goes up (it is the fencing token of every later write) and the
    /// previous attempt's progress, message and error are cleared.
    pub async fn claim_jobs(
        &self,
        worker_id: Uuid,
        queues: &[String],
        functions: &[String],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, sqlx::Error> {
        self.claim_plain(worker_id, queues, functions, limit, lease, false)
            .await
    }

    /// Claims like [`claim_jobs`](Self::claim_jobs) only jobs whose held claim was lost
    /// (`no_hold`, see [`Store::reap_lost_held_claims`]): a node in held-claim mode takes
    /// them this way now and then, so that they are not left waiting while it holds claims.
    pub async fn claim_no_hold_jobs(
        &self,
        worker_id: Uuid,
        queues: &[String],
        functions: &[String],
        limit: usize,
        lease: Duration,
    ) -> Result<Vec<ClaimedJob>, sqlx::Error> {
        self.claim_plain(worker_id, queues, functions, limit, lease, true)
            .await
    }

    async fn claim_plain(
        &self,
        worker_id: Uuid,
        queues: &[String],
        functions: &[String],
        limit: usize,
        lease: Duration,
        no_hold_only: bool,
    ) -> Result<Vec<ClaimedJob>, sqlx::Error> {
        // The claimed rows are looked up by primary key from an array of their ids. Joined to
        // `picked` instead, the UPDATE was planned as a hash join over a sequential scan of
        // the whole table (it expects `picked` to be large), which made a claim of 500 jobs
        // cost 30 ms with 50,000 jobs in the table instead of 10.
        //
        // The claim commits without waiting for its WAL flush (`synchronous_commit` off for
        // this transaction only): it is on the path from enqueue to start, and it holds the
        // database-wide NOTIFY lock while it commits. A claim lost in a database crash is
        // harmless: the job is `pending` again with its attempt count as before, so every
        // write of the attempt that ran it is fenced off, and it runs again (at least once).
        let rows = sqlx::query(concat!(
            "WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true)),
             picked AS (SELECT p.id ",
            runnable_jobs!("AND ($6::bool IS NOT TRUE OR no_hold)"),
            ")
             UPDATE forge.jobs j
             SET status = 'claimed', attempts = j.attempts + 1, worker_id = $4,
                 lease_expires_at = now() + $5 * interval '1 millisecond',
                 progress = NULL, message = NULL, error = NULL
             FROM async_commit WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
             RETURNING j.id, j.function_name, j.args, j.attempts AS attempt, j.max_attempts,
                       j.owner, j.priority, j.run_at, j.trace_context"
        ))
        .bind(queues)
        .bind(limit as i64)
        .bind(functions)
        .bind(worker_id)
        .bind(millis(lease))
        .bind(no_hold_only)
        .fetch_all(&self.pool)
        .await?;
        // RETURNING gives the rows in the order the UPDATE found them, not the claim's.
        let mut rows = rows
            .iter()
            .map(|r| {
                let order: (i32, DateTime<Utc>) = (r.try_get("priority")?, r.try_get("run_at")?);
                Ok((order, r))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
        rows.sort_by_key(|(order, _)| *order);
        rows.into_iter().map(|(_, r)| claimed_job(r)).collect()
    }

    /// Claims like [`claim_jobs`](Self::claim_jobs), but only locks the jobs, in a transaction
    /// that stays open: nothing is written yet. The worker runs them and then writes, for
    /// each, in one row write, whatever it reached by then (see [`HeldClaim::close`]). Short
    /// jobs so cost one row write from claim to end instead of two.
    pub async fn claim_held(
        &self,
        queues: &[String],
        functions: &[String],
        limit: usize,
    ) -> Result<(HeldClaim, Vec<ClaimedJob>), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // The transaction's id is returned with each row: the close publishes it (see there).
        let rows = sqlx::query(concat!(
            "SELECT p.id, p.function_name, p.args, p.attempts + 1 AS attempt, p.max_attempts,
                    p.owner, p.run_at, p.trace_context, pg_current_xact_id()::text AS xid ",
            runnable_jobs!("AND NOT no_hold")
        ))
        .bind(queues)
        .bind(limit as i64)
        .bind(functions)
        .fetch_all(&mut *tx)
        .await?;
        let jobs = rows
            .iter()
            .map(claimed_job)
            .collect::<Result<Vec<_>, _>>()?;
        let xid = match rows.first() {
            Some(r) => r
                .try_get::<&str, _>("xid")?
                .parse()
                .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
            None => 0,
        };
        let log = Uuid::now_v7();
        if !jobs.is_empty() {
            // Committed before any job starts, on another connection (see migration 0011), so
            // that it outlives this node. Without waiting for the WAL flush: only a crash of
            // the database loses it, and that rolls back the claim too.
            let ids: Vec<Uuid> = jobs.iter().map(|j| j.id).collect();
            sqlx::query(
                "WITH settings AS (SELECT set_config('synchronous_commit', 'off', true))
                 INSERT INTO forge.held_claims (id, xid, job_ids)
                 SELECT $1, $2::text::xid8, $3 FROM settings",
            )
            .bind(log)
            .bind(xid.to_string())
            .bind(&ids)
            .execute(&self.pool)
            .await?;
        }
        let claim = HeldClaim {
            tx,
            xid,
            log,
            pool: self.pool.clone(),
        };
        Ok((claim, jobs))
    }

    /// Gives back jobs `worker_id` claimed but never started (a node shutting down): they are
    /// `pending` again, with the attempt their claim counted undone.
    pub async fn release_jobs(
        &self,
        worker_id: Uuid,
        jobs: &[(Uuid, i32)],
    ) -> Result<u64, sqlx::Error> {
        let ids: Vec<Uuid> = jobs.iter().map(|j| j.0).collect();
        let attempts: Vec<i32> = jobs.iter().map(|j| j.1).collect();
        let done = sqlx::query(
            "UPDATE forge.jobs j SET status = 'pending', attempts = j.attempts - 1,
                 worker_id = NULL, lease_expires_at = NULL
             FROM unnest($1::uuid[], $2::int[]) AS u(id, attempt)
             WHERE j.id = ANY(ARRAY(SELECT unnest($1::uuid[]))) AND j.id = u.id
               AND j.attempts = u.attempt AND j.worker_id = $3
               AND j.status = 'claimed'",
        )
        .bind(&ids)
        .bind(&attempts)
        .bind(worker_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// When the next job of `queues` becomes runnable, if any is waiting.
    pub async fn next_run_at(
        &self,
        queues: &[String],
    ) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT min(run_at) FROM forge.jobs WHERE status IN ('pending', 'retry') AND queue = ANY($1)",
        )
        .bind(queues)
        .fetch_one(&self.pool)
        .await
    }
}

/// Jobs claimed by [`Store::claim_held`]: locked by an open transaction, still stored as
/// they were (`pending` or `retry`). Dropping it without [`close`](Self::close) rolls back:
/// the jobs are as before the claim, attempts included.
#[derive(Debug)]
pub struct HeldClaim {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// The transaction's id (xid8), which its updates carry when they are published.
    xid: u64,
    /// Its row in `forge.held_claims`, deleted by the close.
    log: Uuid,
    /// For a close whose data the database refuses (see [`HeldClaim::close`]).
    pool: sqlx::PgPool,
}

/// Where a job of a held claim got to when the claim was closed.
#[derive(Debug, Clone)]
pub enum HeldEnd {
    /// Not started: `claimed`, with a lease.
    Claimed,
    /// Started and still running: `running`, with a lease.
    Running,
    /// Ended (it started too, then).
    Finished(FinishStatus),
}

/// One job of a held claim, as it is written when the claim is closed.
#[derive(Debug, Clone)]
pub struct HeldWrite {
    pub id: Uuid,
    pub attempt: i32,
    pub end: HeldEnd,
    /// The last progress it reported, if any.
    pub progress: Option<(f64, Option<String>)>,
}

impl HeldClaim {
    /// Writes each job's attempt as far as it got (one row write each) and commits. Every
    /// status the job went through is published, in order (`claimed`, `running`, then how it
    /// ended), by this statement itself and not by the trigger (migration 0010): the jobs are
    /// locked by this transaction, so each write applies, and what it changes is known here.
    /// Should a write not apply all the same, nothing is published: the claim is rolled back
    /// with an error, as if the node had died holding it. Waits for the commit to be durable
    /// only when some job ended (a claim alone may be lost in a crash: the job then runs
    /// again, see [`Store::claim_jobs`]).
    ///
    /// Should the database refuse the data of the close (a value PostgreSQL cannot store,
    /// which the runtime's checks let through), the claim is rolled back and its writes are
    /// made again in a new transaction, in halves down to the jobs refused, each of which ends
    /// `failed` ("the database refused this job's data: <SQLSTATE name>"). Jobs taken by
    /// another node in between are fenced off by their attempt, as after any rollback.
    pub async fn close(
        mut self,
        worker_id: Uuid,
        lease: Duration,
        writes: &[HeldWrite],
    ) -> Result<(), sqlx::Error> {
        let n = writes.len();
        let updated = match write_held(&mut self.tx, worker_id, lease, writes, self.xid, self.log)
            .await
        {
            Ok(updated) => updated,
            Err(e) => match refused_data(&e) {
                Some(_) => {
                    drop(self.tx);
                    return rewrite_refused(&self.pool, worker_id, lease, writes, self.log).await;
                }
                None => return Err(e),
            },
        };
        if updated as usize != n {
            // Dropping the transaction rolls back the writes and their notifications.
            return Err(sqlx::Error::Protocol(format!(
                "a held claim wrote {updated} of its {n} jobs"
            )));
        }
        self.tx.commit().await
    }
}

/// The closing statement of a held claim, in transaction `xid`: the number of jobs written.
async fn write_held(
    conn: &mut sqlx::PgConnection,
    worker_id: Uuid,
    lease: Duration,
    writes: &[HeldWrite],
    xid: u64,
    log: Uuid,
) -> Result<i64, sqlx::Error> {
    let n = writes.len();
    let mut ids = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut started = Vec::with_capacity(n);
    let mut outputs: Vec<Option<&Value>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut delays: Vec<Option<f64>> = Vec::with_capacity(n);
    let mut progress: Vec<Option<f64>> = Vec::with_capacity(n);
    let mut messages: Vec<Option<&str>> = Vec::with_capacity(n);
    let mut durable = false;
    let mut published = Vec::with_capacity(3 * n);
    for w in writes {
        ids.push(w.id);
        attempts.push(w.attempt);
        progress.push(w.progress.as_ref().map(|p| p.0));
        messages.push(w.progress.as_ref().and_then(|p| p.1.as_deref()));
        let (status, output, error, delay) = match &w.end {
            HeldEnd::Claimed => (JobStatus::Claimed, None, None, None),
            HeldEnd::Running => (JobStatus::Running, None, None, None),
            HeldEnd::Finished(f) => {
                durable = true;
                finish_columns(f)
            }
        };
        published.extend(held_updates(w, status, xid));
        started.push(!matches!(w.end, HeldEnd::Claimed));
        statuses.push(status.as_str());
        outputs.push(output);
        errors.push(error);
        delays.push(delay);
    }
    let payloads = encode_job_updates(&published).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
    let (updated, _sent): (i64, i64) = sqlx::query_as(
        "WITH settings AS (
             SELECT set_config('synchronous_commit',
                               CASE WHEN $12 THEN current_setting('synchronous_commit')
                                    ELSE 'off' END,
                               true),
                    set_config('forge.job_updates_published', 'on', true)
         ), updated AS (
         UPDATE forge.jobs j SET
             status = u.status,
             attempts = u.attempt,
             worker_id = $10::uuid,
             attempt_log = CASE WHEN u.status = 'retry'
                 THEN forge.log_attempt(j.attempt_log, jsonb_build_object(
                     'attempt', u.attempt, 'workerId', $10::uuid,
                     'startedAt', CASE WHEN u.started THEN now() END,
                     'endedAt', now(), 'outcome', 'retry', 'error', u.error))
                 ELSE j.attempt_log END,
             lease_expires_at = CASE WHEN u.status IN ('claimed', 'running')
                                     THEN now() + $11 * interval '1 millisecond' END,
             started_at = CASE WHEN u.started THEN now() ELSE j.started_at END,
             finished_at = CASE WHEN u.status IN ('claimed', 'running', 'retry') THEN NULL
                                ELSE now() END,
             run_at = CASE WHEN u.status = 'retry'
                           THEN now() + u.delay_ms * interval '1 millisecond'
                           ELSE j.run_at END,
             output = u.output,
             error = u.error,
             progress = u.progress,
             message = u.message
         FROM settings,
              unnest($1::uuid[], $2::int[], $3::text[], $4::bool[], $5::jsonb[], $6::text[],
                     $7::float8[], $8::float8[], $9::text[])
                  AS u(id, attempt, status, started, output, error, delay_ms, progress,
                       message)
         WHERE j.id = ANY(ARRAY(SELECT unnest($1::uuid[]))) AND j.id = u.id
           AND j.attempts = u.attempt - 1
         RETURNING 1
         )
         SELECT (SELECT count(*) FROM updated),
                (SELECT count(pg_notify('forge_job_updates', p)) FROM unnest($13::text[]) p)",
    )
    .bind(&ids)
    .bind(&attempts)
    .bind(&statuses)
    .bind(&started)
    .bind(&outputs)
    .bind(&errors)
    .bind(&delays)
    .bind(&progress)
    .bind(&messages)
    .bind(worker_id)
    .bind(millis(lease))
    .bind(durable)
    .bind(&payloads)
    .bind(log)
    .fetch_one(&mut *conn)
    .await?;
    Ok(updated)
}

/// [`HeldClaim::close`] after the database refused its data: the writes again, in a new
/// transaction, each part under a savepoint, halved down to the single jobs refused, whose
/// progress is dropped and whose end becomes a failure saying what was refused (the
/// database's own text goes to the log only).
async fn rewrite_refused(
    pool: &sqlx::PgPool,
    worker_id: Uuid,
    lease: Duration,
    writes: &[HeldWrite],
    log: Uuid,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let xid: String = sqlx::query_scalar("SELECT pg_current_xact_id()::text")
        .fetch_one(&mut *tx)
        .await?;
    let xid: u64 = xid.parse().map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
    // Parts to write; `Some` marks a single job already refused, rewritten as a failure.
    let mut parts = vec![(writes.to_vec(), None::<String>)];
    while let Some((part, failed)) = parts.pop() {
        sqlx::query("SAVEPOINT forge_held_part")
            .execute(&mut *tx)
            .await?;
        let Err(e) = write_held(&mut tx, worker_id, lease, &part, xid, log).await else {
            continue;
        };
        sqlx::query("ROLLBACK TO SAVEPOINT forge_held_part")
            .execute(&mut *tx)
            .await?;
        let Some(refused) = refused_data(&e) else {
            return Err(e);
        };
        tracing::warn!(error = %e, jobs = part.len(), "the database refused a held claim's writes");
        match (part.len(), failed) {
            (1, None) => {
                let mut w = part[0].clone();
                tracing::error!(job_id = %w.id, sqlstate = %refused,
                                "the database refused a job's data; failing the job");
                w.progress = None;
                w.end = HeldEnd::Finished(FinishStatus::Failed(format!(
                    "the database refused this job's data: {refused}"
                )));
                parts.push((vec![w], Some(refused)));
            }
            // Nothing of the job's own data is left in the write: its lease runs out.
            (1, Some(_)) => {}
            (n, _) => {
                let (a, b) = part.split_at(n / 2);
                parts.push((b.to_vec(), None));
                parts.push((a.to_vec(), None));
            }
        }
    }
    tx.commit().await
}

/// What the trigger of migration 0009 would publish (see [`crate::publish`]) for a held job's write that leaves it
/// `last`: `claimed`, then `running` if it started and got further, then `last`.
fn held_updates(w: &HeldWrite, last: JobStatus, xid: u64) -> impl Iterator<Item = JobUpdate> {
    let update = |status, progress: Option<&(f64, Option<String>)>| JobUpdate {
        job_id: w.id,
        status,
        attempt: w.attempt,
        progress: progress.map(|p| p.0),
        message: progress.and_then(|p| p.1.clone()),
        xid,
    };
    let claimed = (last != JobStatus::Claimed).then(|| update(JobStatus::Claimed, None));
    let running = matches!(w.end, HeldEnd::Finished(_)).then(|| update(JobStatus::Running, None));
    claimed
        .into_iter()
        .chain(running)
        .chain(std::iter::once(update(last, w.progress.as_ref())))
}
