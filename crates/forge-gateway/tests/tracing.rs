//! Traces across the queue: a call that carries a W3C `traceparent` starts a job and a
//! workflow, and the spans of their runs (claim, run, each step, the final write) land in the
//! caller's trace, under the call's own span. Spans are caught by OpenTelemetry's in-memory
//! exporter.

mod realtime_support;

use std::collections::HashMap;
use std::time::Duration;

use forge::prelude::*;
use forge_gateway::GatewayConfig;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use realtime_support::{token, GatewayNode, SECRET};
use serde_json::json;
use tracing_subscriber::layer::SubscriberExt;

#[forge::job]
async fn traced_job(_ctx: &JobContext, n: u32) -> Result<u32> {
    Ok(n + 1)
}

#[forge::workflow(steps = ["first", "second"])]
async fn traced_flow(ctx: &WorkflowContext) -> Result<u32> {
    let a: u32 = ctx.step("first", || async { Ok(1) }).await?;
    let b: u32 = ctx.step("second", move || async move { Ok(a + 1) }).await?;
    Ok(b)
}

/// The spans of `trace` of one kind. Spans that set `otel.name` are exported under it
/// (`POST /_api/rpc/f`, `rpc f`, `job f`, `step s`); the others under their span name.
fn by_name<'a>(spans: &'a [SpanData], trace: TraceId, kind: &str) -> Vec<&'a SpanData> {
    let matches = |name: &str| match kind {
        "forge.http" => name.starts_with("POST /_api/"),
        "forge.rpc" => name.starts_with("rpc "),
        "forge.job" => name.starts_with("job "),
        "forge.step" => name.starts_with("step "),
        _ => name == kind,
    };
    spans
        .iter()
        .filter(|s| s.span_context.trace_id() == trace && matches(&s.name))
        .collect()
}

#[tokio::test]
async fn a_calls_trace_continues_into_the_jobs_and_workflows_it_starts() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber =
        tracing_subscriber::registry().with(forge_gateway::telemetry::layer(&provider));
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let s = GatewayNode::start(GatewayConfig::new(SECRET)).await;
    let worker = s.forge.start_worker(WorkerConfig::default()).await.unwrap();
    let alice = token("alice", &[]);
    let trace = TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap();
    let client_span = SpanId::from_hex("00f067aa0ba902b7").unwrap();
    let traceparent = format!("00-{trace}-{client_span}-01");

    let mut started = HashMap::new();
    for (function, args) in [
        ("traced_job", json!({ "n": 1 })),
        ("traced_flow", json!({})),
    ] {
        let res = s
            .http
            .post(format!("{}/_api/rpc/{function}", s.base))
            .bearer_auth(&alice)
            .header("traceparent", &traceparent)
            .json(&args)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        let body: serde_json::Value = res.json().await.unwrap();
        started.insert(function, body["data"].clone());
    }
    let job_id = started["traced_job"]["jobId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let flow_id = started["traced_flow"]["workflowId"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    forge_test_support::wait_for("both to complete", Duration::from_secs(20), || async {
        let job = s.forge.job(job_id).await.unwrap()?;
        let flow = s.forge.workflow(flow_id).await.unwrap()?;
        (job.status == JobStatus::Completed && flow.status == WorkflowStatus::Completed)
            .then_some(())
    })
    .await;
    // The final write's span ends when the write commits, just after the status is visible.
    let spans = forge_test_support::wait_for("the spans", Duration::from_secs(10), || async {
        let spans = exporter.get_finished_spans().unwrap();
        (by_name(&spans, trace, "forge.job.finish").len() == 2).then_some(spans)
    })
    .await;

    // The calls: each request continues the client's span, each call is under its request.
    let requests = by_name(&spans, trace, "forge.http");
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.parent_span_id == client_span));
    let calls = by_name(&spans, trace, "forge.rpc");
    assert_eq!(calls.len(), 2);
    for c in &calls {
        assert!(requests
            .iter()
            .any(|r| r.span_context.span_id() == c.parent_span_id));
    }
    let call_ids: Vec<SpanId> = calls.iter().map(|c| c.span_context.span_id()).collect();

    // The attempts: each job's span is a child of the call that started it, and its claim,
    // run and final write are under it.
    let attempts = by_name(&spans, trace, "forge.job");
    assert_eq!(attempts.len(), 2, "the job and the workflow's one run");
    for a in &attempts {
        assert!(call_ids.contains(&a.parent_span_id), "{a:?}");
        let id = a.span_context.span_id();
        for child in ["forge.job.claim", "forge.job.run", "forge.job.finish"] {
            assert!(
                by_name(&spans, trace, child)
                    .iter()
                    .any(|c| c.parent_span_id == id),
                "no `{child}` under {a:?}"
            );
        }
    }
    // The workflow's steps, under its run.
    let runs: Vec<SpanId> = by_name(&spans, trace, "forge.job.run")
        .iter()
        .map(|r| r.span_context.span_id())
        .collect();
    let steps = by_name(&spans, trace, "forge.step");
    assert_eq!(steps.len(), 2, "{steps:?}");
    assert!(steps.iter().all(|s| runs.contains(&s.parent_span_id)));
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_ref()).collect();
    assert!(names.contains(&"step first") && names.contains(&"step second"));
    let mut jobs: Vec<&str> = attempts.iter().map(|a| a.name.as_ref()).collect();
    jobs.sort_unstable();
    assert_eq!(jobs, ["job traced_job", "job workflow:traced_flow"]);

    // A call without a trace header starts a trace of its own, and its job joins that one.
    let res = s
        .http
        .post(format!("{}/_api/rpc/traced_job", s.base))
        .bearer_auth(&alice)
        .json(&json!({ "n": 2 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let spans = forge_test_support::wait_for(
        "the untraced call's job",
        Duration::from_secs(10),
        || async {
            let spans = exporter.get_finished_spans().unwrap();
            let own = spans
                .iter()
                .find(|s| s.name == "job traced_job" && s.span_context.trace_id() != trace)?;
            Some((own.clone(), spans))
        },
    )
    .await;
    let (job, all) = spans;
    let new_trace = job.span_context.trace_id();
    let call = by_name(&all, new_trace, "forge.rpc");
    assert_eq!(call.len(), 1);
    assert_eq!(job.parent_span_id, call[0].span_context.span_id());
    let request = by_name(&all, new_trace, "forge.http");
    assert_eq!(request.len(), 1);
    assert_eq!(request[0].parent_span_id, SpanId::INVALID, "a root span");
    worker.shutdown().await;
}
