//! The node's job-state writer. Starts, progress reports and finishes of all jobs running on
//! this node go through one queue; the writer applies whatever accumulated while it wrote the
//! previous batch in a single transaction (group commit). At low load every write goes out on
//! its own within a millisecond or so; under load, batches grow and the number of commits, and
//! so of NOTIFY round-trips, stays small. River's batch completer works the same way.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::held::{HeldJobs, Routed};
use super::Write;
use crate::store::{
    refused_data, Applied, Finish, FinishStatus, ProgressWrite, StartWrite, Store, UpdateBatch,
};
use crate::workflow::EngineWriter;

/// Largest batch written in one transaction.
const MAX_BATCH: usize = 2_000;

/// Unbounded because every write's sender waits for its acknowledgement (except a start,
/// which its job's finish waits behind): what is queued is bounded by the jobs running.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Write>,
    /// Writes of jobs whose held claim is open go to the claim instead.
    held: Arc<HeldJobs>,
    /// The workflow engine's writer, for the workflows this node runs (as jobs).
    engine: EngineWriter,
}

impl Writer {
    pub(crate) fn spawn(store: Store) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let engine = EngineWriter::spawn(store.engine_pool());
        tokio::spawn(run(store, rx));
        Self {
            held: Arc::new(HeldJobs::new(tx.clone())),
            engine,
            tx,
        }
    }

    pub(crate) fn engine(&self) -> &EngineWriter {
        &self.engine
    }

    pub(crate) fn held(&self) -> &HeldJobs {
        &self.held
    }

    /// Queues the record that an attempt's handler started. The receiver gets false when the
    /// attempt was fenced off (the job was cancelled or re-claimed in the meantime).
    pub(crate) fn start(&self, w: StartWrite) -> oneshot::Receiver<bool> {
        let w = match self.held.start(w) {
            Routed::Taken(ack) => return ack,
            Routed::NotHeld(w) => w,
        };
        let (tx, rx) = oneshot::channel();
        // A closed channel drops `tx`, and the receiver reads that as fenced off.
        let _ = self.tx.send(Write::Start(w, tx));
        rx
    }

    pub(crate) async fn progress(&self, w: ProgressWrite) {
        let w = match self.held.progress(w) {
            Routed::Taken(written) => return written.await,
            Routed::NotHeld(w) => w,
        };
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Write::Progress(w, tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Queues how an attempt ended; `done` is called once it is written, with false when it
    /// was fenced off. A slot does not wait for it before taking its next job: finishes of
    /// many jobs then share one commit, where waiting would bound a batch by the concurrency.
    pub(crate) fn finish(&self, w: Finish, done: impl FnOnce(bool) + Send + 'static) {
        let (w, done) = match self.held.finish(w, Box::new(done)) {
            Routed::Taken(()) => return,
            Routed::NotHeld(write) => write,
        };
        if let Err(mpsc::error::SendError(Write::Finish(_, done))) =
            self.tx.send(Write::Finish(w, done))
        {
            done(false);
        }
    }
}

async fn run(store: Store, mut rx: mpsc::UnboundedReceiver<Write>) {
    let mut buf = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut buf, MAX_BATCH).await > 0 {
        let mut batch = UpdateBatch::default();
        let mut start_acks = Vec::new();
        let mut progress_acks = Vec::new();
        let mut finish_acks = Vec::new();
        for w in buf.drain(..) {
            match w {
                Write::Start(s, ack) => {
                    start_acks.push((s.id, ack));
                    batch.starts.push(s);
                }
                Write::Progress(p, ack) => {
                    progress_acks.push(ack);
                    batch.progress.push(p);
                }
                Write::Finish(f, ack) => {
                    finish_acks.push((f.id, ack));
                    batch.finishes.push(f);
                }
            }
        }
        let applied = write(&store, batch).await;
        for (id, ack) in start_acks {
            let _ = ack.send(applied.starts.contains(&id));
        }
        for ack in progress_acks {
            let _ = ack.send(());
        }
        for (id, done) in finish_acks {
            done(applied.finishes.contains(&id));
        }
    }
}

