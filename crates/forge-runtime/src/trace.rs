//! Traces across nodes: the span that starts a job or workflow (an RPC call, a mutation, a
//! handler that enqueues) is stored with it as a W3C `traceparent`, and the node that runs it
//! continues that trace: a `forge.job` span (the attempt) with `forge.job.claim` (from the
//! claim to the handler's start), `forge.job.run` (the handler) and `forge.job.finish` (from
//! the end to its write's commit) under it, and a `forge.step` span per workflow step.
//!
//! Spans are `tracing` spans; they become OpenTelemetry spans, and the stored context a real
//! one, only under a subscriber with a `tracing-opentelemetry` layer (the gateway's
//! `telemetry` module sets one up from `FORGE_OTLP_ENDPOINT`). Without one nothing is stored
//! and the spans cost what a disabled span costs.

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

const TRACEPARENT: &str = "traceparent";

/// The `traceparent` of the current span, if it is part of a trace.
pub fn current() -> Option<String> {
    let span = tracing::Span::current();
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    carrier.remove(TRACEPARENT)
}

/// Makes `span` a child of the trace `traceparent` names (when it is a valid one).
pub fn continue_trace(span: &tracing::Span, traceparent: &str) {
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        // Fails only when no OpenTelemetry layer is there to take it: nothing to continue.
        let _ = span.set_parent(cx);
    }
}

/// The span of one attempt of a job, in the trace that started it.
pub(crate) fn job_span(
    id: uuid::Uuid,
    function: &str,
    attempt: i32,
    traceparent: Option<&str>,
) -> tracing::Span {
    let span = tracing::info_span!(
        parent: None,
        "forge.job",
        otel.name = %format_args!("job {function}"),
        job.id = %id,
        job.function = %function,
        job.attempt = attempt,
    );
    if let Some(tp) = traceparent {
        continue_trace(&span, tp);
    }
    span
}
