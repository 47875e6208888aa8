//! Maintenance every worker node does on its own, without a leader: retention, the deletion
//! of finished jobs and workflows once they are old enough. Nodes share the work through
//! `FOR UPDATE SKIP LOCKED` (see `store/retention.rs`), so any number may run it at once.

use std::time::Duration;

use crate::store::{Finished, Store};

/// How long finished jobs and workflows are kept, per final status (`None`: kept for ever),
/// and how the deleting is paced. Part of [`WorkerConfig`](crate::WorkerConfig).
#[derive(Debug, Clone)]
pub struct RetentionConfig {
    /// Off: nothing is ever deleted.
    pub enabled: bool,
    /// Time between two rounds. A round deletes batch after batch until a batch comes back
    /// short.
    pub interval: Duration,
    /// Most rows one statement deletes (a workflow's steps and events go with it).
    pub batch: u32,
    pub job_completed: Option<Duration>,
    pub job_cancelled: Option<Duration>,
    pub job_failed: Option<Duration>,
    pub job_dead_letter: Option<Duration>,
    pub workflow_completed: Option<Duration>,
    pub workflow_compensated: Option<Duration>,
    pub workflow_failed: Option<Duration>,
}

const DAY: Duration = Duration::from_secs(24 * 3600);

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            interval: Duration::from_secs(60),
            batch: 500,
            job_completed: Some(DAY),
            job_cancelled: Some(DAY),
            job_failed: Some(14 * DAY),
            job_dead_letter: Some(14 * DAY),
            workflow_completed: Some(DAY),
            workflow_compensated: Some(DAY),
            workflow_failed: Some(14 * DAY),
        }
    }
}

impl RetentionConfig {
    /// Every rule: its table, its status, its age.
    fn rules(&self) -> Vec<(Finished, &'static str, Duration)> {
        [
            (Finished::Jobs, "completed", self.job_completed),
            (Finished::Jobs, "cancelled", self.job_cancelled),
            (Finished::Jobs, "failed", self.job_failed),
            (Finished::Jobs, "dead_letter", self.job_dead_letter),
            (Finished::Workflows, "completed", self.workflow_completed),
            (
                Finished::Workflows,
                "compensated",
                self.workflow_compensated,
            ),
            (Finished::Workflows, "failed", self.workflow_failed),
        ]
        .into_iter()
        .filter_map(|(table, status, age)| age.map(|age| (table, status, age)))
        .collect()
    }
}

/// What one round deleted.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Deleted {
    pub jobs: u64,
    pub workflows: u64,
    /// Records of handled schedule ticks whose jobs are gone.
    pub schedule_ticks: u64,
}

/// One round of retention: every rule, batch after batch, until each has nothing left that
/// is old enough (or that another node is not already deleting).
pub async fn retain(store: &Store, config: &RetentionConfig) -> Result<Deleted, sqlx::Error> {
    let mut deleted = Deleted::default();
    if !config.enabled {
        return Ok(deleted);
    }
    let batch = i64::from(config.batch.max(1));
    for (table, status, age) in config.rules() {
        loop {
            let n = store.delete_finished(table, &[status], age, batch).await?;
            match table {
                Finished::Jobs => deleted.jobs += n,
                Finished::Workflows => deleted.workflows += n,
            }
            if n < batch.unsigned_abs() {
                break;
            }
            // Between batches, let the rest of the node have the runtime.
            tokio::task::yield_now().await;
        }
    }
    // After the jobs: a tick goes once its job went.
    loop {
        let n = store.prune_schedule_ticks(batch).await?;
        deleted.schedule_ticks += n;
        if n < batch.unsigned_abs() {
            break;
        }
        tokio::task::yield_now().await;
    }
    Ok(deleted)
}

/// Runs a round every `interval`, the first one at once.
pub(crate) async fn retention_loop(store: Store, config: RetentionConfig) {
    if !config.enabled {
        return;
    }
    let mut tick = tokio::time::interval(config.interval.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match retain(&store, &config).await {
            Ok(d) if d.jobs + d.workflows + d.schedule_ticks > 0 => {
                tracing::debug!(
                    jobs = d.jobs,
                    workflows = d.workflows,
                    schedule_ticks = d.schedule_ticks,
                    "retention deleted"
                );
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "retention failed; trying again next round"),
        }
    }
}
