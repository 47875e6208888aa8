//! Delivery: the order of one job's or workflow's updates as one subscription sees them,
//! and the fan-out of a change to a topic's subscriptions (straight to their outboxes).
//!
//! Updates reach a node in commit order (one LISTEN connection; PostgreSQL queues
//! notifications in commit order). What needs care is where the stream meets a read of the
//! current state — a subscribe call, or the re-read after the LISTEN connection came back:
//!
//! * A subscription is registered *before* the read, so nothing committed after the read can
//!   be missed. Updates that arrive while the read is in flight are held.
//! * The read returns the database snapshot it was made with, and every update carries the id
//!   of the transaction that made it: an update the snapshot already saw is dropped, one it did
//!   not see is delivered after the read's state. No guessing from status order.
//!
//! On top of that exact rule two invariants hold whatever happens: nothing follows a terminal
//! status, and an update of an earlier generation (a job's attempt) never follows one of a
//! later generation. And a client is never left to take a new attempt's progress for the old
//! one's going back: when a re-read finds a later attempt than the client last got (the
//! changes in between were published while the node could not listen), the attempt's start
//! (`claimed`, progress cleared) is pushed before its current state.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::sync::Arc;

use bytes::Bytes;
use forge_runtime::store::DbSnapshot;
use uuid::Uuid;

use super::session::{Session, SubId};

/// One state of a job or workflow on its way to subscribers.
pub(crate) trait Change: Clone + PartialEq + std::fmt::Debug {
    /// The name of the SSE events that carry it.
    const EVENT: &'static str;

    /// The transaction that made it; `None` for a state read from the table.
    fn xid(&self) -> Option<u64>;

    /// Changes of an earlier generation never follow one of a later generation (a job's
    /// attempt; workflows have one generation).
    fn generation(&self) -> i32;

    fn is_terminal(&self) -> bool;

    /// The state its generation began with (a job's attempt: `claimed`, progress cleared),
    /// for a client that last saw an earlier generation and missed the changes in between
    /// (see [`Feed::apply_read`]); `None` when this is that state, or generations have none.
    fn generation_began(&self) -> Option<Self> {
        None
    }

    /// The state as clients see it, as JSON.
    fn state_json(&self) -> String;

    /// The outbox phase: equal for two changes that a slow client may see as one (only
    /// progress differs), different for a status change.
    fn phase(&self) -> u64;

    /// Whether the notification left out part of the state, so that the row must be read
    /// before the change is delivered.
    fn needs_row(&self) -> bool;

    /// A 64-bit digest of the state, for "did it change" checks. JSON is the form clients
    /// see, so two states that serialize alike are alike to them.
    fn digest(&self) -> u64 {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.state_json().hash(&mut h);
        h.finish()
    }
}

/// Where one subscription stands.
#[derive(Debug)]
pub(crate) enum Feed<C> {
    /// The current state is being read; changes that arrive meanwhile wait here.
    Reading(Vec<C>),
    Live {
        /// The snapshot of the last read, while updates it already saw may still arrive.
        floor: Option<Arc<DbSnapshot>>,
        /// The generation of the last state the client got, and whether it was terminal.
        last: Option<(i32, bool)>,
        /// The digest of that state, so that a re-read that changes nothing sends nothing.
        digest: u64,
        /// Whether anything was pushed on the stream yet.
        pushed: bool,
    },
}

impl<C: Change> Feed<C> {
    /// For a job or workflow the subscriber is about to create: it has no state yet, so
    /// every update of it is new.
    pub(crate) fn following() -> Self {
        Feed::Live {
            floor: None,
            last: None,
            digest: 0,
            pushed: false,
        }
    }

    /// Offers a change from the stream; returns whether to push it to the client.
    pub(crate) fn offer(&mut self, change: &C) -> bool {
        match self {
            Feed::Reading(held) => {
                held.push(change.clone());
                false
            }
            Feed::Live {
                floor,
                last,
                digest,
                pushed,
            } => {
                if let (Some(snapshot), Some(xid)) = (floor.as_ref(), change.xid()) {
                    if snapshot.sees(xid) {
                        return false;
                    }
                    if snapshot.is_before(xid) {
                        *floor = None;
                    }
                }
                if let Some((generation, terminal)) = *last {
                    if terminal || change.generation() < generation {
                        return false;
                    }
                }
                *last = Some((change.generation(), change.is_terminal()));
                *digest = change.digest();
                *pushed = true;
                true
            }
        }
    }

