//! Realtime delivery: one Server-Sent Events stream per client, carrying the updates of the
//! jobs, workflows and queries it subscribed to.
//!
//! ```text
//!  worker ─► forge.jobs ─ trigger ─► NOTIFY forge_job_updates ──────┐
//!  engine ─► forge.workflows/_steps ─► NOTIFY forge_workflow_updates ┤
//!  any write to a watched table ───► NOTIFY forge_table_changes ─────┴─► notifier (one
//!                                                                   LISTEN connection per node)
//!                                                                           │
//!  hub: job and workflow topics, query groups ─► subscriptions ─► session outbox ─► SSE stream
//! ```
//!
//! * `session`: a session (id, secret, user) and its outbox, the bounded buffer that
//!   coalesces when its client reads too slowly.
//! * `hub`: the node's fan-out of notifications: `hub/index` (sessions and subscriptions),
//!   `hub/followed` (jobs and workflows, and how each is read), `hub/events` (the event loop),
//!   `hub/guard` (a subscription made before its job exists). `feed` holds the delivery rules
//!   (the order of one job's or workflow's updates, and the push to outboxes); `jobs` and
//!   `workflows` what their notifications carry.
//! * `queries`: query subscriptions: which tables a query read, found by PostgreSQL's
//!   per-transaction scan counters, change triggers on them, debounced re-runs.
//! * `sse`: `GET /_api/events`; `routes`: the subscribe and unsubscribe calls.
//!
//! # Sessions live on one node; their calls reach any
//! A session is held by the node that serves its stream. Its subscription calls (and an RPC
//! call that starts a job or workflow with `follow`) may reach any node: a session id names
//! its node, and a call that reaches another node is passed on to it through PostgreSQL
//! (`forward`), so a load balancer needs no sticky sessions. Updates themselves reach every
//! node through PostgreSQL, whichever node started the job and whichever node runs it.
//!
//! # Authentication of the stream
//! `EventSource` cannot send headers, so the stream accepts the bearer token in the
//! `Authorization` header *or* as `?token=<JWT>`. A token in a URL can end up in access logs,
//! proxy logs and browser history: use short-lived tokens, keep the query strings of
//! `/_api/events` out of access logs, and serve over HTTPS. The stream ends when its token
//! expires, so a leaked URL is good for no longer than the token; the client reconnects with a
//! fresh token. Without a token the session is anonymous: it can follow public queries, and no
//! job or workflow (an anonymous caller owns nothing); it ends after
//! [`RealtimeConfig::anonymous_session_lifetime`], and its client reconnects.
//!
//! # Dead clients
//! A client that closed its connection is noticed at the next write (at the latest the
//! keep-alive comment), which ends its session. A peer that vanished without closing (a
//! pulled cable) is noticed when the kernel gives up on unacknowledged data: give the listening
//! socket a `TCP_USER_TIMEOUT` (or TCP keepalive) to bound that time.

mod feed;
mod forward;
mod hub;
mod jobs;
mod queries;
mod routes;
mod session;
mod sse;
mod workflows;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use forge_runtime::error::RuntimeError;
use forge_runtime::{Forge, JobState, WorkflowState};

use uuid::Uuid;

use crate::auth::{Auth, Identity};
use crate::error::ApiError;
pub use forward::ANSWER_TIMEOUT;
use hub::Hub;
use jobs::JobChange;
pub use queries::{LiveQuery, QueryResolver};
use workflows::WorkflowChange;

/// Settings of realtime delivery.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RealtimeConfig {
    /// How long a stream may stay silent before a keep-alive comment is sent. Proxies close
    /// idle connections, and a write is how a dead client is noticed.
    pub keep_alive: Duration,
    /// Users with this role may watch every job and workflow, not only their own.
    pub see_all_role: Option<String>,
    /// Subscriptions one session may hold at once.
    pub max_subscriptions_per_session: usize,
    /// Events a session may have queued before progress updates of one subscription replace
    /// each other.
    pub outbox_soft_limit: usize,
    /// Events a session may have queued before status changes of one subscription replace
    /// each other too (its latest state is always kept).
    pub outbox_hard_limit: usize,
    /// How long a query subscription waits after a change of a table it read before running
    /// again; the changes within that time are served by one run.
    pub query_debounce: Duration,
    /// Streams the node serves at once; a stream over it is refused (`429 too_many_sessions`).
    pub max_sessions: usize,
    /// Streams one signed-in user may hold open on the node at once.
    pub max_sessions_per_user: usize,
    /// Streams one client address may hold open on the node at once. Behind a proxy every
    /// client has the proxy's address: raise it there.
    pub max_sessions_per_ip: usize,
    /// How long an anonymous stream lives before the server ends it (a signed-in stream ends
    /// when its token expires). Its client reconnects and subscribes again, so an anonymous
    /// slot is not held for ever by a client that never leaves.
    pub anonymous_session_lifetime: Duration,
    /// Distinct live queries (query groups) the node runs at once; a subscription that would
    /// start one more is refused (`503 too_many_live_queries`). Subscribing to a query that
    /// already runs for the same caller and arguments is always accepted.
    pub max_query_groups: usize,
}

