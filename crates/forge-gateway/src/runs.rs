//! Runs over HTTP: lists and details of jobs and workflows for every signed-in user (their
//! own; every user's with the admin role), and the operator's actions for the admin role
//! only (`auth.admin_role`; with none configured, nobody may act).
//!
//! `POST /_api/jobs/list`, `/_api/jobs/get`, `/_api/workflows/list`, `/_api/workflows/get`;
//! `POST /_api/admin/jobs/{retry,cancel,delete}`, `/_api/admin/workflows/replay`,
//! `/_api/admin/workflows/send-event` and `/_api/admin/overview` (what the dashboard's first
//! page shows). Bodies and answers are JSON, answers wrapped in `{"data": ...}` as for the
//! other routes.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use forge_runtime::error::EventError;
use forge_runtime::runs::{
    JobAction, JobDetail, JobFilter, JobPage, JobSelector, Overview, Page, RunsError,
    WorkflowDetail, WorkflowFilter, WorkflowPage, DEFAULT_OVERVIEW_MINUTES,
};
use schemars::{JsonSchema, SchemaGenerator};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use crate::auth::Identity;
use crate::error::{json_body, json_body_or_empty, ApiError};
use crate::rpc::json_response;
use crate::state::AppState;

pub(crate) fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/_api/jobs/list", post(list_jobs))
        .route("/_api/jobs/get", post(get_job))
        .route("/_api/workflows/list", post(list_workflows))
        .route("/_api/workflows/get", post(get_workflow))
        .route("/_api/admin/jobs/retry", post(retry_jobs))
        .route("/_api/admin/jobs/cancel", post(cancel_jobs))
        .route("/_api/admin/jobs/delete", post(delete_jobs))
        .route("/_api/admin/workflows/replay", post(replay_workflow))
        .route("/_api/admin/workflows/send-event", post(send_event))
        .route("/_api/admin/overview", post(overview))
        .with_state(state)
}

/// `POST /_api/jobs/list` and `/_api/workflows/list`: a filter and a page.
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct List<F: Default> {
    #[serde(default)]
    filter: F,
    cursor: Option<String>,
    limit: Option<u32>,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GetJob {
    job_id: Uuid,
}

#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct GetWorkflow {
    workflow_id: Uuid,
}

/// `POST /_api/admin/workflows/send-event`: an event for a workflow, whoever owns it.
#[derive(Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SendEvent {
    workflow_id: Uuid,
    /// The name the workflow waits for (`ctx.wait_for_event(name, ...)`).
    event: String,
    /// Any JSON; `null` when left out.
    #[serde(default)]
    payload: Value,
}

/// `POST /_api/admin/overview`: how far back the rates and latencies look.
#[derive(Deserialize, JsonSchema, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct OverviewRequest {
    /// 1 to 60 minutes; 15 when left out.
    window_minutes: Option<u32>,
}

/// The owner a read is restricted to: none for the admin role, else the caller, who may not
/// ask for anyone else's.
fn owner_of(
    s: &AppState,
    identity: &Identity,
    asked: &mut Option<String>,
) -> Result<Option<String>, ApiError> {
    if s.is_admin(identity) {
        return Ok(None);
    }
    match asked.as_deref() {
        Some(o) if o != identity.user_id => Err(ApiError::forbidden(
            "only the admin role lists other users' runs",
        )
        .with_field("filter.owner")),
        _ => {
            *asked = Some(identity.user_id.clone());
            Ok(Some(identity.user_id.clone()))
        }
    }
}

fn runs_error(e: RunsError) -> ApiError {
    match e {
        RunsError::Invalid { field, message } => {
            let field = match field {
                "cursor" | "limit" | "jobIds" | "windowMinutes" => field.to_string(),
                f => format!("filter.{f}"),
            };
            ApiError::invalid_args(&field, message)
        }
        RunsError::NotFound(what) => ApiError::not_found(format!("no such {what}")),
        RunsError::Conflict(m) => ApiError::conflict(m),
        e => ApiError::internal(format_args!("runs: {e}")),
    }
}

