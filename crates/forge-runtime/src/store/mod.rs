//! All of Forge's SQL. Workers, the gateway and the workflow engine call the named operations
//! here (in the manner of River's driver interface) and never write SQL themselves.

mod admin;
mod jobs;
mod listen;
mod migrate;
mod realtime;
mod retention;
mod schedules;
mod transactions;
mod workflows;

pub use admin::{
    act_on_jobs, count_unfinished, job_record_by_id, list_jobs, list_workflows, recent_activity,
    workflow_record_by_id, Attempt, JobAction, JobRecord, MinuteActivity, QueueActivity,
    ReceivedEvent, Selection, StepDetail, WorkflowRecord, BULK_BATCH, MAX_EVENTS_SHOWN,
};
pub use jobs::{
    get_job, insert_jobs, Applied, ClaimedJob, Finish, FinishStatus, HeldClaim, HeldEnd, HeldWrite,
    JobRow, NewJob, ProgressWrite, StartWrite, UpdateBatch,
};
pub use listen::Listen;
pub use migrate::{MIGRATIONS, MIGRATION_LOCK_ATTEMPTS, MIGRATION_LOCK_TIMEOUT};
pub use realtime::{
    is_lock_timeout, DbSnapshot, TableWatch, TrackedRead, WATCH_LOCK_ATTEMPTS, WATCH_LOCK_TIMEOUT,
};
pub use retention::Finished;
pub use schedules::*;
pub use transactions::{is_statement_timeout, set_statement_timeout};
pub use workflows::{
    cancel_workflow, deliver_event, get_workflow, insert_workflow, insert_workflows,
    load_workflows, lock_workflow, take_event, workflow_job_name, write_workflows, CancelOutcome,
    DeliverOutcome, Fence, HistoryEntry, LoadedWorkflow, NewWorkflow, Park, StepKind, StepStart,
    StepUpdate, WorkflowRow, WorkflowWrite, WriteOutcome, WORKFLOW_JOB_ATTEMPTS,
    WORKFLOW_JOB_PREFIX,
};

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{ConnectOptions, Connection};

use crate::error::RuntimeError;

/// Where a node's connections go, and how long work waits for one.
///
/// A node has three kinds of connections, so that request load cannot starve the work that
/// keeps jobs alive: the request pool (queries, mutations, live queries, enqueues, and the
/// queries job handlers make through `ctx.db()`), the internal pool (claims, the writer's
/// batches, lease renewal, the reaper, retention), and one LISTEN connection of its own.
///
/// Behind a connection pooler in transaction mode (PgBouncer `pool_mode = transaction`), the
/// two pools go through the pooler and what needs a session of its own goes to
/// [`session_url`](Self::session_url).
#[derive(Clone)]
pub struct DatabaseConfig {
    /// A direct connection (or a session-mode pooler) for what needs a session of its own:
    /// the LISTEN connection, migrations (a session advisory lock) and the workflow engine's
    /// two connections (a session setting). When set, the main URL is taken to be a
    /// transaction-mode pooler: its connections send no startup options (PgBouncer refuses
    /// them). `None`: everything uses the main URL.
    pub session_url: Option<String>,
    /// Size of the request pool.
    pub max_connections: u32,
    /// How long a request waits for a connection of the request pool. Short, so that a
    /// database that is down (or a pool that is saturated) is answered `503 unavailable` in
    /// seconds rather than after sqlx's default of 30 s.
    pub acquire_timeout: Duration,
    /// Size of the internal pool.
    pub internal_connections: u32,
    /// How long the worker's own work waits for an internal connection; it retries after.
    pub internal_acquire_timeout: Duration,
    /// How often the LISTEN connection is checked with a round trip (a half-open connection
    /// delivers nothing and reports no error by itself).
    pub listener_check_interval: Duration,
    /// How long that round trip, and each attempt to open the LISTEN connection, may take
    /// before the connection is given up and replaced.
    pub listener_check_timeout: Duration,
    /// How long one start (a job or workflow inserted by [`Forge::insert_job`] and the
    /// gateway's starts) may take in all: a connection, the insert, its answer. A connection
    /// opened before the database became unreachable (a partition: no reply, no reset) would
    /// otherwise wait for as long as the cut lasts. Then the start fails as the database being
    /// unreachable (`503` over HTTP) and that connection is closed, never lent again.
    ///
    /// [`Forge::insert_job`]: crate::Forge::insert_job
    pub start_timeout: Duration,
}

// By hand: the session URL may hold a password.
impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("session_url", &self.session_url.as_ref().map(|_| "…"))
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("internal_connections", &self.internal_connections)
            .field("internal_acquire_timeout", &self.internal_acquire_timeout)
            .field("listener_check_interval", &self.listener_check_interval)
            .field("listener_check_timeout", &self.listener_check_timeout)
            .field("start_timeout", &self.start_timeout)
            .finish()
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self {
            session_url: None,
            max_connections: 20,
            acquire_timeout: Duration::from_secs(2),
            internal_connections: 6,
            internal_acquire_timeout: Duration::from_secs(5),
            listener_check_interval: Duration::from_secs(5),
            listener_check_timeout: Duration::from_secs(3),
            start_timeout: Duration::from_secs(2),
        }
    }
}

