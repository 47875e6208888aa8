//! The gateway's overhead on a trivial call: a `#[forge::query]` through `/_api/rpc/{fn}`
//! beside a bare axum handler that parses the same body and returns the same JSON, both on
//! loopback, driven by the same closed-loop load (N keep-alive connections, each sending its
//! next request when the previous answer arrived).
//!
//! ```sh
//! cargo run --release -p forge-gateway --example rpc_bench [-- --connections 64 --seconds 5]
//! ```
//!
//! Prints requests/s and latency p50/p99 of each, and the gateway's requests/s as a share of
//! the bare handler's (target: at least 70%). Servers and load share the machine, so compare
//! the rows of one run rather than runs on different machines.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::routing::post;
use axum::{Json, Router};
use forge::prelude::*;
use forge_gateway::{Gateway, GatewayConfig};
use forge_test_support::TestDb;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &[u8] = b"bench-secret-bench-secret-bench-secret";

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
struct Greeting {
    greeting: String,
}

#[forge::query(public)]
async fn bench_hello(_ctx: &QueryContext, name: String) -> Result<Greeting> {
    Ok(Greeting {
        greeting: format!("Hello, {name}!"),
    })
}

/// The same, for signed-in users: adds the token's verification.
#[forge::query]
async fn bench_hello_user(_ctx: &QueryContext, name: String) -> Result<Greeting> {
    Ok(Greeting {
        greeting: format!("Hello, {name}!"),
    })
}

#[derive(Deserialize)]
struct HelloArgs {
    name: String,
}

/// The bare handler: the same body in, the same JSON out.
async fn bare_hello(Json(args): Json<HelloArgs>) -> Json<Value> {
    Json(json!({ "data": { "greeting": format!("Hello, {}!", args.name) } }))
}

struct Options {
    connections: usize,
    seconds: u64,
}

fn options() -> Options {
    let mut o = Options {
        connections: 64,
        seconds: 5,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || -> u64 {
            it.next()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("{a} takes a number"))
        };
        match a.as_str() {
            "--connections" => o.connections = value() as usize,
            "--seconds" => o.seconds = value(),
            other => panic!("unknown option {other}: use --connections N, --seconds N"),
        }
    }
    o
}

#[tokio::main]
async fn main() {
    let o = options();
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();

    let gateway = Gateway::new(&forge, GatewayConfig::new(SECRET))
        .await
        .unwrap();
    let forge_addr = serve(gateway.router()).await;
    let bare_addr = serve(Router::new().route("/hello", post(bare_hello))).await;

    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({ "sub": "bench", "exp": exp }),
        &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap();

    let body = r#"{"name":"world"}"#;
    let bare = Target::new("bare axum handler", bare_addr, "/hello", None, body);
    let public = Target::new(
        "forge query (public)",
        forge_addr,
        "/_api/rpc/bench_hello",
        None,
        body,
    );
    let signed_in = Target::new(
        "forge query (bearer token)",
        forge_addr,
        "/_api/rpc/bench_hello_user",
        Some(&token),
        body,
    );

    // The same JSON from each.
    let expected = bare.once().await;
    for t in [&public, &signed_in] {
        assert_eq!(t.once().await, expected, "{} answers differently", t.name);
    }
    println!("answer: {}", String::from_utf8_lossy(&expected));
    println!(
        "{} connections, {} s each, {} cores\n",
        o.connections,
        o.seconds,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    let duration = Duration::from_secs(o.seconds);
    let mut rows = Vec::new();
    for t in [&bare, &public, &signed_in] {
        // Warm-up: connections, allocator, caches.
        t.load(o.connections, Duration::from_secs(1)).await;
        rows.push((t.name, t.load(o.connections, duration).await));
    }
    let base = rows[0].1.rps;
    println!(
        "{:<28} {:>12} {:>10} {:>10} {:>9}",
        "", "requests/s", "p50", "p99", "vs bare"
    );
    for (name, s) in &rows {
        println!(
            "{:<28} {:>12.0} {:>8.0}µs {:>8.0}µs {:>8.1}%",
            name,
            s.rps,
            s.p50_us,
            s.p99_us,
            100.0 * s.rps / base
        );
    }
    drop(db);
}

async fn serve(router: Router) -> SocketAddr {
    let listener = forge_gateway::bind("127.0.0.1:0".parse().unwrap(), 4096).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    addr
}

struct Target {
    name: &'static str,
    addr: SocketAddr,
    request: Vec<u8>,
}

struct Stats {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
}

impl Target {
    fn new(
        name: &'static str,
        addr: SocketAddr,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> Self {
        let auth = token
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes();
        Self {
            name,
            addr,
            request,
        }
    }

    /// One request; the answer's body.
    async fn once(&self) -> Vec<u8> {
        let mut conn = Conn::open(self.addr).await;
        conn.round_trip(&self.request).await
    }

    /// `connections` closed loops for `duration`.
    async fn load(&self, connections: usize, duration: Duration) -> Stats {
        let started = Instant::now();
        let deadline = started + duration;
        let tasks: Vec<_> = (0..connections)
            .map(|_| {
                let request = self.request.clone();
                let addr = self.addr;
                tokio::spawn(async move {
                    let mut conn = Conn::open(addr).await;
                    let mut latencies = Vec::with_capacity(100_000);
                    while Instant::now() < deadline {
                        let t0 = Instant::now();
                        conn.round_trip(&request).await;
                        latencies.push(t0.elapsed().as_micros() as u32);
                    }
                    latencies
                })
            })
            .collect();
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = started.elapsed().as_secs_f64();
        all.sort_unstable();
        let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize] as f64;
        Stats {
            rps: all.len() as f64 / elapsed,
            p50_us: pct(0.50),
            p99_us: pct(0.99),
        }
    }
}

/// A keep-alive HTTP/1.1 connection that reads answers by their `Content-Length`: as little
/// client work per request as possible, so the servers are what is measured.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: Vec::with_capacity(4096),
        }
    }

    async fn round_trip(&mut self, request: &[u8]) -> Vec<u8> {
        self.stream.write_all(request).await.unwrap();
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).unwrap();
                assert!(head.starts_with("HTTP/1.1 200"), "{head}");
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse().unwrap())
                    })
                    .expect("a Content-Length");
                let total = end + 4 + len;
                while self.buf.len() < total {
                    let n = self.stream.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "connection closed");
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                return self.buf[end + 4..total].to_vec();
            }
            let n = self.stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}
