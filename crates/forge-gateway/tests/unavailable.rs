//! While the database is unreachable (a TCP proxy between the node and PostgreSQL refuses and
//! resets every connection), calls answer `503 unavailable` with `Retry-After` within a couple
//! of seconds, without the database's words; once it is back, they work again.

mod realtime_support;

use std::str::FromStr;
use std::time::{Duration, Instant};

use forge::prelude::*;
use forge_gateway::GatewayConfig;
use forge_test_support::proxy::Proxy;
use forge_test_support::{wait_for, TestDb};
use realtime_support::SECRET;
use serde_json::{json, Value};
use sqlx::postgres::PgConnectOptions;
use sqlx::Connection;

#[forge::query(public)]
async fn down_count(ctx: &QueryContext) -> Result<i64> {
    let mut db = ctx.db().await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM forge.jobs")
        .fetch_one(&mut *db)
        .await?)
}

#[forge::job(public)]
async fn down_job(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

async fn call(http: &reqwest::Client, base: &str, f: &str) -> (u16, Option<String>, Value) {
    let res = http
        .post(format!("{base}/_api/rpc/{f}"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (status, retry, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn calls_answer_503_within_seconds_while_the_database_is_unreachable() {
    let db = TestDb::new().await;
    let opts = PgConnectOptions::from_str(&db.url).unwrap();
    let upstream = format!("{}:{}", opts.get_host(), opts.get_port());
    let addr = tokio::net::lookup_host(upstream.as_str())
        .await
        .unwrap()
        .next()
        .unwrap();
    let proxy = Proxy::start(addr).await.unwrap();
    let url = db.url.replacen(&upstream, &proxy.addr().to_string(), 1);
    let forge = Forge::connect(&url).await.unwrap();
    let (base, _) = realtime_support::serve_gateway(&forge, GatewayConfig::new(SECRET)).await;
    let http = reqwest::Client::new();
    assert_eq!(call(&http, &base, "down_count").await.0, 200);

    proxy.refuse();
    for f in ["down_count", "down_job"] {
        let t0 = Instant::now();
        let (status, retry, body) = call(&http, &base, f).await;
        let took = t0.elapsed();
        assert_eq!(status, 503, "{f}: {body}");
        assert_eq!(retry.as_deref(), Some("1"), "{f}");
        assert_eq!(body["error"]["code"], "unavailable", "{f}: {body}");
        assert_eq!(
            body["error"]["message"],
            "the database is unreachable; try again shortly"
        );
        assert!(body["error"]["correlationId"].is_string());
        assert!(took < Duration::from_secs(3), "{f} answered after {took:?}");
    }

    proxy.heal();
    wait_for("calls to work again", Duration::from_secs(10), || async {
        (call(&http, &base, "down_count").await.0 == 200).then_some(())
    })
    .await;
}

/// A start whose insert gets no answer (here it waits on a lock; in a partition, on a
/// connection opened before the cut) answers `503` at `DatabaseConfig::start_timeout` rather
/// than waiting as long as the database does, and the connection it used is not lent again.
#[tokio::test]
async fn a_start_without_an_answer_is_refused_at_the_start_timeout() {
    let db = TestDb::new().await;
    let forge = Forge::connect_with_config(
        &db.url,
        forge::DatabaseConfig {
            max_connections: 1,
            start_timeout: Duration::from_millis(800),
            ..forge::DatabaseConfig::default()
        },
    )
    .await
    .unwrap();
    let (base, _) = realtime_support::serve_gateway(&forge, GatewayConfig::new(SECRET)).await;
    let http = reqwest::Client::new();
    assert_eq!(call(&http, &base, "down_job").await.0, 200);
    let before: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(forge.pool())
        .await
        .unwrap();

    let mut holder = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut holder).await.unwrap();
    sqlx::query("LOCK TABLE forge.jobs IN SHARE ROW EXCLUSIVE MODE")
        .execute(&mut holder)
        .await
        .unwrap();
    let t0 = Instant::now();
    let (status, retry, body) = call(&http, &base, "down_job").await;
    let took = t0.elapsed();
    assert_eq!(status, 503, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(2),
        "answered after {took:?}"
    );
    sqlx::query("ROLLBACK").execute(&mut holder).await.unwrap();

    // The one request connection was closed, not lent again with an answer still to come.
    let after: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(forge.pool())
        .await
        .unwrap();
    assert_ne!(before, after);
    assert_eq!(call(&http, &base, "down_job").await.0, 200);
}
