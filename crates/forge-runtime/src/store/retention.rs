//! Retention: deleting finished jobs and workflows (their steps and events go with them, by
//! the foreign keys' `ON DELETE CASCADE`) once they are older than their status's age, and
//! the records of schedule ticks whose jobs are gone.
//!
//! Each statement deletes at most one batch, found through the primary key and taken with
//! `FOR UPDATE SKIP LOCKED`: rows a worker or another node's retention holds are skipped, not
//! waited for, and no statement holds its locks for longer than one small batch takes. Ids are
//! UUIDv7, so the primary key is in creation order and a row finished before a cutoff has an id
//! below the cutoff's: the scan reads old rows only, without an index on `finished_at` (which
//! would make every job's final write a non-HOT update).

use std::time::Duration;

use uuid::Uuid;

use super::Store;

/// Which table a retention rule deletes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    Jobs,
    Workflows,
}

impl Store {
    /// Deletes up to `limit` rows of `table` whose status is one of `statuses` and that
    /// finished more than `age` ago. Returns how many it deleted.
    pub async fn delete_finished(
        &self,
        table: Finished,
        statuses: &[&str],
        age: Duration,
        limit: i64,
    ) -> Result<u64, sqlx::Error> {
        // A row that finished before the cutoff was created before it, so its id is below
        // this (with a minute of slack for nodes whose clocks run ahead).
        let bound = v7_floor(age, Duration::from_secs(60));
        let sql = match table {
            Finished::Jobs => {
                "DELETE FROM forge.jobs WHERE id IN (
                     SELECT id FROM forge.jobs
                     WHERE id < $1 AND status = ANY($2)
                       AND finished_at < now() - $3 * interval '1 millisecond'
                     ORDER BY id LIMIT $4
                     FOR UPDATE SKIP LOCKED)"
            }
            Finished::Workflows => {
                "DELETE FROM forge.workflows WHERE id IN (
                     SELECT id FROM forge.workflows
                     WHERE id < $1 AND status = ANY($2)
                       AND finished_at < now() - $3 * interval '1 millisecond'
                     ORDER BY id LIMIT $4
                     FOR UPDATE SKIP LOCKED)"
            }
        };
        let done = sqlx::query(sql)
            .bind(bound)
            .bind(statuses)
            .bind(age.as_secs_f64() * 1000.0)
            .bind(limit)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

impl Store {
    /// Deletes up to `limit` records of handled schedule ticks that nothing needs any more:
    /// the tick is behind its schedule's cursor (the scheduler moved past it under the
    /// schedule's lock, so no node tries it again), and its job is gone (deleted by retention)
    /// or it had none (a skipped tick). A tick whose job still exists is kept, for
    /// `JobContext::scheduled_for`. Returns how many it deleted.
    pub async fn prune_schedule_ticks(&self, limit: i64) -> Result<u64, sqlx::Error> {
        let done = sqlx::query(
            "DELETE FROM forge.schedule_ticks t USING (
                 SELECT d.schedule_id, d.tick FROM forge.schedule_ticks d
                 JOIN forge.schedules s ON s.id = d.schedule_id
                 WHERE d.tick < s.next_tick
                   AND (d.job_id IS NULL
                        OR NOT EXISTS (SELECT 1 FROM forge.jobs j WHERE j.id = d.job_id))
                 LIMIT $1
                 FOR UPDATE OF d SKIP LOCKED) old
             WHERE t.schedule_id = old.schedule_id AND t.tick = old.tick",
        )
        .bind(limit)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}

/// The smallest UUIDv7 of the moment `age` before now, moved `slack` later: every id made
/// before that moment sorts below it.
fn v7_floor(age: Duration, slack: Duration) -> Uuid {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let at = (now + slack).saturating_sub(age);
    let ms = u64::try_from(at.as_millis()).unwrap_or(u64::MAX) & 0xFFFF_FFFF_FFFF;
    // 48 bits of milliseconds, version 7, everything else zero.
    Uuid::from_u128((u128::from(ms) << 80) | (0x7u128 << 76))
}
