//! Recurring jobs: cron schedules whose every tick enqueues one ordinary job.
//!
//! * Declared in code with `#[forge::cron(..)]` on a `#[forge::job]` ([`CronDef`], through
//!   `inventory`), or created at run time and owned by a user ([`ScheduleRequest`]).
//! * Both live in `forge.schedules`. Every node that runs a [`Scheduler`] (every worker node
//!   does) handles the schedules that are due; there is no leader. A schedule's row is locked
//!   while a node handles it, and each tick is a primary key in `forge.schedule_ticks`,
//!   written in the transaction that enqueues the tick's job: a tick runs once however many
//!   nodes see it due, and a crash between the two writes leaves neither.
//! * A schedule's `next_tick` is its cursor. When a node finds it passed, the ticks from it
//!   to now are due: the latest is on time when it is at most [`SchedulerConfig::grace`]
//!   old, the others were missed, and [`Missed`] says which of those still run.
//!
//! See `docs/schedules.md` for the user's view, defaults and limits.

mod api;
mod context;
pub mod cron;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use self::api::{ScheduleInfo, ScheduleRequest, MAX_NAME_CHARS, MAX_SCHEDULES_PER_OWNER};
pub use self::cron::CronSchedule;
use crate::error::{EnqueueError, RuntimeError};
use crate::queue::{EnqueueOptions, JobRequest};
use crate::registry;
use crate::store::{self, ScheduleRow, Store};

/// Most missed ticks `Missed::Backfill` may run after an outage.
pub const MAX_BACKFILL: u32 = 1000;

/// How many upcoming ticks [`ScheduleInfo::next_ticks`] lists.
pub const NEXT_TICKS_LISTED: usize = 5;

/// What happens to ticks that passed while no node was running the schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Missed {
    /// They do not run (the default).
    #[default]
    Skip,
    /// The latest of them runs, once.
    Latest,
    /// The latest `n` of them run, oldest first (`n` at most [`MAX_BACKFILL`]).
    Backfill(u32),
}

impl Missed {
    /// `skip`, `latest` or `backfill`, as stored and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            Missed::Skip => "skip",
            Missed::Latest => "latest",
            Missed::Backfill(_) => "backfill",
        }
    }

    /// The bound of `backfill`, 0 for the others.
    pub fn backfill(self) -> u32 {
        match self {
            Missed::Backfill(n) => n,
            _ => 0,
        }
    }

    /// The policy named `name`; `backfill` takes its bound from `backfill`.
    pub fn parse(name: &str, backfill: u32) -> Result<Missed, ScheduleError> {
        let m = match name {
            "skip" => Missed::Skip,
            "latest" => Missed::Latest,
            "backfill" => Missed::Backfill(backfill),
            other => {
                return Err(ScheduleError::Invalid {
                    field: "missed",
                    message: format!("`{other}` is not one of skip, latest, backfill"),
                })
            }
        };
        m.check()?;
        Ok(m)
    }

    fn check(self) -> Result<(), ScheduleError> {
        match self {
            Missed::Backfill(n) if n == 0 || n > MAX_BACKFILL => Err(ScheduleError::Invalid {
                field: "backfill",
                message: format!("must be from 1 to {MAX_BACKFILL}, got {n}"),
            }),
            _ => Ok(()),
        }
    }
}

/// What happens to a tick while the job of the schedule's previous tick has not finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overlap {
    /// It runs anyway, alongside (the default, as cron does).
    #[default]
    Allow,
    /// It is skipped: recorded as handled, with no job.
    Skip,
}

impl Overlap {
    pub fn as_str(self) -> &'static str {
        match self {
            Overlap::Allow => "allow",
            Overlap::Skip => "skip",
        }
    }

    pub fn parse(name: &str) -> Result<Overlap, ScheduleError> {
        match name {
            "allow" => Ok(Overlap::Allow),
            "skip" => Ok(Overlap::Skip),
            other => Err(ScheduleError::Invalid {
                field: "overlap",
                message: format!("`{other}` is not one of allow, skip"),
            }),
        }
    }
}

