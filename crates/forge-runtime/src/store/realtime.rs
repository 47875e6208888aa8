//! What the gateway's realtime delivery reads: job states together with the snapshot they were
//! read with, which tables a query read, and the change triggers on those tables.

use std::collections::HashMap;
use std::time::Duration;

use sqlx::{PgExecutor, Row};
use uuid::Uuid;

use super::jobs::{job_row, JOB_COLUMNS};
use super::{JobRow, Store};

/// Which transactions a read saw: the value of `pg_current_snapshot()` taken in the same
/// statement as the read.
///
/// Notifications are only delivered for committed transactions, so for a notification sent by
/// transaction `xid`, [`sees`](Self::sees) tells whether the read already reflects it (drop the
/// notification) or not (it is newer than the read: deliver it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbSnapshot {
    xmin: u64,
    xmax: u64,
    in_progress: Vec<u64>,
}

impl DbSnapshot {
    /// Parses PostgreSQL's text form `xmin:xmax:xip,xip,...`.
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let in_progress = match parts.next()? {
            "" => Vec::new(),
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            xmin,
            xmax,
            in_progress,
        })
    }

    /// Whether the read saw the effects of `xid`, a transaction known to have committed.
    pub fn sees(&self, xid: u64) -> bool {
        xid < self.xmin || (xid < self.xmax && !self.in_progress.contains(&xid))
    }

    /// The first transaction id the read did not see as finished; later snapshots have a
    /// larger or equal one.
    pub fn xmax(&self) -> u64 {
        self.xmax
    }

    /// Whether `xid` and every transaction that commits after it are invisible to the read.
    /// Once a notification of such a transaction arrives, later ones (notifications arrive in
    /// commit order) need no more checking against this snapshot.
    pub fn is_before(&self, xid: u64) -> bool {
        xid >= self.xmax
    }
}

/// How a table a query read is watched for changes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TableWatch {
    /// A user table: its changes are announced on `forge_table_changes` under `announced_as`
    /// (the table itself, or the root of its partition tree). `created` is true when the
    /// trigger did not exist before this call: changes made before it went unannounced.
    Trigger { announced_as: u32, created: bool },
    /// A table of Forge's own schema, which gets no trigger (its writes are the hot path);
    /// `forge.jobs` changes are seen on the job channels instead.
    Forge { name: String },
    /// Cannot carry a trigger (a materialized view changes only on `REFRESH`).
    Unwatchable { name: String },
}

/// Scan counters of the current transaction's tables (`pg_stat_xact_user_tables`). PostgreSQL
/// keeps them per backend and flushes them only while idle outside a transaction, so two
/// readings inside one transaction bracket exactly what the statements between them read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct ScanCounts(HashMap<u32, i64>);

impl ScanCounts {
    /// Oids of the tables scanned between `self` (earlier) and `later`.
    fn tables_read_until(&self, later: &ScanCounts) -> Vec<u32> {
        let mut read: Vec<u32> = later
            .0
            .iter()
            .filter(|(oid, n)| self.0.get(oid).copied().unwrap_or(0) < **n)
            .map(|(oid, _)| *oid)
            .collect();
        read.sort_unstable();
        read
    }
}

/// Reads the scan counters of the connection's current transaction.
async fn scan_counts<'e, E: PgExecutor<'e>>(exec: E) -> Result<ScanCounts, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT relid::int8 AS relid, (seq_scan + COALESCE(idx_scan, 0))::int8 AS scans
         FROM pg_stat_xact_user_tables
         WHERE seq_scan + COALESCE(idx_scan, 0) > 0",
    )
    .fetch_all(exec)
    .await?;
    let mut counts = HashMap::with_capacity(rows.len());
    for row in &rows {
        let oid: i64 = row.try_get("relid")?;
        counts.insert(oid as u32, row.try_get("scans")?);
    }
    Ok(ScanCounts(counts))
}

/// A read-only transaction whose tables are being tracked: run statements on
/// [`conn`](Self::conn), then [`finish`](Self::finish) to learn which tables they read.
pub struct TrackedRead {
    tx: sqlx::Transaction<'static, sqlx::Postgres>,
    before: ScanCounts,
}

impl TrackedRead {
    pub fn conn(&mut self) -> &mut sqlx::PgConnection {
        &mut self.tx
    }

    /// Ends the transaction; returns the oids of the tables read since it began.
    pub async fn finish(mut self) -> Result<Vec<u32>, sqlx::Error> {
        let after = scan_counts(&mut *self.tx).await?;
        self.tx.rollback().await?;
        Ok(self.before.tables_read_until(&after))
    }
}

impl Store {
    /// Sends `payload` on `channel` to every node's LISTEN connection, at once (outside any
    /// transaction). For messages between nodes, such as [`crate::publish::SESSION_CALLS`].
    pub async fn notify(&self, channel: &str, payload: &str) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(channel)
            .bind(payload)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

impl Store {
    /// Begins a read-only transaction that records which tables its statements read.
    pub async fn begin_tracked_read(&self) -> Result<TrackedRead, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SET TRANSACTION READ ONLY")
            .execute(&mut *tx)
            .await?;
        let before = scan_counts(&mut *tx).await?;
        Ok(TrackedRead { tx, before })
    }

