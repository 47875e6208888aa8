//! The private-cluster fallback, exercised for real: initdb, start, connect, stop.

use std::time::Duration;

use sqlx::{Connection, PgConnection};

#[tokio::test]
async fn starts_and_stops_a_private_cluster() {
    let dir = std::env::temp_dir().join(format!("forge-devdb-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // Force the third source even though a server answers on 5432 here.
    std::env::remove_var("DATABASE_URL");
    std::env::set_var("FORGE_DEV_DB", "private");
    let mut db = forge_devdb::ensure("forge_devdb_test", &dir)
        .await
        .expect("a private cluster");
    assert!(db.source.contains("private cluster"), "{}", db.source);
    let mut conn = PgConnection::connect(&db.url)
        .await
        .expect("connect to the private cluster");
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(name, "forge_devdb_test");
    drop(conn);
    let url = db.url.clone();
    db.stop();
    let after = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url)).await;
    assert!(
        !matches!(after, Ok(Ok(_))),
        "the cluster still answers after stop"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
