//! The Forge runtime: background jobs on PostgreSQL.
//!
//! ```text
//!  enqueue ──► store (forge.jobs) ◄── claim (FOR UPDATE SKIP LOCKED) ── worker ── handler
//!                 │   ▲                                                   │
//!                 │   └──── writer: starts, progress, finishes (batched) ◄┘
//!                 └── trigger ── NOTIFY forge_job_updates ──► notifier ──► gateway / workers
//! ```
//!
//! * [`store`] holds all SQL. Nothing else in Forge writes SQL.
//! * [`queue`] checks and enqueues jobs; [`worker`] claims and runs them.
//! * [`publish`] owns the notification channels and their payloads; [`notifier`] is the
//!   node's single LISTEN connection, which decodes them.
//! * [`runs`] lists and inspects jobs and workflows, and retries, cancels and deletes jobs,
//!   for application code and operators.
//! * [`schedule`] enqueues a job at each tick of a cron schedule, once across all nodes.
//! * [`workflow`] runs durable workflows on the same workers: each run (and each resume after a
//!   wait) is a job that replays the workflow's recorded steps.
//!
//! # Publishing updates, and why this way
//! A transaction that sent NOTIFY takes a database-wide lock while it commits, so one NOTIFY
//! per progress call caps a whole installation near a thousand updates a second. Forge
//! therefore never commits a job-state change on its own:
//!
//! 1. Every write a worker node makes (start, progress, finish) goes through the node's one
//!    writer, which applies whatever accumulated while the previous batch was being written,
//!    in one transaction (group commit). At low load each write goes out alone, within about a
//!    millisecond; under load batches grow, and commits stay few. A worker does not wait for
//!    a job's finish to be written before it starts the next job (else a batch could never
//!    hold more finishes than the node's concurrency), and it claims in batches too.
//! 2. A job's `running` write is held back a few milliseconds (`worker::START_DEFER`, or until
//!    its first progress report): a job that ends sooner is recorded `claimed` → final in one
//!    row write, and the trigger publishes `running` and the final status together, in order.
//!    Short jobs cost two row writes (claim, finish) instead of three, and no transition goes
//!    unpublished. A node running short jobs fast goes further and holds its claims (see
//!    [`worker`]): the claim only locks the jobs, and each is written once, when it ended.
//! 3. A statement-level trigger on `forge.jobs` publishes every changed row of a statement on
//!    `forge_job_updates` as JSON arrays of updates (`job_id`, `status`, `attempt`,
//!    `progress`, `message`; never the output), each below the 8,000-byte payload limit. A
//!    batch of a thousand updates costs one commit and a few notifications. Being a trigger,
//!    no path that changes job state (workers, cancel requests, the lease reaper, an
//!    operator's SQL) can forget to publish, and nothing is published before it commits.
//!    Two statements of the store publish their own updates, in the same statement, because
//!    the node already knows them: the insert of an eagerly started job, and the close of a
//!    held claim, whose jobs its transaction has locked since it read them. The trigger's JSON
//!    was a third of a close's time in PostgreSQL; the node builds the same payloads instead
//!    (migration 0010 skips the trigger for it). [`publish`] owns the format both follow.
//! 4. Each node LISTENs once and fans updates out in-process.
//!
//! # From enqueue to start
//! * A bulk enqueue of many plain jobs is one `COPY` in PostgreSQL's binary format (see
//!   `store::insert_jobs`); fewer jobs, or ones with idempotency keys or start times, are one
//!   `INSERT`. Either way it is one statement: all or none.
//! * A job enqueued through a node whose worker is idle is inserted already claimed by that
//!   worker and runs as soon as the insert commits, without the round of notification and
//!   claim (an eager start, as Temporal's; see [`worker`]).
//! * Other jobs wake idle workers of every node with `forge_jobs_available`; workers also poll.
//!
//! # Delivery guarantees of jobs
//! At least once: a job whose node dies is run again when its lease runs out, so handlers
//! should be idempotent. Every write of an attempt is fenced by its attempt number: a late
//! write of an old attempt changes nothing.

pub mod backoff;
mod definition;
pub mod error;
mod forge;
pub mod function;
pub mod maintenance;
pub mod metrics;
pub mod notifier;
pub mod publish;
pub mod queue;
pub mod registry;
pub mod runs;
pub mod schedule;
pub mod status;
pub mod store;
pub mod text;
pub mod trace;
pub mod value;
pub mod worker;
pub mod workflow;

pub use error::{Error, ErrorKind, Refusal, Result, ResultExt};
pub use forge::Forge;
pub use function::{MutationContext, QueryContext, User};
pub use maintenance::RetentionConfig;
pub use queue::{EnqueueOptions, JobRequest};
pub use status::{JobState, JobStatus, StepStatus, WorkflowState, WorkflowStatus};
pub use store::DatabaseConfig;
pub use worker::{JobContext, Worker, WorkerConfig};
pub use workflow::{WorkflowContext, WorkflowRequest};
