//! The example job: works through `count` items in the background and reports its progress
//! after each one. The page starts it with the generated `trackProcessItems({ count })`, which
//! also follows it, and draws the bar from what `ctx.progress` reports.

use std::time::Duration;

use forge::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// What a finished run gives back (the page shows it).
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ProcessResult {
    /// How many items were processed.
    pub processed: u32,
}

/// The most items one run takes: a run is bounded by its timeout, and a typo should not start
/// a job that would outlive it.
const MAX_ITEMS: u32 = 1_000;

/// What one item costs. The work here is pretend; the pause makes the bar something to watch.
const ITEM_TIME: Duration = Duration::from_millis(100);

/// Processes `count` items, one at a time.
///
/// Only signed-in callers may start it (the default); the page's guest session is enough.
#[forge::job(max_attempts = 3, timeout = "5m")]
pub(crate) async fn process_items(ctx: &JobContext, count: u32) -> Result<ProcessResult> {
    if count == 0 || count > MAX_ITEMS {
        // Fatal: retrying cannot make a bad argument good.
        return Err(Error::fatal(format!(
            "count must be between 1 and {MAX_ITEMS}, got {count}"
        )));
    }
    for done in 1..=count {
        // A cancel from the page stops the job here; it only reads a flag, so it is cheap.
        ctx.check_cancelled().await?;
        tokio::time::sleep(ITEM_TIME).await;
        let percent = f64::from(done) * 100.0 / f64::from(count);
        ctx.progress(percent, format!("Processed {done} of {count}"))
            .await?;
    }
    Ok(ProcessResult { processed: count })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use forge::updates::Event;

    use super::*;

    /// Runs the job as the server would: enqueued, taken by a worker, its updates published.
    /// On the database `cargo run` would use (`DATABASE_URL`, else the local server, else a
    /// private cluster of the tests' own, so that it does not collide with a running server's).
    #[tokio::test]
    async fn process_items_reports_progress_then_completes() {
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join(".data/test");
        let db = forge_devdb::ensure("{{db_name}}_test", &data).await.unwrap();
        let forge = Forge::connect(&db.url).await.unwrap();
        // Subscribed before the job exists, so that no update can be missed.
        let mut events = forge.notifier().await.unwrap().subscribe();
        let worker = forge.start_worker(WorkerConfig::default()).await.unwrap();

        let id = forge.enqueue(process_items::request(4)).await.unwrap();
        let mut progress = Vec::new();
        let followed = tokio::time::timeout(Duration::from_secs(30), async {
            loop {
                let Event::JobUpdates(updates) = events.recv().await.unwrap() else {
                    continue;
                };
                for update in updates.iter().filter(|u| u.job_id == id) {
                    progress.extend(update.progress);
                    if update.status.is_terminal() {
                        return update.status;
                    }
                }
            }
        })
        .await;
        worker.shutdown().await;

        assert_eq!(followed, Ok(JobStatus::Completed), "progress: {progress:?}");
        assert!(
            progress.iter().any(|p| *p > 0.0 && *p < 100.0),
            "progress: {progress:?}"
        );
        let job = forge.job(id).await.unwrap().expect("the job is kept");
        assert_eq!(
            job.state().output,
            Some(serde_json::json!({ "processed": 4 }))
        );
    }
}
