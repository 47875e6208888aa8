//! No sticky sessions: two gateway nodes on one database, a client's stream on node A, and
//! its subscription calls (and a start-and-follow) sent to node B. They take effect on A, as
//! if A had received them: the answers are A's, refusals included, and the updates arrive on
//! A's stream.

mod realtime_support;

use std::time::Duration;

use forge::prelude::*;
use forge_gateway::GatewayConfig;
use forge_test_support::{gates, TestDb};
use realtime_support::{post, serve_gateway, token, Client, SECRET};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// Reports 10%, waits at `gate`, then reports 60% and ends.
#[forge::job(max_attempts = 1)]
async fn fwd_job(ctx: &JobContext, gate: String) -> Result<u32> {
    ctx.progress(10, "at the gate").await?;
    gates::wait(ctx.db(), &gate).await?;
    ctx.progress(60, "through").await?;
    Ok(7)
}

/// How many rows `fwd_items` has.
#[forge::query]
async fn fwd_count(ctx: &QueryContext) -> Result<i64> {
    let mut db = ctx.db().await?;
    Ok(sqlx::query_scalar("SELECT count(*) FROM fwd_items")
        .fetch_one(&mut *db)
        .await?)
}

struct Nodes {
    _db: TestDb,
    a: String,
    b: String,
    forge: Forge,
    http: reqwest::Client,
}

async fn two_nodes() -> Nodes {
    let db = TestDb::new().await;
    // A Forge each: each node has its own LISTEN connection and hub, as separate processes do.
    let (fa, fb) = (
        Forge::connect(&db.url).await.unwrap(),
        Forge::connect(&db.url).await.unwrap(),
    );
    gates::create(fa.pool()).await;
    sqlx::query("CREATE TABLE fwd_items (id serial PRIMARY KEY)")
        .execute(fa.pool())
        .await
        .unwrap();
    let (a, _) = serve_gateway(&fa, GatewayConfig::new(SECRET)).await;
    let (b, _) = serve_gateway(&fb, GatewayConfig::new(SECRET)).await;
    Nodes {
        _db: db,
        a,
        b,
        forge: fa,
        http: reqwest::Client::new(),
    }
}

/// The next event of `c`'s stream for subscription `sub`, skipping others.
async fn next_for(c: &mut Client, sub: &str) -> Value {
    loop {
        let (_, _, data) = c.stream.next_event(WAIT, "an event").await;
        let v: Value = serde_json::from_str(&data).unwrap();
        if v["subscriptionId"] == sub {
            return v;
        }
    }
}

