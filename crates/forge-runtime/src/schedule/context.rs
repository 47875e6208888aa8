//! What a job learns about the schedule that enqueued it.

use chrono::{DateTime, Utc};

use crate::error::Error;
use crate::store;
use crate::worker::JobContext;

impl JobContext {
    /// The tick this job runs for, when a schedule enqueued it (`None` for a job enqueued any
    /// other way). A job that runs late, or again after a failure, still sees its tick. Reads
    /// the database on each call.
    pub async fn scheduled_for(&self) -> Result<Option<DateTime<Utc>>, Error> {
        Ok(store::job_schedule_tick(self.db(), self.job_id()).await?)
    }
}
