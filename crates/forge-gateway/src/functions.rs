//! The functions clients may call: every registered query, mutation, job and workflow, in one
//! namespace, with the access check and the call itself. Every route that calls a function
//! (the RPC routes, the batch, query subscriptions) goes through here, so the checks are the
//! same on all of them.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use forge_runtime::error::{ArgsError, EnqueueError, StartError};
use forge_runtime::registry::{self, Access, JobDef, MutationDef, QueryDef, WorkflowDef};
use forge_runtime::store;
use forge_runtime::{
    Forge, JobRequest, JobState, MutationContext, QueryContext, User, WorkflowRequest,
};
use futures::future::BoxFuture;
use serde_json::{json, Value};
use sqlx::PgConnection;
use tracing::Instrument;

use crate::auth::Identity;
use crate::error::ApiError;
use crate::guard::{guarded, timed_out};
use crate::rate::{StartLimiter, Starter};
use crate::realtime::{Follow, LiveQuery, QueryResolver, Realtime};

/// What kind of function a name refers to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Function {
    Query(&'static QueryDef),
    Mutation(&'static MutationDef),
    Job(&'static JobDef),
    Workflow(&'static WorkflowDef),
}

impl Function {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Function::Query(d) => d.name,
            Function::Mutation(d) => d.name,
            Function::Job(d) => d.name,
            Function::Workflow(d) => d.name,
        }
    }

    pub(crate) fn doc(self) -> &'static str {
        match self {
            Function::Query(d) => d.doc,
            Function::Mutation(d) => d.doc,
            Function::Job(d) => d.doc,
            Function::Workflow(d) => d.doc,
        }
    }

    pub(crate) fn kind(self) -> &'static str {
        match self {
            Function::Query(_) => "query",
            Function::Mutation(_) => "mutation",
            Function::Job(_) => "job",
            Function::Workflow(_) => "workflow",
        }
    }

    pub(crate) fn access(self) -> Access {
        match self {
            Function::Query(d) => d.options.access,
            Function::Mutation(d) => d.options.access,
            Function::Job(d) => d.options.access,
            Function::Workflow(d) => d.options.access,
        }
    }

    fn timeout(self) -> Option<Duration> {
        match self {
            Function::Query(d) => d.options.timeout,
            Function::Mutation(d) => d.options.timeout,
            // A job's own timeout bounds its run on a worker, a workflow's steps have theirs;
            // through RPC they are only started.
            Function::Job(_) | Function::Workflow(_) => None,
        }
    }

    /// Queries of a batch run side by side; everything else runs alone, in order.
    pub(crate) fn is_query(self) -> bool {
        matches!(self, Function::Query(_))
    }
}

/// Two registered functions share a name, so a call to it could not tell them apart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the {first} `{name}` and the {second} `{name}` share a name; functions called through the gateway need distinct names")]
pub struct DuplicateName {
    pub name: &'static str,
    pub first: &'static str,
    pub second: &'static str,
}

/// Every callable function by name.
#[derive(Debug)]
pub(crate) struct Functions(BTreeMap<&'static str, Function>);

impl Functions {
    pub(crate) fn from_registry() -> Result<Self, DuplicateName> {
        let all = registry::queries()
            .map(Function::Query)
            .chain(registry::mutations().map(Function::Mutation))
            .chain(registry::jobs().map(Function::Job))
            .chain(registry::workflows().map(Function::Workflow));
        let mut map = BTreeMap::new();
        for f in all {
            if let Some(first) = map.insert(f.name(), f) {
                return Err(DuplicateName {
                    name: f.name(),
                    first: first.kind(),
                    second: f.kind(),
                });
            }
        }
        Ok(Self(map))
    }

    pub(crate) fn get(&self, name: &str) -> Option<Function> {
        self.0.get(name).copied()
    }

    /// Ordered by name.
    pub(crate) fn iter(&self) -> impl Iterator<Item = Function> + '_ {
        self.0.values().copied()
    }
}

