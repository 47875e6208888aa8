//! Endings: completing, failing, and compensating (undoing completed steps in reverse).

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::status::{StepStatus, WorkflowStatus};
use crate::store::{HistoryEntry, StepUpdate, WriteOutcome};

use super::steps::run_attempt;
use super::{after, DbFailure, Execution, Outcome};

impl Execution {
    /// The body returned `Ok`.
    pub(super) async fn complete(&self, output: Value) -> Result<Outcome, DbFailure> {
        let (status, unreached) = {
            let st = self.state();
            let unreached = st
                .history
                .range(st.next_seq..)
                .next()
                .map(|(_, e)| e.clone());
            (st.status, unreached)
        };
        if status == WorkflowStatus::Compensating {
            return self.compensate(None).await;
        }
        if let Some(e) = unreached {
            return self
                .fail(format!(
                    "workflow `{}` no longer matches its history: it returned, but the history \
                     has {} `{}` at position {} (was its code changed while it ran?)",
                    self.def.name,
                    e.kind.as_str(),
                    e.name,
                    e.run_seq
                ))
                .await;
        }
        let mut w = self.write(WorkflowStatus::Running, WorkflowStatus::Completed);
        w.output = Some(output);
        w.finish = true;
        match self.writer.write(w).await? {
            WriteOutcome::Applied => Ok(Outcome::Ended),
            WriteOutcome::StatusWas(WorkflowStatus::Compensating) => {
                self.state().status = WorkflowStatus::Compensating;
                self.compensate(None).await
            }
            _ => Ok(Outcome::Superseded),
        }
    }

    /// Steps that were still running when the workflow ended: they did not finish.
    pub(super) fn unfinished(&self, why: &str) -> Vec<StepUpdate> {
        self.state()
            .history
            .values()
            .filter(|e| e.status == StepStatus::Running)
            .map(|e| StepUpdate {
                run_seq: e.run_seq,
                status: StepStatus::Failed,
                output: None,
                error: Some(why.to_string()),
                compensation_attempts: None,
                wake_at: None,
            })
            .collect()
    }

    /// Ends the workflow `failed` without compensating: its code and history disagree, so
    /// the compensations it would register cannot be trusted either.
    pub(super) async fn fail(&self, why: String) -> Result<Outcome, DbFailure> {
        tracing::error!(workflow_id = %self.fence.workflow_id, error = %why, "workflow failed");
        loop {
            let (expect, previous) = {
                let st = self.state();
                (st.status, st.error.clone())
            };
            let mut w = self.write(expect, WorkflowStatus::Failed);
            w.updates
                .extend(self.unfinished("did not finish: the workflow failed"));
            w.error = Some(
                match previous.filter(|_| expect == WorkflowStatus::Compensating) {
                    Some(p) => format!("{p}; then: {why}"),
                    None => why.clone(),
                },
            );
            w.finish = true;
            match self.writer.write(w).await? {
                // A cancel came in between: fail it from there.
                WriteOutcome::StatusWas(s @ WorkflowStatus::Compensating) if s != expect => {
                    let mut st = self.state();
                    st.status = s;
                    st.error = Some("cancelled".into());
                }
                WriteOutcome::Applied => return Ok(Outcome::Ended),
                _ => return Ok(Outcome::Superseded),
            }
        }
    }

