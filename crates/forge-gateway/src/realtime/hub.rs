//! The node's hub: every open session, every subscription, and the fan-out of the node's one
//! LISTEN connection to them.
//!
//! One index, behind one lock that is never held across an await, maps each job, workflow and
//! query group to the subscriptions that follow it, and each session to its subscriptions.
//! The notifier's events are handled by one task ([`run`]) in the order they arrive, which is
//! commit order. A change that needs its row (a job's output or error, a workflow's output or
//! a state too large for its notification) is completed by a fetcher task, and the later
//! changes of the same job or workflow wait behind it so that they cannot overtake it.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use forge_runtime::notifier::{Event, JobUpdate, TABLE_CHANGES, WORKFLOW_UPDATES};
use forge_runtime::store::{DbSnapshot, Store};
use forge_runtime::{JobState, WorkflowState};
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use super::feed::{Change, Feed};
use super::jobs::JobChange;
use super::queries::{LiveQuery, QueryIndex, QueryKey};
use super::session::{OutboxLimits, Session, SubId, Viewer};
use super::workflows::WorkflowChange;
use super::{RealtimeConfig, RealtimeError, RealtimeStats};
use crate::error::ApiError;

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    Job(Uuid),
    Workflow(Uuid),
    Query(Arc<QueryKey>),
}

struct SessionEntry {
    session: Arc<Session>,
    subs: HashMap<SubId, Topic>,
}

/// One subscription to a job or workflow.
pub(crate) struct Sub<C> {
    session: Arc<Session>,
    /// The subscription id as a JSON string, escaped once.
    sub_json: Arc<str>,
    feed: Feed<C>,
}

/// The subscriptions to one job or workflow.
pub(crate) struct FeedTopic<C> {
    subs: HashMap<(Uuid, SubId), Sub<C>>,
    /// While the row of the front change is being read, the later changes wait here behind
    /// it.
    waiting: Option<VecDeque<C>>,
}

impl<C> Default for FeedTopic<C> {
    fn default() -> Self {
        Self {
            subs: HashMap::new(),
            waiting: None,
        }
    }
}

#[derive(Default)]
pub(crate) struct Index {
    sessions: HashMap<Uuid, SessionEntry>,
    jobs: HashMap<Uuid, FeedTopic<JobChange>>,
    workflows: HashMap<Uuid, FeedTopic<WorkflowChange>>,
    queries: QueryIndex,
}

/// A job or workflow as read from its table, with the owner it is checked against.
pub(crate) struct Read<C> {
    id: Uuid,
    owner: Option<String>,
    change: C,
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
                Some(read) => apply_read(topic, &snapshot, read),
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

pub(crate) struct Hub {
    index: Mutex<Index>,
    store: Store,
    config: RealtimeConfig,
    fetch_jobs: mpsc::UnboundedSender<Uuid>,
    fetch_workflows: mpsc::UnboundedSender<Uuid>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish_non_exhaustive()
    }
}

/// The proof a subscription call carries.
pub(crate) struct Proof<'a> {
    pub(crate) session_id: Uuid,
    pub(crate) secret: &'a str,
    pub(crate) user: Option<&'a str>,
}

