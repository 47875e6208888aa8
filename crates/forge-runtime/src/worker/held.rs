//! Held claims (see the worker module docs): jobs locked by an open transaction, whose writes
//! are gathered here and made in one row write each when the claim is closed.
//!
//! A claim is sealed when it starts closing: what its jobs reached then is written. Writes
//! that come after the seal wait here, in order, until the claim's commit, and then go to the
//! writer (they would otherwise stall it on the rows' locks). Its jobs stay known here until
//! the commit, so that the heartbeat does not take them for lost meanwhile.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot, Notify};
use uuid::Uuid;

use super::{FinishDone, Write};
use crate::store::{ClaimedJob, Finish, HeldEnd, HeldWrite, ProgressWrite, StartWrite};

/// The jobs of this node's held claims not committed yet, by id.
pub(crate) struct HeldJobs {
    jobs: Mutex<HashMap<Uuid, Arc<Batch>>>,
    writer: mpsc::UnboundedSender<Write>,
    /// A claim was closed.
    any_closed: Notify,
}

impl std::fmt::Debug for HeldJobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldJobs")
            .field("jobs", &self.jobs.lock().unwrap().len())
            .finish()
    }
}

/// One held claim.
#[derive(Default)]
pub(crate) struct Batch {
    state: Mutex<State>,
    /// Close now: every job ended, or one needs its start or progress written.
    close: Notify,
}

#[derive(Default)]
struct State {
    sealed: bool,
    jobs: HashMap<Uuid, Entry>,
    unfinished: usize,
    /// Told whether the claim was committed, once it was closed.
    waiters: Vec<oneshot::Sender<bool>>,
    finish_done: Vec<FinishDone>,
    /// Writes that came after the seal, for the writer once the claim is committed.
    after: Vec<Write>,
}

struct Entry {
    attempt: i32,
    started: bool,
    progress: Option<(f64, Option<String>)>,
    finish: Option<Finish>,
}

/// Resolves once a write is made (or fenced off).
pub(crate) type Written = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// What became of a write of a job that may be held.
pub(crate) enum Routed<W, A> {
    /// The job is not held: the caller writes it the usual way.
    NotHeld(W),
    /// Taken care of; `A` resolves once it is written.
    Taken(A),
}

impl HeldJobs {
    pub(crate) fn new(writer: mpsc::UnboundedSender<Write>) -> Self {
        Self {
            jobs: Mutex::default(),
            writer,
            any_closed: Notify::new(),
        }
    }

    /// Holds `jobs`, just claimed by one held claim, until [`closed`](Self::closed).
    pub(crate) fn hold(&self, jobs: &[ClaimedJob]) -> Arc<Batch> {
        let batch = Arc::new(Batch::default());
        {
            let mut state = batch.state.lock().unwrap();
            for j in jobs {
                let entry = Entry {
                    attempt: j.attempt,
                    started: false,
                    progress: None,
                    finish: None,
                };
                state.jobs.insert(j.id, entry);
            }
            state.unfinished = jobs.len();
        }
        let mut map = self.jobs.lock().unwrap();
        for j in jobs {
            map.insert(j.id, batch.clone());
        }
        batch
    }

    pub(crate) fn contains(&self, id: &Uuid) -> bool {
        self.jobs.lock().unwrap().contains_key(id)
    }

