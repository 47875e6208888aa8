//! Schedule operations (see `schedule`): the schedules, their cursors and their handled ticks.

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, PgExecutor, Row};
use uuid::Uuid;

/// The cursor of a schedule that has no next tick: far enough never to come due.
pub fn never() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(9999, 12, 31, 0, 0, 0).unwrap()
}

/// A schedule to write.
#[derive(Debug, Clone)]
pub struct ScheduleWrite {
    pub name: String,
    pub function_name: String,
    /// Checked against the job's parameters.
    pub args: Value,
    pub cron: String,
    pub timezone: String,
    /// The policies as stored (`schedule::Missed` and `Overlap` parse and print them).
    pub missed: &'static str,
    pub backfill: u32,
    pub overlap: &'static str,
    pub owner: Option<String>,
}

/// A schedule as stored.
#[derive(Debug, Clone)]
pub struct ScheduleRow {
    pub id: Uuid,
    pub name: String,
    pub declared: bool,
    pub function_name: String,
    pub args: Value,
    pub cron: String,
    pub timezone: String,
    pub missed: String,
    pub backfill: u32,
    pub overlap: String,
    pub owner: Option<String>,
    pub paused: bool,
    pub next_tick: DateTime<Utc>,
    pub last_job_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "id, name, declared, function_name, args, cron, timezone, missed, \
                       backfill, overlap, owner, paused, next_tick, last_job_id, created_at";

fn schedule_row(r: &PgRow) -> Result<ScheduleRow, sqlx::Error> {
    let backfill: i32 = r.try_get("backfill")?;
    Ok(ScheduleRow {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        declared: r.try_get("declared")?,
        function_name: r.try_get("function_name")?,
        args: r.try_get("args")?,
        cron: r.try_get("cron")?,
        timezone: r.try_get("timezone")?,
        missed: r.try_get("missed")?,
        backfill: backfill.max(0) as u32,
        overlap: r.try_get("overlap")?,
        owner: r.try_get("owner")?,
        paused: r.try_get("paused")?,
        next_tick: r.try_get("next_tick")?,
        last_job_id: r.try_get("last_job_id")?,
        created_at: r.try_get("created_at")?,
    })
}

/// Writes a declared schedule. Its cursor is `next` when it is new or its expression or time
/// zone changed, and stays otherwise; pausing survives.
pub async fn upsert_declared_schedule<'e, E: PgExecutor<'e>>(
    exec: E,
    s: &ScheduleWrite,
    next: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO forge.schedules (id, name, declared, function_name, args, cron, timezone,
                                      missed, backfill, overlap, owner, next_tick)
         VALUES ($1, $2, true, $3, $4, $5, $6, $7, $8, $9, NULL, $10)
         ON CONFLICT (name) WHERE declared DO UPDATE SET
             function_name = EXCLUDED.function_name,
             args = EXCLUDED.args,
             missed = EXCLUDED.missed,
             backfill = EXCLUDED.backfill,
             overlap = EXCLUDED.overlap,
             next_tick = CASE
                 WHEN (schedules.cron, schedules.timezone) = (EXCLUDED.cron, EXCLUDED.timezone)
                 THEN schedules.next_tick ELSE EXCLUDED.next_tick END,
             cron = EXCLUDED.cron,
             timezone = EXCLUDED.timezone,
             updated_at = now()
         WHERE (schedules.function_name, schedules.args, schedules.cron, schedules.timezone,
                schedules.missed, schedules.backfill, schedules.overlap)
               IS DISTINCT FROM
               (EXCLUDED.function_name, EXCLUDED.args, EXCLUDED.cron, EXCLUDED.timezone,
                EXCLUDED.missed, EXCLUDED.backfill, EXCLUDED.overlap)",
    )
    .bind(Uuid::now_v7())
    .bind(&s.name)
    .bind(&s.function_name)
    .bind(&s.args)
    .bind(&s.cron)
    .bind(&s.timezone)
    .bind(s.missed)
    .bind(s.backfill as i32)
    .bind(s.overlap)
    .bind(next)
    .execute(exec)
    .await?;
    Ok(())
}

/// Inserts a run-time schedule whose first tick is `next`.
pub async fn insert_schedule<'e, E: PgExecutor<'e>>(
    exec: E,
    s: &ScheduleWrite,
    next: DateTime<Utc>,
) -> Result<ScheduleRow, sqlx::Error> {
    let row = sqlx::query(&format!(
        "INSERT INTO forge.schedules (id, name, declared, function_name, args, cron, timezone,
                                      missed, backfill, overlap, owner, next_tick)
         VALUES ($1, $2, false, $3, $4, $5, $6, $7, $8, $9, $10, $11)
         RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(&s.name)
    .bind(&s.function_name)
    .bind(&s.args)
    .bind(&s.cron)
    .bind(&s.timezone)
    .bind(s.missed)
    .bind(s.backfill as i32)
    .bind(s.overlap)
    .bind(&s.owner)
    .bind(next)
    .fetch_one(exec)
    .await?;
    schedule_row(&row)
}

/// Schedules, oldest first: `owner`'s only, or every one (declared ones too) for `None`.
pub async fn list_schedules<'e, E: PgExecutor<'e>>(
    exec: E,
    owner: Option<&str>,
) -> Result<Vec<ScheduleRow>, sqlx::Error> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM forge.schedules
         WHERE $1::text IS NULL OR owner = $1
         ORDER BY created_at, id"
    ))
    .bind(owner)
    .fetch_all(exec)
    .await?;
    rows.iter().map(schedule_row).collect()
}

