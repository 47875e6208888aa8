//! Runs: the supported way to list and inspect jobs and workflows, and for operators to retry,
//! cancel and delete them, instead of SQL on Forge's tables.
//!
//! The reads take any executor, so a `#[forge::query]` can call them on its own connection
//! (`list_jobs(&mut *ctx.db().await?, ...)`): what they read is `forge.jobs` or
//! `forge.workflows`, and a live subscription to that query is run again on every change of
//! the jobs or workflows it returned. They answer the shapes the wire already uses
//! ([`JobState`], [`WorkflowState`]) with what lists and operators need beside them.
//!
//! Restricting reads to a user's own runs is the caller's choice ([`JobFilter::owner`], the
//! `owner` argument of [`job`]); the gateway's routes make it for every caller without the
//! admin role. The actions ([`act_on_jobs`], [`Forge::retry_job`] and its siblings) are for
//! operators: the gateway offers them to the admin role only.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgExecutor;
use uuid::Uuid;

use crate::error::StartError;
use crate::forge::Forge;
use crate::status::{JobState, JobStatus, WorkflowState, WorkflowStatus};
use crate::store::{self, JobRecord, Selection, WorkflowRecord, WorkflowRow};

pub use crate::store::{Attempt, JobAction, ReceivedEvent, StepDetail};

/// Runs a page holds when the caller does not say.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Most runs one page holds.
pub const MAX_PAGE_SIZE: u32 = 100;

/// What went wrong with a read or an action.
#[derive(Debug, thiserror::Error)]
pub enum RunsError {
    /// A filter, cursor or limit that cannot be used; `field` names it as on the wire.
    #[error("invalid `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The run's state does not allow the action; the message says why and what to do.
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Start(#[from] StartError),
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
}

/// Which jobs: every field given narrows the set. Newest first.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobFilter {
    /// The user the jobs belong to (`JobRequest::owner`, the caller who started them).
    pub owner: Option<String>,
    /// The job's function (`export_users`).
    pub function: Option<String>,
    /// Any of these statuses.
    #[serde(default)]
    pub status: Vec<JobStatus>,
    pub queue: Option<String>,
    /// Created at or after this time (RFC 3339).
    pub created_after: Option<DateTime<Utc>>,
    /// Created before this time (RFC 3339).
    pub created_before: Option<DateTime<Utc>>,
}

/// Which workflows: every field given narrows the set. Newest first.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkflowFilter {
    pub owner: Option<String>,
    /// The workflow's name (`account_verification`).
    pub name: Option<String>,
    #[serde(default)]
    pub status: Vec<WorkflowStatus>,
    pub queue: Option<String>,
    pub created_after: Option<DateTime<Utc>>,
    pub created_before: Option<DateTime<Utc>>,
}

/// Which page: `cursor` is the `nextCursor` of the page before (none: the newest runs), and
/// `limit` how many runs (1 to [`MAX_PAGE_SIZE`], default [`DEFAULT_PAGE_SIZE`]).
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Page {
    pub cursor: Option<String>,
    pub limit: Option<u32>,
}

impl Page {
    /// The newest `limit` runs.
    pub fn first(limit: u32) -> Self {
        Self {
            cursor: None,
            limit: Some(limit),
        }
    }

    fn resolve(&self) -> Result<(Option<Uuid>, i64), RunsError> {
        let limit = self.limit.unwrap_or(DEFAULT_PAGE_SIZE);
        if !(1..=MAX_PAGE_SIZE).contains(&limit) {
            return Err(RunsError::Invalid {
                field: "limit",
                message: format!("must be between 1 and {MAX_PAGE_SIZE}, got {limit}"),
            });
        }
        let cursor = match &self.cursor {
            None => None,
            Some(c) => Some(Uuid::parse_str(c).map_err(|_| RunsError::Invalid {
                field: "cursor",
                message: "not a cursor this API returned (pass `nextCursor` as it came)".into(),
            })?),
        };
        Ok((cursor, i64::from(limit)))
    }
}

