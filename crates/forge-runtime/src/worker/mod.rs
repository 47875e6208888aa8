//! Workers: claim jobs, run them, record how they ended.
//!
//! One [`Worker`] per node runs up to `concurrency` jobs at once. Its fetch loop claims jobs
//! in batches into a small local buffer that the `concurrency` slots take from: the free slots,
//! plus, while jobs are going fast, what the node starts in the next ~50 ms (at most
//! `claim_batch`). A node running long jobs therefore claims only its free slots and leaves the
//! rest to other nodes, while one running short jobs does not wait for a round-trip between
//! jobs. It claims again at once while claims come back full, wakes on `forge_jobs_available`
//! notifications and polls as a fallback. Each handler runs in its own task, so a panic is
//! caught as a failure and never takes the worker down. A heartbeat renews the leases of the
//! jobs the node holds; any node's reaper gives jobs whose lease ran out (their node died) to
//! another attempt. On shutdown, buffered jobs that never started are released (`pending`).
//!
//! The `running` write of a job is deferred by [`START_DEFER`]: a job that ends sooner has its
//! start and its end recorded in one write (and both published, in order), which halves the
//! writes of short jobs.
//!
//! Held claims: while a node runs short jobs fast, it claims by locking jobs in a
//! transaction that it keeps open while they run, instead of writing them `claimed` first.
//! When they have all ended (or one ran [`START_DEFER`] or reported progress, or
//! [`HOLD_LIMIT`] passed) it writes each job once, as far as it got (ended, `running` or
//! `claimed`, with its attempt counted), and commits; the closing statement publishes every
//! status in between, as the trigger does for other writes. A short job then costs one row
//! write from claim to end instead of two, which nearly halves the database's work per job.
//! The price: a node that dies while holding a claim has its jobs rolled back to as they
//! were, attempts included, so a job that kills its node within milliseconds of starting is
//! not counted towards `max_attempts`. A node running long or few jobs claims the usual way
//! (attempt counted at claim).
//!
//! Eager start (as Temporal's eager workflow start and activity dispatch): a node that
//! enqueues a job it can run, while its worker is idle (a free slot, nothing buffered, and its
//! last claim found the queue empty), inserts the job already `claimed` by that worker and
//! runs it as soon as the insert commits. The job skips the round of `forge_jobs_available`
//! notification and claim statement, which is most of the time from enqueue to start on an
//! idle node; the `claimed` status is still published. An idle worker that found nothing to
//! claim takes nothing from other nodes' turn this way.

mod context;
mod held;
mod writer;

pub use context::{JobContext, MAX_MESSAGE_CHARS};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{broadcast, Notify};
use tokio::task::{JoinError, JoinHandle};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::context::{CancelSignal, StartGate};
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

/// How long a job's `running` write waits for the job to end, so that both go out as one
/// write. Only the publication of `running` is delayed: the handler starts at once.
pub const START_DEFER: Duration = Duration::from_millis(5);

/// How much work a node keeps claimed ahead of its slots: what it starts in this long, at
/// its recent pace.
const PREFETCH_WINDOW: Duration = Duration::from_millis(50);

/// Longest a held claim stays open (and its jobs locked: a cancel request waits that long).
pub const HOLD_LIMIT: Duration = Duration::from_millis(100);

/// Held claims are used from this prefetch on (jobs started per `PREFETCH_WINDOW`): a node
/// starting jobs this fast is running short ones.
const HOLD_FROM_PREFETCH: usize = 8;

/// A claimed job waiting for a slot.
struct Buffered {
    job: ClaimedJob,
    cancel: Arc<CancelSignal>,
}

#[derive(Default)]
struct Local {
    /// Claimed, not started yet.
    buffer: VecDeque<Buffered>,
    /// Slot tasks alive (each runs one job at a time).
    slots: usize,
    /// Slots promised to eager starts whose insert is in flight.
    reserved: usize,
    /// Jobs started whose end is not written yet.
    running: usize,
    /// Every job this node holds (buffered or running), for cancel requests and leases.
    held: HashMap<Uuid, Arc<CancelSignal>>,
}

impl Local {
    fn is_idle(&self) -> bool {
        self.slots == 0 && self.running == 0
    }

    /// The next buffered job still owned by this node (a job cancelled while buffered is
    /// dropped here).
    fn pop_live(&mut self) -> Option<Buffered> {
        while let Some(b) = self.buffer.pop_front() {
            if b.cancel.is_lost() {
                self.held.remove(&b.job.id);
                continue;
            }
            self.running += 1;
            return Some(b);
        }
        None
    }
}

