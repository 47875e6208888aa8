//! `recent_jobs`: the signed-in user's latest jobs. Subscribed live, it is pushed again
//! whenever one of them changes (the gateway re-runs it on job updates).

use forge::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One job in the list.
#[derive(Debug, Serialize, Deserialize, JsonSchema, sqlx::FromRow)]
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
/// their own, which are left out: the page shows the workflows themselves.
#[forge::query]
pub(crate) async fn recent_jobs(ctx: &QueryContext, limit: u32) -> Result<Vec<JobSummary>> {
    if !(1..=50).contains(&limit) {
        return Err(Error::invalid_arg("limit", "must be between 1 and 50"));
    }
    let user = ctx.user().expect("not public, so signed in");
    let mut db = ctx.db().await?;
    // Forge's job table is readable like any other; reading it is what makes the live
    // subscription follow job changes.
    Ok(sqlx::query_as::<_, JobSummary>(
        "SELECT id, function_name AS name, status, progress, message, error, attempts, \
                max_attempts, created_at \
         FROM forge.jobs \
         WHERE owner = $1 AND function_name NOT LIKE 'workflow:%' \
         ORDER BY created_at DESC, id DESC LIMIT $2",
    )
    .bind(&user.id)
    .bind(i64::from(limit))
    .fetch_all(&mut *db)
    .await?)
}
