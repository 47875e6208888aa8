//! Errors. [`Error`] is what user functions return; the other types are the runtime's own,
//! one `thiserror` enum per operation so callers can match on what went wrong.

use std::borrow::Cow;
use std::fmt;

use crate::status::{JobStatus, WorkflowStatus};

/// The error a job, workflow step, query or mutation returns.
///
/// Any `std::error::Error` converts into it with `?`, as a *retryable* failure: most failures
/// of background work (a network blip, a lock timeout) go away when tried again. Mark the ones
/// that will not with [`Error::fatal`] or [`ResultExt::fatal`]; a fatal error ends a job
/// `failed` at once instead of retrying it.
///
/// Like `anyhow::Error`, it deliberately does not implement `std::error::Error` itself, so that
/// the blanket `From` conversion can exist.
///
/// # What the caller of a query or mutation sees
/// Only a [`Refusal`] made with [`Error::unprocessable`], [`Error::invalid_arg`],
/// [`Error::conflict`], [`Error::not_found`] or [`Error::forbidden`] reaches the client with its
/// message. Every other error (a database error converted with `?`, [`Error::msg`]) is logged
/// under a correlation id and answered as an internal error, so internal text never leaks.
pub struct Error {
    kind: ErrorKind,
    message: String,
    source: Option<Box<dyn std::error::Error + Send + Sync + 'static>>,
    refusal: Option<Refusal>,
}

/// Why a query or mutation refused its call, in terms the client is meant to see: each is
/// answered with its own status and the error's message (see `docs/protocol.md`).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// 400 `invalid_args`: an argument is well-typed but not acceptable.
    InvalidArg {
        /// The argument, as the client spells it (camelCase).
        field: String,
    },
    /// 422 `unprocessable`: the input is well-formed but cannot be acted on.
    Unprocessable,
    /// 409 `conflict`: the current state does not allow it.
    Conflict,
    /// 404 `not_found`: what the call refers to does not exist (or is not the caller's).
    NotFound,
    /// 403 `forbidden`: the caller may not do this.
    Forbidden,
}

/// How the runtime treats an [`Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Try again after a backoff, while attempts remain.
    Retryable,
    /// Do not try again.
    Fatal,
    /// The work stopped because a cancel was requested (`ctx.check_cancelled()`).
    Cancelled,
}

