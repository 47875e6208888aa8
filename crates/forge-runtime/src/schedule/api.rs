//! Schedules from Rust: create, list, pause, resume, delete, and the node's scheduler.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    CronSchedule, Missed, Overlap, ScheduleError, Scheduler, SchedulerConfig, NEXT_TICKS_LISTED,
};
use crate::error::{EnqueueError, RuntimeError};
use crate::forge::Forge;
use crate::queue::JobRequest;
use crate::store::{self, NewJob, ScheduleRow, ScheduleWrite};

/// Longest schedule name, in characters.
pub const MAX_NAME_CHARS: usize = 200;

/// Most schedules one owner may have.
pub const MAX_SCHEDULES_PER_OWNER: i64 = 100;

/// A schedule to create at run time: `ScheduleRequest::new(weekly_digest::request(..),
/// "0 9 * * MON").timezone("Europe/Berlin").owner(user_id)`.
#[derive(Debug)]
pub struct ScheduleRequest {
    job: Result<NewJob, EnqueueError>,
    cron: String,
    timezone: String,
    name: Option<String>,
    missed: Missed,
    overlap: Overlap,
    owner: Option<String>,
}

impl ScheduleRequest {
    /// Each tick of `cron` (in UTC unless [`timezone`](Self::timezone) says otherwise)
    /// enqueues `job` with its arguments.
    pub fn new<O>(job: JobRequest<O>, cron: impl Into<String>) -> Self {
        Self {
            job: job.prepare(),
            cron: cron.into(),
            timezone: "UTC".into(),
            name: None,
            missed: Missed::default(),
            overlap: Overlap::default(),
            owner: None,
        }
    }

    pub fn timezone(mut self, timezone: impl Into<String>) -> Self {
        self.timezone = timezone.into();
        self
    }

    /// A label for people; the job's name when not given.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    pub fn missed(mut self, missed: Missed) -> Self {
        self.missed = missed;
        self
    }

    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = overlap;
        self
    }

    /// Who owns the schedule (and the jobs it enqueues): only they see or change it through
    /// the gateway.
    pub fn owner(mut self, owner: impl Into<String>) -> Self {
        self.owner = Some(owner.into());
        self
    }
}

/// A schedule as the read API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleInfo {
    pub id: Uuid,
    pub name: String,
    /// Declared with `#[forge::cron]` (else created at run time).
    pub declared: bool,
    /// The job each tick enqueues.
    pub function: String,
    pub args: Value,
    pub cron: String,
    pub timezone: String,
    /// `skip`, `latest` or `backfill`.
    pub missed: String,
    /// The bound of `backfill`; 0 for the other policies.
    pub backfill: u32,
    /// `allow` or `skip`.
    pub overlap: String,
    pub owner: Option<String>,
    pub paused: bool,
    /// The next ticks not yet handled, soonest first (empty while paused).
    pub next_ticks: Vec<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

impl From<ScheduleRow> for ScheduleInfo {
    fn from(r: ScheduleRow) -> Self {
        let next_ticks = if r.paused {
            Vec::new()
        } else {
            CronSchedule::parse(&r.cron, &r.timezone)
                .map(|c| c.upcoming(r.next_tick, NEXT_TICKS_LISTED))
                .unwrap_or_default()
        };
        Self {
            id: r.id,
            name: r.name,
            declared: r.declared,
            function: r.function_name,
            args: r.args,
            cron: r.cron,
            timezone: r.timezone,
            missed: r.missed,
            backfill: r.backfill,
            overlap: r.overlap,
            owner: r.owner,
            paused: r.paused,
            next_ticks,
            created_at: r.created_at,
        }
    }
}

