//! Query subscriptions: a `#[forge::query]` whose result is pushed again whenever the data it
//! read changes.
//!
//! # Which tables a query read
//! The runtime finds out, so nobody has to declare it (and nobody can forget a table). A
//! subscribed query runs inside a transaction on one connection, between two readings of
//! PostgreSQL's per-transaction scan counters (`pg_stat_xact_user_tables`): every table whose
//! sequential or index scan count grew was read, including tables behind views and inside SQL
//! functions. Each such table gets a statement-level trigger that announces its changes on
//! `forge_table_changes` (installed on first use; that needs the privilege to create triggers
//! on the table, normally ownership). Tables of Forge's own schema get no trigger: `forge.jobs`
//! changes are seen on the job channels, the workflow tables' on the workflow channel.
//! Materialized views cannot be watched (they change only on `REFRESH`); that is logged.
//!
//! # When it runs again
//! A change of a table re-runs every query group that read it, after
//! [`query_debounce`](super::RealtimeConfig::query_debounce): the changes within that time are
//! served by one run, and a change during a run causes one more run after it. A result is
//! pushed only when its JSON differs from the previous one. Subscriptions to the same query
//! with the same arguments by the same caller share one group, and so one run.
//!
//! # Nothing missed between the run and the watch
//! The tables are known only after a run, so a change could fall between the run's snapshot
//! and the moment the group is registered on its tables. Two rules close that gap: a run that
//! had to install a trigger is followed by another run (a change before the trigger existed was
//! never announced), and a run is followed by another when any table it read was announced
//! changed since the run started (the hub numbers table changes as they arrive).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgConnection;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::feed::json_string;
use super::session::{Session, SubId};
use crate::auth::Identity;
use crate::error::ApiError;

/// A query ready to run for one caller: a `#[forge::query]` with its arguments and context.
pub trait LiveQuery: Send + Sync + 'static {
    /// Runs the query on `conn`, inside the read-only transaction that tracks which tables it
    /// reads. The query must read through `conn` only.
    fn run<'a>(&'a self, conn: &'a mut PgConnection) -> BoxFuture<'a, Result<Value, ApiError>>;
}

/// Turns the `fn` and `args` of a subscribe call into a [`LiveQuery`]: looks the function up,
/// checks that the caller may call it, and checks the arguments. Its error is the answer to
/// the call (`not_found`, `forbidden`, `invalid_args`, ...).
pub trait QueryResolver: Send + Sync + 'static {
    fn resolve(
        &self,
        function: &str,
        args: Value,
        caller: Option<&Identity>,
    ) -> Result<Arc<dyn LiveQuery>, ApiError>;
}

/// What identifies a query group: the function, its arguments and its caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct QueryKey {
    pub(crate) function: String,
    /// The arguments as canonical JSON (object keys sorted).
    pub(crate) args: String,
    /// Everything about the caller a query can see, canonically encoded.
    pub(crate) caller: String,
}

/// The outcome of a run: the result as JSON text, or the failure.
pub(crate) type Outcome = Result<Arc<str>, ApiError>;

/// The latest outcome of a group and its number (1 for the first run).
pub(crate) type Latest = Option<(u64, Outcome)>;

struct QuerySub {
    session: Arc<Session>,
    sub_json: Arc<str>,
}

pub(super) struct QueryGroup {
    /// Tells this group from a later one with the same key.
    pub(super) id: u64,
    subs: HashMap<(Uuid, SubId), QuerySub>,
    /// The oids the changes of the tables the last successful run read are announced under.
    pub(super) tables: Vec<u32>,
    pub(super) latest: watch::Sender<Latest>,
    /// Wakes the group's runner.
    wake: Arc<Notify>,
}

/// The query part of the hub's index.
#[derive(Default)]
pub(crate) struct QueryIndex {
    pub(super) groups: HashMap<Arc<QueryKey>, QueryGroup>,
    next_group: u64,
    /// Groups by the oid their tables' changes are announced under.
    pub(super) by_table: HashMap<u32, HashSet<Arc<QueryKey>>>,
    /// Table changes are numbered as they arrive; the number of each table's latest change.
    pub(super) change_seq: u64,
    pub(super) last_change: HashMap<u32, u64>,
    /// Tables of Forge's own schema that queries read: oid to name.
    pub(super) forge_tables: HashMap<u32, String>,
    /// How each table read so far is watched, so each is set up once.
    pub(super) watched: HashMap<u32, Option<u32>>,
}

