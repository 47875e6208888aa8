//! Job operations. Every write a worker makes is fenced by the attempt number it was given at
//! claim time, so a worker that lost its lease can no longer change the job.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

use super::Store;
use crate::error::CancelError;
use crate::notifier::JobUpdate;
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

/// A claimed job from a row of a claim: `id`, `function_name`, `args`, `attempt` (the one the
/// claim starts), `max_attempts`, `owner`.
fn claimed_job(r: &sqlx::postgres::PgRow) -> Result<ClaimedJob, sqlx::Error> {
    Ok(ClaimedJob {
        id: r.try_get("id")?,
        function_name: r.try_get("function_name")?,
        args: r.try_get("args")?,
        attempt: r.try_get("attempt")?,
        max_attempts: r.try_get("max_attempts")?,
        owner: r.try_get("owner")?,
    })
}

/// `FROM` and the rest of the query that picks the jobs a claim takes, as `p`, and locks them:
/// queues `$1`, at most `$2` jobs, of functions `$3`. One ordered scan of `jobs_runnable` per
/// queue, stopping after `$2` rows. With `queue = ANY($1)` instead, PostgreSQL 15 cannot read
/// that index in order: it fetched and sorted the whole backlog on every claim (60 ms with
/// 50,000 jobs waiting). Rows a queue's scan locks but the final LIMIT drops stay locked until
/// the claim's transaction ends.
macro_rules! runnable_jobs {
    () => {
        "FROM unnest($1::text[]) AS q(name)
         CROSS JOIN LATERAL (
             SELECT id, function_name, args, attempts, max_attempts, owner, priority, run_at
             FROM forge.jobs
             WHERE status IN ('pending', 'retry') AND queue = q.name
               AND run_at <= now() AND function_name = ANY($3)
             ORDER BY priority, run_at
             LIMIT $2
             FOR UPDATE SKIP LOCKED
         ) p
         ORDER BY p.priority, p.run_at
         LIMIT $2"
    };
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// From this many jobs on, a bulk enqueue without idempotency keys or start times is written
/// with `COPY` instead of one `INSERT .. SELECT FROM unnest(..)`. COPY costs one more
/// round-trip, and saves PostgreSQL building eight arrays and unnesting them: 50,000 jobs
/// go in about 40% faster. (River's `InsertManyFast` uses `COPY FROM` for the same reason.)
const COPY_FROM: usize = 64;

/// Inserts jobs in one statement and returns their ids in order. A job whose idempotency key
/// is taken (by an earlier job, by a concurrent enqueue, or by an earlier job of the same
/// call) is not inserted; the id of the job that holds the key is returned in its place.
///
/// On a connection in a transaction, the jobs exist only if it commits. (A connection, not
/// any executor: `COPY` needs one.)
pub async fn insert_jobs(
    conn: &mut PgConnection,
    jobs: &[NewJob],
) -> Result<Vec<Uuid>, sqlx::Error> {
    if jobs.len() >= COPY_FROM
        && jobs
            .iter()
            .all(|j| j.idempotency_key.is_none() && j.run_at.is_none())
    {
        copy_jobs(conn, jobs).await?;
        return Ok(jobs.iter().map(|j| j.id).collect());
    }
    // Only the first job of the call with a given key is sent; the others get its id.
    let mut first_with_key: HashMap<&str, usize> = HashMap::new();
    let sent: Vec<&NewJob> = jobs
        .iter()
        .enumerate()
        .filter(|(i, j)| match j.idempotency_key.as_deref() {
            Some(k) => *first_with_key.entry(k).or_insert(*i) == *i,
            None => true,
        })
        .map(|(_, j)| j)
        .collect();
    let n = sent.len();
    let mut ids = Vec::with_capacity(n);
    let mut names = Vec::with_capacity(n);
    let mut args = Vec::with_capacity(n);
    let mut queues = Vec::with_capacity(n);
    let mut priorities = Vec::with_capacity(n);
    let mut max_attempts = Vec::with_capacity(n);
    let mut run_ats = Vec::with_capacity(n);
    let mut owners = Vec::with_capacity(n);
    let mut keys = Vec::with_capacity(n);
    for j in &sent {
        ids.push(j.id);
        names.push(j.function_name.as_str());
        args.push(&j.args);
        queues.push(j.queue.as_str());
        priorities.push(j.priority);
        max_attempts.push(j.max_attempts);
        run_ats.push(j.run_at);
        owners.push(j.owner.as_deref());
        keys.push(j.idempotency_key.as_deref());
    }
    if first_with_key.is_empty() {
        // Without idempotency keys every row is inserted, and the ids are the ones made here:
        // no conflict handling and nothing to read back, which halves the cost of a bulk
        // enqueue.
        sqlx::query(
            "INSERT INTO forge.jobs (id, function_name, args, queue, priority, max_attempts,
                                     run_at, owner)
             SELECT id, function_name, args, queue, priority, max_attempts,
                    COALESCE(run_at, now()), owner
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::int[],
                         $6::int[], $7::timestamptz[], $8::text[])
                 AS t(id, function_name, args, queue, priority, max_attempts, run_at, owner)",
        )
        .bind(&ids)
        .bind(&names)
        .bind(&args)
        .bind(&queues)
        .bind(&priorities)
        .bind(&max_attempts)
        .bind(&run_ats)
        .bind(&owners)
        .execute(&mut *conn)
        .await?;
        return Ok(ids);
    }
    // DO UPDATE rather than DO NOTHING: it returns the row that holds the key even when that
    // row was committed by a concurrent enqueue after this statement's snapshot (which a
    // read-back in the same statement cannot see). It changes no column, so the publishing
    // trigger sends nothing for it.
    let rows = sqlx::query(
        "INSERT INTO forge.jobs (id, function_name, args, queue, priority, max_attempts,
                                 run_at, owner, idempotency_key)
         SELECT id, function_name, args, queue, priority, max_attempts,
                COALESCE(run_at, now()), owner, idempotency_key
         FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::int[],
                     $6::int[], $7::timestamptz[], $8::text[], $9::text[])
             WITH ORDINALITY AS t(id, function_name, args, queue, priority, max_attempts,
                                  run_at, owner, idempotency_key, ord)
         ORDER BY ord
         ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL
             DO UPDATE SET idempotency_key = EXCLUDED.idempotency_key
         RETURNING id, idempotency_key",
    )
    .bind(&ids)
    .bind(&names)
    .bind(&args)
    .bind(&queues)
    .bind(&priorities)
    .bind(&max_attempts)
    .bind(&run_ats)
    .bind(&owners)
    .bind(&keys)
    .fetch_all(&mut *conn)
    .await?;
    let mut by_key: HashMap<String, Uuid> = HashMap::new();
    for r in &rows {
        if let Some(k) = r.try_get::<Option<String>, _>("idempotency_key")? {
            by_key.insert(k, r.try_get("id")?);
        }
    }
    jobs.iter()
        .map(|j| match j.idempotency_key.as_deref() {
            None => Ok(j.id),
            Some(k) => by_key
                .get(k)
                .copied()
                .ok_or_else(|| sqlx::Error::ColumnDecode {
                    index: "id".into(),
                    source: format!("no job returned for idempotency key `{k}`").into(),
                }),
        })
        .collect()
}