impl Hub {
    /// Starts the hub on the node's notifier events.
    pub(crate) fn start(
        store: Store,
        config: RealtimeConfig,
        events: broadcast::Receiver<Event>,
    ) -> Arc<Hub> {
        let (fetch_jobs, jobs_rx) = mpsc::unbounded_channel();
        let (fetch_workflows, workflows_rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            index: Mutex::new(Index::default()),
            store: store.clone(),
            config,
            fetch_jobs,
            fetch_workflows,
        });
        tokio::spawn(run(Arc::downgrade(&hub), events));
        tokio::spawn(fetch_rows::<JobChange>(
            Arc::downgrade(&hub),
            store.clone(),
            jobs_rx,
        ));
        tokio::spawn(fetch_rows::<WorkflowChange>(
            Arc::downgrade(&hub),
            store,
            workflows_rx,
        ));
        hub
    }

    pub(crate) fn config(&self) -> &RealtimeConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        // Every mutation of the index completes before the guard is released, so a panic
        // elsewhere while it was held leaves nothing half-done.
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens a session; its first event (`session`, with id and secret) is already queued.
    pub(crate) fn open_session(&self, viewer: Viewer) -> Arc<Session> {
        let limits = OutboxLimits {
            soft: self.config.outbox_soft_limit,
            hard: self.config.outbox_hard_limit,
        };
        let session = Arc::new(Session::new(viewer, limits));
        let data = serde_json::json!({
            "sessionId": session.id,
            "sessionSecret": session.secret(),
        });
        session
            .outbox
            .push_fixed(Bytes::from(format!("event: session\ndata: {data}\n\n")));
        self.lock().sessions.insert(
            session.id,
            SessionEntry {
                session: session.clone(),
                subs: HashMap::new(),
            },
        );
        session
    }

    /// Ends a session and every subscription of it.
    pub(crate) fn close_session(&self, id: Uuid) {
        let mut index = self.lock();
        if let Some(entry) = index.sessions.remove(&id) {
            entry.session.outbox.close();
            for (sub, topic) in entry.subs {
                index.remove_from_topic(id, &sub, &topic);
            }
        }
    }

    /// Subscribes to a job or workflow: registers first, then reads it with its snapshot, so
    /// that every change is either in the answer or pushed after it. `None`: no such job or
    /// workflow, or one the session's user may not see (told apart by nobody).
    pub(crate) async fn subscribe<C: Followed>(
        &self,
        proof: &Proof<'_>,
        sub: &str,
        id: Uuid,
    ) -> Result<Option<C::State>, RealtimeError> {
        let topic = C::topic(id);
        let (session, sub) = self.register(proof, sub, topic.clone(), |index, session, sub| {
            index.add_sub::<C>(id, session, sub, Feed::Reading(Vec::new()));
        })?;
        let read = C::read(&self.store, &[id]).await;
        let mut index = self.lock();
        let (snapshot, reads) = match read {
            Ok(read) => read,
            Err(e) => {
                index.remove_sub_of(session.id, &sub, &topic);
                return Err(RealtimeError::Database(e));
            }
        };
        let read = reads
            .into_iter()
            .next()
            .filter(|read| session.viewer.may_see(read.owner.as_deref()));
        let Some(read) = read else {
            index.remove_sub_of(session.id, &sub, &topic);
            return Ok(None);
        };
        let snapshot = Arc::new(snapshot);
        if let Some(t) = C::topics(&mut index).get_mut(&id) {
            if let Some(s) = t.subs.get_mut(&(session.id, sub.clone())) {
                for change in s.feed.apply_read(&snapshot, Some(&read.change), false) {
                    push(s, &sub, &change, &change.state_json());
                }
            }
        }
        Ok(Some(read.change.into_state()))
    }

    /// Subscribes to a job or workflow that the caller is about to create with id `id`,
    /// before it exists, so that not even its first update can be missed. The subscription
    /// is removed again unless the returned guard is [confirmed](FollowGuard::started).
    pub(crate) fn follow<C: Followed>(
        self: &Arc<Self>,
        proof: &Proof<'_>,
        sub: &str,
        id: Uuid,
    ) -> Result<FollowGuard, RealtimeError> {
        let (session, sub) = self.register(proof, sub, C::topic(id), |index, session, sub| {
            index.add_sub::<C>(id, session, sub, Feed::following());
        })?;
        Ok(FollowGuard {
            hub: Arc::downgrade(self),
            session: session.id,
            secret: session.secret().to_string(),
            user: session.viewer.user.clone(),
            sub,
            topic: C::topic(id),
            armed: true,
        })
    }

    /// Removes one subscription of a session. Returns whether it existed.
    pub(crate) fn unsubscribe(&self, proof: &Proof<'_>, sub: &str) -> Result<bool, RealtimeError> {
        let mut index = self.lock();
        let entry = index.check(proof)?;
        let Some(topic) = entry.subs.remove(sub) else {
            return Ok(false);
        };
        index.remove_from_topic(proof.session_id, &SubId::from(sub), &topic);
        Ok(true)
    }

    /// Subscribes to a query: registers on its group (which runs it at once if it is new),
    /// then answers with the group's latest result, waiting for the first one. Later results
    /// that differ are pushed.
    pub(crate) async fn subscribe_query(
        self: &Arc<Self>,
        proof: &Proof<'_>,
        sub: &str,
        key: QueryKey,
        call: Arc<dyn LiveQuery>,
    ) -> Result<Arc<str>, QuerySubscribeError> {
        let key = Arc::new(key);
        let mut latest = None;
        let (session, sub) = self.register(
            proof,
            sub,
            Topic::Query(key.clone()),
            |index, session, sub| {
                latest = Some(index.queries.add_sub(self, &key, call, session, sub));
            },
        )?;
        let mut latest = latest.expect("registered");
        let failed_run = match &*latest.borrow_and_update() {
            Some((_, Ok(json))) => return Ok(json.clone()),
            Some((run, Err(_))) => Some(*run),
            None => None,
        };
        if failed_run.is_some() {
            // A failure is not cached for newcomers: they get a run of their own.
            self.lock().queries.rerun(&key);
        }
        let outcome = latest
            .wait_for(|l| l.as_ref().is_some_and(|(run, _)| Some(*run) != failed_run))
            .await
            .ok()
            .and_then(|l| l.as_ref().map(|(_, outcome)| outcome.clone()));
        match outcome {
            Some(Ok(json)) => Ok(json),
            Some(Err(failure)) => {
                self.lock()
                    .remove_sub_of(session.id, &sub, &Topic::Query(key));
                Err(QuerySubscribeError::Failed(failure))
            }
            // The group ended before its first run: the subscription was removed meanwhile.
            None => Err(QuerySubscribeError::Realtime(RealtimeError::UnknownSession)),
        }
    }

    /// Checks the proof and registers `sub` on `topic` (`add` puts it into the topic's
    /// index), replacing a subscription of the same id.
    fn register(
        &self,
        proof: &Proof<'_>,
        sub: &str,
        topic: Topic,
        add: impl FnOnce(&mut Index, &Arc<Session>, &SubId),
    ) -> Result<(Arc<Session>, SubId), RealtimeError> {
        let max = self.config.max_subscriptions_per_session;
        let mut index = self.lock();
        let entry = index.check(proof)?;
        let session = entry.session.clone();
        let sub: SubId = sub.into();
        let replaced = entry.subs.insert(sub.clone(), topic);
        if replaced.is_none() && entry.subs.len() > max {
            entry.subs.remove(&sub);
            return Err(RealtimeError::TooManySubscriptions(max));
        }
        if let Some(old) = replaced {
            index.remove_from_topic(session.id, &sub, &old);
        }
        add(&mut index, &session, &sub);
        Ok((session, sub))
    }

    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// Runs `f` on the query part of the index, under the index lock.
    pub(crate) fn with_queries<T>(&self, f: impl FnOnce(&mut QueryIndex) -> T) -> T {
        f(&mut self.lock().queries)
    }

    /// Announced table changes (`forge_table_changes`, or Forge's own channels for its
    /// tables) re-run the query groups that read them.
    fn tables_changed(&self, oids: impl IntoIterator<Item = u32>) {
        let mut index = self.lock();
        for oid in oids {
            index.queries.table_changed(oid);
        }
    }

    /// Fans job updates out. Called by [`run`] in commit order.
    fn job_updates(&self, updates: &[JobUpdate]) {
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

    /// Fans workflow updates (a `forge_workflow_updates` payload) out. Called by [`run`] in
    /// commit order.
    fn workflow_updates(&self, payload: &str) {
        let mut to_fetch = Vec::new();
        let mut index = self.lock();
        for oid in index.queries.forge_tables(false) {
            index.queries.table_changed(oid);
        }
        if index.workflows.is_empty() {
            return;
        }
        let changes = match WorkflowChange::parse(payload) {
            Ok(changes) => changes,
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
    fn rows_fetched<C: Followed>(
        &self,
        ids: &[Uuid],
        snapshot: DbSnapshot,
        reads: Vec<Read<C>>,
    ) -> Vec<Uuid> {
        C::rows_fetched(&mut self.lock(), ids, snapshot, reads)
    }

    /// After the LISTEN connection was lost (or this node fell behind its notifications):
    /// re-reads every followed job and workflow and pushes what changed meanwhile.
    async fn resync(&self) {
        self.lock().queries.rerun_all();
        self.resync_kind::<JobChange>("jobs").await;
        self.resync_kind::<WorkflowChange>("workflows").await;
    }

    async fn resync_kind<C: Followed>(&self, what: &str) {
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
                apply_read(topic, &snapshot, read);
            }
        }
        tracing::info!(
            count = ids.len(),
            what,
            "re-read followed items after a notification gap"
        );
    }

    pub(crate) fn stats(&self) -> RealtimeStats {
        let index = self.lock();
        let mut stats = RealtimeStats {
            sessions: index.sessions.len(),
            query_groups: index.queries.group_count(),
            ..RealtimeStats::default()
        };
        for entry in index.sessions.values() {
            stats.subscriptions += entry.subs.len();
            let (queued, coalesced) = entry.session.outbox.counts();
            stats.queued_events += queued;
            stats.max_queued_events = stats.max_queued_events.max(queued);
            stats.coalesced_events += coalesced;
        }
        stats
    }
}

