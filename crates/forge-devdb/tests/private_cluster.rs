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

/// What the fault tests rely on: a crash (`-m immediate`) and a restart keep the port and the
/// committed data, and a stopped cluster refuses connections.
#[tokio::test]
async fn a_private_cluster_survives_a_crash_and_restarts_on_its_port() {
    use forge_devdb::{PrivateCluster, StopMode};
    let dir = std::env::temp_dir().join(format!("forge-devdb-crash-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cluster = PrivateCluster::start(&dir.join("pgdata"), &["fsync=off"]).unwrap();
    let url = cluster.url("postgres");
    let mut conn = PgConnection::connect(&url).await.unwrap();
    sqlx::raw_sql("CREATE TABLE kept (n int); INSERT INTO kept VALUES (7)")
        .execute(&mut conn)
        .await
        .unwrap();
    let port = cluster.port();
    cluster.stop(StopMode::Immediate).unwrap();
    assert!(
        sqlx::query("SELECT 1").execute(&mut conn).await.is_err(),
        "a session survived the crash"
    );
    assert!(
        PgConnection::connect(&url).await.is_err(),
        "answers while stopped"
    );
    cluster.restart().unwrap();
    assert_eq!(cluster.port(), port);
    let mut conn = PgConnection::connect(&url).await.unwrap();
    let n: i32 = sqlx::query_scalar("SELECT n FROM kept")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(n, 7);
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
}