/// Writes `jobs` with one `COPY .. FROM STDIN` in PostgreSQL's binary format. Every job gets
/// the columns' defaults for what is not sent: `pending`, no attempts yet, `run_at` now.
async fn copy_jobs(conn: &mut PgConnection, jobs: &[NewJob]) -> Result<(), sqlx::Error> {
    /// Sent in pieces of about this size, so the buffer stays small however many jobs.
    const PIECE: usize = 256 * 1024;
    let mut copy = conn
        .copy_in_raw(
            "COPY forge.jobs (id, function_name, args, queue, priority, max_attempts, owner)
             FROM STDIN (FORMAT binary)",
        )
        .await?;
    // Header: signature, flags, header extension length.
    let mut buf: Vec<u8> = Vec::with_capacity(PIECE + 4096);
    buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
    buf.extend_from_slice(&0i32.to_be_bytes());
    buf.extend_from_slice(&0i32.to_be_bytes());
    for j in jobs {
        buf.extend_from_slice(&7i16.to_be_bytes());
        copy_field(&mut buf, j.id.as_bytes());
        copy_field(&mut buf, j.function_name.as_bytes());
        // jsonb: a version byte, then the JSON text. Its length is known once it is written.
        let at = buf.len();
        buf.extend_from_slice(&[0, 0, 0, 0, 1]);
        serde_json::to_writer(&mut buf, &j.args).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
        let len = (buf.len() - at - 4) as i32;
        buf[at..at + 4].copy_from_slice(&len.to_be_bytes());
        copy_field(&mut buf, j.queue.as_bytes());
        copy_field(&mut buf, &j.priority.to_be_bytes());
        copy_field(&mut buf, &j.max_attempts.to_be_bytes());
        match &j.owner {
            Some(owner) => copy_field(&mut buf, owner.as_bytes()),
            None => buf.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        if buf.len() >= PIECE {
            copy.send(buf.as_slice()).await?;
            buf.clear();
        }
    }
    buf.extend_from_slice(&(-1i16).to_be_bytes());
    copy.send(buf.as_slice()).await?;
    copy.finish().await?;
    Ok(())
}

fn copy_field(buf: &mut Vec<u8>, value: &[u8]) {
    buf.extend_from_slice(&(value.len() as i32).to_be_bytes());
    buf.extend_from_slice(value);
}

/// Inserts `job` already claimed by `worker_id` for its first attempt (an eager start, see
/// the worker module), and publishes `claimed` for it as a claim does.
async fn insert_claimed_job<'e, E: PgExecutor<'e>>(
    exec: E,
    job: &NewJob,
    worker_id: Uuid,
    lease: Duration,
) -> Result<ClaimedJob, sqlx::Error> {
    sqlx::query(
        // The setting keeps the insert from waking every node (migration 0008); set in a CTE,
        // it is in force when the statement's trigger runs, and only in this transaction.
        "WITH quiet AS (SELECT set_config('forge.claimed_at_insert', 'on', true)),
         inserted AS (
             INSERT INTO forge.jobs (id, function_name, args, queue, priority, max_attempts,
                                     run_at, owner, status, attempts, worker_id,
                                     lease_expires_at)
             VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, now()), $8, 'claimed', 1, $9,
                     now() + $10 * interval '1 millisecond')
             RETURNING id
         )
         SELECT pg_notify('forge_job_updates',
                          '[{\"job_id\":\"' || id::text || '\",\"status\":\"claimed\",\"attempt\":1,'
                          || '\"progress\":null,\"message\":null,\"xid\":'
                          || pg_current_xact_id()::text || '}]')
         FROM inserted, quiet",
    )
    .bind(job.id)
    .bind(&job.function_name)
    .bind(&job.args)
    .bind(&job.queue)
    .bind(job.priority)
    .bind(job.max_attempts)
    .bind(job.run_at)
    .bind(job.owner.as_deref())
    .bind(worker_id)
    .bind(millis(lease))
    .execute(exec)
    .await?;
    Ok(ClaimedJob {
        id: job.id,
        function_name: job.function_name.clone(),
        args: job.args.clone(),
        attempt: 1,
        max_attempts: job.max_attempts,
        owner: job.owner.clone(),
    })
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
    /// See [`insert_jobs`].
    pub async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<Vec<Uuid>, sqlx::Error> {
        insert_jobs(&mut *self.pool.acquire().await?, jobs).await
    }

    /// See [`insert_claimed_job`].
    pub async fn insert_claimed_job(
        &self,
        job: &NewJob,
        worker_id: Uuid,
        lease: Duration,
    ) -> Result<ClaimedJob, sqlx::Error> {
        insert_claimed_job(&self.pool, job, worker_id, lease).await
    }

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
            runnable_jobs!(),
            ")
             UPDATE forge.jobs j
             SET status = 'claimed', attempts = j.attempts + 1, worker_id = $4,
                 lease_expires_at = now() + $5 * interval '1 millisecond',
                 progress = NULL, message = NULL, error = NULL
             FROM async_commit WHERE j.id = ANY(ARRAY(SELECT id FROM picked))
             RETURNING j.id, j.function_name, j.args, j.attempts AS attempt, j.max_attempts,
                       j.owner, j.priority, j.run_at"
        ))
        .bind(queues)
        .bind(limit as i64)
        .bind(functions)
        .bind(worker_id)
        .bind(millis(lease))
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
                    p.owner, pg_current_xact_id()::text AS xid ",
            runnable_jobs!()
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
        Ok((HeldClaim { tx, xid }, jobs))
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
                 run_at = now(), worker_id = NULL, lease_expires_at = NULL
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

