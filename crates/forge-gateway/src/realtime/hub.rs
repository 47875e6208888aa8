//! The node's hub: every open session, every subscription, and the fan-out of the node's one
//! LISTEN connection to them.
//!
//! One index, behind one lock that is never held across an await, maps each job and query
//! group to the subscriptions that follow it, and each session to its subscriptions.
//! The notifier's events are handled by one task ([`run`]) in the order they arrive, which is
//! commit order; a job update that needs its row (output, error) is completed by the fetcher
//! task, and the job's later updates wait behind it so that they cannot overtake it.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use bytes::Bytes;
use forge_runtime::notifier::{Event, JobUpdate, TABLE_CHANGES, WORKFLOW_UPDATES};
use forge_runtime::store::{JobRow, Store};
use forge_runtime::JobState;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use super::jobs::{JobChange, JobFeed};
use super::queries::{LiveQuery, QueryIndex, QueryKey};
use super::session::{OutboxLimits, Session, SubId, Viewer};
use super::{RealtimeConfig, RealtimeError, RealtimeStats};
use crate::error::ApiError;

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    Job(Uuid),
    Query(Arc<QueryKey>),
}

struct SessionEntry {
    session: Arc<Session>,
    subs: HashMap<SubId, Topic>,
}

/// One subscription to a job.
struct JobSub {
    session: Arc<Session>,
    /// The subscription id as a JSON string, escaped once.
    sub_json: Arc<str>,
    feed: JobFeed,
}

#[derive(Default)]
struct JobTopic {
    subs: HashMap<(Uuid, SubId), JobSub>,
    /// While the row of the front change is being read (for its output or error), the job's
    /// later changes wait here behind it.
    waiting: Option<VecDeque<JobChange>>,
}

#[derive(Default)]
struct Index {
    sessions: HashMap<Uuid, SessionEntry>,
    jobs: HashMap<Uuid, JobTopic>,
    queries: QueryIndex,
}

pub(crate) struct Hub {
    index: Mutex<Index>,
    store: Store,
    config: RealtimeConfig,
    fetch: mpsc::UnboundedSender<Uuid>,
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
        let (fetch, fetch_rx) = mpsc::unbounded_channel();
        let hub = Arc::new(Hub {
            index: Mutex::new(Index::default()),
            store: store.clone(),
            config,
            fetch,
        });
        tokio::spawn(run(Arc::downgrade(&hub), events));
        tokio::spawn(fetch_rows(Arc::downgrade(&hub), store, fetch_rx));
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

    /// Subscribes to a job: registers first, then reads the job with its snapshot, so that
    /// every change is either in the answer or pushed after it. `None`: no such job, or one
    /// the session's user may not see (told apart by nobody).
    pub(crate) async fn subscribe_job(
        &self,
        proof: &Proof<'_>,
        sub: &str,
        job_id: Uuid,
    ) -> Result<Option<JobState>, RealtimeError> {
        let (session, sub) =
            self.register(proof, sub, Topic::Job(job_id), |index, session, sub| {
                index.add_job_sub(job_id, session, sub, JobFeed::Reading(Vec::new()));
            })?;
        let read = self.store.get_jobs_with_snapshot(&[job_id]).await;
        let mut index = self.lock();
        let (snapshot, rows) = match read {
            Ok(read) => read,
            Err(e) => {
                index.remove_sub_of(session.id, &sub, &Topic::Job(job_id));
                return Err(RealtimeError::Database(e));
            }
        };
        let row = rows
            .into_iter()
            .next()
            .filter(|row| session.viewer.may_see(row.owner.as_deref()));
        let Some(row) = row else {
            index.remove_sub_of(session.id, &sub, &Topic::Job(job_id));
            return Ok(None);
        };
        let read = JobChange::from_row(&row);
        let snapshot = Arc::new(snapshot);
        if let Some(topic) = index.jobs.get_mut(&job_id) {
            if let Some(js) = topic.subs.get_mut(&(session.id, sub.clone())) {
                let out = js.feed.apply_read(&snapshot, Some(&read), false);
                for change in &out {
                    push_job(js, &sub, change, &job_json(&change.state));
                }
            }
        }
        Ok(Some(read.state))
    }