    /// Compensates the completed steps, newest first, then ends `compensated` (or `failed`
    /// when a compensation fails for good). `reason` is why, when the workflow is still
    /// `running` (a cancel has set its own).
    pub(super) async fn compensate(&self, reason: Option<String>) -> Result<Outcome, DbFailure> {
        let to_undo: Vec<HistoryEntry> = {
            let st = self.state();
            st.history
                .values()
                .rev()
                .filter(|e| e.status == StepStatus::Completed && e.has_compensation)
                .cloned()
                .collect()
        };
        if self.state().status == WorkflowStatus::Running {
            let reason = reason.unwrap_or_else(|| "the workflow failed".into());
            let next = if to_undo.is_empty() {
                WorkflowStatus::Compensated
            } else {
                WorkflowStatus::Compensating
            };
            let mut w = self.write(WorkflowStatus::Running, next);
            w.error = Some(reason.clone());
            if to_undo.is_empty() {
                w.updates.extend(self.unfinished("did not finish"));
                w.finish = true;
            }
            match self.writer.write(w).await? {
                WriteOutcome::Applied if to_undo.is_empty() => return Ok(Outcome::Ended),
                WriteOutcome::Applied => {
                    let mut st = self.state();
                    st.status = WorkflowStatus::Compensating;
                    st.error = Some(reason);
                }
                // A cancel came first; it set its own error.
                WriteOutcome::StatusWas(WorkflowStatus::Compensating) => {
                    self.state().status = WorkflowStatus::Compensating;
                }
                _ => return Ok(Outcome::Superseded),
            }
        }
        for e in to_undo {
            let Some((run, policy)) = self
                .state()
                .compensations
                .get(&e.run_seq)
                .map(|c| (c.run.clone(), c.policy))
            else {
                return self
                    .fail(format!(
                        "workflow `{}` no longer matches its history: step `{}` has a \
                         compensation, but this run did not reach it to register it",
                        self.def.name, e.name
                    ))
                    .await;
            };
            if let Some(wake) = e.wake_at.filter(|w| *w > self.now()) {
                return self.park_compensation(&e.name, Vec::new(), wake).await;
            }
            let attempt_no = e.compensation_attempts + 1;
            let label = format!("the compensation of step `{}`", e.name);
            let output = e.output.clone().unwrap_or(Value::Null);
            let result = run_attempt(&label, policy.timeout, || run(output)).await;
            let mut w = self.write(WorkflowStatus::Compensating, WorkflowStatus::Compensating);
            match result {
                Ok(()) => {
                    w.updates.push(StepUpdate {
                        run_seq: e.run_seq,
                        status: StepStatus::Compensated,
                        output: None,
                        error: None,
                        compensation_attempts: Some(attempt_no),
                        wake_at: None,
                    });
                    w.step = Some(e.name.clone());
                    match self.writer.write(w).await? {
                        WriteOutcome::Applied => {}
                        _ => return Ok(Outcome::Superseded),
                    }
                }
                Err(err) if err.is_retryable() && (attempt_no as u32) < policy.max_attempts => {
                    let wake = after(self.now(), policy.backoff.delay(attempt_no as u32));
                    let retry = StepUpdate {
                        run_seq: e.run_seq,
                        status: StepStatus::Completed,
                        output: None,
                        error: Some(format!("compensation attempt {attempt_no} failed: {err}")),
                        compensation_attempts: Some(attempt_no),
                        wake_at: Some(wake),
                    };
                    return self.park_compensation(&e.name, vec![retry], wake).await;
                }
                Err(err) => {
                    let original = self.state().error.clone().unwrap_or_default();
                    w.updates.push(StepUpdate {
                        run_seq: e.run_seq,
                        status: StepStatus::Failed,
                        output: None,
                        error: Some(format!("compensation failed: {err}")),
                        compensation_attempts: Some(attempt_no),
                        wake_at: None,
                    });
                    w.updates.extend(self.unfinished("did not finish"));
                    w.status = WorkflowStatus::Failed;
                    w.step = Some(e.name.clone());
                    w.error = Some(format!(
                        "{original}; then compensating step `{}` failed: {err}",
                        e.name
                    ));
                    w.finish = true;
                    self.writer.write(w).await?;
                    return Ok(Outcome::Ended);
                }
            }
        }
        let mut w = self.write(WorkflowStatus::Compensating, WorkflowStatus::Compensated);
        w.updates.extend(self.unfinished("did not finish"));
        w.finish = true;
        self.writer.write(w).await?;
        Ok(Outcome::Ended)
    }

    /// Waits for a compensation's next attempt without holding a worker slot.
    pub(super) async fn park_compensation(
        &self,
        step: &str,
        updates: Vec<StepUpdate>,
        until: DateTime<Utc>,
    ) -> Result<Outcome, DbFailure> {
        let mut w = self.write(WorkflowStatus::Compensating, WorkflowStatus::Compensating);
        w.updates.extend(updates);
        w.step = Some(step.to_string());
        w.park = self.park_at(until);
        self.writer.write(w).await?;
        Ok(Outcome::Suspended)
    }
}
