//! The dashboard and the admin calls made for it: the page is served only when switched on,
//! at its path, with its security headers; the overview counts what waits and what ran; an
//! operator sends a waiting workflow its event. None of it answers anyone but the admin role.

mod realtime_support;

use std::time::Duration;

use forge::prelude::*;
use forge_gateway::GatewayConfig;
use forge_test_support::wait_for;
use realtime_support::{token, GatewayNode, SECRET};
use serde_json::{json, Value};

#[forge::job]
async fn dashboard_task(_ctx: &JobContext, n: u32) -> Result<u32> {
    Ok(n)
}

#[forge::workflow(steps = ["approved", "after"])]
async fn dashboard_flow(ctx: &WorkflowContext) -> Result<String> {
    let approval: Value = ctx
        .wait_for_event("approved", Duration::from_secs(3600))
        .await?;
    ctx.step("after", || async { Ok(()) }).await?;
    Ok(approval["by"].as_str().unwrap_or("?").to_string())
}

async fn start(dashboard: Option<&str>) -> GatewayNode {
    let mut config = GatewayConfig::new(SECRET);
    config.admin_role = Some("ops".into());
    if let Some(path) = dashboard {
        config.dashboard = true;
        config.dashboard_path = path.into();
    }
    GatewayNode::start(config).await
}

async fn get(s: &GatewayNode, path: &str, etag: Option<&str>) -> reqwest::Response {
    let mut req = s.http.get(format!("{}{path}", s.base));
    if let Some(e) = etag {
        req = req.header("if-none-match", e);
    }
    req.send().await.unwrap()
}

