//! Waits: durable sleeps and event waits, which park the workflow until they are due.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::Value;

use crate::error::WaitError;
use crate::status::{StepStatus, WorkflowStatus};
use crate::store::{self, HistoryEntry, StepKind, StepStart, StepUpdate, WriteOutcome};

use super::{after, Abort, Execution};

pub(super) fn timer(at: DateTime<Utc>) -> String {
    format!("timer:{}", at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

impl Execution {
    /// `ctx.sleep(..)`.
    pub(crate) async fn sleep(&self, name: String, duration: Duration) {
        let (seq, entry) = match self.next_op(&name, StepKind::Sleep) {
            Ok(op) => op,
            Err(a) => return self.abort(a).await,
        };
        match entry {
            Some(e) if e.status != StepStatus::Running => {}
            Some(e) => {
                let wake = e.wake_at.unwrap_or_else(|| self.now());
                if wake > self.now() {
                    return self
                        .park(
                            None,
                            &name,
                            WorkflowStatus::Waiting,
                            Some(timer(wake)),
                            wake,
                        )
                        .await;
                }
                let u = StepUpdate {
                    run_seq: seq,
                    status: StepStatus::Completed,
                    output: None,
                    error: None,
                    compensation_attempts: None,
                    wake_at: None,
                };
                self.update_entry(&u);
                self.state().pending.push(u);
            }
            None => {
                let wake = after(self.now(), duration);
                let start = StepStart {
                    run_seq: seq,
                    name: name.clone(),
                    kind: StepKind::Sleep,
                    status: StepStatus::Running,
                    output: None,
                    error: None,
                    attempts: 1,
                    has_compensation: false,
                    wake_at: Some(wake),
                };
                self.park(
                    Some(start),
                    &name,
                    WorkflowStatus::Waiting,
                    Some(timer(wake)),
                    wake,
                )
                .await
            }
        }
    }

    /// `ctx.wait_for_event(..)`: the payload of the event, or an error when the wait timed
    /// out.
    pub(crate) async fn wait_for_event(
        &self,
        name: String,
        event: String,
        timeout: Duration,
    ) -> Result<Value, WaitError> {
        let timed_out = || WaitError::TimedOut {
            event: event.clone(),
            timeout,
        };
        let (seq, entry) = match self.next_op(&name, StepKind::Event) {
            Ok(op) => op,
            Err(a) => return self.abort(a).await,
        };
        match entry.as_ref().map(|e| e.status) {
            Some(StepStatus::Completed | StepStatus::Compensated) => {
                let e = entry.expect("matched Some");
                return Ok(e.output.unwrap_or(Value::Null));
            }
            Some(StepStatus::Failed | StepStatus::Skipped) => return Err(timed_out()),
            _ => {}
        }
        match self.take_or_wait(seq, &name, &event, timeout, entry).await {
            Ok(Some(payload)) => Ok(payload),
            Ok(None) => Err(timed_out()),
            Err(a) => self.abort(a).await,
        }
    }

    /// Takes the event if it arrived, else times the wait out if its deadline passed, else
    /// parks. Holds the workflow's row lock from before looking for the event until the wait is
    /// recorded, so an event delivered meanwhile either is found or sees the wait and wakes
    /// the workflow.
    pub(super) async fn take_or_wait(
        &self,
        seq: i32,
        name: &str,
        event: &str,
        timeout: Duration,
        entry: Option<HistoryEntry>,
    ) -> Result<Option<Value>, Abort> {
        let _writing = self.writes.lock().await;
        let mut tx = self.pool.begin().await?;
        match store::lock_workflow(&mut tx, self.fence).await? {
            Some(WorkflowStatus::Running) => {}
            Some(WorkflowStatus::Compensating) => {
                self.state().status = WorkflowStatus::Compensating;
                return Err(Abort::Compensate);
            }
            _ => return Err(Abort::Lost),
        }
        let now = self.now();
        let deadline = entry
            .as_ref()
            .and_then(|e| e.wake_at)
            .unwrap_or_else(|| after(now, timeout));
        let taken = store::take_event(&mut tx, self.fence.workflow_id, event, seq).await?;
        let new_entry = |status, output, error, wake_at| HistoryEntry {
            run_seq: seq,
            name: name.to_string(),
            kind: StepKind::Event,
            status,
            output,
            error,
            attempts: 1,
            compensation_attempts: 0,
            has_compensation: false,
            wake_at,
        };
        let (result, status, waiting_for, park, recorded) = match taken {
            Some(payload) => (
                Ok(Some(payload.clone())),
                WorkflowStatus::Running,
                None,
                None,
                new_entry(StepStatus::Completed, Some(payload), None, None),
            ),
            None if entry.is_some() && deadline <= now => {
                let error = format!("timed out after {timeout:?} waiting for event `{event}`");
                (
                    Ok(None),
                    WorkflowStatus::Running,
                    None,
                    None,
                    new_entry(StepStatus::Failed, None, Some(error), None),
                )
            }
            None => (
                Err(Abort::Suspended),
                WorkflowStatus::Waiting,
                Some(format!("event:{event}")),
                self.park_at(deadline),
                new_entry(StepStatus::Running, None, None, Some(deadline)),
            ),
        };
        let mut w = self.write(WorkflowStatus::Running, status);
        if entry.is_some() {
            w.updates.push(StepUpdate {
                run_seq: seq,
                status: recorded.status,
                output: recorded.output.clone(),
                error: recorded.error.clone(),
                compensation_attempts: None,
                wake_at: recorded.wake_at,
            });
        } else {
            w.start = Some(StepStart {
                run_seq: seq,
                name: name.to_string(),
                kind: StepKind::Event,
                status: recorded.status,
                output: recorded.output.clone(),
                error: recorded.error.clone(),
                attempts: 1,
                has_compensation: false,
                wake_at: recorded.wake_at,
            });
        }
        w.step = Some(name.to_string());
        w.waiting_for = waiting_for;
        w.park = park;
        // The row is locked by this transaction with the expected status: the write applies.
        match store::write_workflows(&mut *tx, std::slice::from_ref(&w)).await?[..] {
            [WriteOutcome::Applied] => {}
            _ => return Err(Abort::Lost),
        }
        tx.commit().await?;
        self.remember(recorded);
        result
    }
}
