//! Versioned migrations embedded in the binary, applied in a dedicated `forge` schema.

use std::time::Duration;

use sqlx::{Connection, Executor, PgPool};

use crate::error::RuntimeError;

/// (version, name, SQL), in order.
pub static MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "jobs", include_str!("../../migrations/0001_jobs.sql")),
    (
        2,
        "job_updates",
        include_str!("../../migrations/0002_job_updates.sql"),
    ),
    (
        3,
        "realtime",
        include_str!("../../migrations/0003_realtime.sql"),
    ),
    (
        4,
        "workflows",
        include_str!("../../migrations/0004_workflows.sql"),
    ),
    (
        5,
        "jobs_throughput",
        include_str!("../../migrations/0005_jobs_throughput.sql"),
    ),
    (
        6,
        "workflow_state_updates",
        include_str!("../../migrations/0006_workflow_state_updates.sql"),
    ),
    (
        7,
        "faster_job_publish",
        include_str!("../../migrations/0007_faster_job_publish.sql"),
    ),
    (
        8,
        "eager_start",
        include_str!("../../migrations/0008_eager_start.sql"),
    ),
    (
        9,
        "held_claims",
        include_str!("../../migrations/0009_held_claims.sql"),
    ),
    (
        10,
        "held_close_publishes",
        include_str!("../../migrations/0010_held_close_publishes.sql"),
    ),
    (
        11,
        "schedules",
        include_str!("../../migrations/0011_schedules.sql"),
    ),
    (
        12,
        "held_claim_log",
        include_str!("../../migrations/0012_held_claim_log.sql"),
    ),
    (
        13,
        "engine_batches",
        include_str!("../../migrations/0013_engine_batches.sql"),
    ),
    (
        14,
        "attempt_log",
        include_str!("../../migrations/0014_attempt_log.sql"),
    ),
    (
        15,
        "trace_context",
        include_str!("../../migrations/0015_trace_context.sql"),
    ),
];

/// Any fixed number works; it only has to be the same on every node.
const MIGRATION_LOCK: i64 = 0x0066_6f72_6765_6d69;

/// How long one try of a migration waits for a table lock. A migration that alters a table
/// queues for its exclusive lock behind any open transaction that touched the table, and every
/// later reader and writer queues behind the migration: without a bound, one forgotten
/// transaction would stall every node's claims for as long as it stays open.
pub const MIGRATION_LOCK_TIMEOUT: Duration = Duration::from_secs(2);
/// Tries before a node gives up on a migration it cannot get the locks for.
pub const MIGRATION_LOCK_ATTEMPTS: u32 = 8;
/// The pause after the first failed try; it doubles after each, up to 8 s.
const MIGRATION_LOCK_PAUSE: Duration = Duration::from_millis(500);
const MIGRATION_LOCK_MAX_PAUSE: Duration = Duration::from_secs(8);

/// How migrations wait for their locks; tests shorten it.
#[derive(Clone, Copy)]
struct LockWait {
    timeout: Duration,
    attempts: u32,
    pause: Duration,
}

const LOCK_WAIT: LockWait = LockWait {
    timeout: MIGRATION_LOCK_TIMEOUT,
    attempts: MIGRATION_LOCK_ATTEMPTS,
    pause: MIGRATION_LOCK_PAUSE,
};

pub(super) async fn run(conn: &mut sqlx::PgConnection) -> Result<(), RuntimeError> {
    // Two nodes starting at the same moment would otherwise both see version N missing and
    // both apply it. The lock is held on this one connection until the end.
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = apply_missing(conn, MIGRATIONS, LOCK_WAIT).await;
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await;
    result?;
    unlock?;
    Ok(())
}

// Statements run as `conn.execute(raw_sql(..))`, not `raw_sql(..).execute(conn)`: the latter
// is a generic `async fn` whose future the compiler cannot prove `Send` for every lifetime,
// which made `Forge::connect` (and a node's `run`) impossible to `tokio::spawn`.
async fn apply_missing(
    conn: &mut sqlx::PgConnection,
    migrations: &[(i32, &'static str, &str)],
    wait: LockWait,
) -> Result<(), RuntimeError> {
    conn.execute(sqlx::raw_sql(
        "CREATE SCHEMA IF NOT EXISTS forge;
         CREATE TABLE IF NOT EXISTS forge.schema_migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now())",
    ))
    .await?;
    let applied: Vec<i32> = sqlx::query_scalar("SELECT version FROM forge.schema_migrations")
        .fetch_all(&mut *conn)
        .await?;
    for &(version, name, sql) in migrations {
        if applied.contains(&version) {
            continue;
        }
        let mut pause = wait.pause;
        let mut attempt = 1;
        loop {
            match apply(conn, version, name, sql, wait.timeout).await {
                Ok(()) => break,
                Err(e) if super::is_lock_timeout(&e) => {
                    if attempt == wait.attempts {
                        return Err(RuntimeError::MigrationLocked {
                            version,
                            name,
                            attempts: wait.attempts,
                            timeout: wait.timeout,
                        });
                    }
                    tracing::warn!(
                        version,
                        name,
                        attempt,
                        "a migration could not take its locks; another transaction on forge's \
                         tables holds them, trying again"
                    );
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MIGRATION_LOCK_MAX_PAUSE);
                    attempt += 1;
                }
                Err(source) => {
                    return Err(RuntimeError::Migration {
                        version,
                        name,
                        source,
                    })
                }
            }
        }
        tracing::info!(version, name, "applied migration");
    }
    Ok(())
}

