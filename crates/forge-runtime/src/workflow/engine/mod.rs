//! The workflow engine: runs (and re-runs) a workflow body inside a job, replaying its history.
//!
//! Each run of a workflow is a job `workflow:<name>`. The job loads the workflow and its history
//! and calls the body from the top. Every operation the body asks for (a step, a sleep, an
//! event wait) takes the next position in the history:
//!
//! * recorded as finished: its stored result is returned and nothing runs;
//! * not recorded (or interrupted): it runs now and its result is recorded;
//! * recorded under another name or kind: the code no longer matches the history, and the
//!   workflow ends `failed` rather than mixing two versions of it.
//!
//! A sleep, an event wait or a retry backoff *parks* the workflow: one write records the wait
//! and inserts the job that resumes it, then the body is dropped and the job ends. No worker
//! slot is held while a workflow waits.
//!
//! A step's result is recorded together with the engine's next write (the start of the next
//! step, or the end), so a step costs one statement. Nothing durable happens between the two
//! (the body between steps must be deterministic), so a crash in between re-runs the step
//! exactly as a crash during it would.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use super::def::{self, WorkflowDef};
use super::WorkflowContext;
use crate::backoff::Backoff;
use crate::error::Error;
use crate::status::{StepStatus, WorkflowStatus};
use crate::store::{
    Fence, HistoryEntry, Park, StepKind, StepStart, StepUpdate, WorkflowWrite, WriteOutcome,
};
use crate::text::panic_message;
use crate::value;
use crate::worker::JobContext;

mod endings;
mod steps;
mod waits;
mod writer;

use writer::DbFailure;
pub(crate) use writer::EngineWriter;

/// How often a step (and its compensation) is tried, and how long an attempt may take.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) backoff: Backoff,
    pub(crate) timeout: Option<Duration>,
}

impl RetryPolicy {
    pub(crate) const DEFAULT: RetryPolicy = RetryPolicy {
        max_attempts: 3,
        backoff: Backoff::DEFAULT,
        timeout: None,
    };
}

/// Undoes a completed step, given its stored output.
pub(crate) type CompensationFn =
    Arc<dyn Fn(Value) -> BoxFuture<'static, Result<(), Error>> + Send + Sync>;

struct Compensation {
    run: CompensationFn,
    policy: RetryPolicy,
}

/// Why the body stopped before returning.
enum Abort {
    /// Parked: a job will resume it.
    Suspended,
    /// This job no longer runs the workflow.
    Lost,
    /// The workflow is compensating (a cancel, or a replay of a failed run): run the
    /// compensations registered so far.
    Compensate,
    /// It cannot go on: its code does not match its history.
    Broken(String),
    /// The database failed; the job is retried and the workflow replayed.
    Database(DbFailure),
}

impl From<sqlx::Error> for Abort {
    fn from(e: sqlx::Error) -> Self {
        Abort::Database(Arc::new(e))
    }
}

struct State {
    /// By position (`run_seq`).
    history: BTreeMap<i32, HistoryEntry>,
    next_seq: i32,
    /// `Running` or `Compensating`, as last written or read.
    status: WorkflowStatus,
    error: Option<String>,
    /// Step results not written yet; they go out with the next write.
    pending: Vec<StepUpdate>,
    compensations: HashMap<i32, Compensation>,
    abort: Option<Abort>,
}

/// One run of a workflow inside one job attempt.
pub(crate) struct Execution {
    pool: PgPool,
    writer: EngineWriter,
    fence: Fence,
    def: &'static WorkflowDef,
    owner: Option<String>,
    /// The database's clock at the load, and when that was here: time is the database's, so
    /// that timers agree with the `run_at` of the jobs that end them.
    clock: (DateTime<Utc>, Instant),
    state: Mutex<State>,
    /// Held from building a write (it takes the pending step results) until it is applied,
    /// so that the writes of steps the body runs concurrently go out one after the other, in
    /// order, each seeing the rows the previous one wrote.
    writes: tokio::sync::Mutex<()>,
    aborted: Notify,
}

