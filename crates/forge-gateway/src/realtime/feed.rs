//! The order of one job's or workflow's updates as one subscription sees them.
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
//! later generation.

use std::hash::{Hash, Hasher};
use std::sync::Arc;

use forge_runtime::store::DbSnapshot;

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