impl Index {
    /// The session a proof names, if the proof holds.
    fn check(&mut self, proof: &Proof<'_>) -> Result<&mut SessionEntry, RealtimeError> {
        match self.sessions.get_mut(&proof.session_id) {
            Some(entry) if entry.session.admits(proof.secret, proof.user) => Ok(entry),
            _ => Err(RealtimeError::UnknownSession),
        }
    }

    fn add_sub<C: Followed>(
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

    /// Removes subscription `sub` of `session` if it still follows `topic` (the client may
    /// have reused the id for something else meanwhile).
    fn remove_sub_of(&mut self, session: Uuid, sub: &SubId, topic: &Topic) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        if entry.subs.get(sub) == Some(topic) {
            entry.subs.remove(sub);
            self.remove_from_topic(session, sub, topic);
        }
    }

    fn remove_from_topic(&mut self, session: Uuid, sub: &SubId, topic: &Topic) {
        match topic {
            Topic::Job(id) => remove_feed_sub(&mut self.jobs, *id, session, sub),
            Topic::Workflow(id) => remove_feed_sub(&mut self.workflows, *id, session, sub),
            Topic::Query(key) => self.queries.remove_sub(key, session, sub),
        }
    }
}

fn remove_feed_sub<C>(
    topics: &mut HashMap<Uuid, FeedTopic<C>>,
    id: Uuid,
    session: Uuid,
    sub: &SubId,
) {
    if let Some(t) = topics.get_mut(&id) {
        t.subs.remove(&(session, sub.clone()));
        if t.subs.is_empty() {
            topics.remove(&id);
        }
    }
}

