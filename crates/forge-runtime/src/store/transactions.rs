//! The transactions queries and mutations run in.

use sqlx::{Postgres, Transaction};

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