/// The schedule `id`, if it exists and (for `Some(owner)`) is `owner`'s.
pub async fn get_schedule<'e, E: PgExecutor<'e>>(
    exec: E,
    id: Uuid,
    owner: Option<&str>,
) -> Result<Option<ScheduleRow>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM forge.schedules WHERE id = $1 AND ($2::text IS NULL OR owner = $2)"
    ))
    .bind(id)
    .bind(owner)
    .fetch_optional(exec)
    .await?;
    row.as_ref().map(schedule_row).transpose()
}

/// Pauses or resumes a schedule (`owner`'s, for `Some`). A resumed schedule's cursor becomes
/// `next`: the ticks of the pause are not missed ticks, they were not wanted.
pub async fn set_schedule_paused<'e, E: PgExecutor<'e>>(
    exec: E,
    id: Uuid,
    owner: Option<&str>,
    paused: bool,
    next: Option<DateTime<Utc>>,
) -> Result<Option<ScheduleRow>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "UPDATE forge.schedules
         SET paused = $3, next_tick = COALESCE($4, next_tick), updated_at = now()
         WHERE id = $1 AND ($2::text IS NULL OR owner = $2)
         RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(owner)
    .bind(paused)
    .bind(next)
    .fetch_optional(exec)
    .await?;
    row.as_ref().map(schedule_row).transpose()
}

/// Deletes a schedule (`owner`'s, for `Some`) and its tick records; the jobs it enqueued
/// stay. False when there was none.
pub async fn delete_schedule<'e, E: PgExecutor<'e>>(
    exec: E,
    id: Uuid,
    owner: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM forge.schedules WHERE id = $1 AND ($2::text IS NULL OR owner = $2)",
    )
    .bind(id)
    .bind(owner)
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Locks one schedule due at `now` whose job is among `functions`, skipping those another
/// node holds: that node is handling them.
pub async fn lock_due_schedule(
    tx: &mut PgConnection,
    now: DateTime<Utc>,
    functions: &[String],
) -> Result<Option<ScheduleRow>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM forge.schedules
         WHERE NOT paused AND next_tick <= $1 AND function_name = ANY($2)
         ORDER BY next_tick
         LIMIT 1
         FOR UPDATE SKIP LOCKED"
    ))
    .bind(now)
    .bind(functions)
    .fetch_optional(&mut *tx)
    .await?;
    row.as_ref().map(schedule_row).transpose()
}

/// The earliest cursor among running schedules whose job is among `functions`.
pub async fn next_schedule_tick<'e, E: PgExecutor<'e>>(
    exec: E,
    functions: &[String],
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT min(next_tick) FROM forge.schedules
         WHERE NOT paused AND function_name = ANY($1)",
    )
    .bind(functions)
    .fetch_one(exec)
    .await
}

/// Whether the job exists and has not reached a terminal status.
pub async fn job_is_unfinished(conn: &mut PgConnection, job: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM forge.jobs WHERE id = $1
                        AND status NOT IN ('completed', 'failed', 'dead_letter', 'cancelled'))",
    )
    .bind(job)
    .fetch_one(conn)
    .await
}

/// Records a tick as handled. False when it already was (by another node).
pub async fn record_tick(
    conn: &mut PgConnection,
    schedule: Uuid,
    tick: DateTime<Utc>,
    job: Option<Uuid>,
) -> Result<bool, sqlx::Error> {
    let done = sqlx::query(
        "INSERT INTO forge.schedule_ticks (schedule_id, tick, job_id) VALUES ($1, $2, $3)
         ON CONFLICT DO NOTHING",
    )
    .bind(schedule)
    .bind(tick)
    .bind(job)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Moves a schedule's cursor to `next` and remembers the job of its last tick.
pub async fn advance_schedule(
    conn: &mut PgConnection,
    schedule: Uuid,
    next: DateTime<Utc>,
    last_job: Option<Uuid>,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE forge.schedules SET next_tick = $2, last_job_id = $3 WHERE id = $1")
        .bind(schedule)
        .bind(next)
        .bind(last_job)
        .execute(conn)
        .await?;
    Ok(())
}

/// Pauses a schedule whose stored expression or time zone no longer parses.
pub async fn pause_broken_schedule(
    conn: &mut PgConnection,
    schedule: Uuid,
) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE forge.schedules SET paused = true, updated_at = now() WHERE id = $1")
        .bind(schedule)
        .execute(conn)
        .await?;
    Ok(())
}

/// The tick a job was enqueued for, if a schedule enqueued it.
pub async fn job_schedule_tick<'e, E: PgExecutor<'e>>(
    exec: E,
    job: Uuid,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    sqlx::query_scalar("SELECT tick FROM forge.schedule_ticks WHERE job_id = $1")
        .bind(job)
        .fetch_optional(exec)
        .await
}

/// How many schedules `owner` has.
pub async fn count_owner_schedules<'e, E: PgExecutor<'e>>(
    exec: E,
    owner: &str,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM forge.schedules WHERE owner = $1")
        .bind(owner)
        .fetch_one(exec)
        .await
}
