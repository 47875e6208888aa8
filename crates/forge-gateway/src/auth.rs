//! Authentication: `Authorization: Bearer <JWT>` (HS256, `sub` = user id, optional
//! `roles: string[]`, `exp`), verified with the configured secret.
//!
//! (Written with the realtime routes, which needed it before the rest of the gateway existed;
//! the gateway's own routes use and extend it.)

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{header, HeaderMap};
use forge_runtime::User;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use crate::error::ApiError;

/// Who a verified token says the caller is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user_id: String,
    pub roles: Vec<String>,
    /// When the token expires.
    pub expires_at: SystemTime,
}

impl Identity {
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }

    /// The user as functions see it (`ctx.user()`).
    pub fn user(&self) -> User {
        User {
            id: self.user_id.clone(),
            roles: self.roles.clone(),
        }
    }
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    exp: u64,
}

/// The JWT secret is empty.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the JWT secret must not be empty")]
pub struct EmptySecret;

/// Verifies tokens. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// HS256 with `secret`; `leeway` is the clock skew tolerated on `exp`.
    pub fn hs256(secret: &[u8], leeway: Duration) -> Result<Self, EmptySecret> {
        let key = DecodingKey::from_secret(secret).map_err(|_| EmptySecret)?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway.as_secs();
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self { key, validation })
    }

    pub fn verify(&self, token: &str) -> Result<Identity, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| ApiError::unauthenticated(format!("invalid token: {e}")))?;
        let c = data.claims;
        Ok(Identity {
            user_id: c.sub,
            roles: c.roles,
            expires_at: UNIX_EPOCH + Duration::from_secs(c.exp),
        })
    }

    /// The identity of a request's bearer token; `None` without an `Authorization` header.
    pub fn from_headers(&self, headers: &HeaderMap) -> Result<Option<Identity>, ApiError> {
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(None);
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| {
                ApiError::unauthenticated("the Authorization header must be `Bearer <token>`")
            })?;
        self.verify(token.trim()).map(Some)
    }
}