/// A subscription made before its job or workflow exists; see [`Hub::follow`].
#[derive(Debug)]
pub(crate) struct FollowGuard {
    hub: Weak<Hub>,
    session: Uuid,
    secret: String,
    user: Option<String>,
    sub: SubId,
    topic: Topic,
    armed: bool,
}

impl FollowGuard {
    /// It was created, as `actual_id`. That differs from the id the subscription was made
    /// for only when an idempotency key returned an existing one; that one is then
    /// subscribed to the ordinary way (read with its snapshot, owner checked), and its state
    /// returned (`None` also when the caller may not see it).
    pub(crate) async fn started<C: Followed>(
        mut self,
        actual_id: Uuid,
    ) -> Result<Option<C::State>, RealtimeError> {
        self.armed = false;
        if C::topic(actual_id) == self.topic {
            return Ok(None);
        }
        let Some(hub) = self.hub.upgrade() else {
            return Ok(None);
        };
        hub.lock()
            .remove_sub_of(self.session, &self.sub, &self.topic);
        let proof = Proof {
            session_id: self.session,
            secret: &self.secret,
            user: self.user.as_deref(),
        };
        hub.subscribe::<C>(&proof, &self.sub, actual_id).await
    }
}

impl Drop for FollowGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Some(hub) = self.hub.upgrade() {
                hub.lock()
                    .remove_sub_of(self.session, &self.sub, &self.topic);
            }
        }
    }
}

