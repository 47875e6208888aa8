//! Realtime delivery benchmarks. Each run creates its own database and starts the server under
//! test as a child process (a gateway + worker node), so that its memory can be measured apart
//! from the clients'.
//!
//! ```sh
//! cargo run --release -p forge-gateway --example realtime_bench -- latency
//! cargo run --release -p forge-gateway --example realtime_bench -- workflow [--steps 300]
//! cargo run --release -p forge-gateway --example realtime_bench -- load [--jobs 1000] [--seconds 10]
//! cargo run --release -p forge-gateway --example realtime_bench -- idle [--connections 10000]
//! cargo run --release -p forge-gateway --example realtime_bench -- storm [--clients 1000] [--jitter-ms 1000]
//! ```
//!
//! Latencies run from `ctx.progress()` returning in the server's job to the SSE event arriving
//! at the client, over real HTTP; the time from the call (which includes the write's commit) is
//! printed beside it. The job puts the wall-clock time of each call into its message, and the
//! time at which the call returned into the message of the next call, so the two processes
//! share no state.

#[path = "../tests/realtime_support/mod.rs"]
mod realtime_support;

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use forge::prelude::*;
use forge_test_support::sse::SseItem;
use forge_test_support::TestDb;
use realtime_support::Client;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Waits at its gate, then reports progress `count` times, `interval_ms` apart. Each message is
/// `<seq> <when the previous call returned> <when this call was made>` (µs since the epoch).
#[forge::job(max_attempts = 1)]
async fn bench_progress(
    ctx: &JobContext,
    gate: String,
    count: u32,
    interval_ms: u64,
) -> Result<u64> {
    loop {
        let open: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bench_gates WHERE name = $1)")
                .bind(&gate)
                .fetch_one(ctx.db())
                .await?;
        if open {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut returned = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for seq in 1..=count {
        tick.tick().await;
        let message = format!("{seq} {returned} {}", now_micros());
        ctx.progress(seq as f64 * 100.0 / count as f64, message)
            .await?;
        returned = now_micros();
    }
    Ok(returned)
}

/// Waits at its gate, then runs `steps` no-op steps, `interval_ms` apart. Each step is named
/// `<seq> <when ctx.step() was called>` (µs since the epoch), so a client sees from the state
/// alone how long the step took to reach it. (Names that change between runs would trip the
/// determinism guard on a replay; this workflow never suspends, so it is never replayed.)
#[forge::workflow]
async fn bench_flow(
    ctx: &WorkflowContext,
    gate: String,
    steps: u32,
    interval_ms: u64,
) -> Result<u32> {
    let db = ctx.db();
    ctx.step("gate", || async {
        loop {
            let open: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM bench_gates WHERE name = $1)")
                    .bind(&gate)
                    .fetch_one(db)
                    .await?;
            if open {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    for seq in 1..=steps {
        tokio::time::sleep(Duration::from_millis(interval_ms)).await;
        ctx.step(format!("{seq} {}", now_micros()), || async { Ok(()) })
            .await?;
    }
    Ok(steps)
}

fn raise_fd_limit() -> u64 {
    let (_, hard) = rlimit::Resource::NOFILE.get().unwrap();
    rlimit::Resource::NOFILE.set(hard, hard).unwrap();
    hard
}

fn main() {
    let mut args = std::env::args().skip(1);
    let cmd = args.next().unwrap_or_default();
    let opts: Vec<String> = args.collect();
    let opt = |name: &str, default: u64| -> u64 {
        opts.iter()
            .position(|a| a == name)
            .and_then(|i| opts.get(i + 1))
            .map(|v| v.parse().expect("a number"))
            .unwrap_or(default)
    };
    raise_fd_limit();
    let rt = tokio::runtime::Runtime::new().unwrap();
    match cmd.as_str() {
        "serve" => rt.block_on(serve()),
        "latency" => rt.block_on(latency(opt("--samples", 500) as usize)),
        "workflow" => rt.block_on(workflow(opt("--steps", 300) as u32)),
        "load" => rt.block_on(load(opt("--jobs", 1000) as usize, opt("--seconds", 10))),
        "idle" => rt.block_on(idle(opt("--connections", 10_000) as usize)),
        "storm" => rt.block_on(storm(
            opt("--clients", 1000) as usize,
            opt("--jitter-ms", 1000),
        )),
        _ => {
            eprintln!("usage: realtime_bench latency|workflow|load|idle|storm [options]");
            std::process::exit(2);
        }
    }
}

/// The server under test: one gateway + worker node.
async fn serve() {
    let url = std::env::var("DATABASE_URL").unwrap();
    let forge = Forge::connect_with(&url, 40).await.unwrap();
    let cfg = WorkerConfig {
        concurrency: 2_000,
        ..WorkerConfig::default()
    };
    let _worker = forge.start_worker(cfg).await.unwrap();
    let (base, _realtime) = realtime_support::serve(&forge, Default::default()).await;
    println!("LISTENING {base}");
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while stdin.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
}

struct Server {
    child: Child,
    base: String,
    forge: Forge,
    _db: TestDb,
}

impl Server {
    async fn start() -> Server {
        let db = TestDb::new().await;
        let forge = Forge::connect(&db.url).await.unwrap();
        sqlx::query("CREATE TABLE bench_gates (name text PRIMARY KEY)")
            .execute(forge.pool())
            .await
            .unwrap();
        let mut child = Command::new(std::env::current_exe().unwrap())
            .arg("serve")
            .env("DATABASE_URL", &db.url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next_line().await.unwrap().unwrap();
        let base = line.strip_prefix("LISTENING ").unwrap().to_string();
        Server {
            child,
            base,
            forge,
            _db: db,
        }
    }

    /// Resident memory of the server process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.child.id().unwrap())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap()
    }

    async fn open_gate(&self, gate: &str) {
        sqlx::query("INSERT INTO bench_gates VALUES ($1)")
            .bind(gate)
            .execute(self.forge.pool())
            .await
            .unwrap();
    }
}

async fn connect(http: &reqwest::Client, base: &str) -> Client {
    Client::connect(http, base, &realtime_support::token("bench", &[])).await
}

async fn subscribe(http: &reqwest::Client, base: &str, c: &Client, job: uuid::Uuid) -> Value {
    let (status, body) = c.subscribe_job(http, base, "s", job).await;
    assert_eq!(status, 200, "{body}");
    body["data"].clone()
}

/// What one client saw: arrival times by seq, the return times reported, and the end.
#[derive(Default)]
struct Seen {
    arrived: Vec<Option<u64>>,
    returned: Vec<Option<u64>>,
    called: Vec<Option<u64>>,
    completed: bool,
}

/// Reads a client's job events until completed, recording arrival times (µs, wall clock).
async fn follow(mut c: Client, count: usize) -> Seen {
    let mut seen = Seen {
        arrived: vec![None; count + 1],
        returned: vec![None; count + 1],
        called: vec![None; count + 1],
        completed: false,
    };
    loop {
        let Some((_, item)) = c.stream.next_item(Duration::from_secs(60)).await else {
            return seen;
        };
        let at = now_micros();
        let SseItem::Event { data, .. } = item else {
            continue;
        };
        let v: Value = serde_json::from_str(&data).unwrap();
        let st = &v["state"];
        if st["status"] == "completed" {
            // The output is when the last call returned.
            seen.returned[count] = st["output"].as_u64();
            seen.completed = true;
            return seen;
        }
        let Some(msg) = st["message"].as_str() else {
            continue;
        };
        let parts: Vec<&str> = msg.split(' ').collect();
        let (seq, prev): (usize, u64) = (parts[0].parse().unwrap(), parts[1].parse().unwrap());
        seen.arrived[seq] = Some(at);
        seen.called[seq] = Some(parts[2].parse().unwrap());
        if seq > 1 {
            seen.returned[seq - 1] = Some(prev);
        }
    }
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

/// Latencies in µs of every progress event whose return time is known, and how many events
/// arrived of those sent.
fn latencies(seen: &[Seen], count: usize) -> (Vec<u64>, Vec<u64>, usize, usize, usize) {
    let mut lat = Vec::new();
    let mut from_call = Vec::new();
    let mut arrived = 0;
    let mut early = 0;
    for s in seen {
        for seq in 1..=count {
            if let Some(a) = s.arrived[seq] {
                arrived += 1;
                if let Some(c) = s.called[seq] {
                    from_call.push(a.saturating_sub(c));
                }
                if let Some(r) = s.returned[seq] {
                    // The notification can reach the client before the worker has the commit's
                    // acknowledgement: that is zero latency, not a negative one.
                    if a < r {
                        early += 1;
                    }
                    lat.push(a.saturating_sub(r));
                }
            }
        }
    }
    lat.sort_unstable();
    from_call.sort_unstable();
    (lat, from_call, arrived, seen.len() * count, early)
}

async fn latency(samples: usize) {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let c = connect(&http, &server.base).await;
    let job = server
        .forge
        .enqueue(bench_progress::request("l".into(), samples as u32, 20).owner("bench"))
        .await
        .unwrap();
    subscribe(&http, &server.base, &c, job).await;
    server.open_gate("l").await;
    let seen = follow(c, samples).await;
    assert!(seen.completed, "the client did not see the job complete");
    let (lat, from_call, arrived, sent, early) = latencies(&[seen], samples);
    println!("progress latency, one job reporting every 20 ms to one SSE client:");
    println!("  events delivered: {arrived}/{sent}");
    println!(
        "  p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} samples, {early} arrived before progress() returned)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        lat.len()
    );
    print_from_call(&from_call);
}

/// One workflow running no-op steps 20 ms apart, followed by one SSE client: the time from a
/// step's `ctx.step()` call (its start is written and committed, then published with the
/// workflow's state) to the client seeing the step.
async fn workflow(steps: u32) {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let mut c = connect(&http, &server.base).await;
    let id = server
        .forge
        .start_workflow(bench_flow::request("w".into(), steps, 20).owner("bench"))
        .await
        .unwrap();
    let body = serde_json::json!({
        "sessionId": c.session, "sessionSecret": c.secret,
        "subscriptionId": "w", "workflowId": id,
    });
    let (status, answer) = realtime_support::post(
        &http,
        &format!("{}/_api/subscribe-workflow", server.base),
        &c.token,
        &body,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    server.open_gate("w").await;
    // The first arrival of each step, by its sequence number.
    let mut arrived: Vec<Option<u64>> = vec![None; steps as usize + 1];
    let mut events = 0;
    let mut lat = Vec::new();
    let completed = loop {
        let Some((_, item)) = c.stream.next_item(Duration::from_secs(60)).await else {
            break false;
        };
        let at = now_micros();
        let SseItem::Event { data, .. } = item else {
            continue;
        };
        events += 1;
        let v: Value = serde_json::from_str(&data).unwrap();
        let st = &v["state"];
        for step in st["steps"].as_array().unwrap() {
            let name = step["name"].as_str().unwrap();
            let Some((seq, called)) = name.split_once(' ') else {
                continue;
            };
            let seq: usize = seq.parse().unwrap();
            if arrived[seq].is_none() {
                arrived[seq] = Some(at);
                lat.push(at.saturating_sub(called.parse().unwrap()));
            }
        }
        if st["status"] == "completed" {
            break true;
        }
    };
    assert!(completed, "the client did not see the workflow complete");
    lat.sort_unstable();
    println!("workflow step latency, one workflow running a step every 20 ms, one SSE client:");
    println!(
        "  steps seen: {}/{steps} in {events} events",
        arrived.iter().flatten().count()
    );
    println!(
        "  from the ctx.step() call (includes its commit): p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
    );
}

/// The latency from the `progress()` call, which includes the write's commit.
fn print_from_call(from_call: &[u64]) {
    println!(
        "  from the progress() call (includes its commit): p50 {:.2} ms  p99 {:.2} ms",
        percentile(from_call, 0.5),
        percentile(from_call, 0.99)
    );
}

async fn load(jobs: usize, seconds: u64) {
    let count = (seconds * 10) as usize;
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let rss_before = server.rss_kib();
    let mut clients = Vec::with_capacity(jobs);
    for _ in 0..jobs {
        clients.push(connect(&http, &server.base).await);
    }
    let rss_connected = server.rss_kib();
    let reqs =
        (0..jobs).map(|_| bench_progress::request("load".into(), count as u32, 100).owner("bench"));
    let ids = server.forge.enqueue_many(reqs).await.unwrap();
    for (c, id) in clients.iter().zip(&ids) {
        subscribe(&http, &server.base, c, *id).await;
    }
    let rss_subscribed = server.rss_kib();
    let started = Instant::now();
    server.open_gate("load").await;
    let peak = Arc::new(Mutex::new(0u64));
    let watcher = {
        let pid = server.child.id().unwrap();
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                    if let Some(v) = s.lines().find_map(|l| l.strip_prefix("VmRSS:")) {
                        let kib: u64 = v.trim().trim_end_matches(" kB").parse().unwrap_or(0);
                        let mut p = peak.lock().unwrap();
                        *p = (*p).max(kib);
                    }
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(follow(c, count)))
        .collect();
    let mut seen = Vec::with_capacity(jobs);
    for t in tasks {
        seen.push(t.await.unwrap());
    }
    watcher.abort();
    let elapsed = started.elapsed();
    let completed = seen.iter().filter(|s| s.completed).count();
    let (lat, from_call, arrived, sent, early) = latencies(&seen, count);
    println!("load: {jobs} jobs x 10 progress/s x {seconds} s, one SSE client per job, one node:");
    println!(
        "  clients that saw their job complete: {completed}/{jobs}  (run took {:.1} s)",
        elapsed.as_secs_f64()
    );
    println!(
        "  progress events delivered: {arrived}/{sent} ({:.2}%)",
        arrived as f64 * 100.0 / sent as f64
    );
    println!(
        "  latency p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms  ({} samples, {early} before progress() returned)",
        percentile(&lat, 0.5),
        percentile(&lat, 0.9),
        percentile(&lat, 0.99),
        percentile(&lat, 1.0),
        lat.len()
    );
    print_from_call(&from_call);
    println!(
        "  server memory: {} KiB before, +{:.1} KiB per connection after connecting, +{:.1} KiB per connection once subscribed, peak {} KiB under load",
        rss_before,
        (rss_connected.saturating_sub(rss_before)) as f64 / jobs as f64,
        (rss_subscribed.saturating_sub(rss_before)) as f64 / jobs as f64,
        *peak.lock().unwrap()
    );
}

async fn idle(connections: usize) {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let rss_before = server.rss_kib();
    let started = Instant::now();
    let mut clients = Vec::with_capacity(connections);
    let mut batch = Vec::new();
    for i in 0..connections {
        let (http, base) = (http.clone(), server.base.clone());
        batch.push(tokio::spawn(async move { connect(&http, &base).await }));
        if batch.len() == 500 || i + 1 == connections {
            for t in batch.drain(..) {
                clients.push(t.await.unwrap());
            }
        }
    }
    let took = started.elapsed();
    // Let allocator caches and hyper's buffers settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = server.rss_kib();
    println!(
        "idle: {connections} SSE connections held by one node (opened in {:.1} s):",
        took.as_secs_f64()
    );
    println!(
        "  server memory: {rss_before} KiB before, {rss_after} KiB after: {:.1} KiB per connection",
        (rss_after.saturating_sub(rss_before)) as f64 / connections as f64
    );
    drop(clients);
}

/// TcpExt counters of the kernel that count connection attempts the listen queue refused.
fn listen_drops() -> (u64, u64) {
    let s = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = s.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return (0, 0);
    };
    let get = |key: &str| -> u64 {
        let i = names.split_whitespace().position(|n| n == key);
        i.and_then(|i| values.split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (get("ListenOverflows"), get("ListenDrops"))
}

async fn storm(clients: usize, jitter_ms: u64) {
    let server = Server::start().await;
    let http = reqwest::Client::new();
    let reqs = (0..clients).map(|_| bench_progress::request("never".into(), 1, 1).owner("bench"));
    let ids = server.forge.enqueue_many(reqs).await.unwrap();
    let mut connected = Vec::with_capacity(clients);
    for id in &ids {
        let c = connect(&http, &server.base).await;
        subscribe(&http, &server.base, &c, *id).await;
        connected.push(c);
    }
    let drops_before = listen_drops();
    // Every client loses its connection at the same moment, then reconnects after a jittered
    // delay (the client's backoff: up to 1 s for the first retry by default; 0 makes them all
    // come back at once) and subscribes again.
    drop(connected);
    let started = Instant::now();
    let tasks: Vec<_> = ids
        .iter()
        .map(|id| {
            let (http, base, id) = (http.clone(), server.base.clone(), *id);
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(fastrand::u64(0..=jitter_ms))).await;
                let c = connect(&http, &base).await;
                let state = subscribe(&http, &base, &c, id).await;
                assert_ne!(state["status"], "not_found");
                (started.elapsed(), c)
            })
        })
        .collect();
    let mut done = Vec::with_capacity(clients);
    let mut keep = Vec::with_capacity(clients);
    for t in tasks {
        let (at, c) = t.await.unwrap();
        done.push(at.as_micros() as u64);
        keep.push(c);
    }
    done.sort_unstable();
    let drops_after = listen_drops();
    println!(
        "reconnect storm: {clients} clients dropped at once, reconnecting after 0-{jitter_ms} ms:"
    );
    println!(
        "  all re-registered after {:.2} s  (p50 {:.0} ms, p99 {:.0} ms after the drop)",
        *done.last().unwrap() as f64 / 1e6,
        percentile(&done, 0.5),
        percentile(&done, 0.99)
    );
    println!(
        "  listen queue overflows during the storm: {}  (drops {}): no SYN was retried when both are 0",
        drops_after.0 - drops_before.0,
        drops_after.1 - drops_before.1
    );
    let stats_ok = keep.len() == clients;
    println!(
        "  sessions re-registered: {}",
        if stats_ok { clients } else { keep.len() }
    );
}
