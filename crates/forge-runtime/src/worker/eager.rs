//! Eager start: a node's enqueue starts a job on its own idle worker (see the module docs).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::context::CancelSignal;
use super::executor::slot;
use super::{Buffered, Shared};
use crate::store::ClaimedJob;

/// Starts jobs that this node enqueues on its own idle worker (see the module docs).
#[derive(Clone, Debug)]
pub(crate) struct Eager(pub(super) std::sync::Weak<Shared>);

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
        tokio::spawn(slot(shared, Buffered::new(job, cancel)));
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