/// Whether `identity` may call a function with `access`: 401 without a user where one is
/// needed, 403 without the role.
pub(crate) fn authorize(access: Access, identity: Option<&Identity>) -> Result<(), ApiError> {
    match (access, identity) {
        (Access::Public, _) => Ok(()),
        (_, None) => Err(ApiError::unauthenticated(
            "this function needs a signed-in user: send `Authorization: Bearer <token>`",
        )),
        (Access::Authenticated, Some(_)) => Ok(()),
        (Access::Role(role), Some(i)) if i.has_role(role) => Ok(()),
        (Access::Role(role), Some(_)) => Err(ApiError::forbidden(format!(
            "this function needs the role `{role}`"
        ))),
    }
}

/// One call: a function, its arguments, and for a job or workflow, the session to follow it
/// on.
#[derive(Debug)]
pub(crate) struct Call {
    pub(crate) function: String,
    pub(crate) args: Value,
    pub(crate) follow: Option<Follow>,
    /// A job or workflow call's key: a second start under the same key by the same user
    /// returns the first one instead of starting another.
    pub(crate) idempotency_key: Option<String>,
}

/// The longest `idempotencyKey` a call may carry.
const MAX_IDEMPOTENCY_KEY: usize = 200;

/// The stored idempotency key of a call's `key`: scoped to the caller and the function, so
/// that one user's key can never return another user's job (the stored keys share one index).
fn scoped_key(
    function: &str,
    identity: Option<&Identity>,
    key: Option<String>,
) -> Result<Option<String>, ApiError> {
    let Some(key) = key else { return Ok(None) };
    if key.is_empty() || key.chars().count() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::invalid_args(
            "idempotencyKey",
            format!("must be 1 to {MAX_IDEMPOTENCY_KEY} characters"),
        ));
    }
    let Some(identity) = identity else {
        return Err(ApiError::unauthenticated(
            "`idempotencyKey` needs a signed-in caller: keys are kept per user",
        ));
    };
    // The user id is length-prefixed, so no choice of key can reach another user's keys.
    Ok(Some(format!(
        "rpc:{}:{}:{function}:{key}",
        identity.user_id.len(),
        identity.user_id
    )))
}

/// Calls functions for the gateway's routes. Cheap to clone.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    pub(crate) forge: Forge,
    pub(crate) functions: Arc<Functions>,
    pub(crate) realtime: Realtime,
    /// For functions without a `timeout` of their own.
    pub(crate) default_timeout: Duration,
    /// Largest answer of a query or mutation, in bytes of JSON.
    pub(crate) max_result_bytes: usize,
    /// How fast each caller may start jobs and workflows.
    pub(crate) starts: Arc<StartLimiter>,
}

impl Caller {
    /// Looks the function up and checks that `identity` may call it.
    pub(crate) fn resolve(
        &self,
        name: &str,
        identity: Option<&Identity>,
    ) -> Result<Function, ApiError> {
        let f = self.functions.get(name).ok_or_else(|| {
            ApiError::not_found(format!("unknown function `{name}`")).with_field("fn")
        })?;
        authorize(f.access(), identity)?;
        Ok(f)
    }

    /// Makes `call` as `identity`; returns the `data` of the answer.
    /// `ip` is the client's address, when known: anonymous starts are limited by it.
    /// Runs `call` in a `forge.rpc` span, under the request's span (which continues the
    /// client's `traceparent`, see `server`): the jobs and workflows it starts carry it.
    pub(crate) async fn call(
        &self,
        identity: Option<&Identity>,
        ip: Option<IpAddr>,
        call: Call,
    ) -> Result<Value, ApiError> {
        let span = tracing::info_span!(
            "forge.rpc",
            otel.name = %format_args!("rpc {}", call.function),
            rpc.function = %call.function,
        );
        self.run_call(identity, ip, call).instrument(span).await
    }