/// Why a schedule operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// An option does not parse or is out of range; `field` names it.
    #[error("invalid `{field}`: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    /// The job or its arguments do not fit.
    #[error(transparent)]
    Job(#[from] EnqueueError),
    /// No such schedule, or not the caller's.
    #[error("no such schedule")]
    NotFound,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A schedule declared with `#[forge::cron(..)]`. The macro submits one per annotated job.
#[derive(Debug)]
pub struct CronDef {
    /// The job the schedule enqueues; also the schedule's name.
    pub function: &'static str,
    pub cron: &'static str,
    pub timezone: &'static str,
    pub missed: Missed,
    pub overlap: Overlap,
    /// The job's arguments as JSON (`{}` for a job without any).
    pub args: &'static str,
}

inventory::collect!(CronDef);

/// Every declared schedule.
pub fn declared() -> impl Iterator<Item = &'static CronDef> {
    inventory::iter::<CronDef>.into_iter()
}

/// Where a scheduler reads the time. Tests inject a [`ManualClock`].
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> DateTime<Utc>;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}

/// A clock that shows what it was set to.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(now: DateTime<Utc>) -> Self {
        Self(Mutex::new(now))
    }

    pub fn set(&self, now: DateTime<Utc>) {
        *self.0.lock().unwrap() = now;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().unwrap()
    }
}

/// How a node's scheduler runs.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Longest wait between two looks for due schedules (a new run-time schedule is seen
    /// within this). Between those, a scheduler wakes at the next tick it knows of.
    pub poll_interval: Duration,
    /// How late a tick may be handled and still count as on time rather than missed.
    pub grace: Duration,
    pub clock: Arc<dyn Clock>,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_secs(1),
            grace: Duration::from_secs(60),
            clock: Arc::new(SystemClock),
        }
    }
}

/// One handled tick of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TickRun {
    pub schedule_id: Uuid,
    pub tick: DateTime<Utc>,
    /// The job it enqueued; `None` when the overlap policy skipped it.
    pub job_id: Option<Uuid>,
}

/// A running scheduler loop. Stop it with [`shutdown`](Self::shutdown); one started with a
/// worker stops with that worker.
#[derive(Debug)]
pub struct Scheduler {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Scheduler {
    /// Writes the declared schedules, then starts the loop.
    pub(crate) async fn start(
        store: Store,
        config: SchedulerConfig,
        stop: CancellationToken,
    ) -> Result<Scheduler, RuntimeError> {
        sync_declared(&store, config.clock.now()).await?;
        let task = tokio::spawn(run_loop(store, config, stop.clone()));
        Ok(Scheduler { stop, task })
    }