/// Schedules of an owner: `Some(user)` restricts an operation to that user's schedules (the
/// gateway always passes the caller); `None` reaches every schedule, declared ones too.
impl Forge {
    /// Creates a run-time schedule; its first tick is the first after now.
    pub async fn create_schedule(
        &self,
        req: ScheduleRequest,
    ) -> Result<ScheduleInfo, ScheduleError> {
        let job = req.job?;
        let cron = CronSchedule::parse(&req.cron, &req.timezone)?;
        req.missed.check()?;
        let name = req.name.unwrap_or_else(|| job.function_name.clone());
        if name.trim().is_empty() || name.chars().count() > MAX_NAME_CHARS {
            return Err(ScheduleError::Invalid {
                field: "name",
                message: format!("must be 1 to {MAX_NAME_CHARS} characters"),
            });
        }
        let owner = req.owner.or(job.owner);
        if let Some(owner) = owner.as_deref() {
            if store::count_owner_schedules(self.pool(), owner).await? >= MAX_SCHEDULES_PER_OWNER {
                return Err(ScheduleError::Invalid {
                    field: "owner",
                    message: format!("has {MAX_SCHEDULES_PER_OWNER} schedules, the most one owner may have: delete one first"),
                });
            }
        }
        let next = cron.next_after(Utc::now()).unwrap_or_else(store::never);
        let write = ScheduleWrite {
            name,
            function_name: job.function_name,
            args: job.args,
            cron: req.cron,
            timezone: req.timezone,
            missed: req.missed.as_str(),
            backfill: req.missed.backfill(),
            overlap: req.overlap.as_str(),
            owner,
        };
        Ok(store::insert_schedule(self.pool(), &write, next)
            .await?
            .into())
    }

    /// Schedules with their next ticks, oldest first.
    pub async fn schedules(&self, owner: Option<&str>) -> Result<Vec<ScheduleInfo>, ScheduleError> {
        let rows = store::list_schedules(self.pool(), owner).await?;
        Ok(rows.into_iter().map(ScheduleInfo::from).collect())
    }

    pub async fn schedule(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<ScheduleInfo, ScheduleError> {
        store::get_schedule(self.pool(), id, owner)
            .await?
            .map(ScheduleInfo::from)
            .ok_or(ScheduleError::NotFound)
    }

    /// Stops a schedule's ticks until it is resumed. Pausing a paused one changes nothing.
    pub async fn pause_schedule(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<ScheduleInfo, ScheduleError> {
        store::set_schedule_paused(self.pool(), id, owner, true, None)
            .await?
            .map(ScheduleInfo::from)
            .ok_or(ScheduleError::NotFound)
    }

    /// Resumes a schedule at its first tick after now: the ticks of the pause do not run.
    pub async fn resume_schedule(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<ScheduleInfo, ScheduleError> {
        let row = store::get_schedule(self.pool(), id, owner)
            .await?
            .ok_or(ScheduleError::NotFound)?;
        if !row.paused {
            return Ok(row.into());
        }
        let next = CronSchedule::parse(&row.cron, &row.timezone)?
            .next_after(Utc::now())
            .unwrap_or_else(store::never);
        store::set_schedule_paused(self.pool(), id, owner, false, Some(next))
            .await?
            .map(ScheduleInfo::from)
            .ok_or(ScheduleError::NotFound)
    }

    /// Deletes a schedule. The jobs it enqueued stay. A declared schedule comes back when a
    /// node whose code declares it starts.
    pub async fn delete_schedule(
        &self,
        id: Uuid,
        owner: Option<&str>,
    ) -> Result<(), ScheduleError> {
        if store::delete_schedule(self.pool(), id, owner).await? {
            Ok(())
        } else {
            Err(ScheduleError::NotFound)
        }
    }

    /// Writes this binary's declared schedules and starts handling due schedules on this
    /// node. [`Forge::start_worker`] starts one with the default configuration.
    pub async fn start_scheduler(
        &self,
        config: SchedulerConfig,
    ) -> Result<Scheduler, RuntimeError> {
        Scheduler::start(self.store().clone(), config, CancellationToken::new()).await
    }

    /// The scheduler a worker starts; it stops when `stop` is cancelled.
    pub(crate) async fn start_scheduler_until(
        &self,
        stop: CancellationToken,
    ) -> Result<Scheduler, RuntimeError> {
        Scheduler::start(self.store().clone(), SchedulerConfig::default(), stop).await
    }
}
