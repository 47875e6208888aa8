//! The publishing contract: the channels Forge notifies on, what their payloads carry, and how
//! they are encoded and decoded. Everything that publishes or reads an update goes through
//! here: the store's held close encodes its job updates with [`encode_job_updates`], the
//! notifier decodes with [`decode_job_updates`] and hands workflow payloads on as
//! [`WorkflowUpdates`], which the gateway decodes with [`WorkflowUpdates::decode`].
//!
//! # Two encoders, one format
//! Most job updates are published by the statement-level trigger `forge.publish_job_updates`
//! (migrations 0007 and 0009), and every workflow update by `forge.notify_workflow_updates`
//! (migration 0006), because no path that changes a row can then forget to publish. Two
//! statements publish their own job updates, since the node already knows them: the close of
//! a held claim (through [`encode_job_updates`]; migration 0010 skips the trigger for it) and
//! the insert of an eagerly started job (its SQL builds the one `claimed` update). The
//! trigger's SQL and [`JobUpdate`]'s serde form must therefore agree, field for field.
//! Migrations are append-only: a change to the format is a new migration *and* a change
//! here. What pins the agreement: `crates/forge/tests/jobs_lifecycle.rs`
//! (`a_job_goes_pending_claimed_running_completed_stored_and_published` reads trigger
//! payloads through [`decode_job_updates`], `a_held_claim_publishes_each_status_its_jobs_went_through_once`
//! reads the Rust-built ones the same way) and `crates/forge/tests/workflows.rs`
//! (`every_change_is_published_on_forge_workflow_updates`).

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::status::{JobStatus, WorkflowState, WorkflowStatus};

/// New jobs were inserted (any queue); no payload.
pub const JOBS_AVAILABLE: &str = "forge_jobs_available";
/// Changed jobs: a JSON array of [`JobUpdate`].
pub const JOB_UPDATES: &str = "forge_job_updates";
/// Changed workflows: a JSON array of [`WorkflowUpdate`].
pub const WORKFLOW_UPDATES: &str = "forge_workflow_updates";
/// A watched table changed; the payload is its oid (see `Store::watch_table`).
pub const TABLE_CHANGES: &str = "forge_table_changes";
/// Gateways' calls for a session another node holds, and their answers (JSON, at most
/// [`MAX_SESSION_CALL`] bytes): the gateway defines the format.
pub const SESSION_CALLS: &str = "forge_session_calls";
/// The largest payload [`SESSION_CALLS`] carries: PostgreSQL's limit with a margin.
pub const MAX_SESSION_CALL: usize = 7_900;

/// PostgreSQL refuses notification payloads from 8,000 bytes on.
const MAX_PAYLOAD: usize = 7_900;

/// One changed job, as published on [`JOB_UPDATES`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobUpdate {
    pub job_id: Uuid,
    pub status: JobStatus,
    pub attempt: i32,
    pub progress: Option<f64>,
    pub message: Option<String>,
    /// The transaction that made the change (xid8). A reader that took a snapshot can tell
    /// with [`DbSnapshot::sees`](crate::store::DbSnapshot::sees) whether this update is
    /// already reflected in what it read.
    pub xid: u64,
}

/// One changed workflow, as published on [`WORKFLOW_UPDATES`].
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WorkflowUpdate {
    pub workflow_id: Uuid,
    pub status: WorkflowStatus,
    /// The current step (cut to 200 characters).
    pub step: Option<String>,
    pub waiting_for: Option<String>,
    /// The transaction that made the change, as on [`JobUpdate`].
    pub xid: u64,
    /// The whole state as the transaction left it (steps included, output left out), or
    /// `None` when it did not fit in a notification: read it with
    /// `Store::get_workflows_with_snapshot`.
    #[serde(default)]
    pub state: Option<WorkflowState>,
}

/// Notification payloads of `updates`: JSON arrays, each below PostgreSQL's limit of 8,000
/// bytes. One update is at most about 3,200 bytes (a 500-character message of escapes).
pub fn encode_job_updates(updates: &[JobUpdate]) -> Result<Vec<String>, serde_json::Error> {
    let mut payloads = Vec::new();
    let mut current = String::from("[");
    for u in updates {
        let element = serde_json::to_string(u)?;
        if current.len() + element.len() + 2 > MAX_PAYLOAD {
            current.push(']');
            payloads.push(std::mem::replace(&mut current, String::from("[")));
        }
        if current.len() > 1 {
            current.push(',');
        }
        current.push_str(&element);
    }
    if current.len() > 1 {
        current.push(']');
        payloads.push(current);
    }
    Ok(payloads)
}

/// The updates of one [`JOB_UPDATES`] payload.
pub fn decode_job_updates(payload: &str) -> Result<Vec<JobUpdate>, serde_json::Error> {
    serde_json::from_str(payload)
}

/// One [`WORKFLOW_UPDATES`] payload, decoded by whoever needs it: a workflow's update carries
/// its whole state, and most of a node's listeners (its workers) never look at it.
#[derive(Debug, Clone)]
pub struct WorkflowUpdates(Arc<str>);

impl WorkflowUpdates {
    pub fn new(payload: &str) -> Self {
        Self(payload.into())
    }

    /// The payload as it was received.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn decode(&self) -> Result<Vec<WorkflowUpdate>, serde_json::Error> {
        serde_json::from_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(message: Option<String>) -> JobUpdate {
        JobUpdate {
            job_id: Uuid::nil(),
            status: JobStatus::Running,
            attempt: 1,
            progress: Some(50.0),
            message,
            xid: 7,
        }
    }

    #[test]
    fn job_updates_round_trip_in_payloads_below_the_limit() {
        let updates: Vec<JobUpdate> = (0..40)
            .map(|i| update(Some(format!("{i}{}", "\"".repeat(500)))))
            .collect();
        let payloads = encode_job_updates(&updates).unwrap();
        assert!(payloads.len() > 1, "split into several payloads");
        assert!(payloads.iter().all(|p| p.len() < 8_000));
        let decoded: Vec<JobUpdate> = payloads
            .iter()
            .flat_map(|p| decode_job_updates(p).unwrap())
            .collect();
        assert_eq!(decoded, updates);
    }

    #[test]
    fn no_updates_make_no_payload() {
        assert!(encode_job_updates(&[]).unwrap().is_empty());
    }

    #[test]
    fn a_workflow_update_without_its_state_decodes_with_none() {
        let payload = format!(
            r#"[{{"workflow_id":"{}","status":"running","step":"a","waiting_for":null,"xid":3}}]"#,
            Uuid::nil()
        );
        let decoded = WorkflowUpdates::new(&payload).decode().unwrap();
        assert_eq!(decoded[0].status, WorkflowStatus::Running);
        assert!(decoded[0].state.is_none());
    }
}