    /// Applies a read of the current state made with `snapshot` (`read` is `None` when the
    /// job or workflow does not exist). Returns what to push, in order.
    ///
    /// The read state itself is pushed when `resync` is set (the re-read after a lost LISTEN
    /// connection), or when the stream already carried states of this subscription: the
    /// client treats stream events as newer than the subscribe call's answer, so the stream
    /// must end on the newest state. Then come the held changes the read did not see.
    pub(crate) fn apply_read(
        &mut self,
        snapshot: &Arc<DbSnapshot>,
        read: Option<&C>,
        resync: bool,
    ) -> Vec<C> {
        let (held, last, digest, pushed) = match self {
            Feed::Reading(held) => (std::mem::take(held), None, 0, false),
            Feed::Live {
                floor,
                last,
                digest,
                pushed,
            } => {
                // A read older than one already applied brings nothing new.
                if floor.as_ref().is_some_and(|f| f.xmax() > snapshot.xmax()) {
                    return Vec::new();
                }
                (Vec::new(), *last, *digest, *pushed)
            }
        };
        let terminal_seen = last.is_some_and(|(_, terminal)| terminal);
        let mut out = Vec::new();
        let mut next = (last, digest, pushed);
        if let (Some(read), false) = (read, terminal_seen) {
            let d = read.digest();
            let push = (resync || pushed) && d != digest;
            if push {
                let missed_a_start = last.is_some_and(|(g, _)| read.generation() > g);
                if let Some(began) = read.generation_began().filter(|_| missed_a_start) {
                    out.push(began);
                }
                out.push(read.clone());
            }
            next = (
                Some((read.generation(), read.is_terminal())),
                d,
                pushed || push,
            );
        }
        *self = Feed::Live {
            floor: Some(snapshot.clone()),
            last: next.0,
            digest: next.1,
            pushed: next.2,
        };
        for change in held {
            if self.offer(&change) {
                out.push(change);
            }
        }
        out
    }
}

/// One subscription to a job or workflow.
pub(crate) struct Sub<C> {
    pub(super) session: Arc<Session>,
    /// The subscription id as a JSON string, escaped once.
    pub(super) sub_json: Arc<str>,
    pub(super) feed: Feed<C>,
}

/// The subscriptions to one job or workflow.
pub(crate) struct FeedTopic<C> {
    pub(super) subs: HashMap<(Uuid, SubId), Sub<C>>,
    /// While the row of the front change is being read, the later changes wait here behind
    /// it.
    pub(super) waiting: Option<VecDeque<C>>,
}

impl<C> Default for FeedTopic<C> {
    fn default() -> Self {
        Self {
            subs: HashMap::new(),
            waiting: None,
        }
    }
}

/// Takes a change of a followed topic: delivers it, or queues it behind a change waiting for
/// its row. Returns true when the change itself must wait for its row (fetch it).
pub(super) fn accept<C: Change>(topic: &mut FeedTopic<C>, change: C) -> bool {
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
pub(super) fn drain<C: Change>(
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
pub(super) fn apply_read<C: Change>(
    topic: &mut FeedTopic<C>,
    snapshot: &Arc<DbSnapshot>,
    owner: Option<&str>,
    read: &C,
) {
    let mut json: Option<String> = None;
    for ((_, sub), s) in topic.subs.iter_mut() {
        // A subscription still being checked by its subscribe call may belong to someone
        // who must not see this: that call decides.
        if !s.session.viewer.may_see(owner) {
            continue;
        }
        for change in s.feed.apply_read(snapshot, Some(read), true) {
            let state = if change == *read {
                json.get_or_insert_with(|| change.state_json()).clone()
            } else {
                change.state_json()
            };
            push(s, sub, &change, &state);
        }
    }
}

pub(super) fn deliver<C: Change>(topic: &mut FeedTopic<C>, change: &C) {
    // Serialized at most once, and only if some subscription takes it.
    let mut json: Option<String> = None;
    for ((_, sub), s) in topic.subs.iter_mut() {
        if s.feed.offer(change) {
            let json = json.get_or_insert_with(|| change.state_json());
            push(s, sub, change, json);
        }
    }
}

pub(super) fn push<C: Change>(s: &Sub<C>, sub: &SubId, change: &C, state_json: &str) {
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
