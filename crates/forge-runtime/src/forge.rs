//! [`Forge`], the whole API of a node in one place: the pool and migrations, the node's one
//! listener, its workers, and starting and following jobs and workflows.

use std::collections::HashMap;

use serde_json::Value;
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::error::{
    CancelError, EnqueueError, EventError, RuntimeError, StartError, WorkflowCancelError,
};
use crate::notifier::Notifier;
use crate::queue::{self, JobRequest};
use crate::registry;
use crate::status::{JobStatus, WorkflowState, WorkflowStatus};
use crate::store::{DatabaseConfig, JobRow, NewJob, Store, WorkflowRow};
use crate::worker::{self, Handler, Worker, WorkerConfig};
use crate::workflow::{self, WorkflowRequest};

/// Entry point of the runtime. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Forge {
    store: Store,
    notifier: std::sync::Arc<OnceCell<Notifier>>,
    /// This node's workers, which its enqueues may start jobs on at once.
    workers: std::sync::Arc<std::sync::Mutex<Vec<worker::Eager>>>,
}

impl Forge {
    /// Connects to `database_url` with the default [`DatabaseConfig`] and applies migrations.
    pub async fn connect(database_url: &str) -> Result<Self, RuntimeError> {
        Self::connect_with(database_url, 20).await
    }

    pub async fn connect_with(
        database_url: &str,
        max_connections: u32,
    ) -> Result<Self, RuntimeError> {
        Self::connect_with_config(
            database_url,
            DatabaseConfig {
                max_connections,
                ..DatabaseConfig::default()
            },
        )
        .await
    }

    /// Connects with every pool setting of `config` and applies migrations.
    pub async fn connect_with_config(
        database_url: &str,
        config: DatabaseConfig,
    ) -> Result<Self, RuntimeError> {
        let store = Store::connect_with(database_url, config).await?;
        store.migrate().await?;
        Ok(Self::from_store(store))
    }

    /// Closes the node's pools. Its LISTEN connection stays until the process ends.
    pub async fn close(&self) {
        self.store.close().await;
    }

