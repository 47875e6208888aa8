//! What Forge measures, recorded through the [`metrics`] facade: with no recorder installed
//! (the default) every recording is a no-op. The gateway installs a Prometheus recorder when
//! `gateway.metrics` is on and renders these at its metrics path (docs/operations.md,
//! Metrics).
//!
//! Counters and histograms are per node and recorded as things happen, through handles
//! registered once per function when the worker starts (an atomic add per job, no lookup by
//! name on the hot path). Gauges of what the database holds are read when metrics are
//! scraped ([`sample`]), not kept up to date as jobs change.

use std::time::Duration;

use chrono::{DateTime, Utc};
use metrics::{counter, gauge, histogram, Counter, Histogram};

use crate::store::{FinishStatus, Store};

/// Attempts started, by `function`.
pub const JOB_ATTEMPTS_STARTED: &str = "forge_job_attempts_started_total";
/// Attempts ended, by `function` and `outcome` (`completed`, `retry`, `failed`,
/// `dead_letter`, `cancelled`).
pub const JOB_ATTEMPTS_ENDED: &str = "forge_job_attempts_ended_total";
/// From when an attempt was due (enqueued, or its retry's time came) to its handler's start,
/// by `function`, in seconds.
pub const JOB_WAIT_SECONDS: &str = "forge_job_wait_seconds";
/// A handler's run time, by `function`, in seconds.
pub const JOB_RUN_SECONDS: &str = "forge_job_run_seconds";
/// Writes (starts, progress, ends) in each batch of the node's job writer.
pub const JOB_WRITER_BATCH: &str = "forge_job_writer_batch_writes";
/// Records in each statement of the node's workflow engine writer.
pub const ENGINE_BATCH: &str = "forge_workflow_engine_batch_records";
/// Jobs not finished, by `queue` and `status` (read at each scrape).
pub const JOBS: &str = "forge_jobs";
/// Workflows not finished, by `status` (read at each scrape).
pub const WORKFLOWS: &str = "forge_workflows";
/// Connections of the node's pools, by `pool` (`requests`, `internal`) and `state` (`idle`,
/// `in_use`), read at each scrape.
pub const DB_CONNECTIONS: &str = "forge_db_connections";

/// Bucket bounds (seconds) of the time histograms: from a millisecond to ten minutes.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0,
];
/// Bucket bounds of the batch-size histograms.
pub const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

/// Says what each metric is, for the exporter's `# HELP` lines.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(JOB_ATTEMPTS_STARTED, "Job attempts started by this node");
    describe_counter!(
        JOB_ATTEMPTS_ENDED,
        "Job attempts ended on this node, by outcome"
    );
    describe_histogram!(
        JOB_WAIT_SECONDS,
        Unit::Seconds,
        "From when an attempt was due to its handler's start"
    );
    describe_histogram!(JOB_RUN_SECONDS, Unit::Seconds, "Job handlers' run time");
    describe_histogram!(JOB_WRITER_BATCH, "Writes per batch of the job writer");
    describe_histogram!(ENGINE_BATCH, "Records per statement of the workflow engine");
    describe_gauge!(JOBS, "Jobs not finished, by queue and status");
    describe_gauge!(WORKFLOWS, "Workflows not finished, by status");
    describe_gauge!(DB_CONNECTIONS, "Connections of this node's pools");
}

/// One function's handles.
pub(crate) struct JobMetrics {
    started: Counter,
    completed: Counter,
    retry: Counter,
    failed: Counter,
    dead_letter: Counter,
    cancelled: Counter,
    wait: Histogram,
    run: Histogram,
}

impl JobMetrics {
    /// Registered when the worker starts: a recorder installed later does not see this
    /// worker's jobs.
    pub(crate) fn new(function: &str) -> Self {
        let ended = |outcome: &'static str| counter!(JOB_ATTEMPTS_ENDED, "function" => function.to_string(), "outcome" => outcome);
        Self {
            started: counter!(JOB_ATTEMPTS_STARTED, "function" => function.to_string()),
            completed: ended("completed"),
            retry: ended("retry"),
            failed: ended("failed"),
            dead_letter: ended("dead_letter"),
            cancelled: ended("cancelled"),
            wait: histogram!(JOB_WAIT_SECONDS, "function" => function.to_string()),
            run: histogram!(JOB_RUN_SECONDS, "function" => function.to_string()),
        }
    }

    /// An attempt's handler starts now; it was due at `due`.
    pub(crate) fn started(&self, due: DateTime<Utc>) {
        self.started.increment(1);
        let waited = (Utc::now() - due).to_std().unwrap_or(Duration::ZERO);
        self.wait.record(waited.as_secs_f64());
    }

    /// An attempt ended with `status` after running `ran`.
    pub(crate) fn ended(&self, status: &FinishStatus, ran: Duration) {
        self.run.record(ran.as_secs_f64());
        match status {
            FinishStatus::Completed(_) => &self.completed,
            FinishStatus::Retry { .. } => &self.retry,
            FinishStatus::Failed(_) => &self.failed,
            FinishStatus::DeadLetter(_) => &self.dead_letter,
            FinishStatus::Cancelled(_) => &self.cancelled,
        }
        .increment(1);
    }
}

/// Reads the gauges of what the database holds (unfinished jobs by queue and status,
/// unfinished workflows by status) and of the node's pools. Call it just before rendering.
/// A status with no job reads 0 once it has been seen, so a drained queue shows 0, not its
/// last depth.
pub async fn sample(store: &Store) -> Result<(), sqlx::Error> {
    for (pool, size, idle) in store.pool_usage() {
        gauge!(DB_CONNECTIONS, "pool" => pool, "state" => "idle").set(idle as f64);
        gauge!(DB_CONNECTIONS, "pool" => pool, "state" => "in_use")
            .set((size as usize).saturating_sub(idle) as f64);
    }
    let (jobs, workflows) = crate::store::count_unfinished(store.pool()).await?;
    let mut seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    for (queue, status) in seen.jobs.iter() {
        gauge!(JOBS, "queue" => queue.clone(), "status" => status.clone()).set(0.0);
    }
    for status in seen.workflows.iter() {
        gauge!(WORKFLOWS, "status" => status.clone()).set(0.0);
    }
    for (queue, status, n) in jobs {
        gauge!(JOBS, "queue" => queue.clone(), "status" => status.clone()).set(n as f64);
        seen.jobs.insert((queue, status));
    }
    for (status, n) in workflows {
        gauge!(WORKFLOWS, "status" => status.clone()).set(n as f64);
        seen.workflows.insert(status);
    }
    Ok(())
}

#[derive(Default)]
struct Seen {
    jobs: std::collections::BTreeSet<(String, String)>,
    workflows: std::collections::BTreeSet<String>,
}

/// Label sets reported before, so that one with nothing left reads 0.
static SEEN: std::sync::LazyLock<std::sync::Mutex<Seen>> =
    std::sync::LazyLock::new(Default::default);
