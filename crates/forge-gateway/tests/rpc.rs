//! The RPC gateway over real HTTP against a real server and PostgreSQL: each route, each error
//! status, batches, transactions, the auth matrix, jobs started through RPC.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use forge::prelude::*;
use forge_gateway::{Gateway, GatewayConfig};
use forge_test_support::{wait_for, TestDb};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

const SECRET: &[u8] = b"rpc-test-secret-rpc-test-secret-0";

// ---- The functions under test -------------------------------------------------------------

/// `text`, `times` times.
#[forge::query(public)]
async fn rpc_echo(_ctx: &QueryContext, text: String, times: u32) -> Result<String> {
    Ok(text.repeat(times as usize))
}

#[forge::query(public)]
async fn rpc_nothing(_ctx: &QueryContext) -> Result<u32> {
    Ok(7)
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Me {
    user_id: Option<String>,
    roles: Vec<String>,
}

/// Authenticated (the default).
#[forge::query]
async fn rpc_me(ctx: &QueryContext) -> Result<Me> {
    Ok(Me {
        user_id: ctx.user().map(|u| u.id.clone()),
        roles: ctx.user().map(|u| u.roles.clone()).unwrap_or_default(),
    })
}

#[forge::query(role = "admin")]
async fn rpc_admin(_ctx: &QueryContext) -> Result<String> {
    Ok("secret".into())
}

#[forge::query(public)]
async fn rpc_titles(ctx: &QueryContext) -> Result<Vec<String>> {
    let mut db = ctx.db().await?;
    Ok(
        sqlx::query_scalar("SELECT title FROM rpc_todos ORDER BY id")
            .fetch_all(&mut *db)
            .await?,
    )
}

/// Holds a connection for `ms` milliseconds, as a slow query does.
#[forge::query(public)]
async fn rpc_slow(ctx: &QueryContext, ms: u32) -> Result<u32> {
    let mut db = ctx.db().await?;
    sqlx::query("SELECT pg_sleep($1::float8 / 1000)")
        .bind(ms as f64)
        .execute(&mut *db)
        .await?;
    Ok(ms)
}

#[forge::query(public, timeout = "200ms")]
async fn rpc_too_slow(_ctx: &QueryContext) -> Result<()> {
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok(())
}

#[forge::query(public)]
async fn rpc_broken(ctx: &QueryContext) -> Result<i32> {
    let mut db = ctx.db().await?;
    Ok(
        sqlx::query_scalar("SELECT count(*)::int4 FROM no_such_secret_table")
            .fetch_one(&mut *db)
            .await?,
    )
}

#[forge::query(public)]
async fn rpc_panics(_ctx: &QueryContext) -> Result<()> {
    panic!("the panic message with internal details");
}

/// A query that tries to write: its transaction is read-only.
#[forge::query(public)]
async fn rpc_sneaky_write(ctx: &QueryContext) -> Result<()> {
    let mut db = ctx.db().await?;
    sqlx::query("INSERT INTO rpc_todos (title) VALUES ('sneaky')")
        .execute(&mut *db)
        .await?;
    Ok(())
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Todo {
    id: i32,
    title: String,
}

#[forge::mutation]
async fn rpc_add(ctx: &MutationContext, title: String) -> Result<Todo> {
    match title.as_str() {
        "" => return Err(Error::invalid_arg("title", "must not be empty")),
        "taken" => return Err(Error::conflict("this title is taken")),
        "nonsense" => return Err(Error::unprocessable("cannot file nonsense")),
        _ => {}
    }
    let mut db = ctx.db().await?;
    let id = sqlx::query_scalar("INSERT INTO rpc_todos (title) VALUES ($1) RETURNING id")
        .bind(&title)
        .fetch_one(&mut *db)
        .await?;
    Ok(Todo { id, title })
}

/// Waits `delay_ms` (in the database), then appends `title`.
#[forge::mutation(public)]
async fn rpc_append(ctx: &MutationContext, title: String, delay_ms: u32) -> Result<()> {
    let mut db = ctx.db().await?;
    sqlx::query("SELECT pg_sleep($1::float8 / 1000)")
        .bind(delay_ms as f64)
        .execute(&mut *db)
        .await?;
    sqlx::query("INSERT INTO rpc_todos (title) VALUES ($1)")
        .bind(&title)
        .execute(&mut *db)
        .await?;
    Ok(())
}

/// Writes, enqueues a job, then refuses: nothing of it may remain.
#[forge::mutation]
async fn rpc_write_then_fail(ctx: &MutationContext, title: String) -> Result<()> {
    {
        let mut db = ctx.db().await?;
        sqlx::query("INSERT INTO rpc_todos (title) VALUES ($1)")
            .bind(&title)
            .execute(&mut *db)
            .await?;
    }
    ctx.enqueue(rpc_job::request(1)).await?;
    Err(Error::conflict("changed my mind"))
}

/// Writes, enqueues a job, then runs past its timeout.
#[forge::mutation(timeout = "300ms")]
async fn rpc_write_then_hang(ctx: &MutationContext, title: String) -> Result<()> {
    {
        let mut db = ctx.db().await?;
        sqlx::query("INSERT INTO rpc_todos (title) VALUES ($1)")
            .bind(&title)
            .execute(&mut *db)
            .await?;
    }
    ctx.enqueue(rpc_job::request(2)).await?;
    tokio::time::sleep(Duration::from_secs(30)).await;
    Ok(())
}

/// Writes and enqueues a job, and succeeds: the job is the caller's.
#[forge::mutation]
async fn rpc_write_and_enqueue(ctx: &MutationContext, title: String) -> Result<Uuid> {
    {
        let mut db = ctx.db().await?;
        sqlx::query("INSERT INTO rpc_todos (title) VALUES ($1)")
            .bind(&title)
            .execute(&mut *db)
            .await?;
    }
    Ok(ctx.enqueue(rpc_job::request(3)).await?)
}

/// Holds its connection while enqueueing: a mistake that must fail clearly, not hang.
#[forge::mutation]
async fn rpc_holds_conn(ctx: &MutationContext) -> Result<()> {
    let _db = ctx.db().await?;
    ctx.enqueue(rpc_job::request(4)).await?;
    Ok(())
}

#[forge::job]
async fn rpc_job(_ctx: &JobContext, n: u32) -> Result<u32> {
    Ok(n * 2)
}

#[forge::job(public)]
async fn rpc_public_job(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

/// Waits for the event `go`, then doubles `n` in a step.
#[forge::workflow(steps = ["double"])]
async fn rpc_flow(ctx: &WorkflowContext, n: u32) -> Result<u32> {
    let _: Value = ctx
        .wait_for_event("go", Duration::from_secs(600))
        .named("wait_go")
        .await?;
    ctx.step("double", || async move { Ok(n * 2) }).await
}

/// A mutation that starts a workflow in its transaction, then fails or not.
#[forge::mutation]
async fn rpc_start_flow(ctx: &MutationContext, n: u32, fail: bool) -> Result<Uuid> {
    let id = ctx.start_workflow(rpc_flow::request(n)).await?;
    if fail {
        return Err(Error::conflict("not this time"));
    }
    Ok(id)
}

// ---- The server ----------------------------------------------------------------------------

struct Server {
    _db: TestDb,
    forge: Forge,
    base: String,
    http: reqwest::Client,
}

async fn server() -> Server {
    server_with(|_| {}).await
}

async fn server_with(configure: impl FnOnce(&mut GatewayConfig)) -> Server {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    sqlx::query("CREATE TABLE rpc_todos (id serial PRIMARY KEY, title text NOT NULL)")
        .execute(forge.pool())
        .await
        .unwrap();
    let base = serve(&forge, configure).await;
    Server {
        _db: db,
        forge,
        base,
        http: reqwest::Client::new(),
    }
}

async fn serve(forge: &Forge, configure: impl FnOnce(&mut GatewayConfig)) -> String {
    let mut config = GatewayConfig::new(SECRET);
    configure(&mut config);
    let gateway = Gateway::new(forge, config).await.unwrap();
    let listener = forge_gateway::bind("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gateway.serve(listener, std::future::pending()));
    base
}

/// A token for `user` with `roles`, expiring `valid_for_secs` from now (negative: expired).
fn token(user: &str, roles: &[&str], valid_for_secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = json!({ "sub": user, "roles": roles, "exp": now + valid_for_secs });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

fn alice() -> String {
    token("alice", &[], 3600)
}

fn base64url(bytes: &[u8]) -> String {
    const ABC: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// `good` with its claims replaced by an admin's: the signature no longer matches.
fn tampered(good: &str) -> String {
    let parts: Vec<&str> = good.split('.').collect();
    let claims = json!({ "sub": "mallory", "roles": ["admin"], "exp": 4102444800u64 });
    let payload = base64url(claims.to_string().as_bytes());
    format!("{}.{payload}.{}", parts[0], parts[2])
}

/// The same claims, unsigned (`alg: none`).
fn unsigned() -> String {
    let header = base64url(br#"{"alg":"none","typ":"JWT"}"#);
    let claims = json!({ "sub": "mallory", "roles": ["admin"], "exp": 4102444800u64 });
    format!("{header}.{}.", base64url(claims.to_string().as_bytes()))
}

impl Server {
    async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        content_type: Option<&str>,
        body: impl Into<reqwest::Body>,
    ) -> (u16, Value) {
        let mut req = self.http.post(format!("{}{path}", self.base)).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, token: Option<&str>, body: Value) -> (u16, Value) {
        self.post_raw(path, token, Some("application/json"), body.to_string())
            .await
    }

    /// `POST /_api/rpc/{f}`.
    async fn call(&self, f: &str, token: Option<&str>, args: Value) -> (u16, Value) {
        self.post(&format!("/_api/rpc/{f}"), token, args).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let res = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn titles(&self) -> Vec<String> {
        sqlx::query_scalar("SELECT title FROM rpc_todos ORDER BY id")
            .fetch_all(self.forge.pool())
            .await
            .unwrap()
    }

    async fn jobs_named(&self, name: &str) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM forge.jobs WHERE function_name = $1")
            .bind(name)
            .fetch_one(self.forge.pool())
            .await
            .unwrap()
    }
}

/// The error code and `details.field` of an error answer.
fn code(body: &Value) -> (&str, Option<&str>) {
    (
        body["error"]["code"].as_str().unwrap_or("<no code>"),
        body["error"]["details"]["field"].as_str(),
    )
}

// ---- Tests -------------------------------------------------------------------------------------

#[tokio::test]
async fn every_call_route_gives_the_same_answer() {
    let s = server().await;
    let args = json!({ "text": "ab", "times": 3 });
    let expected = json!({ "data": "ababab" });
    assert_eq!(
        s.call("rpc_echo", None, args.clone()).await,
        (200, expected.clone())
    );
    assert_eq!(
        s.post("/_api/rpc", None, json!({ "fn": "rpc_echo", "args": args }))
            .await,
        (200, expected)
    );
    assert_eq!(
        s.post(
            "/_api/rpc/batch",
            None,
            json!([{ "fn": "rpc_echo", "args": args }])
        )
        .await,
        (200, json!({ "results": [{ "data": "ababab" }] }))
    );
    // A function without arguments takes an empty body, `{}` or no `args`.
    assert_eq!(
        s.post_raw("/_api/rpc/rpc_nothing", None, None, "").await,
        (200, json!({ "data": 7 }))
    );
    assert_eq!(s.call("rpc_nothing", None, json!({})).await.0, 200);
    assert_eq!(
        s.post("/_api/rpc", None, json!({ "fn": "rpc_nothing" }))
            .await,
        (200, json!({ "data": 7 }))
    );
}

#[tokio::test]
async fn bad_requests_get_their_status_and_name_the_field() {
    let s = server_with(|c| c.body_limit = 4096).await;
    let t = alice();

    // 400 invalid_args, naming the field and the expected type.
    let (status, body) = s
        .call("rpc_echo", None, json!({ "text": "a", "times": "x" }))
        .await;
    assert_eq!(
        (status, code(&body)),
        (400, ("invalid_args", Some("times")))
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("u32"),
        "{body}"
    );
    let (status, body) = s.call("rpc_echo", None, json!({ "text": "a" })).await;
    assert_eq!(
        (status, code(&body)),
        (400, ("invalid_args", Some("times")))
    );
    let (status, body) = s
        .call(
            "rpc_echo",
            None,
            json!({ "text": "a", "times": 1, "extra": 1 }),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (400, ("invalid_args", Some("extra")))
    );
    let (status, body) = s.call("rpc_echo", None, json!([1, 2])).await;
    assert_eq!((status, code(&body).0), (400, "invalid_args"));

    // 400 bad_request: malformed JSON or envelope.
    let (status, body) = s
        .post_raw(
            "/_api/rpc/rpc_echo",
            None,
            Some("application/json"),
            "{nope",
        )
        .await;
    assert_eq!((status, code(&body).0), (400, "bad_request"));
    let (status, body) = s.post("/_api/rpc", None, json!({ "args": {} })).await;
    assert_eq!((status, code(&body)), (400, ("bad_request", Some("fn"))));
    let (status, body) = s.post("/_api/rpc/batch", None, json!({ "fn": "x" })).await;
    assert_eq!((status, code(&body).0), (400, "bad_request"));

    // 404: unknown function, unknown route; 405: known route, wrong method.
    let (status, body) = s.call("no_such_function", None, json!({})).await;
    assert_eq!((status, code(&body)), (404, ("not_found", Some("fn"))));
    let (status, body) = s.post("/_api/nowhere", None, json!({})).await;
    assert_eq!((status, code(&body).0), (404, "not_found"));
    let (status, body) = s.get("/_api/rpc/rpc_echo").await;
    assert_eq!((status, code(&body).0), (405, "method_not_allowed"));

    // 413: body over the limit (declared, or streamed without a length).
    let big = json!({ "text": "x".repeat(5000), "times": 1 });
    let (status, body) = s.call("rpc_echo", None, big.clone()).await;
    assert_eq!((status, code(&body).0), (413, "payload_too_large"));
    let chunks: Vec<Result<String, std::io::Error>> = vec![Ok(big.to_string())];
    let stream = reqwest::Body::wrap_stream(futures::stream::iter(chunks));
    let (status, body) = s
        .post_raw("/_api/rpc/rpc_echo", None, Some("application/json"), stream)
        .await;
    assert_eq!((status, code(&body).0), (413, "payload_too_large"));

    // 415: not JSON.
    let (status, body) = s
        .post_raw("/_api/rpc/rpc_echo", None, Some("text/plain"), "{}")
        .await;
    assert_eq!((status, code(&body).0), (415, "unsupported_media_type"));
    let (status, body) = s
        .post_raw("/_api/rpc", None, None, r#"{"fn":"rpc_nothing"}"#)
        .await;
    assert_eq!((status, code(&body).0), (415, "unsupported_media_type"));

    // What a function refuses, with its own message: 400 naming the field, 409, 422.
    let (status, body) = s.call("rpc_add", Some(&t), json!({ "title": "" })).await;
    assert_eq!(
        (status, code(&body)),
        (400, ("invalid_args", Some("title")))
    );
    assert_eq!(body["error"]["message"], "must not be empty");
    let (status, body) = s
        .call("rpc_add", Some(&t), json!({ "title": "taken" }))
        .await;
    assert_eq!(
        (status, &body),
        (
            409,
            &json!({ "error": { "code": "conflict", "message": "this title is taken" } })
        )
    );
    let (status, body) = s
        .call("rpc_add", Some(&t), json!({ "title": "nonsense" }))
        .await;
    assert_eq!((status, code(&body).0), (422, "unprocessable"));
    assert_eq!(s.titles().await, Vec::<String>::new());

    // 504 past the function's timeout.
    let started = Instant::now();
    let (status, body) = s.call("rpc_too_slow", None, json!({})).await;
    assert_eq!((status, code(&body).0), (504, "timeout"));
    assert!(started.elapsed() < Duration::from_secs(10));

    // 500 with a correlation id, and never the internal text.
    for f in ["rpc_broken", "rpc_panics"] {
        let (status, body) = s.call(f, None, json!({})).await;
        assert_eq!((status, code(&body).0), (500, "internal"), "{f}");
        assert!(body["error"]["correlationId"]
            .as_str()
            .is_some_and(|id| id.len() == 36));
        let text = body.to_string();
        assert!(
            !text.contains("no_such_secret_table") && !text.contains("internal details"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_query_cannot_write() {
    let s = server().await;
    let (status, body) = s.call("rpc_sneaky_write", None, json!({})).await;
    assert_eq!((status, code(&body).0), (500, "internal"));
    assert_eq!(s.titles().await, Vec::<String>::new());
}

#[tokio::test]
async fn the_auth_matrix_is_the_same_on_every_route() {
    let s = server().await;
    let user = alice();
    let admin = token("root", &["admin"], 3600);
    // Expired a second ago: within the 30 s leeway, so still good.
    let just_expired = token("alice", &[], -1);
    let expired = token("alice", &[], -3600);
    let other_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "alice", "exp": 4102444800u64 }),
        &jsonwebtoken::EncodingKey::from_secret(b"some-other-secret-some-other-secret").unwrap(),
    )
    .unwrap();
    let tampered = tampered(&admin);
    let unsigned = unsigned();
    let cases: Vec<(&str, Option<&str>, [u16; 3])> = vec![
        // token          → public, authenticated, role "admin"
        ("none", None, [200, 401, 401]),
        ("user", Some(&user), [200, 200, 403]),
        ("admin", Some(&admin), [200, 200, 200]),
        ("just expired", Some(&just_expired), [200, 200, 403]),
        ("expired", Some(&expired), [401, 401, 401]),
        ("tampered", Some(&tampered), [401, 401, 401]),
        ("unsigned", Some(&unsigned), [401, 401, 401]),
        ("other secret", Some(&other_secret), [401, 401, 401]),
        ("garbage", Some("not.a.token"), [401, 401, 401]),
    ];
    let functions = ["rpc_nothing", "rpc_me", "rpc_admin"];
    for (name, token, expected) in &cases {
        for (f, want) in functions.iter().zip(expected) {
            let (status, body) = s.call(f, *token, json!({})).await;
            assert_eq!(status, *want, "{name} → {f}: {body}");
            let (status, _) = s.post("/_api/rpc", *token, json!({ "fn": f })).await;
            assert_eq!(status, *want, "{name} → /_api/rpc {f}");
            let expected_code = match want {
                200 => None,
                401 => Some("unauthenticated"),
                _ => Some("forbidden"),
            };
            assert_eq!(
                body["error"]["code"].as_str(),
                expected_code,
                "{name} → {f}"
            );
        }
        // In a batch a bad token fails the request; a missing one fails the calls that need
        // a user.
        let batch: Vec<Value> = functions.iter().map(|f| json!({ "fn": f })).collect();
        let (status, body) = s.post("/_api/rpc/batch", *token, json!(batch)).await;
        if expected[0] == 401 {
            assert_eq!((status, code(&body).0), (401, "unauthenticated"), "{name}");
        } else {
            assert_eq!(status, 200, "{name}");
            let per_call: Vec<u16> = body["results"]
                .as_array()
                .unwrap()
                .iter()
                .map(|r| match r["error"]["code"].as_str() {
                    None => 200,
                    Some("unauthenticated") => 401,
                    Some("forbidden") => 403,
                    Some(other) => panic!("{other}"),
                })
                .collect();
            assert_eq!(per_call, expected, "{name} batch");
        }
    }
    // The user and roles reach the function.
    let (_, body) = s.call("rpc_me", Some(&admin), json!({})).await;
    assert_eq!(
        body,
        json!({ "data": { "userId": "root", "roles": ["admin"] } })
    );
    // A header that is not `Bearer <token>`.
    let res = s
        .http
        .post(format!("{}/_api/rpc/rpc_nothing", s.base))
        .header("authorization", format!("Basic {user}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
}

#[tokio::test]
async fn a_batch_answers_each_call_in_order_and_one_failure_fails_alone() {
    let s = server().await;
    let t = alice();
    let (status, body) = s
        .post(
            "/_api/rpc/batch",
            Some(&t),
            json!([
                { "fn": "rpc_add", "args": { "title": "a" } },
                { "fn": "rpc_titles" },
                { "fn": "rpc_add", "args": { "title": "" } },
                { "fn": "no_such_function", "args": {} },
                { "nofn": true },
                { "fn": "rpc_broken" },
                { "fn": "rpc_add", "args": { "title": "b" } },
                { "fn": "rpc_titles" },
                { "fn": "rpc_echo", "args": { "text": "x", "times": "two" } },
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = body["results"].as_array().unwrap();
    assert_eq!(r.len(), 9);
    assert_eq!(r[0]["data"]["title"], "a");
    assert_eq!(r[1], json!({ "data": ["a"] }));
    assert_eq!(code(&r[2]), ("invalid_args", Some("title")));
    assert_eq!(code(&r[3]), ("not_found", Some("fn")));
    assert_eq!(code(&r[4]).0, "bad_request");
    assert_eq!(code(&r[5]).0, "internal");
    assert!(r[5]["error"]["correlationId"].is_string());
    assert_eq!(r[6]["data"]["title"], "b");
    assert_eq!(r[7], json!({ "data": ["a", "b"] }));
    assert_eq!(code(&r[8]), ("invalid_args", Some("times")));

    // An empty batch, and one over the limit (100 by default).
    assert_eq!(
        s.post("/_api/rpc/batch", Some(&t), json!([])).await,
        (200, json!({ "results": [] }))
    );
    let too_many: Vec<Value> = (0..101).map(|_| json!({ "fn": "rpc_nothing" })).collect();
    let (status, body) = s.post("/_api/rpc/batch", Some(&t), json!(too_many)).await;
    assert_eq!((status, code(&body).0), (413, "payload_too_large"));
}

#[tokio::test]
async fn queries_of_a_batch_run_side_by_side_and_mutations_in_order() {
    let s = server().await;
    // Warm the pool, so that connecting is not part of what is timed.
    let warm: Vec<Value> = (0..4)
        .map(|_| json!({ "fn": "rpc_slow", "args": { "ms": 1 } }))
        .collect();
    s.post("/_api/rpc/batch", None, json!(warm)).await;

    let slow = json!({ "fn": "rpc_slow", "args": { "ms": 600 } });
    let started = Instant::now();
    let (status, body) = s
        .post("/_api/rpc/batch", None, json!([slow, slow, slow]))
        .await;
    let took = started.elapsed();
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({ "results": [{ "data": 600 }, { "data": 600 }, { "data": 600 }] })
    );
    // One after another they would take 1.8 s.
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_millis(1500),
        "three 600 ms queries took {took:?}"
    );

    // The first mutation waits longest: run side by side, it would land last.
    let appends: Vec<Value> = [("1", 400), ("2", 200), ("3", 0)]
        .iter()
        .map(|(t, d)| json!({ "fn": "rpc_append", "args": { "title": t, "delayMs": d } }))
        .collect();
    let (status, body) = s.post("/_api/rpc/batch", None, json!(appends)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.titles().await, ["1", "2", "3"]);
}

#[tokio::test]
async fn a_failed_mutation_leaves_no_write_and_no_job() {
    let s = server().await;
    let t = alice();
    let (status, body) = s
        .call("rpc_write_then_fail", Some(&t), json!({ "title": "ghost" }))
        .await;
    assert_eq!((status, code(&body).0), (409, "conflict"), "{body}");
    let (status, body) = s
        .call(
            "rpc_write_then_hang",
            Some(&t),
            json!({ "title": "ghost 2" }),
        )
        .await;
    assert_eq!((status, code(&body).0), (504, "timeout"), "{body}");
    assert_eq!(s.titles().await, Vec::<String>::new());
    assert_eq!(s.jobs_named("rpc_job").await, 0);

    // Holding the connection while enqueueing fails at once, and clearly in the log.
    let started = Instant::now();
    let (status, body) = s.call("rpc_holds_conn", Some(&t), json!({})).await;
    assert_eq!((status, code(&body).0), (500, "internal"));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(s.jobs_named("rpc_job").await, 0);

    // The same writes commit when the mutation succeeds, and its job belongs to the caller.
    let (status, body) = s
        .call(
            "rpc_write_and_enqueue",
            Some(&t),
            json!({ "title": "real" }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id: Uuid = body["data"].as_str().unwrap().parse().unwrap();
    assert_eq!(s.titles().await, ["real"]);
    let job = s.forge.job(id).await.unwrap().unwrap();
    assert_eq!(job.owner.as_deref(), Some("alice"));
}

#[tokio::test]
async fn a_job_started_through_rpc_is_owned_by_its_caller() {
    let s = server().await;
    let (status, body) = s.call("rpc_job", Some(&alice()), json!({ "n": 21 })).await;
    assert_eq!(status, 200, "{body}");
    let id: Uuid = body["data"]["jobId"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        body["data"]["state"],
        json!({ "jobId": id, "status": "pending", "progress": null, "message": null, "output": null, "error": null })
    );
    let row = s.forge.job(id).await.unwrap().unwrap();
    assert_eq!(row.function_name, "rpc_job");
    assert_eq!(row.owner.as_deref(), Some("alice"));
    let args: Value = sqlx::query_scalar("SELECT args FROM forge.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(s.forge.pool())
        .await
        .unwrap();
    assert_eq!(args, json!({ "n": 21 }));

    // It runs like any job.
    let worker = s.forge.start_worker(WorkerConfig::default()).await.unwrap();
    let done = wait_for("the job to complete", Duration::from_secs(15), || async {
        let row = s.forge.job(id).await.unwrap().unwrap();
        (row.status == JobStatus::Completed).then_some(row)
    })
    .await;
    assert_eq!(done.output, Some(json!(42)));

    // On a node whose worker is idle, a job started through RPC is claimed by its insert
    // (eager start), and the answer says so. The worker may still be handling the wake-up of
    // the last job: a few tries.
    let mut eager = None;
    let mut started = 1;
    for n in 0..5 {
        started += 1;
        let (status, body) = s.call("rpc_job", Some(&alice()), json!({ "n": n })).await;
        assert_eq!(status, 200, "{body}");
        let id: Uuid = body["data"]["jobId"].as_str().unwrap().parse().unwrap();
        let done = wait_for("the job to complete", Duration::from_secs(15), || async {
            let row = s.forge.job(id).await.unwrap().unwrap();
            (row.status == JobStatus::Completed).then_some(row)
        })
        .await;
        assert_eq!(done.output, Some(json!(2 * n)));
        match body["data"]["state"]["status"].as_str() {
            Some("claimed") => {
                eager = Some(done);
                break;
            }
            other => assert_eq!(other, Some("pending"), "{body}"),
        }
    }
    let eager = eager.expect("a job started through RPC on an idle node was claimed at insert");
    assert_eq!(eager.attempts, 1);
    worker.shutdown().await;

    // Bad arguments start nothing; a job that needs a user needs one; a public job started
    // anonymously has no owner.
    let (status, body) = s.call("rpc_job", Some(&alice()), json!({ "n": -1 })).await;
    assert_eq!((status, code(&body)), (400, ("invalid_args", Some("n"))));
    let (status, _) = s.call("rpc_job", None, json!({ "n": 1 })).await;
    assert_eq!(status, 401);
    assert_eq!(s.jobs_named("rpc_job").await, started);
    let (status, body) = s.call("rpc_public_job", None, json!({})).await;
    assert_eq!(status, 200);
    let id: Uuid = body["data"]["jobId"].as_str().unwrap().parse().unwrap();
    assert_eq!(s.forge.job(id).await.unwrap().unwrap().owner, None);

    // `follow` is for jobs and workflows only, and needs a session.
    let follow = json!({ "sessionId": Uuid::nil(), "sessionSecret": "x", "subscriptionId": "s" });
    let (status, body) = s
        .post(
            "/_api/rpc",
            None,
            json!({ "fn": "rpc_nothing", "follow": follow }),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (400, ("invalid_args", Some("follow")))
    );
    let (status, body) = s
        .post(
            "/_api/rpc",
            Some(&alice()),
            json!({ "fn": "rpc_job", "args": { "n": 1 }, "follow": follow }),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (404, ("not_found", Some("follow.sessionId")))
    );
    assert_eq!(s.jobs_named("rpc_job").await, started);
}

#[tokio::test]
async fn only_the_owner_or_an_admin_cancels_a_job() {
    let s = server_with(|c| c.admin_role = Some("admin".into())).await;
    let start = |who: String| {
        let s = &s;
        async move {
            let (_, body) = s.call("rpc_job", Some(&who), json!({ "n": 1 })).await;
            body["data"]["jobId"].as_str().unwrap().to_string()
        }
    };
    let job = start(alice()).await;
    let bob = token("bob", &[], 3600);
    let cancel = |who: Option<String>, job: String| {
        let s = &s;
        async move {
            s.post("/_api/cancel-job", who.as_deref(), json!({ "jobId": job }))
                .await
        }
    };
    let (status, body) = cancel(Some(bob.clone()), job.clone()).await;
    assert_eq!((status, code(&body)), (404, ("not_found", Some("jobId"))));
    let (status, _) = cancel(None, job.clone()).await;
    assert_eq!(status, 401);
    let (status, body) = cancel(Some(alice()), job.clone()).await;
    assert_eq!(
        (status, body),
        (200, json!({ "data": { "status": "cancelled" } }))
    );
    let (status, body) = cancel(Some(alice()), job.clone()).await;
    assert_eq!((status, code(&body).0), (409, "conflict"));
    assert_eq!(body["error"]["details"]["status"], "cancelled");
    let (status, body) = cancel(Some(alice()), "not-a-uuid".into()).await;
    assert_eq!(
        (status, code(&body)),
        (400, ("invalid_args", Some("jobId")))
    );

    let job = start(bob).await;
    let (status, _) = cancel(Some(token("root", &["admin"], 3600)), job).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn health_readiness_and_the_openapi_document() {
    let s = server().await;
    assert_eq!(
        s.get("/_api/health").await,
        (200, json!({ "data": { "status": "ok" } }))
    );
    assert_eq!(
        s.get("/_api/ready").await,
        (200, json!({ "data": { "status": "ready" } }))
    );

    let (status, doc) = s.get("/_api/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    let echo = &doc["paths"]["/_api/rpc/rpc_echo"]["post"];
    let args = &echo["requestBody"]["content"]["application/json"]["schema"];
    assert_eq!(args["properties"]["times"]["type"], "integer");
    assert_eq!(args["additionalProperties"], false);
    assert_eq!(echo["security"], json!([]));
    // The function's doc comment describes its operation.
    assert_eq!(echo["description"], "`text`, `times` times.");
    assert_eq!(
        echo["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["data"]
            ["type"],
        "string"
    );
    let admin = &doc["paths"]["/_api/rpc/rpc_admin"]["post"];
    assert_eq!(admin["security"], json!([{ "bearerAuth": [] }]));
    assert!(admin["responses"]["403"].is_object());
    // Named types are components, referenced where used.
    let add = &doc["paths"]["/_api/rpc/rpc_add"]["post"];
    let out =
        &add["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["data"];
    assert_eq!(out["$ref"], "#/components/schemas/Todo");
    assert!(doc["components"]["schemas"]["Todo"]["properties"]["title"].is_object());
    let job = &doc["paths"]["/_api/rpc/rpc_job"]["post"]["responses"]["200"]["content"]
        ["application/json"]["schema"]["properties"]["data"];
    assert_eq!(
        job["properties"]["state"]["$ref"],
        "#/components/schemas/JobState"
    );
    assert!(doc["components"]["schemas"]["JobStatus"].is_object());
    let flow = &doc["paths"]["/_api/rpc/rpc_flow"]["post"]["responses"]["200"]["content"]
        ["application/json"]["schema"]["properties"]["data"];
    assert_eq!(
        flow["properties"]["state"]["$ref"],
        "#/components/schemas/WorkflowState"
    );
    assert!(doc["paths"]["/_api/cancel-workflow"]["post"].is_object());
    // Every reference resolves.
    let text = doc.to_string();
    for r in text.split("\"$ref\":\"#/").skip(1) {
        let pointer = format!("/{}", &r[..r.find('"').unwrap()]);
        assert!(doc.pointer(&pointer).is_some(), "dangling $ref {pointer}");
    }
}

#[tokio::test]
async fn readiness_fails_without_migrations() {
    let db = TestDb::new().await;
    let store = forge_runtime::store::Store::connect(&db.url, 4)
        .await
        .unwrap();
    let forge = Forge::from_store(store);
    let base = serve(&forge, |_| {}).await;
    let res = reqwest::get(format!("{base}/_api/ready")).await.unwrap();
    assert_eq!(res.status().as_u16(), 503);
    let body: Value = res.json().await.unwrap();
    assert_eq!(code(&body).0, "unavailable");
}

#[tokio::test]
async fn cors_lets_the_configured_origins_in() {
    let s = server_with(|c| c.cors_origins = vec!["http://localhost:5173".into()]).await;
    let preflight = |origin: &'static str| {
        s.http
            .request(reqwest::Method::OPTIONS, format!("{}/_api/rpc", s.base))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization, content-type",
            )
            .send()
    };
    let res = preflight("http://localhost:5173").await.unwrap();
    assert!(res.status().is_success());
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
    let res = preflight("http://evil.example").await.unwrap();
    assert!(res.headers().get("access-control-allow-origin").is_none());
    // Error answers carry the header too, so the page can read them.
    let res = s
        .http
        .post(format!("{}/_api/rpc/rpc_me", s.base))
        .header("origin", "http://localhost:5173")
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 401);
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );
}

#[tokio::test]
async fn subscriptions_and_start_and_follow_go_through_the_registry() {
    const WAIT: Duration = Duration::from_secs(15);
    let s = server().await;
    let t = alice();
    let url = format!("{}/_api/events?token={t}", s.base);
    let mut stream = forge_test_support::sse::SseStream::open(&s.http, &url, None)
        .await
        .unwrap();
    let (_, name, data) = stream.next_event(WAIT, "the session event").await;
    assert_eq!(name, "session");
    let session: Value = serde_json::from_str(&data).unwrap();
    let subscribe = |sub: &str, f: &str, args: Value| {
        let body = json!({
            "sessionId": session["sessionId"], "sessionSecret": session["sessionSecret"],
            "subscriptionId": sub, "fn": f, "args": args,
        });
        let s = &s;
        let t = t.clone();
        async move { s.post("/_api/subscribe", Some(&t), body).await }
    };

    // A subscribed query is pushed again when a mutation called through RPC changes its data.
    assert_eq!(
        subscribe("titles", "rpc_titles", json!({})).await,
        (200, json!({ "data": [] }))
    );
    s.call("rpc_add", Some(&t), json!({ "title": "a" })).await;
    let (_, name, data) = stream.next_event(WAIT, "the query update").await;
    assert_eq!(name, "query");
    let event: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(event, json!({ "subscriptionId": "titles", "data": ["a"] }));

    // The same checks as a call.
    let (status, body) = subscribe("x", "rpc_add", json!({ "title": "b" })).await;
    assert_eq!((status, code(&body)), (400, ("invalid_args", Some("fn"))));
    let (status, body) = subscribe("x", "rpc_admin", json!({})).await;
    assert_eq!((status, code(&body).0), (403, "forbidden"));
    let (status, body) = subscribe("x", "rpc_echo", json!({ "text": 1, "times": 1 })).await;
    assert_eq!((status, code(&body)), (400, ("invalid_args", Some("text"))));
    let (status, body) = subscribe("x", "nope", json!({})).await;
    assert_eq!((status, code(&body).0), (404, "not_found"));

    // Start-and-follow: the job's updates arrive on the stream, up to its output.
    let _worker = s.forge.start_worker(WorkerConfig::default()).await.unwrap();
    let follow = json!({
        "sessionId": session["sessionId"], "sessionSecret": session["sessionSecret"],
        "subscriptionId": "job",
    });
    let (status, body) = s
        .post(
            "/_api/rpc",
            Some(&t),
            json!({ "fn": "rpc_job", "args": { "n": 5 }, "follow": follow }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let id = body["data"]["jobId"].clone();
    let mut statuses = Vec::new();
    loop {
        let (_, name, data) = stream.next_event(WAIT, "job updates").await;
        let event: Value = serde_json::from_str(&data).unwrap();
        if name != "job" {
            continue;
        }
        assert_eq!(event["subscriptionId"], "job");
        assert_eq!(event["state"]["jobId"], id);
        statuses.push(event["state"]["status"].as_str().unwrap().to_string());
        if event["state"]["status"] == "completed" {
            assert_eq!(event["state"]["output"], 10);
            break;
        }
    }
    assert_eq!(statuses.first().map(String::as_str), Some("claimed"));
}

#[tokio::test]
async fn a_workflow_started_through_rpc_is_owned_by_its_caller() {
    let s = server_with(|c| c.admin_role = Some("admin".into())).await;
    let (status, body) = s.call("rpc_flow", Some(&alice()), json!({ "n": 21 })).await;
    assert_eq!(status, 200, "{body}");
    let id: Uuid = body["data"]["workflowId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let state = &body["data"]["state"];
    assert_eq!(state["workflowId"], json!(id));
    assert_eq!(state["status"], "created");
    assert_eq!(state["steps"][0]["name"], "double");
    assert_eq!(state["steps"][0]["status"], "pending");
    let row = s.forge.workflow(id).await.unwrap().unwrap();
    assert_eq!(
        (row.name.as_str(), row.owner.as_deref()),
        ("rpc_flow", Some("alice"))
    );

    // Bad arguments start nothing; it needs a user; `follow` needs a session of this node.
    let (status, body) = s
        .call("rpc_flow", Some(&alice()), json!({ "n": "x" }))
        .await;
    assert_eq!((status, code(&body)), (400, ("invalid_args", Some("n"))));
    assert_eq!(s.call("rpc_flow", None, json!({ "n": 1 })).await.0, 401);
    let follow = json!({ "sessionId": Uuid::nil(), "sessionSecret": "x", "subscriptionId": "s" });
    let (status, body) = s
        .post(
            "/_api/rpc",
            Some(&alice()),
            json!({ "fn": "rpc_flow", "args": { "n": 1 }, "follow": follow }),
        )
        .await;
    assert_eq!(
        (status, code(&body)),
        (404, ("not_found", Some("follow.sessionId")))
    );

    // A mutation's workflow exists only if the mutation commits, and belongs to its caller.
    let (status, _) = s
        .call(
            "rpc_start_flow",
            Some(&alice()),
            json!({ "n": 1, "fail": true }),
        )
        .await;
    assert_eq!(status, 409);
    let count = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM forge.workflows")
            .fetch_one(s.forge.pool())
            .await
            .unwrap()
    };
    assert_eq!(count().await, 1);
    let (status, body) = s
        .call(
            "rpc_start_flow",
            Some(&token("bob", &[], 3600)),
            json!({ "n": 2, "fail": false }),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let bobs: Uuid = body["data"].as_str().unwrap().parse().unwrap();
    assert_eq!(count().await, 2);
    assert_eq!(
        s.forge
            .workflow(bobs)
            .await
            .unwrap()
            .unwrap()
            .owner
            .as_deref(),
        Some("bob")
    );

    // It runs like any workflow.
    let worker = s.forge.start_worker(WorkerConfig::default()).await.unwrap();
    s.forge
        .send_workflow_event(id, "go", json!(null))
        .await
        .unwrap();
    let done = wait_for(
        "the workflow to complete",
        Duration::from_secs(15),
        || async {
            let st = s.forge.workflow_state(id).await.unwrap().unwrap();
            (st.status == WorkflowStatus::Completed).then_some(st)
        },
    )
    .await;
    assert_eq!(done.output, Some(json!(42)));
    worker.shutdown().await;

    // Only its owner (or an admin) cancels it.
    let cancel = |who: String, wf: Uuid| {
        let s = &s;
        async move {
            s.post(
                "/_api/cancel-workflow",
                Some(&who),
                json!({ "workflowId": wf }),
            )
            .await
        }
    };
    let (status, body) = cancel(alice(), bobs).await;
    assert_eq!(
        (status, code(&body)),
        (404, ("not_found", Some("workflowId")))
    );
    let (status, body) = cancel(alice(), id).await;
    assert_eq!((status, code(&body).0), (409, "conflict"));
    assert_eq!(body["error"]["details"]["status"], "completed");
    let (status, body) = cancel(token("root", &["admin"], 3600), bobs).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = s
        .post("/_api/cancel-workflow", None, json!({ "workflowId": bobs }))
        .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn a_node_runs_from_its_configuration() {
    let db = TestDb::new().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let file = format!(
        "[database]\nurl = \"{}\"\n[gateway]\nhost = \"127.0.0.1\"\n[auth]\njwt_secret = \"{}\"\n",
        db.url,
        std::str::from_utf8(SECRET).unwrap()
    );
    let port_text = port.to_string();
    let config = forge_gateway::Config::from_sources(
        Some((std::path::Path::new("forge.toml"), file.as_str())),
        |name| (name == "PORT").then(|| port_text.clone()),
    )
    .unwrap();
    // Spawned, as an application may do: this does not compile unless `run`'s future is
    // `Send`.
    let node = tokio::spawn(forge_gateway::run(config));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    wait_for("the node to be ready", Duration::from_secs(15), || async {
        let res = http.get(format!("{base}/_api/ready")).send().await.ok()?;
        res.status().is_success().then_some(())
    })
    .await;
    // Gateway and worker in one node: a job started over HTTP runs to completion.
    let res = http
        .post(format!("{base}/_api/rpc/rpc_job"))
        .bearer_auth(alice())
        .json(&json!({ "n": 4 }))
        .send()
        .await
        .unwrap();
    let body: Value = res.json().await.unwrap();
    let id: Uuid = body["data"]["jobId"].as_str().unwrap().parse().unwrap();
    let forge = Forge::connect(&db.url).await.unwrap();
    let done = wait_for("the job to complete", Duration::from_secs(15), || async {
        let row = forge.job(id).await.unwrap()?;
        (row.status == JobStatus::Completed).then_some(row)
    })
    .await;
    assert_eq!(done.output, Some(json!(8)));
    if node.is_finished() {
        panic!("the node stopped: {:?}", node.await);
    }
    node.abort();
}

/// Slowloris: a client that sends half a request header and stops is disconnected once the
/// header-read timeout passes, and so is one that sends nothing.
#[tokio::test]
async fn a_half_sent_header_is_cut_off_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = server_with(|c| c.header_read_timeout = Duration::from_millis(500)).await;
    let addr = s.base.trim_start_matches("http://").to_string();
    for half in ["GET /_api/health HTTP/1.1\r\nHost: x\r\nX-Slow: ", ""] {
        let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        tcp.write_all(half.as_bytes()).await.unwrap();
        let started = Instant::now();
        let mut buf = Vec::new();
        // The server closes the connection (EOF, or a reset); without the timeout this read
        // would wait for the 10 s bound below and fail.
        let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut buf))
            .await
            .expect("the server kept a half-sent request open");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "cut after {:?}",
            started.elapsed()
        );
    }
    // A whole request on a fresh connection is still answered.
    let (status, _) = s.get("/_api/health").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_start_with_an_idempotency_key_starts_once_per_user_and_function() {
    let s = server().await;
    let start = |user: &'static str, function: &'static str, key: Value| {
        let s = &s;
        async move {
            let body = json!({ "fn": function, "args": { "n": 1 }, "idempotencyKey": key });
            s.post("/_api/rpc", Some(&token(user, &[], 3600)), body)
                .await
        }
    };
    let id = |body: &Value| body["data"]["jobId"].as_str().unwrap().to_string();

    let (status, first) = start("alice", "rpc_job", json!("export-1")).await;
    assert_eq!(status, 200, "{first}");
    let (status, again) = start("alice", "rpc_job", json!("export-1")).await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(id(&again), id(&first), "the same key gives the same job");
    assert_eq!(s.jobs_named("rpc_job").await, 1);

    // Another user's key of the same text is another job: keys are kept per user.
    let (_, bobs) = start("bob", "rpc_job", json!("export-1")).await;
    assert_ne!(id(&bobs), id(&first));
    let (_, other) = start("alice", "rpc_job", json!("export-2")).await;
    assert_ne!(id(&other), id(&first));
    assert_eq!(s.jobs_named("rpc_job").await, 3);

    // Workflows take keys too.
    let (_, wf1) = start("alice", "rpc_flow", json!("flow-1")).await;
    let (_, wf2) = start("alice", "rpc_flow", json!("flow-1")).await;
    assert_eq!(
        wf1["data"]["workflowId"], wf2["data"]["workflowId"],
        "{wf2}"
    );

    let (status, body) = start("alice", "rpc_job", json!("")).await;
    assert_eq!(
        (status, code(&body)),
        (400, ("invalid_args", Some("idempotencyKey")))
    );
    let (status, body) = start("alice", "rpc_job", json!("k".repeat(201))).await;
    assert_eq!(
        (status, code(&body)),
        (400, ("invalid_args", Some("idempotencyKey")))
    );
    let body =
        json!({ "fn": "rpc_echo", "args": { "text": "a", "times": 1 }, "idempotencyKey": "q" });
    let (status, body) = s.post("/_api/rpc", Some(&alice()), body).await;
    assert_eq!(
        (status, code(&body)),
        (400, ("invalid_args", Some("idempotencyKey")))
    );
    let body = json!({ "fn": "rpc_public_job", "args": {}, "idempotencyKey": "anon" });
    let (status, body) = s.post("/_api/rpc", None, body).await;
    assert_eq!((status, code(&body).0), (401, "unauthenticated"), "{body}");
    assert_eq!(s.jobs_named("rpc_job").await, 3);
}

#[tokio::test]
async fn starting_jobs_faster_than_allowed_answers_429_rate_limited() {
    let s = server_with(|c| c.max_starts_per_minute = 2).await;
    for n in 0..2 {
        let (status, body) = s.call("rpc_job", Some(&alice()), json!({ "n": n })).await;
        assert_eq!(status, 200, "{body}");
    }
    let res = s
        .http
        .post(format!("{}/_api/rpc/rpc_job", s.base))
        .bearer_auth(alice())
        .json(&json!({ "n": 3 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 429);
    // The bucket refills at 2 a minute: the next start is about 30 s away.
    let retry: u64 = res.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((25..=30).contains(&retry), "{retry}");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["error"]["details"]["retryAfter"], retry, "{body}");
    assert_eq!(
        s.jobs_named("rpc_job").await,
        2,
        "the refused call started nothing"
    );
    // In a batch too, each start counts; queries are not limited.
    let (status, body) = s
        .post(
            "/_api/rpc/batch",
            Some(&alice()),
            json!([
                { "fn": "rpc_job", "args": { "n": 4 } },
                { "fn": "rpc_nothing", "args": {} },
            ]),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["results"][0]["error"]["code"], "rate_limited",
        "{body}"
    );
    assert!(body["results"][1]["data"].is_number(), "{body}");
    // Another user has a bucket of their own; anonymous callers are counted by address.
    let bob = token("bob", &[], 3600);
    let (status, body) = s.call("rpc_job", Some(&bob), json!({ "n": 5 })).await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..2 {
        let (status, body) = s.call("rpc_public_job", None, json!({})).await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = s.call("rpc_public_job", None, json!({})).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &json!("rate_limited")),
        "{body}"
    );
}
