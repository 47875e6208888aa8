//! Durable workflows: async functions made of named steps that survive crashes, wait for
//! timers and events without holding a worker, and undo their completed steps when they fail.
//!
//! ```ignore
//! #[forge::workflow(steps = ["validate", "send_email", "wait_confirm", "activate"])]
//! pub async fn account_verification(ctx: &WorkflowContext, user_id: Uuid) -> Result<()> {
//!     let user: User = ctx.step("validate", || async { load_user(ctx.db(), user_id).await }).await?;
//!     let mail_id: String = ctx
//!         .step("send_email", || async { mailer::send_confirmation(&user).await })
//!         .compensate(|mail_id: String| async move { mailer::recall(&mail_id).await })
//!         .retries(5)
//!         .await?;
//!     let _: Confirmation = ctx
//!         .wait_for_event("email_confirmed", Duration::from_secs(24 * 3600))
//!         .named("wait_confirm")
//!         .await?;
//!     ctx.step("activate", || async { activate(ctx.db(), user_id).await }).await
//! }
//!
//! let id = forge.start_workflow(account_verification::request(user_id)).await?;
//! // later, from a mutation or anywhere:
//! forge::workflow::send_event(&mut *ctx.db().await?, id, "email_confirmed", json!({..})).await?;
//! ```
//!
//! # How it runs
//! Workflows run on the job workers ([`Forge::start_worker`](crate::Forge::start_worker)
//! runs them along with the jobs).
//! Starting one inserts it, its declared steps (shown `pending` at once) and a job
//! `workflow:<name>`; claiming, leases, crash recovery and retries are the jobs'. The job
//! replays the body: steps recorded as completed return their stored output without running
//! again, the next step runs and is recorded (see `engine` for the details). A sleep, an event
//! wait or a retry backoff records the wait together with the job that will resume the
//! workflow, and the current job ends. A job whose node dies is retried by another node
//! after its lease runs out, and the workflow goes on from its last recorded step: **the step
//! that was interrupted runs again, so steps must be idempotent.**
//!
//! Every record goes through the node's engine writer (`engine::writer`): the records of all
//! the workflows running on the node that arrive while one batch commits go in the next, one
//! statement and one commit for up to 1,000 of them. A step's record is committed before the
//! body goes on, as with one commit per record; under load the commits are shared.
//! [`start_many`] (or [`Forge::start_workflows`](crate::Forge::start_workflows)) starts many
//! workflows in one statement.
//!
//! # Failure and cancellation
//! When the body returns an error (a step that failed for good, a wait that timed out, and
//! `?`), the workflow becomes `compensating`, the compensations of its completed steps run
//! newest first (each step then `compensated`), steps never reached become `skipped`, and it
//! ends `compensated`. A compensation that fails after its retries ends it `failed`, with the
//! original error and the compensation's both kept. [`cancel`] runs the same compensations.
//!
//! # Determinism
//! A replay must ask for the same operations in the same order as the run it replays. If the
//! code changed under a running workflow and a replay asks for another step at a recorded
//! position, the workflow ends `failed` with an error naming both, instead of pairing stored
//! outputs with the wrong steps.
//!
//! # Publishing
//! Every change of a workflow's status, current step, wait or any step's status is published
//! on `forge_workflow_updates` by triggers, as for jobs (see
//! [`WorkflowUpdate`](crate::publish::WorkflowUpdate)): one state per workflow per
//! statement, however many of its rows the statement changed.

mod cancel;
mod context;
pub(crate) mod def;
mod engine;
mod events;
mod start;

pub use cancel::cancel;
pub use context::{Sleep, Step, WaitForEvent, WorkflowContext};
pub(crate) use engine::EngineWriter;
pub use events::send_event;
pub use start::{start, start_json, start_many, WorkflowRequest};

use std::collections::HashMap;

use serde_json::Value;
use uuid::Uuid;

use crate::backoff::Backoff;
use crate::error::{DbError, EventError, StartError};
use crate::function::MutationContext;
use crate::store::workflow_job_name;
use crate::worker::Handler;

/// The job handlers that run the registered workflows, one per workflow (`workflow:<name>`).
pub fn handlers() -> HashMap<String, Handler> {
    def::workflows()
        .map(|def| {
            let handler = Handler {
                run: engine::run_job,
                // A workflow job waits for its steps, which have their own timeouts.
                timeout: None,
                backoff: Backoff::DEFAULT,
            };
            (workflow_job_name(def.name), handler)
        })
        .collect()
}

impl MutationContext {
    /// Starts a workflow inside the mutation's transaction: it exists, and runs, only if the
    /// mutation succeeds. Unless the request names an owner, the caller owns it.
    pub async fn start_workflow<O>(&self, req: WorkflowRequest<O>) -> Result<Uuid, StartError> {
        let req = req.or_owner(self.user().map(|u| u.id.as_str()));
        let mut conn = self.db().await.map_err(|e| match e {
            DbError::InUse => StartError::ConnectionInUse,
            DbError::Database(e) => StartError::Database(e),
        })?;
        start(&mut *conn, req).await
    }

    /// Sends an event to a workflow inside the mutation's transaction (see [`send_event`]):
    /// it is delivered only if the mutation succeeds.
    pub async fn send_workflow_event(
        &self,
        id: Uuid,
        name: &str,
        payload: Value,
    ) -> Result<(), EventError> {
        let mut conn = self.db().await.map_err(|e| match e {
            DbError::InUse => EventError::ConnectionInUse,
            DbError::Database(e) => EventError::Database(e),
        })?;
        send_event(&mut *conn, id, name, payload).await
    }
}