    async fn run_call(
        &self,
        identity: Option<&Identity>,
        ip: Option<IpAddr>,
        call: Call,
    ) -> Result<Value, ApiError> {
        let f = self.resolve(&call.function, identity)?;
        let startable = matches!(f, Function::Job(_) | Function::Workflow(_));
        if call.idempotency_key.is_some() && !startable {
            return Err(ApiError::invalid_args(
                "idempotencyKey",
                format!(
                    "only a job or workflow start takes a key; `{}` is a {}",
                    f.name(),
                    f.kind()
                ),
            ));
        }
        let key = scoped_key(f.name(), identity, call.idempotency_key)?;
        if call.follow.is_some() && !startable {
            return Err(ApiError::invalid_args(
                "follow",
                format!(
                    "only a job or workflow can be followed; `{}` is a {}",
                    f.name(),
                    f.kind()
                ),
            ));
        }
        if startable {
            let starter = match (identity, ip) {
                (Some(i), _) => Some(Starter::User(i.user_id.clone())),
                (None, Some(ip)) => Some(Starter::Address(ip)),
                (None, None) => None,
            };
            if let Some(starter) = starter {
                self.starts.take(starter).map_err(|wait| {
                    ApiError::rate_limited(
                        "too many jobs and workflows started; try again later",
                        wait,
                    )
                })?;
            }
        }
        let timeout = f.timeout().unwrap_or(self.default_timeout);
        let user = identity.map(Identity::user);
        match f {
            Function::Query(def) => {
                let ctx = QueryContext::new(self.forge.store().clone(), user)
                    .with_statement_timeout(timeout);
                let out = match (def.run)(&ctx, call.args) {
                    Ok(fut) => guarded(def.name, timeout, self.max_result_bytes, fut).await,
                    Err(e) => Err(args_error(e)),
                };
                if let Err(e) = ctx.finish().await {
                    // The answer is known; the pool discards a connection it cannot reset.
                    tracing::warn!(function = def.name, error = %e, "ending a query's transaction");
                }
                out
            }
            Function::Mutation(def) => {
                let ctx = MutationContext::new(self.forge.store().clone(), user)
                    .with_statement_timeout(timeout);
                let out = match (def.run)(&ctx, call.args) {
                    Ok(fut) => guarded(def.name, timeout, self.max_result_bytes, fut).await,
                    Err(e) => Err(args_error(e)),
                };
                match out {
                    Ok(v) => {
                        ctx.commit().await.map_err(|e| {
                            ApiError::internal(format_args!(
                                "committing mutation `{}`: {e}",
                                def.name
                            ))
                        })?;
                        Ok(v)
                    }
                    Err(e) => {
                        if let Err(rb) = ctx.rollback().await {
                            tracing::warn!(function = def.name, error = %rb, "rolling back a failed mutation");
                        }
                        Err(e)
                    }
                }
            }
            Function::Job(def) => {
                let start = self.start_job(def, identity, call.args, call.follow, key);
                match tokio::time::timeout(timeout, start).await {
                    Ok(out) => out,
                    Err(_) => Err(timed_out(def.name, timeout)),
                }
            }
            Function::Workflow(def) => {
                let start = self.start_workflow(def, identity, call.args, call.follow, key);
                match tokio::time::timeout(timeout, start).await {
                    Ok(out) => out,
                    Err(_) => Err(timed_out(def.name, timeout)),
                }
            }
        }
    }

    /// Starts a workflow owned by the caller; answers with its state as started (declared
    /// steps `pending`). With `follow`, the workflow is subscribed on that SSE session before
    /// it is inserted, so its first update cannot be missed.
    async fn start_workflow(
        &self,
        def: &'static WorkflowDef,
        identity: Option<&Identity>,
        args: Value,
        follow: Option<Follow>,
        key: Option<String>,
    ) -> Result<Value, ApiError> {
        let mut req = WorkflowRequest::<Value>::new(def.name, args);
        if let Some(i) = identity {
            req = req.owner(i.user_id.clone());
        }
        if let Some(key) = key {
            req = req.idempotency_key(key);
        }
        let start_error = |e| match e {
            StartError::InvalidArgs(e) => args_error(e),
            e => ApiError::internal(format_args!("starting workflow `{}`: {e}", def.name)),
        };
        let wf = req.prepare().map_err(start_error)?;
        let follow = match follow {
            Some(f) => Some(self.realtime.follow_workflow(identity, &f, wf.id).await?),
            None => None,
        };
        let id = self
            .forge
            .store()
            .insert_workflow(&wf)
            .await
            .map_err(|e| start_error(e.into()))?;
        let state = match follow {
            Some(f) => f.started(id).await?,
            None => None,
        };
        let state = match state {
            Some(state) => state,
            None => self
                .forge
                .workflow_state(id)
                .await
                .map_err(|e| ApiError::internal(format_args!("reading workflow {id}: {e}")))?
                .ok_or_else(|| {
                    ApiError::internal(format_args!("workflow {id} vanished at its start"))
                })?,
        };
        Ok(json!({ "workflowId": id, "state": state }))
    }

