//! The subscription index: sessions, and the subscriptions to each job, workflow and query
//! group.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use uuid::Uuid;

use super::Proof;
use crate::realtime::feed::FeedTopic;
use crate::realtime::jobs::JobChange;
use crate::realtime::queries::{QueryIndex, QueryKey};
use crate::realtime::session::{Session, SubId};
use crate::realtime::workflows::WorkflowChange;
use crate::realtime::RealtimeError;

/// What a subscription follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Topic {
    Job(Uuid),
    Workflow(Uuid),
    Query(Arc<QueryKey>),
}

pub(super) struct SessionEntry {
    pub(super) session: Arc<Session>,
    /// The client's address, when known: what the per-address cap counts.
    pub(super) ip: Option<IpAddr>,
    pub(super) subs: HashMap<SubId, Topic>,
}

#[derive(Default)]
pub(crate) struct Index {
    pub(super) sessions: HashMap<Uuid, SessionEntry>,
    /// Open sessions of each signed-in user and of each client address; an entry is removed
    /// when its count reaches zero, so the maps hold only what is open.
    pub(super) sessions_per_user: HashMap<String, usize>,
    pub(super) sessions_per_ip: HashMap<IpAddr, usize>,
    pub(super) jobs: HashMap<Uuid, FeedTopic<JobChange>>,
    pub(super) workflows: HashMap<Uuid, FeedTopic<WorkflowChange>>,
    pub(super) queries: QueryIndex,
}

impl Index {
    /// The session a proof names, if the proof holds.
    pub(super) fn check(&mut self, proof: &Proof<'_>) -> Result<&mut SessionEntry, RealtimeError> {
        match self.sessions.get_mut(&proof.session_id) {
            Some(entry) if entry.session.admits(proof.secret, proof.user) => Ok(entry),
            _ => Err(RealtimeError::UnknownSession),
        }
    }

    /// Removes subscription `sub` of `session` if it still follows `topic` (the client may
    /// have reused the id for something else meanwhile).
    pub(super) fn remove_sub_of(&mut self, session: Uuid, sub: &SubId, topic: &Topic) {
        let Some(entry) = self.sessions.get_mut(&session) else {
            return;
        };
        if entry.subs.get(sub) == Some(topic) {
            entry.subs.remove(sub);
            self.remove_from_topic(session, sub, topic);
        }
    }

    pub(super) fn remove_from_topic(&mut self, session: Uuid, sub: &SubId, topic: &Topic) {
        match topic {
            Topic::Job(id) => remove_feed_sub(&mut self.jobs, *id, session, sub),
            Topic::Workflow(id) => remove_feed_sub(&mut self.workflows, *id, session, sub),
            Topic::Query(key) => self.queries.remove_sub(key, session, sub),
        }
    }
}

pub(super) fn remove_feed_sub<C>(
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
