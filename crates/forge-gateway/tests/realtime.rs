//! Job subscriptions over real HTTP and PostgreSQL.

use std::collections::HashMap;
use std::time::Duration;

mod realtime_support;

use forge::prelude::*;
use forge_gateway::realtime::{Follow, Realtime, RealtimeConfig};
use forge_runtime::store::Store;
use forge_test_support::sse::{SseItem, SseParser};
use forge_test_support::{gates, wait_for, TestDb};
use futures::StreamExt;
use realtime_support::{auth, token, token_for, Client, TestRole};
use serde_json::{json, Value};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

const WAIT: Duration = Duration::from_secs(15);

#[forge::job(max_attempts = 1)]
async fn rt_steps(ctx: &JobContext, steps: u32) -> Result<String> {
    for i in 1..=steps {
        ctx.progress(i as f64 * 100.0 / steps as f64, format!("step {i}"))
            .await?;
    }
    Ok(format!("did {steps} steps"))
}

/// Reports 1%, then waits at its gate, then reports
/// `steps` more updates with long messages and returns.
#[forge::job(max_attempts = 1)]
async fn rt_gated(ctx: &JobContext, gate: String, steps: u32) -> Result<String> {
    ctx.progress(1, "waiting at the gate").await?;
    gates::wait(ctx.db(), &gate).await?;
    let filler = "x".repeat(400);
    for i in 1..=steps {
        ctx.progress(
            1.0 + i as f64 * 99.0 / steps as f64,
            format!("{i} {filler}"),
        )
        .await?;
    }
    Ok(format!("{gate} passed"))
}

struct Node {
    _db: TestDb,
    forge: Forge,
    base: String,
    http: reqwest::Client,
    realtime: Realtime,
}

async fn node(config: RealtimeConfig) -> Node {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    gates::create(forge.pool()).await;
    serve(db, forge, config).await
}

async fn serve(db: TestDb, forge: Forge, config: RealtimeConfig) -> Node {
    let (base, realtime) = realtime_support::serve(&forge, config).await;
    Node {
        _db: db,
        forge,
        base,
        http: reqwest::Client::new(),
        realtime,
    }
}

fn config() -> RealtimeConfig {
    let mut c = RealtimeConfig::default();
    c.see_all_role = Some("admin".into());
    c
}

impl Node {
    async fn post(&self, path: &str, token: &str, body: Value) -> (u16, Value) {
        realtime_support::post(&self.http, &format!("{}{path}", self.base), token, &body).await
    }

    async fn client(&self, token: &str) -> Client {
        Client::connect(&self.http, &self.base, token).await
    }

    async fn subscribe(&self, c: &Client, sub: &str, job: impl serde::Serialize) -> (u16, Value) {
        c.subscribe_job(&self.http, &self.base, sub, job).await
    }

    async fn open_gate(&self, gate: &str) {
        gates::open(self.forge.pool(), &[gate]).await;
    }
}

/// Reads job events until subscription `sub` reaches a terminal status; returns every state
/// of `sub` seen, and the subscription ids of all events read.
async fn until_terminal(c: &mut Client, sub: &str) -> (Vec<Value>, Vec<String>) {
    let mut states = Vec::new();
    let mut subs = Vec::new();
    loop {
        let (_, name, data) = c.stream.next_event(WAIT, "job events").await;
        assert_eq!(name, "job", "{data}");
        let v: Value = serde_json::from_str(&data).unwrap();
        let id = v["subscriptionId"].as_str().unwrap().to_string();
        subs.push(id.clone());
        if id == sub {
            let st = v["state"].clone();
            let done = ["completed", "failed", "dead_letter", "cancelled"]
                .contains(&st["status"].as_str().unwrap());
            states.push(st);
            if done {
                return (states, subs);
            }
        }
    }
}

fn summary(states: &[Value]) -> Vec<String> {
    states
        .iter()
        .map(|s| format!("{} {}", s["status"].as_str().unwrap(), s["progress"]))
        .collect()
}

