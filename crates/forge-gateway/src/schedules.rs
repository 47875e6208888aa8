//! Run-time schedules over HTTP (`POST /_api/schedules/{create,list,get,pause,resume,delete}`).
//! Every route needs a signed-in user and reaches only that user's schedules, as the cancel
//! routes do for jobs: another user's schedule is answered as not found. A user with the
//! admin role lists and changes every schedule (declared ones too), and still owns the ones
//! they create.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use forge_runtime::error::EnqueueError;
use forge_runtime::queue::JobRequest;
use forge_runtime::schedule::{Missed, Overlap, ScheduleError, ScheduleRequest};
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::error::ApiError;
use crate::functions::{authorize, Function};
use crate::rpc::json_response;
use crate::state::AppState;

pub(crate) fn routes(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/_api/schedules/create", post(create))
        .route("/_api/schedules/list", post(list))
        .route("/_api/schedules/get", post(get))
        .route("/_api/schedules/pause", post(pause))
        .route("/_api/schedules/resume", post(resume))
        .route("/_api/schedules/delete", post(delete))
        .with_state(state)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Create {
    function: String,
    #[serde(default)]
    args: Value,
    cron: String,
    timezone: Option<String>,
    name: Option<String>,
    missed: Option<String>,
    backfill: Option<u32>,
    overlap: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ById {
    schedule_id: Uuid,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Nothing {}

fn schedule_error(e: ScheduleError) -> ApiError {
    match e {
        ScheduleError::Invalid { field, message } => ApiError::invalid_args(field, message),
        ScheduleError::NotFound => ApiError::not_found("no such schedule").with_field("scheduleId"),
        ScheduleError::Job(EnqueueError::UnknownJob(name)) => {
            ApiError::not_found(format!("no job named `{name}`")).with_field("function")
        }
        ScheduleError::Job(EnqueueError::InvalidArgs(a)) => {
            let field = if a.field == "." {
                "args".to_string()
            } else {
                format!("args.{}", a.field)
            };
            ApiError::invalid_args(&field, a.message)
        }
        e => ApiError::internal(format_args!("schedule operation: {e}")),
    }
}

async fn create(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (identity, req): (_, Create) =
        s.signed_in(&headers, &body, "schedules need a signed-in user")?;
    // A user may schedule the jobs they may start, and nothing else.
    match s.caller.functions.get(&req.function) {
        Some(f @ Function::Job(_)) => authorize(f.access(), Some(&identity))?,
        _ => {
            return Err(
                ApiError::not_found(format!("no job named `{}`", req.function))
                    .with_field("function"),
            )
        }
    }
    let missed = match req.missed.as_deref() {
        None if req.backfill.is_some() => Missed::parse("backfill", req.backfill.unwrap_or(0)),
        None => Ok(Missed::default()),
        Some(m) => Missed::parse(m, req.backfill.unwrap_or(0)),
    }
    .map_err(schedule_error)?;
    let overlap = match req.overlap.as_deref() {
        None => Overlap::default(),
        Some(o) => Overlap::parse(o).map_err(schedule_error)?,
    };
    let mut r = ScheduleRequest::new(JobRequest::<Value>::new(req.function, req.args), req.cron)
        .missed(missed)
        .overlap(overlap)
        .owner(identity.user_id.clone());
    if let Some(tz) = req.timezone {
        r = r.timezone(tz);
    }
    if let Some(name) = req.name {
        r = r.name(name);
    }
    let created = s
        .caller
        .forge
        .create_schedule(r)
        .await
        .map_err(schedule_error)?;
    Ok(json_response(&json!({ "data": created })))
}

async fn list(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (identity, Nothing {}) = s.signed_in(&headers, &body, "schedules need a signed-in user")?;
    let all = s
        .caller
        .forge
        .schedules(s.owner_scope(&identity))
        .await
        .map_err(schedule_error)?;
    Ok(json_response(&json!({ "data": all })))
}

macro_rules! by_id_route {
    ($name:ident, $method:ident) => {
        async fn $name(
            State(s): State<Arc<AppState>>,
            headers: HeaderMap,
            body: Bytes,
        ) -> Result<Response, ApiError> {
            let (identity, req): (_, ById) = s.signed_in(&headers, &body, "schedules need a signed-in user")?;
            let info = s
                .caller
                .forge
                .$method(req.schedule_id, s.owner_scope(&identity))
                .await
                .map_err(schedule_error)?;
            Ok(json_response(&json!({ "data": info })))
        }
    };
}

by_id_route!(get, schedule);
by_id_route!(pause, pause_schedule);
by_id_route!(resume, resume_schedule);
by_id_route!(delete, delete_schedule);

/// Marks the operation of each job declared with `#[forge::cron]` in the OpenAPI document
/// with its schedule (`x-forge-schedule`). Run-time schedules are data, not API: they are read
/// through `/_api/schedules/list`.
pub(crate) fn annotate_openapi(paths: &mut serde_json::Map<String, Value>) {
    for def in forge_runtime::schedule::declared() {
        let path = format!("/_api/rpc/{}", def.function);
        if let Some(Value::Object(op)) = paths.get_mut(&path).and_then(|p| p.get_mut("post")) {
            op.insert(
                "x-forge-schedule".into(),
                json!({
                    "cron": def.cron,
                    "timezone": def.timezone,
                    "missed": def.missed.as_str(),
                    "backfill": def.missed.backfill(),
                    "overlap": def.overlap.as_str(),
                }),
            );
        }
    }
}
