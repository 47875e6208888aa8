//! The node's hub: every open session, every subscription, and the fan-out of the node's one
//! LISTEN connection to them.
//!
//! One index, behind one lock that is never held across an await, maps each job, workflow and
//! query group to the subscriptions that follow it, and each session to its subscriptions.
//! The notifier's events are handled by one task ([`events::run`]) in the order they arrive, which is
//! commit order. A change that needs its row (a job's output or error, a workflow's output or
//! a state too large for its notification) is completed by a fetcher task, and the later
//! changes of the same job or workflow wait behind it so that they cannot overtake it.

mod events;
mod followed;
mod guard;
mod index;
mod queries;

pub(crate) use followed::Followed;
pub(crate) use guard::FollowGuard;
pub(crate) use index::Topic;

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::Bytes;
use forge_runtime::notifier::Event;
use forge_runtime::store::Store;
use tokio::sync::{broadcast, mpsc};
use uuid::Uuid;

use crate::error::ApiError;
use crate::realtime::feed::{push, Feed};
use crate::realtime::jobs::JobChange;
use crate::realtime::queries::{LiveQuery, QueryIndex, QueryKey};
use crate::realtime::session::{NodeTag, OutboxLimits, Session, SubId, Viewer};
use crate::realtime::workflows::WorkflowChange;
use crate::realtime::{RealtimeConfig, RealtimeError, RealtimeStats};
use events::run;
use followed::fetch_rows;
use index::{Index, SessionEntry};

/// The node's realtime hub (see the module docs).
pub(crate) struct Hub {
    /// Starts the id of every session this node opens.
    pub(crate) node: NodeTag,
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
            node: NodeTag::random(),
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
    /// Refused when the node, the user or the client address `ip` already has as many open
    /// sessions as the configuration allows; the counts are released by
    /// [`close_session`](Self::close_session).
    pub(crate) fn open_session(
        &self,
        viewer: Viewer,
        ip: Option<IpAddr>,
    ) -> Result<Arc<Session>, RealtimeError> {
        let limits = OutboxLimits {
            soft: self.config.outbox_soft_limit,
            hard: self.config.outbox_hard_limit,
        };
        let mut index = self.lock();
        let c = &self.config;
        if index.sessions.len() >= c.max_sessions {
            return Err(RealtimeError::TooManySessions(format!(
                "this node already serves {} event streams, the most it may",
                c.max_sessions
            )));
        }
        let user = viewer.user.clone();
        if let Some(user) = &user {
            if index.sessions_per_user.get(user).copied().unwrap_or(0) >= c.max_sessions_per_user {
                return Err(RealtimeError::TooManySessions(format!(
                    "this user already has {} event streams open, the most one user may",
                    c.max_sessions_per_user
                )));
            }
        }
        if let Some(ip) = ip {
            if index.sessions_per_ip.get(&ip).copied().unwrap_or(0) >= c.max_sessions_per_ip {
                return Err(RealtimeError::TooManySessions(format!(
                    "this address already has {} event streams open, the most one address may",
                    c.max_sessions_per_ip
                )));
            }
        }
        let session = Arc::new(Session::new(viewer, limits, self.node));
        let data = serde_json::json!({
            "sessionId": session.id,
            "sessionSecret": session.secret(),
        });
        session
            .outbox
            .push_fixed(Bytes::from(format!("event: session\ndata: {data}\n\n")));
        if let Some(user) = user {
            *index.sessions_per_user.entry(user).or_default() += 1;
        }
        if let Some(ip) = ip {
            *index.sessions_per_ip.entry(ip).or_default() += 1;
        }
        index.sessions.insert(
            session.id,
            SessionEntry {
                session: session.clone(),
                ip,
                subs: HashMap::new(),
            },
        );
        Ok(session)
    }

    /// Ends a session and every subscription of it.
    pub(crate) fn close_session(&self, id: Uuid) {
        let mut index = self.lock();
        if let Some(entry) = index.sessions.remove(&id) {
            entry.session.outbox.close();
            if let Some(user) = &entry.session.viewer.user {
                release(&mut index.sessions_per_user, user);
            }
            if let Some(ip) = &entry.ip {
                release(&mut index.sessions_per_ip, ip);
            }
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
    /// Whether `proof` is good for a session of this node (a forwarded start-and-follow asks
    /// before it creates its job).
    pub(crate) fn check(&self, proof: &Proof<'_>) -> Result<(), RealtimeError> {
        self.lock().check(proof).map(|_| ())
    }

    /// The state of job or workflow `id` if `viewer` may see it: what a subscribe call
    /// answers, for a subscription made on another node.
    pub(crate) async fn read_visible<C: Followed>(
        &self,
        viewer: &Viewer,
        id: Uuid,
    ) -> Result<Option<C::State>, RealtimeError> {
        let (_, reads) = C::read(&self.store, &[id]).await?;
        Ok(reads
            .into_iter()
            .next()
            .filter(|read| viewer.may_see(read.owner.as_deref()))
            .map(|read| read.change.into_state()))
    }

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
                let hub = Arc::downgrade(self);
                let group = key.clone();
                latest = Some(index.queries.add_sub(&key, session, sub, |id, wake| {
                    tokio::spawn(queries::run_group(hub, group, id, call, wake));
                }));
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
        let session = index.check(proof)?.session.clone();
        if let Topic::Query(key) = &topic {
            // Each group is a runner that re-runs its query on every change of a table it
            // read: the cap bounds that work, so only a new group is refused.
            let most = self.config.max_query_groups;
            if !index.queries.groups.contains_key(key) && index.queries.group_count() >= most {
                return Err(RealtimeError::TooManyQueryGroups(most));
            }
        }
        let entry = index
            .sessions
            .get_mut(&proof.session_id)
            .expect("checked above");
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

/// Takes one from a count of open sessions, dropping the entry at zero.
fn release<K: Hash + Eq + ?Sized, Q: Hash + Eq + std::borrow::Borrow<K>>(
    counts: &mut HashMap<Q, usize>,
    key: &K,
) {
    if let Some(n) = counts.get_mut(key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(key);
        }
    }
}
