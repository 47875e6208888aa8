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
use std::sync::{Arc, Weak};

use bytes::Bytes;
use forge_runtime::store::TableWatch;
use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgConnection;
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::feed::json_string;
use super::hub::Hub;
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

struct QueryGroup {
    /// Tells this group from a later one with the same key.
    id: u64,
    subs: HashMap<(Uuid, SubId), QuerySub>,
    /// The oids the changes of the tables the last successful run read are announced under.
    tables: Vec<u32>,
    latest: watch::Sender<Latest>,
    /// Wakes the group's runner.
    wake: Arc<Notify>,
}

/// The query part of the hub's index.
#[derive(Default)]
pub(crate) struct QueryIndex {
    groups: HashMap<Arc<QueryKey>, QueryGroup>,
    next_group: u64,
    /// Groups by the oid their tables' changes are announced under.
    by_table: HashMap<u32, HashSet<Arc<QueryKey>>>,
    /// Table changes are numbered as they arrive; the number of each table's latest change.
    change_seq: u64,
    last_change: HashMap<u32, u64>,
    /// Tables of Forge's own schema that queries read: oid to name.
    forge_tables: HashMap<u32, String>,
    /// How each table read so far is watched, so each is set up once.
    watched: HashMap<u32, Option<u32>>,
}

impl QueryIndex {
    /// Registers `sub` on the group of `key`, creating the group and its runner (which runs
    /// the query at once) if there is none. Returns the group's outcomes.
    pub(crate) fn add_sub(
        &mut self,
        hub: &Arc<Hub>,
        key: &Arc<QueryKey>,
        call: Arc<dyn LiveQuery>,
        session: &Arc<Session>,
        sub: &SubId,
    ) -> watch::Receiver<Latest> {
        if !self.groups.contains_key(key) {
            self.next_group += 1;
            let id = self.next_group;
            let (latest, _) = watch::channel(None);
            let wake = Arc::new(Notify::new());
            wake.notify_one();
            tokio::spawn(run_group(
                Arc::downgrade(hub),
                key.clone(),
                id,
                call,
                wake.clone(),
            ));
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

    fn unlink(&mut self, table: u32, key: &Arc<QueryKey>) {
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

/// Runs a group's query each time it is woken, until the group is gone.
async fn run_group(
    hub: Weak<Hub>,
    key: Arc<QueryKey>,
    id: u64,
    call: Arc<dyn LiveQuery>,
    wake: Arc<Notify>,
) {
    let mut runs = 0u64;
    loop {
        wake.notified().await;
        if runs > 0 {
            // A burst of changes is served by one run.
            let Some(debounce) = hub.upgrade().map(|h| h.config().query_debounce) else {
                return;
            };
            tokio::time::sleep(debounce).await;
        }
        let Some(h) = hub.upgrade() else { return };
        let Some(seq0) = h.with_queries(|q| {
            let alive = q.groups.get(&key).is_some_and(|g| g.id == id);
            alive.then_some(q.change_seq)
        }) else {
            return;
        };
        runs += 1;
        let (outcome, tables, installed) = match run_tracked(&h, &*call).await {
            Ok((data, read)) => match watch_tables(&h, &read).await {
                Ok((tables, installed)) => (Ok(Arc::from(data.to_string())), tables, installed),
                Err(failure) => (Err(failure), Vec::new(), false),
            },
            Err(failure) => (Err(failure), Vec::new(), false),
        };
        let alive = h.with_queries(|q| {
            let Some(group) = q.groups.get_mut(&key).filter(|g| g.id == id) else {
                return false;
            };
            let changed = match &*group.latest.borrow() {
                Some((_, previous)) => *previous != outcome,
                None => true,
            };
            if changed {
                push(group, &outcome);
            }
            group.latest.send_replace(Some((runs, outcome.clone())));
            if outcome.is_err() {
                // Keep following the tables of the last good run: a change may fix it.
                return true;
            }
            let old = std::mem::replace(&mut group.tables, tables.clone());
            let missed = installed
                || tables
                    .iter()
                    .any(|t| q.last_change.get(t).is_some_and(|&s| s > seq0));
            if missed {
                wake.notify_one();
            }
            for t in old.iter().filter(|t| !tables.contains(t)) {
                q.unlink(*t, &key);
            }
            for t in &tables {
                q.by_table.entry(*t).or_default().insert(key.clone());
            }
            true
        });
        if !alive {
            return;
        }
    }
}

/// Pushes an outcome to the subscriptions of a group. The first outcome is not pushed: the
/// subscribe calls that wait for it answer with it.
fn push(group: &QueryGroup, outcome: &Outcome) {
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

/// Runs a query in a tracked read; returns its result and the oids of the tables it read.
async fn run_tracked(hub: &Hub, query: &dyn LiveQuery) -> Result<(Value, Vec<u32>), ApiError> {
    let mut read = hub
        .store()
        .begin_tracked_read()
        .await
        .map_err(ApiError::internal)?;
    let data = query.run(read.conn()).await?;
    let tables = read.finish().await.map_err(ApiError::internal)?;
    Ok((data, tables))
}

/// Makes sure every table read is watched. Returns the oids to follow and whether a trigger
/// had to be installed.
async fn watch_tables(hub: &Arc<Hub>, read: &[u32]) -> Result<(Vec<u32>, bool), ApiError> {
    let mut follow = Vec::with_capacity(read.len());
    let mut installed = false;
    for &oid in read {
        let watched = match hub.with_queries(|q| q.watched.get(&oid).copied()) {
            Some(w) => w,
            None => {
                let w = match hub.store().watch_table(oid).await {
                    Ok(TableWatch::Trigger {
                        announced_as,
                        created,
                    }) => {
                        installed |= created;
                        Some(announced_as)
                    }
                    Ok(TableWatch::Forge { name }) => {
                        hub.with_queries(|q| q.forge_tables.insert(oid, name));
                        Some(oid)
                    }
                    Ok(TableWatch::Unwatchable { name }) => {
                        tracing::warn!(
                            table = %name,
                            "a subscribed query reads a relation whose changes cannot be \
                             watched; changing it does not re-run the query"
                        );
                        None
                    }
                    Ok(other) => {
                        tracing::warn!(?other, "unknown kind of table watch");
                        None
                    }
                    Err(e) => {
                        return Err(ApiError::internal(format!(
                            "cannot watch table {oid}, which a subscribed query reads, for \
                             changes (creating a trigger on it needs its ownership): {e}"
                        )));
                    }
                };
                hub.with_queries(|q| q.watched.insert(oid, w));
                w
            }
        };
        if let Some(announced) = watched {
            if !follow.contains(&announced) {
                follow.push(announced);
            }
        }
    }
    Ok((follow, installed))
}
