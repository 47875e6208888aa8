//! Versioned migrations embedded in the binary, applied in a dedicated `forge` schema.

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
];

/// Any fixed number works; it only has to be the same on every node.
const MIGRATION_LOCK: i64 = 0x0066_6f72_6765_6d69;

pub(super) async fn run(pool: &PgPool) -> Result<(), RuntimeError> {
    let mut conn = pool.acquire().await?;
    // Two nodes starting at the same moment would otherwise both see version N missing and
    // both apply it. The lock is held on this one connection until the end.
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(MIGRATION_LOCK)
        .execute(&mut *conn)
        .await?;
    let result = apply_missing(&mut conn).await;
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
async fn apply_missing(conn: &mut sqlx::PgConnection) -> Result<(), RuntimeError> {
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
    for &(version, name, sql) in MIGRATIONS {
        if applied.contains(&version) {
            continue;
        }
        apply(conn, version, name, sql)
            .await
            .map_err(|source| RuntimeError::Migration {
                version,
                name,
                source,
            })?;
        tracing::info!(version, name, "applied migration");
    }
    Ok(())
}

/// One migration and its record, in one transaction.
async fn apply(
    conn: &mut sqlx::PgConnection,
    version: i32,
    name: &str,
    sql: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = conn.begin().await?;
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
    use super::super::Store;

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
