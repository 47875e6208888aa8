//! Subscription calls for a session another node holds, so that a load balancer needs no
//! sticky sessions.
//!
//! A session's id starts with the tag of the node that holds it (`session::NodeTag`). A call
//! that reaches another node is sent to every node on [`SESSION_CALLS`] (one `NOTIFY`); the
//! holder performs it on its hub exactly as if the call had reached it (the secret and the
//! user are checked there) and sends back the outcome the same way; the node that got the
//! call answers with it. What a subscribe call answers (a job's or workflow's state) is read
//! by the answering node itself, after the holder subscribed, so a large state never has to
//! fit a notification, and nothing between the two is missed: the holder pushed every change
//! from its subscription on. A query's first result comes back in the answer when it fits,
//! else the answering node runs the query once itself.
//!
//! Calls on the node's own sessions never come here: the single-node path is unchanged. A
//! holder that does not answer within [`ANSWER_TIMEOUT`] (it stopped, or is cut off from the
//! database) is answered as an unknown session, which is what the client would have been
//! told had it reached it: it opens a new stream.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, SystemTime};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use forge_runtime::notifier::Event;
use forge_runtime::publish::{MAX_SESSION_CALL, SESSION_CALLS};
use forge_runtime::store::Store;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, oneshot};
use uuid::Uuid;

use super::hub::{Followed, Hub, Proof};
use super::jobs::JobChange;
use super::queries::{QueryKey, QueryResolver};
use super::routes::{api_error, caller_key};
use super::session::NodeTag;
use super::workflows::WorkflowChange;
use super::RealtimeError;
use crate::auth::Identity;
use crate::error::ApiError;

/// How long a node waits for the holder of a session to answer a forwarded call.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(3);

/// A subscription call, as the holder of the session performs it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Call {
    /// Only checks the proof: a start-and-follow asks before it creates its job.
    Check,
    Job {
        subscription_id: String,
        id: Uuid,
    },
    Workflow {
        subscription_id: String,
        id: Uuid,
    },
    Query {
        subscription_id: String,
        function: String,
        args: Value,
        /// The caller's roles: the query's access check needs them.
        roles: Vec<String>,
    },
    Unsubscribe {
        subscription_id: String,
    },
}

/// What the holder answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub(crate) enum Outcome {
    /// Done. `existed` for an unsubscribe; `data` a query's result when it fits.
    Done {
        #[serde(default)]
        existed: bool,
        #[serde(default)]
        data: Option<String>,
    },
    /// The job or workflow is not visible to the session (or does not exist).
    NotVisible,
    /// Refused, with the answer the holder would have given.
    Refused { status: u16, error: Value },
}

impl Outcome {
    fn refused(e: &ApiError) -> Self {
        Outcome::Refused {
            status: e.status.as_u16(),
            error: e.body(),
        }
    }

    /// The refusal as an error, for a caller that answers with its own envelope.
    pub(crate) fn refusal(&self, session_field: &str) -> Option<ApiError> {
        let Outcome::Refused { status, error } = self else {
            return None;
        };
        let status = StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = error["message"].as_str().unwrap_or("refused").to_owned();
        // Codes are the protocol's fixed set; the session's own refusal is the common one.
        let e = match error["code"].as_str() {
            Some("not_found") => ApiError::not_found(message).with_field(session_field),
            Some("conflict") => ApiError::conflict(message),
            _ => ApiError::new(status, "unavailable", message),
        };
        Some(ApiError { status, ..e })
    }