struct Shared {
    store: Store,
    writer: Writer,
    worker_id: Uuid,
    config: WorkerConfig,
    handlers: HashMap<String, Handler>,
    names: Vec<String>,
    local: Mutex<Local>,
    /// Jobs started so far (the fetch loop's measure of pace).
    started: AtomicU64,
    /// A slot wakes the fetch loop when the buffer is down to this many jobs.
    refill_at: AtomicUsize,
    /// New jobs may be available, or a slot came free.
    wake: Notify,
    /// Jobs may be runnable that the last claim did not see (a notification of new jobs, a
    /// retry written, jobs recovered). Room freed in the buffer alone does not make a node
    /// that found the queue empty claim again.
    more: AtomicBool,
    /// The last claim found fewer jobs than it asked for: nothing this node could run was
    /// waiting then. Eager starts are only taken while this holds.
    exhausted: AtomicBool,
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
            local: Mutex::new(Local::default()),
            started: AtomicU64::new(0),
            refill_at: AtomicUsize::new(0),
            wake: Notify::new(),
            more: AtomicBool::new(true),
            exhausted: AtomicBool::new(false),
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

    /// A handle through which this node's enqueues can start jobs on this worker at once.
    pub(crate) fn eager(&self) -> Eager {
        Eager(Arc::downgrade(&self.shared))
    }

    /// Cancelled when this worker begins to shut down.
    pub(crate) fn stop_token(&self) -> CancellationToken {
        self.shared.stop.clone()
    }

    /// Jobs running on this node now.
    pub fn running_jobs(&self) -> usize {
        self.shared.local.lock().unwrap().running
    }

