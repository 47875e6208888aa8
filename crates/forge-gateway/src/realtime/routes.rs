//! The HTTP side of realtime delivery: the stream and the subscription calls.

use axum::body::Bytes;
use std::net::SocketAddr;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, Extensions, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use uuid::Uuid;

use super::forward::{Call, Outcome};
use super::hub::{Followed, Proof, QuerySubscribeError};
use super::jobs::JobChange;
use super::queries::QueryKey;
use super::session::Viewer;
use super::workflows::WorkflowChange;
use super::{sse, Realtime, RealtimeError};
use crate::auth::Identity;
use crate::error::{json_body, ApiError};

/// Longest subscription id accepted: ids are kept per subscription and echoed in every event.
const MAX_SUBSCRIPTION_ID: usize = 200;

impl Realtime {
    /// The realtime routes, ready to merge into the gateway's router.
    pub fn routes<S: Clone + Send + Sync + 'static>(&self) -> Router<S> {
        Router::new()
            .route("/_api/events", get(events))
            .route("/_api/subscribe-job", post(subscribe_job))
            .route("/_api/subscribe-workflow", post(subscribe_workflow))
            .route("/_api/subscribe", post(subscribe_query))
            .route("/_api/unsubscribe", post(unsubscribe))
            .with_state(self.clone())
    }

    pub(crate) fn viewer(&self, identity: Option<&Identity>) -> Viewer {
        let see_all = self.config().see_all_role.as_deref();
        Viewer {
            user: identity.map(|i| i.user_id.clone()),
            sees_all: identity
                .zip(see_all)
                .is_some_and(|(i, role)| i.has_role(role)),
        }
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    token: Option<String>,
}

