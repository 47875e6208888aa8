//! `recent_jobs`: the signed-in user's latest jobs. Subscribed live, it is pushed again
//! whenever one of them changes (the gateway re-runs it on job updates).

use forge::prelude::*;
use forge::runs::{self, JobFilter, Page};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One job in the list.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct JobSummary {
    pub id: Uuid,
    /// The job's function (`export_users`, `send_report`).
    pub name: String,
    /// A job status (`pending` ... `cancelled`).
    pub status: String,
    pub progress: Option<f64>,
    pub message: Option<String>,
    pub error: Option<String>,
    pub attempts: i32,
    pub max_attempts: i32,
    pub created_at: chrono::DateTime<chrono::Utc>,
}

/// The caller's `limit` (1 to 50) most recent jobs, newest first. Workflows run on jobs of
/// their own, which the runs API leaves out: the page shows the workflows themselves.
#[forge::query]
pub(crate) async fn recent_jobs(ctx: &QueryContext, limit: u32) -> Result<Vec<JobSummary>> {
    if !(1..=50).contains(&limit) {
        return Err(Error::invalid_arg("limit", "must be between 1 and 50"));
    }
    let user = ctx.user().expect("not public, so signed in");
    let mut db = ctx.db().await?;
    // On the query's own connection: what it reads is what makes the live subscription
    // follow changes of these jobs.
    let filter = JobFilter {
        owner: Some(user.id.clone()),
        ..JobFilter::default()
    };
    let page = runs::list_jobs(&mut *db, &filter, &Page::first(limit)).await?;
    Ok(page
        .items
        .into_iter()
        .map(|j| JobSummary {
            id: j.state.job_id,
            name: j.function,
            status: j.state.status.to_string(),
            progress: j.state.progress,
            message: j.state.message,
            error: j.state.error,
            attempts: j.attempts,
            max_attempts: j.max_attempts,
            created_at: j.created_at,
        })
        .collect())
}
