//! What the hub follows: jobs and workflows, how each is read, and the fetcher that reads
//! the rows of changes whose notification left part of the state out.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use forge_runtime::store::{DbSnapshot, Store};
use forge_runtime::{JobState, WorkflowState};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::index::{Index, Topic};
use super::Hub;
use crate::realtime::feed::{
    apply_read, deliver, drain, json_string, Change, Feed, FeedTopic, Sub,
};
use crate::realtime::jobs::JobChange;
use crate::realtime::session::{Session, SubId};
use crate::realtime::workflows::WorkflowChange;

/// A job or workflow as read from its table, with the owner it is checked against.
pub(crate) struct Read<C> {
    pub(super) id: Uuid,
    pub(super) owner: Option<String>,
    pub(super) change: C,
}

/// What the hub needs to know of a kind of followed thing: jobs and workflows.
pub(crate) trait Followed: Change + Send + Sync + 'static {
    /// The state a subscribe call answers with.
    type State;

    fn topic(id: Uuid) -> Topic;

    fn topics(index: &mut Index) -> &mut HashMap<Uuid, FeedTopic<Self>>;

    /// Reads `ids` (those that exist) with the snapshot of the read.
    fn read(
        store: &Store,
        ids: &[Uuid],
    ) -> impl Future<Output = Result<(DbSnapshot, Vec<Read<Self>>), sqlx::Error>> + Send;

    fn into_state(self) -> Self::State;

    /// Completes the waiting changes of the topics `ids` with `reads`, made after each of
    /// their front changes arrived. Returns the ids to read again.
    fn rows_fetched(
        index: &mut Index,
        ids: &[Uuid],
        snapshot: DbSnapshot,
        reads: Vec<Read<Self>>,
    ) -> Vec<Uuid>;
}

impl Index {
    pub(super) fn add_sub<C: Followed>(
        &mut self,
        id: Uuid,
        session: &Arc<Session>,
        sub: &SubId,
        feed: Feed<C>,
    ) {
        C::topics(self).entry(id).or_default().subs.insert(
            (session.id, sub.clone()),
            Sub {
                session: session.clone(),
                sub_json: json_string(sub),
                feed,
            },
        );
    }
}

impl Followed for JobChange {
    type State = JobState;

    fn topic(id: Uuid) -> Topic {
        Topic::Job(id)
    }

    fn topics(index: &mut Index) -> &mut HashMap<Uuid, FeedTopic<Self>> {
        &mut index.jobs
    }

    async fn read(
        store: &Store,
        ids: &[Uuid],
    ) -> Result<(DbSnapshot, Vec<Read<Self>>), sqlx::Error> {
        let (snapshot, rows) = store.get_jobs_with_snapshot(ids).await?;
        let reads = rows
            .iter()
            .map(|row| Read {
                id: row.id,
                owner: row.owner.clone(),
                change: JobChange::from_row(row),
            })
            .collect();
        Ok((snapshot, reads))
    }

    fn into_state(self) -> JobState {
        self.state
    }

    /// A job's change is completed with the output and error of its row, and delivered as
    /// published: a job's states differ by more than what the row keeps (progress), so the
    /// row does not replace the change.
    fn rows_fetched(
        index: &mut Index,
        ids: &[Uuid],
        _snapshot: DbSnapshot,
        reads: Vec<Read<Self>>,
    ) -> Vec<Uuid> {
        let reads: HashMap<Uuid, JobChange> = reads.into_iter().map(|r| (r.id, r.change)).collect();
        let mut refetch = Vec::new();
        for id in ids {
            let Some(topic) = index.jobs.get_mut(id) else {
                continue;
            };
            let Some(mut waiting) = topic.waiting.take() else {
                continue;
            };
            if let Some(mut first) = waiting.pop_front() {
                if !first.fill_from(reads.get(id)) {
                    waiting.push_front(first);
                    topic.waiting = Some(waiting);
                    refetch.push(*id);
                    continue;
                }
                deliver(topic, &first);
            }
            if drain(topic, waiting, None) {
                refetch.push(*id);
            }
        }
        refetch
    }
}

impl Followed for WorkflowChange {
    type State = WorkflowState;

    fn topic(id: Uuid) -> Topic {
        Topic::Workflow(id)
    }

    fn topics(index: &mut Index) -> &mut HashMap<Uuid, FeedTopic<Self>> {
        &mut index.workflows
    }

    async fn read(
        store: &Store,
        ids: &[Uuid],
    ) -> Result<(DbSnapshot, Vec<Read<Self>>), sqlx::Error> {
        let (snapshot, rows) = store.get_workflows_with_snapshot(ids).await?;
        let reads = rows
            .iter()
            .map(|row| Read {
                id: row.id,
                owner: row.owner.clone(),
                change: WorkflowChange::from_row(row),
            })
            .collect();
        Ok((snapshot, reads))
    }

    fn into_state(self) -> WorkflowState {
        self.state
    }

    /// A workflow's row is all of its state, so the read replaces the change that needed it
    /// (and the waiting changes the read already saw): it is applied to each subscription as
    /// a re-read is.
    fn rows_fetched(
        index: &mut Index,
        ids: &[Uuid],
        snapshot: DbSnapshot,
        reads: Vec<Read<Self>>,
    ) -> Vec<Uuid> {
        let snapshot = Arc::new(snapshot);
        let reads: HashMap<Uuid, Read<Self>> = reads.into_iter().map(|r| (r.id, r)).collect();
        let mut refetch = Vec::new();
        for id in ids {
            let Some(topic) = index.workflows.get_mut(id) else {
                continue;
            };
            let Some(mut waiting) = topic.waiting.take() else {
                continue;
            };
            match reads.get(id) {
                Some(read) => apply_read(topic, &snapshot, read.owner.as_deref(), &read.change),
                // Deleted: deliver what the notification said.
                None => {
                    if let Some(first) = waiting.pop_front() {
                        deliver(topic, &first);
                    }
                }
            }
            if drain(topic, waiting, Some(&snapshot)) {
                refetch.push(*id);
            }
        }
        refetch
    }
}

/// Reads the rows of jobs or workflows whose front change needs them, in batches: everything
/// asked for while the previous batch was being read.
pub(super) async fn fetch_rows<C: Followed>(
    hub: Weak<Hub>,
    store: Store,
    mut ids: mpsc::UnboundedReceiver<Uuid>,
) {
    const MAX_BATCH: usize = 1_000;
    let mut batch: Vec<Uuid> = Vec::new();
    loop {
        if batch.is_empty() {
            match ids.recv().await {
                Some(id) => batch.push(id),
                None => return,
            }
        }
        while batch.len() < MAX_BATCH {
            match ids.try_recv() {
                Ok(id) => batch.push(id),
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(50);
        let (snapshot, reads) = loop {
            match C::read(&store, &batch).await {
                Ok(read) => break read,
                Err(e) => {
                    // The change waits, and the later changes wait behind it: a terminal
                    // state is delayed, never lost.
                    tracing::warn!(error = %e, "reading rows of followed changes failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let Some(hub) = hub.upgrade() else {
            return;
        };
        batch = hub.rows_fetched(&batch, snapshot, reads);
    }
}
