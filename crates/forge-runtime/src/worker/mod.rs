//! Workers: claim jobs, run them, record how they ended.
//!
//! One [`Worker`] per node runs up to `concurrency` jobs at once. Its fetch loop claims only
//! as many jobs as it has free slots (so nothing sits claimed but unstarted), wakes on
//! `forge_jobs_available` notifications and polls as a fallback. Each job runs in its own task,
//! so a panic is caught as a failure and never takes the worker down. A heartbeat renews the
//! leases of running jobs; any node's reaper gives jobs whose lease ran out (their node died)
//! to another attempt.

mod context;
mod writer;

pub use context::{JobContext, MAX_MESSAGE_CHARS};

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{broadcast, Notify};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::context::CancelSignal;
use self::writer::Writer;
use crate::error::{Error, ErrorKind};
use crate::notifier::{Event, Notifier};
use crate::registry::{self, Backoff};
use crate::status::JobStatus;
use crate::store::{ClaimedJob, Finish, FinishStatus, StartWrite, Store};

/// How a worker node runs jobs.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Jobs run at once on this node.
    pub concurrency: usize,
    /// Queues this node takes jobs from.
    pub queues: Vec<String>,
    /// Most jobs claimed in one statement.
    pub claim_batch: usize,
    /// How often to look for jobs when no notification came (new jobs notify; this catches
    /// jobs scheduled for later and lost notifications).
    pub poll_interval: Duration,
    /// How long a claim holds a job without a heartbeat.
    pub lease: Duration,
    pub heartbeat_interval: Duration,
    /// How often this node looks for jobs whose lease ran out.
    pub reap_interval: Duration,
    /// How long a handler may ignore a cancel request before it is aborted.
    pub cancel_grace: Duration,
    /// How long shutdown waits for running jobs before interrupting them.
    pub shutdown_grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            queues: vec!["default".into()],
            claim_batch: 500,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(10),
            reap_interval: Duration::from_secs(5),
            cancel_grace: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// What runs one kind of job. Built from the `#[forge::job]` registry; the workflow engine
/// adds its own.
#[derive(Clone, Copy)]
pub struct Handler {
    pub run: fn(JobContext, Value) -> BoxFuture<'static, Result<Value, Error>>,
    pub timeout: Option<Duration>,
    pub backoff: Backoff,
}

/// Handlers for every registered `#[forge::job]`.
pub fn registered_handlers() -> HashMap<String, Handler> {
    registry::jobs()
        .map(|def| {
            let handler = Handler {
                run: def.run,
                timeout: def.options.timeout,
                backoff: def.options.backoff,
            };
            (def.name.to_string(), handler)
        })
        .collect()
}

struct Running {
    cancel: Arc<CancelSignal>,
}

struct Shared {
    store: Store,
    writer: Writer,
    worker_id: Uuid,
    config: WorkerConfig,
    handlers: HashMap<String, Handler>,
    names: Vec<String>,
    running: Mutex<HashMap<Uuid, Running>>,
    /// New jobs may be available, or a slot came free.
    wake: Notify,
    /// Stop claiming.
    stop: CancellationToken,
    /// Interrupt the jobs still running (shutdown grace is over).
    interrupt: CancellationToken,
    /// The last running job finished.
    idle: Notify,
}

/// A running worker node.
pub struct Worker {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Worker {
    /// Starts workers for `handlers` on this node.
    pub fn start(
        store: Store,
        notifier: &Notifier,
        config: WorkerConfig,
        handlers: HashMap<String, Handler>,
    ) -> Worker {
        let mut names: Vec<String> = handlers.keys().cloned().collect();
        names.sort();
        let shared = Arc::new(Shared {
            writer: Writer::spawn(store.clone()),
            store,
            worker_id: Uuid::new_v4(),
            config,
            handlers,
            names,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            stop: CancellationToken::new(),
            interrupt: CancellationToken::new(),
            idle: Notify::new(),
        });
        let tasks = vec![
            tokio::spawn(fetch_loop(shared.clone())),
            tokio::spawn(event_loop(shared.clone(), notifier.subscribe())),
            tokio::spawn(heartbeat_loop(shared.clone())),
            tokio::spawn(reap_loop(shared.clone())),
        ];
        Worker { shared, tasks }
    }

