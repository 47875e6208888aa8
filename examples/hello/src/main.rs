//! A first Forge job: starts a worker, enqueues a job that reports progress, prints every
//! update it publishes and the final state.
//!
//! ```sh
//! cargo run -p hello            # DATABASE_URL defaults to postgres://postgres@127.0.0.1:5432/postgres
//! ```

use std::time::Duration;

use forge::prelude::*;
use forge::updates::Event;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CountResult {
    pub counted: u32,
}

/// Counts to `to`, reporting progress every step.
#[forge::job(max_attempts = 3, timeout = "1m")]
pub async fn count_to(ctx: &JobContext, to: u32) -> Result<CountResult> {
    for i in 1..=to {
        ctx.check_cancelled().await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
        ctx.progress(
            f64::from(i) * 100.0 / f64::from(to),
            format!("Counted {i} of {to}"),
        )
        .await?;
    }
    Ok(CountResult { counted: to })
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let forge = Forge::connect(&url).await?;
    let mut events = forge.notifier().await?.subscribe();
    let worker = forge.start_worker(WorkerConfig::default()).await?;

    let id = forge.enqueue(count_to::request(10)).await?;
    println!("enqueued job {id}");
    loop {
        if let Event::JobUpdates(updates) = events.recv().await? {
            for u in updates.iter().filter(|u| u.job_id == id) {
                let pct = u
                    .progress
                    .map(|p| format!("{p:>5.1}%"))
                    .unwrap_or_else(|| "    -".into());
                println!(
                    "{:<10} {pct}  {}",
                    u.status,
                    u.message.as_deref().unwrap_or("")
                );
                if u.status.is_terminal() {
                    let row = forge.job(id).await?.expect("the job exists");
                    println!(
                        "final state: {}",
                        serde_json::to_string_pretty(&row.state())?
                    );
                    worker.shutdown().await;
                    return Ok(());
                }
            }
        }
    }
}