/// The database behind one node: its pools and the operations on them.
#[derive(Clone, Debug)]
pub struct Store {
    /// What this store's operations run on: the request pool, or for the worker's view
    /// ([`Store::for_worker`]) the internal pool.
    pool: PgPool,
    /// The request pool, whatever the view.
    requests: PgPool,
    internal: PgPool,
    /// Shared and behind one pointer: a `Store` is cloned into every query's context.
    settings: std::sync::Arc<Settings>,
}

#[derive(Debug)]
struct Settings {
    /// For what needs a session of its own: the LISTEN connections, migrations, the engine.
    session: PgConnectOptions,
    config: DatabaseConfig,
}

impl Store {
    /// Wraps a pool brought by the caller, which then serves everything: requests and the
    /// worker's own work alike (no internal pool: the caller decided how many connections
    /// there are). The LISTEN connection uses its connect options.
    pub fn new(pool: PgPool) -> Self {
        let options = (*pool.connect_options()).clone();
        Self::assemble(pool.clone(), pool, options, DatabaseConfig::default())
    }

    /// Opens a request pool of `max_connections` on `url`, the rest as the defaults.
    pub async fn connect(url: &str, max_connections: u32) -> Result<Self, RuntimeError> {
        Self::connect_with(
            url,
            DatabaseConfig {
                max_connections,
                ..DatabaseConfig::default()
            },
        )
        .await
    }

    /// Opens the pools on `url` as `config` says. Fails if the database does not answer.
    pub async fn connect_with(url: &str, config: DatabaseConfig) -> Result<Self, RuntimeError> {
        let parse = |url: &str, field| {
            url.parse::<PgConnectOptions>()
                .map_err(|e| RuntimeError::Config {
                    field,
                    message: e.to_string(),
                })
        };
        let opts = parse(url, "database_url")?;
        let (opts, session) = match config.session_url.as_deref() {
            // A transaction-mode pooler forwards no startup options (PgBouncer closes the
            // connection on them) and keeps its own keepalives to the server.
            Some(session_url) => (
                opts.extra_float_digits(None),
                with_keepalive(parse(session_url, "database_session_url")?),
            ),
            None => {
                let opts = with_keepalive(opts);
                (opts.clone(), opts)
            }
        };
        let pool = PgPoolOptions::new()
            .max_connections(config.max_connections)
            .acquire_timeout(config.acquire_timeout)
            .connect_with(opts.clone().application_name("forge"))
            .await
            .map_err(|e| pooler_hint(e, config.session_url.is_some()))?;
        let internal = PgPoolOptions::new()
            .max_connections(config.internal_connections)
            .acquire_timeout(config.internal_acquire_timeout)
            .connect_lazy_with(opts.clone().application_name("forge-internal"));
        Ok(Self::assemble(pool, internal, session, config))
    }

    fn assemble(
        requests: PgPool,
        internal: PgPool,
        session: PgConnectOptions,
        config: DatabaseConfig,
    ) -> Self {
        Self {
            pool: requests.clone(),
            requests,
            internal,
            settings: std::sync::Arc::new(Settings { session, config }),
        }
    }

    /// A pool of its own for the workflow engine's writer (see `workflow::engine::writer`):
    /// two connections, one for loads and one for writes, opened when first used. Its
    /// sessions never scan a table sequentially: each engine statement touches a few rows
    /// per workflow by key, but after a burst of starts the planner's row counts lag behind
    /// the tables by up to a minute (until autovacuum analyzes them), and it then scanned the
    /// whole workflows and steps tables once per statement.
    pub(crate) fn engine_pool(&self) -> PgPool {
        let opts = self
            .settings
            .session
            .clone()
            .application_name("forge-engine")
            .options([("enable_seqscan", "off")]);
        PgPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(self.settings.config.internal_acquire_timeout)
            .connect_lazy_with(opts)
    }

    /// The same store whose operations run on the internal pool: what a worker uses, so that
    /// its claims, writes and lease renewals never wait behind requests. [`pool`](Self::pool)
    /// stays the request pool (job handlers' queries are the application's work).
    pub fn for_worker(&self) -> Self {
        Self {
            pool: self.internal.clone(),
            ..self.clone()
        }
    }

    /// The request pool: what queries, mutations and job handlers use.
    // Not the `pool` field on purpose: that one is what this view's operations run on.
    #[allow(clippy::misnamed_getters)]
    pub fn pool(&self) -> &PgPool {
        &self.requests
    }

