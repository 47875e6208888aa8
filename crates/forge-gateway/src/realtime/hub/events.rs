//! The hub's event loop: the notifier's events, in commit order, fanned out to the
//! subscriptions.

use std::sync::{Arc, Weak};
use std::time::Duration;

use forge_runtime::notifier::Event;
use forge_runtime::publish::{JobUpdate, WorkflowUpdates};
use forge_runtime::store::DbSnapshot;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::followed::{Followed, Read};
use super::Hub;
use crate::realtime::feed::{accept, apply_read};
use crate::realtime::jobs::JobChange;
use crate::realtime::workflows::WorkflowChange;

/// Handles the notifier's events, in order, while the hub exists.
pub(super) async fn run(hub: Weak<Hub>, mut events: broadcast::Receiver<Event>) {
    loop {
        let event = events.recv().await;
        let Some(hub) = hub.upgrade() else {
            return;
        };
        match event {
            Ok(Event::JobUpdates(updates)) => hub.job_updates(&updates),
            Ok(Event::JobsAvailable) => {
                let jobs = hub.with_queries(|q| q.forge_tables(true));
                hub.tables_changed(jobs);
            }
            Ok(Event::WorkflowUpdates(updates)) => hub.workflow_updates(&updates),
            Ok(Event::TableChanged(oid)) => hub.tables_changed([oid]),
            Ok(Event::Other { .. }) => {}
            Ok(Event::Reconnected) => hub.resync().await,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "realtime hub fell behind its notifications");
                hub.resync().await;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Hub {
    /// Announced table changes (`forge_table_changes`, or Forge's own channels for its
    /// tables) re-run the query groups that read them.
    pub(super) fn tables_changed(&self, oids: impl IntoIterator<Item = u32>) {
        let mut index = self.lock();
        for oid in oids {
            index.queries.table_changed(oid);
        }
    }

    /// Fans job updates out. Called by [`run`] in commit order.
    pub(super) fn job_updates(&self, updates: &[JobUpdate]) {
        let mut to_fetch = Vec::new();
        let mut index = self.lock();
        for oid in index.queries.forge_tables(true) {
            index.queries.table_changed(oid);
        }
        for u in updates {
            let Some(topic) = index.jobs.get_mut(&u.job_id) else {
                continue;
            };
            if accept(topic, JobChange::from_update(u)) {
                to_fetch.push(u.job_id);
            }
        }
        drop(index);
        for id in to_fetch {
            // Fails only when the fetcher has stopped, which happens when the hub is dropped.
            let _ = self.fetch_jobs.send(id);
        }
    }

    /// Fans workflow updates (one `forge_workflow_updates` payload) out. Called by [`run`] in
    /// commit order.
    pub(super) fn workflow_updates(&self, updates: &WorkflowUpdates) {
        let mut to_fetch = Vec::new();
        let mut index = self.lock();
        for oid in index.queries.forge_tables(false) {
            index.queries.table_changed(oid);
        }
        if index.workflows.is_empty() {
            return;
        }
        let changes = match updates.decode() {
            Ok(updates) => updates.into_iter().map(WorkflowChange::from_update),
            Err(e) => {
                tracing::error!(error = %e, "unreadable workflow update payload");
                return;
            }
        };
        for change in changes {
            let id = change.id();
            let Some(topic) = index.workflows.get_mut(&id) else {
                continue;
            };
            if accept(topic, change) {
                to_fetch.push(id);
            }
        }
        drop(index);
        for id in to_fetch {
            let _ = self.fetch_workflows.send(id);
        }
    }

    /// Delivers changes that waited for their rows, and whatever queued behind them. Returns
    /// the ids to read again.
    pub(super) fn rows_fetched<C: Followed>(
        &self,
        ids: &[Uuid],
        snapshot: DbSnapshot,
        reads: Vec<Read<C>>,
    ) -> Vec<Uuid> {
        C::rows_fetched(&mut self.lock(), ids, snapshot, reads)
    }

    /// After the LISTEN connection was lost (or this node fell behind its notifications):
    /// re-reads every followed job and workflow and pushes what changed meanwhile.
    pub(super) async fn resync(&self) {
        self.lock().queries.rerun_all();
        self.resync_kind::<JobChange>("jobs").await;
        self.resync_kind::<WorkflowChange>("workflows").await;
    }

    pub(super) async fn resync_kind<C: Followed>(&self, what: &str) {
        let ids: Vec<Uuid> = C::topics(&mut self.lock()).keys().copied().collect();
        if ids.is_empty() {
            return;
        }
        let mut delay = Duration::from_millis(50);
        let (snapshot, reads) = loop {
            match C::read(&self.store, &ids).await {
                Ok(read) => break read,
                Err(e) => {
                    tracing::warn!(error = %e, what, "re-reading followed items failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let snapshot = Arc::new(snapshot);
        let mut index = self.lock();
        for read in &reads {
            if let Some(topic) = C::topics(&mut index).get_mut(&read.id) {
                apply_read(topic, &snapshot, read.owner.as_deref(), &read.change);
            }
        }
        tracing::info!(
            count = ids.len(),
            what,
            "re-read followed items after a notification gap"
        );
    }
}
