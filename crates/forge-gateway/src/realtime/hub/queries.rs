//! The hub's side of query subscriptions: each query group's runner, which runs the query in
//! a tracked read, watches the tables it read, and pushes changed results.

use std::sync::{Arc, Weak};

use forge_runtime::store::{self, TableWatch};
use serde_json::Value;
use tokio::sync::Notify;

use super::Hub;
use crate::error::ApiError;
use crate::realtime::queries::{push, LiveQuery, QueryKey};

/// Runs a group's query each time it is woken, until the group is gone.
pub(super) async fn run_group(
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

impl Hub {
    /// Runs `query` once, for its result only (a subscription forwarded to the node that holds
    /// its session, whose result was too large to come back with the answer).
    pub(crate) async fn run_once(&self, query: &dyn LiveQuery) -> Result<Value, ApiError> {
        run_tracked(self, query).await.map(|(data, _)| data)
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
                    Err(e) if store::is_lock_timeout(&e) => {
                        tracing::warn!(
                            oid,
                            "a subscribed query reads a table another transaction holds a \
                             lock on; its change trigger could not be created in time"
                        );
                        return Err(ApiError::busy(
                            "a table this query reads is locked by another transaction; try \
                             again shortly",
                        ));
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
