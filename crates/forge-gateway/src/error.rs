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
    ///
    /// When `err` says the database could not be reached (no connection within the request
    /// pool's acquire timeout, a connection lost or refused), the answer is
    /// [`unavailable`](Self::unavailable) instead: the client should try again, and is told
    /// nothing of the database's own words.
    pub fn internal(err: impl std::fmt::Display) -> Self {
        let text = err.to_string();
        let id = uuid::Uuid::new_v4().to_string();
        if database_unreachable(&text) {
            tracing::warn!(correlation_id = %id, error = %text, "database unreachable");
            return Self {
                correlation_id: Some(id),
                ..Self::unavailable()
            };
        }
        tracing::error!(correlation_id = %id, error = %text, "internal error");
        Self {
            correlation_id: Some(id),
            ..Self::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error",
            )
        }
    }

    /// A query's or mutation's answer over `gateway.max_result_bytes`: a fault of the function
    /// (it should page), not of the call, so retrying does not help.
    pub fn result_too_large(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "result_too_large",
            message,
        )
    }

    /// 503 with `Retry-After`: the database cannot be reached right now.
    pub fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is unreachable; try again shortly",
        )
    }

    /// 503 `unavailable` with `Retry-After`: the database is reachable but something the
    /// call needs is held by another transaction for now.
    pub fn busy(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 429 with `Retry-After`: the node already serves as many event streams as a cap allows.
    pub fn too_many_sessions(message: impl Into<String>) -> Self {
        Self::new(StatusCode::TOO_MANY_REQUESTS, "too_many_sessions", message)
    }

    /// 429: the caller started jobs and workflows faster than allowed; `details.retryAfter`
    /// (and the `Retry-After` header) says in how many seconds a start is allowed again.
    pub fn rate_limited(message: impl Into<String>, retry_after: std::time::Duration) -> Self {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        Self {
            details: Some(json!({ "retryAfter": secs })),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message)
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

/// Seconds a `503` or `429` answer asks the client to wait (`Retry-After`).
pub const RETRY_AFTER_SECS: u64 = 1;

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response =
            (self.status, axum::Json(json!({ "error": self.body() }))).into_response();
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS
        ) {
            let secs = self
                .details
                .as_ref()
                .and_then(|d| d["retryAfter"].as_u64())
                .unwrap_or(RETRY_AFTER_SECS);
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(secs),
            );
        }
        response
    }
}

/// Whether an error's text (a `sqlx::Error` as `Display` writes it, alone or inside the error
/// a function wrapped it in, whose `Debug` shows that text) says the database could not be
/// reached. The gateway's
/// routes hand their failures to [`ApiError::internal`] as text, so this is where the kind is
/// still visible; the spellings are sqlx's, and a test pins them.
fn database_unreachable(text: &str) -> bool {
    const SIGNS: [&str; 7] = [
        // sqlx::Error::PoolTimedOut
        "pool timed out while waiting for an open connection",
        // sqlx::Error::Io: refused, reset, broken pipe, timed out
        "error communicating with database",
        // sqlx::Error::PoolClosed
        "attempted to acquire a connection on a closed pool",
        // The server going away or not up yet, as PostgreSQL says it (in English, its
        // default): 57P01 when it stops or an operator ends the session, 57P02 after another
        // backend crashed, 57P03 while it shuts down, starts up or recovers...
        "terminating connection due to administrator command",
        "terminating connection because of crash of another server process",
        "the database system is ",
        // ...and the same by SQLSTATE, where the error is debug-printed.
        "code: \"57P0",
    ];
    SIGNS.iter().any(|s| text.contains(s))
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

/// As [`json_body`], but an empty body reads as `{}`, whatever its content type: for routes
/// whose every field is optional.
pub fn json_body_or_empty<T: serde::de::DeserializeOwned>(
    headers: &axum::http::HeaderMap,
    body: &[u8],
) -> Result<T, ApiError> {
    if body.is_empty() {
        return forge_runtime::registry::decode_args(Value::Null)
            .map_err(|e| ApiError::invalid_args(&e.field, e.message));
    }
    json_body(headers, body)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(kind, "gone"))
    }

    #[test]
    fn unreachable_database_errors_answer_503_without_their_text() {
        let unreachable = || {
            [
                sqlx::Error::PoolTimedOut,
                sqlx::Error::PoolClosed,
                io(std::io::ErrorKind::ConnectionRefused),
                io(std::io::ErrorKind::ConnectionReset),
            ]
        };
        for (e, wrapped) in unreachable().into_iter().zip(unreachable()) {
            // As the routes pass them: shown, or a function's error debug-printed.
            let wrapped = forge_runtime::Error::from(wrapped);
            for text in [
                format!("starting job `x`: {e}"),
                format!("function `x` failed: {wrapped:?}"),
            ] {
                let a = ApiError::internal(&text);
                assert_eq!(
                    (a.status, a.code),
                    (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                    "{text}"
                );
                assert!(!a.message.contains("gone"), "{}", a.message);
                assert!(a.correlation_id.is_some());
            }
        }
        // The server stopping or starting while a call runs.
        for text in [
            "starting job `x`: database error: error returned from database: terminating \
             connection due to administrator command",
            "starting job `x`: database error: error returned from database: the database \
             system is starting up",
            "function `x` failed: Error { source: Some(Database(PgDatabaseError { severity: \
             Fatal, code: \"57P03\", message: \"...\" })) }",
        ] {
            let a = ApiError::internal(text);
            assert_eq!(
                (a.status, a.code),
                (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
                "{text}"
            );
        }
        let r = ApiError::internal(sqlx::Error::PoolTimedOut).into_response();
        assert_eq!(r.headers()[axum::http::header::RETRY_AFTER], "1");
    }

    #[test]
    fn other_errors_stay_internal() {
        let a = ApiError::internal(sqlx::Error::RowNotFound);
        assert_eq!(
            (a.status, a.code),
            (StatusCode::INTERNAL_SERVER_ERROR, "internal")
        );
        let r = a.into_response();
        assert!(r.headers().get(axum::http::header::RETRY_AFTER).is_none());
    }
}
