//! One client's session: who it belongs to, the secret that proves a call comes from the holder
//! of its stream, and its outbox — the bounded buffer between the hub and the SSE stream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::sync::Notify;
use uuid::Uuid;

/// A subscription id chosen by the client, unique within its session.
pub(crate) type SubId = Arc<str>;

/// Who opened a session. Subscription calls must come from the same user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Viewer {
    /// The authenticated user id (`sub`), or `None` for an anonymous session.
    pub(crate) user: Option<String>,
    /// Whether the user may watch every job and workflow, not only their own.
    pub(crate) sees_all: bool,
}

impl Viewer {
    /// Whether this viewer may watch something owned by `owner`. Nothing that has no owner is
    /// visible except to viewers who see all: an anonymous caller owns nothing.
    pub(crate) fn may_see(&self, owner: Option<&str>) -> bool {
        self.sees_all || (self.user.is_some() && self.user.as_deref() == owner)
    }
}

/// Bytes of a session id that name the node holding it. A v4 UUID's first six bytes are
/// random, so tagging them keeps ids unique and unguessable (the rest stays random).
pub(crate) const NODE_TAG_LEN: usize = 6;

/// A node's tag, drawn at random when its gateway starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct NodeTag(pub(crate) [u8; NODE_TAG_LEN]);

impl NodeTag {
    pub(crate) fn random() -> Self {
        let mut tag = [0; NODE_TAG_LEN];
        tag.copy_from_slice(&Uuid::new_v4().as_bytes()[..NODE_TAG_LEN]);
        Self(tag)
    }

    /// The node that holds session `id`.
    pub(crate) fn of(id: Uuid) -> Self {
        let mut tag = [0; NODE_TAG_LEN];
        tag.copy_from_slice(&id.as_bytes()[..NODE_TAG_LEN]);
        Self(tag)
    }
}

pub(crate) struct Session {
    pub(crate) id: Uuid,
    secret: String,
    pub(crate) viewer: Viewer,
    pub(crate) outbox: Outbox,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("viewer", &self.viewer)
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A session of the node tagged `node`: its id starts with the tag, so that another node
    /// that receives one of its calls knows where to forward it (see `forward`).
    pub(crate) fn new(viewer: Viewer, limits: OutboxLimits, node: NodeTag) -> Self {
        // Two v4 UUIDs come from the operating system's CSPRNG: 244 random bits.
        let secret = format!("{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
        let mut id = *Uuid::new_v4().as_bytes();
        id[..NODE_TAG_LEN].copy_from_slice(&node.0);
        Self {
            id: Uuid::from_bytes(id),
            secret,
            viewer,
            outbox: Outbox::new(limits),
        }
    }

    pub(crate) fn secret(&self) -> &str {
        &self.secret
    }

    /// Checks the proof a subscription call carries: the session secret (compared in constant
    /// time, so its bytes cannot be found one by one by timing) and the same user.
    pub(crate) fn admits(&self, secret: &str, user: Option<&str>) -> bool {
        let a = self.secret.as_bytes();
        let b = secret.as_bytes();
        let same_secret =
            a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0;
        same_secret && self.viewer.user.as_deref() == user
    }
}

/// How much an outbox holds before it coalesces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutboxLimits {
    /// Events queued before progress updates of one subscription replace each other.
    pub(crate) soft: usize,
    /// Events queued before status changes replace each other too (only the latest state of
    /// each subscription is then kept).
    pub(crate) hard: usize,
}

/// One event waiting to be written to the stream.
struct Frame {
    /// `None` for events that are never replaced (the session event).
    sub: Option<SubId>,
    /// Events of one subscription with the same phase differ only in progress: under pressure
    /// the later one replaces the earlier. A different phase (a status change) is kept as its
    /// own event until the hard limit.
    phase: u64,
    bytes: Bytes,
}

#[derive(Default)]
struct OutboxState {
    queue: VecDeque<Frame>,
    closed: bool,
    coalesced: u64,
}

/// The events a session's stream has yet to write.
///
/// A client that reads slower than updates come fills it; it then coalesces instead of
/// growing. Past `soft` events, an update replaces the last queued event of its subscription
/// if it is in the same phase (only progress changed); past `hard`, it replaces that event
/// whatever it was. An update of a subscription with nothing queued is always appended. So
/// the newest state of every subscription is always delivered, a status change is dropped
/// only in favour of a later status, and the queue never holds more than `hard` events plus
/// one per subscription of the session (whose number is capped).
pub(crate) struct Outbox {
    state: Mutex<OutboxState>,
    ready: Notify,
    limits: OutboxLimits,
}