/// One migration and its record, in one transaction, waiting at most `lock_timeout` for each
/// lock it takes.
async fn apply(
    conn: &mut sqlx::PgConnection,
    version: i32,
    name: &str,
    sql: &str,
    lock_timeout: Duration,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT set_config('lock_timeout', $1, true)")
        .bind(format!("{}ms", lock_timeout.as_millis()))
        .execute(&mut *tx)
        .await?;
    tx.execute(sqlx::raw_sql(sql)).await?;
    sqlx::query("INSERT INTO forge.schema_migrations (version, name) VALUES ($1, $2)")
        .bind(version)
        .bind(name)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

pub(super) async fn is_current(pool: &PgPool) -> Result<bool, sqlx::Error> {
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    let applied: Option<i32> =
        sqlx::query_scalar("SELECT max(version) FROM forge.schema_migrations")
            .fetch_one(pool)
            .await?;
    Ok(applied.unwrap_or(0) >= latest)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use forge_test_support::{wait_for, TestDb};
    use sqlx::postgres::PgPoolOptions;

    use super::super::Store;
    use super::{apply_missing, LockWait};
    use crate::error::RuntimeError;

    static PROBE: &[(i32, &str, &str)] = &[(
        1000,
        "probe",
        "ALTER TABLE forge.jobs ADD COLUMN probe integer",
    )];

    /// A migration that alters a table behind an open transaction gives up its place in the
    /// lock queue every `timeout`, so the table's readers and writers wait at most that long
    /// behind it; it fails with a typed error after its tries, and applies once the
    /// transaction ends between two tries.
    #[tokio::test]
    async fn a_migration_behind_an_open_transaction_never_blocks_the_table_for_long() {
        let db = TestDb::new().await;
        let pool = PgPoolOptions::new()
            .max_connections(5)
            .connect(&db.url)
            .await
            .unwrap();
        Store::new(pool.clone()).migrate().await.unwrap();
        let mut holder = pool.begin().await.unwrap();
        sqlx::query("SELECT count(*) FROM forge.jobs")
            .execute(&mut *holder)
            .await
            .unwrap();

        let wait = LockWait {
            timeout: Duration::from_millis(200),
            attempts: 3,
            pause: Duration::from_millis(100),
        };
        let mut conn = pool.acquire().await.unwrap().detach();
        let migrating =
            tokio::spawn(async move { apply_missing(&mut conn, PROBE, wait).await.map(|()| conn) });
        let mut slowest = Duration::ZERO;
        while !migrating.is_finished() {
            let started = std::time::Instant::now();
            tokio::time::timeout(
                Duration::from_secs(5),
                sqlx::query("SELECT count(*) FROM forge.jobs").execute(&pool),
            )
            .await
            .expect("a reader of the table is not stuck behind the migration")
            .unwrap();
            slowest = slowest.max(started.elapsed());
        }
        assert!(
            slowest < Duration::from_secs(1),
            "a reader waited {slowest:?}"
        );
        match migrating.await.unwrap() {
            Err(RuntimeError::MigrationLocked {
                version: 1000,
                name: "probe",
                attempts: 3,
                ..
            }) => {}
            other => panic!("expected MigrationLocked, got {:?}", other.map(|_| ())),
        }
        let recorded: i64 =
            sqlx::query_scalar("SELECT count(*) FROM forge.schema_migrations WHERE version = 1000")
                .fetch_one(&pool)
                .await
                .unwrap();
        assert_eq!(recorded, 0);

        // Now the transaction ends while the migration waits between tries.
        let wait = LockWait {
            attempts: 50,
            ..wait
        };
        let mut conn = pool.acquire().await.unwrap().detach();
        let migrating = tokio::spawn(async move { apply_missing(&mut conn, PROBE, wait).await });
        wait_for(
            "the migration to queue for its lock",
            Duration::from_secs(10),
            || async {
                let waiting: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity \
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                )
                .fetch_one(&pool)
                .await
                .unwrap();
                (waiting > 0).then_some(())
            },
        )
        .await;
        holder.rollback().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), migrating)
            .await
            .expect("the migration applies once the transaction ends")
            .unwrap()
            .unwrap();
        let column: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM information_schema.columns \
             WHERE table_schema = 'forge' AND table_name = 'jobs' AND column_name = 'probe'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(column, 1);
    }

    /// Nodes migrate inside spawned tasks: this does not compile unless the future of
    /// `Store::migrate` is `Send`.
    #[tokio::test]
    async fn migrating_can_be_spawned() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(std::time::Duration::from_secs(2))
            .connect_lazy("postgres://forge@127.0.0.1:1/unreachable")
            .unwrap();
        let store = Store::new(pool);
        let migrated = tokio::spawn(async move { store.migrate().await });
        assert!(migrated.await.unwrap().is_err());
    }
}
