//! Workflow subscriptions over real HTTP and PostgreSQL, through the whole gateway: started
//! and followed in one RPC call, subscribed with `/_api/subscribe-workflow`, moved on by an
//! event a mutation sends.

use std::time::Duration;

mod realtime_support;

use forge::prelude::*;
use forge_gateway::{Gateway, GatewayConfig};
use forge_runtime::store::Store;
use forge_test_support::{gates, wait_for, TestDb};
use realtime_support::{token, Client, TestRole};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(15);

/// Three declared steps; `a` and `b` wait at their gates (`<gate>-a`, `<gate>-b`).
#[forge::workflow(steps = ["a", "b", "c"])]
async fn rtw_steps(ctx: &WorkflowContext, gate: String) -> Result<u32> {
    let db = ctx.db();
    let (gate_a, gate_b) = (format!("{gate}-a"), format!("{gate}-b"));
    ctx.step("a", || async { Ok(gates::wait(db, &gate_a).await?) })
        .await?;
    ctx.step("b", || async { Ok(gates::wait(db, &gate_b).await?) })
        .await?;
    ctx.step("c", || async { Ok(3u32) }).await
}

/// Waits for the event `approve`, then returns who approved.
#[forge::workflow(steps = ["approve", "finish"])]
async fn rtw_approval(ctx: &WorkflowContext) -> Result<String> {
    let by: String = ctx
        .wait_for_event("approve", Duration::from_secs(600))
        .await?;
    ctx.step("finish", || async move { Ok(format!("approved by {by}")) })
        .await
}

/// Sends the event `approve` to a workflow, in the mutation's transaction.
#[forge::mutation]
async fn rtw_approve(ctx: &MutationContext, workflow_id: Uuid, by: String) -> Result<()> {
    ctx.send_workflow_event(workflow_id, "approve", json!(by))
        .await
        .map_err(Error::msg)
}

/// `reserve` completes (its compensation waits at gate `<gate>-undo`), `charge` fails for
/// good, `ship` is never reached.
#[forge::workflow(steps = ["reserve", "charge", "ship"])]
async fn rtw_saga(ctx: &WorkflowContext, gate: String) -> Result<()> {
    let db = ctx.db().clone();
    let undo_gate = format!("{gate}-undo");
    ctx.step("reserve", || async { Ok(1u32) })
        .compensate(move |_: u32| {
            let (db, gate) = (db.clone(), undo_gate.clone());
            async move { Ok(gates::wait(&db, &gate).await?) }
        })
        .await?;
    ctx.step("charge", || async {
        Err::<(), _>(Error::fatal("card declined"))
    })
    .await?;
    ctx.step("ship", || async { Ok(()) }).await
}

/// Twenty steps with long names: its state is too large for a notification. The first step
/// waits at `gate`.
#[forge::workflow]
async fn rtw_long(ctx: &WorkflowContext, gate: String) -> Result<usize> {
    let db = ctx.db();
    for i in 0..20 {
        let name = format!("{i:02}-{}", "x".repeat(200));
        ctx.step(name, || async {
            if i == 0 {
                gates::wait(db, &gate).await?;
            }
            Ok(())
        })
        .await?;
    }
    Ok(20)
}

struct Node {
    _db: TestDb,
    forge: Forge,
    base: String,
    http: reqwest::Client,
    gateway: forge_gateway::realtime::Realtime,
}

fn worker_config() -> WorkerConfig {
    WorkerConfig {
        poll_interval: Duration::from_millis(50),
        ..WorkerConfig::default()
    }
}

