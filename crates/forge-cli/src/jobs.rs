//! `forge jobs ...`: the runs API's job reads and actions (`Forge::list_jobs`, `job_detail`,
//! `act_on_jobs` and the single-job actions), and `watch`.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use forge_runtime::notifier::Event;
use forge_runtime::runs::{
    JobAction, JobDetail, JobFilter, JobSelector, RunsError, MAX_SELECTED_IDS,
};
use forge_runtime::store::{DbSnapshot, JobRow};
use forge_runtime::{Forge, JobState, JobStatus};
use serde_json::json;
use uuid::Uuid;

use crate::args::{self, PageArgs};
use crate::db::Context;
use crate::error::{self, CliError};
use crate::output::{self, Table};
use crate::watch::{self, Followed};

#[derive(Subcommand)]
pub(crate) enum Command {
    /// List jobs, newest first (jobs that run workflows are listed as workflows).
    Ls {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one job: where it stands, its arguments, output, error and attempts.
    Show { id: Uuid },
    /// Follow a job until it ends; the exit code tells how it ended.
    Watch { id: Uuid },
    /// Give `failed` and `dead_letter` jobs a new attempt, due now.
    Retry(Selection),
    /// Cancel jobs not finished: waiting ones at once, running ones at their next check.
    Cancel(Selection),
    /// Delete finished jobs (`completed`, `failed`, `dead_letter`, `cancelled`).
    Delete(Selection),
}

/// Which jobs: every flag given narrows (the runs API's `JobFilter`).
#[derive(Args, Debug)]
pub(crate) struct FilterArgs {
    /// Any of these statuses (repeat the flag or separate them with commas).
    #[arg(long, value_name = "STATUS", value_delimiter = ',', value_parser = args::job_status())]
    status: Vec<JobStatus>,
    /// The job's function, such as `export_users`.
    #[arg(long, value_name = "NAME")]
    function: Option<String>,
    /// The queue they run on.
    #[arg(long)]
    queue: Option<String>,
    /// The user who started the jobs.
    #[arg(long)]
    owner: Option<String>,
    /// Created at or after this RFC 3339 time.
    #[arg(long, value_name = "TIME", value_parser = args::time)]
    since: Option<DateTime<Utc>>,
    /// Created before this RFC 3339 time.
    #[arg(long, value_name = "TIME", value_parser = args::time)]
    until: Option<DateTime<Utc>>,
}

impl FilterArgs {
    fn filter(&self) -> JobFilter {
        JobFilter {
            owner: self.owner.clone(),
            function: self.function.clone(),
            status: self.status.clone(),
            queue: self.queue.clone(),
            created_after: self.since,
            created_before: self.until,
        }
    }

    fn is_empty(&self) -> bool {
        self.status.is_empty()
            && self.function.is_none()
            && self.queue.is_none()
            && self.owner.is_none()
            && self.since.is_none()
            && self.until.is_none()
    }
}

/// The jobs an action takes: ids, a filter, or (asked for by name) every job.
#[derive(Args, Debug)]
pub(crate) struct Selection {
    #[arg(
        value_name = "ID",
        conflicts_with_all = ["FilterArgs", "all"],
        help = format!("The jobs, by id (at most {MAX_SELECTED_IDS}; select more with a filter)")
    )]
    ids: Vec<Uuid>,
    #[command(flatten)]
    filter: FilterArgs,
    /// Every job the action applies to: an empty filter is refused unless asked for this way.
    #[arg(long, conflicts_with = "FilterArgs")]
    all: bool,
}

impl Selection {
    fn selector(&self) -> Result<JobSelector, CliError> {
        if !self.ids.is_empty() {
            Ok(JobSelector::ids(self.ids.iter().copied()))
        } else if self.all {
            Ok(JobSelector::filter(JobFilter::default()))
        } else if self.filter.is_empty() {
            Err(CliError::usage(
                "say which jobs: ids, a filter (--status, --function, --queue, --owner, \
                 --since, --until), or --all for every job",
            ))
        } else {
            Ok(JobSelector::filter(self.filter.filter()))
        }
    }
}

pub(crate) async fn run(ctx: &Context, command: Command) -> Result<u8, CliError> {
    match command {
        Command::Ls { filter, page } => ls(ctx, &filter, &page).await,
        Command::Show { id } => show(ctx, id).await,
        Command::Watch { id } => watch::watch(ctx, JobRun(id)).await,
        Command::Retry(s) => act(ctx, JobAction::Retry, &s).await,
        Command::Cancel(s) => act(ctx, JobAction::Cancel, &s).await,
        Command::Delete(s) => act(ctx, JobAction::Delete, &s).await,
    }
}

