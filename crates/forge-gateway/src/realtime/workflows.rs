//! A workflow's updates. A notification on `forge_workflow_updates` carries the workflow's
//! whole state (steps included) as its transaction left it, except its output, and except when
//! that state is too large for a notification (see migration 0006). So most changes go out as
//! published, exactly and in commit order, with no read: a workflow's state is small while its
//! steps change often, and a read made after a few quick changes would fold them into one,
//! possibly hiding a status. A `completed` change (for its output) and a change published
//! without its state are replaced by a read of the workflow; see the hub.

use forge_runtime::publish::WorkflowUpdate;
use forge_runtime::store::WorkflowRow;
use forge_runtime::{WorkflowState, WorkflowStatus};
use uuid::Uuid;

use super::feed::Change;

/// One state of a workflow on its way to subscribers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WorkflowChange {
    pub(crate) state: WorkflowState,
    /// The transaction that made it; `None` for a state read from the table.
    pub(crate) xid: Option<u64>,
    /// The notification left the state out: only status, step and wait are known.
    partial: bool,
}

impl WorkflowChange {
    /// A change as published on `forge_workflow_updates`.
    pub(crate) fn from_update(u: WorkflowUpdate) -> Self {
        let partial = u.state.is_none();
        let state = u.state.unwrap_or(WorkflowState {
            workflow_id: u.workflow_id,
            status: u.status,
            step: u.step,
            waiting_for: u.waiting_for,
            steps: Vec::new(),
            output: None,
            error: None,
        });
        WorkflowChange {
            state,
            xid: Some(u.xid),
            partial,
        }
    }

    pub(crate) fn from_row(row: &WorkflowRow) -> Self {
        Self {
            state: row.state(),
            xid: None,
            partial: false,
        }
    }

    pub(crate) fn id(&self) -> Uuid {
        self.state.workflow_id
    }
}

impl Change for WorkflowChange {
    const EVENT: &'static str = "workflow";

    fn xid(&self) -> Option<u64> {
        self.xid
    }

    fn generation(&self) -> i32 {
        0
    }

    fn is_terminal(&self) -> bool {
        self.state.status.is_terminal()
    }

    fn state_json(&self) -> String {
        serde_json::to_string(&self.state).expect("a workflow state always serializes")
    }

    /// Every published change of a workflow changes some status (its own, its current step,
    /// or a step's), so no two differ "only in progress": each is its own phase, and a slow
    /// client loses none of them before the outbox's hard limit.
    fn phase(&self) -> u64 {
        self.digest()
    }

    /// A change published without its state, and a `completed` one (the output is never
    /// published: it can be large).
    fn needs_row(&self) -> bool {
        self.partial || self.state.status == WorkflowStatus::Completed
    }
}

#[cfg(test)]
mod tests {
    use forge_runtime::publish::WorkflowUpdates;
    use forge_runtime::StepStatus;

    use super::*;

    #[test]
    fn reads_published_updates_with_and_without_their_state() {
        let id = Uuid::now_v7();
        let payload = serde_json::json!([
            {"workflow_id": id, "status": "running", "step": "a", "waiting_for": null, "xid": 7,
             "state": {"workflowId": id, "status": "running", "step": "a", "waitingFor": null,
                       "steps": [{"name": "a", "status": "running", "error": null}],
                       "output": null, "error": null}},
            {"workflow_id": id, "status": "waiting", "step": "a", "waiting_for": "event:go",
             "xid": 8, "state": null},
            {"workflow_id": id, "status": "completed", "step": "a", "waiting_for": null, "xid": 9,
             "state": {"workflowId": id, "status": "completed", "step": "a", "waitingFor": null,
                       "steps": [{"name": "a", "status": "completed", "error": null}],
                       "output": null, "error": null}}
        ]);
        let changes: Vec<WorkflowChange> = WorkflowUpdates::new(&payload.to_string())
            .decode()
            .unwrap()
            .into_iter()
            .map(WorkflowChange::from_update)
            .collect();
        assert_eq!(changes.len(), 3);
        assert_eq!(changes[0].state.steps[0].status, StepStatus::Running);
        assert_eq!(changes[0].xid, Some(7));
        assert!(!changes[0].needs_row());
        assert!(changes[1].needs_row());
        assert_eq!(changes[1].state.waiting_for.as_deref(), Some("event:go"));
        assert!(changes[2].needs_row());
        assert_ne!(changes[0].phase(), changes[1].phase());
    }
}
