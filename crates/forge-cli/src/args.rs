//! Arguments the command groups share: pages, times, statuses. Values the runtime checks
//! (page sizes, cursors, time ranges) are passed on unchecked, so its limits and its words
//! are the only ones.

use chrono::{DateTime, Utc};
use clap::builder::{PossibleValuesParser, TypedValueParser};
use clap::Args;
use forge_runtime::runs::{Page, DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use forge_runtime::{JobStatus, WorkflowStatus};

#[derive(Args, Debug)]
pub(crate) struct PageArgs {
    #[arg(
        long,
        value_name = "N",
        help = format!("Runs per page, 1 to {MAX_PAGE_SIZE} (default {DEFAULT_PAGE_SIZE})")
    )]
    pub(crate) limit: Option<u32>,
    /// The page after this cursor (printed under the previous page, `nextCursor` in JSON).
    #[arg(long, value_name = "CURSOR")]
    pub(crate) after: Option<String>,
}

impl PageArgs {
    pub(crate) fn page(&self) -> Page {
        Page {
            cursor: self.after.clone(),
            limit: self.limit,
        }
    }
}

/// Parses an RFC 3339 time, naming the format when it is not one.
pub(crate) fn time(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time such as 2025-01-31T09:00:00Z ({e})"))
}

/// The runtime's job statuses, listed in `--help` and in the error for any other word.
pub(crate) fn job_status() -> impl TypedValueParser<Value = JobStatus> {
    PossibleValuesParser::new(JobStatus::ALL.map(JobStatus::as_str))
        .try_map(|s| JobStatus::parse(&s).ok_or("not a job status"))
}

pub(crate) fn workflow_status() -> impl TypedValueParser<Value = WorkflowStatus> {
    PossibleValuesParser::new(WorkflowStatus::ALL.map(WorkflowStatus::as_str))
        .try_map(|s| WorkflowStatus::parse(&s).ok_or("not a workflow status"))
}
