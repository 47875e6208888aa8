//! A job's updates: what a notification on `forge_job_updates` carries and what must be read
//! from its row. Their order is [`feed`](super::feed)'s.

use forge_runtime::publish::JobUpdate;
use forge_runtime::store::JobRow;
use forge_runtime::{JobState, JobStatus};

use super::feed::Change;

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

    /// Completes an update with the output and error of the row read after it (`read`). The
    /// row is used only while it still shows the same attempt and status (a retried job may
    /// already have been claimed again, which clears its error). Returns false when the row
    /// was read too early to show a terminal update: read it again.
    pub(crate) fn fill_from(&mut self, read: Option<&JobChange>) -> bool {
        let Some(read) = read else {
            // The job was deleted: deliver what the notification said.
            return true;
        };
        if read.attempt == self.attempt && read.state.status == self.state.status {
            self.state.output = read.state.output.clone();
            self.state.error = read.state.error.clone();
            return true;
        }
        // A terminal status never changes, so a row that does not show it yet is older than
        // the update; a retry's row may have moved on for good.
        !self.state.status.is_terminal()
    }
}

impl Change for JobChange {
    const EVENT: &'static str = "job";

    fn xid(&self) -> Option<u64> {
        self.xid
    }

    fn generation(&self) -> i32 {
        self.attempt
    }

    fn is_terminal(&self) -> bool {
        self.state.status.is_terminal()
    }

    /// A claim starts an attempt and clears the previous one's progress, message, output and
    /// error (docs/contract.md).
    fn generation_began(&self) -> Option<Self> {
        (self.state.status != JobStatus::Claimed).then_some(JobChange {
            state: JobState {
                job_id: self.state.job_id,
                status: JobStatus::Claimed,
                progress: None,
                message: None,
                output: None,
                error: None,
            },
            attempt: self.attempt,
            xid: None,
        })
    }

    fn state_json(&self) -> String {
        serde_json::to_string(&self.state).expect("a job state always serializes")
    }

    fn phase(&self) -> u64 {
        let status = JobStatus::ALL
            .iter()
            .position(|s| *s == self.state.status)
            .unwrap_or(0) as u64;
        ((self.attempt.max(0) as u64) << 8) | status
    }

    /// Statuses whose state carries what notifications leave out: the output of `completed`,
    /// the error of `retry`, `failed`, `dead_letter` and `cancelled`. Their row is read
    /// before they are delivered.
    fn needs_row(&self) -> bool {
        self.state.status.is_terminal() || self.state.status == JobStatus::Retry
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use forge_runtime::store::DbSnapshot;
    use uuid::Uuid;

    use super::*;
    use crate::realtime::feed::Feed;

    type JobFeed = Feed<JobChange>;

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
    fn a_resync_that_finds_a_later_attempt_pushes_its_start_first() {
        let mut feed = JobFeed::following();
        assert!(feed.offer(&change(JobStatus::Running, 1, 40.0, Some(10))));
        // The end of attempt 1 and the start of attempt 2 were published while the node
        // could not listen; the re-read finds attempt 2 at 5%.
        let read = change(JobStatus::Running, 2, 5.0, None);
        let out = feed.apply_read(&snap("30:30:"), Some(&read), true);
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[0].state.status, JobStatus::Claimed);
        assert_eq!((out[0].attempt, out[0].state.progress), (2, None));
        assert_eq!(out[1], read);
        // Within one attempt nothing is added.
        let later = change(JobStatus::Running, 2, 50.0, None);
        assert_eq!(
            feed.apply_read(&snap("40:40:"), Some(&later), true),
            vec![later]
        );
        // Nor when the read is that start itself.
        let claimed = JobChange {
            state: JobState {
                progress: None,
                ..change(JobStatus::Claimed, 3, 0.0, None).state
            },
            ..change(JobStatus::Claimed, 3, 0.0, None)
        };
        assert_eq!(
            feed.apply_read(&snap("50:50:"), Some(&claimed), true),
            vec![claimed]
        );
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
