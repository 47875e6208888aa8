//! Queries and mutations: the functions clients call through the gateway, and what they see of
//! the runtime.
//!
//! * A `#[forge::query]` reads. Its statements run in one read-only transaction
//!   ([`QueryContext::db`]), so PostgreSQL itself refuses a write and every statement sees the
//!   same data.
//! * A `#[forge::mutation]` writes, in one transaction ([`MutationContext::db`]) that commits
//!   only if the function returns `Ok`. Jobs it enqueues ([`MutationContext::enqueue`]) are
//!   part of that transaction: a mutation that fails leaves no job behind.
//!
//! The transaction is opened on the first [`db`](QueryContext::db) call, so a function that
//! never touches the database costs no round trip.

use std::time::Duration;

use sqlx::{PgConnection, Postgres, Transaction};
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard};
use uuid::Uuid;

use crate::error::{DbError, EnqueueError};
use crate::queue::{self, JobRequest};
use crate::store::{self, Store};

/// The signed-in user a call was made by: the `sub` and `roles` of their token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    pub roles: Vec<String>,
}

impl User {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// The connection of a query or mutation, borrowed from its context: pass `&mut *conn` to
/// sqlx (`sqlx::query(..).fetch_all(&mut *ctx.db().await?)`).
pub type DbConn<'a> = MappedMutexGuard<'a, PgConnection>;

/// Where the statements of one call run.
enum Conn<'c> {
    /// Not opened yet: opened on first use, in this store.
    Unopened(Store),
    Open(Transaction<'static, Postgres>),
    /// A connection the caller manages (a realtime query subscription runs its query inside
    /// a transaction of its own).
    Borrowed(&'c mut PgConnection),
}

struct Db<'c> {
    read_only: bool,
    statement_timeout: Option<Duration>,
    conn: Mutex<Conn<'c>>,
}

impl<'c> Db<'c> {
    fn new(read_only: bool, conn: Conn<'c>) -> Self {
        Self {
            read_only,
            statement_timeout: None,
            conn: Mutex::new(conn),
        }
    }

    async fn conn(&self) -> Result<DbConn<'_>, DbError> {
        let mut guard = self.conn.try_lock().map_err(|_| DbError::InUse)?;
        if let Conn::Unopened(store) = &*guard {
            let mut tx = if self.read_only {
                store.begin_read_only().await?
            } else {
                store.begin().await?
            };
            if let Some(timeout) = self.statement_timeout {
                store::set_statement_timeout(&mut tx, timeout).await?;
            }
            *guard = Conn::Open(tx);
        }
        Ok(MutexGuard::map(guard, |c| match c {
            Conn::Open(tx) => &mut **tx,
            Conn::Borrowed(conn) => &mut **conn,
            Conn::Unopened(_) => unreachable!("opened above"),
        }))
    }

    /// Commits the transaction this context opened, if any.
    async fn commit(self) -> Result<(), sqlx::Error> {
        match self.conn.into_inner() {
            Conn::Open(tx) => tx.commit().await,
            Conn::Unopened(_) | Conn::Borrowed(_) => Ok(()),
        }
    }

    /// Rolls back the transaction this context opened, if any.
    async fn rollback(self) -> Result<(), sqlx::Error> {
        match self.conn.into_inner() {
            Conn::Open(tx) => tx.rollback().await,
            Conn::Unopened(_) | Conn::Borrowed(_) => Ok(()),
        }
    }
}

/// The first argument of every `#[forge::query]`.
pub struct QueryContext<'c> {
    db: Db<'c>,
    user: Option<User>,
}

