//! Gates: named barriers kept in a test's database. A job or workflow step under test waits at
//! its gate ([`wait`]) until the test opens it ([`open`]), so a test can act while the work is
//! known to be in progress, across processes too. Call [`create`] once per test database.

use std::time::Duration;

use sqlx::PgPool;

pub async fn create(pool: &PgPool) {
    sqlx::query("CREATE TABLE IF NOT EXISTS test_gates (name text PRIMARY KEY)")
        .execute(pool)
        .await
        .expect("create the gates table");
}

/// Opens each named gate (opening an open gate does nothing).
pub async fn open(pool: &PgPool, names: &[&str]) {
    sqlx::query("INSERT INTO test_gates SELECT unnest($1::text[]) ON CONFLICT DO NOTHING")
        .bind(names)
        .execute(pool)
        .await
        .expect("open gates");
}

/// Returns once the gate `name` is open. For the code under test: it polls every 5 ms, which
/// is how long a test waits for it at most after opening.
pub async fn wait(pool: &PgPool, name: &str) -> Result<(), sqlx::Error> {
    loop {
        let open: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM test_gates WHERE name = $1)")
                .bind(name)
                .fetch_one(pool)
                .await?;
        if open {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