fn data(value: impl serde::Serialize) -> Response {
    json_response(&json!({ "data": value }))
}

async fn list_jobs(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (identity, mut req): (_, List<JobFilter>) =
        s.signed_in(&headers, &body, "this call needs a signed-in user")?;
    owner_of(&s, &identity, &mut req.filter.owner)?;
    let page = Page {
        cursor: req.cursor,
        limit: req.limit,
    };
    let jobs = s
        .caller
        .forge
        .list_jobs(&req.filter, &page)
        .await
        .map_err(runs_error)?;
    Ok(data(jobs))
}

async fn get_job(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (identity, req): (_, GetJob) =
        s.signed_in(&headers, &body, "this call needs a signed-in user")?;
    let owner = owner_of(&s, &identity, &mut None)?;
    // Another user's job is answered as one that does not exist: ids cannot be probed.
    match s
        .caller
        .forge
        .job_detail(req.job_id, owner.as_deref())
        .await
        .map_err(runs_error)?
    {
        Some(job) => Ok(data(job)),
        None => Err(ApiError::not_found("no such job").with_field("jobId")),
    }
}

async fn list_workflows(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (identity, mut req): (_, List<WorkflowFilter>) =
        s.signed_in(&headers, &body, "this call needs a signed-in user")?;
    owner_of(&s, &identity, &mut req.filter.owner)?;
    let page = Page {
        cursor: req.cursor,
        limit: req.limit,
    };
    let workflows = s
        .caller
        .forge
        .list_workflows(&req.filter, &page)
        .await
        .map_err(runs_error)?;
    Ok(data(workflows))
}

async fn get_workflow(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (identity, req): (_, GetWorkflow) =
        s.signed_in(&headers, &body, "this call needs a signed-in user")?;
    let owner = owner_of(&s, &identity, &mut None)?;
    match s
        .caller
        .forge
        .workflow_detail(req.workflow_id, owner.as_deref())
        .await
        .map_err(runs_error)?
    {
        Some(w) => Ok(data(w)),
        None => Err(ApiError::not_found("no such workflow").with_field("workflowId")),
    }
}

/// An action on the jobs of the body's selector. Aimed at one id, it says why when it could
/// not act (404, or 409 with the job's status); otherwise it answers how many jobs changed.
async fn act(
    s: &AppState,
    headers: &HeaderMap,
    body: &Bytes,
    action: JobAction,
) -> Result<Response, ApiError> {
    s.require_admin(headers)?;
    let selector: JobSelector = json_body_or_empty(headers, body)?;
    let forge = &s.caller.forge;
    if let (Some([id]), None) = (selector.job_ids.as_deref(), &selector.filter) {
        let done = match action {
            JobAction::Retry => forge.retry_job(*id).await,
            JobAction::Cancel => forge.cancel_any_job(*id).await,
            JobAction::Delete => forge.delete_job(*id).await,
        };
        done.map_err(runs_error)?;
        return Ok(data(json!({ "count": 1 })));
    }
    let count = forge
        .act_on_jobs(action, &selector)
        .await
        .map_err(runs_error)?;
    Ok(data(json!({ "count": count })))
}