    /// Waits until none of `ids` is held any more (their claims were closed), or `limit`.
    /// A write that expects a held job's committed state (releasing it, say) must wait: until
    /// then the job is stored as before its claim.
    pub(crate) async fn wait_closed(&self, ids: &[Uuid], limit: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let closed = self.any_closed.notified();
            if !ids.iter().any(|id| self.contains(id)) {
                return;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return;
            }
        }
    }

    fn batch(&self, id: &Uuid) -> Option<Arc<Batch>> {
        self.jobs.lock().unwrap().get(id).cloned()
    }

    /// A held job started: its claim is closed at once, so that `running` is published
    /// without waiting for the other jobs.
    pub(crate) fn start(&self, w: StartWrite) -> Routed<StartWrite, oneshot::Receiver<bool>> {
        let Some(batch) = self.batch(&w.id) else {
            return Routed::NotHeld(w);
        };
        let mut state = batch.state.lock().unwrap();
        let (tx, rx) = oneshot::channel();
        if state.sealed {
            state.after.push(Write::Start(w, tx));
            return Routed::Taken(rx);
        }
        match state.jobs.get_mut(&w.id).filter(|e| e.attempt == w.attempt) {
            Some(entry) => entry.started = true,
            None => return Routed::NotHeld(w),
        }
        state.waiters.push(tx);
        batch.close.notify_one();
        Routed::Taken(rx)
    }

    /// A progress report of a held job: recorded, and its claim is closed at once.
    pub(crate) fn progress(&self, w: ProgressWrite) -> Routed<ProgressWrite, Written> {
        let Some(batch) = self.batch(&w.id) else {
            return Routed::NotHeld(w);
        };
        let mut state = batch.state.lock().unwrap();
        if state.sealed {
            let (tx, rx) = oneshot::channel();
            state.after.push(Write::Progress(w, tx));
            return Routed::Taken(Box::pin(async {
                let _ = rx.await;
            }));
        }
        match state.jobs.get_mut(&w.id).filter(|e| e.attempt == w.attempt) {
            Some(entry) => {
                entry.started = true;
                entry.progress = Some((w.progress, w.message));
            }
            None => return Routed::NotHeld(w),
        }
        let (tx, rx) = oneshot::channel();
        state.waiters.push(tx);
        batch.close.notify_one();
        Routed::Taken(Box::pin(async {
            let _ = rx.await;
        }))
    }

    /// How a held job ended: recorded; the claim is closed once all its jobs ended.
    pub(crate) fn finish(&self, f: Finish, done: FinishDone) -> Routed<(Finish, FinishDone), ()> {
        let Some(batch) = self.batch(&f.id) else {
            return Routed::NotHeld((f, done));
        };
        let mut state = batch.state.lock().unwrap();
        if state.sealed {
            state.after.push(Write::Finish(f, done));
            return Routed::Taken(());
        }
        match state.jobs.get_mut(&f.id).filter(|e| e.attempt == f.attempt) {
            Some(entry) if entry.finish.is_none() => entry.finish = Some(f),
            _ => return Routed::NotHeld((f, done)),
        }
        state.finish_done.push(done);
        state.unfinished -= 1;
        if state.unfinished == 0 {
            batch.close.notify_one();
        }
        Routed::Taken(())
    }

    /// Seals `batch`: what its jobs reached is to be written now.
    pub(crate) fn seal(&self, batch: &Batch) -> Vec<HeldWrite> {
        let mut state = batch.state.lock().unwrap();
        state.sealed = true;
        state
            .jobs
            .iter_mut()
            .map(|(id, e)| {
                let end = match e.finish.take() {
                    Some(f) => HeldEnd::Finished(f.status),
                    None if e.started => HeldEnd::Running,
                    None => HeldEnd::Claimed,
                };
                HeldWrite {
                    id: *id,
                    attempt: e.attempt,
                    end,
                    progress: e.progress.take(),
                }
            })
            .collect()
    }

    /// The sealed `batch` was closed; `committed` tells whether its writes were made. The
    /// writes that waited for it go on to the writer (or, rolled back, are fenced off).
    pub(crate) fn closed(&self, batch: &Batch, committed: bool) {
        let (waiters, done, after) = {
            let mut state = batch.state.lock().unwrap();
            let mut map = self.jobs.lock().unwrap();
            for id in state.jobs.keys() {
                map.remove(id);
            }
            (
                std::mem::take(&mut state.waiters),
                std::mem::take(&mut state.finish_done),
                std::mem::take(&mut state.after),
            )
        };
        self.any_closed.notify_waiters();
        for w in waiters {
            let _ = w.send(committed);
        }
        for d in done {
            d(committed);
        }
        for w in after {
            if committed {
                // A closed channel drops the write, which its sender reads as fenced off.
                let _ = self.writer.send(w);
            } else {
                match w {
                    Write::Start(_, ack) => drop(ack),
                    Write::Progress(_, ack) => drop(ack),
                    Write::Finish(_, done) => done(false),
                }
            }
        }
    }
}

impl Batch {
    /// Resolves when the claim should be closed before its time runs out.
    pub(crate) async fn close_requested(&self) {
        self.close.notified().await;
    }
}
