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

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use super::def::{self, WorkflowDef};
use super::WorkflowContext;
use crate::error::{Error, WaitError};
use crate::registry::Backoff;
use crate::status::{StepStatus, WorkflowStatus};
use crate::store::{
    self, Fence, HistoryEntry, Park, StepKind, StepStart, StepUpdate, WorkflowWrite, WriteOutcome,
};
use crate::worker::JobContext;

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
    Database(sqlx::Error),
}

impl From<sqlx::Error> for Abort {
    fn from(e: sqlx::Error) -> Self {
        Abort::Database(e)
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
    let outcome =
        match store::load_workflow(&pool, workflow_id, fence.job_id, fence.attempt).await? {
            None => Outcome::Superseded,
            Some(loaded) => {
                // Claims only take jobs whose handler this node has, so the definition exists.
                let def = def::workflow(&loaded.name).ok_or_else(|| {
                    Error::fatal(format!("workflow `{}` is not registered", loaded.name))
                })?;
                let exec = Arc::new(Execution {
                    pool,
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

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".into()
    }
}

fn timer(at: DateTime<Utc>) -> String {
    format!("timer:{}", at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn after(now: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    // Far beyond any real deadline, and still a timestamp PostgreSQL and chrono both hold.
    const CAP: Duration = Duration::from_secs(100 * 365 * 24 * 3600);
    now + chrono::Duration::from_std(d.min(CAP)).expect("capped durations fit")
}

/// Runs one attempt of a step or a compensation: a panic (in the closure or its future) and
/// running past `timeout` are failures of the attempt, like an error it returns.
async fn run_attempt<T, F, Fut>(label: &str, timeout: Option<Duration>, run: F) -> Result<T, Error>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    let panicked = |p| Error::msg(format!("{label} panicked: {}", panic_message(p)));
    let fut = match std::panic::catch_unwind(AssertUnwindSafe(run)) {
        Ok(fut) => AssertUnwindSafe(fut).catch_unwind(),
        Err(p) => return Err(panicked(p)),
    };
    let ended = match timeout {
        Some(d) => match tokio::time::timeout(d, fut).await {
            Ok(r) => r,
            Err(_) => return Err(Error::msg(format!("{label} timed out after {d:?}"))),
        },
        None => fut.await,
    };
    ended.unwrap_or_else(|p| Err(panicked(p)))
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

    async fn drive(self: Arc<Self>, args: Value) -> Result<Outcome, sqlx::Error> {
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
            (None, Some(Ok(Ok(output)))) => self.complete(output).await,
            (None, Some(Ok(Err(e)))) => self.compensate(Some(e.to_string())).await,
            (None, Some(Err(panic))) => {
                let why = format!("the workflow panicked: {}", panic_message(panic));
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
        match store::write_workflow(&self.pool, &w).await {
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
            Ok(v) => match serde_json::to_value(&v) {
                Ok(output) => {
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
        if err.is_retryable() && (attempt as u32) < policy.max_attempts {
            let wake = after(self.now(), policy.backoff.delay(attempt as u32));
            let u = StepUpdate {
                run_seq: seq,
                status: StepStatus::Running,
                output: None,
                error: Some(format!("attempt {attempt} failed: {err}")),
                compensation_attempts: None,
                wake_at: Some(wake),
            };
            self.update_entry(&u);
            self.state().pending.push(u);
            return self
                .park(None, &name, WorkflowStatus::Running, None, wake)
                .await;
        }
        self.fail_step(seq, err.to_string());
        Err(err)
    }

    fn fail_step(&self, seq: i32, error: String) {
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
    async fn take_or_wait(
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
        match store::write_workflow(&mut *tx, &w).await? {
            WriteOutcome::Applied => {}
            _ => return Err(Abort::Lost),
        }
        tx.commit().await?;
        self.remember(recorded);
        result
    }

    /// The body returned `Ok`.
    async fn complete(&self, output: Value) -> Result<Outcome, sqlx::Error> {
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
        match store::write_workflow(&self.pool, &w).await? {
            WriteOutcome::Applied => Ok(Outcome::Ended),
            WriteOutcome::StatusWas(WorkflowStatus::Compensating) => {
                self.state().status = WorkflowStatus::Compensating;
                self.compensate(None).await
            }
            _ => Ok(Outcome::Superseded),
        }
    }

    /// Steps that were still running when the workflow ended: they did not finish.
    fn unfinished(&self, why: &str) -> Vec<StepUpdate> {
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
    async fn fail(&self, why: String) -> Result<Outcome, sqlx::Error> {
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
            match store::write_workflow(&self.pool, &w).await? {
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
    async fn compensate(&self, reason: Option<String>) -> Result<Outcome, sqlx::Error> {
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
            match store::write_workflow(&self.pool, &w).await? {
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
                    match store::write_workflow(&self.pool, &w).await? {
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
                    store::write_workflow(&self.pool, &w).await?;
                    return Ok(Outcome::Ended);
                }
            }
        }
        let mut w = self.write(WorkflowStatus::Compensating, WorkflowStatus::Compensated);
        w.updates.extend(self.unfinished("did not finish"));
        w.finish = true;
        store::write_workflow(&self.pool, &w).await?;
        Ok(Outcome::Ended)
    }

    /// Waits for a compensation's next attempt without holding a worker slot.
    async fn park_compensation(
        &self,
        step: &str,
        updates: Vec<StepUpdate>,
        until: DateTime<Utc>,
    ) -> Result<Outcome, sqlx::Error> {
        let mut w = self.write(WorkflowStatus::Compensating, WorkflowStatus::Compensating);
        w.updates.extend(updates);
        w.step = Some(step.to_string());
        w.park = self.park_at(until);
        store::write_workflow(&self.pool, &w).await?;
        Ok(Outcome::Suspended)
    }
}