    /// Graceful shutdown: stop claiming, give back the claimed jobs that did not start, let
    /// running jobs finish within the shutdown grace, then interrupt the rest (they go back to
    /// the queue as `retry`, to run again at once).
    pub async fn shutdown(mut self) {
        self.shared.stop.cancel();
        // The fetch loop ends after any claim in flight, so nothing is buffered after this.
        let fetch = self.tasks.remove(0);
        let _ = fetch.await;
        release_buffered(&self.shared).await;
        // Operators (and the signal tests) read this line as "nothing new starts here now".
        tracing::info!(
            running = self.running_jobs(),
            grace = ?self.shared.config.shutdown_grace,
            "worker stopped claiming; waiting for running jobs"
        );
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

async fn release_buffered(shared: &Shared) {
    let jobs: Vec<(Uuid, i32)> = {
        let mut local = shared.local.lock().unwrap();
        let drained: Vec<Buffered> = local.buffer.drain(..).collect();
        for b in &drained {
            local.held.remove(&b.job.id);
        }
        drained.iter().map(|b| (b.job.id, b.job.attempt)).collect()
    };
    if jobs.is_empty() {
        return;
    }
    // Jobs of a held claim are written `claimed` when it is closed (at once, on shutdown);
    // before that, a release would find them as they were and change nothing.
    let ids: Vec<Uuid> = jobs.iter().map(|j| j.0).collect();
    shared
        .writer
        .held()
        .wait_closed(&ids, 2 * HOLD_LIMIT + Duration::from_secs(5))
        .await;
    if let Err(e) = shared.store.release_jobs(shared.worker_id, &jobs).await {
        // Their leases run out and the reaper hands them out again.
        tracing::warn!(error = %e, jobs = jobs.len(), "releasing unstarted jobs failed");
    }
}

async fn wait_idle(shared: &Shared, deadline: tokio::time::Instant) -> bool {
    loop {
        let idle = shared.idle.notified();
        if shared.local.lock().unwrap().is_idle() {
            return true;
        }
        if tokio::time::timeout_at(deadline, idle).await.is_err() {
            return shared.local.lock().unwrap().is_idle();
        }
    }
}

/// The node's pace in jobs started per second, smoothed: it follows a rise at once (a burst
/// of short jobs should not wait for round-trips) and a fall gradually.
struct Pace {
    at: Instant,
    started: u64,
    per_sec: f64,
}

impl Pace {
    const SAMPLE: Duration = Duration::from_millis(25);

    fn new() -> Self {
        Self {
            at: Instant::now(),
            started: 0,
            per_sec: 0.0,
        }
    }

    fn update(&mut self, started: u64) -> f64 {
        let elapsed = self.at.elapsed();
        if elapsed >= Self::SAMPLE {
            let now = (started - self.started) as f64 / elapsed.as_secs_f64();
            self.per_sec = if now > self.per_sec {
                now
            } else {
                0.7 * self.per_sec + 0.3 * now
            };
            self.at = Instant::now();
            self.started = started;
        }
        self.per_sec
    }
}

async fn fetch_loop(shared: Arc<Shared>) {
    let mut error_delay = Duration::from_millis(100);
    let mut pace = Pace::new();
    let concurrency = shared.config.concurrency;
    let batch = shared.config.claim_batch.max(1);
    // The last claim found fewer jobs than it asked for.
    let mut exhausted = false;
    let mut polled = false;
    while !shared.stop.is_cancelled() {
        let wake = shared.wake.notified();
        let per_sec = pace.update(shared.started.load(Ordering::Relaxed));
        let prefetch = ((per_sec * PREFETCH_WINDOW.as_secs_f64()) as usize).min(batch);
        shared.refill_at.store(prefetch / 2, Ordering::Relaxed);
        let (buffered, slots, held) = {
            let local = shared.local.lock().unwrap();
            (
                local.buffer.len(),
                local.slots + local.reserved,
                local.held.len() + local.reserved,
            )
        };
        let free = concurrency.saturating_sub(slots);
        // Jobs that ran but whose end is not written yet count too: a node must not claim
        // faster than it records.
        let room = (concurrency + 3 * prefetch).saturating_sub(held);
        let want = (free + prefetch)
            .saturating_sub(buffered)
            .min(room)
            .min(batch);
        let mut sleep_for = shared.config.poll_interval;
        let may_find = !exhausted || polled || shared.more.load(Ordering::SeqCst);
        polled = false;
        if want > 0 && buffered <= prefetch / 2 && may_find {
            // Cleared before the claim: a notification that comes during it sets it again.
            shared.more.store(false, Ordering::SeqCst);
            let claimed = if prefetch >= HOLD_FROM_PREFETCH {
                claim_held(&shared, want).await
            } else {
                shared
                    .store
                    .claim_jobs(
                        shared.worker_id,
                        &shared.config.queues,
                        &shared.names,
                        want,
                        shared.config.lease,
                    )
                    .await
            };
            match claimed {
                Ok(jobs) => {
                    error_delay = Duration::from_millis(100);
                    let got = jobs.len();
                    tracing::debug!(want, got, buffered, slots, "claimed jobs");
                    take(&shared, jobs);
                    exhausted = got < want;
                    shared.exhausted.store(exhausted, Ordering::SeqCst);
                    if !exhausted {
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
            _ = tokio::time::sleep(sleep_for) => polled = true,
            _ = shared.stop.cancelled() => {}
        }
    }
}

/// Claims `want` jobs with a held claim, and closes the claim when its jobs are done.
async fn claim_held(shared: &Arc<Shared>, want: usize) -> Result<Vec<ClaimedJob>, sqlx::Error> {
    let (claim, jobs) = shared
        .store
        .claim_held(&shared.config.queues, &shared.names, want)
        .await?;
    if jobs.is_empty() {
        // Dropping it rolls the empty claim back.
        return Ok(jobs);
    }
    let batch = shared.writer.held().hold(&jobs);
    let after = shared.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = batch.close_requested() => {}
            _ = tokio::time::sleep(HOLD_LIMIT) => {}
            _ = after.stop.cancelled() => {}
        }
        let writes = after.writer.held().seal(&batch);
        let closed = claim
            .close(after.worker_id, after.config.lease, &writes)
            .await;
        if let Err(e) = &closed {
            // Rolled back: the jobs are as before the claim and run again. The attempts
            // that ran them here are fenced off.
            tracing::error!(error = %e, jobs = writes.len(), "closing a held claim failed");
        }
        after.writer.held().closed(&batch, closed.is_ok());
    });
    Ok(jobs)
}

/// Jobs may have become runnable: claim again even if the last claim found the queue empty.
fn more_jobs(shared: &Shared) {
    shared.more.store(true, Ordering::SeqCst);
    shared.wake.notify_one();
}

/// Starts jobs that this node enqueues on its own idle worker (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct Eager(std::sync::Weak<Shared>);

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("worker_id", &self.worker_id)
            .finish_non_exhaustive()
    }
}

impl Eager {
    pub(crate) fn is_alive(&self) -> bool {
        self.0
            .upgrade()
            .is_some_and(|shared| !shared.stop.is_cancelled())
    }

    /// A free slot for a job of `function` on `queue`, if the worker is idle and runs such
    /// jobs. The slot is held until the reservation is started or dropped.
    pub(crate) fn reserve(&self, function: &str, queue: &str) -> Option<Reservation> {
        let shared = self.0.upgrade()?;
        if shared.stop.is_cancelled()
            || !shared.handlers.contains_key(function)
            || !shared.config.queues.iter().any(|q| q == queue)
            || !shared.exhausted.load(Ordering::SeqCst)
            || shared.more.load(Ordering::SeqCst)
        {
            return None;
        }
        {
            let mut local = shared.local.lock().unwrap();
            if !local.buffer.is_empty() || local.slots + local.reserved >= shared.config.concurrency
            {
                return None;
            }
            local.reserved += 1;
        }
        Some(Reservation {
            shared,
            used: false,
        })
    }
}

