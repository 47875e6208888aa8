//! The scenarios of issue 14. Each starts from a loaded system (jobs running on every node, two
//! in three reporting progress, workflows waiting for an event, one SSE client per node following what was
//! started through that node), injects one fault, measures the time to recovery, lets the
//! workflows go on, waits for everything to finish and checks the invariants.
//!
//! [`Size::short`] fits a test (under 30 s each); [`Size::full`] is what `forge-bench faults`
//! runs.

use std::path::Path;
use std::time::{Duration, Instant};

use forge_devdb::StopMode;
use serde_json::json;

use super::follower::{Follower, Kind, JOB_TERMINAL, WORKFLOW_TERMINAL};
use super::report::{self, Report};
use super::{Harness, HarnessConfig, HarnessError};

/// The faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// `pg_ctl stop -m fast`, then start at once.
    DbRestart,
    /// `pg_ctl stop -m immediate` (no checkpoint, recovery at start), then start at once.
    DbCrash,
    /// The database stopped for [`Size::outage`], longer than the lease.
    DbOutage,
    /// Every node's LISTEN connection ended by `pg_terminate_backend`.
    ListenTerminated,
    /// Node 0's LISTEN connection blackholed for good (half-open: no bytes, no RST); the rest of
    /// its connections keep working.
    ListenHalfOpen,
    /// Node 1 SIGKILLed and started again.
    NodeKilled,
    /// Node 1 cut off from the database (all its connections blackholed) for
    /// [`Size::outage`], longer than the lease, while its jobs keep running; then healed.
    NodePartitioned,
    /// Node 1 sent SIGTERM while it runs jobs, then started again once it exited.
    NodeTerminated,
    /// Every node in turn sent SIGTERM and started again once it exited (a rolling restart,
    /// as a deploy does it), while jobs run and clients follow them.
    RollingRestart,
}

impl Scenario {
    pub const ALL: [Scenario; 9] = [
        Scenario::DbRestart,
        Scenario::DbCrash,
        Scenario::DbOutage,
        Scenario::ListenTerminated,
        Scenario::ListenHalfOpen,
        Scenario::NodeKilled,
        Scenario::NodePartitioned,
        Scenario::NodeTerminated,
        Scenario::RollingRestart,
    ];

    /// The node the fault hits (node 0 when it hits the database): recovery is measured
    /// through it.
    pub fn faulted_node(self) -> usize {
        match self {
            Scenario::NodeKilled | Scenario::NodePartitioned | Scenario::NodeTerminated => 1,
            // The last one restarted.
            Scenario::RollingRestart => 2,
            _ => 0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::DbRestart => "database fast restart",
            Scenario::DbCrash => "database crash",
            Scenario::DbOutage => "database outage > lease",
            Scenario::ListenTerminated => "LISTEN terminated",
            Scenario::ListenHalfOpen => "LISTEN half-open",
            Scenario::NodeKilled => "node SIGKILL + restart",
            Scenario::NodePartitioned => "node partitioned > lease",
            Scenario::NodeTerminated => "node SIGTERM under load",
            Scenario::RollingRestart => "rolling restart under load",
        }
    }
}

/// How big a scenario is.
#[derive(Debug, Clone)]
pub struct Size {
    pub nodes: usize,
    pub jobs: usize,
    pub workflows: usize,
    /// Each job reports progress `steps` times, `step_ms` apart.
    pub steps: u32,
    pub step_ms: u64,
    pub concurrency: usize,
    pub lease: Duration,
    /// How long a database outage or a partition lasts.
    pub outage: Duration,
    /// How long everything may take to finish after the fault.
    pub settle: Duration,
}

impl Size {
    /// For tests: 3 nodes, 45 jobs of 6 s (so that a partitioned node's jobs outlive its
    /// lease), 6 workflows, lease 2 s, outage 5 s.
    pub fn short() -> Size {
        Size {
            nodes: 3,
            jobs: 45,
            workflows: 6,
            steps: 24,
            step_ms: 250,
            concurrency: 32,
            lease: Duration::from_secs(2),
            outage: Duration::from_secs(5),
            settle: Duration::from_secs(20),
        }
    }

