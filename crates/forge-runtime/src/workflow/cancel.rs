//! Cancelling workflows.

use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::WorkflowCancelError;
use crate::status::WorkflowStatus;
use crate::store::{self, CancelOutcome};

/// Cancels a workflow: it becomes `compensating` (with the error `cancelled`) at once, the
/// compensations of its completed steps run, newest first, and it ends `compensated` (or
/// `failed` if a compensation fails). A waiting workflow is woken for it; a running one stops
/// before its next step (the step running now finishes first). Asking again while it
/// compensates is not an error. `owner` restricts the request to that owner's workflows
/// (`None`: a privileged caller).
pub async fn cancel<'e, E: PgExecutor<'e>>(
    exec: E,
    workflow_id: Uuid,
    owner: Option<&str>,
) -> Result<WorkflowStatus, WorkflowCancelError> {
    match store::cancel_workflow(exec, workflow_id, owner, Uuid::now_v7()).await? {
        CancelOutcome::Compensating => Ok(WorkflowStatus::Compensating),
        CancelOutcome::NotFound => Err(WorkflowCancelError::NotFound),
        CancelOutcome::AlreadyFinished(status) => Err(WorkflowCancelError::AlreadyFinished(status)),
    }
}