impl Error {
    /// A retryable error with a message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: message.to_string(),
            source: None,
            refusal: None,
        }
    }

    /// A fatal (non-retryable) error with a message.
    pub fn fatal(message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Fatal,
            message: message.to_string(),
            source: None,
            refusal: None,
        }
    }

    /// The error `check_cancelled` returns once a cancel was requested.
    pub fn cancelled() -> Self {
        Self {
            kind: ErrorKind::Cancelled,
            message: "cancelled".into(),
            source: None,
            refusal: None,
        }
    }

    /// Refuses a query or mutation call with a message for the client: 422 `unprocessable`.
    /// In a job it is a fatal error.
    pub fn unprocessable(message: impl fmt::Display) -> Self {
        Self::refused(Refusal::Unprocessable, message)
    }

    /// Refuses a call because of the argument `field` (as the client spells it): 400
    /// `invalid_args` naming the field.
    pub fn invalid_arg(field: impl Into<String>, message: impl fmt::Display) -> Self {
        Self::refused(
            Refusal::InvalidArg {
                field: field.into(),
            },
            message,
        )
    }

    /// Refuses a call that conflicts with the current state: 409 `conflict`.
    pub fn conflict(message: impl fmt::Display) -> Self {
        Self::refused(Refusal::Conflict, message)
    }

    /// Refuses a call about something that does not exist: 404 `not_found`.
    pub fn not_found(message: impl fmt::Display) -> Self {
        Self::refused(Refusal::NotFound, message)
    }

    /// Refuses a call the caller may not make: 403 `forbidden`.
    pub fn forbidden(message: impl fmt::Display) -> Self {
        Self::refused(Refusal::Forbidden, message)
    }

    /// A fatal error whose message is meant for the client.
    pub fn refused(refusal: Refusal, message: impl fmt::Display) -> Self {
        Self {
            kind: ErrorKind::Fatal,
            message: message.to_string(),
            source: None,
            refusal: Some(refusal),
        }
    }

    /// Set when the error is meant for the client (see [`Error::refused`]).
    pub fn refusal(&self) -> Option<&Refusal> {
        self.refusal.as_ref()
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn is_retryable(&self) -> bool {
        self.kind == ErrorKind::Retryable
    }

    /// The same error, made fatal.
    pub fn into_fatal(mut self) -> Self {
        self.kind = ErrorKind::Fatal;
        self
    }

    /// The same error, made retryable.
    pub fn into_retryable(mut self) -> Self {
        self.kind = ErrorKind::Retryable;
        self
    }

    pub fn source_error(&self) -> Option<&(dyn std::error::Error + Send + Sync + 'static)> {
        self.source.as_deref()
    }

    /// The text a job's or workflow's `error` shows its followers. A database error passed on
    /// as it is (`?` on a sqlx error) is replaced by a stable sentence with its SQLSTATE: the
    /// driver's text names addresses, constraints and statements, which are for the operator's
    /// log, not for every browser following the job. A message of the handler's own is kept.
    /// `Cow::Owned` means the text was replaced (so the caller logs the original).
    pub fn shown(&self) -> Cow<'_, str> {
        // The engine shares one database error among the workflows of a failed batch.
        let Some(db) = self.source.as_deref().and_then(|s| {
            s.downcast_ref::<sqlx::Error>().or_else(|| {
                s.downcast_ref::<std::sync::Arc<sqlx::Error>>()
                    .map(|a| &**a)
            })
        }) else {
            return Cow::Borrowed(&self.message);
        };
        if self.message != db.to_string() {
            return Cow::Borrowed(&self.message);
        }
        Cow::Owned(match db {
            sqlx::Error::Database(d) => match d.code() {
                // Connection exceptions, and the server stopping, crashing or starting up.
                Some(code) if code.starts_with("08") || code.starts_with("57P0") => {
                    "the database could not be reached".into()
                }
                Some(code) => format!("a database statement failed (SQLSTATE {code})"),
                None => "a database statement failed".into(),
            },
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => "the database could not be reached".into(),
            sqlx::Error::RowNotFound => "a query found no row where one was expected".into(),
            _ => "a database operation failed".into(),
        })
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Error")
            .field("kind", &self.kind)
            .field("message", &self.message)
            .field("source", &self.source)
            .field("refusal", &self.refusal)
            .finish()
    }
}

impl<E> From<E> for Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(err: E) -> Self {
        Self {
            kind: ErrorKind::Retryable,
            message: err.to_string(),
            source: Some(Box::new(err)),
            refusal: None,
        }
    }
}

/// `Result` with [`Error`], the return type of user functions.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Marks the error of a `Result` as fatal or retryable: `fetch().await.fatal()?`.
pub trait ResultExt<T> {
    fn fatal(self) -> Result<T>;
    fn retryable(self) -> Result<T>;
}

impl<T, E: Into<Error>> ResultExt<T> for std::result::Result<T, E> {
    fn fatal(self) -> Result<T> {
        self.map_err(|e| e.into().into_fatal())
    }
    fn retryable(self) -> Result<T> {
        self.map_err(|e| e.into().into_retryable())
    }
}

/// Arguments that do not fit a function's parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid argument `{field}`: {message}")]
pub struct ArgsError {
    /// The offending field, as the client spells it (camelCase, dotted path for nested
    /// fields, `.` for the arguments object itself).
    pub field: String,
    pub message: String,
}

