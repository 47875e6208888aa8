//! Query subscriptions over real HTTP and PostgreSQL: results pushed when the tables a query
//! read change, found without any declaration.

mod realtime_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use forge::Forge;
use forge_gateway::auth::Identity;
use forge_gateway::error::ApiError;
use forge_gateway::realtime::{LiveQuery, QueryResolver, Realtime, RealtimeConfig};
use forge_test_support::sse::SseItem;
use forge_test_support::{wait_for, TestDb};
use futures::future::BoxFuture;
use realtime_support::{token, Client};
use serde_json::{json, Value};
use sqlx::PgConnection;

const WAIT: Duration = Duration::from_secs(15);

/// The titles of one owner's todos, read through a view over two tables.
struct Todos {
    owner: String,
    runs: Arc<AtomicUsize>,
}

impl LiveQuery for Todos {
    fn run<'a>(&'a self, conn: &'a mut PgConnection) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async move {
            self.runs.fetch_add(1, Ordering::SeqCst);
            let v: Value = sqlx::query_scalar(
                "SELECT COALESCE(json_agg(title ORDER BY id), '[]') FROM rt_todo_view WHERE owner = $1",
            )
            .bind(&self.owner)
            .fetch_one(conn)
            .await
            .map_err(ApiError::internal)?;
            Ok(v)
        })
    }
}

struct Broken;

impl LiveQuery for Broken {
    fn run<'a>(&'a self, _: &'a mut PgConnection) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async { Err(ApiError::conflict("this query always refuses")) })
    }
}

struct Resolver {
    runs: Arc<AtomicUsize>,
}

impl QueryResolver for Resolver {
    fn resolve(
        &self,
        function: &str,
        args: Value,
        caller: Option<&Identity>,
    ) -> Result<Arc<dyn LiveQuery>, ApiError> {
        match function {
            "todos" => {
                let Some(owner) = args["owner"].as_str() else {
                    return Err(ApiError::invalid_args("owner", "expected a string"));
                };
                if caller.is_none() {
                    return Err(ApiError::unauthenticated("sign in"));
                }
                Ok(Arc::new(Todos {
                    owner: owner.into(),
                    runs: self.runs.clone(),
                }))
            }
            "broken" => Ok(Arc::new(Broken)),
            _ => Err(ApiError::not_found(format!("unknown query `{function}`"))),
        }
    }
}

struct Node {
    _db: TestDb,
    forge: Forge,
    base: String,
    http: reqwest::Client,
    realtime: Realtime,
    runs: Arc<AtomicUsize>,
}

async fn node() -> Node {
    node_with(RealtimeConfig::default()).await
}

async fn node_with(config: RealtimeConfig) -> Node {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE rt_owners (name text PRIMARY KEY, active boolean NOT NULL DEFAULT true);
         CREATE TABLE rt_todos (id serial PRIMARY KEY, owner text NOT NULL REFERENCES rt_owners, title text NOT NULL);
         CREATE VIEW rt_todo_view AS SELECT t.id, o.name AS owner, t.title
             FROM rt_todos t JOIN rt_owners o ON o.name = t.owner WHERE o.active;
         INSERT INTO rt_owners VALUES ('alice'), ('bob');",
    )
    .execute(forge.pool())
    .await
    .unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let realtime = Realtime::start(&forge, config, realtime_support::auth())
        .await
        .unwrap()
        .with_query_resolver(Resolver { runs: runs.clone() });
    let app: axum::Router = realtime.routes();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Node {
        _db: db,
        forge,
        base,
        http: reqwest::Client::new(),
        realtime,
        runs,
    }
}

impl Node {
    async fn subscribe(&self, c: &Client, sub: &str, function: &str, args: Value) -> (u16, Value) {
        let body = json!({"sessionId": c.session, "sessionSecret": c.secret, "subscriptionId": sub, "fn": function, "args": args});
        realtime_support::post(
            &self.http,
            &format!("{}/_api/subscribe", self.base),
            &c.token,
            &body,
        )
        .await
    }

    async fn add(&self, owner: &str, title: &str) {
        sqlx::query("INSERT INTO rt_todos (owner, title) VALUES ($1, $2)")
            .bind(owner)
            .bind(title)
            .execute(self.forge.pool())
            .await
            .unwrap();
    }
}

/// The next `query` event: (subscription id, data or error).
async fn next_query(c: &mut Client) -> (String, Value) {
    let (_, name, data) = c.stream.next_event(WAIT, "a query event").await;
    assert_eq!(name, "query");
    let v: Value = serde_json::from_str(&data).unwrap();
    let payload = if v.get("error").is_some() {
        json!({"error": v["error"]})
    } else {
        v["data"].clone()
    };
    (v["subscriptionId"].as_str().unwrap().to_string(), payload)
}

#[tokio::test]
async fn a_query_result_is_pushed_when_its_data_changes_and_only_then() {
    let n = node().await;
    let mut c = Client::connect(&n.http, &n.base, &token("alice", &[])).await;
    let (status, body) = n
        .subscribe(&c, "q", "todos", json!({"owner": "alice"}))
        .await;
    assert_eq!((status, &body), (200, &json!({"data": []})));

    n.add("alice", "a").await;
    assert_eq!(next_query(&mut c).await, ("q".into(), json!(["a"])));
    // A change of the table that leaves this result as it was pushes nothing...
    n.add("bob", "not alice's").await;
    // ...so the next event is the one of the next real change.
    n.add("alice", "b").await;
    assert_eq!(next_query(&mut c).await, ("q".into(), json!(["a", "b"])));
    // Both tables behind the view were found by themselves: a change of the other one counts.
    sqlx::query("UPDATE rt_owners SET active = false WHERE name = 'alice'")
        .execute(n.forge.pool())
        .await
        .unwrap();
    assert_eq!(next_query(&mut c).await, ("q".into(), json!([])));
}