    /// The jobs `ids` (those that exist) and the snapshot they were read with, in one
    /// statement.
    pub async fn get_jobs_with_snapshot(
        &self,
        ids: &[Uuid],
    ) -> Result<(DbSnapshot, Vec<JobRow>), sqlx::Error> {
        let rows = sqlx::query(&format!(
            "SELECT s.snapshot, {JOB_COLUMNS}
             FROM (SELECT pg_current_snapshot()::text AS snapshot) s
             LEFT JOIN forge.jobs ON id = ANY($1)"
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
        let mut jobs = Vec::with_capacity(rows.len());
        for row in &rows {
            // The one row of a read that matched nothing has no job columns.
            if row.try_get::<Option<Uuid>, _>("id")?.is_some() {
                jobs.push(job_row(row)?);
            }
        }
        Ok((snapshot, jobs))
    }

    /// Makes sure changes of table `oid` are announced on `forge_table_changes`, installing
    /// the trigger if needed (which needs the privilege to create triggers on it, normally
    /// ownership).
    pub async fn watch_table(&self, oid: u32) -> Result<TableWatch, sqlx::Error> {
        let row = sqlx::query(
            "SELECT n.nspname, format('%I.%I', n.nspname, c.relname) AS name, c.relkind::text
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE c.oid = $1::int8::oid",
        )
        .bind(i64::from(oid))
        .fetch_optional(&self.pool)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
        let schema: String = row.try_get("nspname")?;
        let name: String = row.try_get("name")?;
        let kind: String = row.try_get("relkind")?;
        if schema == "forge" {
            return Ok(TableWatch::Forge { name });
        }
        if kind != "r" && kind != "p" {
            return Ok(TableWatch::Unwatchable { name });
        }
        let mut attempt = 1;
        let row = loop {
            match self.install_watch(oid).await {
                Err(e) if is_lock_timeout(&e) && attempt < WATCH_LOCK_ATTEMPTS => {
                    // Out of the lock queue between attempts, so the writers queued behind this
                    // one go ahead.
                    tokio::time::sleep(WATCH_LOCK_TIMEOUT / 2 * attempt).await;
                    attempt += 1;
                }
                out => break out?,
            }
        };
        let announced_as: i64 = row.try_get("announced_as")?;
        Ok(TableWatch::Trigger {
            announced_as: announced_as as u32,
            created: row.try_get("created")?,
        })
    }
}

/// How long creating a table's change trigger waits for its lock on the table. The lock
/// (`SHARE ROW EXCLUSIVE`) conflicts with every writer: while it waits behind a long
/// transaction that wrote the table, new writers queue behind it, so it gives up quickly.
pub const WATCH_LOCK_TIMEOUT: Duration = Duration::from_millis(500);

/// Tries at creating a change trigger before [`Store::watch_table`] fails with the lock
/// timeout (SQLSTATE 55P03, see [`is_lock_timeout`]).
pub const WATCH_LOCK_ATTEMPTS: u32 = 3;

/// Whether `e` is PostgreSQL giving up waiting for a lock (`lock_timeout`, SQLSTATE 55P03).
pub fn is_lock_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "55P03")
}

impl Store {
    async fn install_watch(&self, oid: u32) -> Result<sqlx::postgres::PgRow, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT set_config('lock_timeout', $1, true)")
            .bind(format!("{}ms", WATCH_LOCK_TIMEOUT.as_millis()))
            .execute(&mut *tx)
            .await?;
        let row = sqlx::query(
            "SELECT announced_as::int8 AS announced_as, created
             FROM forge.watch_table($1::int8::oid)",
        )
        .bind(i64::from(oid))
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_snapshots_and_tells_visibility() {
        let s = DbSnapshot::parse("100:105:101,103").unwrap();
        assert!(s.sees(99));
        assert!(s.sees(100));
        assert!(!s.sees(101));
        assert!(s.sees(102));
        assert!(!s.sees(103));
        assert!(s.sees(104));
        assert!(!s.sees(105));
        assert!(s.is_before(105));
        assert!(!s.is_before(104));
        let empty = DbSnapshot::parse("7:7:").unwrap();
        assert!(empty.sees(6) && !empty.sees(7));
        assert!(DbSnapshot::parse("7:7").is_none());
        assert!(DbSnapshot::parse("7:x:").is_none());
        assert!(DbSnapshot::parse("1:2:3:4").is_none());
    }

    #[test]
    fn tables_read_are_those_whose_counters_grew() {
        let before = ScanCounts(HashMap::from([(1, 3), (2, 1)]));
        let after = ScanCounts(HashMap::from([(1, 3), (2, 2), (5, 1)]));
        assert_eq!(before.tables_read_until(&after), vec![2, 5]);
    }
}