/// Jobs claimed by [`Store::claim_held`]: locked by an open transaction, still stored as
/// they were (`pending` or `retry`). Dropping it without [`close`](Self::close) rolls back:
/// the jobs are as before the claim, attempts included.
#[derive(Debug)]
pub struct HeldClaim {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    /// The transaction's id (xid8), which its updates carry when they are published.
    xid: u64,
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
    pub async fn close(
        mut self,
        worker_id: Uuid,
        lease: Duration,
        writes: &[HeldWrite],
    ) -> Result<(), sqlx::Error> {
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
            published.extend(held_updates(w, status, self.xid));
            started.push(!matches!(w.end, HeldEnd::Claimed));
            statuses.push(status.as_str());
            outputs.push(output);
            errors.push(error);
            delays.push(delay);
        }
        let payloads =
            job_update_payloads(&published).map_err(|e| sqlx::Error::Encode(Box::new(e)))?;
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
                 worker_id = CASE WHEN u.status IN ('claimed', 'running') THEN $10::uuid END,
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
        .fetch_one(&mut *self.tx)
        .await?;
        if updated as usize != n {
            // Dropping the transaction rolls back the writes and their notifications.
            return Err(sqlx::Error::Protocol(format!(
                "a held claim wrote {updated} of its {n} jobs"
            )));
        }
        self.tx.commit().await
    }
}

/// What the trigger of migration 0009 would publish for a held job's write that leaves it
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

/// Notification payloads of `updates`: JSON arrays, each below PostgreSQL's limit of 8,000
/// bytes. One update is at most about 3,200 bytes (a 500-character message of escapes).
fn job_update_payloads(updates: &[JobUpdate]) -> Result<Vec<String>, serde_json::Error> {
    const MAX_PAYLOAD: usize = 7_900;
    let mut payloads = Vec::new();
    let mut current = String::from("[");
    for u in updates {
        let element = serde_json::to_string(u)?;
        if current.len() + element.len() + 2 > MAX_PAYLOAD {
            current.push(']');
            payloads.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&element);
    }
    if current.len() > 1 {
        current.push(']');
        payloads.push(current);
    }
    Ok(payloads)
}

/// The status, output, error and retry delay (ms) a finish writes.
fn finish_columns(f: &FinishStatus) -> (JobStatus, Option<&Value>, Option<&str>, Option<f64>) {
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
        // `cancelled`: the user asked for it to stop, and it stopped.
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
                 worker_id = NULL,
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
