//! What one run of a query or mutation may take: its timeout (in the gateway and, as the
//! transaction's `statement_timeout`, in PostgreSQL), the size of its answer, and a panic.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use forge_runtime::store;
use forge_runtime::text::{self, panic_message};
use forge_runtime::{Error, Refusal};
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::Value;

use crate::error::ApiError;

/// Runs a function's future within its timeout; a panic, or an answer over `max_result_bytes`,
/// is an error (and, for a mutation, rolls its transaction back like any other failure).
pub(crate) async fn guarded(
    name: &'static str,
    timeout: Duration,
    max_result_bytes: usize,
    fut: BoxFuture<'_, Result<Value, Error>>,
) -> Result<Value, ApiError> {
    match tokio::time::timeout(timeout, AssertUnwindSafe(fut).catch_unwind()).await {
        Err(_) => Err(timed_out(name, timeout)),
        Ok(Err(panic)) => Err(ApiError::internal(format_args!(
            "function `{name}` panicked: {}",
            panic_message(&*panic)
        ))),
        Ok(Ok(Ok(value))) => {
            if fits(&value, max_result_bytes) {
                Ok(value)
            } else {
                tracing::warn!(
                    function = name,
                    max_result_bytes,
                    "answer over the size limit"
                );
                Err(ApiError::result_too_large(format!(
                    "`{name}` answered with more than {max_result_bytes} bytes of JSON, the \
                     most an answer may hold (gateway.max_result_bytes); return fewer rows, or \
                     a page of them"
                )))
            }
        }
        Ok(Ok(Err(e))) => Err(if cancelled_by_statement_timeout(&e) {
            timed_out(name, timeout)
        } else {
            function_error(name, e)
        }),
    }
}

/// Whether `value` serializes to at most `limit` bytes of JSON. Counting stops at the limit,
/// so a huge answer costs no more than `limit` bytes of work to refuse.
fn fits(value: &Value, limit: usize) -> bool {
    struct Count {
        left: usize,
    }
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.left = self
                .left
                .checked_sub(buf.len())
                .ok_or_else(|| std::io::Error::other("over the limit"))?;
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    serde_json::to_writer(&mut Count { left: limit }, value).is_ok()
}

/// Whether PostgreSQL cancelled one of the function's statements: the function's timeout is
/// also its transaction's `statement_timeout`, and it answers the same either way.
fn cancelled_by_statement_timeout(e: &Error) -> bool {
    let mut source = e
        .source_error()
        .map(|s| s as &(dyn std::error::Error + 'static));
    while let Some(s) = source {
        if s.downcast_ref::<sqlx::Error>()
            .is_some_and(store::is_statement_timeout)
        {
            return true;
        }
        source = s.source();
    }
    false
}

pub(crate) fn timed_out(name: &str, timeout: Duration) -> ApiError {
    tracing::warn!(function = name, ?timeout, "function timed out");
    ApiError::timeout(format!(
        "`{name}` ran past its timeout of {}",
        text::duration(timeout)
    ))
}

/// What the client sees of a function's error: its message when the function refused the
/// call ([`Refusal`]), an internal error with a correlation id otherwise.
fn function_error(name: &str, e: Error) -> ApiError {
    let message = e.to_string();
    match e.refusal() {
        Some(Refusal::InvalidArg { field }) => ApiError::invalid_args(field, message),
        Some(Refusal::Unprocessable) => ApiError::unprocessable(message),
        Some(Refusal::Conflict) => ApiError::conflict(message),
        Some(Refusal::NotFound) => ApiError::not_found(message),
        Some(Refusal::Forbidden) => ApiError::forbidden(message),
        _ => ApiError::internal(format_args!("function `{name}` failed: {e:?}")),
    }
}