impl Outbox {
    fn new(limits: OutboxLimits) -> Self {
        Self {
            state: Mutex::new(OutboxState::default()),
            ready: Notify::new(),
            limits,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, OutboxState> {
        // A panic while holding the lock leaves the queue consistent (every mutation is a
        // single push, replace or drain), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues an event that is never coalesced.
    pub(crate) fn push_fixed(&self, bytes: Bytes) {
        self.push_frame(Frame {
            sub: None,
            phase: 0,
            bytes,
        });
    }

    /// Queues an event of subscription `sub`.
    pub(crate) fn push(&self, sub: &SubId, phase: u64, bytes: Bytes) {
        self.push_frame(Frame {
            sub: Some(sub.clone()),
            phase,
            bytes,
        });
    }

    fn push_frame(&self, frame: Frame) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        if st.queue.len() >= self.limits.soft {
            if let Some(sub) = &frame.sub {
                let hard = st.queue.len() >= self.limits.hard;
                let last = st
                    .queue
                    .iter_mut()
                    .rev()
                    .find(|f| f.sub.as_ref() == Some(sub));
                if let Some(last) = last {
                    if hard || last.phase == frame.phase {
                        last.phase = frame.phase;
                        last.bytes = frame.bytes;
                        st.coalesced += 1;
                        return;
                    }
                }
            }
        }
        st.queue.push_back(frame);
        drop(st);
        self.ready.notify_one();
    }

    /// Takes queued events, up to about `max_bytes` (at least one), as one chunk to write.
    pub(crate) fn take(&self, max_bytes: usize) -> Option<Bytes> {
        let mut st = self.lock();
        let first = st.queue.pop_front()?;
        if st.queue.is_empty() || first.bytes.len() >= max_bytes {
            return Some(first.bytes);
        }
        let mut buf = BytesMut::with_capacity(
            max_bytes
                .min(first.bytes.len() + st.queue.iter().map(|f| f.bytes.len()).sum::<usize>()),
        );
        buf.extend_from_slice(&first.bytes);
        while let Some(next) = st.queue.front() {
            if buf.len() + next.bytes.len() > max_bytes {
                break;
            }
            let next = st.queue.pop_front().expect("front exists");
            buf.extend_from_slice(&next.bytes);
        }
        Some(buf.freeze())
    }

    /// Waits until an event is queued or the outbox is closed. Returns false once closed.
    pub(crate) async fn ready(&self) -> bool {
        loop {
            let notified = self.ready.notified();
            {
                let st = self.lock();
                if st.closed {
                    return false;
                }
                if !st.queue.is_empty() {
                    return true;
                }
            }
            notified.await;
        }
    }

    /// Ends the stream: nothing more is queued and the stream stops after what it holds.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// (events queued, events coalesced so far).
    pub(crate) fn counts(&self) -> (usize, u64) {
        let st = self.lock();
        (st.queue.len(), st.coalesced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbox(soft: usize, hard: usize) -> Outbox {
        Outbox::new(OutboxLimits { soft, hard })
    }

    fn drain(o: &Outbox) -> String {
        let mut out = String::new();
        while let Some(b) = o.take(1 << 20) {
            out.push_str(std::str::from_utf8(&b).unwrap());
        }
        out
    }

    #[test]
    fn keeps_every_event_below_the_soft_limit() {
        let o = outbox(4, 8);
        let a: SubId = "a".into();
        for i in 0..4 {
            o.push(&a, 1, Bytes::from(format!("{i};")));
        }
        assert_eq!(drain(&o), "0;1;2;3;");
        assert_eq!(o.counts(), (0, 0));
    }

    #[test]
    fn coalesces_progress_but_keeps_status_changes_until_the_hard_limit() {
        let o = outbox(2, 4);
        let a: SubId = "a".into();
        let b: SubId = "b".into();
        o.push(&a, 1, "a1;".into());
        o.push(&b, 1, "b1;".into());
        // Full: a's progress replaces a's last event of the same phase.
        o.push(&a, 1, "a2;".into());
        // A status change is appended.
        o.push(&a, 2, "a3;".into());
        o.push(&b, 2, "b2;".into());
        // At the hard limit even a status change replaces the subscription's last event.
        o.push(&a, 3, "a4;".into());
        assert_eq!(drain(&o), "a2;b1;a4;b2;");
        assert_eq!(o.counts().1, 2);
    }

    #[test]
    fn a_subscription_with_nothing_queued_is_always_appended() {
        let o = outbox(1, 1);
        let a: SubId = "a".into();
        let b: SubId = "b".into();
        o.push_fixed("s;".into());
        o.push(&a, 1, "a1;".into());
        o.push(&b, 1, "b1;".into());
        o.push(&a, 2, "a2;".into());
        assert_eq!(drain(&o), "s;a2;b1;");
    }

    #[test]
    fn take_batches_up_to_the_byte_limit() {
        let o = outbox(100, 100);
        let a: SubId = "a".into();
        for _ in 0..5 {
            o.push(&a, 1, Bytes::from_static(b"0123456789"));
        }
        assert_eq!(o.take(25).unwrap().len(), 20);
        assert_eq!(o.take(5).unwrap().len(), 10);
        assert_eq!(o.take(100).unwrap().len(), 20);
        assert!(o.take(100).is_none());
    }

    #[test]
    fn nothing_is_queued_after_close() {
        let o = outbox(4, 8);
        o.close();
        o.push_fixed("x".into());
        assert!(o.take(100).is_none());
    }

    #[test]
    fn proof_needs_the_secret_and_the_same_user() {
        let viewer = Viewer {
            user: Some("u1".into()),
            sees_all: false,
        };
        let s = Session::new(viewer, OutboxLimits { soft: 1, hard: 1 }, NodeTag::random());
        let secret = s.secret().to_string();
        assert_eq!(secret.len(), 64);
        assert!(s.admits(&secret, Some("u1")));
        assert!(!s.admits(&secret, Some("u2")));
        assert!(!s.admits(&secret, None));
        assert!(!s.admits(&secret[..63], Some("u1")));
        assert!(!s.admits("", Some("u1")));
    }
}
