//! A query's or mutation's answer is capped (`gateway.max_result_bytes`): over the cap the
//! call answers `500 result_too_large`, a mutation's writes are rolled back, and a live query
//! pushes the error instead of the result.

mod realtime_support;

use std::time::Duration;

use forge::prelude::*;
use forge_gateway::GatewayConfig;
use forge_test_support::sse::SseStream;
use realtime_support::{GatewayNode, SECRET};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);
const LIMIT: usize = 1000;

/// Every row's name: about 100 bytes each as JSON, so 5 rows fit the limit and 15 do not.
#[forge::query(public)]
async fn rs_names(ctx: &QueryContext) -> Result<Vec<String>> {
    let mut db = ctx.db().await?;
    Ok(sqlx::query_scalar("SELECT name FROM rs_items ORDER BY id")
        .fetch_all(&mut *db)
        .await?)
}

/// Adds `count` rows and answers with every row's name.
#[forge::mutation(public)]
async fn rs_add(ctx: &MutationContext, count: i32) -> Result<Vec<String>> {
    let mut db = ctx.db().await?;
    sqlx::query("INSERT INTO rs_items (name) SELECT repeat('x', 100) FROM generate_series(1, $1)")
        .bind(count)
        .execute(&mut *db)
        .await?;
    Ok(sqlx::query_scalar("SELECT name FROM rs_items ORDER BY id")
        .fetch_all(&mut *db)
        .await?)
}

async fn start() -> GatewayNode {
    let mut config = GatewayConfig::new(SECRET);
    config.max_result_bytes = LIMIT;
    let node = GatewayNode::start(config).await;
    sqlx::query("CREATE TABLE rs_items (id serial PRIMARY KEY, name text NOT NULL)")
        .execute(node.forge.pool())
        .await
        .unwrap();
    node
}

async fn rows(s: &GatewayNode) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM rs_items")
        .fetch_one(s.forge.pool())
        .await
        .unwrap()
}

#[tokio::test]
async fn an_answer_over_the_limit_is_refused_and_a_mutations_writes_roll_back() {
    let s = start().await;
    let (status, body, _) = s
        .post("/_api/rpc/rs_add", None, json!({ "count": 5 }))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 5);
    let (status, body, _) = s.post("/_api/rpc/rs_names", None, json!({})).await;
    assert_eq!(status, 200, "{body}");

    // 15 rows do not fit: the mutation's answer is refused, and its rows are not kept.
    let (status, body, _) = s
        .post("/_api/rpc/rs_add", None, json!({ "count": 10 }))
        .await;
    assert_eq!(
        (status, body),
        (
            500,
            json!({ "error": { "code": "result_too_large", "message":
                "`rs_add` answered with more than 1000 bytes of JSON, the most an answer may hold \
                 (gateway.max_result_bytes); return fewer rows, or a page of them" } })
        )
    );
    assert_eq!(rows(&s).await, 5);

    // Once the table holds more, the query's answer is refused too, in a batch alone.
    sqlx::query("INSERT INTO rs_items (name) SELECT repeat('y', 100) FROM generate_series(1, 10)")
        .execute(s.forge.pool())
        .await
        .unwrap();
    let (status, body, _) = s
        .post(
            "/_api/rpc/batch",
            None,
            json!([{ "fn": "rs_names", "args": {} }, { "fn": "rs_add", "args": { "count": 0 } }]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let results = body["results"].as_array().expect("the batch's results");
    for r in results {
        assert_eq!(r["error"]["code"], "result_too_large", "{body}");
    }
    assert_eq!(results.len(), 2);
}

#[tokio::test]
async fn a_live_query_pushes_the_error_once_its_answer_grows_over_the_limit() {
    let s = start().await;
    let (status, _, _) = s
        .post("/_api/rpc/rs_add", None, json!({ "count": 2 }))
        .await;
    assert_eq!(status, 200);
    let mut stream = SseStream::open(&s.http, &format!("{}/_api/events", s.base), None)
        .await
        .unwrap();
    let (_, name, data) = stream.next_event(WAIT, "the session event").await;
    assert_eq!(name, "session");
    let session: Value = serde_json::from_str(&data).unwrap();
    let (status, body, _) = s
        .post(
            "/_api/subscribe",
            None,
            json!({
                "sessionId": session["sessionId"], "sessionSecret": session["sessionSecret"],
                "subscriptionId": "names", "fn": "rs_names", "args": {},
            }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"].as_array().unwrap().len(), 2);

    sqlx::query("INSERT INTO rs_items (name) SELECT repeat('z', 100) FROM generate_series(1, 20)")
        .execute(s.forge.pool())
        .await
        .unwrap();
    let (_, name, data) = stream.next_event(WAIT, "the query's error").await;
    assert_eq!(name, "query");
    let event: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(event["subscriptionId"], "names", "{event}");
    assert_eq!(event["error"]["code"], "result_too_large", "{event}");
    assert!(event.get("data").is_none(), "{event}");

    // It stays subscribed: once the rows are gone the result comes back.
    sqlx::query("DELETE FROM rs_items WHERE name LIKE 'z%'")
        .execute(s.forge.pool())
        .await
        .unwrap();
    let (_, name, data) = stream.next_event(WAIT, "the query's result").await;
    assert_eq!(name, "query");
    let event: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(event["data"].as_array().map(Vec::len), Some(2), "{event}");
}