/// A gateway on `forge` (jobs and workflows run by `worker`, another node or the same).
async fn serve(db: TestDb, forge: Forge) -> Node {
    let mut config = GatewayConfig::new(realtime_support::SECRET);
    config.realtime.see_all_role = Some("admin".into());
    let gateway = Gateway::new(&forge, config).await.unwrap();
    let realtime = gateway.realtime().clone();
    let listener = forge_gateway::bind("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gateway.serve(listener, std::future::pending()));
    Node {
        _db: db,
        forge,
        base,
        http: reqwest::Client::new(),
        gateway: realtime,
    }
}

async fn database() -> (TestDb, Forge) {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    gates::create(forge.pool()).await;
    (db, forge)
}

async fn node() -> Node {
    let (db, forge) = database().await;
    serve(db, forge).await
}

impl Node {
    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        realtime_support::post(&self.http, &format!("{}{path}", self.base), token, &body).await
    }

    async fn client(&self, token: &str) -> Client {
        Client::connect(&self.http, &self.base, token).await
    }

    /// Starts `function` through `POST /_api/rpc`, followed as `sub` on `c`'s stream.
    async fn start_following(&self, c: &Client, sub: &str, function: &str, args: Value) -> Value {
        let follow = json!({
            "sessionId": c.session, "sessionSecret": c.secret, "subscriptionId": sub,
        });
        let (status, body) = self
            .post(
                "/_api/rpc",
                &c.token,
                json!({ "fn": function, "args": args, "follow": follow }),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["data"].clone()
    }

    async fn subscribe(&self, c: &Client, sub: &str, workflow: impl serde::Serialize) -> Value {
        let body = json!({
            "sessionId": c.session, "sessionSecret": c.secret,
            "subscriptionId": sub, "workflowId": workflow,
        });
        let (status, body) = self.post("/_api/subscribe-workflow", &c.token, body).await;
        assert_eq!(status, 200, "{body}");
        body["data"].clone()
    }

    async fn open_gate(&self, gate: &str) {
        gates::open(self.forge.pool(), &[gate]).await;
    }
}

fn is_terminal(state: &Value) -> bool {
    ["completed", "compensated", "failed"].contains(&state["status"].as_str().unwrap())
}

/// Reads workflow events until subscription `sub` has a state for which `done` holds;
/// returns every state of `sub` seen, and the subscription ids of all events read.
async fn states_until(
    c: &mut Client,
    sub: &str,
    done: impl Fn(&Value) -> bool,
) -> (Vec<Value>, Vec<String>) {
    let mut states = Vec::new();
    let mut subs = Vec::new();
    loop {
        let (_, name, data) = c.stream.next_event(WAIT, "workflow events").await;
        assert_eq!(name, "workflow", "{data}");
        let v: Value = serde_json::from_str(&data).unwrap();
        let id = v["subscriptionId"].as_str().unwrap().to_string();
        subs.push(id.clone());
        if id == sub {
            let state = v["state"].clone();
            if let Some(prev) = states.last() {
                assert!(
                    !is_terminal(prev),
                    "an event after the terminal one: {state}"
                );
            }
            states.push(state.clone());
            if done(&state) {
                return (states, subs);
            }
        }
    }
}

/// A state in short: `status step waitingFor [name:status ...]`.
fn brief(s: &Value) -> String {
    let steps: Vec<String> = s["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|st| {
            format!(
                "{}:{}",
                st["name"].as_str().unwrap(),
                st["status"].as_str().unwrap()
            )
        })
        .collect();
    format!(
        "{} {} {} [{}]",
        s["status"].as_str().unwrap(),
        s["step"].as_str().unwrap_or("-"),
        s["waitingFor"].as_str().unwrap_or("-"),
        steps.join(" ")
    )
}

/// The states of workflow `id` published on `forge_workflow_updates`, in order, until a
/// terminal one: what a subscriber must see.
async fn published_until_terminal(listener: &mut PgListener, id: Uuid) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let n = tokio::time::timeout(WAIT, listener.recv())
            .await
            .expect("workflow updates")
            .unwrap();
        let updates: Vec<Value> = serde_json::from_str(n.payload()).unwrap();
        for u in updates {
            if u["workflow_id"] == json!(id) {
                let state = &u["state"];
                out.push(brief(state));
                if is_terminal(state) {
                    return out;
                }
            }
        }
    }
}