    /// Subscribes to a job that the caller is about to create with id `job_id`, before it
    /// exists, so that not even its first update can be missed. The subscription is removed
    /// again unless the returned guard is [confirmed](FollowGuard::started).
    pub(crate) fn follow_job(
        self: &Arc<Self>,
        proof: &Proof<'_>,
        sub: &str,
        job_id: Uuid,
    ) -> Result<FollowGuard, RealtimeError> {
        let (session, sub) =
            self.register(proof, sub, Topic::Job(job_id), |index, session, sub| {
                index.add_job_sub(job_id, session, sub, JobFeed::following());
            })?;
        Ok(FollowGuard {
            hub: Arc::downgrade(self),
            session: session.id,
            secret: session.secret().to_string(),
            user: session.viewer.user.clone(),
            sub,
            job_id,
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
            let change = JobChange::from_update(u);
            if let Some(waiting) = &mut topic.waiting {
                waiting.push_back(change);
            } else if change.needs_row() {
                topic.waiting = Some(VecDeque::from([change]));
                to_fetch.push(u.job_id);
            } else {
                deliver_job(topic, &change);
            }
        }
        drop(index);
        for id in to_fetch {
            // Fails only when the fetcher has stopped, which happens when the hub is dropped.
            let _ = self.fetch.send(id);
        }
    }

    /// Delivers changes that waited for their rows, and whatever queued behind them.
    fn rows_fetched(&self, ids: &[Uuid], rows: Vec<JobRow>) {
        let rows: HashMap<Uuid, JobRow> = rows.into_iter().map(|r| (r.id, r)).collect();
        let mut refetch = Vec::new();
        let mut index = self.lock();
        for id in ids {
            let Some(topic) = index.jobs.get_mut(id) else {
                continue;
            };
            let Some(mut waiting) = topic.waiting.take() else {
                continue;
            };
            if let Some(mut first) = waiting.pop_front() {
                if !first.fill_from(rows.get(id)) {
                    waiting.push_front(first);
                    topic.waiting = Some(waiting);
                    refetch.push(*id);
                    continue;
                }
                deliver_job(topic, &first);
            }
            while let Some(change) = waiting.pop_front() {
                if change.needs_row() {
                    waiting.push_front(change);
                    topic.waiting = Some(waiting);
                    refetch.push(*id);
                    break;
                }
                deliver_job(topic, &change);
            }
        }
        drop(index);
        for id in refetch {
            let _ = self.fetch.send(id);
        }
    }

    /// After the LISTEN connection was lost (or this node fell behind its notifications):
    /// re-reads every followed job and pushes what changed meanwhile.
    async fn resync(&self) {
        let ids: Vec<Uuid> = {
            let index = self.lock();
            index.queries.rerun_all();
            index.jobs.keys().copied().collect()
        };
        if ids.is_empty() {
            return;
        }
        let mut delay = Duration::from_millis(50);
        let (snapshot, rows) = loop {
            match self.store.get_jobs_with_snapshot(&ids).await {
                Ok(read) => break read,
                Err(e) => {
                    tracing::warn!(error = %e, "re-reading followed jobs failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let snapshot = Arc::new(snapshot);
        let mut index = self.lock();
        for row in &rows {
            let Some(topic) = index.jobs.get_mut(&row.id) else {
                continue;
            };
            let read = JobChange::from_row(row);
            let json = job_json(&read.state);
            for ((_, sub), js) in topic.subs.iter_mut() {
                // A subscription still being checked by its subscribe call may belong to
                // someone who must not see this job: that call decides.
                if !js.session.viewer.may_see(row.owner.as_deref()) {
                    continue;
                }
                for change in js.feed.apply_read(&snapshot, Some(&read), true) {
                    let json = if change == read {
                        json.clone()
                    } else {
                        job_json(&change.state)
                    };
                    push_job(js, sub, &change, &json);
                }
            }
        }
        tracing::info!(
            jobs = ids.len(),
            "re-read followed jobs after a notification gap"
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

    fn add_job_sub(&mut self, job_id: Uuid, session: &Arc<Session>, sub: &SubId, feed: JobFeed) {
        self.jobs.entry(job_id).or_default().subs.insert(
            (session.id, sub.clone()),
            JobSub {
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
            Topic::Job(id) => {
                if let Some(t) = self.jobs.get_mut(id) {
                    t.subs.remove(&(session, sub.clone()));
                    if t.subs.is_empty() {
                        self.jobs.remove(id);
                    }
                }
            }
            Topic::Query(key) => self.queries.remove_sub(key, session, sub),
        }
    }
}

/// A subscription made before its job exists; see [`Hub::follow_job`].
#[derive(Debug)]
pub(crate) struct FollowGuard {
    hub: Weak<Hub>,
    session: Uuid,
    secret: String,
    user: Option<String>,
    sub: SubId,
    job_id: Uuid,
    armed: bool,
}

impl FollowGuard {
    /// The job was created, as `actual_id`. That differs from the id the subscription was
    /// made for only when an idempotency key returned an existing job; that one is then
    /// subscribed to the ordinary way (read with its snapshot, owner checked), and its state
    /// returned (`None` also when the caller may not see it).
    pub(crate) async fn started(
        mut self,
        actual_id: Uuid,
    ) -> Result<Option<JobState>, RealtimeError> {
        self.armed = false;
        if actual_id == self.job_id {
            return Ok(None);
        }
        let Some(hub) = self.hub.upgrade() else {
            return Ok(None);
        };
        hub.lock()
            .remove_sub_of(self.session, &self.sub, &Topic::Job(self.job_id));
        let proof = Proof {
            session_id: self.session,
            secret: &self.secret,
            user: self.user.as_deref(),
        };
        hub.subscribe_job(&proof, &self.sub, actual_id).await
    }
}

impl Drop for FollowGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Some(hub) = self.hub.upgrade() {
                hub.lock()
                    .remove_sub_of(self.session, &self.sub, &Topic::Job(self.job_id));
            }
        }
    }
}

fn deliver_job(topic: &mut JobTopic, change: &JobChange) {
    // Serialized at most once, and only if some subscription takes it.
    let mut json: Option<String> = None;
    for ((_, sub), js) in topic.subs.iter_mut() {
        if js.feed.offer(change) {
            let json = json.get_or_insert_with(|| job_json(&change.state));
            push_job(js, sub, change, json);
        }
    }
}

fn push_job(js: &JobSub, sub: &SubId, change: &JobChange, state_json: &str) {
    let frame = format!(
        "event: job\ndata: {{\"subscriptionId\":{},\"state\":{}}}\n\n",
        js.sub_json, state_json
    );
    js.session
        .outbox
        .push(sub, change.phase(), Bytes::from(frame));
}

fn job_json(state: &JobState) -> String {
    serde_json::to_string(state).expect("a job state always serializes")
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
                WORKFLOW_UPDATES => {
                    let tables = hub.with_queries(|q| q.forge_tables(false));
                    hub.tables_changed(tables);
                }
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

/// Reads the rows of jobs whose latest change needs them, in batches: everything asked for
/// while the previous batch was being read.
async fn fetch_rows(hub: Weak<Hub>, store: Store, mut ids: mpsc::UnboundedReceiver<Uuid>) {
    const MAX_BATCH: usize = 1_000;
    while let Some(first) = ids.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match ids.try_recv() {
                Ok(id) => batch.push(id),
                Err(_) => break,
            }
        }
        let mut delay = Duration::from_millis(50);
        let rows = loop {
            match store.get_jobs(&batch).await {
                Ok(rows) => break rows,
                Err(e) => {
                    // The change waits, and the job's later changes wait behind it: a
                    // terminal state is delayed, never lost.
                    tracing::warn!(error = %e, "reading finished jobs failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        };
        let Some(hub) = hub.upgrade() else {
            return;
        };
        hub.rows_fetched(&batch, rows);
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
