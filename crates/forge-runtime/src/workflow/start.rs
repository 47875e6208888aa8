//! Starting workflows: typed from Rust (`my_workflow::request(..)`), untyped from JSON (the
//! gateway). Arguments are checked against the registered workflow before anything is
//! written.

use std::marker::PhantomData;

use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use super::def;
use crate::error::StartError;
use crate::store::{self, NewWorkflow};

/// A workflow ready to be started. `O` is the workflow's output type, for typed callers.
#[derive(Debug, Clone)]
pub struct WorkflowRequest<O = Value> {
    name: String,
    args: Value,
    owner: Option<String>,
    idempotency_key: Option<String>,
    _output: PhantomData<fn() -> O>,
}

impl<O> WorkflowRequest<O> {
    /// A request for the workflow named `name` with JSON arguments; they are checked when it
    /// starts. The macro's typed constructor (`my_workflow::request(..)`) builds on this.
    pub fn new(name: impl Into<String>, args: Value) -> Self {
        Self {
            name: name.into(),
            args,
            owner: None,
            idempotency_key: None,
            _output: PhantomData,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Who starts the workflow: only they may watch or cancel it through the gateway.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }

    /// A second start with the same key returns the first workflow instead of a new one.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.idempotency_key = Some(key.into());
        self
    }

    /// Makes `owner` the owner unless the request names one.
    pub(crate) fn or_owner(mut self, owner: Option<&str>) -> Self {
        if self.owner.is_none() {
            self.owner = owner.map(str::to_string);
        }
        self
    }

    /// Checks the request against the registry and turns it into rows to insert.
    pub fn prepare(self) -> Result<NewWorkflow, StartError> {
        let def = def::workflow(&self.name)
            .ok_or_else(|| StartError::UnknownWorkflow(self.name.clone()))?;
        let args = (def.parse_args)(self.args)?;
        crate::value::check_args(&args)?;
        Ok(NewWorkflow {
            id: Uuid::now_v7(),
            name: def.name.to_string(),
            args,
            owner: self.owner,
            queue: def.options.queue.to_string(),
            declared_steps: def.options.steps.iter().map(|s| s.to_string()).collect(),
            idempotency_key: self.idempotency_key,
            job_id: Uuid::now_v7(),
            trace_context: crate::trace::current(),
        })
    }
}

/// Starts a workflow through `exec`: a pool, or a transaction so that the workflow exists
/// (and runs) only if the transaction commits. Returns its id.
pub async fn start<'e, O, E: PgExecutor<'e>>(
    exec: E,
    req: WorkflowRequest<O>,
) -> Result<Uuid, StartError> {
    let wf = req.prepare()?;
    Ok(store::insert_workflow(exec, &wf).await?)
}

/// Starts many workflows in one statement: all or none (a request that does not fit the
/// registry rejects the batch before anything is written). Returns their ids in order; two
/// requests with the same idempotency key get the same workflow.
pub async fn start_many<'e, O, E: PgExecutor<'e>>(
    exec: E,
    reqs: impl IntoIterator<Item = WorkflowRequest<O>>,
) -> Result<Vec<Uuid>, StartError> {
    let wfs = reqs
        .into_iter()
        .map(WorkflowRequest::prepare)
        .collect::<Result<Vec<_>, _>>()?;
    if wfs.is_empty() {
        return Ok(Vec::new());
    }
    Ok(store::insert_workflows(exec, &wfs).await?)
}

/// Starts the workflow `name` with JSON arguments, as the gateway does. Arguments that do not
/// fit are rejected with the field named, and nothing is written.
pub async fn start_json<'e, E: PgExecutor<'e>>(
    exec: E,
    name: &str,
    args: Value,
    owner: Option<String>,
) -> Result<Uuid, StartError> {
    let req = WorkflowRequest::<Value>::new(name, args).or_owner(owner.as_deref());
    start(exec, req).await
}
