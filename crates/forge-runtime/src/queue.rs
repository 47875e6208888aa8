//! Enqueueing: typed from Rust (the request types the macros generate), untyped from JSON (the
//! gateway). Arguments are checked against the registered job before anything is written.

use std::marker::PhantomData;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::error::EnqueueError;
use crate::registry;
use crate::store::{self, NewJob};

/// Per-enqueue settings; unset ones come from the job's `#[forge::job(...)]` options.
#[derive(Debug, Clone, Default)]
pub struct EnqueueOptions {
    /// Lower runs first.
    pub priority: Option<i32>,
    pub queue: Option<String>,
    /// Run no earlier than this.
    pub run_at: Option<DateTime<Utc>>,
    pub max_attempts: Option<u32>,
    /// Who started the job: only they may watch or cancel it through the gateway.
    pub owner: Option<String>,
    /// A second enqueue with the same key returns the first job instead of a new one.
    pub idempotency_key: Option<String>,
}

/// A job ready to be enqueued. `O` is the job's output type, for typed callers.
#[derive(Debug, Clone)]
pub struct JobRequest<O = Value> {
    name: String,
    args: Value,
    options: EnqueueOptions,
    _output: PhantomData<fn() -> O>,
}

impl<O> JobRequest<O> {
    /// A request for the job named `name` with JSON arguments; they are checked when it is
    /// enqueued. The macros' typed constructors (`my_job::request(..)`) build on this.
    pub fn new(name: impl Into<String>, args: Value) -> Self {
        Self {
            name: name.into(),
            args,
            options: EnqueueOptions::default(),
            _output: PhantomData,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn priority(mut self, priority: i32) -> Self {
        self.options.priority = Some(priority);
        self
    }

    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.options.queue = Some(queue.into());
        self
    }

    pub fn run_at(mut self, at: DateTime<Utc>) -> Self {
        self.options.run_at = Some(at);
        self
    }

    /// Runs no earlier than `delay` from now. A delay past the representable future (say
    /// `Duration::MAX` for "never") means the latest time that can be stored.
    pub fn delay(self, delay: Duration) -> Self {
        let at = chrono::Duration::from_std(delay)
            .ok()
            .and_then(|d| Utc::now().checked_add_signed(d))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        self.run_at(at)
    }

    pub fn max_attempts(mut self, n: u32) -> Self {
        self.options.max_attempts = Some(n);
        self
    }

    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.options.owner = Some(owner.into());
        self
    }

    /// Makes `owner` the owner unless the request names one: a job started on a user's behalf
    /// (by their mutation, say) belongs to them.
    pub(crate) fn or_owner(mut self, owner: Option<&str>) -> Self {
        if self.options.owner.is_none() {
            self.options.owner = owner.map(str::to_string);
        }
        self
    }

    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.options.idempotency_key = Some(key.into());
        self
    }

    pub fn options(mut self, options: EnqueueOptions) -> Self {
        self.options = options;
        self
    }

    /// Checks the request against the registry and turns it into a row to insert.
    pub fn prepare(self) -> Result<NewJob, EnqueueError> {
        let def =
            registry::job(&self.name).ok_or_else(|| EnqueueError::UnknownJob(self.name.clone()))?;
        let args = (def.parse_args)(self.args)?;
        crate::value::check_args(&args)?;
        let o = self.options;
        let max_attempts = o.max_attempts.unwrap_or(def.options.max_attempts);
        if max_attempts == 0 || max_attempts > i32::MAX as u32 {
            return Err(EnqueueError::InvalidOption {
                field: "max_attempts",
                message: format!("must be at least 1, got {max_attempts}"),
            });
        }
        Ok(NewJob {
            id: Uuid::now_v7(),
            function_name: def.name.to_string(),
            args,
            queue: o.queue.unwrap_or_else(|| def.options.queue.to_string()),
            priority: o.priority.unwrap_or(def.options.priority),
            max_attempts: max_attempts as i32,
            run_at: o.run_at,
            owner: o.owner,
            idempotency_key: o.idempotency_key,
            trace_context: crate::trace::current(),
        })
    }
}

/// Enqueues one job on `conn`. On a connection in a transaction (`&mut *tx`), the job exists
/// only if the transaction commits.
pub async fn enqueue<O>(conn: &mut PgConnection, req: JobRequest<O>) -> Result<Uuid, EnqueueError> {
    let job = req.prepare()?;
    let ids = store::insert_jobs(conn, std::slice::from_ref(&job)).await?;
    Ok(ids[0])
}

/// Enqueues many jobs in one statement: all or none. On a connection in a transaction
/// (`&mut *tx`), they exist only if it commits.
pub async fn enqueue_many<O>(
    conn: &mut PgConnection,
    reqs: impl IntoIterator<Item = JobRequest<O>>,
) -> Result<Vec<Uuid>, EnqueueError> {
    let jobs = reqs
        .into_iter()
        .map(JobRequest::prepare)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(store::insert_jobs(conn, &jobs).await?)
}
