//! What a workflow body sees: [`WorkflowContext`] and the operations it builds.

use std::future::{Future, IntoFuture};

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::engine::{CompensationFn, Execution, RetryPolicy};
use crate::backoff::Backoff;
use crate::error::{Error, WaitError};

/// The first argument of every `#[forge::workflow]`.
///
/// A workflow body is replayed from the top each time its workflow resumes (after a sleep, an
/// event, a retry backoff, or a crash), so it must be deterministic: everything that touches
/// the world or depends on time happens inside steps, whose results are recorded and returned
/// on replay without running them again. Steps may run concurrently (`tokio::join!`), as long
/// as the body asks for them in the same order on every run.
#[derive(Clone)]
pub struct WorkflowContext {
    exec: Arc<Execution>,
}

impl std::fmt::Debug for WorkflowContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkflowContext")
            .field("workflow_id", &self.workflow_id())
            .field("name", &self.name())
            .finish_non_exhaustive()
    }
}

impl WorkflowContext {
    pub(crate) fn new(exec: Arc<Execution>) -> Self {
        Self { exec }
    }

    pub fn workflow_id(&self) -> Uuid {
        self.exec.workflow_id()
    }

    /// The workflow's registered name.
    pub fn name(&self) -> &'static str {
        self.exec.name()
    }

    /// Who started the workflow (the authenticated user id), if anyone.
    pub fn owner(&self) -> Option<&str> {
        self.exec.owner()
    }

    /// The database pool, for steps.
    pub fn db(&self) -> &PgPool {
        self.exec.pool()
    }

    /// A step named `name` that runs `run`; `.await` it (after setting its options) for its
    /// output:
    ///
    /// ```ignore
    /// let charge: Charge = ctx
    ///     .step("charge_card", || async { payments.charge(order).await })
    ///     .compensate(|charge: Charge| async move { payments.refund(charge.id).await })
    ///     .retries(5)
    ///     .await?;
    /// ```
    ///
    /// Once the step completes, its output is stored, and a replay returns it without running
    /// `run` again. A step that was interrupted (its node died) runs again, so steps must be
    /// idempotent. A step that fails is tried again after a backoff (2 retries by default;
    /// the workflow is parked meanwhile) unless its error is fatal; when it fails for good,
    /// `.await` returns the error.
    pub fn step<T, F, Fut>(&self, name: impl Into<String>, run: F) -> Step<'_, T, F>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
        T: Serialize + DeserializeOwned,
    {
        Step {
            ctx: self,
            name: name.into(),
            run,
            compensation: None,
            policy: RetryPolicy::DEFAULT,
            _output: PhantomData,
        }
    }

    /// Suspends the workflow for `duration`, durably: the workflow is `waiting` (with
    /// `waitingFor` `timer:<end, RFC 3339>`), no worker holds it, and it resumes on any node
    /// once the time has come, restarts included. Shown as a step named `sleep` unless
    /// [named](Sleep::named) otherwise.
    pub fn sleep(&self, duration: Duration) -> Sleep<'_> {
        Sleep {
            ctx: self,
            name: "sleep".into(),
            duration,
        }
    }

    /// Suspends the workflow until an event named `event` is sent to it (see
    /// [`send_event`](super::send_event)) and returns its payload as a `T`; or, after
    /// `timeout`, [`WaitError::TimedOut`]. While it waits the workflow is `waiting` with
    /// `waitingFor` `event:<event>`. An event sent before the wait began is not lost: the wait
    /// takes the oldest one not taken yet. Shown as a step named after the event unless
    /// [named](WaitForEvent::named) otherwise.
    pub fn wait_for_event<T: DeserializeOwned>(
        &self,
        event: impl Into<String>,
        timeout: Duration,
    ) -> WaitForEvent<'_, T> {
        let event = event.into();
        WaitForEvent {
            ctx: self,
            name: event.clone(),
            event,
            timeout,
            _payload: PhantomData,
        }
    }
}

/// A step being set up; see [`WorkflowContext::step`].
#[must_use = "a step does nothing until it is `.await`ed"]
pub struct Step<'a, T, F> {
    ctx: &'a WorkflowContext,
    name: String,
    run: F,
    compensation: Option<CompensationFn>,
    policy: RetryPolicy,
    _output: PhantomData<fn() -> T>,
}

