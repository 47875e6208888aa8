//! The RPC routes: one call (`POST /_api/rpc/{fn}`, `POST /_api/rpc`), a batch of calls
//! (`POST /_api/rpc/batch`), and cancelling a job or workflow (`POST /_api/cancel-job`,
//! `POST /_api/cancel-workflow`).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use forge_runtime::error::{CancelError, WorkflowCancelError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
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
    extensions: Extensions,
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
        idempotency_key: None,
    };
    let data = s
        .caller
        .call(identity.as_ref(), client_ip(&extensions), call)
        .await?;
    Ok(json_response(&json!({ "data": data })))
}

/// The client's address, which the gateway's server hands every request (absent when the
/// router is served some other way).
fn client_ip(extensions: &Extensions) -> Option<IpAddr> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip())
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
    idempotency_key: Option<String>,
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
        idempotency_key: e.idempotency_key,
    })
}

/// `POST /_api/rpc`: `{ "fn", "args", "follow"?, "idempotencyKey"? }`.
async fn call(
    State(s): State<Arc<AppState>>,
    extensions: Extensions,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let identity = s.auth.from_headers(&headers)?;
    let call = envelope(json_value(&headers, &body)?)?;
    let data = s
        .caller
        .call(identity.as_ref(), client_ip(&extensions), call)
        .await?;
    Ok(json_response(&json!({ "data": data })))
}

/// `POST /_api/rpc/batch`: `[{ "fn", "args" }, ...]`, one result per call, in order.
async fn batch(
    State(s): State<Arc<AppState>>,
    extensions: Extensions,
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
    let who = Requester {
        identity: identity.as_ref(),
        ip: client_ip(&extensions),
    };
    let results = run_batch(&s.caller, who, items).await;
    Ok(json_response(&json!({ "results": results })))
}

/// Runs a batch's calls: consecutive queries side by side, every other call alone once the
/// calls before it are done, so that a call sees the writes of the mutations listed before
/// it. A failing call fails alone.
async fn run_batch(caller: &Caller, who: Requester<'_>, items: Vec<Value>) -> Vec<Value> {
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
        run_queries(caller, who, &mut queries, &mut results).await;
        results[i] = outcome(caller.call(who.identity, who.ip, call).await);
    }
    run_queries(caller, who, &mut queries, &mut results).await;
    results
}

/// Who makes a batch's calls.
#[derive(Clone, Copy)]
struct Requester<'a> {
    identity: Option<&'a Identity>,
    ip: Option<IpAddr>,
}

async fn run_queries(
    caller: &Caller,
    who: Requester<'_>,
    queries: &mut Vec<(usize, Call)>,
    results: &mut [Value],
) {
    let runs = queries.drain(..).map(|(i, call)| async move {
        let out = caller.call(who.identity, who.ip, call).await;
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

/// `POST /_api/cancel-job`: only the job's owner (or the admin role) may cancel it; anyone
/// else is told it does not exist.
async fn cancel_job(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let forge = s.caller.forge.clone();
    cancel(
        &s,
        &headers,
        &body,
        JOB,
        |req: CancelJob, owner| async move {
            forge
                .cancel_job(req.job_id, owner.as_deref())
                .await
                .map_err(|e| match e {
                    CancelError::NotFound => Refused::NotFound,
                    CancelError::AlreadyFinished(status) => {
                        Refused::Finished(e.to_string(), status)
                    }
                    e => Refused::Failed(format!("cancelling job {}: {e}", req.job_id)),
                })
        },
    )
    .await
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
    let forge = s.caller.forge.clone();
    cancel(
        &s,
        &headers,
        &body,
        WORKFLOW,
        |req: CancelWorkflow, owner| async move {
            forge
                .cancel_workflow(req.workflow_id, owner.as_deref())
                .await
                .map_err(|e| match e {
                    WorkflowCancelError::NotFound => Refused::NotFound,
                    WorkflowCancelError::AlreadyFinished(status) => {
                        Refused::Finished(e.to_string(), status)
                    }
                    e => Refused::Failed(format!("cancelling workflow {}: {e}", req.workflow_id)),
                })
        },
    )
    .await
}

/// What is cancelled, as the answers name it.
struct Cancellable {
    what: &'static str,
    field: &'static str,
}

const JOB: Cancellable = Cancellable {
    what: "job",
    field: "jobId",
};
const WORKFLOW: Cancellable = Cancellable {
    what: "workflow",
    field: "workflowId",
};

/// Why a cancel was not accepted.
enum Refused<S> {
    NotFound,
    /// Already in a terminal status: the message, and the status.
    Finished(String, S),
    Failed(String),
}

/// The one path of both cancel routes: a signed-in caller, the request, the owner it is
/// restricted to, and the answer.
async fn cancel<R, S, F, Fut>(
    s: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
    kind: Cancellable,
    run: F,
) -> Result<Response, ApiError>
where
    R: DeserializeOwned,
    S: Serialize,
    F: FnOnce(R, Option<String>) -> Fut,
    Fut: Future<Output = Result<S, Refused<S>>>,
{
    let Some(identity) = s.auth.from_headers(headers)? else {
        return Err(ApiError::unauthenticated(format!(
            "cancelling a {} needs a signed-in user",
            kind.what
        )));
    };
    let req: R = json_body(headers, body)?;
    let owner = s.owner_scope(&identity).map(str::to_string);
    match run(req, owner).await {
        Ok(status) => Ok(json_response(&json!({ "data": { "status": status } }))),
        Err(Refused::NotFound) => {
            Err(ApiError::not_found(format!("no such {}", kind.what)).with_field(kind.field))
        }
        Err(Refused::Finished(message, status)) => {
            let mut err = ApiError::conflict(message);
            err.details = Some(json!({ "field": kind.field, "status": status }));
            Err(err)
        }
        Err(Refused::Failed(message)) => Err(ApiError::internal(message)),
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
