//! The node's job-state writer. Starts, progress reports and finishes of all jobs running on
//! this node go through one queue; the writer applies whatever accumulated while it wrote the
//! previous batch in a single transaction (group commit). At low load every write goes out on
//! its own within a millisecond or so; under load, batches grow and the number of commits, and
//! so of NOTIFY round-trips, stays small. River's batch completer works the same way.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::held::{HeldJobs, Routed};
use super::Write;
use crate::store::{Finish, ProgressWrite, StartWrite, Store, UpdateBatch};

/// Largest batch written in one transaction.
const MAX_BATCH: usize = 2_000;

/// Unbounded because every write's sender waits for its acknowledgement (except a start,
/// which its job's finish waits behind): what is queued is bounded by the jobs running.
#[derive(Clone, Debug)]
pub(crate) struct Writer {
    tx: mpsc::UnboundedSender<Write>,
    /// Writes of jobs whose held claim is open go to the claim instead.
    held: Arc<HeldJobs>,
}

impl Writer {
    pub(crate) fn spawn(store: Store) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(store, rx));
        Self {
            held: Arc::new(HeldJobs::new(tx.clone())),
            tx,
        }
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
        // A write is never dropped: a finish that is lost would leave the job to the lease
        // reaper and run it again. Keep trying until the database is back.
        let mut delay = Duration::from_millis(50);
        let t0 = std::time::Instant::now();
        let applied = loop {
            match store.apply_updates(&batch).await {
                Ok(applied) => {
                    tracing::debug!(
                        starts = batch.starts.len(),
                        progress = batch.progress.len(),
                        finishes = batch.finishes.len(),
                        ms = t0.elapsed().as_secs_f64() * 1000.0,
                        "job updates written"
                    );
                    break applied;
                }
                Err(e) => {
                    tracing::error!(error = %e, "writing job updates failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        };
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
