//! All of Forge's SQL. Workers, the gateway and the workflow engine call the named operations
//! here (in the manner of River's driver interface) and never write SQL themselves.

mod jobs;
mod migrate;
mod realtime;
mod schedules;
mod transactions;
mod workflows;

pub use jobs::{
    get_job, insert_jobs, Applied, ClaimedJob, Finish, FinishStatus, HeldClaim, HeldEnd, HeldWrite,
    JobRow, NewJob, ProgressWrite, StartWrite, UpdateBatch,
};
pub use migrate::MIGRATIONS;
pub use realtime::{DbSnapshot, TableWatch, TrackedRead};
pub use schedules::*;
pub use workflows::{
    cancel_workflow, deliver_event, get_workflow, insert_workflow, load_workflow, lock_workflow,
    take_event, workflow_job_name, write_workflow, CancelOutcome, DeliverOutcome, Fence,
    HistoryEntry, LoadedWorkflow, NewWorkflow, Park, StepKind, StepStart, StepUpdate, WorkflowRow,
    WorkflowWrite, WriteOutcome, WORKFLOW_JOB_ATTEMPTS, WORKFLOW_JOB_PREFIX,
};

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::error::RuntimeError;

/// The database behind one node: a pool and the operations on it.
#[derive(Clone, Debug)]
pub struct Store {
    pool: PgPool,
}

impl Store {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    /// Opens a pool on `url`.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, RuntimeError> {
        let opts: PgConnectOptions =
            url.parse().map_err(|e: sqlx::Error| RuntimeError::Config {
                field: "database_url",
                message: e.to_string(),
            })?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(opts.application_name("forge"))
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies the embedded migrations that are not applied yet.
    pub async fn migrate(&self) -> Result<(), RuntimeError> {
        migrate::run(&self.pool).await
    }

    /// True when the database answers and every embedded migration is applied.
    pub async fn is_ready(&self) -> bool {
        migrate::is_current(&self.pool).await.unwrap_or(false)
    }
}
