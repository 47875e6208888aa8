//! What the gateway's routes share.

use std::sync::Arc;

use bytes::Bytes;

use crate::auth::Auth;
use crate::config::GatewayConfig;
use crate::functions::Caller;

/// What the gateway's routes share.
pub(crate) struct AppState {
    pub(crate) caller: Caller,
    pub(crate) auth: Auth,
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) openapi: Bytes,
    /// The process's Prometheus handle, when `gateway.metrics` is on.
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}
