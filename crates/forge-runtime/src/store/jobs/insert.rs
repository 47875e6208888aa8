//! Inserting jobs: one `INSERT`, or `COPY` for big batches, and eager starts.

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

use super::{millis, ClaimedJob, NewJob, Store};

/// From this many jobs on, a bulk enqueue without idempotency keys, start times or trace
/// contexts is written with `COPY` instead of one `INSERT .. SELECT FROM unnest(..)`. COPY
/// costs one more round-trip, and saves PostgreSQL building the arrays and unnesting them:
/// 50,000 jobs go in about 40% faster. (River's `InsertManyFast` uses `COPY FROM` for the same reason.)
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
            .all(|j| j.idempotency_key.is_none() && j.run_at.is_none() && j.trace_context.is_none())
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
    let mut traces = Vec::with_capacity(n);
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
        traces.push(j.trace_context.as_deref());
    }
    if first_with_key.is_empty() {
        // Without idempotency keys every row is inserted, and the ids are the ones made here:
        // no conflict handling and nothing to read back, which halves the cost of a bulk
        // enqueue.
        sqlx::query(
            "INSERT INTO forge.jobs (id, function_name, args, queue, priority, max_attempts,
                                     run_at, owner, trace_context)
             SELECT id, function_name, args, queue, priority, max_attempts,
                    COALESCE(run_at, now()), owner, trace_context
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::int[],
                         $6::int[], $7::timestamptz[], $8::text[], $9::text[])
                 AS t(id, function_name, args, queue, priority, max_attempts, run_at, owner,
                      trace_context)",
        )
        .bind(&ids)
        .bind(&names)
        .bind(&args)
        .bind(&queues)
        .bind(&priorities)
        .bind(&max_attempts)
        .bind(&run_ats)
        .bind(&owners)
        .bind(&traces)
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
                                 run_at, owner, idempotency_key, trace_context)
         SELECT id, function_name, args, queue, priority, max_attempts,
                COALESCE(run_at, now()), owner, idempotency_key, trace_context
         FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::text[], $5::int[],
                     $6::int[], $7::timestamptz[], $8::text[], $9::text[], $10::text[])
             WITH ORDINALITY AS t(id, function_name, args, queue, priority, max_attempts,
                                  run_at, owner, idempotency_key, trace_context, ord)
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
    .bind(&traces)
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
                                     lease_expires_at, trace_context)
             VALUES ($1, $2, $3, $4, $5, $6, COALESCE($7, now()), $8, 'claimed', 1, $9,
                     now() + $10 * interval '1 millisecond', $11)
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
    .bind(job.trace_context.as_deref())
    .execute(exec)
    .await?;
    Ok(ClaimedJob {
        id: job.id,
        function_name: job.function_name.clone(),
        args: job.args.clone(),
        attempt: 1,
        max_attempts: job.max_attempts,
        owner: job.owner.clone(),
        // Due at once (an eager start is only for jobs due now); the database's `now()` is
        // the insert's, which is no later than this.
        run_at: job.run_at.unwrap_or_else(Utc::now),
        trace_context: job.trace_context.clone(),
    })
}

impl Store {
    /// See [`insert_jobs`].
    pub async fn insert_jobs(&self, jobs: &[NewJob]) -> Result<Vec<Uuid>, sqlx::Error> {
        insert_jobs(&mut *self.pool.acquire().await?, jobs).await
    }

    /// Inserts one job as [`insert_jobs`] does, within the start timeout
    /// ([`DatabaseConfig::start_timeout`](super::DatabaseConfig::start_timeout)); returns its id (for a taken idempotency key, the
    /// existing job's).
    pub async fn insert_job(&self, job: &NewJob) -> Result<Uuid, sqlx::Error> {
        let (mut conn, deadline) = self.start_connection().await?;
        let answer = deadline
            .wait(insert_jobs(&mut conn, std::slice::from_ref(job)))
            .await;
        let ids = deadline.settle(conn, answer)?;
        ids.into_iter().next().ok_or(sqlx::Error::RowNotFound)
    }

    /// See [`insert_claimed_job`]; within the start timeout, as [`Store::insert_job`].
    pub async fn insert_claimed_job(
        &self,
        job: &NewJob,
        worker_id: Uuid,
        lease: Duration,
    ) -> Result<ClaimedJob, sqlx::Error> {
        let (mut conn, deadline) = self.start_connection().await?;
        let answer = deadline
            .wait(insert_claimed_job(&mut *conn, job, worker_id, lease))
            .await;
        deadline.settle(conn, answer)
    }
}