/// A slot promised to a job being inserted as claimed by this worker.
pub(crate) struct Reservation {
    shared: Arc<Shared>,
    used: bool,
}

impl Reservation {
    pub(crate) fn worker_id(&self) -> Uuid {
        self.shared.worker_id
    }

    pub(crate) fn lease(&self) -> Duration {
        self.shared.config.lease
    }

    /// Runs `job`, now committed as claimed by this worker, in the reserved slot.
    pub(crate) fn start(mut self, job: ClaimedJob) {
        self.used = true;
        let shared = self.shared.clone();
        let cancel = Arc::new(CancelSignal::default());
        let mut local = shared.local.lock().unwrap();
        local.reserved -= 1;
        local.held.insert(job.id, cancel.clone());
        if shared.stop.is_cancelled() {
            // Shutting down: hand it back like the buffered jobs that did not start.
            local.held.remove(&job.id);
            drop(local);
            let (id, attempt) = (job.id, job.attempt);
            tokio::spawn(async move {
                if let Err(e) = shared
                    .store
                    .release_jobs(shared.worker_id, &[(id, attempt)])
                    .await
                {
                    tracing::warn!(error = %e, job_id = %id, "releasing an unstarted job failed");
                }
            });
            return;
        }
        local.slots += 1;
        local.running += 1;
        drop(local);
        tokio::spawn(slot(shared, Buffered { job, cancel }));
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.used {
            self.shared.local.lock().unwrap().reserved -= 1;
            self.shared.wake.notify_one();
        }
    }
}

/// Buffers claimed jobs and starts slots for as many as there is room for.
fn take(shared: &Arc<Shared>, jobs: Vec<ClaimedJob>) {
    let mut local = shared.local.lock().unwrap();
    for job in jobs {
        let cancel = Arc::new(CancelSignal::default());
        local.held.insert(job.id, cancel.clone());
        local.buffer.push_back(Buffered { job, cancel });
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

/// One of the node's `concurrency` slots: runs jobs from the buffer until it is empty.
async fn slot(shared: Arc<Shared>, mut next: Buffered) {
    loop {
        shared.started.fetch_add(1, Ordering::Relaxed);
        execute(&shared, next.job, next.cancel).await;
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

async fn execute(shared: &Arc<Shared>, mut job: ClaimedJob, cancel: Arc<CancelSignal>) {
    let Some(handler) = shared.handlers.get(&job.function_name).copied() else {
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
    let mut handle = tokio::spawn((handler.run)(ctx, std::mem::take(&mut job.args)));

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
        End::Lost => {
            finished(shared, job.id, false);
            return;
        }
    };
    let id = job.id;
    let requeued = matches!(status, FinishStatus::Retry { .. });
    let after = shared.clone();
    shared.writer.finish(
        Finish {
            id,
            attempt: job.attempt,
            status,
            started: gate.close(),
        },
        move |applied| finished(&after, id, applied && requeued),
    );
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
            Ok(Event::JobsAvailable) => more_jobs(&shared),
            Ok(Event::JobUpdates(updates)) => {
                let local = shared.local.lock().unwrap();
                if local.held.is_empty() {
                    continue;
                }
                for u in updates.iter() {
                    if let Some(cancel) = local.held.get(&u.job_id) {
                        match u.status {
                            JobStatus::CancelRequested => cancel.request(),
                            // Cancelled outright: it was still `claimed`, and has not started
                            // as far as the database is concerned.
                            JobStatus::Cancelled => cancel.lose(),
                            _ => {}
                        }
                    }
                }
            }
            Ok(Event::Other { .. }) => {}
            Ok(Event::Reconnected) | Err(broadcast::error::RecvError::Lagged(_)) => {
                // Notifications may have been missed: look for jobs now; the next heartbeat
                // catches missed cancel requests.
                more_jobs(&shared);
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
        // Jobs of an open held claim are locked, not leased: nothing to renew.
        let ids: Vec<Uuid> = {
            let held_claims = shared.writer.held();
            let local = shared.local.lock().unwrap();
            local
                .held
                .keys()
                .filter(|id| !held_claims.contains(id))
                .copied()
                .collect()
        };
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
                let local = shared.local.lock().unwrap();
                for id in ids {
                    let Some(cancel) = local.held.get(&id) else {
                        continue;
                    };
                    match held.get(&id) {
                        None => {
                            tracing::warn!(job_id = %id, "lost the lease of a job");
                            cancel.lose();
                        }
                        Some(JobStatus::CancelRequested) => cancel.request(),
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
                more_jobs(&shared);
            }
            Err(e) => tracing::error!(error = %e, "reaping expired leases failed"),
        }
    }
}