#[tokio::test]
async fn a_subscribed_client_sees_every_status_and_progress_in_order() {
    let n = node(config()).await;
    let mut c = n.client(&token("alice", &[])).await;
    let job = n
        .forge
        .enqueue(rt_steps::request(5).owner("alice"))
        .await
        .unwrap();
    let (status, body) = n.subscribe(&c, "s1", job).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["status"], "pending");
    assert_eq!(body["data"]["jobId"], job.to_string());
    let _worker = n.forge.start_worker(WorkerConfig::default()).await.unwrap();
    let (states, _) = until_terminal(&mut c, "s1").await;
    assert_eq!(
        summary(&states),
        [
            "claimed null",
            "running null",
            "running 20.0",
            "running 40.0",
            "running 60.0",
            "running 80.0",
            "running 100.0",
            "completed 100.0"
        ]
    );
    assert_eq!(states[2]["message"], "step 1");
    assert_eq!(states.last().unwrap()["output"], "did 5 steps");
}

#[tokio::test]
async fn start_and_follow_delivers_even_the_first_update() {
    let n = node(config()).await;
    let _worker = n.forge.start_worker(WorkerConfig::default()).await.unwrap();
    let mut c = n.client(&token("alice", &[])).await;
    let job = rt_steps::request(3)
        .owner("alice")
        .idempotency_key("once")
        .prepare()
        .unwrap();
    let follow = Follow {
        session_id: c.session.parse().unwrap(),
        session_secret: c.secret.clone(),
        subscription_id: "f".into(),
    };
    let alice = auth().verify(&token("alice", &[])).unwrap();
    let guard = n
        .realtime
        .follow_job(Some(&alice), &follow, job.id)
        .await
        .unwrap();
    let ids = n
        .forge
        .store()
        .insert_jobs(std::slice::from_ref(&job))
        .await
        .unwrap();
    assert_eq!(guard.started(ids[0]).await.unwrap(), None);
    let (states, _) = until_terminal(&mut c, "f").await;
    assert_eq!(
        summary(&states),
        [
            "claimed null",
            "running null",
            "running 33.333333333333336",
            "running 66.66666666666667",
            "running 100.0",
            "completed 100.0"
        ]
    );

    // Starting it again with the same idempotency key returns the first job: the follow
    // moves to that one and answers with its state (the new id was never created).
    let again = rt_steps::request(3)
        .owner("alice")
        .idempotency_key("once")
        .prepare()
        .unwrap();
    let follow_again = Follow {
        subscription_id: "again".into(),
        ..follow.clone()
    };
    let guard = n
        .realtime
        .follow_job(Some(&alice), &follow_again, again.id)
        .await
        .unwrap();
    let ids_again = n.forge.store().insert_jobs(&[again]).await.unwrap();
    assert_eq!(ids_again, ids);
    let state = guard.started(ids_again[0]).await.unwrap().unwrap();
    assert_eq!((state.job_id, state.status), (ids[0], JobStatus::Completed));
    assert_eq!(n.realtime.stats().subscriptions, 2);

    // A follow that was never confirmed (the insert failed) leaves no subscription behind.
    let other = uuid::Uuid::now_v7();
    let follow = Follow {
        subscription_id: "g".into(),
        ..follow
    };
    drop(
        n.realtime
            .follow_job(Some(&alice), &follow, other)
            .await
            .unwrap(),
    );
    assert_eq!(n.realtime.stats().subscriptions, 2);
    // Anonymous callers and wrong secrets cannot follow.
    assert!(n.realtime.follow_job(None, &follow, other).await.is_err());
    let bad = Follow {
        session_secret: "nope".into(),
        ..follow.clone()
    };
    let err = n
        .realtime
        .follow_job(Some(&alice), &bad, other)
        .await
        .unwrap_err();
    assert_eq!(err.code, "not_found");
}