async fn ls(ctx: &Context, filter: &FilterArgs, page: &PageArgs) -> Result<u8, CliError> {
    let forge = ctx.forge().await?;
    let page = forge.list_jobs(&filter.filter(), &page.page()).await?;
    if ctx.json {
        output::print_json(&page)?;
        return Ok(0);
    }
    if page.items.is_empty() {
        output::note("no jobs");
    } else {
        let mut table = Table::new(&[
            "ID", "FUNCTION", "STATUS", "PROGRESS", "ATTEMPT", "QUEUE", "OWNER", "CREATED",
        ]);
        for job in &page.items {
            table.push(vec![
                job.state.job_id.to_string(),
                job.function.clone(),
                job.state.status.to_string(),
                output::percent(job.state.progress),
                format!("{}/{}", job.attempts, job.max_attempts),
                job.queue.clone(),
                output::or_dash(job.owner.as_deref()),
                output::time(Some(job.created_at)),
            ]);
        }
        output::print(table.render())?;
    }
    if let Some(cursor) = &page.next_cursor {
        output::note(format!("more jobs: add --after {cursor}"));
    }
    Ok(0)
}

async fn show(ctx: &Context, id: Uuid) -> Result<u8, CliError> {
    let forge = ctx.forge().await?;
    let Some(job) = forge.job_detail(id, None).await? else {
        return Err(CliError::fail(format!("no such job {id}")));
    };
    if ctx.json {
        output::print_json(&job)?;
    } else {
        output::print(describe(&job))?;
    }
    Ok(0)
}

fn describe(detail: &JobDetail) -> String {
    let job = &detail.job;
    let s = &job.state;
    let progress = match (&s.progress, &s.message) {
        (None, None) => "-".to_string(),
        (p, m) => format!("{} {}", output::percent(*p), m.as_deref().unwrap_or("")),
    };
    let mut out = vec![output::fields(&[
        ("id", s.job_id.to_string()),
        ("function", job.function.clone()),
        ("status", s.status.to_string()),
        ("progress", progress),
        (
            "attempt",
            format!("{} of {}", job.attempts, job.max_attempts),
        ),
        ("queue", job.queue.clone()),
        ("priority", job.priority.to_string()),
        ("owner", output::or_dash(job.owner.as_deref())),
        ("run at", output::time(Some(job.run_at))),
        ("created", output::time(Some(job.created_at))),
        ("started", output::time(job.started_at)),
        ("finished", output::time(job.finished_at)),
    ])];
    out.push(output::section("args", &output::pretty(&detail.args)));
    if let Some(o) = &s.output {
        out.push(output::section("output", &output::pretty(o)));
    }
    if let Some(e) = &s.error {
        out.push(output::section("error", e));
    }
    let mut attempts = Table::new(&["#", "OUTCOME", "WORKER", "STARTED", "ENDED", "ERROR"]);
    for a in &detail.attempt_history {
        attempts.push(vec![
            a.attempt.to_string(),
            a.outcome.to_string(),
            a.worker_id.map_or_else(|| "-".into(), |w| w.to_string()),
            output::time(a.started_at),
            output::time(a.ended_at),
            output::or_dash(a.error.as_deref()),
        ]);
    }
    if detail.attempt_history.is_empty() {
        out.push("attempts: none yet".into());
    } else {
        out.push(output::section("attempts", &attempts.render()));
    }
    out.join("\n")
}

async fn act(ctx: &Context, action: JobAction, selection: &Selection) -> Result<u8, CliError> {
    // A usage mistake is told before the database is asked anything.
    let selector = selection.selector()?;
    let forge = ctx.forge().await?;
    let count = match selection.ids[..] {
        // One job: the runtime says why it could not act (the gateway's single-id answer).
        [id] => {
            act_on_one(&forge, action, id).await.map_err(|e| match e {
                RunsError::NotFound(_) => CliError::fail(format!("no such job {id}")),
                e => e.into(),
            })?;
            1
        }
        _ => forge.act_on_jobs(action, &selector).await?,
    };
    if ctx.json {
        output::print_json(&json!({ "count": count }))?;
    } else {
        let verb = match action {
            JobAction::Retry => "retried",
            JobAction::Cancel => "cancelled",
            JobAction::Delete => "deleted",
        };
        let noun = if count == 1 { "job" } else { "jobs" };
        output::print(format!("{verb} {count} {noun}"))?;
    }
    Ok(0)
}

async fn act_on_one(forge: &Forge, action: JobAction, id: Uuid) -> Result<(), RunsError> {
    match action {
        JobAction::Retry => forge.retry_job(id).await,
        JobAction::Cancel => forge.cancel_any_job(id).await,
        JobAction::Delete => forge.delete_job(id).await,
    }
}

/// A job, as `watch` follows it: its `JobState`, the shape clients receive.
pub(crate) struct JobRun(pub(crate) Uuid);

impl Followed for JobRun {
    type State = JobState;
    const KIND: &'static str = "job";

    fn id(&self) -> Uuid {
        self.0
    }

    async fn read(&self, forge: &Forge) -> Result<(DbSnapshot, Option<JobState>), CliError> {
        let (snapshot, rows) = forge
            .store()
            .get_jobs_with_snapshot(&[self.0])
            .await
            .map_err(error::database)?;
        Ok((snapshot, rows.first().map(JobRow::state)))
    }

