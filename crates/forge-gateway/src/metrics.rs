//! Prometheus metrics at `gateway.metrics_path` (`GET /_api/metrics` by default), when
//! `gateway.metrics` is `admin` (callers with the admin role) or `open` (anyone: for a scraper
//! on a private network); `off` by default. The text is rendered by
//! `metrics-exporter-prometheus` from what the runtime records (`forge_runtime::metrics`),
//! with the database's gauges and this node's streams read at each scrape.
//!
//! The recorder is the process's one global recorder, installed by [`install`] before the
//! node's worker starts (a worker registers its handles when it starts). If the application
//! installed a recorder of its own first, Forge's metrics go to that one and this route
//! renders nothing of them.

use std::sync::{Arc, OnceLock};

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use forge_runtime::metrics as m;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::error::ApiError;
use crate::state::AppState;

/// Who may read the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MetricsAccess {
    /// No metrics route.
    #[default]
    Off,
    /// Signed-in users with the admin role (`auth.admin_role`).
    Admin,
    /// Anyone who reaches the route.
    Open,
}

impl MetricsAccess {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(Self::Off),
            "admin" => Some(Self::Admin),
            "open" => Some(Self::Open),
            _ => None,
        }
    }
}

/// Open event streams of this node.
pub const SSE_SESSIONS: &str = "forge_sse_sessions";
/// Subscriptions of this node's streams.
pub const SSE_SUBSCRIPTIONS: &str = "forge_sse_subscriptions";
/// Events waiting to be written to this node's streams.
pub const SSE_QUEUED_EVENTS: &str = "forge_sse_queued_events";
/// Distinct live queries this node runs.
pub const LIVE_QUERIES: &str = "forge_live_queries";

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// How often recorded samples are folded into the metrics (and released), scrape or not.
const UPKEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Installs the Prometheus recorder for this process, once; later calls (another gateway in
/// the same process) answer the same handle.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), m::SECONDS_BUCKETS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(m::JOB_WRITER_BATCH.into()),
                        m::BATCH_BUCKETS,
                    )
                })
                .and_then(|b| {
                    b.set_buckets_for_metric(Matcher::Full(m::ENGINE_BATCH.into()), m::BATCH_BUCKETS)
                })
                .expect("the bucket lists are not empty");
            let recorder = builder.build_recorder();
            let handle = recorder.handle();
            // Histogram samples accumulate until upkeep folds them into their buckets: without
            // it a node nobody scrapes would grow by two samples per job, forever.
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("forge-metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_INTERVAL);
                    upkeep.run_upkeep();
                })
                .expect("a thread can be spawned");
            if metrics::set_global_recorder(recorder).is_err() {
                tracing::warn!(
                    "another metrics recorder is installed: Forge's metrics go to it, and the metrics route shows none of them"
                );
            }
            m::describe();
            metrics::describe_gauge!(SSE_SESSIONS, "Open event streams of this node");
            metrics::describe_gauge!(SSE_SUBSCRIPTIONS, "Subscriptions of this node's streams");
            metrics::describe_gauge!(SSE_QUEUED_EVENTS, "Events waiting to be written to this node's streams");
            metrics::describe_gauge!(LIVE_QUERIES, "Distinct live queries this node runs");
            handle
        })
        .clone()
}

/// `GET` at the metrics path: the Prometheus text format.
pub(crate) async fn render(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    match answer(&s, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn answer(s: &AppState, headers: &HeaderMap) -> Result<Response, ApiError> {
    if s.config.metrics == MetricsAccess::Admin {
        s.require_admin(headers)?;
    }
    let Some(handle) = &s.metrics else {
        return Err(ApiError::not_found("metrics are off (gateway.metrics)"));
    };
    m::sample(s.caller.forge.store())
        .await
        .map_err(|e| ApiError::internal(format_args!("reading metrics: {e}")))?;
    let stats = s.caller.realtime.stats();
    metrics::gauge!(SSE_SESSIONS).set(stats.sessions as f64);
    metrics::gauge!(SSE_SUBSCRIPTIONS).set(stats.subscriptions as f64);
    metrics::gauge!(SSE_QUEUED_EVENTS).set(stats.queued_events as f64);
    metrics::gauge!(LIVE_QUERIES).set(stats.query_groups as f64);
    handle.run_upkeep();
    Ok((
        StatusCode::OK,
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        handle.render(),
    )
        .into_response())
}