macro_rules! action_route {
    ($name:ident, $action:expr) => {
        async fn $name(
            State(s): State<Arc<AppState>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Result<Response, ApiError> {
            act(&s, &headers, &body, $action).await
        }
    };
}

action_route!(retry_jobs, JobAction::Retry);
action_route!(cancel_jobs, JobAction::Cancel);
action_route!(delete_jobs, JobAction::Delete);

async fn replay_workflow(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    s.require_admin(&headers)?;
    let req: GetWorkflow = json_body(&headers, &body)?;
    let id = s
        .caller
        .forge
        .replay_workflow(req.workflow_id)
        .await
        .map_err(runs_error)?;
    Ok(data(json!({ "workflowId": id })))
}

async fn send_event(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    s.require_admin(&headers)?;
    let req: SendEvent = json_body(&headers, &body)?;
    s.caller
        .forge
        .send_workflow_event(req.workflow_id, &req.event, req.payload)
        .await
        .map_err(|e| match e {
            EventError::NotFound => {
                ApiError::not_found("no such workflow").with_field("workflowId")
            }
            EventError::AlreadyFinished(_) => ApiError::conflict(e.to_string()),
            EventError::EmptyName => ApiError::invalid_args("event", e.to_string()),
            EventError::Unstorable(_) => ApiError::invalid_args("payload", e.to_string()),
            e => ApiError::internal(format_args!("send event: {e}")),
        })?;
    Ok(data(json!({ "sent": true })))
}

async fn overview(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    s.require_admin(&headers)?;
    let req: OverviewRequest = json_body_or_empty(&headers, &body)?;
    let overview = s
        .caller
        .forge
        .overview(req.window_minutes.unwrap_or(DEFAULT_OVERVIEW_MINUTES))
        .await
        .map_err(runs_error)?;
    Ok(data(overview))
}

type Finish<'a> = &'a dyn Fn(&mut SchemaGenerator, schemars::Schema) -> Value;
type Errors<'a> = &'a dyn Fn(&[&str]) -> Map<String, Value>;

/// A read route's operation: the body and answer schemas of `B` and `A`.
fn read_op<B: JsonSchema, A: JsonSchema>(
    gen: &mut SchemaGenerator,
    finish: Finish,
    errors: Errors,
    id: &str,
    summary: &str,
) -> Value {
    let body = gen.subschema_for::<B>();
    let body = finish(gen, body);
    let answer = gen.subschema_for::<A>();
    let answer = finish(gen, answer);
    let mut responses = errors(&["400", "401", "403", "404", "413", "415", "500"]);
    responses.insert(
        "200".into(),
        json!({ "description": summary, "content": { "application/json": { "schema": {
            "type": "object", "required": ["data"], "properties": { "data": answer },
        } } } }),
    );
    json!({ "post": {
        "operationId": id,
        "summary": format!("{summary} Signed-in users see their own; the admin role sees every user's."),
        "tags": ["runs"],
        "security": [{ "bearerAuth": [] }],
        "requestBody": { "required": false, "content": { "application/json": { "schema": body } } },
        "responses": responses,
    } })
}

/// The OpenAPI operations of these routes; `admin_role` is named on the admin ones
/// (`x-forge-role`).
pub(crate) fn openapi_paths(
    gen: &mut SchemaGenerator,
    admin_role: Option<&str>,
    finish: Finish,
    errors: Errors,
) -> Vec<(String, Value)> {
    let mut paths = vec![
        (
            "/_api/jobs/list".to_string(),
            read_op::<List<JobFilter>, JobPage>(
                gen,
                finish,
                errors,
                "_list_jobs",
                "A page of jobs, newest first.",
            ),
        ),
        (
            "/_api/jobs/get".to_string(),
            read_op::<GetJob, JobDetail>(
                gen,
                finish,
                errors,
                "_get_job",
                "One job with its attempt history.",
            ),
        ),
        (
            "/_api/workflows/list".to_string(),
            read_op::<List<WorkflowFilter>, WorkflowPage>(
                gen,
                finish,
                errors,
                "_list_workflows",
                "A page of workflows, newest first.",
            ),
        ),
        (
            "/_api/workflows/get".to_string(),
            read_op::<GetWorkflow, WorkflowDetail>(
                gen,
                finish,
                errors,
                "_get_workflow",
                "One workflow with its steps and events.",
            ),
        ),
    ];

    let role = admin_role.map_or(Value::Null, |r| Value::String(r.into()));
    let role_text = match admin_role {
        Some(r) => format!("Callable by signed-in users with the admin role `{r}`."),
        None => "No admin role is configured (auth.admin_role): every call answers 403.".into(),
    };
    let selector = gen.subschema_for::<JobSelector>();
    let selector = finish(gen, selector);
    let count = json!({ "type": "object", "required": ["data"], "properties": { "data": {
        "type": "object", "required": ["count"],
        "properties": { "count": { "type": "integer", "minimum": 0 } },
    } } });
    for (verb, what) in [
        ("retry", "Gives `failed` and `dead_letter` jobs a new attempt, due now; earlier attempts stay in the history."),
        ("cancel", "Cancels jobs that have not finished: waiting ones at once, running ones at their next cancellation check."),
        ("delete", "Deletes finished jobs (`completed`, `failed`, `dead_letter`, `cancelled`)."),
    ] {
        let mut responses = errors(&["400", "401", "403", "404", "409", "413", "415", "500"]);
        responses.insert(
            "200".into(),
            json!({ "description": "How many jobs changed", "content": { "application/json": { "schema": count } } }),
        );
        paths.push((
            format!("/_api/admin/jobs/{verb}"),
            json!({ "post": {
                "operationId": format!("_admin_{verb}_jobs"),
                "summary": format!("{what} Takes `jobIds` or a `filter`; with one id, answers 404 or 409 (saying why) when it could not act. {role_text}"),
                "tags": ["admin"],
                "x-forge-role": role,
                "security": [{ "bearerAuth": [] }],
                "requestBody": { "required": true, "content": { "application/json": { "schema": selector } } },
                "responses": responses,
            } }),
        ));
    }
    let body = gen.subschema_for::<GetWorkflow>();
    let body = finish(gen, body);
    let mut responses = errors(&["400", "401", "403", "404", "409", "413", "415", "500"]);
    responses.insert(
        "200".into(),
        json!({ "description": "The new run's id", "content": { "application/json": { "schema": {
            "type": "object", "required": ["data"], "properties": { "data": {
                "type": "object", "required": ["workflowId"],
                "properties": { "workflowId": { "type": "string", "format": "uuid" } },
            } },
        } } } }),
    );
    let admin_op = |gen: &mut SchemaGenerator,
                    id: &str,
                    summary: String,
                    body: schemars::Schema,
                    answer: Value,
                    codes: &[&str]| {
        let body = finish(gen, body);
        let mut responses = errors(codes);
        responses.insert(
            "200".into(),
            json!({ "description": "Done", "content": { "application/json": { "schema": {
                "type": "object", "required": ["data"], "properties": { "data": answer },
            } } } }),
        );
        json!({ "post": {
            "operationId": id,
            "summary": format!("{summary} {role_text}"),
            "tags": ["admin"],
            "x-forge-role": role,
            "security": [{ "bearerAuth": [] }],
            "requestBody": { "required": false, "content": { "application/json": { "schema": body } } },
            "responses": responses,
        } })
    };
    let event = gen.subschema_for::<SendEvent>();
    let sent = json!({ "type": "object", "required": ["sent"], "properties": { "sent": { "const": true } } });
    paths.push((
        "/_api/admin/workflows/send-event".to_string(),
        admin_op(
            gen,
            "_admin_send_workflow_event",
            "Sends an event to a workflow, whoever owns it: a wait for that name takes it, now or when it gets there.".into(),
            event,
            sent,
            &["400", "401", "403", "404", "409", "413", "415", "500"],
        ),
    ));
    let window = gen.subschema_for::<OverviewRequest>();
    let answer = gen.subschema_for::<Overview>();
    let answer = finish(gen, answer);
    paths.push((
        "/_api/admin/overview".to_string(),
        admin_op(
            gen,
            "_admin_overview",
            "Each queue's unfinished jobs by status, and the rates and latencies of the jobs created in the last minutes (the newest 20,000 at most); workflows not finished by status.".into(),
            window,
            answer,
            &["400", "401", "403", "413", "415", "500"],
        ),
    ));
    paths.push((
        "/_api/admin/workflows/replay".to_string(),
        json!({ "post": {
            "operationId": "_admin_replay_workflow",
            "summary": format!("Starts a finished workflow anew with the same arguments and owner (a failed workflow is not resumed from its failed step: its compensations already undid the steps before it). {role_text}"),
            "tags": ["admin"],
            "x-forge-role": role,
            "security": [{ "bearerAuth": [] }],
            "requestBody": { "required": true, "content": { "application/json": { "schema": body } } },
            "responses": responses,
        } }),
    ));
    paths
}
