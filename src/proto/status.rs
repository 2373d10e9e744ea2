//! Failures on the wire: the one place that builds a gRPC status or an HTTP error response.
//!
//! The classification ([`Code`]) and its two tables (`grpc_code`, `http_status`) are the engine's
//! (`engine::error`); this module turns a code and a message into what a client receives: a `tonic::Status`,
//! or an HTTP status with the JSON body `{"error": {"code": "...", "message": "..."}}` (and `Retry-After` when
//! retrying later can succeed). An internal error's cause is logged on the host's stderr and reaches the client
//! only as "internal error".

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::engine::error::{Code, EngineError, GRPC_CODE_KEY, grpc_code, http_status};

/// A gRPC status for a failure, with the code's name in the metadata (`arrowport-error-code`).
pub fn grpc(code: Code, message: impl Into<String>) -> tonic::Status {
    let mut status = tonic::Status::new(grpc_code(code), message);
    status.metadata_mut().insert(GRPC_CODE_KEY, tonic::metadata::MetadataValue::from_static(code.name()));
    status
}

/// An engine error as a gRPC status.
pub fn grpc_of(e: &EngineError) -> tonic::Status {
    log_internal(e);
    grpc(e.code(), e.to_string())
}

/// An HTTP error response for a failure.
pub fn http(code: Code, message: impl Into<String>) -> Response {
    let status = StatusCode::from_u16(http_status(code)).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = serde_json::json!({"error": {"code": code.name(), "message": message.into()}});
    let mut response = (status, axum::Json(body)).into_response();
    if matches!(code, Code::Busy | Code::Stopping | Code::Contended) {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// Logs an internal error's cause on the host's stderr (the client sees only "internal error").
pub fn log_internal(e: &EngineError) {
    if let EngineError::Internal(cause) = e {
        eprintln!("arrowport: internal error: {cause}");
    }
}

/// Whether a request speaks gRPC (its refusals must be gRPC statuses).
pub fn is_grpc<B>(request: &axum::http::Request<B>) -> bool {
    request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The answer to a request the listener cannot take now (a refused connection): 503 with `Retry-After`, or the
/// gRPC status of "busy".
pub fn unavailable<B>(request: &axum::http::Request<B>, message: &str) -> Response {
    if is_grpc(request) {
        return grpc(Code::Busy, message).into_http();
    }
    http(Code::Busy, message)
}

/// The answer to anything that is neither a Flight service nor a known HTTP route.
pub async fn not_found(request: axum::extract::Request) -> Response {
    if is_grpc(&request) {
        return grpc(Code::Unimplemented, "unknown service").into_http();
    }
    http(Code::NotFound, format!("no such endpoint: {}", request.uri().path()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_carry_status_code_and_retry_after() {
        let r = http(Code::Busy, "busy");
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers().get(header::RETRY_AFTER).unwrap(), "1");
        let r = http(Code::Conflict, "no");
        assert_eq!(r.status(), StatusCode::CONFLICT);
        assert!(r.headers().get(header::RETRY_AFTER).is_none());
        assert_eq!(grpc_of(&EngineError::TooLarge("big".into())).code(), tonic::Code::ResourceExhausted);
    }
}
