//! The producer: claims jobs into the node's buffer (plain or held claims), at the node's
//! pace, and wakes on `forge_jobs_available` and cancel requests.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use super::executor::take;
use super::{more_jobs, Shared, HOLD_FROM_PREFETCH, HOLD_LIMIT, PREFETCH_WINDOW};
use crate::notifier::Event;
use crate::status::JobStatus;
use crate::store::ClaimedJob;

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

pub(super) async fn fetch_loop(shared: Arc<Shared>) {
    let mut error_delay = Duration::from_millis(100);
    let mut pace = Pace::new();
    let concurrency = shared.config.concurrency;
    let batch = shared.config.claim_batch.max(1);
    // The last claim found fewer jobs than it asked for.
    let mut exhausted = false;
    let mut polled = false;
    let mut no_hold_at = Instant::now();
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
                if no_hold_at.elapsed() >= shared.config.poll_interval {
                    // Jobs of lost held claims are never held again (migration 0011): a node
                    // that keeps holding its claims takes them with a plain claim now and then.
                    // Only as many as start at once: a claimed job waiting in the buffer
                    // when one of them kills the node would be charged an attempt unused.
                    no_hold_at = Instant::now();
                    if free > 0 {
                        claim_no_hold(&shared, free).await;
                    }
                }
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

/// Claims up to `want` jobs whose held claim was lost, the plain way, and starts them.
async fn claim_no_hold(shared: &Arc<Shared>, want: usize) {
    let claimed = shared
        .store
        .claim_no_hold_jobs(
            shared.worker_id,
            &shared.config.queues,
            &shared.names,
            want,
            shared.config.lease,
        )
        .await;
    match claimed {
        Ok(jobs) if !jobs.is_empty() => take(shared, jobs),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "claiming jobs of lost held claims failed"),
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

/// Wakes the fetch loop on new jobs; flags running jobs whose cancel was requested.
pub(super) async fn event_loop(shared: Arc<Shared>, mut events: broadcast::Receiver<Event>) {
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
            Ok(Event::WorkflowUpdates(_) | Event::TableChanged(_) | Event::Other { .. }) => {}
            Ok(Event::Reconnected) | Err(broadcast::error::RecvError::Lagged(_)) => {
                // Notifications may have been missed: look for jobs now; the next heartbeat
                // catches missed cancel requests.
                more_jobs(&shared);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