    pub fn worker_id(&self) -> Uuid {
        self.shared.worker_id
    }

    /// Jobs running on this node now.
    pub fn running_jobs(&self) -> usize {
        self.shared.running.lock().unwrap().len()
    }

    /// Graceful shutdown: stop claiming, let running jobs finish within the shutdown grace,
    /// then interrupt the rest (they go back to the queue as `retry`, to run again at once).
    pub async fn shutdown(self) {
        self.shared.stop.cancel();
        let deadline = tokio::time::Instant::now() + self.shared.config.shutdown_grace;
        if !wait_idle(&self.shared, deadline).await {
            tracing::warn!(
                running = self.running_jobs(),
                "shutdown grace period over; interrupting running jobs"
            );
            self.shared.interrupt.cancel();
            wait_idle(
                &self.shared,
                tokio::time::Instant::now() + Duration::from_secs(10),
            )
            .await;
        }
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn wait_idle(shared: &Shared, deadline: tokio::time::Instant) -> bool {
    loop {
        let idle = shared.idle.notified();
        if shared.running.lock().unwrap().is_empty() {
            return true;
        }
        if tokio::time::timeout_at(deadline, idle).await.is_err() {
            return shared.running.lock().unwrap().is_empty();
        }
    }
}

async fn fetch_loop(shared: Arc<Shared>) {
    let mut error_delay = Duration::from_millis(100);
    while !shared.stop.is_cancelled() {
        let wake = shared.wake.notified();
        let free = shared
            .config
            .concurrency
            .saturating_sub(shared.running.lock().unwrap().len());
        let mut sleep_for = shared.config.poll_interval;
        if free > 0 {
            let want = free.min(shared.config.claim_batch);
            match shared
                .store
                .claim_jobs(
                    shared.worker_id,
                    &shared.config.queues,
                    &shared.names,
                    want,
                    shared.config.lease,
                )
                .await
            {
                Ok(jobs) => {
                    error_delay = Duration::from_millis(100);
                    let got = jobs.len();
                    for job in jobs {
                        spawn_job(&shared, job);
                    }
                    if got == want {
                        continue;
                    }
                    if let Ok(Some(next)) = shared.store.next_run_at(&shared.config.queues).await {
                        let until = (next - chrono::Utc::now()).to_std().unwrap_or_default();
                        sleep_for = sleep_for.min(until.max(Duration::from_millis(1)));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "claiming jobs failed");
                    sleep_for = error_delay;
                    error_delay = (error_delay * 2).min(Duration::from_secs(5));
                }
            }
        }
        tokio::select! {
            _ = wake => {}
            _ = tokio::time::sleep(sleep_for) => {}
            _ = shared.stop.cancelled() => {}
        }
    }
}

fn spawn_job(shared: &Arc<Shared>, job: ClaimedJob) {
    let cancel = Arc::new(CancelSignal::default());
    shared.running.lock().unwrap().insert(
        job.id,
        Running {
            cancel: cancel.clone(),
        },
    );
    let shared = shared.clone();
    tokio::spawn(async move {
        let id = job.id;
        execute(&shared, job, cancel).await;
        let now_idle = {
            let mut running = shared.running.lock().unwrap();
            running.remove(&id);
            running.is_empty()
        };
        shared.wake.notify_one();
        if now_idle {
            shared.idle.notify_waiters();
        }
    });
}

enum End {
    Returned(Result<Result<Value, Error>, JoinError>),
    TimedOut(Duration),
    CancelIgnored,
    Lost,
    Interrupted,
}

async fn execute(shared: &Shared, mut job: ClaimedJob, cancel: Arc<CancelSignal>) {
    let Some(handler) = shared.handlers.get(&job.function_name).copied() else {
        // Claims are filtered by the names this node can run, so this cannot happen.
        unreachable!("claimed a job without a handler: {}", job.function_name);
    };
    let ctx = JobContext::new(
        job.id,
        job.attempt,
        job.owner.clone(),
        shared.store.pool().clone(),
        shared.writer.clone(),
        cancel.clone(),
    );
    // The handler starts without waiting for `running` to be written: the write goes through
    // the same ordered queue as the handler's progress reports, so it lands first anyway,
    // and the job starts a round-trip sooner.
    let writer = shared.writer.clone();
    let start = writer.start(StartWrite {
        id: job.id,
        attempt: job.attempt,
    });
    let mut handle = tokio::spawn((handler.run)(ctx, std::mem::take(&mut job.args)));

    let started = async {
        if !start.await {
            // Cancelled (or re-claimed) between claim and start.
            cancel.lose();
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
        return;
    }
    let status = match end {
        End::Returned(Ok(Ok(output))) => FinishStatus::Completed(output),
        End::Returned(Ok(Err(e))) => classify(&job, &handler, &cancel, e.kind(), e.to_string()),
        End::Returned(Err(join)) => {
            let msg = if join.is_panic() {
                format!("job panicked: {}", panic_message(join.into_panic()))
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
            format!("job timed out after {}", humanize(d)),
        ),
        End::CancelIgnored => FinishStatus::Cancelled(format!(
            "cancelled: the job did not stop within {} of the cancel request and was aborted",
            humanize(shared.config.cancel_grace)
        )),
        End::Interrupted => FinishStatus::Retry {
            error: "interrupted: the worker shut down".into(),
            delay: Duration::ZERO,
        },
        End::Lost => return,
    };
    shared
        .writer
        .finish(Finish {
            id: job.id,
            attempt: job.attempt,
            status,
        })
        .await;
}

fn classify(
    job: &ClaimedJob,
    handler: &Handler,
    cancel: &CancelSignal,
    kind: ErrorKind,
    msg: String,
) -> FinishStatus {
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

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s.to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "(non-string panic payload)".into()
    }
}

fn humanize(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

/// Wakes the fetch loop on new jobs; flags running jobs whose cancel was requested.
async fn event_loop(shared: Arc<Shared>, mut events: broadcast::Receiver<Event>) {
    loop {
        match events.recv().await {
            Ok(Event::JobsAvailable) => shared.wake.notify_one(),
            Ok(Event::JobUpdates(updates)) => {
                let running = shared.running.lock().unwrap();
                if running.is_empty() {
                    continue;
                }
                for u in updates.iter() {
                    if let Some(r) = running.get(&u.job_id) {
                        match u.status {
                            JobStatus::CancelRequested => r.cancel.request(),
                            // Cancelled outright: it was still `claimed`, and has not started
                            // as far as the database is concerned.
                            JobStatus::Cancelled => r.cancel.lose(),
                            _ => {}
                        }
                    }
                }
            }
            Ok(Event::Other { .. }) => {}
            Ok(Event::Reconnected) | Err(broadcast::error::RecvError::Lagged(_)) => {
                // Notifications may have been missed: look for jobs now; the next heartbeat
                // catches missed cancel requests.
                shared.wake.notify_one();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

async fn heartbeat_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.heartbeat_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let ids: Vec<Uuid> = shared.running.lock().unwrap().keys().copied().collect();
        if ids.is_empty() {
            continue;
        }
        match shared
            .store
            .renew_leases(shared.worker_id, &ids, shared.config.lease)
            .await
        {
            Ok(held) => {
                let held: HashMap<Uuid, JobStatus> = held.into_iter().collect();
                let running = shared.running.lock().unwrap();
                for id in ids {
                    let Some(r) = running.get(&id) else { continue };
                    match held.get(&id) {
                        None => {
                            tracing::warn!(job_id = %id, "lost the lease of a running job");
                            r.cancel.lose();
                        }
                        Some(JobStatus::CancelRequested) => r.cancel.request(),
                        Some(_) => {}
                    }
                }
            }
            Err(e) => tracing::error!(error = %e, "renewing leases failed"),
        }
    }
}

async fn reap_loop(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(shared.config.reap_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match shared.store.reap_expired_leases().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::warn!(jobs = n, "recovered jobs of a worker that stopped");
                shared.wake.notify_one();
            }
            Err(e) => tracing::error!(error = %e, "reaping expired leases failed"),
        }
    }
}