/// Why enqueueing failed. No job row exists after any of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// No `#[forge::job]` of that name is registered.
    #[error("unknown job `{0}`")]
    UnknownJob(String),
    /// The arguments do not fit the job's parameters.
    #[error(transparent)]
    InvalidArgs(#[from] ArgsError),
    /// An option given at enqueue time is out of range.
    #[error("invalid option `{field}`: {message}")]
    InvalidOption {
        field: &'static str,
        message: String,
    },
    /// The connection of the mutation is held by a value its `ctx.db()` returned; drop that
    /// first.
    #[error("{}", DbError::InUse)]
    ConnectionInUse,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Why a query or mutation could not have its connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DbError {
    /// A value an earlier `ctx.db()` returned is still alive: a call has one connection, and
    /// waiting for it would wait forever.
    #[error("the connection of this call is in use: drop the value an earlier `ctx.db()` returned before using the database again")]
    InUse,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Why a cancel request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CancelError {
    /// No such job, or one the caller may not see (the two are not told apart on purpose).
    #[error("job not found")]
    NotFound,
    /// The job already reached a terminal status.
    #[error("job already finished with status `{0}`")]
    AlreadyFinished(JobStatus),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// A `ctx.progress(...)` call with bad values.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ProgressError {
    #[error("progress must be a number from 0 to 100, got {0}")]
    OutOfRange(f64),
    #[error("the progress message {0}")]
    Unstorable(crate::value::Unstorable),
}

/// Errors of the runtime's set-up and store operations.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration {version} ({name}) failed: {source}")]
    Migration {
        version: i32,
        name: &'static str,
        source: sqlx::Error,
    },
    #[error(
        "migration {version} ({name}) could not take its locks within {timeout:?}, {attempts} \
         times: another transaction on forge's tables holds them (look for it in \
         pg_stat_activity); no node applied the migration"
    )]
    MigrationLocked {
        version: i32,
        name: &'static str,
        attempts: u32,
        timeout: std::time::Duration,
    },
    #[error("invalid configuration `{field}`: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
}

/// Why starting a workflow failed. No workflow (and no job) exists after any of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// No `#[forge::workflow]` of that name is registered.
    #[error("unknown workflow `{0}`")]
    UnknownWorkflow(String),
    /// The arguments do not fit the workflow's parameters.
    #[error(transparent)]
    InvalidArgs(#[from] ArgsError),
    /// The connection of the mutation is held by a value its `ctx.db()` returned; drop that
    /// first.
    #[error("{}", DbError::InUse)]
    ConnectionInUse,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Why a workflow cancel request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkflowCancelError {
    /// No such workflow, or one the caller may not see (the two are not told apart on
    /// purpose).
    #[error("workflow not found")]
    NotFound,
    /// The workflow already reached a terminal status.
    #[error("workflow already finished with status `{0}`")]
    AlreadyFinished(WorkflowStatus),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// Why an event could not be delivered to a workflow. Nothing is stored after any of these.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// No workflow has that id.
    #[error("workflow not found")]
    NotFound,
    /// The workflow already ended; nothing would ever wait for the event.
    #[error("workflow already finished with status `{0}`")]
    AlreadyFinished(WorkflowStatus),
    /// Event names are not empty.
    #[error("an event name cannot be empty")]
    EmptyName,
    /// The payload cannot be stored (see `docs/operations.md`).
    #[error("the event payload {0}")]
    Unstorable(crate::value::Unstorable),
    /// The connection of the mutation is held by a value its `ctx.db()` returned; drop that
    /// first.
    #[error("{}", DbError::InUse)]
    ConnectionInUse,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

/// How `ctx.wait_for_event(..)` can end other than with the event. Both are the workflow's to
/// handle; `?` turns them into a failure of the workflow.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// No event of that name arrived in time.
    #[error("timed out after {timeout:?} waiting for event `{event}`")]
    TimedOut {
        event: String,
        timeout: std::time::Duration,
    },
    /// The event arrived, but its payload does not fit the type waited for.
    #[error("the payload of event `{event}` does not fit: {message}")]
    InvalidPayload { event: String, message: String },
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn a_driver_error_passed_on_is_shown_as_a_stable_sentence() {
        let reset = std::io::Error::new(
            std::io::ErrorKind::ConnectionReset,
            "Connection reset by peer",
        );
        let e = Error::from(sqlx::Error::Io(reset));
        assert!(e.to_string().contains("Connection reset by peer"), "{e}");
        assert_eq!(e.shown(), "the database could not be reached");
        assert_eq!(
            Error::from(sqlx::Error::PoolTimedOut).shown(),
            "the database could not be reached"
        );
        assert_eq!(
            Error::from(sqlx::Error::RowNotFound).shown(),
            "a query found no row where one was expected"
        );
        assert_eq!(Error::msg("disk full").shown(), "disk full");
        let io = Error::from(std::io::Error::other("not a database"));
        assert_eq!(io.shown(), "not a database");
    }
}
