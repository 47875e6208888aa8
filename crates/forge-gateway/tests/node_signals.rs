//! A node run by `forge_gateway::run` (what an application's `main` calls) and sent SIGTERM,
//! as a container runtime does: it stops claiming at once, lets the running job finish within
//! the shutdown grace and exits cleanly; a job that outlives the grace is interrupted and goes
//! back to the queue, and another node completes it. The node is this test binary run again as
//! a child process (the ignored test `signal_child_node`).

use std::process::Stdio;
use std::time::Duration;

use forge::prelude::*;
use forge_runtime::store::JobRow;
use forge_test_support::{gates, wait_for, TestDb};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);
/// Set in the child's environment: its shutdown grace in milliseconds (and that it is the
/// child, so running the ignored tests by hand does nothing).
const CHILD_GRACE_MS: &str = "FORGE_SIGNAL_TEST_GRACE_MS";

/// Reports 1%, then waits until its gate opens.
#[forge::job(max_attempts = 3)]
async fn sig_gated(ctx: &JobContext, gate: String) -> Result<String> {
    ctx.progress(1, "at the gate").await?;
    gates::wait(ctx.db(), &gate).await?;
    Ok(format!("attempt {}", ctx.attempt()))
}

#[forge::job]
async fn sig_quick(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

/// Not a test of its own: the node the tests below start and signal. Configured from the
/// environment like any node (`DATABASE_URL`, `FORGE_ROLES`, `FORGE_WORKER_CONCURRENCY`).
#[tokio::test]
#[ignore = "the child process of the other tests in this file"]
async fn signal_child_node() {
    let Ok(grace) = std::env::var(CHILD_GRACE_MS) else {
        return;
    };
    tracing_subscriber::fmt()
        .with_env_filter("info")
        .with_writer(std::io::stdout)
        .with_ansi(false)
        .init();
    let mut config = forge_gateway::Config::load().unwrap();
    config.worker.shutdown_grace = Duration::from_millis(grace.parse().unwrap());
    forge_gateway::run(config).await.unwrap();
}

struct Node {
    child: Child,
    log: Lines<BufReader<ChildStdout>>,
}

impl Node {
    async fn start(db: &TestDb, grace: Duration) -> Node {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["signal_child_node", "--exact", "--ignored", "--nocapture"])
            .env("DATABASE_URL", &db.url)
            .env("FORGE_ROLES", "worker")
            .env("FORGE_WORKER_CONCURRENCY", "2")
            .env(CHILD_GRACE_MS, grace.as_millis().to_string())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let log = BufReader::new(child.stdout.take().unwrap()).lines();
        Node { child, log }
    }

    fn sigterm(&self) {
        let pid = self.child.id().expect("still running").to_string();
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Reads the node's log until a line containing `text`.
    async fn logged(&mut self, text: &str) {
        let found = tokio::time::timeout(WAIT, async {
            while let Some(line) = self.log.next_line().await.unwrap() {
                if line.contains(text) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(found, Ok(true), "the node's log never said {text:?}");
    }

    async fn exit(mut self) -> std::process::ExitStatus {
        // Drain the log so that the child never blocks writing to it.
        tokio::spawn(async move { while let Ok(Some(_)) = self.log.next_line().await {} });
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the node to exit")
            .unwrap()
    }
}

async fn setup() -> (TestDb, Forge) {
    let db = TestDb::new().await;
    let forge = Forge::connect(&db.url).await.unwrap();
    gates::create(forge.pool()).await;
    (db, forge)
}

async fn wait_row(forge: &Forge, id: Uuid, what: &str, done: impl Fn(&JobRow) -> bool) -> JobRow {
    wait_for(what, WAIT, || async {
        let row = forge.job(id).await.unwrap().unwrap();
        done(&row).then_some(row)
    })
    .await
}

#[tokio::test]
async fn sigterm_stops_claiming_and_lets_the_running_job_finish() {
    let (db, forge) = setup().await;
    let running = forge.enqueue(sig_gated::request("a".into())).await.unwrap();
    let mut node = Node::start(&db, WAIT * 2).await;
    wait_row(&forge, running, "the job to start on the node", |r| {
        r.progress == Some(1.0)
    })
    .await;

    node.sigterm();
    node.logged("worker stopped claiming").await;
    // The node has a free slot, but no longer takes work; nor does it leave while its job runs.
    let later = forge.enqueue(sig_quick::request()).await.unwrap();
    assert!(node.child.try_wait().unwrap().is_none());

    gates::open(forge.pool(), &["a"]).await;
    assert!(node.exit().await.success());
    let done = forge.job(running).await.unwrap().unwrap();
    assert_eq!(done.status, JobStatus::Completed);
    assert_eq!(done.output, Some(serde_json::json!("attempt 1")));
    let untouched = forge.job(later).await.unwrap().unwrap();
    assert_eq!(
        (untouched.status, untouched.attempts),
        (JobStatus::Pending, 0)
    );
}

#[tokio::test]
async fn a_job_outliving_the_shutdown_grace_is_interrupted_and_run_again_elsewhere() {
    let (db, forge) = setup().await;
    let id = forge.enqueue(sig_gated::request("b".into())).await.unwrap();
    let mut node = Node::start(&db, Duration::from_millis(500)).await;
    wait_row(&forge, id, "the job to start on the node", |r| {
        r.progress == Some(1.0)
    })
    .await;

    node.sigterm();
    node.logged("shutdown grace period over").await;
    assert!(node.exit().await.success());
    // Back in the queue at once, the interrupted attempt counted.
    let r = forge.job(id).await.unwrap().unwrap();
    assert_eq!((r.status, r.attempts), (JobStatus::Retry, 1));

    let worker = forge.start_worker(WorkerConfig::default()).await.unwrap();
    gates::open(forge.pool(), &["b"]).await;
    let r = wait_row(&forge, id, "another node to complete it", |r| {
        r.status == JobStatus::Completed
    })
    .await;
    assert_eq!(r.output, Some(serde_json::json!("attempt 2")));
    worker.shutdown().await;
}