    /// Wraps a store whose migrations were applied.
    pub fn from_store(store: Store) -> Self {
        Self {
            store,
            notifier: Default::default(),
            workers: Default::default(),
        }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn pool(&self) -> &sqlx::PgPool {
        self.store.pool()
    }

    /// The node's LISTEN connection, started on first use.
    pub async fn notifier(&self) -> Result<Notifier, RuntimeError> {
        let n = self
            .notifier
            .get_or_try_init(|| Notifier::start(&self.store, &[]))
            .await?;
        Ok(n.clone())
    }

    /// Enqueues a job. `my_job::request(args..)` builds a typed request.
    ///
    /// When a worker of this node is idle and runs such jobs, the job is inserted already
    /// claimed by it and starts as soon as the insert commits (an eager start; see the worker
    /// module). Jobs with an idempotency key or a start time are always queued.
    pub async fn enqueue<O>(&self, req: JobRequest<O>) -> Result<Uuid, EnqueueError> {
        let job = req.prepare()?;
        Ok(self.insert_job(&job).await?.0)
    }

    /// Inserts a job checked by [`JobRequest::prepare`], as [`enqueue`](Self::enqueue) does.
    /// Returns its id (for a taken idempotency key, the existing job's) and the status it
    /// was inserted with: `claimed` when it was started eagerly, else `pending`.
    pub async fn insert_job(&self, job: &NewJob) -> Result<(Uuid, JobStatus), sqlx::Error> {
        if job.idempotency_key.is_none() && job.run_at.is_none() {
            let reservation = {
                let workers = self.workers.lock().unwrap();
                workers
                    .iter()
                    .find_map(|w| w.reserve(&job.function_name, &job.queue))
            };
            if let Some(slot) = reservation {
                let claimed = self
                    .store
                    .insert_claimed_job(job, slot.worker_id(), slot.lease())
                    .await?;
                slot.start(claimed);
                return Ok((job.id, JobStatus::Claimed));
            }
        }
        Ok((self.store.insert_job(job).await?, JobStatus::Pending))
    }

    /// Enqueues many jobs in one statement.
    pub async fn enqueue_many<O>(
        &self,
        reqs: impl IntoIterator<Item = JobRequest<O>>,
    ) -> Result<Vec<Uuid>, EnqueueError> {
        let mut conn = self.store.pool().acquire().await?;
        queue::enqueue_many(&mut conn, reqs).await
    }

    /// Enqueues a job by name with JSON arguments (as the gateway does). Arguments that do not
    /// fit are rejected with the field named, and nothing is written.
    pub async fn enqueue_json(&self, name: &str, args: Value) -> Result<Uuid, EnqueueError> {
        self.enqueue(JobRequest::<Value>::new(name, args)).await
    }

    /// See [`Store::request_cancel`].
    pub async fn cancel_job(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<JobStatus, CancelError> {
        self.store.request_cancel(id, owner).await
    }

    pub async fn job(&self, id: Uuid) -> Result<Option<JobRow>, sqlx::Error> {
        self.store.get_job(id).await
    }

    /// Starts this node's workers for every registered job and workflow, and its scheduler.
    pub async fn start_worker(&self, config: WorkerConfig) -> Result<Worker, RuntimeError> {
        let mut handlers = registry::job_handlers();
        handlers.extend(workflow::handlers());
        let worker = self.start_worker_with(config, handlers).await?;
        // Every worker node handles due schedules too (see `schedule`), until it stops.
        if let Err(e) = self.start_scheduler_until(worker.stop_token()).await {
            worker.shutdown().await;
            return Err(e);
        }
        Ok(worker)
    }

    /// Starts workers with an explicit set of handlers.
    pub async fn start_worker_with(
        &self,
        config: WorkerConfig,
        handlers: HashMap<String, Handler>,
    ) -> Result<Worker, RuntimeError> {
        if config.concurrency == 0 {
            return Err(RuntimeError::Config {
                field: "concurrency",
                message: "must be at least 1".into(),
            });
        }
        let notifier = self.notifier().await?;
        let worker = Worker::start(self.store.for_worker(), &notifier, config, handlers);
        let mut workers = self.workers.lock().unwrap();
        workers.retain(worker::Eager::is_alive);
        workers.push(worker.eager());
        Ok(worker)
    }

    // Workflows.
    /// Starts a workflow. `my_workflow::request(args..)` builds a typed request.
    pub async fn start_workflow<O>(&self, req: WorkflowRequest<O>) -> Result<Uuid, StartError> {
        workflow::start(self.pool(), req).await
    }

    /// Starts many workflows in one statement (see [`workflow::start_many`]).
    pub async fn start_workflows<O>(
        &self,
        reqs: impl IntoIterator<Item = WorkflowRequest<O>>,
    ) -> Result<Vec<Uuid>, StartError> {
        workflow::start_many(self.pool(), reqs).await
    }

    /// Starts a workflow by name with JSON arguments (as the gateway does). Arguments that do
    /// not fit are rejected with the field named, and nothing is written.
    pub async fn start_workflow_json(
        &self,
        name: &str,
        args: Value,
        owner: Option<String>,
    ) -> Result<Uuid, StartError> {
        workflow::start_json(self.pool(), name, args, owner).await
    }

    /// See [`workflow::cancel`].
    pub async fn cancel_workflow(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<WorkflowStatus, WorkflowCancelError> {
        workflow::cancel(self.pool(), id, owner).await
    }

    /// See [`workflow::send_event`].
    pub async fn send_workflow_event(
        &self,
        id: Uuid,
        name: &str,
        payload: Value,
    ) -> Result<(), EventError> {
        workflow::send_event(self.pool(), id, name, payload).await
    }

    /// The state clients see of a workflow, if it exists.
    pub async fn workflow_state(&self, id: Uuid) -> Result<Option<WorkflowState>, sqlx::Error> {
        self.store().workflow_state(id).await
    }

    pub async fn workflow(&self, id: Uuid) -> Result<Option<WorkflowRow>, sqlx::Error> {
        self.store().get_workflow(id).await
    }
}