    /// For `forge-bench faults`: 3 nodes, 300 jobs of 10 s, 30 workflows, lease 6 s, outage
    /// 15 s. Each node runs 128 jobs at once, so that every job runs from the start and the
    /// recovery probe measures the fault, not a wait for a free slot.
    pub fn full() -> Size {
        Size {
            nodes: 3,
            jobs: 300,
            workflows: 30,
            steps: 40,
            step_ms: 250,
            concurrency: 128,
            lease: Duration::from_secs(6),
            outage: Duration::from_secs(15),
            settle: Duration::from_secs(120),
        }
    }
}

fn user(i: usize) -> String {
    format!("user{i}")
}

/// Runs `scenario` against nodes running `node_bin` and reports what it measured.
pub async fn run(scenario: Scenario, node_bin: &Path, size: &Size) -> Result<Report, HarnessError> {
    let mut h = Harness::start(HarnessConfig {
        node_bin: node_bin.to_path_buf(),
        nodes: size.nodes,
        lease: size.lease,
        concurrency: size.concurrency,
    })
    .await?;
    let mut report = Report {
        scenario: scenario.name().into(),
        ..Report::default()
    };
    // Streams live long: their client has no overall timeout.
    let sse_http = reqwest::Client::new();
    let followers: Vec<Follower> = h
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| Follower::start(sse_http.clone(), &n.url, &user(i)))
        .collect();
    for f in &followers {
        if !f.wait_open(Duration::from_secs(10)).await {
            return Err("an SSE client could not open its stream".into());
        }
    }

    let mut jobs = Vec::new();
    for k in 0..size.jobs {
        let i = k % size.nodes;
        // Every third job of each node works without reporting progress, so never waits on the
        // database.
        let args = json!({ "steps": size.steps, "stepMs": size.step_ms, "quiet": (k / size.nodes) % 3 == 2 });
        let data = h.call(i, &user(i), "fault_export", args).await?;
        let id = data["jobId"].as_str().ok_or("no jobId")?.to_string();
        followers[i].follow(Kind::Job, &id).await;
        jobs.push(id);
    }
    let mut workflows = Vec::new();
    for k in 0..size.workflows {
        let i = k % size.nodes;
        let data = h
            .call(
                i,
                &user(i),
                "fault_flow",
                json!({ "tag": format!("wf{k}") }),
            )
            .await?;
        let id = data["workflowId"]
            .as_str()
            .ok_or("no workflowId")?
            .to_string();
        followers[i].follow(Kind::Workflow, &id).await;
        workflows.push(id);
    }
    // Loaded: most of what can run at once is running.
    let want = size.jobs.min(size.nodes * size.concurrency) as i64 / 2;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let running: i64 =
            sqlx::query_scalar("SELECT count(*) FROM forge.jobs WHERE status = 'running'")
                .fetch_one(&h.db)
                .await?;
        if running >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (stop_calls, stopped) = tokio::sync::oneshot::channel();
    let calls = tokio::spawn(calls_during_fault(
        h.http.clone(),
        h.nodes[scenario.faulted_node()].url.clone(),
        stopped,
    ));
    inject(scenario, &mut h, size).await?;
    let fault_over = Instant::now();
    let _ = stop_calls.send(());
    let answers = calls.await?;
    report.calls_during_fault = answers.len();
    for (answer, took) in answers {
        *report.answers_during_fault.entry(answer).or_default() += 1;
        report.slowest_answer_during_fault = report.slowest_answer_during_fault.max(took);
    }

    report.recovery = recovery(&h, scenario.faulted_node(), size.settle).await;

    // The workflows may go on now.
    for (k, id) in workflows.iter().enumerate() {
        let deadline = Instant::now() + size.settle;
        loop {
            match h
                .call(0, &user(k), "fault_go", json!({ "workflowId": id }))
                .await
            {
                Ok(_) => break,
                Err(e) if Instant::now() < deadline => {
                    *report.failed_calls.entry(e.to_string()).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    // Everything final in the database, then every client caught up (both bounded).
    let deadline = fault_over + size.settle;
    while Instant::now() < deadline {
        let open: i64 = sqlx::query_scalar(
            "SELECT (SELECT count(*) FROM forge.jobs
                     WHERE id::text = ANY($1) AND status <> ALL($3))
                  + (SELECT count(*) FROM forge.workflows
                     WHERE id::text = ANY($2) AND status <> ALL($4))",
        )
        .bind(&jobs)
        .bind(&workflows)
        .bind(JOB_TERMINAL)
        .bind(WORKFLOW_TERMINAL)
        .fetch_one(&h.db)
        .await
        .unwrap_or(i64::MAX);
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let caught_up = Instant::now() + Duration::from_secs(5);
    while Instant::now() < caught_up {
        let all_seen = followers
            .iter()
            .all(|f| f.followed().values().all(|x| x.saw_terminal()));
        if all_seen {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    report::check(
        &mut report,
        &h.db,
        &h.effects,
        &jobs,
        &workflows,
        &followers,
    )
    .await?;
    Ok(report)
}

async fn inject(scenario: Scenario, h: &mut Harness, size: &Size) -> Result<(), HarnessError> {
    match scenario {
        Scenario::DbRestart => h.bounce_database(StopMode::Fast, Duration::ZERO).await?,
        Scenario::DbCrash => {
            h.bounce_database(StopMode::Immediate, Duration::ZERO)
                .await?
        }
        Scenario::DbOutage => h.bounce_database(StopMode::Fast, size.outage).await?,
        Scenario::ListenTerminated => {
            let listeners = h.listen_connections().await?;
            if listeners.len() < h.nodes.len() {
                return Err(format!(
                    "found {} LISTEN connections for {} nodes",
                    listeners.len(),
                    h.nodes.len()
                )
                .into());
            }
            for (_, pid, _) in listeners {
                sqlx::query("SELECT pg_terminate_backend($1)")
                    .bind(pid)
                    .execute(&h.db)
                    .await?;
            }
        }
        Scenario::ListenHalfOpen => {
            let listeners = h.listen_connections().await?;
            let (_, _, conn) = listeners
                .into_iter()
                .find(|(node, _, _)| *node == 0)
                .ok_or("node 0 has no LISTEN connection")?;
            h.nodes[0].proxy.blackhole_connection(conn);
        }
        Scenario::NodeKilled => {
            h.kill_node(1).await?;
            h.start_node(1).await?;
        }
        Scenario::NodePartitioned => {
            h.nodes[1].proxy.blackhole();
            tokio::time::sleep(size.outage).await;
            h.nodes[1].proxy.heal();
        }
        Scenario::NodeTerminated => {
            h.terminate_node(1, Duration::from_secs(30)).await?;
            h.start_node(1).await?;
        }
        Scenario::RollingRestart => {
            for node in 0..h.nodes.len() {
                h.terminate_node(node, Duration::from_secs(30)).await?;
                h.start_node(node).await?;
            }
        }
    }
    Ok(())
}

/// Starts one-step jobs through `base`, one after another, until `stop`: how each start was
/// answered and how long the answer took.
async fn calls_during_fault(
    http: reqwest::Client,
    base: String,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<(String, Duration)> {
    let mut answers = Vec::new();
    loop {
        let t0 = Instant::now();
        let call = http
            .post(format!("{base}/_api/rpc/fault_export"))
            .bearer_auth(Harness::token("probe"))
            .json(&json!({ "steps": 1, "stepMs": 1, "quiet": false }))
            .send();
        let answer = tokio::select! {
            r = call => match r {
                Ok(res) => format!("HTTP {}", res.status().as_u16()),
                Err(_) => "network error".to_string(),
            },
            // A call still waiting when the fault ends counts for as long as it waited.
            _ = &mut stop => {
                answers.push(("still waiting when the fault ended".to_string(), t0.elapsed()));
                return answers;
            }
        };
        answers.push((answer, t0.elapsed()));
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(200)) => {}
            _ = &mut stop => return answers,
        }
    }
}

/// Starts a one-step job on node `node` (again and again until one is accepted) and waits
/// until it completes: the time from now to then.
async fn recovery(h: &Harness, node: usize, within: Duration) -> Option<Duration> {
    let from = Instant::now();
    let deadline = from + within;
    while Instant::now() < deadline {
        let started = h
            .call(
                node,
                "probe",
                "fault_export",
                json!({ "steps": 1, "stepMs": 1, "quiet": false }),
            )
            .await;
        let Ok(data) = started else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let id = data["jobId"].as_str()?.to_string();
        while Instant::now() < deadline {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status FROM forge.jobs WHERE id::text = $1")
                    .bind(&id)
                    .fetch_optional(&h.db)
                    .await
                    .ok()
                    .flatten();
            if status.as_deref() == Some("completed") {
                return Some(from.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
    None
}
