//! A node for fault tests: workers and a gateway on one port, with a job that reports progress
//! and records each attempt's start and end in an append-only file (a side effect outside the
//! database, so it survives outages and kills), and a workflow that waits for an event.
//!
//! Settings (environment): `DATABASE_URL` (required; the harness points it at the node's own
//! proxy), `PORT` (0: any free port), `FAULT_NODE` (the node's name in the effects file),
//! `FAULT_EFFECTS` (the effects file), `FAULT_LEASE_MS` (6000), `FAULT_CONCURRENCY` (64),
//! `FAULT_JWT_SECRET`. Prints `fault-node listening on http://ADDR` once it serves; stops on
//! SIGTERM or Ctrl-C like any node.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use forge::prelude::*;
use forge::workflow::send_event;
use forge_gateway::{Gateway, GatewayConfig};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Appends `kind job attempt node unix_ms mode` (`kind`: start, step, end; `mode`: quiet or
/// progress) to the effects file. One `write` of a short line
/// with `O_APPEND`: lines of several nodes never interleave, and a SIGKILL loses none.
fn effect(kind: &str, job: Uuid, attempt: u32, quiet: bool) {
    let (Ok(path), Ok(node)) = (std::env::var("FAULT_EFFECTS"), std::env::var("FAULT_NODE")) else {
        return;
    };
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mode = if quiet { "quiet" } else { "progress" };
    let line = format!("{kind} {job} {attempt} {node} {ms} {mode}\n");
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(line.as_bytes()));
    if let Err(e) = written {
        eprintln!("fault-node: cannot record an effect in {path}: {e}");
    }
}

/// An export: `steps` steps of `step_ms` each, each recorded as an effect (so that the harness
/// sees an attempt that keeps working after another attempt of the job started). Reports
/// progress after each step unless `quiet`: a quiet job never waits on the database, as a job
/// busy with work of its own would not.
#[forge::job(max_attempts = 5, timeout = "10m")]
async fn fault_export(ctx: &JobContext, steps: u32, step_ms: u64, quiet: bool) -> Result<u32> {
    effect("start", ctx.job_id(), ctx.attempt(), quiet);
    for i in 1..=steps {
        tokio::time::sleep(Duration::from_millis(step_ms)).await;
        effect("step", ctx.job_id(), ctx.attempt(), quiet);
        if !quiet {
            ctx.progress(
                f64::from(i) * 100.0 / f64::from(steps.max(1)),
                format!("step {i} of {steps}"),
            )
            .await?;
        }
    }
    effect("end", ctx.job_id(), ctx.attempt(), quiet);
    Ok(steps)
}

/// Prepares, waits for `go` (`fault_go`), then finishes.
#[forge::workflow(steps = ["prepare", "go", "finish"])]
async fn fault_flow(ctx: &WorkflowContext, tag: String) -> Result<String> {
    let prepared: String = ctx
        .step("prepare", || async { Ok(format!("prepared {tag}")) })
        .await?;
    let _: serde_json::Value = ctx.wait_for_event("go", Duration::from_secs(3600)).await?;
    ctx.step("finish", || async { Ok(format!("{prepared}, finished")) })
        .await
}

/// Sends `go` to the workflow `workflow_id`.
#[forge::mutation]
async fn fault_go(ctx: &MutationContext, workflow_id: Uuid) -> Result<()> {
    let mut db = ctx.db().await?;
    send_event(&mut *db, workflow_id, "go", serde_json::json!({}))
        .await
        .map_err(|e| Error::conflict(e.to_string()))
}

fn env_ms(name: &str, default: u64) -> Result<Duration, BoxError> {
    match std::env::var(name) {
        Ok(v) => Ok(Duration::from_millis(
            v.parse().map_err(|e| format!("{name}: {e}"))?,
        )),
        Err(_) => Ok(Duration::from_millis(default)),
    }
}

async fn run() -> Result<(), BoxError> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is required")?;
    let lease = env_ms("FAULT_LEASE_MS", 6000)?;
    let concurrency: usize = std::env::var("FAULT_CONCURRENCY")
        .ok()
        .map(|c| c.parse())
        .transpose()
        .map_err(|e| format!("FAULT_CONCURRENCY: {e}"))?
        .unwrap_or(64);
    let forge = Forge::connect(&url).await?;
    let worker = forge
        .start_worker(WorkerConfig {
            concurrency,
            lease,
            heartbeat_interval: lease / 4,
            reap_interval: Duration::from_secs(1),
            shutdown_grace: Duration::from_secs(5),
            ..WorkerConfig::default()
        })
        .await?;
    let secret = std::env::var("FAULT_JWT_SECRET")
        .unwrap_or_else(|_| "fault-node-secret-for-tests-only-0123456789".into());
    let gateway = Gateway::new(&forge, GatewayConfig::new(secret.as_bytes())).await?;
    let port: u16 = std::env::var("PORT")
        .ok()
        .map(|p| p.parse())
        .transpose()
        .map_err(|e| format!("PORT: {e}"))?
        .unwrap_or(0);
    let listener = forge_gateway::bind(([127, 0, 0, 1], port).into(), 4096)?;
    // The harness reads this line to learn the port.
    println!("fault-node listening on http://{}", listener.local_addr()?);
    let served = gateway.serve(listener, terminated()).await;
    worker.shutdown().await;
    served.map_err(Into::into)
}

/// SIGTERM or Ctrl-C.
async fn terminated() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    match run().await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fault-node: {e}");
            ExitCode::FAILURE
        }
    }
}
