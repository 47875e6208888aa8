//! The executor: a slot runs one job at a time in its own task, enforces its timeout and
//! cancellation, and hands how it ended to the writer.

use std::borrow::Cow;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::task::JoinError;
use tracing::Instrument;
use uuid::Uuid;

use super::context::{CancelSignal, StartGate};
use super::{more_jobs, Buffered, Handler, JobContext, Shared, START_DEFER};
use crate::error::{Error, ErrorKind};
use crate::store::{ClaimedJob, Finish, FinishStatus, StartWrite};
use crate::{text, value};

/// One of the node's `concurrency` slots: runs jobs from the buffer until it is empty.
pub(super) async fn slot(shared: Arc<Shared>, mut next: Buffered) {
    loop {
        shared.started.fetch_add(1, Ordering::Relaxed);
        drop(next.claim);
        execute(&shared, next.job, next.cancel, next.span).await;
        let (following, wake, idle) = {
            let mut local = shared.local.lock().unwrap();
            let following = if shared.stop.is_cancelled() {
                None
            } else {
                local.pop_live()
            };
            if following.is_none() {
                local.slots -= 1;
            }
            (
                following,
                local.buffer.len() <= shared.refill_at.load(Ordering::Relaxed),
                local.is_idle(),
            )
        };
        if wake {
            shared.wake.notify_one();
        }
        match following {
            Some(b) => next = b,
            None => {
                if idle {
                    shared.idle.notify_waiters();
                }
                return;
            }
        }
    }
}

/// The end of a job is written (or there was nothing to write): the node no longer holds it.
/// `requeued`: it went back to the queue (`retry`), so the next claim may find it.
fn finished(shared: &Shared, id: Uuid, requeued: bool) {
    let idle = {
        let mut local = shared.local.lock().unwrap();
        local.held.remove(&id);
        local.running -= 1;
        local.is_idle()
    };
    if requeued {
        more_jobs(shared);
    } else {
        // There is room to claim again.
        shared.wake.notify_one();
    }
    if idle {
        shared.idle.notify_waiters();
    }
}

enum End {
    Returned(Result<Result<Value, Error>, JoinError>),
    TimedOut(Duration),
    CancelIgnored,
    Lost,
    Interrupted,
}

