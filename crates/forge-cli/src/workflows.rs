//! `forge workflows ...`: the runs API's workflow reads (`Forge::list_workflows`,
//! `workflow_detail`), `Forge::send_workflow_event`, and `watch`.

use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use forge_runtime::error::EventError;
use forge_runtime::notifier::Event;
use forge_runtime::runs::{WorkflowDetail, WorkflowFilter};
use forge_runtime::status::StepStatus;
use forge_runtime::store::{DbSnapshot, WorkflowRow};
use forge_runtime::{Forge, WorkflowState, WorkflowStatus};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::args::{self, PageArgs};
use crate::db::Context;
use crate::error::{self, CliError};
use crate::output::{self, Table};
use crate::watch::{self, Followed};

#[derive(Subcommand)]
pub(crate) enum Command {
    /// List workflows, newest first.
    Ls {
        #[command(flatten)]
        filter: FilterArgs,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one workflow: where it stands, its arguments, output, step timeline and events.
    Show { id: Uuid },
    /// Follow a workflow until it ends; the exit code tells how it ended.
    Watch { id: Uuid },
    /// Send an event to a workflow: a wait for it resumes at once, else it is kept for the
    /// first wait of that name.
    SendEvent {
        id: Uuid,
        /// The event's name, as the workflow waits for it.
        event: String,
        /// The event's payload, as JSON (default: null).
        #[arg(long, value_name = "JSON", value_parser = json_value)]
        payload: Option<Value>,
    },
}

/// Which workflows: every flag given narrows (the runs API's `WorkflowFilter`).
#[derive(Args, Debug)]
pub(crate) struct FilterArgs {
    /// Any of these statuses (repeat the flag or separate them with commas).
    #[arg(long, value_name = "STATUS", value_delimiter = ',', value_parser = args::workflow_status())]
    status: Vec<WorkflowStatus>,
    /// The workflow's name, such as `account_verification`.
    #[arg(long)]
    name: Option<String>,
    /// The queue they run on.
    #[arg(long)]
    queue: Option<String>,
    /// The user who started the workflows.
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
    fn filter(&self) -> WorkflowFilter {
        WorkflowFilter {
            owner: self.owner.clone(),
            name: self.name.clone(),
            status: self.status.clone(),
            queue: self.queue.clone(),
            created_after: self.since,
            created_before: self.until,
        }
    }
}

fn json_value(text: &str) -> Result<Value, String> {
    serde_json::from_str(text).map_err(|e| format!("not JSON ({e})"))
}

pub(crate) async fn run(ctx: &Context, command: Command) -> Result<u8, CliError> {
    match command {
        Command::Ls { filter, page } => ls(ctx, &filter, &page).await,
        Command::Show { id } => show(ctx, id).await,
        Command::Watch { id } => watch::watch(ctx, WorkflowRun(id)).await,
        Command::SendEvent { id, event, payload } => {
            send_event(ctx, id, &event, payload.unwrap_or(Value::Null)).await
        }
    }
}

async fn ls(ctx: &Context, filter: &FilterArgs, page: &PageArgs) -> Result<u8, CliError> {
    let forge = ctx.forge().await?;
    let page = forge.list_workflows(&filter.filter(), &page.page()).await?;
    if ctx.json {
        output::print_json(&page)?;
        return Ok(0);
    }
    if page.items.is_empty() {
        output::note("no workflows");
    } else {
        let mut table = Table::new(&[
            "ID", "NAME", "STATUS", "STEP", "STEPS", "QUEUE", "OWNER", "CREATED",
        ]);
        for w in &page.items {
            let s = &w.state;
            table.push(vec![
                s.workflow_id.to_string(),
                w.name.clone(),
                s.status.to_string(),
                current_step(s),
                format!("{}/{}", completed_steps(s), s.steps.len()),
                w.queue.clone(),
                output::or_dash(w.owner.as_deref()),
                output::time(Some(w.created_at)),
            ]);
        }
        output::print(table.render())?;
    }
    if let Some(cursor) = &page.next_cursor {
        output::note(format!("more workflows: add --after {cursor}"));
    }
    Ok(0)
}

fn current_step(s: &WorkflowState) -> String {
    match (&s.step, &s.waiting_for) {
        (Some(step), Some(w)) => format!("{step} ({w})"),
        (Some(step), None) => step.clone(),
        (None, Some(w)) => w.clone(),
        (None, None) => "-".into(),
    }
}

fn completed_steps(s: &WorkflowState) -> usize {
    s.steps
        .iter()
        .filter(|st| st.status == StepStatus::Completed)
        .count()
}

async fn show(ctx: &Context, id: Uuid) -> Result<u8, CliError> {
    let forge = ctx.forge().await?;
    let Some(workflow) = forge.workflow_detail(id, None).await? else {
        return Err(CliError::fail(format!("no such workflow {id}")));
    };
    if ctx.json {
        output::print_json(&workflow)?;
    } else {
        output::print(describe(&workflow))?;
    }
    Ok(0)
}

fn describe(detail: &WorkflowDetail) -> String {
    let w = &detail.workflow;
    let s = &w.state;
    let mut out = vec![output::fields(&[
        ("id", s.workflow_id.to_string()),
        ("name", w.name.clone()),
        ("status", s.status.to_string()),
        ("step", output::or_dash(s.step.as_deref())),
        ("waiting for", output::or_dash(s.waiting_for.as_deref())),
        ("resumes at", output::time(detail.resume_at)),
        ("queue", w.queue.clone()),
        ("owner", output::or_dash(w.owner.as_deref())),
        ("created", output::time(Some(w.created_at))),
        ("started", output::time(w.started_at)),
        ("finished", output::time(w.finished_at)),
    ])];
    out.push(output::section("args", &output::pretty(&detail.args)));
    if let Some(o) = &s.output {
        out.push(output::section("output", &output::pretty(o)));
    }
    if let Some(e) = &s.error {
        out.push(output::section("error", e));
    }
    let mut steps = Table::new(&[
        "STEP",
        "KIND",
        "STATUS",
        "ATTEMPTS",
        "STARTED",
        "FINISHED",
        "WAKES AT",
        "COMPENSATED",
        "ERROR",
    ]);
    for st in &detail.step_details {
        let compensated = match (st.compensated_at, st.compensation_attempts) {
            (None, 0) => "-".to_string(),
            (at, n) => format!("{} ({n} attempts)", output::time(at)),
        };
        steps.push(vec![
            st.name.clone(),
            st.kind.clone(),
            st.status.to_string(),
            st.attempts.to_string(),
            output::time(st.started_at),
            output::time(st.finished_at),
            output::time(st.wake_at),
            compensated,
            output::or_dash(st.error.as_deref()),
        ]);
    }
    if detail.step_details.is_empty() {
        out.push("steps: none".into());
    } else {
        out.push(output::section("steps", &steps.render()));
    }
    if !detail.events.is_empty() {
        let mut events = Table::new(&["EVENT", "RECEIVED", "CONSUMED", "PAYLOAD"]);
        for e in &detail.events {
            events.push(vec![
                e.name.clone(),
                output::time(Some(e.received_at)),
                if e.consumed { "yes" } else { "no" }.into(),
                e.payload.to_string(),
            ]);
        }
        out.push(output::section("events", &events.render()));
    }
    out.join("\n")
}

async fn send_event(ctx: &Context, id: Uuid, event: &str, payload: Value) -> Result<u8, CliError> {
    let forge = ctx.forge().await?;
    forge
        .send_workflow_event(id, event, payload)
        .await
        .map_err(|e| match e {
            EventError::NotFound => CliError::fail(format!("no such workflow {id}")),
            EventError::AlreadyFinished(status) => CliError::fail(format!(
                "workflow {id} already finished with status `{status}`: nothing will wait for \
                 the event"
            )),
            EventError::EmptyName | EventError::Unstorable(_) => CliError::usage(e.to_string()),
            e => CliError::fail(e.to_string()),
        })?;
    if ctx.json {
        output::print_json(&json!({ "sent": true }))?;
    } else {
        output::print(format!("sent `{event}` to workflow {id}"))?;
    }
    Ok(0)
}

/// A workflow, as `watch` follows it: its `WorkflowState`, the shape clients receive.
pub(crate) struct WorkflowRun(pub(crate) Uuid);

impl Followed for WorkflowRun {
    type State = WorkflowState;
    const KIND: &'static str = "workflow";

