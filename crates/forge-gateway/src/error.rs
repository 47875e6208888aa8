//! The JSON error envelope of `docs/protocol.md`: every failure, on every route, is
//! `{ "error": { "code", "message", "details"?, "correlationId"? } }` with its HTTP status.
//! Internal errors are logged with a correlation id and never shown to the client.
//!
//! (Written with the realtime routes, which needed it before the rest of the gateway existed;
//! the gateway's own routes use and extend it.)

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// A failure as the client sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub status: StatusCode,
    /// One of the codes of the protocol (`invalid_args`, `not_found`, ...).
    pub code: &'static str,
    pub message: String,
    pub details: Option<Value>,
    pub correlation_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
            correlation_id: None,
        }
    }

    /// 400: an argument does not fit; `field` names it as the client spells it.
    pub fn invalid_args(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_args", message).with_field(field)
    }

    /// 400: malformed JSON or envelope.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no token where one is needed, or a bad or expired one.
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", message)
    }

    /// 403: authenticated, but not allowed.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 413: the body, or the batch, is over its limit.
    pub fn payload_too_large(message: impl Into<String>) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", message)
    }

    /// 422: a function refused its well-typed input.
    pub fn unprocessable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "unprocessable", message)
    }

    /// 504: a function ran past its timeout.
    pub fn timeout(message: impl Into<String>) -> Self {
        Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "expected Content-Type: application/json",
        )
    }

    /// 500: logs `err` under a fresh correlation id and tells the client only that id.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        let id = uuid::Uuid::new_v4().to_string();
        tracing::error!(correlation_id = %id, error = %err, "internal error");
        Self {
            correlation_id: Some(id),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }

    /// Names the offending field in `details`.
    pub fn with_field(mut self, field: &str) -> Self {
        self.details = Some(json!({ "field": field }));
        self
    }

    /// The `error` object of the envelope.
    pub fn body(&self) -> Value {
        let mut e = json!({ "code": self.code, "message": self.message });
        if let Some(d) = &self.details {
            e["details"] = d.clone();
        }
        if let Some(id) = &self.correlation_id {
            e["correlationId"] = json!(id);
        }
        e
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.body() }))).into_response()
    }
}

/// A JSON request body decoded into `T`, with the field named when it does not fit: 415 for
/// another content type, 400 `bad_request` for malformed JSON, 400 `invalid_args` otherwise.
pub fn json_body<T: serde::de::DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    let value = json_value(headers, body)?;
    forge_runtime::registry::decode_args(value)
        .map_err(|e| ApiError::invalid_args(&e.field, e.message))
}

/// A JSON request body: 415 for another content type, 400 `bad_request` for malformed JSON.
pub fn json_value(headers: &axum::http::HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let is_json = headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.get(..16)
                .is_some_and(|t| t.eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(ApiError::unsupported_media_type());
    }
    serde_json::from_slice(body).map_err(|e| ApiError::bad_request(format!("malformed JSON: {e}")))
}