#[tokio::test]
async fn subscription_calls_reaching_another_node_take_effect_on_the_sessions_node() {
    let n = two_nodes().await;
    let worker = n.forge.start_worker(WorkerConfig::default()).await.unwrap();
    let alice = token("alice", &[]);
    let mut c = Client::connect(&n.http, &n.a, &alice).await;

    let job = n
        .forge
        .enqueue(fwd_job::request("g".into()).owner("alice"))
        .await
        .unwrap();
    // Through B: the answer is the job's state, as A would give it.
    let (status, body) = c.subscribe_job(&n.http, &n.b, "s1", job).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["jobId"], json!(job));
    // The updates come on A's stream.
    loop {
        let ev = next_for(&mut c, "s1").await;
        if ev["state"]["progress"] == 10.0 {
            break;
        }
    }
    gates::open(n.forge.pool(), &["g"]).await;
    loop {
        let ev = next_for(&mut c, "s1").await;
        if ev["state"]["status"] == "completed" {
            assert_eq!(ev["state"]["output"], 7);
            break;
        }
    }

    // Refusals are A's: a wrong secret, another user's session, someone else's job.
    let mut bad = json!({
        "sessionId": c.session, "sessionSecret": "nope", "subscriptionId": "s2", "jobId": job,
    });
    let (status, body) = post(
        &n.http,
        &format!("{}/_api/subscribe-job", n.b),
        &alice,
        &bad,
    )
    .await;
    assert_eq!(
        (status, &body["error"]["details"]["field"]),
        (404, &json!("sessionId")),
        "{body}"
    );
    bad["sessionSecret"] = json!(c.secret);
    let (status, _) = post(
        &n.http,
        &format!("{}/_api/subscribe-job", n.b),
        &token("bob", &[]),
        &bad,
    )
    .await;
    assert_eq!(status, 404);
    let bobs = n
        .forge
        .enqueue(fwd_job::request("h".into()).owner("bob"))
        .await
        .unwrap();
    let (status, body) = c.subscribe_job(&n.http, &n.b, "s3", bobs).await;
    assert_eq!(
        (status, &body["data"]["status"]),
        (200, &json!("not_found")),
        "{body}"
    );

    // Unsubscribing through B removes A's subscription.
    let unsub =
        json!({ "sessionId": c.session, "sessionSecret": c.secret, "subscriptionId": "s1" });
    let (status, body) = post(
        &n.http,
        &format!("{}/_api/unsubscribe", n.b),
        &alice,
        &unsub,
    )
    .await;
    assert_eq!((status, &body["data"]), (200, &json!(true)), "{body}");
    let (_, body) = post(
        &n.http,
        &format!("{}/_api/unsubscribe", n.b),
        &alice,
        &unsub,
    )
    .await;
    assert_eq!(body["data"], json!(false));
    gates::open(n.forge.pool(), &["h"]).await;
    worker.shutdown().await;
}

#[tokio::test]
async fn a_query_subscription_and_a_start_and_follow_through_another_node() {
    let n = two_nodes().await;
    let worker = n.forge.start_worker(WorkerConfig::default()).await.unwrap();
    let alice = token("alice", &[]);
    let mut c = Client::connect(&n.http, &n.a, &alice).await;

    let sub = json!({
        "sessionId": c.session, "sessionSecret": c.secret, "subscriptionId": "q", "fn": "fwd_count",
    });
    let (status, body) = post(&n.http, &format!("{}/_api/subscribe", n.b), &alice, &sub).await;
    assert_eq!((status, &body["data"]), (200, &json!(0)), "{body}");
    sqlx::query("INSERT INTO fwd_items DEFAULT VALUES")
        .execute(n.forge.pool())
        .await
        .unwrap();
    let ev = next_for(&mut c, "q").await;
    assert_eq!(ev["data"], 1, "{ev}");

    // Start-and-follow through B, for A's session: the job's updates arrive on A.
    let call = json!({
        "fn": "fwd_job", "args": { "gate": "f" },
        "follow": { "sessionId": c.session, "sessionSecret": c.secret, "subscriptionId": "j" },
    });
    let (status, body) = post(&n.http, &format!("{}/_api/rpc", n.b), &alice, &call).await;
    assert_eq!(status, 200, "{body}");
    gates::open(n.forge.pool(), &["f"]).await;
    loop {
        let ev = next_for(&mut c, "j").await;
        if ev["state"]["status"] == "completed" {
            break;
        }
    }
    // A follow for a session that no node holds creates no job.
    let mut lost = call.clone();
    lost["follow"]["sessionId"] = json!(uuid::Uuid::new_v4());
    let started = std::time::Instant::now();
    let (status, body) = post(&n.http, &format!("{}/_api/rpc", n.b), &alice, &lost).await;
    assert_eq!(
        (status, &body["error"]["details"]["field"]),
        (404, &json!("follow.sessionId")),
        "{body}"
    );
    assert!(started.elapsed() >= forge_gateway::realtime::ANSWER_TIMEOUT);
    let jobs = n
        .forge
        .list_jobs(&Default::default(), &forge::runs::Page::first(10))
        .await
        .unwrap();
    assert_eq!(jobs.items.len(), 1);
    worker.shutdown().await;
}