#[tokio::test]
async fn a_workflow_followed_from_its_start_shows_every_step_change_in_order() {
    let n = node().await;
    let mut listener = PgListener::connect_with(n.forge.pool()).await.unwrap();
    listener.listen("forge_workflow_updates").await.unwrap();
    let _worker = n.forge.start_worker(worker_config()).await.unwrap();
    let mut c = n.client(&token("alice", &[])).await;
    let started = n
        .start_following(&c, "f", "rtw_steps", json!({ "gate": "g" }))
        .await;
    let id: Uuid = started["workflowId"].as_str().unwrap().parse().unwrap();
    // A fast worker may already have started step a when the answer's state is read; it is
    // checked against what was published once the run is over.
    let answered = brief(&started["state"]);
    let (_, _) = states_until(&mut c, "f", |s| s["steps"][0]["status"] == "running").await;
    n.open_gate("g-a").await;
    let (_, _) = states_until(&mut c, "f", |s| s["steps"][1]["status"] == "running").await;
    n.open_gate("g-b").await;
    let (last, _) = states_until(&mut c, "f", is_terminal).await;
    let last = last.last().unwrap().clone();
    assert_eq!(last["output"], 3);
    assert_eq!(
        brief(&last),
        "completed c - [a:completed b:completed c:completed]"
    );

    // The stream carried exactly what was published, from the very first update on: a second
    // run, read whole from the stream, against the notifications.
    let second = n
        .start_following(&c, "g", "rtw_steps", json!({ "gate": "h" }))
        .await;
    let id2: Uuid = second["workflowId"].as_str().unwrap().parse().unwrap();
    assert_ne!(id, id2);
    n.open_gate("h-a").await;
    n.open_gate("h-b").await;
    let (states, _) = states_until(&mut c, "g", is_terminal).await;
    let seen: Vec<String> = states.iter().map(brief).collect();
    // Skip the first run's updates still queued on the listener.
    let mut published = published_until_terminal(&mut listener, id).await;
    assert_eq!(
        published.last().map(String::as_str),
        Some(brief(&last).as_str())
    );
    // The start answered with one of the states published before step a ended, the first
    // of which is `created`.
    assert_eq!(published[0], "created - - [a:pending b:pending c:pending]");
    let a_ended = published
        .iter()
        .position(|s| s.contains("a:completed"))
        .unwrap();
    assert!(
        published[..a_ended].contains(&answered),
        "answered {answered}, published {published:?}"
    );
    published = published_until_terminal(&mut listener, id2).await;
    assert_eq!(seen, published);
    assert_eq!(seen[0], "created - - [a:pending b:pending c:pending]");
    for (i, step) in ["a", "b", "c"].iter().enumerate() {
        // Each step goes pending -> running -> completed, never back.
        let statuses: Vec<&str> = states
            .iter()
            .map(|s| s["steps"][i]["status"].as_str().unwrap())
            .collect();
        let rank = |s: &str| {
            ["pending", "running", "completed"]
                .iter()
                .position(|x| *x == s)
        };
        assert!(
            statuses.windows(2).all(|w| rank(w[0]) <= rank(w[1])),
            "step {step}: {statuses:?}"
        );
        assert!(statuses.contains(&"completed"), "step {step}: {statuses:?}");
    }
}

