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

/// The SQLSTATE name of `e` when the database refused the data of a statement (class 22
/// "data exception", say a NUL in `jsonb` or a NOTIFY payload too long, or class 54 "program
/// limit exceeded"): the same statement would be refused again, so retrying it is useless.
/// `None` for every other error (a lost connection: try again).
pub fn refused_data(e: &sqlx::Error) -> Option<String> {
    let code = match e {
        sqlx::Error::Database(db) => db.code()?.into_owned(),
        // Values that could not even be encoded would fail again the same way.
        sqlx::Error::Encode(_) => return Some("encode_error".into()),
        _ => return None,
    };
    if !(code.starts_with("22") || code.starts_with("54")) {
        return None;
    }
    let name = match code.as_str() {
        "22001" => "string_data_right_truncation",
        "22003" => "numeric_value_out_of_range",
        "22021" => "character_not_in_repertoire",
        "22023" => "invalid_parameter_value",
        "22P02" => "invalid_text_representation",
        "22P05" => "untranslatable_character",
        "54000" => "program_limit_exceeded",
        "54001" => "statement_too_complex",
        _ => return Some(format!("SQLSTATE {code}")),
    };
    Some(name.into())
}