#[tokio::test]
async fn a_burst_of_changes_is_served_by_few_runs() {
    let n = node().await;
    let mut c = Client::connect(&n.http, &n.base, &token("alice", &[])).await;
    n.subscribe(&c, "q", "todos", json!({"owner": "alice"}))
        .await;
    let before = n.runs.load(Ordering::SeqCst);
    for i in 0..50 {
        // Fifty transactions, each announcing its change.
        sqlx::query("INSERT INTO rt_todos (owner, title) VALUES ('alice', $1)")
            .bind(i.to_string())
            .execute(n.forge.pool())
            .await
            .unwrap();
    }
    let mut last = Value::Null;
    while last.as_array().map(Vec::len) != Some(50) {
        last = next_query(&mut c).await.1;
    }
    let runs = n.runs.load(Ordering::SeqCst) - before;
    assert!(runs < 50, "{runs} runs for 50 changes");
}

#[tokio::test]
async fn subscriptions_to_the_same_query_by_the_same_caller_share_a_run() {
    let n = node().await;
    let alice = token("alice", &[]);
    let mut a1 = Client::connect(&n.http, &n.base, &alice).await;
    let mut a2 = Client::connect(&n.http, &n.base, &alice).await;
    let b = Client::connect(&n.http, &n.base, &token("bob", &[])).await;
    n.subscribe(&a1, "x", "todos", json!({"owner": "alice"}))
        .await;
    n.subscribe(&a2, "y", "todos", json!({"owner": "alice"}))
        .await;
    n.subscribe(&b, "z", "todos", json!({"owner": "alice"}))
        .await;
    assert_eq!(n.realtime.stats().query_groups, 2);
    n.add("alice", "shared").await;
    assert_eq!(next_query(&mut a1).await, ("x".into(), json!(["shared"])));
    assert_eq!(next_query(&mut a2).await, ("y".into(), json!(["shared"])));

    let unsub = json!({"sessionId": a1.session, "sessionSecret": a1.secret, "subscriptionId": "x"});
    realtime_support::post(
        &n.http,
        &format!("{}/_api/unsubscribe", n.base),
        &alice,
        &unsub,
    )
    .await;
    assert_eq!(n.realtime.stats().query_groups, 2);
    drop(a2);
    drop(b);
    wait_for(
        "the groups to end with their last subscription",
        WAIT,
        || async { (n.realtime.stats().query_groups == 0).then_some(()) },
    )
    .await;
    // Nothing more reaches the client that unsubscribed.
    n.add("alice", "after").await;
    assert!(!matches!(
        a1.stream.next_item(Duration::from_millis(300)).await,
        Some((_, SseItem::Event { .. }))
    ));
}

#[tokio::test]
async fn failing_subscriptions_answer_with_the_error_and_leave_nothing_behind() {
    let n = node().await;
    let c = Client::connect(&n.http, &n.base, &token("alice", &[])).await;
    let (status, body) = n.subscribe(&c, "q", "nope", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = n.subscribe(&c, "q", "todos", json!({"owner": 3})).await;
    assert_eq!(
        (status, body["error"]["details"]["field"].as_str()),
        (400, Some("owner"))
    );
    let (status, body) = n.subscribe(&c, "q", "broken", json!({})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (409, Some("conflict"))
    );
    // Asking again runs it again rather than answering from a cached failure.
    let (status, _) = n.subscribe(&c, "q2", "broken", json!({})).await;
    assert_eq!(status, 409);
    let stats = n.realtime.stats();
    assert_eq!((stats.subscriptions, stats.query_groups), (0, 0));
    // Anonymous streams exist (for public queries); this resolver wants a signed-in caller.
    let anon = n
        .http
        .get(format!("{}/_api/events", n.base))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 200);
}

#[tokio::test]
async fn a_new_live_query_over_the_cap_is_refused_until_one_ends() {
    let mut config = RealtimeConfig::default();
    config.max_query_groups = 2;
    let n = node_with(config).await;
    let c = Client::connect(&n.http, &n.base, &token("alice", &[])).await;
    for (sub, owner) in [("a", "alice"), ("b", "bob")] {
        let (status, body) = n
            .subscribe(&c, sub, "todos", json!({ "owner": owner }))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = n
        .subscribe(&c, "c", "todos", json!({"owner": "carol"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "too_many_live_queries", "{body}");
    // A query that already runs for this caller takes no new group: always accepted.
    let (status, body) = n
        .subscribe(&c, "a2", "todos", json!({"owner": "alice"}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(n.realtime.stats().query_groups, 2);

    // Once bob's query has no subscriber left, its group ends and frees a slot.
    let body = json!({"sessionId": c.session, "sessionSecret": c.secret, "subscriptionId": "b"});
    let (status, _) = realtime_support::post(
        &n.http,
        &format!("{}/_api/unsubscribe", n.base),
        &c.token,
        &body,
    )
    .await;
    assert_eq!(status, 200);
    wait_for("bob's query group to end", WAIT, || async {
        (n.realtime.stats().query_groups == 1).then_some(())
    })
    .await;
    let (status, body) = n
        .subscribe(&c, "c", "todos", json!({"owner": "carol"}))
        .await;
    assert_eq!(status, 200, "{body}");
}
