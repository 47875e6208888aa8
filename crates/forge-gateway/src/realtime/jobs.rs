//! The order of one job's updates as one subscription sees them.
//!
//! Updates reach a node in commit order (one LISTEN connection; PostgreSQL queues
//! notifications in commit order). What needs care is where the stream meets a read of the
//! current state — a subscribe call, or the re-read after the LISTEN connection came back:
//!
//! * A subscription is registered *before* the read, so nothing committed after the read can
//!   be missed. Updates that arrive while the read is in flight are held.
//! * The read returns the database snapshot it was made with, and every update carries the id
//!   of the transaction that made it: an update the snapshot already saw is dropped, one it did
//!   not see is delivered after the read's state. No guessing from status order.
//!
//! On top of that exact rule two invariants hold whatever happens: nothing follows a terminal
//! status, and an update of an earlier attempt never follows one of a later attempt.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use forge_runtime::notifier::JobUpdate;
use forge_runtime::store::{DbSnapshot, JobRow};
use forge_runtime::{JobState, JobStatus};

/// One state of a job on its way to subscribers.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct JobChange {
    pub(crate) state: JobState,
    pub(crate) attempt: i32,
    /// The transaction that made it; `None` for a state read from the table.
    pub(crate) xid: Option<u64>,
}

impl JobChange {
    /// An update as published. Output and error are not in notifications: see
    /// [`needs_row`](Self::needs_row).
    pub(crate) fn from_update(u: &JobUpdate) -> Self {
        Self {
            state: JobState {
                job_id: u.job_id,
                status: u.status,
                progress: u.progress,
                message: u.message.clone(),
                output: None,
                error: None,
            },
            attempt: u.attempt,
            xid: Some(u.xid),
        }
    }

    pub(crate) fn from_row(row: &JobRow) -> Self {
        Self {
            state: row.state(),
            attempt: row.attempts,
            xid: None,
        }
    }

    /// Statuses whose state carries what notifications leave out: the output of `completed`,
    /// the error of `retry`, `failed`, `dead_letter` and `cancelled`. Their row is read
    /// before they are delivered.
    pub(crate) fn needs_row(&self) -> bool {
        self.state.status.is_terminal() || self.state.status == JobStatus::Retry
    }

    /// Completes an update with the output and error of the row read after it. The row is
    /// used only while it still shows the same attempt and status (a retried job may already
    /// have been claimed again, which clears its error). Returns false when the row was read
    /// too early to show a terminal update: read it again.
    pub(crate) fn fill_from(&mut self, row: Option<&JobRow>) -> bool {
        let Some(row) = row else {
            // The job was deleted: deliver what the notification said.
            return true;
        };
        if row.attempts == self.attempt && row.status == self.state.status {
            let full = row.state();
            self.state.output = full.output;
            self.state.error = full.error;
            return true;
        }
        // A terminal status never changes, so a row that does not show it yet is older than
        // the update; a retry's row may have moved on for good.
        !self.state.status.is_terminal()
    }

    /// The outbox phase: equal for two changes that differ only in progress and message.
    pub(crate) fn phase(&self) -> u64 {
        let status = JobStatus::ALL
            .iter()
            .position(|s| *s == self.state.status)
            .unwrap_or(0) as u64;
        ((self.attempt.max(0) as u64) << 8) | status
    }
}

/// Where one subscription stands.
#[derive(Debug)]
pub(crate) enum JobFeed {
    /// The current state is being read; changes that arrive meanwhile wait here.
    Reading(Vec<JobChange>),
    Live {
        /// The snapshot of the last read, while updates it already saw may still arrive.
        floor: Option<Arc<DbSnapshot>>,
        /// The attempt and status of the last state the client got.
        last: Option<(i32, JobStatus)>,
        /// A digest of that state, so that a re-read that changes nothing sends nothing.
        digest: u64,
        /// Whether anything was pushed on the stream yet.
        pushed: bool,
    },
}

impl JobFeed {
    /// For a job the subscriber is about to create: it has no state yet, so every update of
    /// it is new.
    pub(crate) fn following() -> Self {
        JobFeed::Live {
            floor: None,
            last: None,
            digest: 0,
            pushed: false,
        }
    }

    /// Offers a change from the stream; returns whether to push it to the client.
    pub(crate) fn offer(&mut self, change: &JobChange) -> bool {
        match self {
            JobFeed::Reading(held) => {
                held.push(change.clone());
                false
            }
            JobFeed::Live {
                floor,
                last,
                digest,
                pushed,
            } => {
                if let (Some(snapshot), Some(xid)) = (floor.as_ref(), change.xid) {
                    if snapshot.sees(xid) {
                        return false;
                    }
                    if snapshot.is_before(xid) {
                        *floor = None;
                    }
                }
                if let Some((attempt, status)) = *last {
                    if status.is_terminal() || change.attempt < attempt {
                        return false;
                    }
                }
                *last = Some((change.attempt, change.state.status));
                *digest = digest_of(&change.state);
                *pushed = true;
                true
            }
        }
    }

