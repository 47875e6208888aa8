//! The node's job-state writer. Starts, progress reports and finishes of all jobs running on
//! this node go through one queue; the writer applies whatever accumulated while it wrote the
//! previous batch in a single transaction (group commit). At low load every write goes out on
//! its own within a millisecond or so; under load, batches grow and the number of commits, and
//! so of NOTIFY round-trips, stays small. River's batch completer works the same way.

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{Finish, ProgressWrite, StartWrite, Store, UpdateBatch};

/// Largest batch written in one transaction.
const MAX_BATCH: usize = 2_000;

pub(crate) enum Write {
    Start(StartWrite, oneshot::Sender<bool>),
    Progress(ProgressWrite, oneshot::Sender<()>),
    Finish(Finish, oneshot::Sender<bool>),
}

#[derive(Clone, Debug)]
pub(crate) struct Writer {
    tx: mpsc::Sender<Write>,
}

impl Writer {
    pub(crate) fn spawn(store: Store) -> Self {
        let (tx, rx) = mpsc::channel(MAX_BATCH * 4);
        tokio::spawn(run(store, rx));
        Self { tx }
    }

    /// Records that an attempt's handler started. Resolves to false when the attempt was
    /// fenced off (the job was cancelled or re-claimed in the meantime).
    pub(crate) async fn start(&self, w: StartWrite) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Write::Start(w, tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }

    pub(crate) async fn progress(&self, w: ProgressWrite) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Write::Progress(w, tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Records how an attempt ended. Resolves to false when it was fenced off.
    pub(crate) async fn finish(&self, w: Finish) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Write::Finish(w, tx)).await.is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

async fn run(store: Store, mut rx: mpsc::Receiver<Write>) {
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
        let applied = loop {
            match store.apply_updates(&batch).await {
                Ok(applied) => break applied,
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
        for (id, ack) in finish_acks {
            let _ = ack.send(applied.finishes.contains(&id));
        }
    }
}
