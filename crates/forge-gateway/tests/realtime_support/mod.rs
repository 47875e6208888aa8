//! What the realtime tests and benchmark share: a node serving the realtime routes on a real
//! socket, tokens, and clients of the event stream.

#![allow(dead_code)] // Each test file uses its own part of this.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use forge::Forge;
use forge_gateway::auth::Auth;
use forge_gateway::realtime::{Realtime, RealtimeConfig};
use forge_gateway::{Gateway, GatewayConfig};
use forge_test_support::sse::SseStream;
use forge_test_support::TestDb;
use serde_json::{json, Value};

pub(crate) const SECRET: &[u8] = b"realtime-test-secret-realtime-test-secret";

pub(crate) fn auth() -> Auth {
    Auth::hs256(SECRET, Duration::from_secs(5)).unwrap()
}

/// A token for `user` with `roles`, valid for an hour.
pub(crate) fn token(user: &str, roles: &[&str]) -> String {
    token_for(user, roles, Duration::from_secs(3600))
}

pub(crate) fn token_for(user: &str, roles: &[&str], valid: Duration) -> String {
    let exp = (SystemTime::now() + valid)
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({ "sub": user, "roles": roles, "exp": exp });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

/// Serves the realtime routes of `forge` on 127.0.0.1 with a listen backlog large enough for
/// reconnect storms. Returns the base URL and the realtime handle.
pub(crate) async fn serve(forge: &Forge, config: RealtimeConfig) -> (String, Realtime) {
    let realtime = Realtime::start(forge, config, auth()).await.unwrap();
    let app: axum::Router = realtime.routes();
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(4096).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), realtime)
}

/// Serves the whole gateway of `forge` (every route, as `forge_gateway::run` does) on
/// 127.0.0.1 with `config`; returns its base URL and its realtime handle.
pub(crate) async fn serve_gateway(forge: &Forge, config: GatewayConfig) -> (String, Realtime) {
    let gateway = Gateway::new(forge, config).await.unwrap();
    let realtime = gateway.realtime().clone();
    let listener = forge_gateway::bind("127.0.0.1:0".parse().unwrap(), 1024).unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(gateway.serve(listener, std::future::pending()));
    (base, realtime)
}

/// A whole gateway over a test database of its own, and an HTTP client for it.
pub(crate) struct GatewayNode {
    _db: TestDb,
    pub(crate) forge: Forge,
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
}

impl GatewayNode {
    pub(crate) async fn start(config: GatewayConfig) -> GatewayNode {
        let db = TestDb::new().await;
        let forge = Forge::connect(&db.url).await.unwrap();
        let (base, _) = serve_gateway(&forge, config).await;
        GatewayNode {
            _db: db,
            forge,
            base,
            http: reqwest::Client::new(),
        }
    }

    /// POSTs `body` as JSON to `path`, with `token` if given: the status, the JSON answer
    /// (`null` when there is none) and the `Retry-After` header.
    pub(crate) async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: Value,
    ) -> (u16, Value, Option<String>) {
        let mut req = self.http.post(format!("{}{path}", self.base)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        (status, res.json().await.unwrap_or(Value::Null), retry_after)
    }
}

/// A client of the event stream: the stream, its session, and the token it uses.
pub(crate) struct Client {
    pub(crate) stream: SseStream,
    pub(crate) session: String,
    pub(crate) secret: String,
    pub(crate) token: String,
}

impl Client {
    /// Opens the stream with `?token=` (as a browser's EventSource does) and reads the session
    /// event.
    pub(crate) async fn connect(http: &reqwest::Client, base: &str, token: &str) -> Client {
        let url = format!("{base}/_api/events?token={token}");
        let mut stream = SseStream::open(http, &url, None).await.unwrap();
        let (_, name, data) = stream
            .next_event(Duration::from_secs(30), "the session event")
            .await;
        assert_eq!(name, "session");
        let v: Value = serde_json::from_str(&data).unwrap();
        Client {
            stream,
            session: v["sessionId"].as_str().unwrap().into(),
            secret: v["sessionSecret"].as_str().unwrap().into(),
            token: token.into(),
        }
    }

    /// `POST /_api/subscribe-job`; returns the status and body.
    pub(crate) async fn subscribe_job(
        &self,
        http: &reqwest::Client,
        base: &str,
        sub: &str,
        job: impl serde::Serialize,
    ) -> (u16, Value) {
        let body = json!({
            "sessionId": self.session, "sessionSecret": self.secret,
            "subscriptionId": sub, "jobId": job,
        });
        post(
            http,
            &format!("{base}/_api/subscribe-job"),
            &self.token,
            &body,
        )
        .await
    }
}

pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: &Value,
) -> (u16, Value) {
    let res = http
        .post(url)
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

/// Ends every connection of `role`, its LISTEN connection among them, after it was made
/// `NOLOGIN`: the node's pool keeps no logged-in connection to reconnect its listener with.
pub(crate) async fn cut_off(admin: &sqlx::PgPool, role: &str) {
    let (listening, killed): (i64, bool) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE query ILIKE '%LISTEN%'), bool_and(pg_terminate_backend(pid))
         FROM pg_stat_activity WHERE usename = $1",
    )
    .bind(role)
    .fetch_one(admin)
    .await
    .unwrap();
    assert_eq!((listening, killed), (1, true));
}

/// A superuser login role for one test, dropped afterwards (roles belong to the cluster, not
/// to the test's database).
pub(crate) struct TestRole(pub(crate) String);

impl TestRole {
    pub(crate) async fn new(admin: &sqlx::PgPool) -> TestRole {
        let name = format!("rt_gw_{}", uuid::Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE ROLE {name} LOGIN SUPERUSER"))
            .execute(admin)
            .await
            .unwrap();
        TestRole(name)
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        forge_test_support::clean_up(format!("DROP ROLE IF EXISTS {}", self.0));
    }
}