    fn id(&self) -> Uuid {
        self.0
    }

    async fn read(&self, forge: &Forge) -> Result<(DbSnapshot, Option<WorkflowState>), CliError> {
        let (snapshot, rows) = forge
            .store()
            .get_workflows_with_snapshot(&[self.0])
            .await
            .map_err(error::database)?;
        Ok((snapshot, rows.first().map(WorkflowRow::state)))
    }

    fn updates(&self, event: &Event) -> Option<Vec<(u64, Option<WorkflowState>)>> {
        let Event::WorkflowUpdates(updates) = event else {
            return Some(Vec::new());
        };
        // Most payloads are about other workflows: not decoded at all.
        if !updates.as_str().contains(&self.0.to_string()) {
            return Some(Vec::new());
        }
        let updates = updates.decode().ok()?;
        Some(
            updates
                .into_iter()
                .filter(|u| u.workflow_id == self.0)
                .map(|u| (u.xid, u.state))
                .collect(),
        )
    }

    /// An update carries the whole state but the output, which only a completed workflow
    /// has: the end is read from the database.
    fn merge(_last: &WorkflowState, update: &WorkflowState) -> Option<WorkflowState> {
        (!update.status.is_terminal()).then(|| update.clone())
    }

    fn is_terminal(state: &WorkflowState) -> bool {
        state.status.is_terminal()
    }