    fn updates(&self, event: &Event) -> Option<Vec<(u64, Option<JobState>)>> {
        let Event::JobUpdates(updates) = event else {
            return Some(Vec::new());
        };
        let updates = updates
            .iter()
            .filter(|u| u.job_id == self.0)
            .map(|u| {
                let state = JobState {
                    job_id: u.job_id,
                    status: u.status,
                    progress: u.progress,
                    message: u.message.clone(),
                    output: None,
                    error: None,
                };
                (u.xid, Some(state))
            })
            .collect();
        Some(updates)
    }

    /// Notifications leave out the output and the error: a new status is read from the
    /// database (a retry's error, a completed job's output); progress keeps what was read.
    fn merge(last: &JobState, update: &JobState) -> Option<JobState> {
        if update.status != last.status || update.status.is_terminal() {
            return None;
        }
        Some(JobState {
            output: last.output.clone(),
            error: last.error.clone(),
            ..update.clone()
        })
    }

    fn is_terminal(state: &JobState) -> bool {
        state.status.is_terminal()
    }

    fn exit_code(state: &JobState) -> u8 {
        match state.status {
            JobStatus::Failed | JobStatus::DeadLetter => error::FAILED,
            JobStatus::Cancelled => error::CANCELLED,
            _ => 0,
        }
    }

    fn lines(before: Option<&JobState>, now: &JobState) -> Vec<String> {
        let mut lines = Vec::new();
        if now.status.is_terminal() {
            return lines;
        }
        if before.is_none_or(|b| b.status != now.status) {
            lines.push(match (now.status, &now.error) {
                (JobStatus::Retry, Some(e)) => format!("retry: {e}"),
                (status, _) => status.to_string(),
            });
        }
        if before.is_none_or(|b| b.progress != now.progress || b.message != now.message) {
            match (now.progress, &now.message) {
                (Some(p), Some(m)) => lines.push(format!("{} {m}", output::percent(Some(p)))),
                (Some(p), None) => lines.push(output::percent(Some(p))),
                (None, Some(m)) => lines.push(m.clone()),
                (None, None) => {}
            }
        }
        lines
    }

    fn outcome(state: &JobState) -> Vec<String> {
        let mut lines = vec![match &state.error {
            Some(e) if state.status != JobStatus::Completed => format!("{}: {e}", state.status),
            _ => state.status.to_string(),
        }];
        if let Some(o) = state.output.as_ref().filter(|o| !o.is_null()) {
            lines.push(format!("output: {o}"));
        }
        lines
    }

    fn bar(state: &JobState) -> (u64, u64, String) {
        // A percent is 0 to 100 (the runtime refuses others), so the cast cannot wrap.
        let position = state.progress.unwrap_or(0.0).round() as u64;
        let text = match &state.message {
            Some(m) if state.status == JobStatus::Running => m.clone(),
            Some(m) => format!("{} {m}", state.status),
            None => state.status.to_string(),
        };
        (position, 100, format!("{position:>3}% {text}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(status: JobStatus, progress: Option<f64>, message: Option<&str>) -> JobState {
        JobState {
            job_id: Uuid::nil(),
            status,
            progress,
            message: message.map(String::from),
            output: None,
            error: None,
        }
    }

    #[test]
    fn lines_tell_each_status_and_progress_change_once() {
        let pending = state(JobStatus::Pending, None, None);
        assert_eq!(JobRun::lines(None, &pending), ["pending"]);
        let running = state(JobStatus::Running, Some(40.0), Some("row 2000"));
        assert_eq!(
            JobRun::lines(Some(&pending), &running),
            ["running", "40% row 2000"]
        );
        let further = state(JobStatus::Running, Some(60.0), Some("row 3000"));
        assert_eq!(JobRun::lines(Some(&running), &further), ["60% row 3000"]);
        let mut failed = state(JobStatus::Failed, Some(60.0), None);
        failed.error = Some("the disk is full".into());
        assert!(JobRun::lines(Some(&further), &failed).is_empty());
        assert_eq!(JobRun::outcome(&failed), ["failed: the disk is full"]);
        assert_eq!(JobRun::exit_code(&failed), error::FAILED);
    }

    #[test]
    fn a_new_status_is_read_and_progress_keeps_what_was_read() {
        let mut retry = state(JobStatus::Retry, None, None);
        retry.error = Some("timeout".into());
        let running = state(JobStatus::Running, Some(5.0), None);
        assert_eq!(JobRun::merge(&retry, &running), None);
        let mut last = state(JobStatus::Running, Some(1.0), None);
        last.error = Some("kept".into());
        let merged = JobRun::merge(&last, &running).unwrap();
        assert_eq!(
            (merged.progress, merged.error.as_deref()),
            (Some(5.0), Some("kept"))
        );
        let done = state(JobStatus::Completed, None, None);
        assert_eq!(JobRun::merge(&last, &done), None);
    }
}
