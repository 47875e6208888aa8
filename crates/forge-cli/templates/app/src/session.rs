//! Sessions: every visitor gets a guest account on their first visit. A job belongs to the
//! user who started it and only its owner may follow it, so even a page without sign-in needs
//! a user. To add real accounts, replace `start_session` with your sign-in: the gateway only
//! needs an HS256 token signed with `FORGE_JWT_SECRET`, with `sub` (the user id) and `exp`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use forge::prelude::*;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::settings;

/// How long a session lasts; the page starts a new one when it has expired. At most the
/// gateway's longest token lifetime (24 hours by default).
const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// What starting a session gives the page.
#[derive(Debug, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Session {
    /// The bearer token the page sends with every call.
    pub token: String,
    /// Who the token says the caller is (`sub`).
    pub user_id: String,
    /// When the token expires, in seconds since 1970.
    pub expires_at: u32,
}

/// Starts a session as a new guest. Public: it is what a caller without a token calls first.
#[forge::mutation(public)]
pub(crate) async fn start_session(_ctx: &MutationContext) -> Result<Session> {
    let user_id = format!("guest-{}", Uuid::new_v4());
    let expires_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(Error::msg)?
        .saturating_add(LIFETIME)
        .as_secs();
    let expires_at = u32::try_from(expires_at).map_err(Error::msg)?;
    let claims = serde_json::json!({ "sub": user_id, "exp": expires_at });
    let key = jsonwebtoken::EncodingKey::from_secret(settings::get().jwt_secret.as_bytes())
        .map_err(Error::msg)?;
    let token = jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &key)
        .map_err(Error::msg)?;
    Ok(Session {
        token,
        user_id,
        expires_at,
    })
}
