//! Runs over HTTP: users list and read their own jobs and workflows and never another's, the
//! admin role sees all and acts (retry, cancel, delete, replay), nobody else may act, and the
//! OpenAPI document lists the admin routes with their role.

mod realtime_support;

use std::time::Duration;

use forge::prelude::*;
use forge_gateway::GatewayConfig;
use realtime_support::{token, GatewayNode, SECRET};
use serde_json::{json, Value};

#[forge::job]
async fn http_runs_task(_ctx: &JobContext, n: u32) -> Result<u32> {
    Ok(n)
}

#[forge::workflow(steps = ["wait"])]
async fn http_runs_flow(ctx: &WorkflowContext) -> Result<()> {
    let _: Value = ctx
        .wait_for_event("wait", Duration::from_secs(3600))
        .await?;
    Ok(())
}

async fn start(admin_role: Option<&str>) -> GatewayNode {
    let mut config = GatewayConfig::new(SECRET);
    config.admin_role = admin_role.map(Into::into);
    GatewayNode::start(config).await
}

async fn call(s: &GatewayNode, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let (status, answer, _) = s.post(path, token, body).await;
    (status, answer)
}

fn job_ids(answer: &Value) -> Vec<String> {
    answer["data"]["items"]
        .as_array()
        .unwrap_or_else(|| panic!("no items: {answer}"))
        .iter()
        .map(|j| j["jobId"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn users_read_their_own_runs_and_the_admin_role_reads_all() {
    let s = start(Some("ops")).await;
    let (alice, bob, root) = (
        token("alice", &[]),
        token("bob", &[]),
        token("root", &["ops"]),
    );
    let mut mine = Vec::new();
    for n in 0..3 {
        let id = s
            .forge
            .enqueue(http_runs_task::request(n).owner("alice"))
            .await
            .unwrap();
        mine.push(id.to_string());
    }
    let theirs = s
        .forge
        .enqueue(http_runs_task::request(7).owner("bob"))
        .await
        .unwrap()
        .to_string();

    // Alice's list: her jobs, newest first, in the shape of the job state plus the rest.
    let (status, page) = call(&s, "/_api/jobs/list", Some(&alice), json!({})).await;
    assert_eq!(status, 200, "{page}");
    let newest_first: Vec<String> = mine.iter().rev().cloned().collect();
    assert_eq!(job_ids(&page), newest_first);
    let item = &page["data"]["items"][0];
    assert_eq!(item["status"], "pending");
    assert_eq!(item["function"], "http_runs_task");
    assert_eq!(item["owner"], "alice");
    assert_eq!(item["maxAttempts"], 3);
    assert!(item["createdAt"].is_string() && item.get("progress").is_some());
    assert_eq!(page["data"]["nextCursor"], Value::Null);
    // Paged: two, then the last one.
    let (_, first) = call(&s, "/_api/jobs/list", Some(&alice), json!({ "limit": 2 })).await;
    assert_eq!(job_ids(&first), newest_first[..2]);
    let cursor = first["data"]["nextCursor"].clone();
    assert!(cursor.is_string(), "{first}");
    let (_, rest) = call(
        &s,
        "/_api/jobs/list",
        Some(&alice),
        json!({ "limit": 2, "cursor": cursor }),
    )
    .await;
    assert_eq!(job_ids(&rest), newest_first[2..]);
    // Asking for someone else's is refused; the admin role may.
    let (status, body) = call(
        &s,
        "/_api/jobs/list",
        Some(&alice),
        json!({ "filter": { "owner": "bob" } }),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["details"]["field"], "filter.owner");
    let (_, all) = call(&s, "/_api/jobs/list", Some(&root), json!({})).await;
    assert_eq!(job_ids(&all).len(), 4);
    let (_, bobs) = call(
        &s,
        "/_api/jobs/list",
        Some(&root),
        json!({ "filter": { "owner": "bob", "status": ["pending"] } }),
    )
    .await;
    assert_eq!(job_ids(&bobs), std::slice::from_ref(&theirs));

    // One job: the owner's, with arguments and history; another's is not found.
    let (status, job) = call(
        &s,
        "/_api/jobs/get",
        Some(&alice),
        json!({ "jobId": mine[0] }),
    )
    .await;
    assert_eq!(status, 200, "{job}");
    assert_eq!(job["data"]["args"], json!({ "n": 0 }));
    assert_eq!(job["data"]["attemptHistory"], json!([]));
    let (status, body) = call(
        &s,
        "/_api/jobs/get",
        Some(&alice),
        json!({ "jobId": theirs }),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["error"]["details"]["field"], "jobId");
    let (status, _) = call(
        &s,
        "/_api/jobs/get",
        Some(&root),
        json!({ "jobId": theirs }),
    )
    .await;
    assert_eq!(status, 200);

    // Workflows the same way.
    let flow = s
        .forge
        .start_workflow(http_runs_flow::request().owner("bob"))
        .await
        .unwrap()
        .to_string();
    let (_, list) = call(&s, "/_api/workflows/list", Some(&bob), json!({})).await;
    assert_eq!(list["data"]["items"][0]["workflowId"], flow.as_str());
    assert_eq!(list["data"]["items"][0]["name"], "http_runs_flow");
    let (_, list) = call(&s, "/_api/workflows/list", Some(&alice), json!({})).await;
    assert_eq!(list["data"]["items"], json!([]));
    let (status, w) = call(
        &s,
        "/_api/workflows/get",
        Some(&bob),
        json!({ "workflowId": flow }),
    )
    .await;
    assert_eq!(status, 200, "{w}");
    assert_eq!(w["data"]["stepDetails"][0]["name"], "wait");
    assert_eq!(w["data"]["events"], json!([]));
    let (status, _) = call(
        &s,
        "/_api/workflows/get",
        Some(&alice),
        json!({ "workflowId": flow }),
    )
    .await;
    assert_eq!(status, 404);

    // Bad input names the field; no token is 401.
    for (body, field) in [
        (json!({ "limit": 0 }), "limit"),
        (json!({ "cursor": "nope" }), "cursor"),
        (json!({ "filter": { "status": ["sleeping"] } }), ""),
        (
            json!({ "filter": { "createdAfter": "2026-01-02T00:00:00Z", "createdBefore": "2026-01-01T00:00:00Z" } }),
            "filter.createdBefore",
        ),
    ] {
        let (status, answer) = call(&s, "/_api/jobs/list", Some(&alice), body.clone()).await;
        assert_eq!(status, 400, "{body}: {answer}");
        if !field.is_empty() {
            assert_eq!(answer["error"]["details"]["field"], field, "{answer}");
        }
    }
    let (status, _) = call(&s, "/_api/jobs/list", None, json!({})).await;
    assert_eq!(status, 401);
    // Every field of a list is optional: no body at all (and so no content type) is `{}`.
    let res = s
        .http
        .post(format!("{}/_api/jobs/list", s.base))
        .bearer_auth(&alice)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let page: Value = res.json().await.unwrap();
    assert_eq!(job_ids(&page), newest_first);
}

#[tokio::test]
async fn only_the_admin_role_acts_on_runs() {
    let s = start(Some("ops")).await;
    let (alice, root) = (token("alice", &[]), token("root", &["ops"]));
    let mut ids = Vec::new();
    for n in 0..3 {
        let id = s
            .forge
            .enqueue(http_runs_task::request(n).owner("alice"))
            .await
            .unwrap();
        ids.push(id.to_string());
    }
    // A user acts on nothing, not even their own jobs, through the admin routes.
    for verb in ["retry", "cancel", "delete"] {
        let (status, body) = call(
            &s,
            &format!("/_api/admin/jobs/{verb}"),
            Some(&alice),
            json!({ "jobIds": [ids[0]] }),
        )
        .await;
        assert_eq!(status, 403, "{verb}: {body}");
        assert!(body["error"]["message"].as_str().unwrap().contains("`ops`"));
        let (status, _) = call(
            &s,
            &format!("/_api/admin/jobs/{verb}"),
            None,
            json!({ "jobIds": [ids[0]] }),
        )
        .await;
        assert_eq!(status, 401);
    }
    assert_eq!(
        s.forge
            .job(ids[0].parse().unwrap())
            .await
            .unwrap()
            .unwrap()
            .status,
        JobStatus::Pending
    );

    // One id: done, or why not.
    let (status, body) = call(
        &s,
        "/_api/admin/jobs/cancel",
        Some(&root),
        json!({ "jobIds": [ids[0]] }),
    )
    .await;
    assert_eq!((status, &body["data"]["count"]), (200, &json!(1)), "{body}");
    let (status, body) = call(
        &s,
        "/_api/admin/jobs/retry",
        Some(&root),
        json!({ "jobIds": [ids[1]] }),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("`pending`"));
    let (status, _) = call(
        &s,
        "/_api/admin/jobs/delete",
        Some(&root),
        json!({ "jobIds": [uuid::Uuid::now_v7()] }),
    )
    .await;
    assert_eq!(status, 404);
    // By filter: a count.
    let (status, body) = call(
        &s,
        "/_api/admin/jobs/cancel",
        Some(&root),
        json!({ "filter": { "owner": "alice" } }),
    )
    .await;
    assert_eq!((status, &body["data"]["count"]), (200, &json!(2)), "{body}");
    let (_, body) = call(
        &s,
        "/_api/admin/jobs/delete",
        Some(&root),
        json!({ "filter": { "status": ["cancelled"] } }),
    )
    .await;
    assert_eq!(body["data"]["count"], 3, "{body}");
    // A selector says which jobs, once.
    for bad in [json!({}), json!({ "jobIds": [], "filter": {} })] {
        let (status, body) = call(&s, "/_api/admin/jobs/delete", Some(&root), bad).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(body["error"]["details"]["field"], "jobIds");
    }

    // Replay of a workflow still waiting is refused, saying why.
    let flow = s
        .forge
        .start_workflow(http_runs_flow::request())
        .await
        .unwrap();
    let (status, body) = call(
        &s,
        "/_api/admin/workflows/replay",
        Some(&root),
        json!({ "workflowId": flow }),
    )
    .await;
    assert_eq!(status, 409, "{body}");
    let (status, _) = call(
        &s,
        "/_api/admin/workflows/replay",
        Some(&alice),
        json!({ "workflowId": flow }),
    )
    .await;
    assert_eq!(status, 403);
}

#[tokio::test]
async fn without_an_admin_role_nobody_acts_and_the_openapi_document_says_so() {
    let s = start(None).await;
    let root = token("root", &["ops", "admin"]);
    let (status, body) = call(
        &s,
        "/_api/admin/jobs/retry",
        Some(&root),
        json!({ "filter": {} }),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("auth.admin_role"));

    let with_role = start(Some("ops")).await;
    for (node, role) in [(&s, Value::Null), (&with_role, json!("ops"))] {
        let doc: Value = node
            .http
            .get(format!("{}/_api/openapi.json", node.base))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for verb in ["retry", "cancel", "delete"] {
            let op = &doc["paths"][format!("/_api/admin/jobs/{verb}")]["post"];
            assert_eq!(op["x-forge-role"], role, "{op}");
            assert!(op["responses"]["403"].is_object());
        }
        let replay = &doc["paths"]["/_api/admin/workflows/replay"]["post"];
        assert_eq!(replay["x-forge-role"], role);
        let list = &doc["paths"]["/_api/jobs/list"]["post"];
        assert!(list["responses"]["200"].is_object());
        assert!(doc["paths"]["/_api/workflows/get"]["post"].is_object());
    }
}