#[tokio::test]
async fn a_waiting_workflow_shows_what_it_waits_for_and_an_event_from_a_mutation_moves_it_on() {
    let n = node().await;
    let _worker = n.forge.start_worker(worker_config()).await.unwrap();
    let mut c = n.client(&token("alice", &[])).await;
    let started = n.start_following(&c, "w", "rtw_approval", json!({})).await;
    let id = started["workflowId"].clone();
    let (states, _) = states_until(&mut c, "w", |s| s["status"] == "waiting").await;
    assert_eq!(
        brief(states.last().unwrap()),
        "waiting approve event:approve [approve:running finish:pending]"
    );
    let (status, body) = n
        .post(
            "/_api/rpc/rtw_approve",
            &c.token,
            json!({ "workflowId": id, "by": "bob" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (states, _) = states_until(&mut c, "w", is_terminal).await;
    let last = states.last().unwrap();
    assert_eq!(last["output"], "approved by bob");
    assert_eq!(
        brief(last),
        "completed finish - [approve:completed finish:completed]"
    );
    assert!(
        states.iter().all(|s| s["waitingFor"].is_null()),
        "the wait is over: {states:?}"
    );
}

#[tokio::test]
async fn compensation_is_visible_step_by_step() {
    let n = node().await;
    let _worker = n.forge.start_worker(worker_config()).await.unwrap();
    let mut c = n.client(&token("alice", &[])).await;
    let started = n
        .start_following(&c, "s", "rtw_saga", json!({ "gate": "k" }))
        .await;
    // The compensation of `reserve` holds the workflow in `compensating`.
    let (states, _) = states_until(&mut c, "s", |s| {
        s["status"] == "compensating" && s["steps"][1]["status"] == "failed"
    })
    .await;
    let compensating = states.last().unwrap();
    assert_eq!(compensating["steps"][0]["status"], "completed");
    assert_eq!(compensating["steps"][1]["status"], "failed");
    assert_eq!(compensating["steps"][1]["error"], "card declined");
    assert_eq!(compensating["error"], "card declined");
    n.open_gate("k-undo").await;
    let (states, _) = states_until(&mut c, "s", is_terminal).await;
    let last = states.last().unwrap();
    assert_eq!(last["status"], "compensated");
    assert!(
        brief(last).ends_with("[reserve:compensated charge:failed ship:skipped]"),
        "{last}"
    );
    assert_eq!(last["error"], "card declined");
    assert!(last["output"].is_null());
    // A late subscriber gets the same final state as its answer.
    let answer = n.subscribe(&c, "late", &started["workflowId"]).await;
    assert_eq!(&answer, last);
}

#[tokio::test]
async fn only_the_owner_or_a_see_all_role_may_subscribe_to_a_workflow() {
    let n = node().await;
    let alice = n.client(&token("alice", &[])).await;
    let started = n
        .start_following(&alice, "mine", "rtw_steps", json!({ "gate": "x" }))
        .await;
    let id = started["workflowId"].clone();
    let ownerless = n
        .forge
        .start_workflow(rtw_steps::request("y".into()))
        .await
        .unwrap();
    let bob = n.client(&token("bob", &[])).await;
    let theirs = n.subscribe(&bob, "x", &id).await;
    let unknown = n.subscribe(&bob, "y", Uuid::now_v7()).await;
    // Someone else's workflow and one that does not exist get the same answer, apart from
    // the id asked about.
    assert_eq!(theirs["status"], "not_found");
    let mut same = unknown.clone();
    same["workflowId"] = id.clone();
    assert_eq!(theirs, same);
    assert_eq!(
        n.subscribe(&bob, "z", ownerless).await["status"],
        "not_found"
    );
    let stats = n.gateway.stats();
    // Alice's follow is the only subscription left.
    assert_eq!(stats.subscriptions, 1, "{stats:?}");

    let admin = n.client(&token("root", &["admin"])).await;
    assert_eq!(n.subscribe(&admin, "a", &id).await["status"], "created");
    assert_eq!(
        n.subscribe(&admin, "b", ownerless).await["status"],
        "created"
    );
    // A session is usable only with its secret and by its user; following needs a user.
    let (status, body) = n
        .post(
            "/_api/subscribe-workflow",
            &bob.token,
            json!({"sessionId": alice.session, "sessionSecret": alice.secret,
                   "subscriptionId": "s", "workflowId": id}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["details"]["field"].as_str()),
        (404, Some("sessionId"))
    );
    let (status, body) = n
        .post(
            "/_api/subscribe-workflow",
            &alice.token,
            json!({"sessionId": alice.session, "sessionSecret": alice.secret,
                   "subscriptionId": "s"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["details"]["field"].as_str()),
        (400, Some("workflowId"))
    );
}

#[tokio::test]
async fn unsubscribe_stops_the_updates_of_one_workflow_subscription() {
    let n = node().await;
    let mut c = n.client(&token("alice", &[])).await;
    let started = n
        .start_following(&c, "stay", "rtw_steps", json!({ "gate": "u" }))
        .await;
    let id = started["workflowId"].clone();
    n.subscribe(&c, "leave", &id).await;
    let body =
        json!({"sessionId": c.session, "sessionSecret": c.secret, "subscriptionId": "leave"});
    assert_eq!(
        n.post("/_api/unsubscribe", &c.token, body).await,
        (200, json!({"data": true}))
    );
    let _worker = n.forge.start_worker(worker_config()).await.unwrap();
    n.open_gate("u-a").await;
    n.open_gate("u-b").await;
    let (states, subs) = states_until(&mut c, "stay", is_terminal).await;
    assert_eq!(states.last().unwrap()["status"], "completed");
    assert!(subs.iter().all(|s| s == "stay"), "{subs:?}");
    assert_eq!(n.gateway.stats().subscriptions, 1);
}

#[tokio::test]
async fn a_lost_listen_connection_is_recovered_by_reading_the_workflow_again() {
    // As for jobs: the worker is a node of its own, the gateway node logs in as a role of its
    // own, whose LISTEN connection is kept from coming back while the workflow finishes.
    let (db, worker_node) = database().await;
    let test_role = TestRole::new(worker_node.pool()).await;
    let role = test_role.0.clone();
    let options: PgConnectOptions = db.url.parse().unwrap();
    let pool = PgPoolOptions::new()
        .connect_with(options.username(&role))
        .await
        .unwrap();
    let n = serve(db, Forge::from_store(Store::new(pool))).await;
    let _worker = worker_node.start_worker(worker_config()).await.unwrap();
    let mut c = n.client(&token("alice", &[])).await;
    n.start_following(&c, "l", "rtw_steps", json!({ "gate": "gap" }))
        .await;
    states_until(&mut c, "l", |s| s["steps"][0]["status"] == "running").await;

    let admin = worker_node.pool();
    sqlx::query(&format!("ALTER ROLE {role} NOLOGIN"))
        .execute(admin)
        .await
        .unwrap();
    realtime_support::cut_off(admin, &role).await;
    // The workflow finishes while the gateway node cannot hear about it.
    gates::open(admin, &["gap-a", "gap-b"]).await;
    let id = wait_for("the workflow to complete", WAIT, || async {
        let done: Option<Uuid> =
            sqlx::query_scalar("SELECT id FROM forge.workflows WHERE status = 'completed'")
                .fetch_optional(admin)
                .await
                .unwrap();
        done
    })
    .await;
    sqlx::query(&format!("ALTER ROLE {role} LOGIN"))
        .execute(admin)
        .await
        .unwrap();
    let (states, _) = states_until(&mut c, "l", is_terminal).await;
    let last = states.last().unwrap();
    assert_eq!(last["workflowId"], json!(id));
    assert_eq!(last["output"], 3);
    assert_eq!(
        brief(last),
        "completed c - [a:completed b:completed c:completed]"
    );
    drop(c);
    drop(n);
    drop(worker_node);
}

#[tokio::test]
async fn a_state_too_large_for_its_notification_is_read_from_the_table() {
    let n = node().await;
    let mut listener = PgListener::connect_with(n.forge.pool()).await.unwrap();
    listener.listen("forge_workflow_updates").await.unwrap();
    let _worker = n.forge.start_worker(worker_config()).await.unwrap();
    let mut c = n.client(&token("alice", &[])).await;
    let started = n
        .start_following(&c, "big", "rtw_long", json!({ "gate": "big" }))
        .await;
    let id: Uuid = started["workflowId"].as_str().unwrap().parse().unwrap();
    states_until(&mut c, "big", |s| s["steps"][0]["status"] == "running").await;
    n.open_gate("big").await;
    let (states, _) = states_until(&mut c, "big", is_terminal).await;
    let last = states.last().unwrap();
    assert_eq!(last["output"], 20);
    let steps = last["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 20);
    assert!(steps.iter().all(|s| s["status"] == "completed"), "{last}");
    assert!(steps[19]["name"].as_str().unwrap().starts_with("19-xxx"));
    // Every pushed state is whole, and the steps only move forward.
    for pair in states.windows(2) {
        let done = |s: &Value| {
            s["steps"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|st| st["status"] == "completed")
                .count()
        };
        assert!(done(&pair[0]) <= done(&pair[1]));
    }
    // The notifications stayed below NOTIFY's limit by leaving the state out.
    let mut without_state = 0;
    loop {
        let n = tokio::time::timeout(WAIT, listener.recv())
            .await
            .expect("workflow updates")
            .unwrap();
        assert!(n.payload().len() < 8000);
        let updates: Vec<Value> = serde_json::from_str(n.payload()).unwrap();
        let mine = updates.iter().find(|u| u["workflow_id"] == json!(id));
        if let Some(u) = mine {
            if u["state"].is_null() {
                without_state += 1;
            }
            if u["status"] == "completed" {
                break;
            }
        }
    }
    assert!(without_state > 0);
}
