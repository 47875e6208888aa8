//! The RPC routes: one call (`POST /_api/rpc/{fn}`, `POST /_api/rpc`), a batch of calls
//! (`POST /_api/rpc/batch`), and cancelling a job or workflow (`POST /_api/cancel-job`,
//! `POST /_api/cancel-workflow`).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use forge_runtime::error::{CancelError, WorkflowCancelError};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::auth::Identity;
use crate::error::{json_body, json_value, ApiError};
use crate::functions::{Call, Caller};
use crate::realtime::Follow;
use crate::state::AppState;

pub(crate) fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/_api/rpc", post(call))
        .route("/_api/rpc/batch", post(batch))
        .route("/_api/rpc/{fn}", post(call_named))
        .route("/_api/cancel-job", post(cancel_job))
        .route("/_api/cancel-workflow", post(cancel_workflow))
        .with_state(state)
}

/// `POST /_api/rpc/{fn}`: the body is the arguments; an empty body means none.
async fn call_named(
    State(s): State<Arc<AppState>>,
    Path(function): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let identity = s.auth.from_headers(&headers)?;
    let args = if body.is_empty() {
        Value::Null
    } else {
        json_value(&headers, &body)?
    };
    let call = Call {
        function,
        args,
        follow: None,
    };
    let data = s.caller.call(identity.as_ref(), call).await?;
    Ok(json_response(&json!({ "data": data })))
}

/// A call as `POST /_api/rpc` and the batch carry it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Envelope {
    #[serde(rename = "fn")]
    function: String,
    #[serde(default)]
    args: Value,
    follow: Option<Follow>,
}

fn envelope(value: Value) -> Result<Call, ApiError> {
    if !value.is_object() {
        return Err(ApiError::bad_request(
            "a call is an object: `{\"fn\": \"name\", \"args\": {...}}`",
        ));
    }
    let e: Envelope = forge_runtime::registry::decode_args(value)
        .map_err(|e| ApiError::bad_request(e.message).with_field(&e.field))?;
    Ok(Call {
        function: e.function,
        args: e.args,
        follow: e.follow,
    })
}

/// `POST /_api/rpc`: `{ "fn", "args", "follow"? }`.
async fn call(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let identity = s.auth.from_headers(&headers)?;
    let call = envelope(json_value(&headers, &body)?)?;
    let data = s.caller.call(identity.as_ref(), call).await?;
    Ok(json_response(&json!({ "data": data })))
}

/// `POST /_api/rpc/batch`: `[{ "fn", "args" }, ...]`, one result per call, in order.
async fn batch(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let identity = s.auth.from_headers(&headers)?;
    let Value::Array(items) = json_value(&headers, &body)? else {
        return Err(ApiError::bad_request(
            "a batch is a JSON array of calls: `[{\"fn\": \"name\", \"args\": {...}}, ...]`",
        ));
    };
    let limit = s.config.batch_limit;
    if items.len() > limit {
        return Err(ApiError::payload_too_large(format!(
            "a batch holds at most {limit} calls, this one has {}",
            items.len()
        )));
    }
    let results = run_batch(&s.caller, identity.as_ref(), items).await;
    Ok(json_response(&json!({ "results": results })))
}

/// Runs a batch's calls: consecutive queries side by side, every other call alone once the
/// calls before it are done, so that a call sees the writes of the mutations listed before
/// it. A failing call fails alone.
async fn run_batch(caller: &Caller, identity: Option<&Identity>, items: Vec<Value>) -> Vec<Value> {
    let mut results = vec![Value::Null; items.len()];
    let mut queries = Vec::new();
    for (i, item) in items.into_iter().enumerate() {
        let call = match envelope(item) {
            Ok(call) => call,
            Err(e) => {
                results[i] = outcome(Err(e));
                continue;
            }
        };
        let is_query = caller
            .functions
            .get(&call.function)
            .is_none_or(|f| f.is_query());
        if is_query {
            queries.push((i, call));
            continue;
        }
        run_queries(caller, identity, &mut queries, &mut results).await;
        results[i] = outcome(caller.call(identity, call).await);
    }
    run_queries(caller, identity, &mut queries, &mut results).await;
    results
}

async fn run_queries(
    caller: &Caller,
    identity: Option<&Identity>,
    queries: &mut Vec<(usize, Call)>,
    results: &mut [Value],
) {
    let runs = queries.drain(..).map(|(i, call)| async move {
        let out = caller.call(identity, call).await;
        (i, out)
    });
    for (i, out) in futures::future::join_all(runs).await {
        results[i] = outcome(out);
    }
}

fn outcome(out: Result<Value, ApiError>) -> Value {
    match out {
        Ok(data) => json!({ "data": data }),
        Err(e) => json!({ "error": e.body() }),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CancelJob {
    job_id: Uuid,
}

/// The owner a cancel is restricted to: the caller's own, unless they have the admin role.
fn cancel_owner<'a>(s: &AppState, identity: &'a Identity) -> Option<&'a str> {
    let is_admin = s
        .config
        .admin_role
        .as_deref()
        .is_some_and(|role| identity.has_role(role));
    (!is_admin).then_some(identity.user_id.as_str())
}

/// `POST /_api/cancel-job`: only the job's owner (or the admin role) may cancel it; anyone
/// else is told it does not exist.
async fn cancel_job(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(identity) = s.auth.from_headers(&headers)? else {
        return Err(ApiError::unauthenticated(
            "cancelling a job needs a signed-in user",
        ));
    };
    let req: CancelJob = json_body(&headers, &body)?;
    let owner = cancel_owner(&s, &identity);
    match s.caller.forge.cancel_job(req.job_id, owner).await {
        Ok(status) => Ok(json_response(&json!({ "data": { "status": status } }))),
        Err(CancelError::NotFound) => Err(ApiError::not_found("no such job").with_field("jobId")),
        Err(e @ CancelError::AlreadyFinished(status)) => {
            let mut err = ApiError::conflict(e.to_string());
            err.details = Some(json!({ "field": "jobId", "status": status }));
            Err(err)
        }
        Err(e) => Err(ApiError::internal(format_args!(
            "cancelling job {}: {e}",
            req.job_id
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CancelWorkflow {
    workflow_id: Uuid,
}

/// `POST /_api/cancel-workflow`: as for jobs; the workflow's completed steps are compensated.
async fn cancel_workflow(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(identity) = s.auth.from_headers(&headers)? else {
        return Err(ApiError::unauthenticated(
            "cancelling a workflow needs a signed-in user",
        ));
    };
    let req: CancelWorkflow = json_body(&headers, &body)?;
    let owner = cancel_owner(&s, &identity);
    match s.caller.forge.cancel_workflow(req.workflow_id, owner).await {
        Ok(status) => Ok(json_response(&json!({ "data": { "status": status } }))),
        Err(WorkflowCancelError::NotFound) => {
            Err(ApiError::not_found("no such workflow").with_field("workflowId"))
        }
        Err(e @ WorkflowCancelError::AlreadyFinished(status)) => {
            let mut err = ApiError::conflict(e.to_string());
            err.details = Some(json!({ "field": "workflowId", "status": status }));
            Err(err)
        }
        Err(e) => Err(ApiError::internal(format_args!(
            "cancelling workflow {}: {e}",
            req.workflow_id
        ))),
    }
}

pub(crate) fn json_response(body: &Value) -> Response {
    match serde_json::to_vec(body) {
        Ok(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            bytes,
        )
            .into_response(),
        Err(e) => ApiError::internal(format_args!("serializing a response: {e}")).into_response(),
    }
}
