//! `send_report`: a job whose first attempt fails with a retryable error (the status goes
//! through `retry`) and whose second succeeds; with `always_fail` every attempt fails, and after
//! the last one it ends `dead_letter`. The arguments are the documentation's:
//! `trackSendReport({ reportId: "q4-2024" })` is a whole call.

use std::time::Duration;

use forge::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How long one attempt "talks to the mail server": long enough to see it `running`.
const SENDING: Duration = Duration::from_millis(800);

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReportSent {
    pub report_id: String,
    /// The attempt that got through.
    pub attempt: u32,
}

/// Sends report `report_id` (`"q4-2024"`) by email. Three attempts, a second apart (then two).
/// `always_fail` (default off) makes the mail server refuse every attempt.
#[forge::job(max_attempts = 3, backoff = "1s", max_backoff = "2s", timeout = "1m")]
pub(crate) async fn send_report(
    ctx: &JobContext,
    report_id: String,
    always_fail: Option<bool>,
) -> Result<ReportSent> {
    let always_fail = always_fail.unwrap_or(false);
    let attempt = ctx.attempt();
    ctx.progress(
        10.0,
        format!("Attempt {attempt}: connecting to the mail server..."),
    )
    .await?;
    tokio::time::sleep(SENDING).await;
    ctx.check_cancelled().await?;
    if always_fail || attempt == 1 {
        // `Error::msg` is retryable: the worker tries again after the backoff.
        return Err(Error::msg(format!(
            "attempt {attempt}: the mail server answered 451 (try again later)"
        )));
    }
    ctx.progress(100.0, format!("Attempt {attempt}: report {report_id} sent"))
        .await?;
    Ok(ReportSent { report_id, attempt })
}