#[tokio::test]
async fn only_the_owner_or_a_see_all_role_may_subscribe() {
    let n = node(config()).await;
    let job = n
        .forge
        .enqueue(rt_steps::request(1).owner("alice"))
        .await
        .unwrap();
    let system_job = n.forge.enqueue(rt_steps::request(1)).await.unwrap();
    let bob = n.client(&token("bob", &[])).await;
    let (status, theirs) = n.subscribe(&bob, "x", job).await;
    assert_eq!(status, 200);
    let unknown = uuid::Uuid::now_v7();
    let (_, nothing) = n.subscribe(&bob, "y", unknown).await;
    // Someone else's job and a job that does not exist get the same answer (ids cannot be
    // probed), apart from the id asked about.
    assert_eq!(theirs["data"]["status"], "not_found");
    let mut same = nothing.clone();
    same["data"]["jobId"] = json!(job);
    assert_eq!(theirs, same);
    let (_, ownerless) = n.subscribe(&bob, "z", system_job).await;
    assert_eq!(ownerless["data"]["status"], "not_found");
    assert_eq!(n.realtime.stats().subscriptions, 0);

    let admin = n.client(&token("root", &["admin"])).await;
    let (_, seen) = n.subscribe(&admin, "a", job).await;
    assert_eq!(seen["data"]["status"], "pending");
    let (_, seen) = n.subscribe(&admin, "b", system_job).await;
    assert_eq!(seen["data"]["status"], "pending");

    // A session is usable only with its secret, and only by its user.
    let alice = n.client(&token("alice", &[])).await;
    let (status, body) = n
        .post("/_api/subscribe-job", &token("bob", &[]), json!({"sessionId": alice.session, "sessionSecret": alice.secret, "subscriptionId": "s", "jobId": job}))
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    assert_eq!(body["error"]["details"]["field"], "sessionId");
    let (status, _) = n
        .post("/_api/subscribe-job", &alice.token, json!({"sessionId": alice.session, "sessionSecret": "0".repeat(64), "subscriptionId": "s", "jobId": job}))
        .await;
    assert_eq!(status, 404);
    let (status, body) = n.subscribe(&alice, "s", job).await;
    assert_eq!(
        (status, body["data"]["status"].as_str()),
        (200, Some("pending"))
    );
}