fn check_range(
    after: Option<DateTime<Utc>>,
    before: Option<DateTime<Utc>>,
) -> Result<(), RunsError> {
    match (after, before) {
        (Some(a), Some(b)) if a >= b => Err(RunsError::Invalid {
            field: "createdBefore",
            message: "must be later than `createdAfter`".into(),
        }),
        _ => Ok(()),
    }
}

impl JobFilter {
    fn selection(&self, before_id: Option<Uuid>) -> Result<Selection, RunsError> {
        check_range(self.created_after, self.created_before)?;
        Ok(Selection {
            ids: None,
            owner: self.owner.clone(),
            function: self.function.clone(),
            statuses: self.status.iter().map(|s| s.as_str().to_string()).collect(),
            queue: self.queue.clone(),
            created_after: self.created_after,
            created_before: self.created_before,
            before_id,
        })
    }
}

impl WorkflowFilter {
    fn selection(&self, before_id: Option<Uuid>) -> Result<Selection, RunsError> {
        check_range(self.created_after, self.created_before)?;
        Ok(Selection {
            ids: None,
            owner: self.owner.clone(),
            function: self.name.clone(),
            statuses: self.status.iter().map(|s| s.as_str().to_string()).collect(),
            queue: self.queue.clone(),
            created_after: self.created_after,
            created_before: self.created_before,
            before_id,
        })
    }
}

/// A job in a list: its [`JobState`] (the fields a job store shows) and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobSummary {
    #[serde(flatten)]
    pub state: JobState,
    pub function: String,
    pub queue: String,
    pub priority: i32,
    pub owner: Option<String>,
    /// Attempts started so far.
    pub attempts: i32,
    pub max_attempts: i32,
    /// When it is (or was) due.
    pub run_at: DateTime<Utc>,
    pub created_at: DateTime<Utc>,
    /// When its latest attempt started.
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One page of jobs, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobPage {
    pub items: Vec<JobSummary>,
    /// Pass it as `cursor` for the next page; none when this page is the last.
    pub next_cursor: Option<String>,
}

/// Most attempts a job's history keeps (the newest); see migration 0014.
pub const MAX_ATTEMPT_HISTORY: usize = 51;

/// One job with its arguments and every attempt, oldest first (at most
/// [`MAX_ATTEMPT_HISTORY`], the newest).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JobDetail {
    #[serde(flatten)]
    pub job: JobSummary,
    pub args: Value,
    pub attempt_history: Vec<Attempt>,
}

fn summary(r: &JobRecord) -> JobSummary {
    let row = &r.row;
    JobSummary {
        state: row.state(),
        function: row.function_name.clone(),
        queue: row.queue.clone(),
        priority: row.priority,
        owner: row.owner.clone(),
        attempts: row.attempts,
        max_attempts: row.max_attempts,
        run_at: row.run_at,
        created_at: row.created_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
    }
}

/// The logged attempts, then the one the row describes if it is not logged.
fn history(r: &JobRecord) -> Vec<Attempt> {
    let mut out = r.attempt_log.clone();
    let logged = out.last().map_or(0, |a| a.attempt);
    let row = &r.row;
    if row.attempts > logged {
        let status = row.status;
        out.push(Attempt {
            attempt: row.attempts,
            worker_id: r.worker_id,
            started_at: if status == JobStatus::Claimed {
                None
            } else {
                row.started_at
            },
            ended_at: row.finished_at,
            outcome: status,
            error: row.error.clone(),
        });
    }
    out
}

