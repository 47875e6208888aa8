//! Prometheus metrics: after a known workload the text, parsed, holds the counts it must
//! (attempts by function and outcome, run and wait histograms, queue depth by queue and
//! status, pools, streams); the route is the admin role's when `gateway.metrics = "admin"`,
//! and absent when off.

mod realtime_support;

use std::collections::BTreeMap;

use forge::prelude::*;
use forge_gateway::metrics::MetricsAccess;
use forge_gateway::GatewayConfig;
use forge_test_support::wait_for;
use realtime_support::{token, GatewayNode, SECRET};

#[forge::job]
async fn metered_ok(_ctx: &JobContext) -> Result<()> {
    Ok(())
}

#[forge::job(max_attempts = 1)]
async fn metered_broken(_ctx: &JobContext) -> Result<()> {
    Err(Error::msg("broken on purpose"))
}

/// Fails its first attempt, completes the second.
#[forge::job(max_attempts = 3, backoff = "10ms")]
async fn metered_flaky(ctx: &JobContext) -> Result<()> {
    if ctx.attempt() == 1 {
        return Err(Error::msg("first try fails"));
    }
    Ok(())
}

async fn start(access: MetricsAccess) -> GatewayNode {
    let mut config = GatewayConfig::new(SECRET);
    config.admin_role = Some("ops".into());
    config.metrics = access;
    GatewayNode::start(config).await
}

/// `name{labels}` → value, labels sorted by name.
fn parse(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        let (key, value) = line.rsplit_once(' ').expect("`name value`");
        let key = match key.split_once('{') {
            None => key.to_string(),
            Some((name, labels)) => {
                let mut labels: Vec<&str> = labels.trim_end_matches('}').split(',').collect();
                labels.sort_unstable();
                format!("{name}{{{}}}", labels.join(","))
            }
        };
        out.insert(key, value.parse().expect("a number"));
    }
    out
}

async fn scrape(s: &GatewayNode, token: Option<&str>) -> (u16, String) {
    let mut req = s.http.get(format!("{}/_api/metrics", s.base));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let res = req.send().await.unwrap();
    (res.status().as_u16(), res.text().await.unwrap())
}

#[tokio::test]
async fn the_metrics_text_counts_a_known_workload() {
    let s = start(MetricsAccess::Admin).await;
    let root = token("root", &["ops"]);
    // The worker starts after the gateway installed the recorder, as `run` does.
    let worker = s.forge.start_worker(WorkerConfig::default()).await.unwrap();
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(s.forge.enqueue(metered_ok::request()).await.unwrap());
    }
    ids.push(s.forge.enqueue(metered_broken::request()).await.unwrap());
    ids.push(s.forge.enqueue(metered_flaky::request()).await.unwrap());
    for _ in 0..2 {
        s.forge
            .enqueue(metered_ok::request().queue("parked"))
            .await
            .unwrap();
    }
    wait_for(
        "the workload to end",
        std::time::Duration::from_secs(20),
        || async {
            for &id in &ids {
                if !s.forge.job(id).await.unwrap()?.status.is_terminal() {
                    return None;
                }
            }
            Some(())
        },
    )
    .await;

    let (status, text) = scrape(&s, Some(&root)).await;
    assert_eq!(status, 200, "{text}");
    let m = parse(&text);
    let get = |key: &str| {
        *m.get(key)
            .unwrap_or_else(|| panic!("no `{key}` in:\n{text}"))
    };
    let ended = |f: &str, o: &str| {
        get(&format!(
            "forge_job_attempts_ended_total{{function=\"{f}\",outcome=\"{o}\"}}"
        ))
    };
    assert_eq!(ended("metered_ok", "completed"), 5.0);
    assert_eq!(ended("metered_broken", "failed"), 1.0);
    assert_eq!(ended("metered_flaky", "retry"), 1.0);
    assert_eq!(ended("metered_flaky", "completed"), 1.0);
    assert_eq!(ended("metered_ok", "dead_letter"), 0.0);
    let started = |f: &str| {
        get(&format!(
            "forge_job_attempts_started_total{{function=\"{f}\"}}"
        ))
    };
    assert_eq!(
        (
            started("metered_ok"),
            started("metered_broken"),
            started("metered_flaky")
        ),
        (5.0, 1.0, 2.0)
    );
    // Histograms: one observation per attempt, each in the `+Inf` bucket and in the count.
    assert_eq!(
        get("forge_job_run_seconds_count{function=\"metered_ok\"}"),
        5.0
    );
    assert_eq!(
        get("forge_job_run_seconds_bucket{function=\"metered_ok\",le=\"+Inf\"}"),
        5.0
    );
    assert_eq!(
        get("forge_job_wait_seconds_count{function=\"metered_flaky\"}"),
        2.0
    );
    assert!(get("forge_job_wait_seconds_sum{function=\"metered_ok\"}") >= 0.0);
    assert!(get("forge_job_writer_batch_writes_count") >= 1.0);
    // What the database holds: the parked jobs wait; nothing else is unfinished.
    assert_eq!(get("forge_jobs{queue=\"parked\",status=\"pending\"}"), 2.0);
    assert!(
        !m.keys()
            .any(|k| k.starts_with("forge_jobs{queue=\"default\"")),
        "{text}"
    );
    assert!(get("forge_db_connections{pool=\"requests\",state=\"idle\"}") >= 1.0);
    assert_eq!(get("forge_sse_sessions"), 0.0);
    assert!(text.contains("# HELP forge_job_attempts_ended_total"));

    // A drained queue reads 0, not its last depth.
    s.forge
        .act_on_jobs(
            forge::runs::JobAction::Cancel,
            &forge::runs::JobSelector::filter(forge::runs::JobFilter::default()),
        )
        .await
        .unwrap();
    let (_, text) = scrape(&s, Some(&root)).await;
    assert_eq!(
        parse(&text)["forge_jobs{queue=\"parked\",status=\"pending\"}"],
        0.0
    );
    worker.shutdown().await;
}

#[tokio::test]
async fn metrics_are_the_admin_roles_or_off() {
    let s = start(MetricsAccess::Admin).await;
    assert_eq!(scrape(&s, None).await.0, 401);
    let (status, body) = scrape(&s, Some(&token("alice", &[]))).await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("`ops`"), "{body}");
    assert_eq!(scrape(&s, Some(&token("root", &["ops"]))).await.0, 200);

    let open = start(MetricsAccess::Open).await;
    assert_eq!(scrape(&open, None).await.0, 200);

    let off = start(MetricsAccess::Off).await;
    let (status, body) = scrape(&off, Some(&token("root", &["ops"]))).await;
    assert_eq!(status, 404, "{body}");
}
