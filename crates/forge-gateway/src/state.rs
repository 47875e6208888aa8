//! What the gateway's routes share.

use std::sync::Arc;

use axum::http::HeaderMap;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::auth::{Auth, Identity};
use crate::config::GatewayConfig;
use crate::error::{json_body_or_empty, ApiError};
use crate::functions::Caller;

/// What the gateway's routes share.
pub(crate) struct AppState {
    pub(crate) caller: Caller,
    pub(crate) auth: Auth,
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) openapi: Bytes,
    /// The process's Prometheus handle, when `gateway.metrics` is on.
    pub(crate) metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl AppState {
    /// Whether `identity` has the admin role (`auth.admin_role`); nobody has it when none is
    /// configured.
    pub(crate) fn is_admin(&self, identity: &Identity) -> bool {
        self.config
            .admin_role
            .as_deref()
            .is_some_and(|role| identity.has_role(role))
    }

    /// The owner a user's operation is restricted to: the caller, unless they have the admin
    /// role (then none: every owner's).
    pub(crate) fn owner_scope<'a>(&self, identity: &'a Identity) -> Option<&'a str> {
        (!self.is_admin(identity)).then_some(identity.user_id.as_str())
    }

    /// The signed-in caller (else 401 with `unauthenticated`) and the decoded body, an empty
    /// body reading as `{}`.
    pub(crate) fn signed_in<T: DeserializeOwned>(
        &self,
        headers: &HeaderMap,
        body: &[u8],
        unauthenticated: &str,
    ) -> Result<(Identity, T), ApiError> {
        let Some(identity) = self.auth.from_headers(headers)? else {
            return Err(ApiError::unauthenticated(unauthenticated));
        };
        Ok((identity, json_body_or_empty(headers, body)?))
    }

    /// The caller, who must be signed in (401) and have the admin role (403, also when no
    /// admin role is configured).
    pub(crate) fn require_admin(&self, headers: &HeaderMap) -> Result<Identity, ApiError> {
        let Some(identity) = self.auth.from_headers(headers)? else {
            return Err(ApiError::unauthenticated(
                "admin calls need a signed-in user",
            ));
        };
        match self.config.admin_role.as_deref() {
            None => Err(ApiError::forbidden(
                "no admin role is configured (auth.admin_role), so nobody may call admin routes",
            )),
            Some(role) if identity.has_role(role) => Ok(identity),
            Some(role) => Err(ApiError::forbidden(format!(
                "this call needs the role `{role}`"
            ))),
        }
    }
}