impl QueryIndex {
    /// Registers `sub` on the group of `key`, creating the group and its runner (which runs
    /// the query at once) if there is none. Returns the group's outcomes.
    pub(crate) fn add_sub(
        &mut self,
        key: &Arc<QueryKey>,
        session: &Arc<Session>,
        sub: &SubId,
        start_runner: impl FnOnce(u64, Arc<Notify>),
    ) -> watch::Receiver<Latest> {
        if !self.groups.contains_key(key) {
            self.next_group += 1;
            let id = self.next_group;
            let (latest, _) = watch::channel(None);
            let wake = Arc::new(Notify::new());
            wake.notify_one();
            start_runner(id, wake.clone());
            self.groups.insert(
                key.clone(),
                QueryGroup {
                    id,
                    subs: HashMap::new(),
                    tables: Vec::new(),
                    latest,
                    wake,
                },
            );
        }
        let group = self.groups.get_mut(key).expect("inserted above");
        group.subs.insert(
            (session.id, sub.clone()),
            QuerySub {
                session: session.clone(),
                sub_json: json_string(sub),
            },
        );
        group.latest.subscribe()
    }

    /// Asks the group of `key` for another run (after a failed one).
    pub(crate) fn rerun(&self, key: &QueryKey) {
        if let Some(group) = self.groups.get(key) {
            group.wake.notify_one();
        }
    }

    pub(crate) fn remove_sub(&mut self, key: &Arc<QueryKey>, session: Uuid, sub: &SubId) {
        let Some(group) = self.groups.get_mut(key) else {
            return;
        };
        group.subs.remove(&(session, sub.clone()));
        if group.subs.is_empty() {
            let group = self.groups.remove(key).expect("present");
            for t in &group.tables {
                self.unlink(*t, key);
            }
            // Its runner finds the group gone when it wakes, and stops.
            group.wake.notify_one();
        }
    }

    pub(super) fn unlink(&mut self, table: u32, key: &Arc<QueryKey>) {
        if let Some(keys) = self.by_table.get_mut(&table) {
            keys.remove(key);
            if keys.is_empty() {
                self.by_table.remove(&table);
            }
        }
    }

    /// A change of table `oid` was announced: every group that read it runs again.
    pub(crate) fn table_changed(&mut self, oid: u32) {
        self.change_seq += 1;
        self.last_change.insert(oid, self.change_seq);
        for key in self.by_table.get(&oid).into_iter().flatten() {
            if let Some(group) = self.groups.get(key) {
                group.wake.notify_one();
            }
        }
    }

    /// The Forge tables (by oid) that the given channel's notifications change: `forge.jobs`
    /// for the job channels, the others for the workflow channel.
    pub(crate) fn forge_tables(&self, jobs: bool) -> Vec<u32> {
        self.forge_tables
            .iter()
            .filter(|(_, name)| (name.as_str() == "forge.jobs") == jobs)
            .map(|(oid, _)| *oid)
            .collect()
    }

    /// After a gap in the notifications every group runs again: a change may have been
    /// missed.
    pub(crate) fn rerun_all(&self) {
        for group in self.groups.values() {
            group.wake.notify_one();
        }
    }

    pub(crate) fn group_count(&self) -> usize {
        self.groups.len()
    }
}

/// Pushes an outcome to the subscriptions of a group. The first outcome is not pushed: the
/// subscribe calls that wait for it answer with it.
pub(super) fn push(group: &QueryGroup, outcome: &Outcome) {
    if group.latest.borrow().is_none() {
        return;
    }
    for ((_, sub), qs) in &group.subs {
        let frame = match outcome {
            Ok(json) => format!(
                "event: query\ndata: {{\"subscriptionId\":{},\"data\":{json}}}\n\n",
                qs.sub_json
            ),
            Err(e) => format!(
                "event: query\ndata: {{\"subscriptionId\":{},\"error\":{}}}\n\n",
                qs.sub_json,
                e.body()
            ),
        };
        qs.session.outbox.push(sub, 0, Bytes::from(frame));
    }
}