/// `GET /_api/events`: opens the session's stream.
async fn events(
    State(rt): State<Realtime>,
    extensions: Extensions,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let identity = match query.token.as_deref() {
        Some(token) => Some(rt.auth.verify(token)?),
        None => rt.auth.from_headers(&headers)?,
    };
    let left = match &identity {
        Some(i) => i
            .expires_at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
        None => rt.config().anonymous_session_lifetime,
    };
    let expires_at = tokio::time::Instant::now() + left;
    // Set by the gateway's server for each connection; absent when the routes are served
    // without it, and then no per-address cap applies.
    let ip = extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    let session = rt
        .hub
        .open_session(rt.viewer(identity.as_ref()), ip)
        .map_err(|e| api_error(e, "sessionId"))?;
    Ok(sse::response(
        rt.hub.clone(),
        session,
        rt.config().keep_alive,
        expires_at,
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubscribeJob {
    session_id: Uuid,
    session_secret: String,
    subscription_id: String,
    job_id: Uuid,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubscribeWorkflow {
    session_id: Uuid,
    session_secret: String,
    subscription_id: String,
    workflow_id: Uuid,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SubscribeQuery {
    session_id: Uuid,
    session_secret: String,
    subscription_id: String,
    #[serde(rename = "fn")]
    function: String,
    #[serde(default)]
    args: serde_json::Value,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Unsubscribe {
    session_id: Uuid,
    session_secret: String,
    subscription_id: String,
}

/// `POST /_api/subscribe-job`.
async fn subscribe_job(
    State(rt): State<Realtime>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let identity = rt.auth.from_headers(&headers)?;
    let req: SubscribeJob = json_body(&headers, &body)?;
    check_subscription_id(&req.subscription_id)?;
    let proof = proof(req.session_id, &req.session_secret, identity.as_ref());
    let call = Call::Job {
        subscription_id: req.subscription_id.clone(),
        id: req.job_id,
    };
    let state = match followed::<JobChange>(
        &rt,
        identity.as_ref(),
        &proof,
        &req.subscription_id,
        req.job_id,
        call,
    )
    .await
    {
        Ok(state) => state,
        Err(refused) => return Ok(refused),
    };
    let data = match state {
        Some(state) => serde_json::to_value(state).map_err(ApiError::internal)?,
        None => not_found_job(req.job_id),
    };
    Ok(data_response(&data.to_string()))
}

/// `POST /_api/subscribe-workflow`: as `/_api/subscribe-job`, for a workflow.
async fn subscribe_workflow(
    State(rt): State<Realtime>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let identity = rt.auth.from_headers(&headers)?;
    let req: SubscribeWorkflow = json_body(&headers, &body)?;
    check_subscription_id(&req.subscription_id)?;
    let proof = proof(req.session_id, &req.session_secret, identity.as_ref());
    let call = Call::Workflow {
        subscription_id: req.subscription_id.clone(),
        id: req.workflow_id,
    };
    let state = match followed::<WorkflowChange>(
        &rt,
        identity.as_ref(),
        &proof,
        &req.subscription_id,
        req.workflow_id,
        call,
    )
    .await
    {
        Ok(state) => state,
        Err(refused) => return Ok(refused),
    };
    let data = match state {
        Some(state) => serde_json::to_value(state).map_err(ApiError::internal)?,
        None => not_found_workflow(req.workflow_id),
    };
    Ok(data_response(&data.to_string()))
}

/// Subscribes `proof`'s session to the job or workflow `id`: on this node's hub, or through
/// `call` on the node that holds the session, whose refusal is the answer (as `Err`).
async fn followed<C: Followed>(
    rt: &Realtime,
    identity: Option<&Identity>,
    proof: &Proof<'_>,
    sub: &str,
    id: Uuid,
    call: Call,
) -> Result<Option<C::State>, Response> {
    let refused = |e| api_error(e, "sessionId").into_response();
    if !rt.forwarder.is_remote(proof.session_id) {
        return rt.hub.subscribe::<C>(proof, sub, id).await.map_err(refused);
    }
    let outcome = rt
        .forwarder
        .forward(proof, call, "sessionId")
        .await
        .map_err(IntoResponse::into_response)?;
    match outcome {
        Outcome::Done { .. } => rt
            .hub
            .read_visible::<C>(&rt.viewer(identity), id)
            .await
            .map_err(refused),
        Outcome::NotVisible => Ok(None),
        refusal => Err(refusal.into_response().expect("a refusal")),
    }
}

/// `POST /_api/subscribe`: a query subscription.
async fn subscribe_query(
    State(rt): State<Realtime>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let identity = rt.auth.from_headers(&headers)?;
    let req: SubscribeQuery = json_body(&headers, &body)?;
    check_subscription_id(&req.subscription_id)?;
    let unknown = || ApiError::not_found(format!("unknown query `{}`", req.function));
    let resolver = rt.queries.get().ok_or_else(unknown)?;
    let query = resolver.resolve(&req.function, req.args.clone(), identity.as_ref())?;
    if rt.forwarder.is_remote(req.session_id) {
        let proof = proof(req.session_id, &req.session_secret, identity.as_ref());
        let call = Call::Query {
            subscription_id: req.subscription_id.clone(),
            function: req.function.clone(),
            args: req.args.clone(),
            roles: identity
                .as_ref()
                .map(|i| i.roles.clone())
                .unwrap_or_default(),
        };
        return match rt.forwarder.forward(&proof, call, "sessionId").await? {
            Outcome::Done {
                data: Some(json), ..
            } => Ok(data_response(&json)),
            Outcome::Done { data: None, .. } | Outcome::NotVisible => {
                let data = rt.hub.run_once(&*query).await?;
                Ok(data_response(&data.to_string()))
            }
            refused => Ok(refused.into_response().expect("a refusal")),
        };
    }
    let key = QueryKey {
        function: req.function.clone(),
        args: req.args.to_string(),
        caller: caller_key(identity.as_ref()),
    };
    let proof = proof(req.session_id, &req.session_secret, identity.as_ref());
    let json = rt
        .hub
        .subscribe_query(&proof, &req.subscription_id, key, query)
        .await
        .map_err(|e| match e {
            QuerySubscribeError::Realtime(e) => api_error(e, "sessionId"),
            QuerySubscribeError::Failed(e) => e,
        })?;
    Ok(data_response(&json))
}

/// What a query can see of its caller, as one string: queries with the same arguments share a
/// run only when this is equal.
pub(crate) fn caller_key(identity: Option<&Identity>) -> String {
    match identity {
        None => String::new(),
        Some(i) => {
            let mut roles = i.roles.clone();
            roles.sort();
            serde_json::json!([i.user_id, roles]).to_string()
        }
    }
}

/// `POST /_api/unsubscribe`.
async fn unsubscribe(
    State(rt): State<Realtime>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let identity = rt.auth.from_headers(&headers)?;
    let req: Unsubscribe = json_body(&headers, &body)?;
    let proof = proof(req.session_id, &req.session_secret, identity.as_ref());
    let existed = if rt.forwarder.is_remote(req.session_id) {
        let call = Call::Unsubscribe {
            subscription_id: req.subscription_id.clone(),
        };
        match rt.forwarder.forward(&proof, call, "sessionId").await? {
            Outcome::Done { existed, .. } => existed,
            Outcome::NotVisible => false,
            refused => return Ok(refused.into_response().expect("a refusal")),
        }
    } else {
        rt.hub
            .unsubscribe(&proof, &req.subscription_id)
            .map_err(|e| api_error(e, "sessionId"))?
    };
    Ok(data_response(if existed { "true" } else { "false" }))
}

/// The session proof a subscription call carries.
fn proof<'a>(session_id: Uuid, secret: &'a str, identity: Option<&'a Identity>) -> Proof<'a> {
    Proof {
        session_id,
        secret,
        user: identity.map(|i| i.user_id.as_str()),
    }
}

/// The state of a job the caller cannot see: unknown and not visible look the same.
pub(crate) fn not_found_job(job_id: Uuid) -> serde_json::Value {
    serde_json::json!({
        "jobId": job_id,
        "status": "not_found",
        "progress": null,
        "message": null,
        "output": null,
        "error": null,
    })
}

/// The state of a workflow the caller cannot see, as for jobs.
pub(crate) fn not_found_workflow(workflow_id: Uuid) -> serde_json::Value {
    serde_json::json!({
        "workflowId": workflow_id,
        "status": "not_found",
        "step": null,
        "waitingFor": null,
        "steps": [],
        "output": null,
        "error": null,
    })
}

/// `{"data": <json>}` from JSON text that is already serialized.
fn data_response(json: &str) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{{\"data\":{json}}}"),
    )
        .into_response()
}

pub(crate) fn check_subscription_id(id: &str) -> Result<(), ApiError> {
    if id.is_empty() || id.chars().count() > MAX_SUBSCRIPTION_ID {
        return Err(ApiError::invalid_args(
            "subscriptionId",
            format!("must be 1 to {MAX_SUBSCRIPTION_ID} characters"),
        ));
    }
    Ok(())
}

/// The answer to a failed realtime call; `session_field` names the field that held the
/// session id.
pub(crate) fn api_error(e: RealtimeError, session_field: &str) -> ApiError {
    match e {
        RealtimeError::UnknownSession => {
            ApiError::not_found(e.to_string()).with_field(session_field)
        }
        RealtimeError::TooManySubscriptions(_) => ApiError::conflict(e.to_string()),
        RealtimeError::TooManySessions(message) => ApiError::too_many_sessions(message),
        RealtimeError::TooManyQueryGroups(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_live_queries",
            e.to_string(),
        ),
        RealtimeError::Database(e) => ApiError::internal(e),
    }
}