/// What the job handler reports as its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
enum Outcome {
    Ended,
    Suspended,
    Superseded,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct JobArgs {
    workflow_id: Uuid,
}

/// The handler of every `workflow:<name>` job.
pub(crate) fn run_job(job: JobContext, args: Value) -> BoxFuture<'static, Result<Value, Error>> {
    Box::pin(run(job, args))
}

async fn run(job: JobContext, args: Value) -> Result<Value, Error> {
    let JobArgs { workflow_id } = serde_json::from_value(args).map_err(Error::fatal)?;
    let fence = Fence {
        workflow_id,
        job_id: job.job_id(),
        attempt: job.attempt() as i32,
    };
    let pool = job.db().clone();
    let writer = job.engine().clone();
    let outcome = match writer.load(fence).await? {
        None => Outcome::Superseded,
        Some(loaded) => {
            // Claims only take jobs whose handler this node has, so the definition exists.
            let def = def::workflow(&loaded.name).ok_or_else(|| {
                Error::fatal(format!("workflow `{}` is not registered", loaded.name))
            })?;
            let exec = Arc::new(Execution {
                pool,
                writer,
                fence,
                def,
                owner: loaded.owner,
                clock: (loaded.now, Instant::now()),
                state: Mutex::new(State {
                    history: loaded.history.into_iter().map(|e| (e.run_seq, e)).collect(),
                    next_seq: 1,
                    status: loaded.status,
                    error: loaded.error,
                    pending: Vec::new(),
                    compensations: HashMap::new(),
                    abort: None,
                }),
                writes: tokio::sync::Mutex::new(()),
                aborted: Notify::new(),
            });
            exec.drive(loaded.args).await.map_err(Error::from)?
        }
    };
    Ok(json!({ "workflowId": workflow_id, "outcome": outcome }))
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    // Far beyond any real deadline, and still a timestamp PostgreSQL and chrono both hold.
    const CAP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now + chrono::Duration::from_std(d.min(CAP)).expect("capped durations fit")
}

impl Execution {
    pub(crate) fn workflow_id(&self) -> Uuid {
        self.fence.workflow_id
    }

