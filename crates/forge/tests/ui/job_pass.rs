//! A job using every option and argument kind must keep compiling.

use forge::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct Filter {
    pub since: Option<chrono::DateTime<chrono::Utc>>,
    pub tags: Vec<String>,
}

#[derive(Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExportResult {
    pub rows: u64,
    pub url: String,
}

#[forge::job(
    max_attempts = 5,
    timeout = "10m",
    priority = -3,
    queue = "exports",
    backoff = "500ms",
    max_backoff = "1h",
    role = "admin"
)]
pub async fn export_users(
    ctx: &JobContext,
    format: String,
    filter: Filter,
    owner_id: uuid::Uuid,
) -> forge::Result<ExportResult> {
    for (i, _) in filter.tags.iter().enumerate() {
        ctx.check_cancelled().await?;
        ctx.progress(i as f64, format!("tag {i} of {owner_id}"))
            .await?;
    }
    Ok(ExportResult {
        rows: 0,
        url: format,
    })
}

#[forge::job(public)]
async fn no_arguments(_ctx: &forge::JobContext) -> Result<()> {
    Ok(())
}

fn main() {
    // Typed requests: the compiler checks the arguments.
    let _req: JobRequest<ExportResult> = export_users::request(
        "csv".into(),
        Filter {
            since: None,
            tags: vec![],
        },
        uuid::Uuid::nil(),
    )
    .priority(1)
    .idempotency_key("k");
    let _req: JobRequest<()> = no_arguments::request();
}