/// A page of jobs of `filter`, newest first. Jobs that run workflows
/// (`workflow:<name>`) are left out: list the workflows.
pub async fn list_jobs<'e, E: PgExecutor<'e>>(
    exec: E,
    filter: &JobFilter,
    page: &Page,
) -> Result<JobPage, RunsError> {
    let (cursor, limit) = page.resolve()?;
    let selection = filter.selection(cursor)?;
    let mut rows = store::list_jobs(exec, &selection, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(JobPage {
        next_cursor: more
            .then(|| rows.last().map(|r| r.row.id.to_string()))
            .flatten(),
        items: rows.iter().map(summary).collect(),
    })
}

/// One job with its attempt history; `owner`, when given, must own it (else none).
pub async fn job<'e, E: PgExecutor<'e>>(
    exec: E,
    id: Uuid,
    owner: Option<&str>,
) -> Result<Option<JobDetail>, RunsError> {
    let Some((record, args)) = store::job_record_by_id(exec, id, owner).await? else {
        return Ok(None);
    };
    Ok(Some(JobDetail {
        job: summary(&record),
        args,
        attempt_history: history(&record),
    }))
}

/// A workflow in a list: its [`WorkflowState`] (the fields a workflow store shows) and where
/// it stands.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowSummary {
    #[serde(flatten)]
    pub state: WorkflowState,
    pub name: String,
    pub queue: String,
    pub owner: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One page of workflows, newest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowPage {
    pub items: Vec<WorkflowSummary>,
    pub next_cursor: Option<String>,
}

/// One workflow with its arguments, steps in display order and its newest events (at most
/// [`store::MAX_EVENTS_SHOWN`]), oldest first.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkflowDetail {
    #[serde(flatten)]
    pub workflow: WorkflowSummary,
    pub args: Value,
    /// While it sleeps or waits: when its job is due (a timer's end, a wait's deadline).
    pub resume_at: Option<DateTime<Utc>>,
    pub step_details: Vec<StepDetail>,
    pub events: Vec<ReceivedEvent>,
}

fn workflow_summary(row: &WorkflowRow, queue: &str) -> WorkflowSummary {
    WorkflowSummary {
        state: row.state(),
        name: row.name.clone(),
        queue: queue.to_string(),
        owner: row.owner.clone(),
        created_at: row.created_at,
        started_at: row.started_at,
        finished_at: row.finished_at,
    }
}

/// A page of workflows of `filter`, newest first.
pub async fn list_workflows<'e, E: PgExecutor<'e>>(
    exec: E,
    filter: &WorkflowFilter,
    page: &Page,
) -> Result<WorkflowPage, RunsError> {
    let (cursor, limit) = page.resolve()?;
    let selection = filter.selection(cursor)?;
    let mut rows = store::list_workflows(exec, &selection, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    Ok(WorkflowPage {
        next_cursor: more
            .then(|| rows.last().map(|(r, _)| r.id.to_string()))
            .flatten(),
        items: rows.iter().map(|(r, q)| workflow_summary(r, q)).collect(),
    })
}

fn workflow_detail(r: WorkflowRecord) -> WorkflowDetail {
    WorkflowDetail {
        workflow: workflow_summary(&r.row, &r.queue),
        args: r.args,
        resume_at: r.resume_at,
        step_details: r.steps,
        events: r.events,
    }
}

/// One workflow with its steps and events; `owner`, when given, must own it (else none).
pub async fn workflow<'e, E: PgExecutor<'e>>(
    exec: E,
    id: Uuid,
    owner: Option<&str>,
) -> Result<Option<WorkflowDetail>, RunsError> {
    Ok(store::workflow_record_by_id(exec, id, owner)
        .await?
        .map(workflow_detail))
}

/// Which jobs an action takes: the ids of `jobIds`, or every job `filter` selects (exactly one
/// of the two). `{"filter": {}}` takes every job.
#[derive(Debug, Clone, Default, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JobSelector {
    pub job_ids: Option<Vec<Uuid>>,
    pub filter: Option<JobFilter>,
}

impl JobSelector {
    pub fn ids(ids: impl IntoIterator<Item = Uuid>) -> Self {
        Self {
            job_ids: Some(ids.into_iter().collect()),
            filter: None,
        }
    }

    pub fn filter(filter: JobFilter) -> Self {
        Self {
            job_ids: None,
            filter: Some(filter),
        }
    }
}

/// Most ids one [`JobSelector::Ids`] may hold.
pub const MAX_SELECTED_IDS: usize = 1_000;

