//! Forge's HTTP gateway.
//!
//! * [`error`]: the JSON error envelope every route answers failures with.
//! * [`auth`]: bearer tokens (JWT) and the caller's identity.
//! * [`realtime`]: one SSE stream per client, with job (and workflow and query)
//!   subscriptions fanned out from the node's LISTEN connection.

pub mod auth;
pub mod error;
pub mod realtime;
