//! The guard of a subscription made before its job or workflow exists.

use std::sync::Weak;

use uuid::Uuid;

use super::followed::Followed;
use super::index::Topic;
use super::{Hub, Proof};
use crate::realtime::session::SubId;
use crate::realtime::RealtimeError;

/// A subscription made before its job or workflow exists; see [`Hub::follow`].
#[derive(Debug)]
pub(crate) struct FollowGuard {
    pub(super) hub: Weak<Hub>,
    pub(super) session: Uuid,
    pub(super) secret: String,
    pub(super) user: Option<String>,
    pub(super) sub: SubId,
    pub(super) topic: Topic,
    pub(super) armed: bool,
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