/// Retries, cancels or deletes every job `selector` takes whose status allows it (see
/// [`JobAction::applies_to`]) and answers how many it changed. A filter is worked through in
/// batches of [`store::BULK_BATCH`], newest first, each its own statement: a large set never
/// holds its locks for long, jobs being written at that moment by a worker are skipped, and
/// jobs that change status during the action are not taken twice.
pub async fn act_on_jobs(
    pool: &sqlx::PgPool,
    action: JobAction,
    selector: &JobSelector,
) -> Result<u64, RunsError> {
    let mut selection = match (&selector.job_ids, &selector.filter) {
        (Some(ids), None) => {
            if ids.is_empty() {
                return Err(RunsError::Invalid {
                    field: "jobIds",
                    message: "give at least one id".into(),
                });
            }
            if ids.len() > MAX_SELECTED_IDS {
                return Err(RunsError::Invalid {
                    field: "jobIds",
                    message: format!(
                        "at most {MAX_SELECTED_IDS} ids, got {}; select by filter instead",
                        ids.len()
                    ),
                });
            }
            Selection {
                ids: Some(ids.clone()),
                ..Selection::default()
            }
        }
        (None, Some(filter)) => filter.selection(None)?,
        _ => {
            return Err(RunsError::Invalid {
                field: "jobIds",
                message: "give either `jobIds` or `filter`".into(),
            })
        }
    };
    let mut count = 0u64;
    loop {
        let changed = store::act_on_jobs(pool, action, &selection).await?;
        count += changed.len() as u64;
        if (changed.len() as i64) < store::BULK_BATCH {
            return Ok(count);
        }
        selection.before_id = changed.iter().min().copied();
    }
}

/// Why an action on one job changed nothing; none when there was nothing to do (a cancel
/// already requested).
async fn why_not(forge: &Forge, id: Uuid, action: JobAction) -> Option<RunsError> {
    let row = match forge.store().get_job(id).await {
        Ok(Some(row)) => row,
        Ok(None) => return Some(RunsError::NotFound("job")),
        Err(e) => return Some(e.into()),
    };
    if row.function_name.starts_with(store::WORKFLOW_JOB_PREFIX) {
        return Some(RunsError::Conflict(format!(
            "job {id} runs a workflow; act on the workflow instead (its id is in the job's arguments)"
        )));
    }
    let verb = match action {
        JobAction::Retry => "retried: only `failed` and `dead_letter` jobs are",
        JobAction::Cancel => "cancelled: it already finished",
        JobAction::Delete => "deleted while it may still run: cancel it first",
    };
    if action == JobAction::Cancel && row.status == JobStatus::CancelRequested {
        return None;
    }
    Some(RunsError::Conflict(format!(
        "job {id} is `{}` and cannot be {verb}",
        row.status
    )))
}

impl Forge {
    /// See [`list_jobs`].
    pub async fn list_jobs(&self, filter: &JobFilter, page: &Page) -> Result<JobPage, RunsError> {
        list_jobs(self.pool(), filter, page).await
    }

