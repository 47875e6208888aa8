//! The fault harness (issue 14): a private PostgreSQL cluster, node processes that each reach it
//! through their own [`Proxy`], SSE clients that follow jobs and workflows as the TypeScript
//! client does, invariant checks, and the scenarios built from them.
//!
//! * [`Harness`]: the cluster (restart, crash, outage) and the nodes (start, SIGKILL, SIGTERM,
//!   partition through their proxy);
//! * [`follower`]: the SSE clients;
//! * [`report`]: what a scenario measured and which invariants it broke;
//! * [`scenarios`]: each fault, in a short version (tests) and a full one (`forge-bench faults`).
//!
//! The node is the `fault-node` binary (`examples/fault-node`); callers pass its path.

pub mod follower;
pub mod report;
pub mod scenarios;

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use forge_devdb::{PrivateCluster, StopMode};
use serde_json::{json, Value};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::proxy::Proxy;

/// The secret the nodes sign tokens with (the node's default).
const SECRET: &str = "fault-node-secret-for-tests-only-0123456789";

/// Why the harness could not do what it was asked.
pub type HarnessError = Box<dyn std::error::Error + Send + Sync>;

/// How the harness runs its nodes.
#[derive(Debug, Clone)]
pub struct HarnessConfig {
    /// The `fault-node` binary.
    pub node_bin: PathBuf,
    pub nodes: usize,
    /// The nodes' job lease.
    pub lease: Duration,
    /// Jobs each node runs at once.
    pub concurrency: usize,
}

/// One node process and its proxy to the database.
pub struct Node {
    pub name: String,
    /// `http://127.0.0.1:PORT`: the same across restarts.
    pub url: String,
    port: u16,
    /// Everything between this node and PostgreSQL passes through it.
    pub proxy: Proxy,
    child: Option<Child>,
}

/// A private database and the nodes running against it. Dropping it kills the nodes, stops the
/// database and removes its folder (kept, and its path printed, when `FAULT_KEEP_DIR` is set:
/// the nodes' logs and the effects file are in it).
pub struct Harness {
    dir: PathBuf,
    config: HarnessConfig,
    pg: Arc<PrivateCluster>,
    /// A direct (unproxied) pool for the checks.
    pub db: PgPool,
    pub nodes: Vec<Node>,
    pub http: reqwest::Client,
    /// The file every node appends its jobs' side effects to (see `fault-node`).
    pub effects: PathBuf,
}