#[tokio::test]
async fn bad_subscription_calls_name_the_field() {
    let n = node(config()).await;
    let c = n.client(&token("alice", &[])).await;
    let (status, body) = n
        .post(
            "/_api/subscribe-job",
            &c.token,
            json!({"sessionId": c.session, "sessionSecret": c.secret, "subscriptionId": "s"}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_args"))
    );
    assert_eq!(body["error"]["details"]["field"], "jobId");
    let (status, body) = n.post("/_api/subscribe-job", &c.token, json!({"sessionId": "nope", "sessionSecret": c.secret, "subscriptionId": "s", "jobId": uuid::Uuid::nil()})).await;
    assert_eq!(
        (status, body["error"]["details"]["field"].as_str()),
        (400, Some("sessionId"))
    );
    let (status, body) = n.subscribe(&c, "", uuid::Uuid::nil()).await;
    assert_eq!(
        (status, body["error"]["details"]["field"].as_str()),
        (400, Some("subscriptionId"))
    );
}

#[tokio::test]
async fn unsubscribe_stops_one_subscription() {
    let n = node(config()).await;
    let mut c = n.client(&token("alice", &[])).await;
    let job = n
        .forge
        .enqueue(rt_steps::request(4).owner("alice"))
        .await
        .unwrap();
    n.subscribe(&c, "stay", job).await;
    n.subscribe(&c, "leave", job).await;
    let body =
        json!({"sessionId": c.session, "sessionSecret": c.secret, "subscriptionId": "leave"});
    assert_eq!(
        n.post("/_api/unsubscribe", &c.token, body.clone()).await,
        (200, json!({"data": true}))
    );
    assert_eq!(
        n.post("/_api/unsubscribe", &c.token, body).await,
        (200, json!({"data": false}))
    );
    let _worker = n.forge.start_worker(WorkerConfig::default()).await.unwrap();
    let (states, subs) = until_terminal(&mut c, "stay").await;
    assert_eq!(states.len(), 7);
    assert!(subs.iter().all(|s| s == "stay"), "{subs:?}");
}

#[tokio::test]
async fn a_session_and_its_subscriptions_end_with_its_stream() {
    let mut cfg = config();
    cfg.keep_alive = Duration::from_millis(100);
    let n = node(cfg).await;
    let job = n
        .forge
        .enqueue(rt_steps::request(1).owner("alice"))
        .await
        .unwrap();
    let alice = token("alice", &[]);
    let mut c = n.client(&alice).await;
    n.subscribe(&c, "s", job).await;
    // Keep-alive comments arrive on an idle stream.
    let (_, item) = c.stream.next_item(WAIT).await.unwrap();
    assert_eq!(item, SseItem::Comment("ping".into()));
    assert_eq!(
        (
            n.realtime.stats().sessions,
            n.realtime.stats().subscriptions
        ),
        (1, 1)
    );
    let (session, secret) = (c.session.clone(), c.secret.clone());
    drop(c);
    wait_for("the session to be removed", WAIT, || async {
        let s = n.realtime.stats();
        (s.sessions == 0 && s.subscriptions == 0).then_some(())
    })
    .await;
    let (status, _) = n
        .post("/_api/subscribe-job", &alice, json!({"sessionId": session, "sessionSecret": secret, "subscriptionId": "s", "jobId": job}))
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn a_slow_client_is_coalesced_to_the_latest_state_and_loses_no_final_state() {
    const SUBS: usize = 50;
    let mut cfg = config();
    cfg.outbox_soft_limit = 8;
    cfg.outbox_hard_limit = 32;
    let n = node(cfg).await;
    let job = n
        .forge
        .enqueue(rt_gated::request("slow".into(), 300).owner("alice"))
        .await
        .unwrap();
    // A client that reads its session event and then nothing for a while.
    let alice = token("alice", &[]);
    let res = n
        .http
        .get(format!("{}/_api/events?token={alice}", n.base))
        .send()
        .await
        .unwrap();
    let mut body = res.bytes_stream();
    let mut parser = SseParser::default();
    let mut items = Vec::new();
    while items.is_empty() {
        parser.feed(&body.next().await.unwrap().unwrap(), &mut items);
    }
    let SseItem::Event { data, .. } = items.remove(0) else {
        panic!("no session event")
    };
    let v: Value = serde_json::from_str(&data).unwrap();
    // A second stream lends its reader; the subscriptions go to the slow session.
    let c = Client {
        session: v["sessionId"].as_str().unwrap().into(),
        secret: v["sessionSecret"].as_str().unwrap().into(),
        ..n.client(&alice).await
    };
    for i in 0..SUBS {
        assert_eq!(n.subscribe(&c, &format!("s{i}"), job).await.0, 200);
    }
    let _worker = n.forge.start_worker(WorkerConfig::default()).await.unwrap();
    n.open_gate("slow").await;
    wait_for("the job to complete", Duration::from_secs(60), || async {
        let row = n.forge.job(job).await.unwrap().unwrap();
        (row.status == JobStatus::Completed).then_some(())
    })
    .await;
    let stats = wait_for("the completions to be queued", WAIT, || async {
        let s = n.realtime.stats();
        (s.coalesced_events > 0).then_some(s)
    })
    .await;
    assert!(stats.max_queued_events <= 32 + SUBS, "{stats:?}");

    // Now it reads: every subscription ends on the completed state, in order.
    let mut last: HashMap<String, Value> = HashMap::new();
    let mut done = 0;
    while done < SUBS {
        let chunk = tokio::time::timeout(WAIT, body.next())
            .await
            .expect("events")
            .unwrap()
            .unwrap();
        parser.feed(&chunk, &mut items);
        for item in items.drain(..) {
            let SseItem::Event { data, .. } = item else {
                continue;
            };
            let v: Value = serde_json::from_str(&data).unwrap();
            let sub = v["subscriptionId"].as_str().unwrap().to_string();
            let st = v["state"].clone();
            if let Some(prev) = last.get(&sub) {
                assert_ne!(
                    prev["status"], "completed",
                    "an event after the terminal one"
                );
                assert!(
                    st["progress"].as_f64() >= prev["progress"].as_f64(),
                    "progress went back: {prev} then {st}"
                );
            }
            if st["status"] == "completed" {
                assert_eq!(st["output"], "slow passed");
                done += 1;
            }
            last.insert(sub, st);
        }
    }
    assert_eq!(last.len(), SUBS);
}

#[tokio::test]
async fn a_lost_listen_connection_is_recovered_without_losing_the_terminal_state() {
    // The worker is a node of its own; the gateway node logs in as a role of its own, so that
    // its LISTEN connection can be kept from coming back while the job finishes.
    let db = TestDb::new().await;
    let worker_node = Forge::connect(&db.url).await.unwrap();
    gates::create(worker_node.pool()).await;
    let test_role = TestRole::new(worker_node.pool()).await;
    let role = test_role.0.clone();
    let options: PgConnectOptions = db.url.parse().unwrap();
    let pool = PgPoolOptions::new()
        .connect_with(options.username(&role))
        .await
        .unwrap();
    let gateway = Forge::from_store(Store::new(pool));
    let n = serve(db, gateway, config()).await;

    let _worker = worker_node
        .start_worker(WorkerConfig::default())
        .await
        .unwrap();
    let mut c = n.client(&token("alice", &[])).await;
    let job = worker_node
        .enqueue(rt_gated::request("gap".into(), 3).owner("alice"))
        .await
        .unwrap();
    let (_, answer) = n.subscribe(&c, "s", job).await;
    // The job is running and waits at its gate.
    let mut progress = answer["data"]["progress"].clone();
    while progress != 1.0 {
        let (_, _, data) = c.stream.next_event(WAIT, "the job to start").await;
        let v: Value = serde_json::from_str(&data).unwrap();
        progress = v["state"]["progress"].clone();
    }
    let admin = worker_node.pool();
    sqlx::query(&format!("ALTER ROLE {role} NOLOGIN"))
        .execute(admin)
        .await
        .unwrap();
    realtime_support::cut_off(admin, &role).await;
    // The job finishes while the gateway node cannot hear about it.
    gates::open(admin, &["gap"]).await;
    wait_for("the job to complete", WAIT, || async {
        let row = worker_node.job(job).await.unwrap().unwrap();
        (row.status == JobStatus::Completed).then_some(())
    })
    .await;
    sqlx::query(&format!("ALTER ROLE {role} LOGIN"))
        .execute(admin)
        .await
        .unwrap();
    let (states, _) = until_terminal(&mut c, "s").await;
    let last = states.last().unwrap();
    assert_eq!(last["status"], "completed");
    assert_eq!(last["output"], "gap passed");
    assert_eq!(last["progress"], 100.0);
    drop(c);
    drop(n);
    drop(worker_node);
}

#[tokio::test]
async fn the_stream_ends_when_its_token_expires_and_bad_tokens_are_refused() {
    let n = node(config()).await;
    let mut c = n
        .client(&token_for("alice", &[], Duration::from_secs(2)))
        .await;
    assert!(!c.stream.ended_within(Duration::from_millis(500)).await);
    assert!(c.stream.ended_within(WAIT).await);
    wait_for("the session to be removed", WAIT, || async {
        (n.realtime.stats().sessions == 0).then_some(())
    })
    .await;

    let url = format!("{}/_api/events?token=not-a-token", n.base);
    let res = n.http.get(url).send().await.unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthenticated");
    // The header works as well as the query parameter.
    let res = n
        .http
        .get(format!("{}/_api/events", n.base))
        .bearer_auth(token("alice", &[]))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
}

/// Subscribing while a job reports progress as fast as it can: after each subscribe answer
/// come exactly the steps that followed it, none missed, none repeated, none older.
#[tokio::test]
async fn subscribing_mid_flight_loses_and_repeats_nothing() {
    let n = node(config()).await;
    let mut c = n.client(&token("alice", &[])).await;
    let job = n
        .forge
        .enqueue(rt_steps::request(200).owner("alice"))
        .await
        .unwrap();
    n.subscribe(&c, "s0", job).await;
    let _worker = n.forge.start_worker(WorkerConfig::default()).await.unwrap();
    // subscription -> the progress it must see next (None: it has not answered yet).
    let mut next: HashMap<String, f64> = HashMap::from([("s0".to_string(), 0.5)]);
    let mut done = Vec::new();
    let mut subscribed = 1;
    while done.len() < next.len() {
        let (_, _, data) = c.stream.next_event(WAIT, "job events").await;
        let v: Value = serde_json::from_str(&data).unwrap();
        let sub = v["subscriptionId"].as_str().unwrap().to_string();
        let st = &v["state"];
        let expected = next[&sub];
        match st["status"].as_str().unwrap() {
            "claimed" | "running" if st["progress"].is_null() => {}
            "running" => {
                assert_eq!(st["progress"].as_f64(), Some(expected), "{sub}: {st}");
                next.insert(sub.clone(), expected + 0.5);
            }
            "completed" => {
                assert_eq!(expected, 100.5, "{sub} ended early: {st}");
                done.push(sub.clone());
            }
            other => panic!("unexpected status {other}"),
        }
        // Every 40 steps seen on s0, another subscription joins mid-flight.
        if sub == "s0" && subscribed < 5 && expected >= subscribed as f64 * 20.0 {
            let name = format!("s{subscribed}");
            let (_, answer) = n.subscribe(&c, &name, job).await;
            let st = &answer["data"];
            let from = match st["progress"].as_f64() {
                _ if st["status"] == "completed" => {
                    done.push(name.clone());
                    100.5
                }
                Some(p) => p + 0.5,
                None => 0.5,
            };
            next.insert(name, from);
            subscribed += 1;
        }
    }
    assert_eq!(subscribed, 5);
}
