//! The caps on event streams: per node, per user and per client address. A stream over a cap
//! is refused with `429 too_many_sessions` and `Retry-After`; a closed stream frees its slot.

mod realtime_support;

use std::net::IpAddr;
use std::time::Duration;

use forge::prelude::*;
use forge_gateway::GatewayConfig;
use forge_test_support::sse::SseStream;
use forge_test_support::{wait_for, TestDb};
use realtime_support::SECRET;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(15);

fn token(user: &str) -> String {
    realtime_support::token(user, &[])
}

/// A client whose connections come from `ip` (any address of 127.0.0.0/8 reaches the node).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(ip.parse::<IpAddr>().unwrap())
        .build()
        .unwrap()
}

async fn open(http: &reqwest::Client, base: &str, user: Option<&str>) -> SseStream {
    let token = user.map(token);
    let mut stream = SseStream::open(http, &format!("{base}/_api/events"), token.as_deref())
        .await
        .unwrap_or_else(|e| panic!("stream of {user:?} refused: {e:?}"));
    let (_, name, _) = stream.next_event(WAIT, "the session event").await;
    assert_eq!(name, "session");
    stream
}

/// Opens a stream that must be refused; returns the error's message.
async fn refused(http: &reqwest::Client, base: &str, user: Option<&str>) -> String {
    let mut req = http.get(format!("{base}/_api/events"));
    if let Some(user) = user {
        req = req.bearer_auth(token(user));
    }
    let res = req.send().await.unwrap();
    assert_eq!(res.status().as_u16(), 429, "stream of {user:?}");
    assert_eq!(
        res.headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "too_many_sessions", "{body}");
    body["error"]["message"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn streams_over_a_cap_are_refused_until_one_closes() {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    let mut config = GatewayConfig::new(SECRET);
    config.realtime.max_sessions = 4;
    config.realtime.max_sessions_per_user = 2;
    config.realtime.max_sessions_per_ip = 3;
    // A closed stream is noticed at its next write: the keep-alive comment, made frequent.
    config.realtime.keep_alive = Duration::from_millis(100);
    let (base, realtime) = realtime_support::serve_gateway(&forge, config).await;
    let one = client_from("127.0.0.1");
    let two = client_from("127.0.0.2");

    let alice_1 = open(&one, &base, Some("alice")).await;
    let _alice_2 = open(&one, &base, Some("alice")).await;
    let m = refused(&one, &base, Some("alice")).await;
    assert!(m.contains("user"), "{m}");

    // A third stream from 127.0.0.1 fills its address's slots: anonymous streams count too.
    let _bob = open(&one, &base, Some("bob")).await;
    let m = refused(&one, &base, None).await;
    assert!(m.contains("address"), "{m}");

    // Another address has slots, until the node is full.
    let _anon = open(&two, &base, None).await;
    let m = refused(&two, &base, Some("carol")).await;
    assert!(m.contains("node"), "{m}");
    assert_eq!(realtime.stats().sessions, 4);

    // Closing a stream frees its slots (node and user).
    drop(alice_1);
    wait_for("the closed stream's session to end", WAIT, || async {
        (realtime.stats().sessions == 3).then_some(())
    })
    .await;
    let _alice_3 = open(&two, &base, Some("alice")).await;
}

#[tokio::test]
async fn anonymous_streams_end_after_their_lifetime_and_reconnect() {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    let lifetime = Duration::from_millis(500);
    let mut config = GatewayConfig::new(SECRET);
    config.realtime.anonymous_session_lifetime = lifetime;
    config.realtime.keep_alive = Duration::from_millis(100);
    let (base, realtime) = realtime_support::serve_gateway(&forge, config).await;
    let http = reqwest::Client::new();

    let opened = std::time::Instant::now();
    let mut signed_in = open(&http, &base, Some("alice")).await;
    let mut anonymous = open(&http, &base, None).await;
    assert!(
        anonymous.ended_within(WAIT).await,
        "the anonymous stream ended"
    );
    assert!(opened.elapsed() >= lifetime, "not before its lifetime");
    // The signed-in stream is not affected (it lives as long as its token).
    assert!(!signed_in.ended_within(lifetime).await);
    wait_for("the anonymous session to be gone", WAIT, || async {
        (realtime.stats().sessions == 1).then_some(())
    })
    .await;
    // The client reconnects: a new session.
    let _again = open(&http, &base, None).await;
    assert_eq!(realtime.stats().sessions, 2);
}