    fn exit_code(state: &WorkflowState) -> u8 {
        match state.status {
            WorkflowStatus::Failed => error::FAILED,
            WorkflowStatus::Compensated => error::COMPENSATED,
            _ => 0,
        }
    }

    fn lines(before: Option<&WorkflowState>, now: &WorkflowState) -> Vec<String> {
        let mut lines = Vec::new();
        if !now.status.is_terminal()
            && before.is_none_or(|b| b.status != now.status || b.waiting_for != now.waiting_for)
        {
            lines.push(match &now.waiting_for {
                Some(w) => format!("{} for {w}", now.status),
                None => now.status.to_string(),
            });
        }
        for step in &now.steps {
            let was = before
                .and_then(|b| b.steps.iter().find(|s| s.name == step.name))
                .map(|s| s.status);
            if was.unwrap_or(StepStatus::Pending) == step.status {
                continue;
            }
            lines.push(match &step.error {
                Some(e) => format!("step {}: {} ({e})", step.name, step.status),
                None => format!("step {}: {}", step.name, step.status),
            });
        }
        lines
    }

    fn outcome(state: &WorkflowState) -> Vec<String> {
        let mut lines = vec![match &state.error {
            Some(e) if state.status != WorkflowStatus::Completed => {
                format!("{}: {e}", state.status)
            }
            _ => state.status.to_string(),
        }];
        if let Some(o) = state.output.as_ref().filter(|o| !o.is_null()) {
            lines.push(format!("output: {o}"));
        }
        lines
    }

    fn bar(state: &WorkflowState) -> (u64, u64, String) {
        let (done, steps) = (completed_steps(state), state.steps.len());
        let text = format!(
            "{done}/{steps} steps  {} {}",
            state.status,
            current_step(state)
        );
        (done as u64, steps as u64, text)
    }
}

#[cfg(test)]
mod tests {
    use forge_runtime::status::StepState;

    use super::*;

    fn state(status: WorkflowStatus, steps: &[(&str, StepStatus)]) -> WorkflowState {
        WorkflowState {
            workflow_id: Uuid::nil(),
            status,
            step: None,
            waiting_for: None,
            steps: steps
                .iter()
                .map(|(name, status)| StepState {
                    name: name.to_string(),
                    status: *status,
                    error: None,
                })
                .collect(),
            output: None,
            error: None,
        }
    }

    #[test]
    fn lines_tell_the_status_and_each_step_that_moved() {
        use StepStatus::*;
        let created = state(WorkflowStatus::Created, &[("a", Pending), ("b", Pending)]);
        assert_eq!(WorkflowRun::lines(None, &created), ["created"]);
        let mut waiting = state(WorkflowStatus::Waiting, &[("a", Completed), ("b", Running)]);
        waiting.waiting_for = Some("event:go".into());
        assert_eq!(
            WorkflowRun::lines(Some(&created), &waiting),
            [
                "waiting for event:go",
                "step a: completed",
                "step b: running"
            ]
        );
        let done = state(
            WorkflowStatus::Completed,
            &[("a", Completed), ("b", Completed)],
        );
        assert_eq!(
            WorkflowRun::lines(Some(&waiting), &done),
            ["step b: completed"]
        );
        assert_eq!(WorkflowRun::exit_code(&done), 0);
        let undone = state(WorkflowStatus::Compensated, &[("a", Compensated)]);
        assert_eq!(WorkflowRun::exit_code(&undone), error::COMPENSATED);
    }
}