    /// The refusal as an HTTP answer, exactly as the holder would have sent it.
    pub(crate) fn into_response(self) -> Option<Response> {
        match self {
            Outcome::Refused { status, error } => Some(
                (
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    [(header::CONTENT_TYPE, "application/json")],
                    serde_json::json!({ "error": error }).to_string(),
                )
                    .into_response(),
            ),
            _ => None,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
enum Message {
    Call {
        id: Uuid,
        to: String,
        from: String,
        session_id: Uuid,
        secret: String,
        user: Option<String>,
        call: Call,
    },
    Answer {
        id: Uuid,
        to: String,
        outcome: Outcome,
    },
}

fn tag_text(tag: NodeTag) -> String {
    tag.0.iter().map(|b| format!("{b:02x}")).collect()
}

/// The forwarding side of a node: calls it sent that wait for their answers.
pub(crate) struct Forwarder {
    store: Store,
    node: NodeTag,
    waiting: Mutex<HashMap<Uuid, oneshot::Sender<Outcome>>>,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder").finish_non_exhaustive()
    }
}

impl Forwarder {
    /// Starts answering the calls other nodes forward to `hub`'s sessions, and collecting the
    /// answers to the calls this node forwards.
    pub(crate) fn start(
        hub: &Arc<Hub>,
        queries: Arc<OnceLock<Arc<dyn QueryResolver>>>,
        events: broadcast::Receiver<Event>,
    ) -> Arc<Self> {
        let me = Arc::new(Self {
            store: hub.store().clone(),
            node: hub.node,
            waiting: Mutex::new(HashMap::new()),
        });
        tokio::spawn(serve(
            Arc::downgrade(&me),
            Arc::downgrade(hub),
            queries,
            events,
        ));
        me
    }

    /// Whether session `id` is held by another node.
    pub(crate) fn is_remote(&self, session_id: Uuid) -> bool {
        NodeTag::of(session_id) != self.node
    }

    /// Sends `call` to the node that holds `proof`'s session and waits for its outcome.
    pub(crate) async fn forward(
        &self,
        proof: &Proof<'_>,
        call: Call,
        session_field: &str,
    ) -> Result<Outcome, ApiError> {
        let id = Uuid::new_v4();
        let message = Message::Call {
            id,
            to: tag_text(NodeTag::of(proof.session_id)),
            from: tag_text(self.node),
            session_id: proof.session_id,
            secret: proof.secret.to_owned(),
            user: proof.user.map(str::to_owned),
            call,
        };
        let payload = serde_json::to_string(&message).map_err(ApiError::internal)?;
        if payload.len() > MAX_SESSION_CALL {
            return Err(ApiError::payload_too_large(format!(
                "this call is for a session another node holds, and at {} bytes it is too large \
                 to pass on (at most {MAX_SESSION_CALL}): send it to that node (route by session)",
                payload.len()
            )));
        }
        let (tx, rx) = oneshot::channel();
        self.lock().insert(id, tx);
        let sent = self.store.notify(SESSION_CALLS, &payload).await;
        let outcome = match sent {
            Ok(()) => tokio::time::timeout(ANSWER_TIMEOUT, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(e) => {
                self.lock().remove(&id);
                return Err(ApiError::internal(format_args!("forwarding a call: {e}")));
            }
        };
        self.lock().remove(&id);
        match outcome {
            Some(o) => Ok(o),
            None => {
                tracing::debug!(session = %proof.session_id, "no node answered a forwarded call");
                Err(api_error(RealtimeError::UnknownSession, session_field))
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, oneshot::Sender<Outcome>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Reads the node's notifications for forwarded calls and answers: performs the calls for
/// this node's sessions, each on a task of its own (a query's first run may take a while), and
/// hands answers to the calls that wait for them.
async fn serve(
    me: Weak<Forwarder>,
    hub: Weak<Hub>,
    queries: Arc<OnceLock<Arc<dyn QueryResolver>>>,
    mut events: broadcast::Receiver<Event>,
) {
    loop {
        let event = match events.recv().await {
            Ok(e) => e,
            // A call lost here is answered as an unknown session by its timeout.
            Err(broadcast::error::RecvError::Lagged(_)) => continue,
            Err(broadcast::error::RecvError::Closed) => return,
        };
        let Event::Other { channel, payload } = event else {
            continue;
        };
        if &*channel != SESSION_CALLS {
            continue;
        }
        let (Some(me), Some(hub)) = (me.upgrade(), hub.upgrade()) else {
            return;
        };
        let mine = tag_text(me.node);
        match serde_json::from_str::<Message>(&payload) {
            Ok(Message::Answer { id, to, outcome }) if to == mine => {
                if let Some(tx) = me.lock().remove(&id) {
                    let _ = tx.send(outcome);
                }
            }
            Ok(Message::Call {
                id,
                to,
                from,
                session_id,
                secret,
                user,
                call,
            }) if to == mine => {
                let queries = queries.get().cloned();
                tokio::spawn(async move {
                    let proof = Proof {
                        session_id,
                        secret: &secret,
                        user: user.as_deref(),
                    };
                    let outcome = perform(&hub, queries, &proof, call).await;
                    let answer = Message::Answer {
                        id,
                        to: from,
                        outcome,
                    };
                    let payload = match serde_json::to_string(&answer) {
                        Ok(p) => p,
                        Err(e) => {
                            tracing::error!(error = %e, "unencodable answer to a forwarded call");
                            return;
                        }
                    };
                    if let Err(e) = me.store.notify(SESSION_CALLS, &payload).await {
                        tracing::warn!(error = %e, "could not answer a forwarded call");
                    }
                });
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "unreadable forwarded call"),
        }
    }
}

/// Performs a forwarded call on this node's hub.
async fn perform(
    hub: &Arc<Hub>,
    queries: Option<Arc<dyn QueryResolver>>,
    proof: &Proof<'_>,
    call: Call,
) -> Outcome {
    let realtime = |e: RealtimeError| Outcome::refused(&api_error(e, "sessionId"));
    match call {
        Call::Check => match hub.check(proof) {
            Ok(()) => Outcome::Done {
                existed: true,
                data: None,
            },
            Err(e) => realtime(e),
        },
        Call::Job {
            subscription_id,
            id,
        } => follow::<JobChange>(hub, proof, &subscription_id, id).await,
        Call::Workflow {
            subscription_id,
            id,
        } => follow::<WorkflowChange>(hub, proof, &subscription_id, id).await,
        Call::Unsubscribe { subscription_id } => match hub.unsubscribe(proof, &subscription_id) {
            Ok(existed) => Outcome::Done {
                existed,
                data: None,
            },
            Err(e) => realtime(e),
        },
        Call::Query {
            subscription_id,
            function,
            args,
            roles,
        } => {
            let Some(resolver) = queries else {
                return Outcome::refused(&ApiError::not_found(format!(
                    "unknown query `{function}`"
                )));
            };
            // The node that took the call verified the token; the identity is rebuilt from
            // what it passed on, for the query's access check and its group.
            let identity = proof.user.map(|user| Identity {
                user_id: user.to_owned(),
                roles,
                expires_at: SystemTime::now() + Duration::from_secs(60),
            });
            let query = match resolver.resolve(&function, args.clone(), identity.as_ref()) {
                Ok(q) => q,
                Err(e) => return Outcome::refused(&e),
            };
            let key = QueryKey {
                function,
                args: args.to_string(),
                caller: caller_key(identity.as_ref()),
            };
            match hub
                .subscribe_query(proof, &subscription_id, key, query)
                .await
            {
                // Room is left for the rest of the answer; a larger result is run again by
                // the node that took the call.
                Ok(json) => Outcome::Done {
                    existed: true,
                    data: (json.len() < MAX_SESSION_CALL - 300).then(|| json.to_string()),
                },
                Err(super::hub::QuerySubscribeError::Realtime(e)) => realtime(e),
                Err(super::hub::QuerySubscribeError::Failed(e)) => Outcome::refused(&e),
            }
        }
    }
}

async fn follow<C: Followed>(hub: &Hub, proof: &Proof<'_>, sub: &str, id: Uuid) -> Outcome {
    match hub.subscribe::<C>(proof, sub, id).await {
        Ok(Some(_)) => Outcome::Done {
            existed: true,
            data: None,
        },
        Ok(None) => Outcome::NotVisible,
        Err(e) => Outcome::refused(&api_error(e, "sessionId")),
    }
}