async fn execute(
    shared: &Arc<Shared>,
    mut job: ClaimedJob,
    cancel: Arc<CancelSignal>,
    span: tracing::Span,
) {
    let Some(runner) = shared.handlers.get(&job.function_name) else {
        // Claims are filtered by the names this node can run, so this cannot happen.
        unreachable!("claimed a job without a handler: {}", job.function_name);
    };
    let gate = Arc::new(StartGate::new(
        StartWrite {
            id: job.id,
            attempt: job.attempt,
        },
        shared.writer.clone(),
    ));
    let ctx = JobContext::new(
        job.id,
        job.attempt,
        job.owner.clone(),
        shared.store.pool().clone(),
        shared.writer.clone(),
        cancel.clone(),
        gate.clone(),
    );
    // The handler starts without waiting for `running` to be written: the write goes through
    // the same ordered queue as the handler's progress reports, so it lands first anyway,
    // and the job starts a round-trip sooner.
    let (handler, metrics) = (runner.handler, &runner.metrics);
    metrics.started(job.run_at);
    let began = std::time::Instant::now();
    let run = tracing::info_span!(parent: &span, "forge.job.run");
    let mut handle =
        tokio::spawn((handler.run)(ctx, std::mem::take(&mut job.args)).instrument(run));

    let started = async {
        tokio::select! {
            _ = tokio::time::sleep(START_DEFER) => gate.open(),
            _ = gate.opened() => {}
        }
        if let Some(ack) = gate.take_ack() {
            if !ack.await.unwrap_or(false) {
                // Cancelled (or re-claimed) between claim and start.
                cancel.lose();
            }
        }
        std::future::pending::<()>().await
    };
    let timeout = async {
        match handler.timeout {
            Some(d) => tokio::time::sleep(d).await,
            None => std::future::pending().await,
        }
    };
    let cancel_grace = async {
        cancel.wait().await;
        if !cancel.is_lost() {
            tokio::time::sleep(shared.config.cancel_grace).await;
        }
    };
    let end = tokio::select! {
        r = &mut handle => End::Returned(r),
        _ = started => unreachable!(),
        _ = timeout => End::TimedOut(handler.timeout.unwrap_or_default()),
        _ = cancel_grace => if cancel.is_lost() { End::Lost } else { End::CancelIgnored },
        _ = shared.interrupt.cancelled() => End::Interrupted,
    };
    if !matches!(end, End::Returned(_)) {
        handle.abort();
    }
    if cancel.is_lost() {
        finished(shared, job.id, false);
        return;
    }
    let status = match end {
        // Deterministic: another attempt would return the same output, so it is not retried.
        End::Returned(Ok(Ok(output))) => match value::check_json(&output) {
            Ok(()) => FinishStatus::Completed(output),
            Err(e) => FinishStatus::Failed(value::error_text(format!("output {e}"))),
        },
        End::Returned(Ok(Err(e))) => {
            let shown = e.shown();
            if let Cow::Owned(_) = shown {
                tracing::warn!(job = %job.id, name = %job.function_name, error = %e, "job failed on a database error");
            }
            classify(&job, &handler, &cancel, e.kind(), shown.into_owned())
        }
        End::Returned(Err(join)) => {
            let msg = if join.is_panic() {
                format!("job panicked: {}", text::panic_message(&*join.into_panic()))
            } else {
                "job task was aborted".to_string()
            };
            classify(&job, &handler, &cancel, ErrorKind::Retryable, msg)
        }
        End::TimedOut(d) => classify(
            &job,
            &handler,
            &cancel,
            ErrorKind::Retryable,
            format!("job timed out after {}", text::duration(d)),
        ),
        End::CancelIgnored => FinishStatus::Cancelled(format!(
            "cancelled: the job did not stop within {} of the cancel request and was aborted",
            text::duration(shared.config.cancel_grace)
        )),
        End::Interrupted => FinishStatus::Retry {
            error: "interrupted: the worker shut down".into(),
            delay: Duration::ZERO,
        },
        End::Lost => {
            finished(shared, job.id, false);
            return;
        }
    };
    metrics.ended(&status, began.elapsed());
    let id = job.id;
    let requeued = matches!(status, FinishStatus::Retry { .. });
    let after = shared.clone();
    // Open until the end is committed (or fenced off).
    let write =
        tracing::info_span!(parent: &span, "forge.job.finish", job.outcome = status_name(&status));
    shared.writer.finish(
        Finish {
            id,
            attempt: job.attempt,
            status,
            started: gate.close(),
        },
        move |applied| {
            drop(write);
            finished(&after, id, applied && requeued)
        },
    );
}

fn status_name(status: &FinishStatus) -> &'static str {
    match status {
        FinishStatus::Completed(_) => "completed",
        FinishStatus::Retry { .. } => "retry",
        FinishStatus::Failed(_) => "failed",
        FinishStatus::DeadLetter(_) => "dead_letter",
        FinishStatus::Cancelled(_) => "cancelled",
    }
}

fn classify(
    job: &ClaimedJob,
    handler: &Handler,
    cancel: &CancelSignal,
    kind: ErrorKind,
    msg: String,
) -> FinishStatus {
    let msg = value::error_text(msg);
    if kind == ErrorKind::Cancelled || cancel.is_requested() {
        return FinishStatus::Cancelled(msg);
    }
    if kind == ErrorKind::Fatal || job.max_attempts <= 1 {
        return FinishStatus::Failed(msg);
    }
    if job.attempt >= job.max_attempts {
        return FinishStatus::DeadLetter(msg);
    }
    FinishStatus::Retry {
        error: msg,
        delay: handler.backoff.delay(job.attempt as u32),
    }
}

/// Buffers claimed jobs and starts slots for as many as there is room for.
pub(super) fn take(shared: &Arc<Shared>, jobs: Vec<ClaimedJob>) {
    let mut local = shared.local.lock().unwrap();
    for job in jobs {
        let cancel = Arc::new(CancelSignal::default());
        local.held.insert(job.id, cancel.clone());
        local.buffer.push_back(Buffered::new(job, cancel));
    }
    if shared.stop.is_cancelled() {
        // Shutdown releases them.
        return;
    }
    while local.slots + local.reserved < shared.config.concurrency {
        let Some(next) = local.pop_live() else { break };
        local.slots += 1;
        tokio::spawn(slot(shared.clone(), next));
    }
}
