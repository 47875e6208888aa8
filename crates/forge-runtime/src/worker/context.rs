//! What a running job sees of the runtime.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::sync::{oneshot, Notify};
use uuid::Uuid;

use super::writer::Writer;
use crate::error::{Error, ProgressError};
use crate::store::{ProgressWrite, StartWrite};
use crate::value;

/// Longest progress message kept; longer ones are cut (at a character boundary) so that one
/// update always fits in a notification.
pub const MAX_MESSAGE_CHARS: usize = 500;

/// Set when a cancel was requested for a running job. Read on every `check_cancelled` call,
/// so it is a plain atomic: the node learns of cancel requests by notification and flips it.
#[derive(Debug)]
pub(crate) struct CancelSignal {
    requested: AtomicBool,
    /// The attempt no longer owns the job (cancelled before it started, or its lease was
    /// lost): stop, and write nothing more.
    lost: AtomicBool,
    notify: Notify,
    /// When the lease the database holds for this attempt was last set, as seen from here: no
    /// later than the database's own time of the write (made when the claim returned, or when
    /// a renewal that succeeded was sent), so a lease judged from it runs out here first.
    leased_at: Mutex<Instant>,
}

impl Default for CancelSignal {
    fn default() -> Self {
        Self {
            requested: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            notify: Notify::new(),
            leased_at: Mutex::new(Instant::now()),
        }
    }
}

impl CancelSignal {
    /// A lease renewal sent at `sent` succeeded.
    pub(crate) fn renewed(&self, sent: Instant) {
        let mut at = self.leased_at.lock().unwrap();
        *at = (*at).max(sent);
    }

    /// How long ago the lease was last set.
    pub(crate) fn lease_age(&self) -> Duration {
        self.leased_at.lock().unwrap().elapsed()
    }

    pub(crate) fn lose(&self) {
        self.lost.store(true, Ordering::SeqCst);
        self.request();
    }

    pub(crate) fn is_lost(&self) -> bool {
        self.lost.load(Ordering::SeqCst)
    }

    pub(crate) fn request(&self) {
        if !self.requested.swap(true, Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    pub(crate) fn is_requested(&self) -> bool {
        self.requested.load(Ordering::Relaxed)
    }

    pub(crate) async fn wait(&self) {
        let notified = self.notify.notified();
        if self.is_requested() {
            return;
        }
        notified.await;
    }
}

/// The `running` write of one attempt. It is deferred (see `START_DEFER` in the worker) so
/// that a short job can record its start and its end in one write; it goes out earlier when
/// the handler reports progress, so that `running` is always published before any progress.
#[derive(Debug)]
pub(crate) struct StartGate {
    write: StartWrite,
    writer: Writer,
    state: Mutex<GateState>,
    opened: Notify,
}

#[derive(Debug)]
enum GateState {
    Deferred,
    Sent(Option<oneshot::Receiver<bool>>),
    /// The attempt ended before the start was sent: its finish records the start.
    Closed,
}

impl StartGate {
    pub(crate) fn new(write: StartWrite, writer: Writer) -> Self {
        Self {
            write,
            writer,
            state: Mutex::new(GateState::Deferred),
            opened: Notify::new(),
        }
    }

    /// Sends the start write now, unless it was sent or the attempt ended.
    pub(crate) fn open(&self) {
        let mut state = self.state.lock().unwrap();
        if matches!(*state, GateState::Deferred) {
            *state = GateState::Sent(Some(self.writer.start(self.write.clone())));
            self.opened.notify_one();
        }
    }

    /// Resolves once [`open`](Self::open) was called.
    pub(crate) async fn opened(&self) {
        self.opened.notified().await;
    }

    /// The acknowledgement of the start write, once sent (taken once).
    pub(crate) fn take_ack(&self) -> Option<oneshot::Receiver<bool>> {
        match &mut *self.state.lock().unwrap() {
            GateState::Sent(ack) => ack.take(),
            _ => None,
        }
    }

    /// The attempt ended. True when its start was never sent, so the finish must record it.
    pub(crate) fn close(&self) -> bool {
        let mut state = self.state.lock().unwrap();
        match *state {
            GateState::Deferred => {
                *state = GateState::Closed;
                true
            }
            GateState::Sent(_) | GateState::Closed => false,
        }
    }
}

/// The first argument of every `#[forge::job]`.
#[derive(Clone, Debug)]
pub struct JobContext {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    job_id: Uuid,
    attempt: i32,
    owner: Option<String>,
    pool: PgPool,
    writer: Writer,
    cancel: Arc<CancelSignal>,
    start: Arc<StartGate>,
}

impl JobContext {
    pub(crate) fn new(
        job_id: Uuid,
        attempt: i32,
        owner: Option<String>,
        pool: PgPool,
        writer: Writer,
        cancel: Arc<CancelSignal>,
        start: Arc<StartGate>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                job_id,
                attempt,
                owner,
                pool,
                writer,
                cancel,
                start,
            }),
        }
    }

    pub fn job_id(&self) -> Uuid {
        self.inner.job_id
    }

    /// 1 on the first attempt, 2 on the first retry, and so on.
    pub fn attempt(&self) -> u32 {
        self.inner.attempt as u32
    }

    /// Who started the job (the authenticated user id), if anyone.
    pub fn owner(&self) -> Option<&str> {
        self.inner.owner.as_deref()
    }

    /// The database pool.
    pub fn db(&self) -> &PgPool {
        &self.inner.pool
    }

    /// The node's workflow engine writer (a workflow runs as a job).
    pub(crate) fn engine(&self) -> &crate::workflow::EngineWriter {
        self.inner.writer.engine()
    }

    /// Reports progress: `percent` from 0 to 100 and a message. Stored on the job and
    /// published to whoever follows it; resolves once written. Messages longer than
    /// [`MAX_MESSAGE_CHARS`] characters, or than 2,000 bytes as JSON, are cut. A message with
    /// a NUL character, which PostgreSQL cannot store, is refused with a fatal error and
    /// nothing is written. A call that comes after the attempt lost the job (cancelled, or
    /// re-claimed after a lost lease) changes nothing.
    pub async fn progress(
        &self,
        percent: impl Into<f64>,
        message: impl Into<String>,
    ) -> Result<(), Error> {
        let percent = percent.into();
        if !(0.0..=100.0).contains(&percent) {
            // A bug in the job, not a passing failure: retrying would hit it again.
            return Err(Error::fatal(ProgressError::OutOfRange(percent)));
        }
        let mut message = message.into();
        if let Some((cut, _)) = message.char_indices().nth(MAX_MESSAGE_CHARS) {
            message.truncate(cut);
        }
        value::cut_message(&mut message);
        // The message is the user's: refused rather than changed, and the job decides.
        value::check_text(&message).map_err(|e| Error::fatal(ProgressError::Unstorable(e)))?;
        self.inner.start.open();
        self.inner
            .writer
            .progress(ProgressWrite {
                id: self.inner.job_id,
                attempt: self.inner.attempt,
                progress: percent,
                message: Some(message),
            })
            .await;
        Ok(())
    }

    /// Returns `Err` once a cancel was requested for this job; return it with `?` and the job
    /// ends `cancelled`. Costs an atomic load, so it can be called once per row.
    pub async fn check_cancelled(&self) -> Result<(), Error> {
        if self.is_cancel_requested() {
            Err(Error::cancelled())
        } else {
            Ok(())
        }
    }

    /// Whether a cancel was requested, without turning it into an error.
    pub fn is_cancel_requested(&self) -> bool {
        self.inner.cancel.is_requested()
    }
}