#[tokio::test]
async fn the_page_is_served_only_when_on_at_its_path_with_its_headers() {
    let off = start(None).await;
    let res = get(&off, "/_forge/", None).await;
    assert_eq!(res.status(), 404);

    let on = start(Some("/ops/")).await;
    assert_eq!(get(&on, "/_forge/", None).await.status(), 404);
    let page = get(&on, "/ops/", None).await;
    assert_eq!(page.status(), 200);
    let h = page.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    assert_eq!(h["cache-control"], "no-cache");
    let html = page.text().await.unwrap();
    assert!(html.contains("./dashboard.js"), "{html}");

    let js = get(&on, "/ops/dashboard.js", None).await;
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    let etag = js.headers()["etag"].to_str().unwrap().to_string();
    assert!(js.bytes().await.unwrap().len() > 10_000);
    assert_eq!(
        get(&on, "/ops/dashboard.js", Some(&etag)).await.status(),
        304
    );
    assert_eq!(
        get(&on, "/ops/dashboard.css", None).await.headers()["content-type"],
        "text/css; charset=utf-8"
    );
    // Other paths under it are the page (its routes are in the fragment); the bare path
    // redirects, so that the page's relative URLs resolve under it.
    let deep = get(&on, "/ops/jobs/anything", None).await;
    assert_eq!(deep.status(), 200);
    assert!(deep.text().await.unwrap().contains("./dashboard.js"));
    let bare = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
        .get(format!("{}/ops", on.base))
        .send()
        .await
        .unwrap();
    assert_eq!(bare.status(), 308);
    assert_eq!(bare.headers()["location"], "/ops/");
    // The API keeps its own answers beside it.
    let (status, body, _) = on.post("/_api/nothing-here", None, json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
}

#[tokio::test]
async fn the_overview_counts_what_waits_and_what_ran_for_the_admin_role_only() {
    let s = start(None).await;
    let root = token("root", &["ops"]);
    let mut done = Vec::new();
    for n in 0..3 {
        done.push(
            s.forge
                .enqueue(dashboard_task::request(n).queue("dash_done"))
                .await
                .unwrap(),
        );
    }
    for n in 0..2 {
        s.forge
            .enqueue(dashboard_task::request(n).queue("dash_waiting"))
            .await
            .unwrap();
    }
    let worker = s
        .forge
        .start_worker(WorkerConfig {
            queues: vec!["dash_done".into()],
            ..WorkerConfig::default()
        })
        .await
        .unwrap();
    for id in &done {
        wait_for("the job to complete", Duration::from_secs(20), || async {
            let row = s.forge.job(*id).await.unwrap().unwrap();
            (row.status == JobStatus::Completed).then_some(())
        })
        .await;
    }

    let (status, body, _) = s.post("/_api/admin/overview", Some(&root), json!({})).await;
    assert_eq!(status, 200, "{body}");
    let o = &body["data"];
    let queue = |name: &str| {
        o["queues"]
            .as_array()
            .unwrap()
            .iter()
            .find(|q| q["queue"] == name)
            .unwrap_or_else(|| panic!("no queue {name} in {o}"))
            .clone()
    };
    let waiting = queue("dash_waiting");
    assert_eq!(
        (waiting["pending"].as_i64(), waiting["completed"].as_i64()),
        (Some(2), Some(0))
    );
    let ran = queue("dash_done");
    assert_eq!(
        (
            ran["sampled"].as_i64(),
            ran["completed"].as_i64(),
            ran["pending"].as_i64()
        ),
        (Some(3), Some(3), Some(0))
    );
    assert!(ran["throughputPerMinute"].as_f64().unwrap() > 0.0, "{ran}");
    assert!(ran["waitP50Ms"].as_f64().unwrap() >= 0.0, "{ran}");
    assert!(ran["runP99Ms"].as_f64().unwrap() >= 0.0, "{ran}");
    assert_eq!(o["sampled"], 5);
    assert_eq!(o["sampleLimit"], 20_000);
    let finished: i64 = o["perMinute"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["completed"].as_i64().unwrap())
        .sum();
    assert_eq!(finished, 3);
    assert!(o["windowSeconds"].as_f64().unwrap() > 800.0, "{o}");

    let (status, body, _) = s
        .post(
            "/_api/admin/overview",
            Some(&root),
            json!({ "windowMinutes": 61 }),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"]["field"], "windowMinutes");
    let (status, _, _) = s
        .post(
            "/_api/admin/overview",
            Some(&token("alice", &[])),
            json!({}),
        )
        .await;
    assert_eq!(status, 403);
    let (status, _, _) = s.post("/_api/admin/overview", None, json!({})).await;
    assert_eq!(status, 401);
    worker.shutdown().await;
}

#[tokio::test]
async fn an_operator_sends_a_waiting_workflow_its_event() {
    let s = start(None).await;
    let root = token("root", &["ops"]);
    let worker = s.forge.start_worker(WorkerConfig::default()).await.unwrap();
    let id = s
        .forge
        .start_workflow(dashboard_flow::request().owner("alice"))
        .await
        .unwrap();
    wait_for("the workflow to wait", Duration::from_secs(20), || async {
        let w = s.forge.workflow_state(id).await.unwrap().unwrap();
        (w.status == WorkflowStatus::Waiting).then_some(())
    })
    .await;

    // Its owner may not use the operator's route; bad input names the field.
    let send = |body: Value, t: Option<String>| {
        let s = &s;
        async move {
            let (status, body, _) = s
                .post("/_api/admin/workflows/send-event", t.as_deref(), body)
                .await;
            (status, body)
        }
    };
    let (status, _) = send(
        json!({ "workflowId": id, "event": "approved" }),
        Some(token("alice", &[])),
    )
    .await;
    assert_eq!(status, 403);
    let (status, body) = send(json!({ "workflowId": id, "event": "" }), Some(root.clone())).await;
    assert_eq!(
        (status, &body["error"]["details"]["field"]),
        (400, &json!("event")),
        "{body}"
    );
    let (status, body) = send(
        json!({ "workflowId": uuid::Uuid::now_v7(), "event": "approved" }),
        Some(root.clone()),
    )
    .await;
    assert_eq!(
        (status, &body["error"]["details"]["field"]),
        (404, &json!("workflowId")),
        "{body}"
    );
    let (status, body) = send(json!({ "workflowId": id }), Some(root.clone())).await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = send(
        json!({ "workflowId": id, "event": "approved", "payload": { "by": "root" } }),
        Some(root.clone()),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let state = wait_for(
        "the workflow to complete",
        Duration::from_secs(20),
        || async {
            let w = s.forge.workflow_state(id).await.unwrap().unwrap();
            (w.status == WorkflowStatus::Completed).then_some(w)
        },
    )
    .await;
    assert_eq!(state.output, Some(json!("root")));

    let (status, body) = send(json!({ "workflowId": id, "event": "approved" }), Some(root)).await;
    assert_eq!(status, 409, "{body}");
    worker.shutdown().await;
}