    /// See [`job`].
    pub async fn job_detail(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<Option<JobDetail>, RunsError> {
        job(self.pool(), id, owner).await
    }

    /// See [`list_workflows`].
    pub async fn list_workflows(
        &self,
        filter: &WorkflowFilter,
        page: &Page,
    ) -> Result<WorkflowPage, RunsError> {
        list_workflows(self.pool(), filter, page).await
    }

    /// See [`workflow`].
    pub async fn workflow_detail(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<Option<WorkflowDetail>, RunsError> {
        workflow(self.pool(), id, owner).await
    }

    /// See [`act_on_jobs`].
    pub async fn act_on_jobs(
        &self,
        action: JobAction,
        selector: &JobSelector,
    ) -> Result<u64, RunsError> {
        act_on_jobs(self.pool(), action, selector).await
    }

    async fn act_on_job(&self, action: JobAction, id: Uuid) -> Result<(), RunsError> {
        match act_on_jobs(self.pool(), action, &JobSelector::ids([id])).await? {
            0 => match why_not(self, id, action).await {
                // Asking twice is not an error.
                None => Ok(()),
                Some(e) => Err(e),
            },
            _ => Ok(()),
        }
    }

    /// Gives a `failed` or `dead_letter` job a new attempt, due now; the attempt that ended
    /// stays in its history. Any other status is a [`RunsError::Conflict`] saying which.
    pub async fn retry_job(&self, id: Uuid) -> Result<(), RunsError> {
        self.act_on_job(JobAction::Retry, id).await
    }

    /// Cancels any job that has not finished, whoever owns it (see [`Forge::cancel_job`]).
    pub async fn cancel_any_job(&self, id: Uuid) -> Result<(), RunsError> {
        self.act_on_job(JobAction::Cancel, id).await
    }

    /// Deletes a finished job (`completed`, `failed`, `dead_letter`, `cancelled`). A job
    /// that may still run must be cancelled first.
    pub async fn delete_job(&self, id: Uuid) -> Result<(), RunsError> {
        self.act_on_job(JobAction::Delete, id).await
    }

    /// Starts the workflow `id` anew: a new run with the same name, arguments and owner,
    /// answered with its id. A workflow is not resumed from its failed step: by the
    /// time it is `failed` or `compensated`, the compensations of its completed steps have
    /// run, so continuing after them would build on steps that were undone. A workflow still
    /// running is refused (cancel it first, or wait).
    pub async fn replay_workflow(&self, id: Uuid) -> Result<Uuid, RunsError> {
        let Some(record) = store::workflow_record_by_id(self.pool(), id, None).await? else {
            return Err(RunsError::NotFound("workflow"));
        };
        if !record.row.status.is_terminal() {
            return Err(RunsError::Conflict(format!(
                "workflow {id} is `{}`: only a finished workflow is replayed (cancel it first)",
                record.row.status
            )));
        }
        let new_id = crate::workflow::start_json(
            self.pool(),
            &record.row.name,
            record.args,
            record.row.owner,
        )
        .await?;
        Ok(new_id)
    }
}

/// The window [`overview`] looks back over when the caller does not say.
pub const DEFAULT_OVERVIEW_MINUTES: u32 = 15;
/// The longest window [`overview`] looks back over.
pub const MAX_OVERVIEW_MINUTES: u32 = 60;
/// Most jobs [`overview`] reads for its rates and latencies: the newest of the window.
pub const OVERVIEW_SAMPLE: i64 = 20_000;

/// Where the installation stands: what waits and runs in each queue now, what the jobs
/// created in the last minutes did, and how many workflows have not finished.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    /// When it was read.
    pub at: DateTime<Utc>,
    /// Every queue with unfinished jobs or jobs created in the window, by name.
    pub queues: Vec<QueueOverview>,
    /// Workflows not finished, by status (`created`, `running`, `waiting`, `compensating`).
    pub workflows: Vec<StatusCount>,
    /// Jobs of the sample that finished, by minute, oldest first.
    pub per_minute: Vec<MinuteCount>,
    /// The seconds the sample covers: the window, or less when the window held more than
    /// `sampleLimit` jobs (the newest are read).
    pub window_seconds: f64,
    pub sampled: i64,
    pub sample_limit: i64,
}

/// One queue: its unfinished jobs by status now, and what the sample's jobs did.
#[derive(Debug, Clone, Default, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueOverview {
    pub queue: String,
    pub pending: i64,
    pub retry: i64,
    pub claimed: i64,
    pub running: i64,
    pub cancel_requested: i64,
    /// Jobs of the sample in this queue, and how they ended so far.
    pub sampled: i64,
    pub completed: i64,
    /// `failed` and `dead_letter`.
    pub failed: i64,
    pub cancelled: i64,
    /// Finished jobs (any outcome) a minute, over the sample's window.
    pub throughput_per_minute: f64,
    /// Due → start of the latest attempt, in milliseconds.
    pub wait_p50_ms: Option<f64>,
    pub wait_p99_ms: Option<f64>,
    /// Start → end of the latest attempt, in milliseconds.
    pub run_p50_ms: Option<f64>,
    pub run_p99_ms: Option<f64>,
}