impl Default for RealtimeConfig {
    fn default() -> Self {
        Self {
            keep_alive: Duration::from_secs(15),
            see_all_role: None,
            max_subscriptions_per_session: 1_000,
            outbox_soft_limit: 256,
            outbox_hard_limit: 1_024,
            query_debounce: Duration::from_millis(50),
            max_sessions: 10_000,
            max_sessions_per_user: 20,
            max_sessions_per_ip: 200,
            anonymous_session_lifetime: Duration::from_secs(3600),
            max_query_groups: 10_000,
        }
    }
}

/// Counters of a node's realtime state, for tests, benchmarks and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RealtimeStats {
    /// Open streams.
    pub sessions: usize,
    pub subscriptions: usize,
    /// Events waiting to be written, over all sessions.
    pub queued_events: usize,
    /// The most events one session has waiting.
    pub max_queued_events: usize,
    /// Events replaced by later ones because their client read too slowly.
    pub coalesced_events: u64,
    /// Distinct subscribed queries (subscriptions to the same query by the same caller share
    /// one).
    pub query_groups: usize,
}

/// Why a realtime call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RealtimeError {
    /// No session with this id on this node, or the secret or user does not match. The cases
    /// are not told apart, so session ids cannot be probed.
    #[error(
        "unknown session (it ended, belongs to another node, or the secret or user does not match)"
    )]
    UnknownSession,
    /// The session holds the most subscriptions it may.
    #[error("the session already holds {0} subscriptions, the most it may")]
    TooManySubscriptions(usize),
    /// The node already runs the most live queries it may, and this subscription would start
    /// another.
    #[error("this node already runs {0} live queries, the most it may; try again later")]
    TooManyQueryGroups(usize),
    /// Opening a stream would exceed a cap on streams (the message says which).
    #[error("{0}")]
    TooManySessions(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Realtime delivery of one node. Cheap to clone.
#[derive(Clone)]
pub struct Realtime {
    hub: Arc<Hub>,
    auth: Auth,
    /// Set once, by [`Realtime::with_query_resolver`]; the forwarder reads it too.
    queries: Arc<OnceLock<Arc<dyn QueryResolver>>>,
    forwarder: Arc<forward::Forwarder>,
}

impl std::fmt::Debug for Realtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Realtime")
            .field("hub", &self.hub)
            .field("queries", &self.queries.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Realtime {
    /// Starts fanning out the node's notifications; `auth` checks the tokens of the stream
    /// and of the subscription calls.
    pub async fn start(
        forge: &Forge,
        config: RealtimeConfig,
        auth: Auth,
    ) -> Result<Self, RuntimeError> {
        let notifier = forge.notifier().await?;
        let hub = Hub::start(forge.store().clone(), config, notifier.subscribe());
        let queries = Arc::new(OnceLock::new());
        let forwarder = forward::Forwarder::start(&hub, queries.clone(), notifier.subscribe());
        Ok(Self {
            hub,
            auth,
            queries,
            forwarder,
        })
    }

    /// Enables query subscriptions (`POST /_api/subscribe`): `resolver` turns a call's
    /// function name and arguments into a query to run (the gateway's RPC layer provides it
    /// from the function registry). Without one, every query is unknown. Only the first
    /// resolver given counts.
    pub fn with_query_resolver(self, resolver: impl QueryResolver) -> Self {
        let _ = self.queries.set(Arc::new(resolver));
        self
    }

    pub fn config(&self) -> &RealtimeConfig {
        self.hub.config()
    }

    pub fn stats(&self) -> RealtimeStats {
        self.hub.stats()
    }

    /// Start-and-follow: subscribes `follow`'s session to the job that is about to be created
    /// with id `job_id` by `identity`. Call it *before* inserting the job, then tell the
    /// returned [`JobFollow`] which job was created; if the insert fails, drop it and the
    /// subscription is removed. Anonymous callers cannot follow (they own no job, so they
    /// could not subscribe again after a reconnect).
    ///
    /// When another node holds the session, it is asked first whether the session is good
    /// (so a refused follow creates no job), and subscribes once the job exists.
    pub async fn follow_job(
        &self,
        identity: Option<&Identity>,
        follow: &Follow,
        job_id: Uuid,
    ) -> Result<JobFollow, ApiError> {
        self.follow::<JobChange>(identity, follow, job_id, "job")
            .await
            .map(JobFollow)
    }

    /// Start-and-follow for a workflow about to be created with id `workflow_id`; as
    /// [`follow_job`](Self::follow_job).
    pub async fn follow_workflow(
        &self,
        identity: Option<&Identity>,
        follow: &Follow,
        workflow_id: Uuid,
    ) -> Result<WorkflowFollow, ApiError> {
        self.follow::<WorkflowChange>(identity, follow, workflow_id, "workflow")
            .await
            .map(WorkflowFollow)
    }

    async fn follow<C: hub::Followed>(
        &self,
        identity: Option<&Identity>,
        follow: &Follow,
        id: Uuid,
        what: &str,
    ) -> Result<Following, ApiError> {
        let Some(identity) = identity else {
            return Err(ApiError::unauthenticated(format!(
                "following a {what} needs a signed-in user"
            )));
        };
        routes::check_subscription_id(&follow.subscription_id)?;
        let proof = hub::Proof {
            session_id: follow.session_id,
            secret: &follow.session_secret,
            user: Some(&identity.user_id),
        };
        if self.forwarder.is_remote(follow.session_id) {
            let checked = self
                .forwarder
                .forward(&proof, forward::Call::Check, "follow.sessionId")
                .await?;
            if let Some(refused) = checked.refusal("follow.sessionId") {
                return Err(refused);
            }
            return Ok(Following::Remote(Box::new(RemoteFollow {
                realtime: self.clone(),
                follow: follow.clone(),
                identity: identity.clone(),
            })));
        }
        self.hub
            .follow::<C>(&proof, &follow.subscription_id, id)
            .map(Following::Local)
            .map_err(|e| routes::api_error(e, "follow.sessionId"))
    }
}

/// A start-and-follow's subscription: made on this node's hub before the run exists, or to
/// be made on the node that holds the session once it exists.
#[derive(Debug)]
enum Following {
    Local(hub::FollowGuard),
    Remote(Box<RemoteFollow>),
}

#[derive(Debug)]
struct RemoteFollow {
    realtime: Realtime,
    follow: Follow,
    identity: Identity,
}

impl Following {
    async fn started<C: hub::Followed>(
        self,
        id: Uuid,
        call: impl FnOnce(String, Uuid) -> forward::Call,
    ) -> Result<Option<C::State>, ApiError> {
        match self {
            Following::Local(guard) => guard
                .started::<C>(id)
                .await
                .map_err(|e| routes::api_error(e, "follow.sessionId")),
            Following::Remote(remote) => {
                let RemoteFollow {
                    realtime,
                    follow,
                    identity,
                } = *remote;
                let proof = hub::Proof {
                    session_id: follow.session_id,
                    secret: &follow.session_secret,
                    user: Some(&identity.user_id),
                };
                let call = call(follow.subscription_id.clone(), id);
                // The run exists by now, whatever happens here: a follow that fails after the
                // check (its node went away) is not the start's failure, and the client
                // subscribes again on its next stream.
                match realtime
                    .forwarder
                    .forward(&proof, call, "follow.sessionId")
                    .await
                {
                    Ok(forward::Outcome::Done { .. }) => realtime
                        .hub
                        .read_visible::<C>(&realtime.viewer(Some(&identity)), id)
                        .await
                        .map_err(|e| routes::api_error(e, "follow.sessionId")),
                    Ok(other) => {
                        tracing::warn!(?other, session = %follow.session_id, "a forwarded follow was not made");
                        Ok(None)
                    }
                    Err(e) => {
                        tracing::warn!(error = ?e, session = %follow.session_id, "a forwarded follow was not made");
                        Ok(None)
                    }
                }
            }
        }
    }
}

/// The `follow` of an RPC call that starts a job or workflow: the SSE session to deliver its
/// updates on, and the client's id for the subscription.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Follow {
    pub session_id: Uuid,
    pub session_secret: String,
    pub subscription_id: String,
}

/// A subscription made for a job before it exists; see [`Realtime::follow_job`].
#[derive(Debug)]
pub struct JobFollow(Following);

impl JobFollow {
    /// The job was created as `job_id`. That differs from the id given to
    /// [`Realtime::follow_job`] only when an idempotency key returned an earlier job: that one
    /// is then subscribed to the ordinary way, and its current state is returned for the
    /// call's answer (`None` for a new job, whose state is the one just inserted, or for an
    /// earlier job the caller may not see).
    pub async fn started(self, job_id: Uuid) -> Result<Option<JobState>, ApiError> {
        self.0
            .started::<JobChange>(job_id, |subscription_id, id| forward::Call::Job {
                subscription_id,
                id,
            })
            .await
    }
}

/// A subscription made for a workflow before it exists; see [`Realtime::follow_workflow`].
#[derive(Debug)]
pub struct WorkflowFollow(Following);

impl WorkflowFollow {
    /// The workflow was created as `workflow_id`; as [`JobFollow::started`].
    pub async fn started(self, workflow_id: Uuid) -> Result<Option<WorkflowState>, ApiError> {
        self.0
            .started::<WorkflowChange>(workflow_id, |subscription_id, id| forward::Call::Workflow {
                subscription_id,
                id,
            })
            .await
    }
}
