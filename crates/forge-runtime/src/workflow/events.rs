//! Sending events to workflows.

use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::EventError;
use crate::store::{self, DeliverOutcome};
use crate::value;

/// Sends the event `name` with `payload` to the workflow `workflow_id`. A workflow waiting for
/// it (`ctx.wait_for_event(name, ..)`) resumes at once; otherwise the event is kept until a
/// wait for that name takes it, so an event sent before the wait began is not lost. Each event
/// is taken by one wait, oldest first.
///
/// `exec` may be a pool or a transaction (a mutation's: `&mut *ctx.db().await?`); in a
/// transaction the event exists only if it commits.
pub async fn send_event<'e, E: PgExecutor<'e>>(
    exec: E,
    workflow_id: Uuid,
    name: &str,
    payload: Value,
) -> Result<(), EventError> {
    if name.is_empty() {
        return Err(EventError::EmptyName);
    }
    value::check_json(&payload).map_err(EventError::Unstorable)?;
    match store::deliver_event(exec, workflow_id, name, &payload, Uuid::now_v7()).await? {
        DeliverOutcome::Delivered { .. } => Ok(()),
        DeliverOutcome::NotFound => Err(EventError::NotFound),
        DeliverOutcome::AlreadyFinished(status) => Err(EventError::AlreadyFinished(status)),
    }
}