impl std::fmt::Debug for QueryContext<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QueryContext")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl QueryContext<'static> {
    /// A context whose statements run in a read-only transaction of `store`'s pool, opened on
    /// first use. End it with [`finish`](Self::finish).
    pub fn new(store: Store, user: Option<User>) -> Self {
        Self {
            db: Db::new(true, Conn::Unopened(store)),
            user,
        }
    }

    /// Has PostgreSQL cancel any statement of the query that runs longer than `timeout`
    /// (`statement_timeout`); the statement then fails with SQLSTATE 57014.
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.db.statement_timeout = Some(timeout);
        self
    }
}

impl<'c> QueryContext<'c> {
    /// A context whose statements run on `conn`, which the caller opened (and ends).
    pub fn on_connection(conn: &'c mut PgConnection, user: Option<User>) -> Self {
        Self {
            db: Db::new(true, Conn::Borrowed(conn)),
            user,
        }
    }

    /// The query's connection, inside its read-only transaction.
    pub async fn db(&self) -> Result<DbConn<'_>, DbError> {
        self.db.conn().await
    }

    /// The signed-in caller, if any. Always set for functions that are not `public`.
    pub fn user(&self) -> Option<&User> {
        self.user.as_ref()
    }

    /// Ends the read-only transaction, if one was opened.
    pub async fn finish(self) -> Result<(), sqlx::Error> {
        self.db.rollback().await
    }
}

/// The first argument of every `#[forge::mutation]`.
pub struct MutationContext {
    db: Db<'static>,
    user: Option<User>,
}

impl std::fmt::Debug for MutationContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MutationContext")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

impl MutationContext {
    /// A context whose statements run in one transaction of `store`'s pool, opened on first
    /// use. End it with [`commit`](Self::commit) or [`rollback`](Self::rollback); dropping it
    /// rolls back.
    pub fn new(store: Store, user: Option<User>) -> Self {
        Self {
            db: Db::new(false, Conn::Unopened(store)),
            user,
        }
    }

    /// Has PostgreSQL cancel any statement of the mutation that runs longer than `timeout`
    /// (`statement_timeout`); the statement then fails with SQLSTATE 57014 and the mutation's
    /// writes are rolled back.
    pub fn with_statement_timeout(mut self, timeout: Duration) -> Self {
        self.db.statement_timeout = Some(timeout);
        self
    }

    /// The mutation's connection, inside its transaction.
    pub async fn db(&self) -> Result<DbConn<'_>, DbError> {
        self.db.conn().await
    }

    /// The signed-in caller, if any. Always set for functions that are not `public`.
    pub fn user(&self) -> Option<&User> {
        self.user.as_ref()
    }

    /// Enqueues a job inside the mutation's transaction: it exists, and runs, only if the
    /// mutation succeeds. Unless the request names an owner, the caller owns it.
    pub async fn enqueue<O>(&self, req: JobRequest<O>) -> Result<Uuid, EnqueueError> {
        let req = req.or_owner(self.user.as_ref().map(|u| u.id.as_str()));
        let mut conn = self.enqueue_conn().await?;
        queue::enqueue(&mut conn, req).await
    }

    /// Enqueues many jobs inside the mutation's transaction, as [`enqueue`](Self::enqueue)
    /// does.
    pub async fn enqueue_many<O>(
        &self,
        reqs: impl IntoIterator<Item = JobRequest<O>>,
    ) -> Result<Vec<Uuid>, EnqueueError> {
        let owner = self.user.as_ref().map(|u| u.id.as_str());
        let reqs: Vec<_> = reqs.into_iter().map(|r| r.or_owner(owner)).collect();
        let mut conn = self.enqueue_conn().await?;
        queue::enqueue_many(&mut conn, reqs).await
    }

    async fn enqueue_conn(&self) -> Result<DbConn<'_>, EnqueueError> {
        self.db().await.map_err(|e| match e {
            DbError::InUse => EnqueueError::ConnectionInUse,
            DbError::Database(e) => EnqueueError::Database(e),
        })
    }

    /// Commits what the mutation wrote.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.db.commit().await
    }

    /// Discards what the mutation wrote.
    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.db.rollback().await
    }
}