    /// Size and idle connections of the request pool and the internal pool (the same pool
    /// twice for a store made with [`Store::new`]).
    pub fn pool_usage(&self) -> [(&'static str, u32, usize); 2] {
        [
            ("requests", self.requests.size(), self.requests.num_idle()),
            ("internal", self.internal.size(), self.internal.num_idle()),
        ]
    }

    pub fn config(&self) -> &DatabaseConfig {
        &self.settings.config
    }

    /// Closes every pool of this node (the LISTEN connection ends with the notifier).
    pub async fn close(&self) {
        self.requests.close().await;
        self.internal.close().await;
    }

    /// A connection of this view's pool for one start, and the deadline of that start:
    /// [`DatabaseConfig::start_timeout`] from now, for the connection and the answer together
    /// (see [`StartDeadline::answer`]).
    pub(crate) async fn start_connection(
        &self,
    ) -> Result<(sqlx::pool::PoolConnection<sqlx::Postgres>, StartDeadline), sqlx::Error> {
        let limit = self.settings.config.start_timeout;
        let deadline = StartDeadline {
            at: tokio::time::Instant::now() + limit,
            limit,
        };
        let conn = tokio::time::timeout_at(deadline.at, self.pool.acquire())
            .await
            .map_err(|_| sqlx::Error::PoolTimedOut)??;
        Ok((conn, deadline))
    }

    /// Applies the embedded migrations that are not applied yet, on a session connection
    /// of its own (their advisory lock belongs to a session).
    pub async fn migrate(&self) -> Result<(), RuntimeError> {
        let mut conn = self
            .settings
            .session
            .clone()
            .application_name("forge-migrate")
            .connect()
            .await?;
        let result = migrate::run(&mut conn).await;
        // The lock is released with the session even if this close fails.
        let _ = conn.close().await;
        result
    }

    /// True when the database answers and every embedded migration is applied.
    pub async fn is_ready(&self) -> bool {
        migrate::is_current(&self.pool).await.unwrap_or(false)
    }
}

/// When a start must have its answer (see [`Store::start_connection`]).
pub(crate) struct StartDeadline {
    at: tokio::time::Instant,
    limit: Duration,
}

impl StartDeadline {
    /// `work`'s answer, or `None` when the deadline came first (then [`settle`](Self::settle)).
    pub(crate) async fn wait<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, sqlx::Error>>,
    ) -> Option<Result<T, sqlx::Error>> {
        tokio::time::timeout_at(self.at, work).await.ok()
    }

    /// The answer [`wait`](Self::wait) got. Without one, the error is an I/O timeout (what a
    /// lost database gives, so callers treat it the same), and `conn`, whose state is unknown
    /// (an answer may still come), is closed rather than lent again. Whether the statement
    /// took effect is then unknown: an idempotency key makes a retry safe.
    pub(crate) fn settle<T>(
        &self,
        mut conn: sqlx::pool::PoolConnection<sqlx::Postgres>,
        answer: Option<Result<T, sqlx::Error>>,
    ) -> Result<T, sqlx::Error> {
        answer.unwrap_or_else(|| {
            conn.close_on_drop();
            Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "the database did not answer a start within {:?}",
                    self.limit
                ),
            )))
        })
    }
}

/// The SQLSTATE name of `e` when the database refused the data of a statement (class 22
/// "data exception", say a NUL in `jsonb` or a NOTIFY payload too long, or class 54 "program
/// limit exceeded"): the same statement would be refused again, so retrying it is useless.
/// `None` for every other error (a lost connection: try again).
pub fn refused_data(e: &sqlx::Error) -> Option<String> {
    let code = match e {
        sqlx::Error::Database(db) => db.code()?.into_owned(),
        // Values that could not even be encoded would fail again the same way.
        sqlx::Error::Encode(_) => return Some("encode_error".into()),
        _ => return None,
    };
    if !(code.starts_with("22") || code.starts_with("54")) {
        return None;
    }
    let name = match code.as_str() {
        "22001" => "string_data_right_truncation",
        "22003" => "numeric_value_out_of_range",
        "22021" => "character_not_in_repertoire",
        "22023" => "invalid_parameter_value",
        "22P02" => "invalid_text_representation",
        "22P05" => "untranslatable_character",
        "54000" => "program_limit_exceeded",
        "54001" => "statement_too_complex",
        _ => return Some(format!("SQLSTATE {code}")),
    };
    Some(name.into())
}

/// PgBouncer refuses the startup options of a direct connection with this; say what to do.
fn pooler_hint(e: sqlx::Error, has_session_url: bool) -> RuntimeError {
    let refused = e
        .as_database_error()
        .is_some_and(|d| d.message().starts_with("unsupported startup parameter"));
    if refused && !has_session_url {
        return RuntimeError::Config {
            field: "database_url",
            message: format!(
                "{e}: this is a connection pooler (PgBouncer); set `database.session_url` \
                 (DATABASE_SESSION_URL) to a direct connection"
            ),
        };
    }
    e.into()
}

/// PostgreSQL's own TCP keepalive settings, sent with every connection. sqlx offers no
/// client-side keepalive (the LISTEN connection is checked with round trips instead), but with
/// these the server drops the sessions of a node that vanished without a FIN (and releases
/// their locks and held claims) after about 40 s instead of the kernel's two hours.
fn with_keepalive(opts: PgConnectOptions) -> PgConnectOptions {
    opts.options([
        ("tcp_keepalives_idle", "10"),
        ("tcp_keepalives_interval", "5"),
        ("tcp_keepalives_count", "6"),
    ])
}
