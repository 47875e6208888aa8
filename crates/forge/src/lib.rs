//! # Forge
//!
//! Background jobs and durable workflows written as plain async Rust functions, kept in
//! PostgreSQL, and tracked live from the browser.
//!
//! ```ignore
//! use forge::prelude::*;
//!
//! #[forge::job(max_attempts = 5, timeout = "10m")]
//! pub async fn export_users(ctx: &JobContext, format: String) -> Result<ExportResult> {
//!     for (i, chunk) in rows.chunks(500).enumerate() {
//!         ctx.check_cancelled().await?;
//!         ctx.progress(pct, format!("Processing row {}...", (i + 1) * 500)).await?;
//!     }
//!     Ok(result)
//! }
//!
//! let forge = Forge::connect(&database_url).await?;
//! let worker = forge.start_worker(WorkerConfig::default()).await?;
//! let job_id = forge.enqueue(export_users::request("csv".into())).await?;
//! ```
//!
//! Clients call queries and mutations (and start jobs) through the gateway
//! (`forge-gateway`): `POST /_api/rpc/{fn}` with the arguments as JSON.
//!
//! ```ignore
//! #[forge::query] // signed-in users; `public` or `role = "admin"` otherwise
//! pub async fn my_todos(ctx: &QueryContext) -> Result<Vec<String>> {
//!     let user = ctx.user().expect("not public, so signed in");
//!     let mut db = ctx.db().await?; // a read-only transaction
//!     Ok(sqlx::query_scalar("SELECT title FROM todos WHERE owner = $1")
//!         .bind(&user.id)
//!         .fetch_all(&mut *db)
//!         .await?)
//! }
//!
//! #[forge::mutation(timeout = "5s")]
//! pub async fn add_todo(ctx: &MutationContext, title: String) -> Result<()> {
//!     if title.is_empty() {
//!         return Err(Error::invalid_arg("title", "must not be empty")); // 400, shown
//!     }
//!     {
//!         let mut db = ctx.db().await?; // one transaction, committed on Ok
//!         sqlx::query("INSERT INTO todos (title) VALUES ($1)").bind(&title).execute(&mut *db).await?;
//!     }
//!     ctx.enqueue(notify_watchers::request(title)).await?; // only if the mutation commits
//!     Ok(())
//! }
//! ```
//!
//! Durable workflows are made of named steps; each step's output is stored, so a workflow
//! resumes after a crash without running completed steps again, sleeps and waits for events
//! without holding a worker, and undoes its completed steps when it fails (see
//! [`workflow`](mod@workflow)):
//!
//! ```ignore
//! #[forge::workflow(steps = ["reserve", "charge", "wait_shipped"])]
//! pub async fn place_order(ctx: &WorkflowContext, order_id: Uuid) -> Result<()> {
//!     let hold: Hold = ctx.step("reserve", || async { stock::reserve(order_id).await })
//!         .compensate(|hold: Hold| async move { stock::release(hold).await })
//!         .await?;
//!     ctx.step("charge", || async { payments::charge(order_id).await }).retries(5).await?;
//!     let _: Shipped = ctx.wait_for_event("shipped", Duration::from_secs(7 * 86400))
//!         .named("wait_shipped").await?;
//!     Ok(())
//! }
//! let id = forge.start_workflow(place_order::request(order_id)).await?;
//! ```
//!
//! The layers, each its own crate: `forge-macros` (the attributes), `forge-runtime` (store,
//! queue, workers, notifier). This crate re-exports what users need, and no more: the
//! engine's internals are not part of its API.

pub use forge_macros::cron;
pub use forge_macros::workflow;
pub use forge_macros::{job, mutation, query};
pub use forge_runtime::runs;
pub use forge_runtime::schedule;
pub use forge_runtime::workflow;
// What users write against: jobs, workflows, functions, their contexts, errors and
// configuration. The engine's internals (store, worker, registry, notifier) stay in
// `forge-runtime`, for Forge's own crates; they are not API.
pub use forge_runtime::{
    error, function, queue, status, DatabaseConfig, EnqueueOptions, Error, ErrorKind, Forge,
    JobContext, JobRequest, JobState, JobStatus, MutationContext, QueryContext, Refusal, Result,
    ResultExt, RetentionConfig, User, Worker, WorkerConfig,
};
pub use forge_runtime::{
    StepStatus, WorkflowContext, WorkflowRequest, WorkflowState, WorkflowStatus,
};

/// Following updates inside the process: [`Forge::notifier`] hands out the node's stream of
/// job and workflow updates as [`Event`](updates::Event)s. Read-only: it only listens.
pub mod updates {
    pub use forge_runtime::notifier::{Event, Notifier};
    pub use forge_runtime::publish::{
        JobUpdate, WorkflowUpdate, WorkflowUpdates, JOB_UPDATES, WORKFLOW_UPDATES,
    };
}

/// `use forge::prelude::*;` brings what job code needs.
pub mod prelude {
    pub use crate::{
        EnqueueOptions, Error, Forge, JobContext, JobRequest, JobState, JobStatus, MutationContext,
        QueryContext, Result, ResultExt, User, WorkerConfig,
    };
    pub use crate::{WorkflowContext, WorkflowRequest, WorkflowState, WorkflowStatus};
}

/// Used by the code the macros generate. Not a public API.
#[doc(hidden)]
pub mod __private {
    pub use forge_runtime::error::ArgsError;
    pub use forge_runtime::registry::{
        decode_args, parse_args, Access, ArgDef, Backoff, FunctionOptions, JobDef, JobOptions,
        MutationDef, QueryDef,
    };
    pub use forge_runtime::registry::{WorkflowDef, WorkflowOptions};
    pub use forge_runtime::schedule::{CronDef, Missed, Overlap};
    pub use futures::future::BoxFuture;
    pub use inventory;
    pub use schemars;
    pub use serde;
    pub use serde_json;

    /// What every argument and output of a Forge function must be. Spelled out as one trait
    /// so the compiler's message says what is missing in Forge's words.
    #[diagnostic::on_unimplemented(
        message = "`{Self}` cannot be an argument or output of a forge function",
        label = "must implement `serde::Serialize`, `serde::Deserialize` and `schemars::JsonSchema`",
        note = "derive them: `#[derive(Serialize, Deserialize, JsonSchema)]`"
    )]
    pub trait Wire:
        serde::Serialize + serde::de::DeserializeOwned + schemars::JsonSchema + Send + 'static
    {
    }
    impl<T> Wire for T where
        T: serde::Serialize + serde::de::DeserializeOwned + schemars::JsonSchema + Send + 'static
    {
    }

    pub const fn assert_wire<T: Wire>() {}

    pub fn schema_for<T: schemars::JsonSchema>(
        gen: &mut schemars::SchemaGenerator,
    ) -> schemars::Schema {
        gen.subschema_for::<T>()
    }
}
