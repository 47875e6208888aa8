//! The node's engine writer: the loads and writes of every workflow running on this node go
//! through one queue, and the writer applies whatever accumulated while it applied the
//! previous batch, in one statement (group commit, as the jobs' writer does). Each workflow
//! waits for its own write's commit before it goes on, so a step's result is durable before
//! the next step runs; under load, hundreds of workflows share each commit and each NOTIFY,
//! where one commit each capped the engine at the database's NOTIFY rate.
//!
//! Loads and writes go out as two statements side by side (they concern different
//! workflows: one being taken over, one running). A workflow has one write in flight at a
//! time (the engine waits for each), but an older run of it whose job was superseded may
//! still write: such a second write waits for the next statement, since one statement may
//! change a row only once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

use crate::store::{self, Fence, LoadedWorkflow, WorkflowWrite, WriteOutcome};

/// Largest number of loads, or of writes, in one statement.
const MAX_BATCH: usize = 1_000;

/// How often a batch that lost a deadlock or a serialization check is tried again before its
/// workflows get the error (their jobs are then retried).
const CONFLICT_RETRIES: u32 = 3;

/// A database error, shared by every workflow of the batch it failed.
pub(crate) type DbFailure = Arc<sqlx::Error>;

type Reply<T> = oneshot::Sender<Result<T, DbFailure>>;

enum Op {
    Load(Fence, Reply<Option<LoadedWorkflow>>),
    Write(Box<WorkflowWrite>, Reply<WriteOutcome>),
}

/// A handle on the node's engine writer.
#[derive(Clone, Debug)]
pub(crate) struct EngineWriter {
    tx: mpsc::UnboundedSender<Op>,
}

impl EngineWriter {
    /// Starts the writer; it runs until every handle is dropped.
    pub(crate) fn spawn(pool: PgPool) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(pool, rx));
        Self { tx }
    }

    /// Takes the workflow over for the job of `fence` (see [`store::load_workflows`]).
    pub(crate) async fn load(&self, fence: Fence) -> Result<Option<LoadedWorkflow>, DbFailure> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Op::Load(fence, tx));
        rx.await.unwrap_or_else(|_| Err(gone()))
    }

    /// Applies one write (see [`store::write_workflows`]) once it is committed.
    pub(crate) async fn write(&self, w: WorkflowWrite) -> Result<WriteOutcome, DbFailure> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Op::Write(Box::new(w), tx));
        rx.await.unwrap_or_else(|_| Err(gone()))
    }
}

/// The writer task stopped: only when the runtime shuts down.
fn gone() -> DbFailure {
    Arc::new(sqlx::Error::PoolClosed)
}

async fn run(pool: PgPool, mut rx: mpsc::UnboundedReceiver<Op>) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut buf, MAX_BATCH).await > 0 {
        let mut loads = Vec::new();
        let mut writes = Vec::new();
        for op in buf.drain(..) {
            match op {
                Op::Load(fence, reply) => loads.push((fence, reply)),
                Op::Write(w, reply) => writes.push((*w, reply)),
            }
        }
        tokio::join!(load(&pool, loads), write_rounds(&pool, writes));
    }
}

async fn load(pool: &PgPool, loads: Vec<(Fence, Reply<Option<LoadedWorkflow>>)>) {
    if loads.is_empty() {
        return;
    }
    let fences: Vec<Fence> = loads.iter().map(|(f, _)| *f).collect();
    match retrying(|| store::load_workflows(pool, &fences)).await {
        Ok(found) => {
            let mut found: std::collections::HashMap<_, _> = found.into_iter().collect();
            for (fence, reply) in loads {
                let _ = reply.send(Ok(found.remove(&fence.workflow_id)));
            }
        }
        Err(e) => {
            let e = Arc::new(e);
            for (_, reply) in loads {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// Writes in statements that each change a workflow once.
async fn write_rounds(pool: &PgPool, mut writes: Vec<(WorkflowWrite, Reply<WriteOutcome>)>) {
    while !writes.is_empty() {
        let mut seen = HashSet::new();
        let (now, later): (Vec<_>, Vec<_>) = writes
            .into_iter()
            .partition(|(w, _)| seen.insert(w.fence.workflow_id));
        write(pool, now).await;
        writes = later;
    }
}

/// Applies `writes` in one statement. A batch whose data the database refuses is split in
/// halves down to the write it refuses, which alone gets the error: one workflow's bad value
/// must not fail the others.
fn write(pool: &PgPool, writes: Vec<(WorkflowWrite, Reply<WriteOutcome>)>) -> BoxFuture<'_, ()> {
    Box::pin(async move {
        if writes.is_empty() {
            return;
        }
        let batch: Vec<WorkflowWrite> = writes.iter().map(|(w, _)| w.clone()).collect();
        metrics::histogram!(crate::metrics::ENGINE_BATCH).record(batch.len() as f64);
        match retrying(|| store::write_workflows(pool, &batch)).await {
            Ok(outcomes) => {
                for ((_, reply), outcome) in writes.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) if writes.len() > 1 && store::refused_data(&e).is_some() => {
                tracing::warn!(error = %e, writes = writes.len(), "the database refused a batch of workflow writes; splitting it");
                let mut first = writes;
                let second = first.split_off(first.len() / 2);
                write(pool, first).await;
                write(pool, second).await;
            }
            Err(e) => {
                let e = Arc::new(e);
                for (_, reply) in writes {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    })
}

/// Runs `op` again when it lost a deadlock or a serialization check (SQLSTATE class 40):
/// nothing was written, and a second try usually goes through.
async fn retrying<T, F, Fut>(mut op: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, sqlx::Error>>,
{
    let mut tries = 0;
    loop {
        match op().await {
            Err(sqlx::Error::Database(d))
                if tries < CONFLICT_RETRIES && d.code().is_some_and(|c| c.starts_with("40")) =>
            {
                tries += 1;
                tracing::debug!(error = %d, tries, "a workflow batch lost a conflict; trying again");
                tokio::time::sleep(Duration::from_millis(5 * u64::from(tries))).await;
            }
            r => return r,
        }
    }
}
