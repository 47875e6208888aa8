//! Forge's HTTP gateway.
//!
//! * [`Gateway`] (`server`): the router, the layers every route shares, the listening socket,
//!   and [`run`], which runs a node (gateway, workers or both) from its [`Config`].
//! * `rpc`: calls (`/_api/rpc/{fn}`, `/_api/rpc`, `/_api/rpc/batch`) and `/_api/cancel-job`;
//!   `functions`: the registry's queries, mutations and jobs as one namespace, the access
//!   check and the call itself; `openapi`: the OpenAPI document of them.
//! * `runs`: lists and details of jobs and workflows (`/_api/jobs/...`,
//!   `/_api/workflows/...`) and the admin role's actions on them (`/_api/admin/...`).
//! * `schedules`: run-time schedules (`/_api/schedules/...`), each user's own.
//! * `dashboard`: the operators' dashboard page at `gateway.dashboard_path`, when on.
//! * [`metrics`]: Prometheus text at `gateway.metrics_path`, when `gateway.metrics` is on.
//! * [`telemetry`]: logs, and traces exported over OTLP when `FORGE_OTLP_ENDPOINT` is set.
//! * [`error`]: the JSON error envelope every route answers failures with.
//! * [`auth`]: bearer tokens (JWT) and the caller's identity.
//! * [`config`]: `forge.toml` and its environment overrides.
//! * [`realtime`]: one SSE stream per client, with job (and workflow and query)
//!   subscriptions fanned out from the node's LISTEN connection.

pub mod auth;
pub mod config;
mod dashboard;
pub mod error;
mod functions;
mod guard;
pub mod metrics;
mod openapi;
mod rate;
pub mod realtime;
mod rpc;
mod runs;
mod schedules;
mod server;
mod state;
pub mod telemetry;

pub use config::{Config, GatewayConfig};
pub use functions::DuplicateName;
pub use server::{bind, run, Gateway, GatewayError};
