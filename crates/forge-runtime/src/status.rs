//! The status vocabulary of `shared/spec/track-progress.md`, and the job state clients see.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a job is in its life. `not_found` is the client-only tenth status of the spec and is
/// therefore not a variant here: the server answers "no such job" with `None`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Claimed,
    Running,
    Completed,
    Retry,
    Failed,
    DeadLetter,
    CancelRequested,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 9] = [
        JobStatus::Pending,
        JobStatus::Claimed,
        JobStatus::Running,
        JobStatus::Completed,
        JobStatus::Retry,
        JobStatus::Failed,
        JobStatus::DeadLetter,
        JobStatus::CancelRequested,
        JobStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::Claimed => "claimed",
            JobStatus::Running => "running",
            JobStatus::Completed => "completed",
            JobStatus::Retry => "retry",
            JobStatus::Failed => "failed",
            JobStatus::DeadLetter => "dead_letter",
            JobStatus::CancelRequested => "cancel_requested",
            JobStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A terminal status never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Failed | JobStatus::DeadLetter | JobStatus::Cancelled
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The job state of the spec, as it travels to clients (camelCase fields). `loading` is the
/// client's own and is not sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobState {
    pub job_id: Uuid,
    pub status: JobStatus,
    pub progress: Option<f64>,
    pub message: Option<String>,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
}