    /// Stops the loop after the schedule it is handling, if any.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn run_loop(store: Store, config: SchedulerConfig, stop: CancellationToken) {
    let functions = known_functions();
    loop {
        if let Err(e) = run_due(&store, config.clock.now(), config.grace).await {
            tracing::warn!(error = %e, "handling due schedules failed; trying again");
        }
        let mut wait = config.poll_interval;
        match store::next_schedule_tick(store.pool(), &functions).await {
            Ok(Some(next)) => {
                let until = (next - config.clock.now()).to_std().unwrap_or_default();
                // Timers may fire a hair early: a millisecond more finds the tick due.
                wait = wait.min(until + Duration::from_millis(1));
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the next schedule tick failed"),
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

fn known_functions() -> Vec<String> {
    registry::jobs().map(|d| d.name.to_string()).collect()
}

/// Handles every schedule due at `now` that this node has the job of and no other node is
/// handling: enqueues the jobs of the ticks its policies run and moves its cursor past `now`.
/// Returns the ticks handled. The scheduler loop calls this; tests call it with set times.
pub async fn run_due(
    store: &Store,
    now: DateTime<Utc>,
    grace: Duration,
) -> Result<Vec<TickRun>, sqlx::Error> {
    let functions = known_functions();
    let mut handled = Vec::new();
    loop {
        let mut tx = store.pool().begin().await?;
        let Some(s) = store::lock_due_schedule(&mut tx, now, &functions).await? else {
            return Ok(handled);
        };
        handle(&mut tx, &s, now, grace, &mut handled).await?;
        tx.commit().await?;
    }
}

async fn handle(
    tx: &mut sqlx::PgConnection,
    s: &ScheduleRow,
    now: DateTime<Utc>,
    grace: Duration,
    handled: &mut Vec<TickRun>,
) -> Result<(), sqlx::Error> {
    let policies = Missed::parse(&s.missed, s.backfill)
        .and_then(|missed| Ok((missed, Overlap::parse(&s.overlap)?)));
    let (cron, (missed, overlap)) = match CronSchedule::parse(&s.cron, &s.timezone)
        .map_err(|e| e.to_string())
        .and_then(|c| Ok((c, policies.map_err(|e| e.to_string())?)))
    {
        Ok(parsed) => parsed,
        Err(e) => {
            // Only an operator's hand-written row gets here: every API checks first.
            tracing::error!(schedule = %s.id, error = %e, "pausing a schedule that cannot run");
            return store::pause_broken_schedule(tx, s.id).await;
        }
    };
    let plan = cron::plan(&cron, s.next_tick, now, grace, missed);
    let mut last_job = s.last_job_id;
    for tick in plan.run {
        let busy = match (overlap, last_job) {
            (Overlap::Skip, Some(job)) => store::job_is_unfinished(&mut *tx, job).await?,
            _ => false,
        };
        let job = if busy {
            None
        } else {
            let req = JobRequest::<Value>::new(&s.function_name, s.args.clone()).options(
                EnqueueOptions {
                    owner: s.owner.clone(),
                    ..Default::default()
                },
            );
            match req.prepare() {
                Ok(job) => Some(job),
                Err(e) => {
                    // The job's parameters changed since the schedule was written.
                    tracing::error!(schedule = %s.id, %tick, error = %e, "a tick's job does not fit its function; skipping the tick");
                    None
                }
            }
        };
        let job_id = job.as_ref().map(|j| j.id);
        if !store::record_tick(&mut *tx, s.id, tick, job_id).await? {
            continue;
        }
        if let Some(job) = job {
            store::insert_jobs(&mut *tx, std::slice::from_ref(&job)).await?;
            last_job = Some(job.id);
        }
        handled.push(TickRun {
            schedule_id: s.id,
            tick,
            job_id,
        });
    }
    let next = plan.next.unwrap_or(store::never());
    store::advance_schedule(tx, s.id, next, last_job).await
}

/// Writes every `#[forge::cron]` of this binary to `forge.schedules`. A new one starts at its
/// next tick after `now`; one whose expression or time zone changed starts over the same way;
/// otherwise its cursor stays, so ticks missed while no node ran count as missed.
pub async fn sync_declared(store: &Store, now: DateTime<Utc>) -> Result<(), RuntimeError> {
    let mut seen = std::collections::HashSet::new();
    for def in declared() {
        let config_err = |message: String| RuntimeError::Config {
            field: "forge::cron",
            message: format!("the schedule of `{}`: {message}", def.function),
        };
        if !seen.insert(def.function) {
            return Err(config_err("declared twice".into()));
        }
        let cron =
            CronSchedule::parse(def.cron, def.timezone).map_err(|e| config_err(e.to_string()))?;
        def.missed.check().map_err(|e| config_err(e.to_string()))?;
        let args: Value =
            serde_json::from_str(def.args).map_err(|e| config_err(format!("args: {e}")))?;
        let job = JobRequest::<Value>::new(def.function, args)
            .prepare()
            .map_err(|e| config_err(e.to_string()))?;
        let next = cron.next_after(now).unwrap_or(store::never());
        store::upsert_declared_schedule(
            store.pool(),
            &store::ScheduleWrite {
                name: def.function.to_string(),
                function_name: job.function_name,
                args: job.args,
                cron: def.cron.to_string(),
                timezone: def.timezone.to_string(),
                missed: def.missed.as_str(),
                backfill: def.missed.backfill(),
                overlap: def.overlap.as_str(),
                owner: None,
            },
            next,
        )
        .await?;
    }
    Ok(())
}
