//! The database's own timeouts: a query's statement is cancelled in PostgreSQL when the
//! function's timeout passes, and a first subscription does not wait (nor make writers wait)
//! behind a transaction that holds a lock on the table it reads.

mod realtime_support;

use std::time::{Duration, Instant};

use forge::prelude::*;
use forge_gateway::GatewayConfig;
use forge_test_support::wait_for;
use realtime_support::{GatewayNode, SECRET};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

/// Sleeps in PostgreSQL for far longer than its timeout.
#[forge::query(public, timeout = "500ms")]
async fn dbt_sleepy(ctx: &QueryContext) -> Result<()> {
    let mut db = ctx.db().await?;
    sqlx::query("SELECT pg_sleep(60), 'dbt_sleepy'")
        .execute(&mut *db)
        .await?;
    Ok(())
}

/// Writes, then sleeps in PostgreSQL for far longer than its timeout.
#[forge::mutation(public, timeout = "500ms")]
async fn dbt_sleepy_write(ctx: &MutationContext) -> Result<()> {
    let mut db = ctx.db().await?;
    sqlx::query("INSERT INTO dbt_items (name) VALUES ('lost')")
        .execute(&mut *db)
        .await?;
    sqlx::query("SELECT pg_sleep(60), 'dbt_sleepy'")
        .execute(&mut *db)
        .await?;
    Ok(())
}

#[forge::query(public)]
async fn dbt_count(ctx: &QueryContext) -> Result<i64> {
    let mut db = ctx.db().await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM dbt_items")
        .fetch_one(&mut *db)
        .await?)
}

async fn server() -> GatewayNode {
    let node = GatewayNode::start(GatewayConfig::new(SECRET)).await;
    sqlx::query("CREATE TABLE dbt_items (id serial PRIMARY KEY, name text)")
        .execute(node.forge.pool())
        .await
        .unwrap();
    node
}

fn token(user: &str) -> String {
    realtime_support::token(user, &[])
}

/// Statements of `dbt_sleepy` still running in PostgreSQL.
async fn sleepers(s: &GatewayNode) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
         WHERE query LIKE '%''dbt_sleepy''%' AND pid <> pg_backend_pid()
           AND state = 'active'",
    )
    .fetch_one(s.forge.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn a_query_past_its_timeout_is_cancelled_in_the_database() {
    let s = server().await;
    let started = Instant::now();
    let (status, body, _) = s.post("/_api/rpc/dbt_sleepy", None, json!({})).await;
    assert_eq!(status, 504, "{body}");
    assert_eq!(
        body,
        json!({ "error": { "code": "timeout", "message": "`dbt_sleepy` ran past its timeout of 500ms" } })
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // Without a statement_timeout the sleep would go on for a minute, holding a connection.
    wait_for("the sleeping statement to be cancelled", WAIT, || async {
        (sleepers(&s).await == 0).then_some(())
    })
    .await;

    // A mutation's statement too, and its writes are rolled back.
    let (status, body, _) = s.post("/_api/rpc/dbt_sleepy_write", None, json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (504, &json!("timeout")),
        "{body}"
    );
    wait_for("the sleeping statement to be cancelled", WAIT, || async {
        (sleepers(&s).await == 0).then_some(())
    })
    .await;
    let (status, body, _) = s.post("/_api/rpc/dbt_count", None, json!({})).await;
    assert_eq!((status, body), (200, json!({ "data": 0 })));
}

/// The subscriber's tables are locked by a long transaction that wrote to them: the first
/// subscription cannot create its change trigger. It answers 503 within a bound instead of
/// waiting for that transaction, and writers are not queued behind it meanwhile.
#[tokio::test]
async fn a_first_subscription_does_not_wait_behind_a_lock_on_its_table() {
    let s = server().await;
    let t = token("alice");
    let url = format!("{}/_api/events?token={t}", s.base);
    let mut stream = forge_test_support::sse::SseStream::open(&s.http, &url, None)
        .await
        .unwrap();
    let (_, name, data) = stream.next_event(WAIT, "the session event").await;
    assert_eq!(name, "session");
    let session: Value = serde_json::from_str(&data).unwrap();
    let subscribe = |sub: &'static str| {
        let body = json!({
            "sessionId": session["sessionId"], "sessionSecret": session["sessionSecret"],
            "subscriptionId": sub, "fn": "dbt_count", "args": {},
        });
        let s = &s;
        let t = t.clone();
        async move { s.post("/_api/subscribe", Some(&t), body).await }
    };

    // A writer that stays open holds ROW EXCLUSIVE on the table, which CREATE TRIGGER's
    // SHARE ROW EXCLUSIVE waits for.
    let mut holder = s.forge.pool().begin().await.unwrap();
    sqlx::query("INSERT INTO dbt_items (name) VALUES ('held')")
        .execute(&mut *holder)
        .await
        .unwrap();

    let started = Instant::now();
    let writer = async {
        // Arrives while the trigger is waiting for its lock.
        wait_for("the trigger to wait for its lock", WAIT, || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
                 WHERE c.relname = 'dbt_items' AND NOT l.granted",
            )
            .fetch_one(s.forge.pool())
            .await
            .unwrap();
            (waiting > 0).then_some(())
        })
        .await;
        let t0 = Instant::now();
        sqlx::query("INSERT INTO dbt_items (name) VALUES ('other')")
            .execute(s.forge.pool())
            .await
            .unwrap();
        t0.elapsed()
    };
    let (answer, writer_waited) =
        tokio::time::timeout(WAIT, async { tokio::join!(subscribe("first"), writer) })
            .await
            .expect("the subscription and the writer answer while the lock is held");
    let took = started.elapsed();
    let (status, body, retry_after) = answer;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(!body.to_string().contains("55P03") && !body.to_string().contains("lock timeout"));
    assert_eq!(retry_after.as_deref(), Some("1"));
    let bound =
        forge_runtime::store::WATCH_LOCK_TIMEOUT * (forge_runtime::store::WATCH_LOCK_ATTEMPTS + 2);
    assert!(
        took < bound + Duration::from_secs(2),
        "answered after {took:?}"
    );
    assert!(
        writer_waited < forge_runtime::store::WATCH_LOCK_TIMEOUT + Duration::from_millis(700),
        "a writer waited {writer_waited:?} behind the trigger's lock"
    );

    // Once the lock is gone, subscribing works and follows the table.
    holder.commit().await.unwrap();
    let (status, body, _) = subscribe("second").await;
    assert_eq!((status, body), (200, json!({ "data": 2 })));
    sqlx::query("INSERT INTO dbt_items (name) VALUES ('more')")
        .execute(s.forge.pool())
        .await
        .unwrap();
    let (_, name, data) = stream.next_event(WAIT, "the query update").await;
    assert_eq!(name, "query");
    let event: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(event["data"], 3, "{event}");
}
