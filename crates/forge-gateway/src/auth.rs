//! Authentication: `Authorization: Bearer <JWT>` (HS256, `sub` = user id, optional
//! `roles: string[]`, `exp`, optional `nbf` and `iat`), verified with the configured secret.
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
    iat: Option<u64>,
}

/// The shortest HS256 secret accepted, in bytes. RFC 7518 §3.2: an HS256 key must be at least
/// as long as the hash; a shorter one can be guessed offline from any token.
pub const MIN_SECRET_LEN: usize = 32;

/// The longest a token may be valid by default (`exp - iat`, and `exp - now`): a stolen token
/// that never expires is a stolen account.
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The JWT secret is shorter than [`MIN_SECRET_LEN`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error(
    "the JWT secret is {len} bytes long; HS256 needs at least 32 (a shorter key can be guessed)"
)]
pub struct WeakSecret {
    pub len: usize,
}

/// Verifies tokens. Cheap to clone.
#[derive(Clone)]
pub struct Auth {
    key: DecodingKey,
    validation: Validation,
    max_lifetime: Duration,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth").finish_non_exhaustive()
    }
}

impl Auth {
    /// HS256 with `secret` (at least [`MIN_SECRET_LEN`] bytes); `leeway` is the clock skew
    /// tolerated on `exp` and `nbf`. Tokens may live at most [`DEFAULT_MAX_LIFETIME`] unless
    /// [`Auth::with_max_lifetime`] says otherwise.
    pub fn hs256(secret: &[u8], leeway: Duration) -> Result<Self, WeakSecret> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(WeakSecret { len: secret.len() });
        }
        let key = DecodingKey::from_secret(secret).map_err(|_| WeakSecret { len: secret.len() })?;
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = leeway.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            key,
            validation,
            max_lifetime: DEFAULT_MAX_LIFETIME,
        })
    }

    /// Refuses tokens valid for longer than `max`: by `exp - iat` when the token has `iat`,
    /// and always by `exp - now` (beyond the leeway), so leaving out `iat` does not get round it.
    pub fn with_max_lifetime(mut self, max: Duration) -> Self {
        self.max_lifetime = max;
        self
    }

    pub fn verify(&self, token: &str) -> Result<Identity, ApiError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| ApiError::unauthenticated(format!("invalid token: {e}")))?;
        let c = data.claims;
        let max = self.max_lifetime.as_secs();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let lifetime = match c.iat {
            Some(iat) => c.exp.saturating_sub(iat),
            None => 0,
        };
        let remaining = c.exp.saturating_sub(now);
        if lifetime > max || remaining > max + self.validation.leeway {
            return Err(ApiError::unauthenticated(format!(
                "invalid token: it is valid for longer than the maximum token lifetime of {max}s"
            )));
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SECRET: &[u8] = b"auth-unit-test-secret-auth-unit-test";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn sign(claims: serde_json::Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
        )
        .unwrap()
    }

    fn auth() -> Auth {
        Auth::hs256(SECRET, Duration::from_secs(30))
            .unwrap()
            .with_max_lifetime(Duration::from_secs(3600))
    }

    fn refused(token: &str) -> String {
        let err = auth().verify(token).unwrap_err();
        assert_eq!(err.status.as_u16(), 401, "{err:?}");
        err.message
    }

    #[test]
    fn a_short_secret_is_a_typed_error() {
        assert_eq!(
            Auth::hs256(b"too-short", Duration::ZERO).unwrap_err(),
            WeakSecret { len: 9 }
        );
        assert_eq!(
            Auth::hs256(b"", Duration::ZERO).unwrap_err(),
            WeakSecret { len: 0 }
        );
        Auth::hs256(&[7; MIN_SECRET_LEN], Duration::ZERO).unwrap();
    }

    #[test]
    fn nbf_is_honoured_with_the_leeway() {
        let t = now();
        let msg = refused(&sign(json!({ "sub": "a", "exp": t + 600, "nbf": t + 300 })));
        assert!(msg.contains("ImmatureSignature"), "{msg}");
        // Within the 30 s leeway, as for `exp`.
        auth()
            .verify(&sign(json!({ "sub": "a", "exp": t + 600, "nbf": t + 10 })))
            .unwrap();
    }

    #[test]
    fn tokens_over_the_maximum_lifetime_are_refused() {
        let t = now();
        // By exp - iat, even if little of it is left.
        let msg = refused(&sign(json!({ "sub": "a", "iat": t - 7200, "exp": t + 60 })));
        assert!(msg.contains("maximum token lifetime of 3600s"), "{msg}");
        // Without iat, by exp - now.
        let msg = refused(&sign(json!({ "sub": "a", "exp": t + 7200 })));
        assert!(msg.contains("maximum token lifetime"), "{msg}");
        auth()
            .verify(&sign(json!({ "sub": "a", "iat": t, "exp": t + 3600 })))
            .unwrap();
        auth()
            .verify(&sign(json!({ "sub": "a", "exp": t + 3600 })))
            .unwrap();
    }
}
