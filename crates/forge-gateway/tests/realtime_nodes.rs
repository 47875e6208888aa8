//! Three real node processes on one database: gateway A where the job is started, worker-only
//! B that runs it, gateway C where the client listens. This file is both the test (run by
//! `cargo test`) and the node program it starts: with `FORGE_NODE_ROLE` set it runs a node.

mod realtime_support;

use std::process::Stdio;
use std::time::Duration;

use forge::prelude::*;
use forge_test_support::TestDb;
use realtime_support::Client;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(20);

/// Reports 1%, waits until a row named `gate` appears in `rt_gates`, then reports three steps.
#[forge::job(max_attempts = 1)]
async fn rt_node_job(ctx: &JobContext, gate: String) -> Result<String> {
    ctx.progress(1, "waiting at the gate").await?;
    loop {
        let open: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM rt_gates WHERE name = $1)")
                .bind(&gate)
                .fetch_one(ctx.db())
                .await?;
        if open {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for p in [25, 50, 75, 100] {
        ctx.progress(p, format!("at {p}")).await?;
    }
    Ok(format!(
        "ran on {}",
        std::env::var("FORGE_NODE_NAME").unwrap_or_default()
    ))
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    match std::env::var("FORGE_NODE_ROLE") {
        Ok(role) => rt.block_on(run_node(&role)),
        Err(_) => {
            rt.block_on(three_nodes());
            println!("test three_nodes ... ok\n1 passed, 0 failed");
        }
    }
}

/// A node: `gateway`, `worker` or `gateway+worker`. Prints `LISTENING <addr>` once a gateway
/// serves, and exits when its standard input closes (the test ended or died).
async fn run_node(role: &str) {
    let url = std::env::var("DATABASE_URL").unwrap();
    let forge = Forge::connect(&url).await.unwrap();
    let _worker = if role.contains("worker") {
        Some(forge.start_worker(WorkerConfig::default()).await.unwrap())
    } else {
        None
    };
    if role.contains("gateway") {
        let realtime = forge_gateway::realtime::Realtime::start(
            &forge,
            Default::default(),
            realtime_support::auth(),
        )
        .await
        .unwrap();
        let f = forge.clone();
        // Stands in for the gateway's RPC route: starts a job owned by the caller.
        let start = axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::Json<Value>| async move {
                let user = realtime_support::auth()
                    .from_headers(&headers)
                    .unwrap()
                    .unwrap()
                    .user_id;
                let id = f
                    .enqueue(
                        rt_node_job::request(body["gate"].as_str().unwrap().into()).owner(user),
                    )
                    .await
                    .unwrap();
                axum::Json(json!({"data": {"jobId": id}}))
            },
        );
        let app: axum::Router = realtime.routes().route("/start", start);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("LISTENING {}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    } else {
        println!("READY");
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
}

struct NodeProcess {
    _child: Child,
    addr: Option<String>,
}

async fn spawn_node(role: &str, name: &str, url: &str) -> NodeProcess {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .env("FORGE_NODE_ROLE", role)
        .env("FORGE_NODE_NAME", name)
        .env("DATABASE_URL", url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("node start")
        .unwrap()
        .expect("a line");
    let addr = first
        .strip_prefix("LISTENING ")
        .map(|a| format!("http://{a}"));
    NodeProcess {
        _child: child,
        addr,
    }
}

async fn three_nodes() {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    sqlx::query("CREATE TABLE rt_gates (name text PRIMARY KEY)")
        .execute(forge.pool())
        .await
        .unwrap();
    let a = spawn_node("gateway", "A", &db.url).await;
    let b = spawn_node("worker", "B", &db.url).await;
    let c = spawn_node("gateway", "C", &db.url).await;
    let (a_url, c_url) = (a.addr.clone().unwrap(), c.addr.clone().unwrap());
    let http = reqwest::Client::new();

    let alice = realtime_support::token("alice", &[]);
    let mut client = Client::connect(&http, &c_url, &alice).await;
    let started: Value = http
        .post(format!("{a_url}/start"))
        .bearer_auth(&alice)
        .json(&json!({"gate": "g"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let job = started["data"]["jobId"].clone();
    let (status, answer) = client.subscribe_job(&http, &c_url, "s", &job).await;
    assert_eq!(status, 200, "{answer}");
    let stream = &mut client.stream;
    let mut progress = answer["data"]["progress"].clone();
    while progress != 1.0 {
        let (_, _, data) = stream.next_event(WAIT, "the job to start on B").await;
        progress = serde_json::from_str::<Value>(&data).unwrap()["state"]["progress"].clone();
    }
    sqlx::query("INSERT INTO rt_gates VALUES ('g')")
        .execute(forge.pool())
        .await
        .unwrap();
    let mut seen = Vec::new();
    loop {
        let (_, _, data) = stream.next_event(WAIT, "job updates on C").await;
        let state = serde_json::from_str::<Value>(&data).unwrap()["state"].clone();
        seen.push(format!(
            "{} {}",
            state["status"].as_str().unwrap(),
            state["progress"]
        ));
        if state["status"] == "completed" {
            assert_eq!(state["output"], "ran on B");
            break;
        }
    }
    assert_eq!(
        seen,
        [
            "running 25.0",
            "running 50.0",
            "running 75.0",
            "running 100.0",
            "completed 100.0"
        ]
    );
    drop((a, b, c));
}
