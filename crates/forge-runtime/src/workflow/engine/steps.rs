//! Steps: run (or replay) a step, with its retries, timeout and compensation.

use std::borrow::Cow;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::error::Error;
use crate::status::{StepStatus, WorkflowStatus};
use crate::store::{HistoryEntry, StepKind, StepStart, StepUpdate};
use crate::{text, value};

use super::{after, Abort, Compensation, CompensationFn, Execution, RetryPolicy};

/// Runs one attempt of a step or a compensation: a panic (in the closure or its future) and
/// running past `timeout` are failures of the attempt, like an error it returns.
pub(super) async fn run_attempt<T, F, Fut>(
    label: &str,
    timeout: Option<Duration>,
    run: F,
) -> Result<T, Error>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let panicked = |p: Box<dyn std::any::Any + Send>| {
        Error::msg(format!("{label} panicked: {}", text::panic_message(&*p)))
    };
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(fut) => AssertUnwindSafe(fut).catch_unwind(),
        Err(p) => return Err(panicked(p)),
    };
    let ended = match timeout {
        Some(d) => match tokio::time::timeout(d, fut).await {
            Ok(r) => r,
            Err(_) => {
                return Err(Error::msg(format!(
                    "{label} timed out after {}",
                    text::duration(d)
                )))
            }
        },
        None => fut.await,
    };
    ended.unwrap_or_else(|p| Err(panicked(p)))
}

impl Execution {
    /// `ctx.step(..)`: replays or runs one step.
    pub(crate) async fn run_step<T, F, Fut>(
        &self,
        name: String,
        run: F,
        compensation: Option<CompensationFn>,
        policy: RetryPolicy,
    ) -> Result<T, Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
        T: Serialize + DeserializeOwned,
    {
        let (seq, entry) = match self.next_op(&name, StepKind::Step) {
            Ok(op) => op,
            Err(a) => return self.abort(a).await,
        };
        let register = || {
            if let Some(run) = &compensation {
                let c = Compensation {
                    run: run.clone(),
                    policy,
                };
                self.state().compensations.insert(seq, c);
            }
        };
        let attempt = match &entry {
            None => 1,
            Some(e) => match e.status {
                StepStatus::Completed | StepStatus::Compensated => {
                    register();
                    let output = e.output.clone().unwrap_or(Value::Null);
                    return match serde_json::from_value(output) {
                        Ok(v) => Ok(v),
                        Err(err) => {
                            self.abort(Abort::Broken(format!(
                                "the stored output of step `{name}` no longer fits its type: {err}"
                            )))
                            .await
                        }
                    };
                }
                StepStatus::Failed => {
                    return Err(Error::fatal(e.error.clone().unwrap_or_default()));
                }
                StepStatus::Pending | StepStatus::Skipped | StepStatus::Running => {
                    if let Some(wake) = e.wake_at.filter(|w| *w > self.now()) {
                        // Woken before its retry is due (the job ran early): wait again.
                        return self
                            .park(None, &name, WorkflowStatus::Running, None, wake)
                            .await;
                    }
                    if e.attempts as u32 >= policy.max_attempts {
                        let error = format!(
                            "gave up after {} attempts; the last one did not finish{}",
                            e.attempts,
                            e.error
                                .as_deref()
                                .map(|er| format!(" (before it: {er})"))
                                .unwrap_or_default()
                        );
                        self.fail_step(seq, error.clone());
                        return Err(Error::fatal(error));
                    }
                    e.attempts + 1
                }
            },
        };
        let start = StepStart {
            run_seq: seq,
            name: name.clone(),
            kind: StepKind::Step,
            status: StepStatus::Running,
            output: None,
            error: None,
            attempts: attempt,
            has_compensation: compensation.is_some(),
            wake_at: None,
        };
        let recorded = HistoryEntry {
            run_seq: seq,
            name: name.clone(),
            kind: StepKind::Step,
            status: StepStatus::Running,
            output: None,
            error: entry.as_ref().and_then(|e| e.error.clone()),
            attempts: attempt,
            compensation_attempts: 0,
            has_compensation: compensation.is_some(),
            wake_at: None,
        };
        {
            let _writing = self.writes.lock().await;
            let mut w = self.write(WorkflowStatus::Running, WorkflowStatus::Running);
            w.start = Some(start);
            w.step = Some(name.clone());
            self.send(w).await;
        }
        self.remember(recorded);

        let result = run_attempt(&format!("step `{name}`"), policy.timeout, run).await;
        let err = match result {
            Ok(v) => match serde_json::to_value(&v).map(|o| {
                let storable = value::check_json(&o);
                (o, storable)
            }) {
                // Deterministic, like an output that is not JSON: not retried.
                Ok((_, Err(e))) => Error::fatal(format!("the output of step `{name}` {e}")),
                Ok((output, Ok(()))) => {
                    register();
                    let u = StepUpdate {
                        run_seq: seq,
                        status: StepStatus::Completed,
                        output: Some(output),
                        error: None,
                        compensation_attempts: None,
                        wake_at: None,
                    };
                    self.update_entry(&u);
                    self.state().pending.push(u);
                    return Ok(v);
                }
                Err(e) => Error::fatal(format!("the output of step `{name}` is not JSON: {e}")),
            },
            Err(e) => e,
        };
        let shown = err.shown();
        if let Cow::Owned(_) = shown {
            tracing::warn!(step = %name, error = %err, "a step failed on a database error");
        }
        if err.is_retryable() && (attempt as u32) < policy.max_attempts {
            let wake = after(self.now(), policy.backoff.delay(attempt as u32));
            let u = StepUpdate {
                run_seq: seq,
                status: StepStatus::Running,
                output: None,
                error: Some(format!("attempt {attempt} failed: {shown}")),
                compensation_attempts: None,
                wake_at: Some(wake),
            };
            self.update_entry(&u);
            self.state().pending.push(u);
            return self
                .park(None, &name, WorkflowStatus::Running, None, wake)
                .await;
        }
        self.fail_step(seq, shown.into_owned());
        Err(err)
    }

    pub(super) fn fail_step(&self, seq: i32, error: String) {
        let u = StepUpdate {
            run_seq: seq,
            status: StepStatus::Failed,
            output: None,
            error: Some(error),
            compensation_attempts: None,
            wake_at: None,
        };
        self.update_entry(&u);
        self.state().pending.push(u);
    }
}