    /// Applies a read of the current state made with `snapshot` (`read` is `None` when the
    /// job does not exist). Returns what to push, in order.
    ///
    /// The read state itself is pushed when `resync` is set (the re-read after a lost LISTEN
    /// connection), or when the stream already carried states of this subscription: the
    /// client treats stream events as newer than the subscribe call's answer, so the stream
    /// must end on the newest state. Then come the held changes the read did not see.
    pub(crate) fn apply_read(
        &mut self,
        snapshot: &Arc<DbSnapshot>,
        read: Option<&JobChange>,
        resync: bool,
    ) -> Vec<JobChange> {
        let (held, last, digest, pushed) = match self {
            JobFeed::Reading(held) => (std::mem::take(held), None, 0, false),
            JobFeed::Live {
                floor,
                last,
                digest,
                pushed,
            } => {
                // A read older than one already applied brings nothing new.
                if floor.as_ref().is_some_and(|f| f.xmax() > snapshot.xmax()) {
                    return Vec::new();
                }
                (Vec::new(), *last, *digest, *pushed)
            }
        };
        let terminal_seen = last.is_some_and(|(_, s)| s.is_terminal());
        let mut out = Vec::new();
        let mut next = (last, digest, pushed);
        if let (Some(read), false) = (read, terminal_seen) {
            let d = digest_of(&read.state);
            let push = (resync || pushed) && d != digest;
            if push {
                out.push(read.clone());
            }
            next = (Some((read.attempt, read.state.status)), d, pushed || push);
        }
        *self = JobFeed::Live {
            floor: Some(snapshot.clone()),
            last: next.0,
            digest: next.1,
            pushed: next.2,
        };
        for change in held {
            if self.offer(&change) {
                out.push(change);
            }
        }
        out
    }
}

/// A 64-bit digest of a state, for "did it change" checks. JSON is the form clients see, so
/// two states that serialize alike are alike to them.
pub(crate) fn digest_of(state: &JobState) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(state)
        .unwrap_or_default()
        .hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn change(status: JobStatus, attempt: i32, progress: f64, xid: Option<u64>) -> JobChange {
        JobChange {
            state: JobState {
                job_id: Uuid::nil(),
                status,
                progress: Some(progress),
                message: None,
                output: None,
                error: None,
            },
            attempt,
            xid,
        }
    }

    fn snap(text: &str) -> Arc<DbSnapshot> {
        Arc::new(DbSnapshot::parse(text).unwrap())
    }

    #[test]
    fn updates_held_during_the_read_are_filtered_by_its_snapshot() {
        let mut feed = JobFeed::Reading(Vec::new());
        let seen = change(JobStatus::Running, 1, 10.0, Some(100));
        let unseen = change(JobStatus::Running, 1, 20.0, Some(102));
        assert!(!feed.offer(&seen));
        assert!(!feed.offer(&unseen));
        // The read saw 100 but not 102 (in progress when it was taken).
        let read = change(JobStatus::Running, 1, 10.0, None);
        let out = feed.apply_read(&snap("101:103:102"), Some(&read), false);
        assert_eq!(out, vec![unseen]);
        // A later update the snapshot saw (committed before it) is still dropped.
        assert!(!feed.offer(&change(JobStatus::Running, 1, 5.0, Some(101))));
        assert!(feed.offer(&change(JobStatus::Running, 1, 30.0, Some(103))));
    }

    #[test]
    fn nothing_follows_a_terminal_status_or_goes_back_an_attempt() {
        let mut feed = JobFeed::following();
        assert!(feed.offer(&change(JobStatus::Running, 2, 10.0, Some(1))));
        assert!(!feed.offer(&change(JobStatus::Running, 1, 50.0, Some(2))));
        assert!(feed.offer(&change(JobStatus::Completed, 2, 100.0, Some(3))));
        assert!(!feed.offer(&change(JobStatus::Running, 3, 0.0, Some(4))));
    }

    #[test]
    fn a_resync_pushes_only_a_changed_state() {
        let mut feed = JobFeed::following();
        let running = change(JobStatus::Running, 1, 40.0, Some(10));
        assert!(feed.offer(&running));
        let same = JobChange {
            xid: None,
            ..running.clone()
        };
        assert!(feed
            .apply_read(&snap("20:20:"), Some(&same), true)
            .is_empty());
        let done = change(JobStatus::Completed, 1, 100.0, None);
        assert_eq!(
            feed.apply_read(&snap("30:30:"), Some(&done), true),
            vec![done]
        );
        // An older read applied late changes nothing.
        let old = change(JobStatus::Running, 1, 40.0, None);
        assert!(feed
            .apply_read(&snap("25:25:"), Some(&old), true)
            .is_empty());
    }

    #[test]
    fn the_subscribe_answer_is_not_pushed_unless_the_stream_already_moved() {
        let mut feed = JobFeed::Reading(Vec::new());
        let read = change(JobStatus::Pending, 0, 0.0, None);
        assert!(feed
            .apply_read(&snap("5:5:"), Some(&read), false)
            .is_empty());

        let mut feed = JobFeed::following();
        assert!(feed.offer(&change(JobStatus::Running, 1, 1.0, Some(3))));
        let newer = change(JobStatus::Running, 1, 9.0, None);
        assert_eq!(
            feed.apply_read(&snap("9:9:"), Some(&newer), false),
            vec![newer]
        );
    }

    #[test]
    fn phases_differ_by_status_and_attempt_only() {
        let a = change(JobStatus::Running, 1, 1.0, None);
        let b = change(JobStatus::Running, 1, 2.0, None);
        let c = change(JobStatus::Running, 2, 2.0, None);
        let d = change(JobStatus::CancelRequested, 1, 2.0, None);
        assert_eq!(a.phase(), b.phase());
        assert_ne!(a.phase(), c.phase());
        assert_ne!(a.phase(), d.phase());
    }
}