    /// Starts a job owned by the caller. With `follow`, the job is subscribed on that SSE
    /// session before it is inserted, so its first update cannot be missed.
    async fn start_job(
        &self,
        def: &'static JobDef,
        identity: Option<&Identity>,
        args: Value,
        follow: Option<Follow>,
        key: Option<String>,
    ) -> Result<Value, ApiError> {
        let mut req = JobRequest::<Value>::new(def.name, args);
        if let Some(i) = identity {
            req = req.owner(i.user_id.clone());
        }
        if let Some(key) = key {
            req = req.idempotency_key(key);
        }
        let job = req.prepare().map_err(|e| enqueue_error(def.name, e))?;
        let follow = match follow {
            Some(f) => Some(self.realtime.follow_job(identity, &f, job.id).await?),
            None => None,
        };
        // Started at once when this node's worker is idle (an eager start).
        let (id, status) =
            self.forge.insert_job(&job).await.map_err(|e| {
                ApiError::internal(format_args!("starting job `{}`: {e}", def.name))
            })?;
        let state = match follow {
            Some(f) => f.started(id).await?,
            None => None,
        };
        let state = state.unwrap_or(JobState {
            job_id: id,
            status,
            progress: None,
            message: None,
            output: None,
            error: None,
        });
        Ok(json!({ "jobId": id, "state": state }))
    }
}

fn args_error(e: ArgsError) -> ApiError {
    ApiError::invalid_args(&e.field, e.message)
}

fn enqueue_error(name: &str, e: EnqueueError) -> ApiError {
    match e {
        EnqueueError::InvalidArgs(e) => args_error(e),
        e => ApiError::internal(format_args!("starting job `{name}`: {e}")),
    }
}

/// Query subscriptions (`POST /_api/subscribe`) resolved from the registry, with the same
/// checks as a call.
impl QueryResolver for Caller {
    fn resolve(
        &self,
        function: &str,
        args: Value,
        caller: Option<&Identity>,
    ) -> Result<Arc<dyn LiveQuery>, ApiError> {
        let f = Caller::resolve(self, function, caller)?;
        let Function::Query(def) = f else {
            return Err(ApiError::invalid_args(
                "fn",
                format!(
                    "only queries can be subscribed to; `{function}` is a {}",
                    f.kind()
                ),
            ));
        };
        let args = (def.parse_args)(args).map_err(args_error)?;
        Ok(Arc::new(LiveCall {
            def,
            args,
            user: caller.map(Identity::user),
            timeout: def.options.timeout.unwrap_or(self.default_timeout),
            max_result_bytes: self.max_result_bytes,
        }))
    }
}

/// A subscribed query with its arguments and caller.
struct LiveCall {
    def: &'static QueryDef,
    args: Value,
    user: Option<User>,
    timeout: Duration,
    max_result_bytes: usize,
}

impl LiveQuery for LiveCall {
    fn run<'a>(&'a self, conn: &'a mut PgConnection) -> BoxFuture<'a, Result<Value, ApiError>> {
        Box::pin(async move {
            store::set_statement_timeout(conn, self.timeout)
                .await
                .map_err(ApiError::internal)?;
            let ctx = QueryContext::on_connection(conn, self.user.clone());
            let fut = (self.def.run)(&ctx, self.args.clone()).map_err(args_error)?;
            guarded(self.def.name, self.timeout, self.max_result_bytes, fut).await
        })
    }
}