/// Writes `batch`. A write is never dropped for a passing failure: a finish that is lost would
/// leave the job to the lease reaper and run it again, so it is tried until the database is
/// back. A batch whose data the database refuses is split to find the jobs it refuses.
async fn write(store: &Store, batch: UpdateBatch) -> Applied {
    let writes = batch.starts.len() + batch.progress.len() + batch.finishes.len();
    metrics::histogram!(crate::metrics::JOB_WRITER_BATCH).record(writes as f64);
    match write_retrying(store, &batch).await {
        Ok(applied) => applied,
        Err(refused) => isolate(store, batch, refused).await,
    }
}

/// Applies `batch`, retrying until the database is back; `Err` names the SQLSTATE of a
/// refusal of its data, which would come again on every try.
async fn write_retrying(store: &Store, batch: &UpdateBatch) -> Result<Applied, String> {
    let mut delay = Duration::from_millis(50);
    let t0 = std::time::Instant::now();
    loop {
        match store.apply_updates(batch).await {
            Ok(applied) => {
                tracing::debug!(
                    starts = batch.starts.len(),
                    progress = batch.progress.len(),
                    finishes = batch.finishes.len(),
                    ms = t0.elapsed().as_secs_f64() * 1000.0,
                    "job updates written"
                );
                return Ok(applied);
            }
            Err(e) => {
                if let Some(refused) = refused_data(&e) {
                    tracing::warn!(error = %e, "the database refused a batch of job updates");
                    return Err(refused);
                }
                tracing::error!(error = %e, "writing job updates failed; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Writes a refused batch in halves, by job, down to the single jobs the database refuses
/// (bisection: a few refused jobs among `n` cost about `2 log n` statements each). Every other
/// job's writes are made as usual.
fn isolate(store: &Store, batch: UpdateBatch, refused: String) -> BoxFuture<'_, Applied> {
    Box::pin(async move {
        let mut ids: Vec<Uuid> = Vec::new();
        let mut seen = HashSet::new();
        let all = batch.starts.iter().map(|s| s.id);
        let all = all.chain(batch.progress.iter().map(|p| p.id));
        for id in all.chain(batch.finishes.iter().map(|f| f.id)) {
            if seen.insert(id) {
                ids.push(id);
            }
        }
        if ids.len() <= 1 {
            return write_refused(store, batch, refused).await;
        }
        let first: HashSet<Uuid> = ids[..ids.len() / 2].iter().copied().collect();
        let mut halves = [UpdateBatch::default(), UpdateBatch::default()];
        for s in batch.starts {
            halves[usize::from(!first.contains(&s.id))].starts.push(s);
        }
        for p in batch.progress {
            halves[usize::from(!first.contains(&p.id))].progress.push(p);
        }
        for f in batch.finishes {
            halves[usize::from(!first.contains(&f.id))].finishes.push(f);
        }
        let mut applied = Applied::default();
        for half in halves {
            let got = match write_retrying(store, &half).await {
                Ok(got) => got,
                Err(refused) => isolate(store, half, refused).await,
            };
            applied.starts.extend(got.starts);
            applied.finishes.extend(got.finishes);
        }
        applied
    })
}

/// The writes of one job whose data the database refused: its progress is dropped and its
/// end becomes a failure saying so (not retried: the same data would be refused again). The
/// database's own text goes to the log only.
async fn write_refused(store: &Store, mut batch: UpdateBatch, refused: String) -> Applied {
    let job = (batch.finishes.first().map(|f| f.id)).or(batch.progress.first().map(|p| p.id));
    tracing::error!(job_id = ?job, sqlstate = %refused, "the database refused a job's data; failing the job");
    batch.progress.clear();
    for f in &mut batch.finishes {
        f.status = FinishStatus::Failed(format!("the database refused this job's data: {refused}"));
    }
    match write_retrying(store, &batch).await {
        Ok(applied) => applied,
        Err(again) => {
            // Nothing of the job's own data is left in the write; should it still be
            // refused, the job is given up here and its lease runs out.
            tracing::error!(job_id = ?job, sqlstate = %again, "the database refused a job's failure");
            Applied::default()
        }
    }
}
