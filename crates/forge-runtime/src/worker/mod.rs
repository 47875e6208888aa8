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

// River's split: `producer` claims, `executor` runs, `leases` renews and rescues; `eager`
// starts a node's own enqueues, `writer` and `held` write what jobs did. Lifecycle is here.
mod context;
mod eager;
mod executor;
mod held;
mod leases;
mod producer;
mod writer;

pub use context::{JobContext, MAX_MESSAGE_CHARS};
pub(crate) use eager::Eager;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use self::context::CancelSignal;
use self::writer::Writer;
use crate::backoff::Backoff;
use crate::error::Error;
use crate::maintenance::{self, RetentionConfig};
use crate::notifier::Notifier;
use crate::store::{ClaimedJob, Finish, ProgressWrite, StartWrite, Store};

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
    /// Deleting old finished jobs and workflows, which every worker node takes part in.
    pub retention: RetentionConfig,
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
            retention: RetentionConfig::default(),
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

/// A write of a job, on its way to the node's writer (or to its held claim).
pub(crate) enum Write {
    Start(StartWrite, oneshot::Sender<bool>),
    Progress(ProgressWrite, oneshot::Sender<()>),
    Finish(Finish, FinishDone),
}

/// Called once a finish is written, with whether it took effect.
pub(crate) type FinishDone = Box<dyn FnOnce(bool) + Send>;

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
struct Runner {
    handler: Handler,
    metrics: crate::metrics::JobMetrics,
}

struct Buffered {
    job: ClaimedJob,
    cancel: Arc<CancelSignal>,
    /// The attempt's span (`forge.job`, see `crate::trace`), and under it `forge.job.claim`,
    /// which ends when the handler starts.
    span: tracing::Span,
    claim: tracing::Span,
}

impl Buffered {
    fn new(job: ClaimedJob, cancel: Arc<CancelSignal>) -> Self {
        let span = crate::trace::job_span(
            job.id,
            &job.function_name,
            job.attempt,
            job.trace_context.as_deref(),
        );
        let claim = tracing::info_span!(parent: &span, "forge.job.claim");
        Self {
            job,
            cancel,
            span,
            claim,
        }
    }
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
    /// Each function's handler with its counters and histograms (see `crate::metrics`): one
    /// lookup per job finds both.
    handlers: HashMap<String, Runner>,
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

/// Jobs may have become runnable: claim again even if the last claim found the queue empty.
fn more_jobs(shared: &Shared) {
    shared.more.store(true, Ordering::SeqCst);
    shared.wake.notify_one();
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
            handlers: handlers
                .into_iter()
                .map(|(name, handler)| {
                    let metrics = crate::metrics::JobMetrics::new(&name);
                    (name, Runner { handler, metrics })
                })
                .collect(),
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
            tokio::spawn(producer::fetch_loop(shared.clone())),
            tokio::spawn(producer::event_loop(shared.clone(), notifier.subscribe())),
            tokio::spawn(leases::heartbeat_loop(shared.clone())),
            tokio::spawn(leases::fence_loop(shared.clone())),
            tokio::spawn(leases::reap_loop(shared.clone())),
            tokio::spawn(maintenance::retention_loop(
                shared.store.clone(),
                shared.config.retention.clone(),
            )),
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
