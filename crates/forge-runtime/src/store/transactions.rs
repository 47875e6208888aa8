//! The transactions queries and mutations run in.

use std::time::Duration;

use sqlx::{PgConnection, Postgres, Transaction};

use super::Store;

impl Store {
    /// A read-only transaction, for a query: PostgreSQL itself refuses any write in it.
    pub async fn begin_read_only(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin_with("BEGIN READ ONLY").await
    }

    /// A read-write transaction, for a mutation.
    pub async fn begin(&self) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        self.pool.begin().await
    }
}

/// Makes PostgreSQL cancel any statement of the transaction open on `conn` that runs longer
/// than `timeout`, so a call that timed out does not leave its statement running (and holding
/// its connection and locks) after the caller got its answer. Ends with the transaction.
pub async fn set_statement_timeout(
    conn: &mut PgConnection,
    timeout: Duration,
) -> Result<(), sqlx::Error> {
    // At least 1 ms: 0 would mean no timeout at all.
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128);
    sqlx::query("SELECT set_config('statement_timeout', $1, true)")
        .bind(format!("{ms}ms"))
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether `e` is PostgreSQL cancelling a statement (SQLSTATE 57014), which is what
/// [`set_statement_timeout`] produces.
pub fn is_statement_timeout(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c == "57014")
}
