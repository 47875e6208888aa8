//! The status vocabulary of `docs/contract.md`, and the job state clients see.

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

/// Where a workflow is in its life. `not_found` is client-only, as for jobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum WorkflowStatus {
    /// Started, not yet picked up by a worker.
    Created,
    Running,
    /// Suspended on a timer or an event; no worker holds it.
    Waiting,
    Completed,
    /// A step failed for good, or a cancel was asked for: the compensations of the completed
    /// steps are running, newest first.
    Compensating,
    /// Every compensation ran.
    Compensated,
    /// A compensation failed too, or the workflow could not go on (its code no longer matches
    /// its history).
    Failed,
}

impl WorkflowStatus {
    pub const ALL: [WorkflowStatus; 7] = [
        WorkflowStatus::Created,
        WorkflowStatus::Running,
        WorkflowStatus::Waiting,
        WorkflowStatus::Completed,
        WorkflowStatus::Compensating,
        WorkflowStatus::Compensated,
        WorkflowStatus::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkflowStatus::Created => "created",
            WorkflowStatus::Running => "running",
            WorkflowStatus::Waiting => "waiting",
            WorkflowStatus::Completed => "completed",
            WorkflowStatus::Compensating => "compensating",
            WorkflowStatus::Compensated => "compensated",
            WorkflowStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<WorkflowStatus> {
        WorkflowStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A terminal status never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            WorkflowStatus::Completed | WorkflowStatus::Compensated | WorkflowStatus::Failed
        )
    }
}

impl std::fmt::Display for WorkflowStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one step of a workflow is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Declared, not reached yet.
    Pending,
    /// Running, retrying after a failed attempt, or (a sleep or an event wait) waiting.
    Running,
    Completed,
    Failed,
    /// Completed, then undone by its compensation.
    Compensated,
    /// Never reached: the workflow ended before it.
    Skipped,
}

impl StepStatus {
    pub const ALL: [StepStatus; 6] = [
        StepStatus::Pending,
        StepStatus::Running,
        StepStatus::Completed,
        StepStatus::Failed,
        StepStatus::Compensated,
        StepStatus::Skipped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Completed => "completed",
            StepStatus::Failed => "failed",
            StepStatus::Compensated => "compensated",
            StepStatus::Skipped => "skipped",
        }
    }

    pub fn parse(s: &str) -> Option<StepStatus> {
        StepStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl std::fmt::Display for StepStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One step as clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StepState {
    pub name: String,
    pub status: StepStatus,
    pub error: Option<String>,
}

/// The workflow state of the spec, as it travels to clients (camelCase fields). `steps` lists
/// the steps that started, in the order they started, then the declared steps not reached
/// yet, in declared order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowState {
    pub workflow_id: Uuid,
    pub status: WorkflowStatus,
    pub step: Option<String>,
    pub waiting_for: Option<String>,
    pub steps: Vec<StepState>,
    pub output: Option<serde_json::Value>,
    pub error: Option<String>,
}
