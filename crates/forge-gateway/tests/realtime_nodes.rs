//! Three real node processes on one database: gateway A where the job and the workflow are
//! started (through the RPC route), worker-only B that runs them, gateway C where the client
//! listens. This file is both the test and the node program it starts: with
//! `FORGE_NODE_ROLE` set it runs a node. Without the standard test harness (a node must be a
//! plain program), it answers the harness's `--list` itself, for `cargo test` and nextest.

mod realtime_support;

use std::process::Stdio;
use std::time::Duration;

use forge::prelude::*;
use forge_gateway::{Gateway, GatewayConfig};
use forge_test_support::{gates, TestDb};
use realtime_support::Client;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(20);
const TEST: &str = "three_nodes";

fn node_name() -> String {
    std::env::var("FORGE_NODE_NAME").unwrap_or_default()
}

/// Reports 1%, waits at `gate`, then reports four steps.
#[forge::job(max_attempts = 1)]
async fn rt_node_job(ctx: &JobContext, gate: String) -> Result<String> {
    ctx.progress(1, "waiting at the gate").await?;
    gates::wait(ctx.db(), &gate).await?;
    for p in [25, 50, 75, 100] {
        ctx.progress(p, format!("at {p}")).await?;
    }
    Ok(format!("ran on {}", node_name()))
}

/// Step `one` waits at `gate`; step `two` tells where it ran.
#[forge::workflow(steps = ["one", "two"])]
async fn rt_node_flow(ctx: &WorkflowContext, gate: String) -> Result<String> {
    ctx.step("one", || async { Ok(gates::wait(ctx.db(), &gate).await?) })
        .await?;
    ctx.step("two", || async { Ok(format!("ran on {}", node_name())) })
        .await
}

fn main() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Ok(role) = std::env::var("FORGE_NODE_ROLE") {
        return rt.block_on(run_node(&role));
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    // Positional arguments are name filters; these flags take a value.
    let with_value = [
        "--format",
        "--test-threads",
        "--logfile",
        "--color",
        "--skip",
        "-Z",
    ];
    let mut filters = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        if with_value.contains(&a.as_str()) {
            i += 1;
        } else if !a.starts_with('-') {
            filters.push(a.as_str());
        }
        i += 1;
    }
    let selected = filters.is_empty()
        || filters.iter().any(|f| {
            if flag("--exact") {
                *f == TEST
            } else {
                TEST.contains(f)
            }
        });
    if flag("--list") {
        if selected && !flag("--ignored") {
            println!("{TEST}: test");
        }
        return;
    }
    if !selected || flag("--ignored") {
        println!("0 passed, 0 failed, 1 filtered out");
        return;
    }
    rt.block_on(three_nodes());
    println!("test {TEST} ... ok\n1 passed, 0 failed");
}

/// A node: `gateway`, `worker` or `gateway+worker`. Prints `LISTENING <addr>` once a gateway
/// serves (`READY` for a worker), and exits when its standard input closes (the test ended or
/// died).
async fn run_node(role: &str) {
    let url = std::env::var("DATABASE_URL").unwrap();
    let forge = Forge::connect(&url).await.unwrap();
    let _worker = if role.contains("worker") {
        Some(forge.start_worker(WorkerConfig::default()).await.unwrap())
    } else {
        None
    };
    if role.contains("gateway") {
        let gateway = Gateway::new(&forge, GatewayConfig::new(realtime_support::SECRET))
            .await
            .unwrap();
        let listener = forge_gateway::bind("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
        println!("LISTENING {}", listener.local_addr().unwrap());
        tokio::spawn(gateway.serve(listener, std::future::pending()));
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

/// `POST /_api/rpc/{function}` on `base`; returns the `data` of the answer.
async fn rpc(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    function: &str,
    args: Value,
) -> Value {
    let res = http
        .post(format!("{base}/_api/rpc/{function}"))
        .bearer_auth(token)
        .json(&args)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    body["data"].clone()
}

/// Reads events of subscription `sub` until `done` holds for one; returns their states.
async fn states_until(client: &mut Client, sub: &str, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut states = Vec::new();
    loop {
        let (_, _, data) = client.stream.next_event(WAIT, "updates on C").await;
        let v: Value = serde_json::from_str(&data).unwrap();
        if v["subscriptionId"] != sub {
            continue;
        }
        let state = v["state"].clone();
        states.push(state.clone());
        if done(&state) {
            return states;
        }
    }
}

async fn three_nodes() {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    gates::create(forge.pool()).await;
    let a = spawn_node("gateway", "A", &db.url).await;
    let b = spawn_node("worker", "B", &db.url).await;
    let c = spawn_node("gateway", "C", &db.url).await;
    let (a_url, c_url) = (a.addr.clone().unwrap(), c.addr.clone().unwrap());
    let http = reqwest::Client::new();
    let alice = realtime_support::token("alice", &[]);
    let mut client = Client::connect(&http, &c_url, &alice).await;

    // A job started on A, run on B, followed on C.
    let started = rpc(&http, &a_url, &alice, "rt_node_job", json!({"gate": "g"})).await;
    let job = started["jobId"].clone();
    let (status, answer) = client.subscribe_job(&http, &c_url, "job", &job).await;
    assert_eq!(status, 200, "{answer}");
    if answer["data"]["progress"] != 1.0 {
        states_until(&mut client, "job", |s| s["progress"] == 1.0).await;
    }
    gates::open(forge.pool(), &["g"]).await;
    let seen: Vec<String> = states_until(&mut client, "job", |s| s["status"] == "completed")
        .await
        .iter()
        .map(|s| format!("{} {}", s["status"].as_str().unwrap(), s["progress"]))
        .collect();
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

    // A workflow, likewise.
    let started = rpc(&http, &a_url, &alice, "rt_node_flow", json!({"gate": "w"})).await;
    let workflow = started["workflowId"].clone();
    let body = json!({
        "sessionId": client.session, "sessionSecret": client.secret,
        "subscriptionId": "flow", "workflowId": workflow,
    });
    let (status, answer) = realtime_support::post(
        &http,
        &format!("{c_url}/_api/subscribe-workflow"),
        &alice,
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let step_one_runs = |s: &Value| s["steps"][0]["status"] == "running";
    if !step_one_runs(&answer["data"]) {
        states_until(&mut client, "flow", step_one_runs).await;
    }
    gates::open(forge.pool(), &["w"]).await;
    let states = states_until(&mut client, "flow", |s| s["status"] == "completed").await;
    let last = states.last().unwrap();
    assert_eq!(last["output"], "ran on B");
    assert_eq!(last["steps"][0]["status"], "completed");
    assert_eq!(last["steps"][1]["status"], "completed");
    drop((a, b, c));
}