    pub(crate) fn name(&self) -> &'static str {
        self.def.name
    }

    pub(crate) fn owner(&self) -> Option<&str> {
        self.owner.as_deref()
    }

    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn now(&self) -> DateTime<Utc> {
        after(self.clock.0, self.clock.1.elapsed())
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("workflow state lock")
    }

    /// Stops the body: the runner drops it once this is awaited.
    async fn abort<T>(&self, why: Abort) -> T {
        {
            let mut st = self.state();
            if st.abort.is_none() {
                st.abort = Some(why);
            }
        }
        self.aborted.notify_one();
        std::future::pending().await
    }

    async fn drive(self: Arc<Self>, args: Value) -> Result<Outcome, DbFailure> {
        let ctx = WorkflowContext::new(self.clone());
        let body = AssertUnwindSafe((self.def.run)(ctx, args)).catch_unwind();
        let returned = tokio::select! {
            biased;
            _ = self.aborted.notified() => None,
            r = body => Some(r),
        };
        let abort = self.state().abort.take();
        match (abort, returned) {
            (Some(Abort::Suspended), _) => Ok(Outcome::Suspended),
            (Some(Abort::Lost), _) => Ok(Outcome::Superseded),
            (Some(Abort::Compensate), _) => self.compensate(None).await,
            (Some(Abort::Broken(why)), _) => self.fail(why).await,
            (Some(Abort::Database(e)), _) => Err(e),
            (None, Some(Ok(Ok(output)))) => match value::check_json(&output) {
                Ok(()) => self.complete(output).await,
                // As if the body had failed: the same output would come back on a retry.
                Err(e) => {
                    self.compensate(Some(format!("the workflow's output {e}")))
                        .await
                }
            },
            (None, Some(Ok(Err(e)))) => {
                let shown = e.shown();
                if let Cow::Owned(_) = shown {
                    tracing::warn!(error = %e, "workflow failed on a database error");
                }
                self.compensate(Some(shown.into_owned())).await
            }
            (None, Some(Err(panic))) => {
                let why = format!("the workflow panicked: {}", panic_message(&*panic));
                self.compensate(Some(why)).await
            }
            (None, None) => unreachable!("the body is only stopped through `abort`"),
        }
    }

    /// The next position of the history, checked against what is recorded there.
    fn next_op(&self, name: &str, kind: StepKind) -> Result<(i32, Option<HistoryEntry>), Abort> {
        let mut st = self.state();
        let seq = st.next_seq;
        st.next_seq += 1;
        let compensating = st.status == WorkflowStatus::Compensating;
        match st.history.get(&seq) {
            Some(e) if e.name != name || e.kind != kind => Err(Abort::Broken(format!(
                "workflow `{}` no longer matches its history: at position {seq} it asks for {} \
                 `{name}`, but the history has {} `{}` there (was its code changed while it \
                 ran?)",
                self.def.name,
                kind.as_str(),
                e.kind.as_str(),
                e.name
            ))),
            Some(e)
                if compensating
                    && !matches!(
                        e.status,
                        StepStatus::Completed | StepStatus::Compensated | StepStatus::Failed
                    ) =>
            {
                Err(Abort::Compensate)
            }
            Some(e) => Ok((seq, Some(e.clone()))),
            None if compensating => Err(Abort::Compensate),
            None => Ok((seq, None)),
        }
    }

    /// Records an entry in the in-memory history, once written.
    fn remember(&self, entry: HistoryEntry) {
        self.state().history.insert(entry.run_seq, entry);
    }

    fn update_entry(&self, u: &StepUpdate) {
        let mut st = self.state();
        if let Some(e) = st.history.get_mut(&u.run_seq) {
            e.status = u.status;
            if u.output.is_some() {
                e.output = u.output.clone();
            }
            e.error = u.error.clone();
            if let Some(n) = u.compensation_attempts {
                e.compensation_attempts = n;
            }
            e.wake_at = u.wake_at;
        }
    }

    /// A write with the pending step results, expecting `expect`.
    fn write(&self, expect: WorkflowStatus, status: WorkflowStatus) -> WorkflowWrite {
        let updates = std::mem::take(&mut self.state().pending);
        WorkflowWrite {
            fence: self.fence,
            updates,
            expect,
            start: None,
            status,
            step: None,
            waiting_for: None,
            output: None,
            error: None,
            park: None,
            finish: false,
        }
    }

    fn park_at(&self, run_at: DateTime<Utc>) -> Option<Park> {
        Some(Park {
            job_id: Uuid::now_v7(),
            run_at,
        })
    }

    /// Sends a write made while the body runs. Returns only if it applied.
    async fn send(&self, w: WorkflowWrite) {
        match self.writer.write(w).await {
            Ok(WriteOutcome::Applied) => {}
            Ok(WriteOutcome::StatusWas(WorkflowStatus::Compensating)) => {
                self.state().status = WorkflowStatus::Compensating;
                self.abort(Abort::Compensate).await
            }
            Ok(_) => self.abort(Abort::Lost).await,
            Err(e) => self.abort(Abort::Database(e)).await,
        }
    }

    /// Parks the workflow until `until` and stops the body.
    async fn park<T>(
        &self,
        start: Option<StepStart>,
        step: &str,
        status: WorkflowStatus,
        waiting_for: Option<String>,
        until: DateTime<Utc>,
    ) -> T {
        let _writing = self.writes.lock().await;
        let mut w = self.write(WorkflowStatus::Running, status);
        w.start = start;
        w.step = Some(step.to_string());
        w.waiting_for = waiting_for;
        w.park = self.park_at(until);
        self.send(w).await;
        self.abort(Abort::Suspended).await
    }
}