impl<T, F> Step<'_, T, F> {
    /// What undoes the step once it completed, given its output. If the workflow fails later
    /// (or is cancelled), the compensations of its completed steps run, newest first. A
    /// compensation is retried like the step; one that fails for good ends the workflow
    /// `failed`. Compensations should be idempotent too.
    pub fn compensate<C, CFut>(mut self, compensate: C) -> Self
    where
        C: Fn(T) -> CFut + Send + Sync + 'static,
        CFut: Future<Output = Result<(), Error>> + Send + 'static,
        T: DeserializeOwned + 'static,
    {
        let name = self.name.clone();
        self.compensation = Some(Arc::new(move |output| {
            match serde_json::from_value::<T>(output) {
                Ok(output) => Box::pin(compensate(output)),
                Err(e) => {
                    let e = Error::fatal(format!(
                        "the stored output of step `{name}` no longer fits its type: {e}"
                    ));
                    Box::pin(std::future::ready(Err(e)))
                }
            }
        }));
        self
    }

    /// How many times a failed attempt is tried again (default 2). Applies to the
    /// compensation too.
    pub fn retries(mut self, retries: u32) -> Self {
        self.policy.max_attempts = retries.saturating_add(1);
        self
    }

    /// The wait before the first retry (default 1 s); it doubles with each retry, up to 10
    /// minutes, with jitter.
    pub fn backoff(mut self, base: Duration) -> Self {
        self.policy.backoff = Backoff {
            base,
            max: Backoff::DEFAULT.max.max(base),
        };
        self
    }

    /// How long one attempt may run before it counts as failed (default: no limit).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.policy.timeout = Some(timeout);
        self
    }
}

impl<'a, T, F, Fut> IntoFuture for Step<'a, T, F>
where
    F: FnOnce() -> Fut + Send + 'a,
    Fut: Future<Output = Result<T, Error>> + Send + 'a,
    T: Serialize + DeserializeOwned + Send + 'a,
{
    type Output = Result<T, Error>;
    type IntoFuture = BoxFuture<'a, Result<T, Error>>;

    fn into_future(self) -> Self::IntoFuture {
        // Under the attempt's `forge.job.run` span: the step's place in the caller's trace.
        let span = tracing::info_span!(
            "forge.step",
            otel.name = %format_args!("step {}", self.name),
            step = %self.name,
        );
        Box::pin(
            self.ctx
                .exec
                .run_step(self.name, self.run, self.compensation, self.policy)
                .instrument(span),
        )
    }
}

/// A durable sleep being set up; see [`WorkflowContext::sleep`].
#[must_use = "a sleep does nothing until it is `.await`ed"]
pub struct Sleep<'a> {
    ctx: &'a WorkflowContext,
    name: String,
    duration: Duration,
}

impl Sleep<'_> {
    /// The step name the sleep is shown (and declared) as.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

impl<'a> IntoFuture for Sleep<'a> {
    type Output = ();
    type IntoFuture = BoxFuture<'a, ()>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(self.ctx.exec.sleep(self.name, self.duration))
    }
}

/// An event wait being set up; see [`WorkflowContext::wait_for_event`].
#[must_use = "a wait does nothing until it is `.await`ed"]
pub struct WaitForEvent<'a, T> {
    ctx: &'a WorkflowContext,
    name: String,
    event: String,
    timeout: Duration,
    _payload: PhantomData<fn() -> T>,
}

impl<T> WaitForEvent<'_, T> {
    /// The step name the wait is shown (and declared) as.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
}

impl<'a, T> IntoFuture for WaitForEvent<'a, T>
where
    T: DeserializeOwned + Send + 'a,
{
    type Output = Result<T, WaitError>;
    type IntoFuture = BoxFuture<'a, Result<T, WaitError>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            let event = self.event.clone();
            let payload = self
                .ctx
                .exec
                .wait_for_event(self.name, self.event, self.timeout)
                .await?;
            serde_json::from_value(payload).map_err(|e| WaitError::InvalidPayload {
                event,
                message: e.to_string(),
            })
        })
    }
}
