//! Run-time schedules over HTTP: each user creates, lists, pauses, resumes and deletes their
//! own, and never sees or changes another's.

mod realtime_support;

use std::time::Duration;

use forge::prelude::*;
use forge_gateway::GatewayConfig;
use realtime_support::token;
use realtime_support::{GatewayNode, SECRET};
use serde_json::{json, Value};

#[forge::job]
async fn sched_digest(_ctx: &JobContext, to: String) -> Result<String> {
    Ok(to)
}

#[forge::job(role = "admin")]
async fn sched_admin_only(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

async fn start() -> GatewayNode {
    let mut config = GatewayConfig::new(SECRET);
    config.admin_role = Some("admin".into());
    GatewayNode::start(config).await
}

/// Calls the schedules route `route`: its status and JSON answer.
async fn call(s: &GatewayNode, route: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let (status, answer, _) = s
        .post(&format!("/_api/schedules/{route}"), token, body)
        .await;
    (status, answer)
}

#[tokio::test]
async fn a_users_schedules_are_invisible_and_untouchable_to_another() {
    let s = start().await;
    let (alice, bob) = (token("alice", &[]), token("bob", &[]));
    let (status, body) = call(
        &s,
        "create",
        Some(&alice),
        json!({
            "function": "sched_digest", "args": {"to": "alice@example.com"},
            "cron": "0 9 * * MON", "timezone": "Europe/Berlin",
            "name": "weekly digest", "missed": "latest", "overlap": "skip"
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let created = &body["data"];
    assert_eq!(created["owner"], "alice");
    assert_eq!(created["missed"], "latest");
    assert_eq!(created["nextTicks"].as_array().unwrap().len(), 5);
    let id = created["id"].clone();

    let (_, mine) = call(&s, "list", Some(&alice), json!({})).await;
    assert_eq!(mine["data"].as_array().unwrap().len(), 1);
    let (_, theirs) = call(&s, "list", Some(&bob), json!({})).await;
    assert_eq!(theirs["data"], json!([]));
    for route in ["get", "pause", "resume", "delete"] {
        let (status, body) = call(&s, route, Some(&bob), json!({ "scheduleId": id })).await;
        assert_eq!(status, 404, "{route}: {body}");
        assert_eq!(body["error"]["details"]["field"], "scheduleId");
    }
    // An admin sees every schedule.
    let (_, all) = call(&s, "list", Some(&token("root", &["admin"])), json!({})).await;
    assert_eq!(all["data"].as_array().unwrap().len(), 1);

    let (status, paused) = call(&s, "pause", Some(&alice), json!({ "scheduleId": id })).await;
    assert_eq!(status, 200);
    assert_eq!(paused["data"]["paused"], true);
    assert_eq!(paused["data"]["nextTicks"], json!([]));
    let (_, resumed) = call(&s, "resume", Some(&alice), json!({ "scheduleId": id })).await;
    assert_eq!(resumed["data"]["paused"], false);

    // Its ticks enqueue jobs that belong to alice.
    let next = s.forge.schedules(Some("alice")).await.unwrap()[0].next_ticks[0];
    let ran = forge::schedule::run_due(s.forge.store(), next, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ran.len(), 1);
    let job = s.forge.job(ran[0].job_id.unwrap()).await.unwrap().unwrap();
    assert_eq!(job.owner.as_deref(), Some("alice"));

    let (status, _) = call(&s, "delete", Some(&alice), json!({ "scheduleId": id })).await;
    assert_eq!(status, 200);
    let (_, mine) = call(&s, "list", Some(&alice), json!({})).await;
    assert_eq!(mine["data"], json!([]));
}

#[tokio::test]
async fn bad_requests_name_the_field() {
    let s = start().await;
    let alice = token("alice", &[]);
    let (status, _) = call(&s, "list", None, json!({})).await;
    assert_eq!(status, 401);
    let create = |patch: Value| {
        let mut body =
            json!({ "function": "sched_digest", "args": {"to": "x"}, "cron": "0 9 * * *" });
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body
    };
    for (patch, status, field) in [
        (json!({ "cron": "every day" }), 400, "cron"),
        (json!({ "timezone": "Mars/Base" }), 400, "timezone"),
        (json!({ "missed": "sometimes" }), 400, "missed"),
        (
            json!({ "missed": "backfill", "backfill": 5000 }),
            400,
            "backfill",
        ),
        (json!({ "overlap": "maybe" }), 400, "overlap"),
        (json!({ "args": {"to": 3} }), 400, "args.to"),
        (json!({ "function": "nope" }), 404, "function"),
    ] {
        let (got, body) = call(&s, "create", Some(&alice), create(patch.clone())).await;
        assert_eq!(got, status, "{patch}: {body}");
        assert_eq!(body["error"]["details"]["field"], field, "{patch}: {body}");
    }
    let (status, _) = call(
        &s,
        "create",
        Some(&alice),
        json!({ "function": "sched_admin_only", "cron": "0 9 * * *" }),
    )
    .await;
    assert_eq!(status, 403);
}

#[forge::cron("0 3 * * *", timezone = "Europe/Berlin", overlap = "skip")]
#[forge::job]
async fn sched_nightly(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[tokio::test]
async fn declared_schedules_are_in_the_openapi_document() {
    let s = start().await;
    let doc: Value = s
        .http
        .get(format!("{}/_api/openapi.json", s.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["paths"]["/_api/rpc/sched_nightly"]["post"]["x-forge-schedule"],
        json!({ "cron": "0 3 * * *", "timezone": "Europe/Berlin", "missed": "skip", "backfill": 0, "overlap": "skip" })
    );
    assert!(doc["paths"]["/_api/rpc/sched_digest"]["post"]
        .get("x-forge-schedule")
        .is_none());
}