/// Takes a change of a followed topic: delivers it, or queues it behind a change waiting for
/// its row. Returns true when the change itself must wait for its row (fetch it).
fn accept<C: Change>(topic: &mut FeedTopic<C>, change: C) -> bool {
    if let Some(waiting) = &mut topic.waiting {
        waiting.push_back(change);
        false
    } else if change.needs_row() {
        topic.waiting = Some(VecDeque::from([change]));
        true
    } else {
        deliver(topic, &change);
        false
    }
}

/// Delivers the changes that queued behind a change whose row was read, up to the next one
/// that needs its row: that one waits again, and true is returned (read its row). Changes a
/// read made with `seen_by` already reflects are dropped.
fn drain<C: Change>(
    topic: &mut FeedTopic<C>,
    mut waiting: VecDeque<C>,
    seen_by: Option<&DbSnapshot>,
) -> bool {
    while let Some(change) = waiting.pop_front() {
        if seen_by.is_some_and(|s| change.xid().is_some_and(|x| s.sees(x))) {
            continue;
        }
        if change.needs_row() {
            waiting.push_front(change);
            topic.waiting = Some(waiting);
            return true;
        }
        deliver(topic, &change);
    }
    false
}

/// Applies a read of a topic's state to each of its subscriptions, as a re-read: whatever
/// changed since the client's last state is pushed.
fn apply_read<C: Change>(topic: &mut FeedTopic<C>, snapshot: &Arc<DbSnapshot>, read: &Read<C>) {
    let mut json: Option<String> = None;
    for ((_, sub), s) in topic.subs.iter_mut() {
        // A subscription still being checked by its subscribe call may belong to someone
        // who must not see this: that call decides.
        if !s.session.viewer.may_see(read.owner.as_deref()) {
            continue;
        }
        for change in s.feed.apply_read(snapshot, Some(&read.change), true) {
            let state = if change == read.change {
                json.get_or_insert_with(|| change.state_json()).clone()
            } else {
                change.state_json()
            };
            push(s, sub, &change, &state);
        }
    }
}

fn deliver<C: Change>(topic: &mut FeedTopic<C>, change: &C) {
    // Serialized at most once, and only if some subscription takes it.
    let mut json: Option<String> = None;
    for ((_, sub), s) in topic.subs.iter_mut() {
        if s.feed.offer(change) {
            let json = json.get_or_insert_with(|| change.state_json());
            push(s, sub, change, json);
        }
    }
}

fn push<C: Change>(s: &Sub<C>, sub: &SubId, change: &C, state_json: &str) {
    let frame = format!(
        "event: {}\ndata: {{\"subscriptionId\":{},\"state\":{}}}\n\n",
        C::EVENT,
        s.sub_json,
        state_json
    );
    s.session
        .outbox
        .push(sub, change.phase(), Bytes::from(frame));
}

pub(crate) fn json_string(s: &str) -> Arc<str> {
    serde_json::to_string(s)
        .expect("a string always serializes")
        .into()
}

/// Handles the notifier's events, in order, while the hub exists.
async fn run(hub: Weak<Hub>, mut events: broadcast::Receiver<Event>) {
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
            Ok(Event::Other { channel, payload }) => match &*channel {
                TABLE_CHANGES => match payload.parse::<u32>() {
                    Ok(oid) => hub.tables_changed([oid]),
                    Err(_) => tracing::error!(%payload, "unreadable table change payload"),
                },
                WORKFLOW_UPDATES => hub.workflow_updates(&payload),
                _ => {}
            },
            Ok(Event::Reconnected) => hub.resync().await,
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "realtime hub fell behind its notifications");
                hub.resync().await;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Reads the rows of jobs or workflows whose front change needs them, in batches: everything
/// asked for while the previous batch was being read.
async fn fetch_rows<C: Followed>(
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

/// Why a query subscription failed.
#[derive(Debug)]
pub(crate) enum QuerySubscribeError {
    Realtime(RealtimeError),
    /// The query's first run failed; the subscription was removed.
    Failed(ApiError),
}

impl From<RealtimeError> for QuerySubscribeError {
    fn from(e: RealtimeError) -> Self {
        QuerySubscribeError::Realtime(e)
    }
}
