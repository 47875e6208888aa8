//! `send_report`: a job whose first attempt fails with a retryable error (the status goes
//! through `retry`) and whose second succeeds; with `always_fail` all three of its attempts
//! fail, and after the last one it ends `dead_letter`. An operator's retry (the dashboard's
//! dead letters) gives it a fourth attempt, which finds the mail server back. The arguments are the documentation's:
//! `trackSendReport({ reportId: "q4-2024" })` is a whole call.

use std::time::Duration;

use forge::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// How long one attempt "talks to the mail server": long enough to see it `running`.
const SENDING: Duration = Duration::from_millis(800);

/// With `always_fail`, the attempts the mail server refuses: the job's own three (its
/// `max_attempts`), so that it dead-letters, and a retry from the dashboard then succeeds.
const MAIL_SERVER_DOWN_FOR: u32 = 3;

#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ReportSent {
    pub report_id: String,
    /// The attempt that got through.
    pub attempt: u32,
}

/// Sends report `report_id` (`"q4-2024"`) by email. Three attempts, a second apart (then two).
/// `always_fail` (default off) makes the mail server refuse all three attempts, so the job
/// ends `dead_letter`; it is back for an operator's retry.
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
    if (always_fail && attempt <= MAIL_SERVER_DOWN_FOR) || attempt == 1 {
        // `Error::msg` is retryable: the worker tries again after the backoff.
        return Err(Error::msg(format!(
            "attempt {attempt}: the mail server answered 451 (try again later)"
        )));
    }
    ctx.progress(100.0, format!("Attempt {attempt}: report {report_id} sent"))
        .await?;
    Ok(ReportSent { report_id, attempt })
}