impl Drop for Harness {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(child) = &mut node.child {
                let _ = child.start_kill();
            }
        }
        // Before the folder goes: a server whose data folder vanished lingers for a minute.
        let _ = self.pg.stop(StopMode::Immediate);
        if std::env::var_os("FAULT_KEEP_DIR").is_some() {
            eprintln!("fault harness: kept {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

impl Harness {
    /// Makes the cluster and starts `config.nodes` nodes (the first alone, so that it runs the
    /// migrations before the others connect).
    pub async fn start(config: HarnessConfig) -> Result<Harness, HarnessError> {
        if !config.node_bin.is_file() {
            return Err(format!(
                "no node binary at {} (build it: cargo build -p fault-node)",
                config.node_bin.display()
            )
            .into());
        }
        let dir = std::env::temp_dir().join(format!("forge-faults-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let data = dir.join("pgdata");
        let pg = tokio::task::spawn_blocking(move || {
            PrivateCluster::start(&data, &["fsync=off", "max_connections=400"])
        })
        .await??;
        let pg = Arc::new(pg);
        let db = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(&pg.url("postgres"))?;
        let upstream = ([127, 0, 0, 1], pg.port()).into();
        let mut nodes = Vec::new();
        for i in 0..config.nodes {
            nodes.push(Node {
                name: format!("node{i}"),
                url: String::new(),
                port: 0,
                proxy: Proxy::start(upstream).await?,
                child: None,
            });
        }
        let mut h = Harness {
            effects: dir.join("effects.log"),
            dir,
            config,
            pg,
            db,
            nodes,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        };
        h.start_node(0).await?;
        for i in 1..h.nodes.len() {
            h.start_node(i).await?;
        }
        Ok(h)
    }

    /// Starts node `i` (again), on the port it had before; waits until it serves.
    pub async fn start_node(&mut self, i: usize) -> Result<(), HarnessError> {
        let node = &mut self.nodes[i];
        if node.port == 0 {
            node.port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("{}.log", node.name)))?;
        let db_url = format!("postgres://postgres@{}/postgres", node.proxy.addr());
        let mut child = Command::new(&self.config.node_bin)
            .env("DATABASE_URL", db_url)
            .env("PORT", node.port.to_string())
            .env("FAULT_NODE", &node.name)
            .env("FAULT_EFFECTS", &self.effects)
            .env("FAULT_LEASE_MS", self.config.lease.as_millis().to_string())
            .env("FAULT_CONCURRENCY", self.config.concurrency.to_string())
            .env(
                "RUST_LOG",
                std::env::var("FAULT_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("no stdout")?).lines();
        let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let url = match first {
            Ok(Ok(Some(line))) => line
                .strip_prefix("fault-node listening on ")
                .map(str::to_string)
                .ok_or_else(|| format!("{}: unexpected first line {line:?}", node.name))?,
            _ => {
                let _ = child.start_kill();
                return Err(format!(
                    "{} did not start within 30 s (see {})",
                    node.name,
                    self.dir.join(format!("{}.log", node.name)).display()
                )
                .into());
            }
        };
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        node.url = url;
        node.child = Some(child);
        Ok(())
    }

    /// SIGKILLs node `i` and waits until it is gone.
    pub async fn kill_node(&mut self, i: usize) -> Result<(), HarnessError> {
        if let Some(mut child) = self.nodes[i].child.take() {
            child.kill().await?;
        }
        Ok(())
    }

    /// SIGTERMs node `i` and waits (at most `within`) for it to exit; SIGKILLs it after that.
    /// Returns whether it exited by itself.
    pub async fn terminate_node(
        &mut self,
        i: usize,
        within: Duration,
    ) -> Result<bool, HarnessError> {
        let Some(mut child) = self.nodes[i].child.take() else {
            return Ok(true);
        };
        if let Some(pid) = child.id() {
            std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()?;
        }
        match tokio::time::timeout(within, child.wait()).await {
            Ok(status) => Ok(status?.success()),
            Err(_) => {
                child.kill().await?;
                Ok(false)
            }
        }
    }

    /// Stops PostgreSQL (`mode`), keeps it down for `down`, and starts it again.
    pub async fn bounce_database(
        &self,
        mode: StopMode,
        down: Duration,
    ) -> Result<(), HarnessError> {
        let pg = self.pg.clone();
        tokio::task::spawn_blocking(move || pg.stop(mode)).await??;
        tokio::time::sleep(down).await;
        let pg = self.pg.clone();
        tokio::task::spawn_blocking(move || pg.restart()).await??;
        Ok(())
    }

    /// The backend pids and proxy connection ids of the LISTEN connections, per node index.
    pub async fn listen_connections(&self) -> Result<Vec<(usize, i32, u64)>, HarnessError> {
        let rows: Vec<(i32, i32)> = sqlx::query_as(
            "SELECT pid, client_port FROM pg_stat_activity
             WHERE query ILIKE '%LISTEN%' AND client_port IS NOT NULL AND pid <> pg_backend_pid()",
        )
        .fetch_all(&self.db)
        .await?;
        let mut found = Vec::new();
        for (i, node) in self.nodes.iter().enumerate() {
            for c in node.proxy.connections() {
                for &(pid, port) in &rows {
                    if i32::from(c.upstream_local.port()) == port {
                        found.push((i, pid, c.id));
                    }
                }
            }
        }
        Ok(found)
    }

    /// A bearer token for `user`, valid for an hour.
    pub fn token(user: &str) -> String {
        let exp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
            + 3600;
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &json!({ "sub": user, "exp": exp }),
            &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes())
                .expect("an HS256 key from bytes"),
        )
        .expect("a token")
    }

    /// Calls `function` on node `i` as `user`; the `data` of the answer.
    pub async fn call(
        &self,
        i: usize,
        user: &str,
        function: &str,
        args: Value,
    ) -> Result<Value, HarnessError> {
        call(&self.http, &self.nodes[i].url, user, function, args).await
    }
}

/// `POST {base}/_api/rpc/{function}` as `user`; the `data` of the answer, or the status and
/// body as the error.
pub async fn call(
    http: &reqwest::Client,
    base: &str,
    user: &str,
    function: &str,
    args: Value,
) -> Result<Value, HarnessError> {
    let res = http
        .post(format!("{base}/_api/rpc/{function}"))
        .bearer_auth(Harness::token(user))
        .json(&args)
        .send()
        .await?;
    let status = res.status();
    let body: Value = res.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(format!("{function}: HTTP {status}: {body}").into());
    }
    Ok(body["data"].clone())
}