/// How many runs have a status.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatusCount {
    pub status: String,
    pub count: i64,
}

/// Jobs that finished in one minute.
#[derive(Debug, Clone, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MinuteCount {
    pub minute: DateTime<Utc>,
    pub completed: i64,
    /// `failed` and `dead_letter`.
    pub failed: i64,
}

/// Reads the [`Overview`] over the last `minutes` (1 to [`MAX_OVERVIEW_MINUTES`]): three
/// statements, the unfinished counts (as the metrics scrape reads them) and two over at most
/// [`OVERVIEW_SAMPLE`] jobs.
pub async fn overview(pool: &sqlx::PgPool, minutes: u32) -> Result<Overview, RunsError> {
    if !(1..=MAX_OVERVIEW_MINUTES).contains(&minutes) {
        return Err(RunsError::Invalid {
            field: "windowMinutes",
            message: format!("must be between 1 and {MAX_OVERVIEW_MINUTES}, got {minutes}"),
        });
    }
    let at = Utc::now();
    let since = at - chrono::Duration::minutes(i64::from(minutes));
    let (unfinished, workflows) = store::count_unfinished(pool).await?;
    let (activity, per_minute) = store::recent_activity(pool, since, OVERVIEW_SAMPLE).await?;

    let sampled: i64 = activity.iter().map(|a| a.sampled).sum();
    // A full sample covers only the time since its oldest job; rates are over that.
    let oldest = activity.iter().filter_map(|a| a.oldest).min();
    let start = match oldest {
        Some(o) if sampled >= OVERVIEW_SAMPLE => o.max(since),
        _ => since,
    };
    let window_seconds = ((at - start).num_milliseconds() as f64 / 1000.0).max(1.0);

    let mut queues = std::collections::BTreeMap::<String, QueueOverview>::new();
    for (name, status, count) in unfinished {
        let q = queue_of(&mut queues, &name);
        match status.as_str() {
            "pending" => q.pending = count,
            "retry" => q.retry = count,
            "claimed" => q.claimed = count,
            "running" => q.running = count,
            _ => q.cancel_requested += count,
        }
    }
    for a in activity {
        let q = queue_of(&mut queues, &a.queue);
        q.sampled = a.sampled;
        q.completed = a.completed;
        q.failed = a.failed;
        q.cancelled = a.cancelled;
        q.throughput_per_minute =
            (a.completed + a.failed + a.cancelled) as f64 * 60.0 / window_seconds;
        q.wait_p50_ms = a.wait_p50_ms;
        q.wait_p99_ms = a.wait_p99_ms;
        q.run_p50_ms = a.run_p50_ms;
        q.run_p99_ms = a.run_p99_ms;
    }
    Ok(Overview {
        at,
        queues: queues.into_values().collect(),
        workflows: workflows
            .into_iter()
            .map(|(status, count)| StatusCount { status, count })
            .collect(),
        per_minute: per_minute
            .into_iter()
            .map(|m| MinuteCount {
                minute: m.minute,
                completed: m.completed,
                failed: m.failed,
            })
            .collect(),
        window_seconds,
        sampled,
        sample_limit: OVERVIEW_SAMPLE,
    })
}

fn queue_of<'a>(
    queues: &'a mut std::collections::BTreeMap<String, QueueOverview>,
    name: &str,
) -> &'a mut QueueOverview {
    queues
        .entry(name.to_owned())
        .or_insert_with(|| QueueOverview {
            queue: name.to_owned(),
            ..QueueOverview::default()
        })
}

impl Forge {
    /// See [`overview`].
    pub async fn overview(&self, minutes: u32) -> Result<Overview, RunsError> {
        overview(self.pool(), minutes).await
    }
}
