//! A recurring job per demo account: every minute, each of alice and bob is sent their
//! "digest" (the `send_report` job, so a run goes `retry` then `completed`). The schedule is
//! created at run time and owned by the account, so its runs are that user's jobs: they show
//! up live in "My recent jobs" like the jobs the page starts.

use forge::prelude::*;
use forge::schedule::{Missed, Overlap, ScheduleError, ScheduleRequest};

use crate::report::send_report;

/// The schedule's name (one per account).
const NAME: &str = "digest";

/// The report id a digest sends, to tell its runs apart in the list.
const DIGEST_REPORT: &str = "digest";

/// Creates each account's digest schedule unless it exists (so restarts keep it, paused or
/// not).
pub(crate) async fn ensure_digests(forge: &Forge) -> Result<(), ScheduleError> {
    for user in ["alice", "bob"] {
        let theirs = forge.schedules(Some(user)).await?;
        if theirs.iter().any(|s| s.name == NAME) {
            continue;
        }
        let every_minute = "0 * * * * *";
        let req = ScheduleRequest::new(
            send_report::request(DIGEST_REPORT.into(), None),
            every_minute,
        )
        .name(NAME)
        // After the demo was stopped: one catch-up digest, not one per missed minute.
        .missed(Missed::Latest)
        // A digest still retrying when the next minute comes is not doubled.
        .overlap(Overlap::Skip)
        .owner(user);
        forge.create_schedule(req).await?;
    }
    Ok(())
}
